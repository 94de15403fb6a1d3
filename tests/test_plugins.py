"""Method plugins from other distributions: options from the CLI, YAML and into MLflow, and
every broken-plugin case (issue 14) as one line with exit code 2 that names the culprit."""

from __future__ import annotations

import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from fedbench import registry
from fedbench.cli.main import app
from fedbench.config import make_config
from fedbench.core.method import Method, validate_method
from fedbench.errors import PluginError

runner = CliRunner()
TINY_RUN = ["run", "--dataset", "synthetic", "--clients", "4", "--clients-per-round", "2", "--rounds", "1",
            "--local-epochs", "1", "--width", "0.25"]

OPTIONS_PLUGIN = """
from dataclasses import dataclass
from fedbench.core.method import Method

@dataclass(frozen=True, kw_only=True)
class KnobOptions:
    widths: tuple[float, ...] = (0.25, 1.0)
    shuffle: bool = True
    mu: float = 0.5

class Knobs(Method):
    options_type = KnobOptions
"""

BROKEN_HOOKS = """
from fedbench.core.method import Method

class NotAMethod:
    def assign(self, round_idx):
        return []

class ForgotRoundIdx(Method):
    def local_update(self):
        raise AssertionError("never called")

class AggregateSwitchedOff(Method):
    aggregate = None

class NoOptionsArgument(Method):
    def __init__(self, ctx):
        super().__init__(ctx)

class StaticLoss(Method):
    loss = staticmethod(lambda model, images, labels, client: model(images).sum())
"""


def install(site: Path, dist: str, modules: dict[str, str], methods: dict[str, str]) -> None:
    """A throw-away installed distribution ``dist``: its modules and a ``fedbench.methods`` table."""
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {target}\n" for name, target in methods.items())
    (info / "entry_points.txt").write_text(f"[fedbench.methods]\n{lines}")


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path that plays site-packages for fake distributions."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    return folder


def _one_line_failure(args: list[str]) -> str:
    result = runner.invoke(app, args, env={"COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith("error: ")
    return result.output.strip()


# ------------------------------------------------------------------- options
class RecordingClient:
    """Stands in for MlflowClient and keeps the params a tracker logs (a real sqlite store
    costs 5-30 s here; tests/test_tracking.py covers the real one)."""

    def __init__(self) -> None:
        self.params: dict[str, str] = {}

    def create_run(self, experiment_id: str, tags: dict, run_name: str | None = None) -> SimpleNamespace:
        return SimpleNamespace(info=SimpleNamespace(run_id="run-1"))

    def get_experiment(self, experiment_id: str) -> SimpleNamespace:
        return SimpleNamespace(artifact_location="mlflow-artifacts:/0")  # a server's: nothing to check here

    def get_run(self, run_id: str) -> SimpleNamespace:
        return SimpleNamespace(data=SimpleNamespace(tags={}))

    def log_batch(self, run_id: str, metrics=(), params=(), synchronous: bool = True) -> None:
        self.params.update({p.key: p.value for p in params})

    def __getattr__(self, name: str):  # log_text, set_tag, set_terminated: nothing to keep
        return lambda *args, **kwargs: None


def test_tuple_and_bool_options_from_the_command_line_reach_the_method_and_mlflow(site, monkeypatch):
    from fedbench.tracking.tracker import MlflowTracker

    client = RecordingClient()
    monkeypatch.setattr(MlflowTracker, "_connect", lambda self, create: (client, "0"))
    # In this process, so the recording client sees the params (the CLI's helper process is
    # tested against a real store in tests/test_tracking.py).
    monkeypatch.setattr("fedbench.tracking.helper_process.ProcessTracker", MlflowTracker)
    install(site, "fedbench-knobs", {"knobs": OPTIONS_PLUGIN}, {"knobs": "knobs:Knobs"})
    result = runner.invoke(app, [*TINY_RUN, "--method", "knobs", "--opt", "widths=[0.5, 1]", "--opt", "shuffle=false"])
    assert result.exit_code == 0, result.output
    assert client.params["options.widths"] == "[0.5, 1.0]"
    assert client.params["options.shuffle"] == "False"
    assert client.params["options.mu"] == "0.5"  # a default the user never typed is logged too


def test_yaml_options_give_the_same_typed_options_as_the_command_line(site, tmp_path):
    install(site, "fedbench-knobs", {"knobs": OPTIONS_PLUGIN}, {"knobs": "knobs:Knobs"})
    knobs = registry.load("methods", "knobs", validate=validate_method)
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("method: knobs\noptions:\n  widths: [0.5, 1]\n  shuffle: false\n")
    options = knobs.parse_options(make_config(yaml_file).options)
    assert options.widths == (0.5, 1.0) and isinstance(options.widths, tuple)
    assert options.shuffle is False and options.mu == 0.5


@pytest.mark.parametrize(
    ("opt", "fragment"),
    [
        ("widths=0.5", "options of Knobs.widths (0.5) must be a list"),
        ("widths=[0.5, big]", "options of Knobs.widths[1] ('big') must be a number"),
        ("shuffle=maybe", "options of Knobs.shuffle ('maybe') must be true or false"),
    ],
)
def test_badly_typed_tuple_or_bool_options_are_one_line(site, opt, fragment):
    install(site, "fedbench-knobs", {"knobs": OPTIONS_PLUGIN}, {"knobs": "knobs:Knobs"})
    assert fragment in _one_line_failure([*TINY_RUN, "--no-tracking", "--method", "knobs", "--opt", opt])


# ------------------------------------------------------------------ bad input
def test_a_plugin_that_fails_to_import_names_its_distribution_and_the_error(site):
    install(site, "fedbench-broken", {"broken_method": "import not_a_real_module\n"},
            {"broken": "broken_method:Broken"})
    line = _one_line_failure([*TINY_RUN, "--no-tracking", "--method", "broken"])
    assert "method 'broken' from distribution 'fedbench-broken'" in line
    assert "ModuleNotFoundError: No module named 'not_a_real_module'" in line
    assert "pip uninstall fedbench-broken" in line


def test_other_methods_still_work_beside_a_plugin_that_fails_to_import(site):
    install(site, "fedbench-broken", {"broken_method": "raise RuntimeError('boom')\n"},
            {"broken": "broken_method:Broken"})
    listing = runner.invoke(app, ["list", "methods"], env={"COLUMNS": "200"})
    assert listing.exit_code == 0 and "fedbench-broken" in listing.output
    result = runner.invoke(app, [*TINY_RUN, "--no-tracking", "--method", "fedavg"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("name", "fragments"),
    [
        ("notamethod", ["(hooks.NotAMethod) must be a subclass of fedbench.api.Method",
                        "it lacks the hooks", "local_update", "aggregate"]),
        ("forgot", ["hook 'local_update(self)' cannot take the engine's arguments",
                    "define it as local_update(self, client)"]),
        ("switchedoff", ["hook 'aggregate' is None, not a method"]),
        ("noopts", ["hook '__init__(self, ctx)' cannot take the engine's arguments",
                    "define it as __init__(self, ctx, options)"]),
    ],
)
def test_a_plugin_class_missing_a_hook_is_one_line_naming_it(site, name, fragments):
    install(site, "fedbench-hooks", {"hooks": BROKEN_HOOKS}, {
        "notamethod": "hooks:NotAMethod", "forgot": "hooks:ForgotRoundIdx",
        "switchedoff": "hooks:AggregateSwitchedOff", "noopts": "hooks:NoOptionsArgument",
    })
    line = _one_line_failure([*TINY_RUN, "--no-tracking", "--method", name])
    for fragment in fragments:
        assert fragment in line


def test_a_static_loss_hook_is_a_valid_override(site):
    install(site, "fedbench-hooks", {"hooks": BROKEN_HOOKS}, {"staticloss": "hooks:StaticLoss"})
    assert issubclass(registry.load("methods", "staticloss", validate=validate_method), Method)


def test_two_distributions_registering_one_name_are_named_both(site):
    install(site, "fedbench-twin-a", {"twin_a": OPTIONS_PLUGIN}, {"twin": "twin_a:Knobs"})
    install(site, "fedbench-twin-b", {"twin_b": OPTIONS_PLUGIN}, {"twin": "twin_b:Knobs"})
    line = _one_line_failure([*TINY_RUN, "--no-tracking", "--method", "twin"])
    assert "method 'twin' is registered by 2 distributions" in line
    assert "'fedbench-twin-a' (twin_a:Knobs)" in line and "'fedbench-twin-b' (twin_b:Knobs)" in line
    with pytest.raises(PluginError):
        registry.load("methods", "twin")
    listing = runner.invoke(app, ["list", "methods"], env={"COLUMNS": "300"})
    assert listing.exit_code == 0
    assert "registered by 2 distributions" in listing.output
    assert registry.load("methods", "fedavg", validate=validate_method) is not None


def test_every_name_of_the_public_api_can_be_imported():
    import fedbench.api

    missing = [name for name in fedbench.api.__all__ if not hasattr(fedbench.api, name)]
    assert missing == []
    assert fedbench.api.Method is Method
