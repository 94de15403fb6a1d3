"""Plugins are found through entry points, the same way for built-ins and third parties."""

from __future__ import annotations

import textwrap

import pytest
from typer.testing import CliRunner

from fedbench import engine, registry
from fedbench.cli.main import app
from fedbench.errors import PluginError, UnknownNameError


@pytest.fixture
def third_party_method(tmp_path, monkeypatch):
    """A throw-away distribution 'fedbench-fancy' that registers method 'fancy'."""
    (tmp_path / "fancy_method.py").write_text(
        textwrap.dedent(
            """
            from dataclasses import dataclass
            from fedbench.core.method import Method

            @dataclass(frozen=True, kw_only=True)
            class FancyOptions:
                boost: float = 1.0

            class Fancy(Method):
                options_type = FancyOptions
            """
        )
    )
    dist = tmp_path / "fedbench_fancy-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fedbench-fancy\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[fedbench.methods]\nfancy = fancy_method:Fancy\nbroken = fancy_method:DoesNotExist\n"
        "notamethod = textwrap:dedent\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "fancy"


def test_a_third_party_method_is_listed_with_its_distribution(third_party_method):
    result = CliRunner().invoke(app, ["list", "methods"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "fancy" in result.output and "fedbench-fancy" in result.output
    info = {i.name: i for i in registry.available("methods")}
    assert info["fancy"].distribution == "fedbench-fancy" and not info["fancy"].builtin
    assert info["fedavg"].builtin


def test_a_third_party_method_runs_with_its_options(third_party_method, tiny_config):
    import dataclasses

    config = dataclasses.replace(tiny_config, method="fancy", options={"boost": 2}, rounds=1)
    ctx, _ = engine.prepare(config)
    method = engine.make_method(ctx)
    assert method.options.boost == 2.0
    assert len(engine.run(config).rounds) == 1


def test_a_plugin_that_fails_to_import_is_a_plugin_error(third_party_method):
    from fedbench.core.method import validate_method

    with pytest.raises(PluginError, match="method 'broken' .* failed to import"):
        registry.load("methods", "broken", validate=validate_method)


def test_a_plugin_of_the_wrong_type_is_rejected_at_load(third_party_method):
    from fedbench.core.method import validate_method

    with pytest.raises(PluginError, match="must be a subclass of fedbench.api.Method"):
        registry.load("methods", "notamethod", validate=validate_method)


def test_unknown_names_suggest_the_closest_match():
    with pytest.raises(UnknownNameError) as info:
        registry.load("methods", "fedavgg")
    assert str(info.value).startswith("unknown method 'fedavgg' (did you mean 'fedavg'?); known: ")


def test_a_method_registered_under_a_misspelt_entry_point_group_is_named_with_the_group_to_fix(tmp_path, monkeypatch):
    dist = tmp_path / "fedbench_typo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fedbench-typo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[fedbench.method]\nscaffold = typo_method:Scaffold\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UnknownNameError) as failure:
        registry.load("methods", "scaffold")
    assert str(failure.value).startswith(
        "unknown method 'scaffold': distribution 'fedbench-typo' registers it under the entry-point group "
        "'fedbench.method', which fedbench does not read; rename the group to 'fedbench.methods'")
    with pytest.raises(UnknownNameError, match=r"^unknown method 'scafold'; known: allsmall, "):
        registry.load("methods", "scafold")  # no stray registration of that name: the usual line


def test_list_methods_check_loads_every_method_and_fails_on_a_broken_one(third_party_method):
    result = CliRunner().invoke(app, ["list", "methods", "--check"], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    rows = {line.split("│")[1].strip(): line.split("│")[4].strip()
            for line in result.output.splitlines() if line.startswith("│")}
    assert rows["fancy"] == "ok" and rows["fedavg"] == "ok"
    assert rows["broken"] == rows["notamethod"] == "broken"
    assert "notamethod: method 'notamethod' must be a subclass of fedbench.api.Method, got <function dedent" in \
        " ".join(result.output.split())
    plain = CliRunner().invoke(app, ["list", "methods"], env={"COLUMNS": "200"})
    assert plain.exit_code == 0 and " check " not in plain.output  # without --check nothing is imported
