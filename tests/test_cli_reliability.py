"""Every way a careless or hostile user can break the command line ends in one line and a known exit code.

Each :class:`Case` is one probe of issue #25: the arguments after ``fedbench``, the environment,
files made beforehand, the exit code and a piece of the one line on stderr. The test runs each
case and asserts all three plus "one line, no traceback"; ``docs/reliability.md`` is generated
from the same list (``python -m tests.test_cli_reliability --markdown > docs/reliability.md``).

To add a case, append a :class:`Case` to :data:`CASES`. In its arguments and environment
``{tmp}`` is the case's own empty folder; ``setup`` may create files in it and return more
``{name}`` values. Cases run in this process through :func:`fedbench.cli.main.main` (fast), or as a
real ``fedbench`` process when ``subprocess`` is set: needed for signals, and for commands that
write relative to the working directory (``./mlruns``, ``reports/out/``), which is then ``{tmp}``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import pytest

# A run small enough to finish in a second or two on synthetic data.
TINY = ("run", "--method", "fedavg", "--dataset", "synthetic", "--clients", "4", "--clients-per-round", "2",
        "--rounds", "1", "--local-epochs", "1", "--model", "cnn", "--width", "0.25")
STORE = "sqlite:///{tmp}/mlflow.db"
# A run long enough to be stopped after its first round.
LONG = ("run", "--method", "fedavg", "--dataset", "synthetic", "--clients", "4", "--clients-per-round", "2",
        "--rounds", "500", "--local-epochs", "1", "--model", "cnn", "--width", "0.25")


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def message_lines(self) -> list[str]:
        """stderr without the per-round progress lines a run prints as it goes."""
        return [line for line in self.stderr.splitlines() if line.strip() and not line.startswith("round ")]


@dataclass(frozen=True)
class Case:
    """One probe: ``fedbench <argv>`` must exit with ``code`` and print one line holding ``message``."""

    id: str
    argv: tuple[str, ...]
    code: int
    message: str
    what: str  # the situation, in words, for the docs table
    env: Mapping[str, str] = field(default_factory=dict)
    # Creates files in the case's folder before the command runs; returns extra {name} values.
    setup: Callable[[Path], Mapping[str, str] | None] | None = None
    # Text the line must not hold (e.g. a flag of another command).
    absent: tuple[str, ...] = ()
    # In-process only: "module.function" made to raise this exception when called (a Ctrl-C or a
    # bug at that moment).
    raise_in: tuple[str, type[BaseException]] | None = None
    # Run as a real `fedbench` process; with `act`, call it (with the folder and the process) once
    # stderr shows `trigger`: send a signal, break the tracking store, ...
    subprocess: bool = False
    trigger: str = ""
    act: Callable[[Path, subprocess.Popen], None] | None = None
    # Asserts on the state the command left behind (the tracking store, files).
    check: Callable[[Path, Mapping[str, str]], None] | None = None


# ------------------------------------------------------------------ setups, actions and checks
def _send(signum: int) -> Callable[[Path, subprocess.Popen], None]:
    def act(_tmp: Path, process: subprocess.Popen) -> None:
        process.send_signal(signum)
    return act


def _break_store(tmp: Path, _process: subprocess.Popen) -> None:
    """Overwrite the SQLite store in place (its open connections see it too): every later write fails."""
    path = tmp / "mlflow.db"
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.write(b"garbage!" * (size // 8))


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / name).write_bytes(data)
    return setup


def _grid(cells_per_axis: int) -> Callable[[Path], None]:
    values = ", ".join(str(i) for i in range(1, cells_per_axis + 1))
    return _write("grid.yaml", f"base: {{method: fedavg}}\naxes:\n  seed: [{values}]\n  rounds: [{values}]\n".encode())


def _experiment(name: str, artifact_location: str | None = None, with_run: bool = False) -> Callable[[Path], None]:
    """A store at {tmp}/mlflow.db holding experiment ``name`` (and one finished fake run)."""
    def setup(tmp: Path) -> None:
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        (tmp / "file.txt").write_text("a file where a folder belongs\n")
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
        location = artifact_location.replace("{tmp}", str(tmp)) if artifact_location else None
        experiment_id = client.create_experiment(name, artifact_location=location)
        if with_run:
            run = client.create_run(experiment_id, tags={"fedbench.method": "fedavg", "fedbench.dataset": "synthetic",
                                                         "fedbench.model": "cnn", "fedbench.run_key": "k"})
            client.log_batch(run.info.run_id, params=[Param("data.partition", "dirichlet"), Param("data.alpha", "0.5")],
                             metrics=[Metric("eval/accuracy", 0.5, 0, 0), Metric("participation/rate", 1.0, 0, 0)])
            client.set_terminated(run.info.run_id)
    return setup


def _runs(tmp: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    ids = [e.experiment_id for e in client.search_experiments()]
    return list(client.search_runs(ids))


def _no_run_left_running(tmp: Path, _values: Mapping[str, str]) -> None:
    assert [r.info.status for r in _runs(tmp) if r.info.status == "RUNNING"] == []


def _only_run_killed(tmp: Path, _values: Mapping[str, str]) -> None:
    (run,) = _runs(tmp)
    assert run.info.status == "KILLED"


def _no_experiment_made(tmp: Path, _values: Mapping[str, str]) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    assert client.get_experiment_by_name("nofit") is None


def _no_store_made(tmp: Path, _values: Mapping[str, str]) -> None:
    assert not (tmp / "typo.db").exists()


# A checkpoint file in $FEDBENCH_CHECKPOINTS ({tmp}/ckpt) of a run with this id.
CHECKPOINT_RUN = "0" * 32


def _checkpoint_file(tmp: Path) -> None:
    (tmp / "ckpt").mkdir()
    (tmp / "ckpt" / f"{CHECKPOINT_RUN}.ckpt").write_bytes(b"not a real checkpoint")


def _checkpoint_kept(tmp: Path, _values: Mapping[str, str]) -> None:
    assert (tmp / "ckpt" / f"{CHECKPOINT_RUN}.ckpt").exists()


def _inside_output_folder(tmp: Path, _values: Mapping[str, str]) -> None:
    written = [p.relative_to(tmp) for p in tmp.rglob("table1.md")]
    assert len(written) == 1 and written[0].parts[:2] == ("reports", "out"), written


def _cut_short_run(tamper: Callable[[Path, object, Path], None]) -> Callable[[Path], Mapping[str, str]]:
    """A 1-round run in {tmp}/mlflow.db left RUNNING (as a SIGKILL leaves it), its checkpoint in
    $FEDBENCH_CHECKPOINTS then replaced by ``tamper(path, config, tmp)``; {run} is its id."""
    def setup(tmp: Path) -> Mapping[str, str]:
        from mlflow.tracking import MlflowClient

        from fedbench import engine
        from fedbench.config import make_config
        from fedbench.core import checkpoint
        from fedbench.tracking.tracker import MlflowTracker

        uri = f"sqlite:///{tmp}/mlflow.db"
        config = make_config(overrides={
            "method": "fedavg", "data": {"dataset": "synthetic", "num_clients": 4}, "clients_per_round": 2,
            "rounds": 1, "train": {"local_epochs": 1}, "model": {"name": "cnn", "width": 0.25},
            "tracking": {"uri": uri, "keep_checkpoint": True}})
        tracker = MlflowTracker(uri, config.tracking.experiment)
        engine.run(config, tracker=tracker)
        MlflowClient(tracking_uri=uri).update_run(tracker.run_id, "RUNNING")
        tamper(checkpoint.checkpoint_path(tracker.run_id), config, tmp)
        return {"run": tracker.run_id}
    return setup


def _plant_pickle(path: Path, config: object, tmp: Path) -> None:
    from tests.test_checkpoint import _malicious

    _malicious(path, config, tmp / "pwned")


def _flip_bytes(path: Path, _config: object, _tmp: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) - 2000, len(data)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _old_format(path: Path, _config: object, _tmp: Path) -> None:
    path.write_bytes(b"PK\x03\x04" + bytes(100))  # a torch.save zip, as older fedbench wrote


def _payload_did_not_run(tmp: Path, _values: Mapping[str, str]) -> None:
    assert not (tmp / "pwned").exists()


def _only_run_failed(tmp: Path, _values: Mapping[str, str]) -> None:
    (run,) = _runs(tmp)
    assert run.info.status == "FAILED" and "diverged" in run.data.tags["fedbench.error"]


RESUME = ("run", "--resume", "{run}", "--tracking-uri", STORE)
CHECKPOINTS = {"FEDBENCH_CHECKPOINTS": "{tmp}/ckpt"}

# ------------------------------------------------------------------ the cases
CASES: list[Case] = [
    Case("resume-malicious-checkpoint", RESUME, 2, "holds data fedbench did not write",
         "a checkpoint crafted to run a command when unpickled, with the right run key and checksum",
         env=CHECKPOINTS, setup=_cut_short_run(_plant_pickle), check=_payload_did_not_run),
    Case("resume-bit-flipped-checkpoint", RESUME, 2, "is corrupt (its payload fails the checksum)",
         "a checkpoint with 2,000 flipped bytes", env=CHECKPOINTS, setup=_cut_short_run(_flip_bytes)),
    Case("resume-foreign-checkpoint", RESUME, 2, "is not a fedbench checkpoint of this version",
         "a checkpoint in another format (an older fedbench's)", env=CHECKPOINTS, setup=_cut_short_run(_old_format)),
    Case("lr-infinite", (*TINY, "--no-tracking", "--lr", "inf"), 2,
         "train.lr (inf) must be a finite number below 3.4e+38", "--lr inf"),
    Case("lr-overflow", (*TINY, "--no-tracking", "--lr", "1e308"), 2,
         "train.lr (1e+308) must be a finite number below 3.4e+38", "--lr 1e308 (beyond float32)"),
    Case("diverged", (*TINY, "--tracking-uri", STORE, "--lr", "1e30"), 2,
         "diverged at round 1: training loss nan; lower --lr", "--lr 1e30: the training loss becomes NaN",
         check=_only_run_failed),
    Case("no-device-fits", ("run", "--method", "exclusivefl", "--dataset", "synthetic", "--clients", "4",
                            "--clients-per-round", "2", "--rounds", "1", "--model", "cnn", "--fleet", "uniform-mb",
                            "--low-mb", "1", "--high-mb", "2", "--tracking-uri", STORE, "--experiment", "nofit"), 2,
         "no device can train cnn", "a fleet no device of which fits the model (no MLflow experiment is left behind)",
         check=_no_experiment_made),
    Case("checkpoints-prune-nothing", ("checkpoints", "prune"), 2, "say what to prune",
         "`fedbench checkpoints prune` without a criterion"),
    Case("config-not-utf8", ("run", "--config", "{tmp}/bad.yaml", "--no-tracking"), 2, "is not UTF-8 text",
         "a config file holding the bytes 00 ff", setup=_write("bad.yaml", b"\x00\xff")),
    Case("config-is-directory", ("run", "--config", "{tmp}", "--no-tracking"), 2,
         "is a directory, expected a YAML file", "a folder given to --config"),
    Case("data-dir-is-file", (*TINY, "--no-tracking", "--data-dir", "{tmp}/data.txt"), 2,
         "is a file, expected a folder", "a file given to --data-dir", setup=_write("data.txt", b"x")),
    Case("fedbench-data-missing", ("run", "--dataset", "fashion-mnist", "--no-tracking"), 2,
         "FEDBENCH_DATA={tmp}/nowhere does not exist", "$FEDBENCH_DATA names no folder",
         env={"FEDBENCH_DATA": "{tmp}/nowhere"}),
    Case("resume-empty", ("run", "--resume", ""), 2, "--resume needs a run id", "an empty run id to --resume"),
    Case("run-clients-huge", (*TINY, "--no-tracking", "--clients", "100000000"), 2,
         "is above 1,000,000, the most clients fedbench simulates", "10^8 clients"),
    Case("run-info-plane-huge", (*TINY, "--no-tracking", "--info-plane", "100000000"), 2,
         "info_plane (100000000) is above 1,000 probe images per class", "10^8 info-plane probe images per class"),
    Case("run-rounds-huge", (*TINY, "--no-tracking", "--rounds", "10000000000"), 2,
         "rounds (10,000,000,000) is above 1,000,000, the most a run may ask for", "10^10 rounds"),
    Case("run-threads-huge", (*TINY, "--no-tracking", "--threads", "100000"), 2,
         "threads (100000) is above", "10^5 torch threads (more than the machine can start)"),
    Case("preset-typo", (*TINY, "--no-tracking", "--preset", "offical"), 2,
         "preset ('offical') is not a preset (did you mean 'official'?)", "--preset offical"),
    Case("lr-schedule-typo", (*TINY, "--no-tracking", "--lr-schedule", "cosin"), 2,
         "train.lr_schedule ('cosin') is not a schedule (did you mean 'cosine'?)", "--lr-schedule cosin"),
    Case("multistep-without-milestones", (*TINY, "--no-tracking", "--lr-schedule", "multistep"), 2,
         "train.lr_schedule multistep needs train.lr_milestones", "--lr-schedule multistep without a milestone"),
    Case("milestone-in-rounds", (*TINY, "--no-tracking", "--lr-schedule", "multistep", "--lr-milestone", "150"), 2,
         "must be increasing fractions of the run's rounds in (0, 1)", "--lr-milestone 150 (a round, not a fraction)"),
    Case("lr-decay-ignored", (*TINY, "--no-tracking", "--lr-decay", "0.5"), 2,
         "train.lr_decay (0.5) only applies to lr_schedule exponential or multistep",
         "--lr-decay on the constant schedule, where it would do nothing"),
    Case("batch-size-one", (*TINY, "--no-tracking", "--batch-size", "1"), 2,
         "train.batch_size (1) must be >= 2: a batch of one sample trains nothing", "--batch-size 1"),
    Case("flag-misspelt", ("run", "--roudns", "2"), 2,
         "No such option: --roudns (Possible options: --rounds) (see 'fedbench run --help')", "a misspelt flag"),
    Case("flag-value-wrong-type", ("run", "--rounds", "abc"), 2,
         "Invalid value for '--rounds'", "a flag value of the wrong type (--rounds abc)"),
    Case("command-misspelt", ("rnu",), 2, "No such command 'rnu'. Did you mean 'run'? (see 'fedbench --help')",
         "a misspelt command"),
    Case("flag-required-missing", ("report", "tta", "--experiment", "x"), 2,
         "Missing option '--target'. (see 'fedbench report tta --help')", "a required flag left out"),
    Case("config-section-plain-value", ("run", "--config", "{tmp}/run.yaml", "--alpha", "0.3", "--no-tracking"), 2,
         "data must be a mapping, got str ('synthetic'); write it as data: {...} with its keys",
         "a config section written as a plain value (data: synthetic) under a flag that sets one of its keys",
         setup=_write("run.yaml", b"method: fedavg\ndata: synthetic\n")),
    Case("alpha-with-iid", (*TINY, "--no-tracking", "--partition", "iid", "--alpha", "0.1"), 2,
         "data.alpha (0.1) only applies to partition dirichlet (got iid)",
         "--alpha with a partitioner that does not read it (iid)"),
    Case("sweep-misspelt-method", ("sweep", "{tmp}/grid.yaml", "--dry-run"), 2,
         "grid cell 1 (method=neulit): unknown method 'neulit' (did you mean 'neulite'?)",
         "a misspelt method in a grid: stops before any cell runs",
         setup=_write("grid.yaml", b"base: {rounds: 1}\naxes:\n  method: [fedavg, neulit]\n")),
    Case("config-empty", ("run", "--config", "{tmp}/empty.yaml", "--no-tracking"), 2,
         "holds no settings (it is empty or only comments)", "a config file with only a comment",
         setup=_write("empty.yaml", b"# settings to come\n")),
    Case("sweep-option-bad", ("sweep", "{tmp}/grid.yaml", "--dry-run"), 2,
         "grid cell 1 (options.lambda_max=-1): options.lambda_max (-1", "a grid cell with a bad method option",
         setup=_write("grid.yaml", b"base: {method: neulite}\naxes: {options.lambda_max: [0.1, -1]}\n")),
    Case("sweep-case-and-axis", ("sweep", "{tmp}/grid.yaml", "--dry-run"), 2,
         "case 1 sets 'seed', also an axis; set each key in the axes or in the cases, not both",
         "a grid whose cases set a key its axes vary",
         setup=_write("grid.yaml", b"cases: [{seed: 1, method: fedavg}]\naxes: {seed: [1, 2]}\n")),
    Case("report-time-no-samples", ("report", "time", "--samples", "0"), 2, "--samples (0) must be >= 1",
         "`fedbench report time` for a device holding no samples"),
    Case("report-tta-percent", ("report", "tta", "--target", "75"), 2,
         "--target (75) must be an accuracy in (0, 1], e.g. 0.75 (for 75 %, give 0.75)",
         "a time-to-accuracy target given in per cent"),
    Case("memory-clients-huge", ("memory", "--clients", "100000000"), 2,
         "--clients (100000000) is above 1,000,000", "a fleet of 10^8 devices"),
    Case("memory-jobs-negative", ("memory", "--jobs", "-1"), 2, "--jobs (-1) must be >= 0", "a negative --jobs"),
    Case("memory-opt-several-methods", ("memory", "--method", "neulite,depthfl", "--opt", "sigma=2"), 2,
         "--opt sets options of one method, but 2 are asked for", "method options for a table of several methods"),
    Case("sweep-grid-missing", ("sweep", "{tmp}/nope.yaml"), 2, "nope.yaml does not exist; pass an existing grid",
         "a grid file that does not exist", absent=("--config",)),
    Case("sweep-grid-huge", ("sweep", "{tmp}/grid.yaml", "--dry-run"), 2, "has 1,000,000 cells (1000 x 1000), above 10,000",
         "--dry-run over a grid of 10^6 cells", setup=_grid(1000)),
    Case("checkpoints-unwritable", (*TINY, "--tracking-uri", STORE), 2, "checkpoint folder {tmp}/file.txt/ckpt is not writable",
         "FEDBENCH_CHECKPOINTS below a file", env={"FEDBENCH_CHECKPOINTS": "{tmp}/file.txt/ckpt"},
         setup=_write("file.txt", b"x")),
    Case("artifacts-unwritable", (*TINY, "--tracking-uri", STORE, "--experiment", "art"), 2,
         "MLflow artifact folder of experiment 'art' {tmp}/file.txt/art is not writable",
         "an experiment whose artifact folder cannot be made", setup=_experiment("art", "{tmp}/file.txt/art"),
         check=_no_run_left_running),
    Case("tracking-uri-unsupported", (*TINY, "--tracking-uri", "foo://bar"), 2,
         "Supported URI schemes are: ['', 'file',", "an unknown tracking URI scheme (MLflow's hint kept whole)"),
    Case("report-store-missing", ("report", "table1", "--tracking-uri", "sqlite:///{tmp}/typo.db"), 2,
         "no tracking store at {tmp}/typo.db", "a mistyped SQLite store for report", check=_no_store_made),
    Case("report-store-folder", ("report", "table1", "--tracking-uri", "{tmp}"), 2,
         "cannot open the MLflow tracking store at {tmp} (MlflowException: The filesystem tracking backend",
         "a folder (MLflow's file store) as the store of report", absent=("unexpected",)),
    Case("report-store-junk", ("report", "table1", "--tracking-uri", "sqlite:///{tmp}/junk.db"), 2,
         "file is not a database); check that {tmp}/junk.db is the MLflow database 'fedbench run' wrote",
         "a file that is not a database as the SQLite store of report", setup=_write("junk.db", b"junk\n"),
         absent=("[SQL:",)),
    Case("prune-store-junk", ("checkpoints", "prune", "--finished", "--tracking-uri", "sqlite:///{tmp}/junk.db"), 2,
         "cannot open the MLflow tracking store at sqlite:///{tmp}/junk.db", "a junk file as the store of prune --finished",
         setup=_write("junk.db", b"junk\n")),
    Case("prune-store-down", ("checkpoints", "prune", "--finished", "--tracking-uri", "http://127.0.0.1:9"), 2,
         f"cannot read run {CHECKPOINT_RUN} in the MLflow tracking store at http://127.0.0.1:9",
         "prune --finished against a server that is down (not taken for \"no such run\")",
         env={**CHECKPOINTS, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}, setup=_checkpoint_file, check=_checkpoint_kept),
    Case("report-out-is-file", ("report", "table1", "--experiment", "e", "--tracking-uri", STORE, "--out", "{tmp}/file.txt"),
         2, "--out {tmp}/file.txt is a file; give --out a folder", "an existing file given to report --out",
         setup=_experiment("e", with_run=True)),
    Case("report-out-unwritable", ("report", "memory", "--model", "cnn", "--dataset", "synthetic", "--out", "/proc/fedbench"),
         2, "output folder /proc/fedbench is not writable", "a report --out where no folder can be made"),
    Case("report-experiment-path", ("report", "table1", "--experiment", "../../x", "--tracking-uri", STORE), 0,
         "wrote reports/out/x-", "an experiment named ../../x (the report stays in reports/out/)",
         setup=_experiment("../../x", with_run=True), subprocess=True, check=_inside_output_folder),
    Case("interrupt-before-run", (*TINY, "--tracking-uri", STORE), 130,
         "interrupted before a run was created; nothing was logged", "Ctrl-C while the data loads",
         raise_in=("fedbench.engine.prepare", KeyboardInterrupt), absent=("KILLED",)),
    Case("interrupt-memory", ("memory",), 130, "interrupted", "Ctrl-C during `fedbench memory`",
         raise_in=("fedbench.reports.memory_table.memory_rows", KeyboardInterrupt), absent=("KILLED", "run")),
    Case("unexpected-error", (*TINY, "--no-tracking"), 1,
         "unexpected RuntimeError: boom (a bug in fedbench or a plugin; rerun with --verbose for the traceback)",
         "a bug (here: RuntimeError while the data loads)", raise_in=("fedbench.engine.prepare", RuntimeError)),
    Case("sigterm-during-run", (*LONG, "--tracking-uri", STORE), 143,
         "terminated (SIGTERM): finished rounds are logged; run", "SIGTERM after round 1",
         subprocess=True, trigger="round 1/", act=_send(signal.SIGTERM), check=_only_run_killed),
    Case("store-fails-mid-run", (*LONG, "--tracking-uri", STORE), 2,
         "failed while logging round 2 of run", "the tracking store is destroyed after round 1",
         subprocess=True, trigger="round 1/", act=_break_store, absent=("[SQL:",)),
]


# ------------------------------------------------------------------ running a case
def _fill(text: str, values: Mapping[str, str]) -> str:
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    return text


@contextlib.contextmanager
def _environment(changes: Mapping[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(changes)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _raiser(exc_type: type[BaseException]) -> Callable[..., None]:
    def raise_now(*_args: object, **_kwargs: object) -> None:
        raise exc_type() if exc_type is KeyboardInterrupt else exc_type("boom")
    return raise_now


def run_case(case: Case, tmp: Path) -> tuple[Outcome, dict[str, str]]:
    """Run ``case`` in the empty folder ``tmp``; its outcome and the ``{name}`` values used."""
    values = {"tmp": str(tmp)}
    env = {"COLUMNS": "400", "MLFLOW_DISABLE_TELEMETRY": "true"}
    with _environment({k: _fill(v, values) for k, v in {**env, **case.env}.items()}):
        values.update((case.setup(tmp) if case.setup else None) or {})
    env.update({k: _fill(v, values) for k, v in case.env.items()})
    argv = [_fill(a, values) for a in case.argv]
    if case.subprocess:
        return _run_process(case, argv, env, tmp), values
    from fedbench.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    patch = mock.patch(case.raise_in[0], _raiser(case.raise_in[1])) if case.raise_in else contextlib.nullcontext()
    code = 0
    with _environment(env), patch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return Outcome(code, out.getvalue(), err.getvalue()), values


def _run_process(case: Case, argv: list[str], env: Mapping[str, str], tmp: Path) -> Outcome:
    command = [sys.executable, "-c", "from fedbench.cli.main import main; main()", *argv]
    process = subprocess.Popen(command, cwd=tmp, env={**os.environ, **env}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    if case.act is None:
        stdout, stderr = process.communicate(timeout=300)
        return Outcome(process.returncode, stdout, stderr)
    seen = []
    deadline = time.monotonic() + 300
    assert process.stderr is not None
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        seen.append(line)
        if case.trigger in line:
            case.act(tmp, process)
            break
    stdout, rest = process.communicate(timeout=300)
    return Outcome(process.returncode, stdout, "".join(seen) + rest)


# ------------------------------------------------------------------ the test
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_each_failure_is_one_line_with_its_exit_code(case: Case, tmp_path: Path) -> None:
    outcome, values = run_case(case, tmp_path)
    lines = outcome.message_lines
    assert outcome.code == case.code, outcome.stderr
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert len(lines) == 1, outcome.stderr
    assert _fill(case.message, values) in lines[0], lines[0]
    for text in case.absent:
        assert text not in lines[0], lines[0]
    if case.check is not None:
        case.check(tmp_path, values)


def test_verbose_shows_the_traceback_of_an_unexpected_error(tmp_path: Path) -> None:
    case = next(c for c in CASES if c.id == "unexpected-error")
    verbose = Case(case.id, (*case.argv, "--verbose"), 1, "", case.what, raise_in=case.raise_in)
    with pytest.raises(RuntimeError, match="boom"):
        run_case(verbose, tmp_path)


# ------------------------------------------------------------------ docs/reliability.md
def markdown(cases: list[Case]) -> str:
    """The docs table: every case run now, with the exit code and the line it printed."""
    import tempfile

    rows = []
    for case in cases:
        with tempfile.TemporaryDirectory() as folder:
            tmp = Path(folder).resolve()
            outcome, values = run_case(case, tmp)
            line = (outcome.message_lines or [""])[-1].replace(str(tmp), "$TMP")
            line = re.sub(r"\b[0-9a-f]{32}\b", "RUN_ID", line)  # MLflow run ids differ every time
        env = " ".join(f"{k}={v}" for k, v in case.env.items()).replace("{tmp}", "$TMP")
        argv = " ".join(a if a and " " not in a else repr(a) for a in case.argv).replace("{tmp}", "$TMP")
        argv = argv.replace("{run}", "RUN_ID")
        command = f"{env + ' ' if env else ''}fedbench {argv}".replace("|", "\\|")
        rows.append(f"| {case.what} | `{command}` | {outcome.code} | {line.replace('|', chr(92) + '|')} |")
    header = [
        "# Reliability: what each failure prints",
        "",
        "Every case below is a test (`tests/test_cli_reliability.py`): the command exits with the code shown",
        "and prints one line on stderr, never a traceback (add `--verbose` for one). Exit codes: 2 for bad",
        "input, 1 for an unexpected error (a bug), 130 after Ctrl-C, 143 after SIGTERM; a run stopped by",
        "Ctrl-C or SIGTERM is marked KILLED in MLflow and can be continued with `fedbench run --resume ID`.",
        "One that arrives while a finished round is being logged and checkpointed waits for both; a second",
        "one stops at once.",
        "`$TMP` is a scratch folder and `RUN_ID` an MLflow run id. Generated by",
        "`python -m tests.test_cli_reliability --markdown > docs/reliability.md`; do not edit by hand.",
        "",
        "| situation | command | exit | message |",
        "|---|---|---|---|",
    ]
    return "\n".join(header + rows) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m tests.test_cli_reliability --markdown > docs/reliability.md")
    sys.stdout.write(markdown(CASES))
