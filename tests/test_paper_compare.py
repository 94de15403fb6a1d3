"""`fedbench report table1|table2 --compare paper`: the paper's published values beside fedbench's cells."""

from __future__ import annotations

import csv
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedbench.cli.main import app
from fedbench.reports import paper

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]

# (method, dataset, model, partition, eval/accuracy per round, PR)
RUNS = [
    ("neulite", "cifar10", "resnet18", "dirichlet", [0.3, 0.6, 0.7, 0.8], 1.0),
    ("neulite", "cifar10", "squeezenet_nopool", "dirichlet", [0.2, 0.4, 0.5, 0.6], 1.0),
    ("exclusivefl", "cifar10", "resnet18", "dirichlet", [0.2, 0.5, 0.7, 0.75], 0.2),
    ("fedavg", "cifar10", "resnet18", "dirichlet", [0.3, 0.6, 0.7, 0.7], 1.0),  # not in the paper
    ("neulite", "cifar10", "resnet18", "iid", [0.4, 0.7, 0.8, 0.9], 1.0),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A tracked store with one experiment, ``mini``, of finished runs in the tracker's layout."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('paper') / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("mini")
    for i, (method, dataset, model, partition, accuracy, pr) in enumerate(RUNS):
        tags = {"fedbench.method": method, "fedbench.dataset": dataset, "fedbench.model": model,
                "fedbench.run_key": f"key-{i}"}
        run = client.create_run(experiment, tags=tags, start_time=1000 + i)
        params = {"method": method, "data.dataset": dataset, "model.name": model, "data.partition": partition,
                  "data.alpha": "0.5", "seed": "1", "rounds": "4"}
        metrics = [Metric("participation/rate", pr, 0, r) for r in range(4)]
        metrics += [Metric("eval/accuracy", a, 0, r) for r, a in enumerate(accuracy)]
        client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
        client.set_terminated(run.info.run_id, status="FINISHED")
    return uri


def _markdown_rows(text: str) -> dict[str, dict[str, str]]:
    """The table's cells by method and column header (bold markers dropped)."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


def test_table1_compare_paper_puts_the_published_value_and_the_difference_beside_each_cell(store, tmp_path):
    result = runner.invoke(app, ["report", "table1", "--experiment", "mini", "--tracking-uri", store,
                                 "--out", str(tmp_path), "--compare", "paper"])
    assert result.exit_code == 0, result.output
    rows = _markdown_rows(result.stdout)
    neulite = rows["neulite"]
    assert neulite["cifar10 resnet18 fedbench"] == "70.0 (n=1)"  # mean of the evaluations in the last 3 rounds
    assert neulite["cifar10 resnet18 paper"] == "80.4" and neulite["cifar10 resnet18 Δ"] == "-10.4"
    assert neulite["cifar10 squeezenet_nopool paper"] == "58.0"  # either SqueezeNet is the paper's
    assert neulite["PR resnet18 paper"] == "100" and neulite["PR resnet18 Δ"] == "+0"
    exclusive = rows["exclusivefl"]
    assert exclusive["cifar10 resnet18 paper"] == "76.8" and exclusive["PR resnet18 paper"] == "18"
    assert exclusive["PR resnet18 Δ"] == "+2"
    assert exclusive["cifar10 squeezenet_nopool fedbench"] == "–"  # not run ...
    assert exclusive["cifar10 squeezenet_nopool paper"] == "40.6"  # ... but published
    assert exclusive["cifar10 squeezenet_nopool Δ"] == "—"
    assert rows["fedavg"]["cifar10 resnet18 paper"] == "—" and rows["fedavg"]["cifar10 resnet18 Δ"] == "—"
    assert "fedbench − paper" in result.stdout
    assert (tmp_path / "table1-paper.md").read_text() == result.stdout


def test_table2_compare_paper_matches_iid_and_any_dirichlet_alpha_as_non_iid(store, tmp_path):
    result = runner.invoke(app, ["report", "table2", "--experiment", "mini", "--tracking-uri", store,
                                 "--out", str(tmp_path), "--compare", "paper", "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = {row["Method"]: row for row in csv.DictReader(result.stdout.splitlines())}
    assert rows["neulite"]["cifar10 IID resnet18 paper"] == "87.0"
    assert rows["neulite"]["cifar10 IID resnet18 Δ"] == "-7.0"  # 80.0 measured
    assert rows["neulite"]["cifar10 non-IID α=0.5 resnet18 paper"] == "80.4"


def test_an_unknown_compare_source_is_one_line_and_exit_code_2(store, tmp_path):
    result = runner.invoke(app, ["report", "table1", "--experiment", "mini", "--tracking-uri", store,
                                 "--out", str(tmp_path), "--compare", "papr"])
    assert result.exit_code == 2
    assert "--compare ('papr') must be one of paper" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_the_packaged_values_are_the_papers_tables_and_agree_where_both_tables_print_a_cell():
    rows = list(csv.DictReader((ROOT / "reports" / paper.PAPER_FILE).read_text(encoding="utf-8").splitlines()))
    methods = {r["method"] for r in rows}
    assert len(methods) == 8
    assert sum(r["table"] == "table1" for r in rows) == 8 * (9 + 3)  # 9 accuracies, 3 PRs per method
    assert sum(r["table"] == "table2" for r in rows) == 8 * (8 + 2)
    seen: dict[tuple, str] = {}
    for r in rows:
        assert r["value"] == "NA" or 0 <= float(r["value"]) <= 100
        key = (r["metric"], r["method"], r["dataset"], r["partition"], r["model"])
        assert seen.setdefault(key, r["value"]) == r["value"]
    assert paper.published("accuracy", "neulite", "resnet34", "cifar100", "non-iid") == "49.5"
    assert paper.published("accuracy", "exclusivefl", "resnet34", "cifar10", "iid") == "NA"
    assert paper.published("pr", "depthfl", "squeezenet") == "39"
    assert paper.published("accuracy", "fedavg", "resnet18", "cifar10", "non-iid") is None


def test_the_values_file_is_installed_with_the_reports_package():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert paper.PAPER_FILE in tool["package-data"]["fedbench.reports"]
