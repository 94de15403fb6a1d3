"""`fedbench report`: tables and figures from a tiny MLflow store built here, plus one real end-to-end run.

The fake runs are test data logged through ``MlflowClient`` in the layout the
tracker writes (tags ``fedbench.*``, flattened config params, per-round metrics).
"""

from __future__ import annotations

import dataclasses
import math
import os

import pytest
from typer.testing import CliRunner

from fedbench.cli.main import app

runner = CliRunner()

# run: (method, dataset, model, partition, seed, eval/accuracy per round or None, PR, extra params)
GRID = [
    ("fedavg", "cifar10", "resnet18", "dirichlet", 1, [0.1, 0.5, 0.6, 0.7], 1.0, {}),
    ("fedavg", "cifar10", "resnet18", "dirichlet", 2, [0.1, 0.6, 0.7, 0.8], 1.0, {}),
    ("exclusivefl", "cifar10", "resnet18", "dirichlet", 1, [0.2, 0.7, 0.8, 0.9], 0.2, {}),
    ("exclusivefl", "cifar10", "resnet34", "dirichlet", 1, None, 0.0, {}),
    ("neulite", "cifar10", "resnet18", "dirichlet", 1, [0.3, 0.7, 0.75, 0.8], 1.0, {}),
    ("neulite", "cifar10", "resnet34", "dirichlet", 1, [0.2, 0.5, 0.55, 0.6], 1.0, {}),
    ("heterofl", "cifar10", "resnet18", "dirichlet", 1, None, 1.0, {}),  # crashed metrics: no accuracy
    ("fedavg", "cifar10", "resnet18", "iid", 1, [0.5, 0.8, 0.85, 0.9], 1.0, {}),
]
ABLATION = [
    ("fedavg", "cifar10", "resnet18", "dirichlet", 1, [0.1, 0.5, 0.6, 0.7], 1.0, {}),
    ("neulite", "cifar10", "resnet18", "dirichlet", 1, [0.3, 0.7, 0.75, 0.8], 1.0, {}),
    ("neulite", "cifar10", "resnet18", "dirichlet", 1, [0.3, 0.6, 0.65, 0.7], 1.0,
     {"options.curriculum_loss": "False"}),
    ("neulite", "cifar10", "resnet18", "dirichlet", 1, [0.3, 0.65, 0.7, 0.75], 1.0,
     {"options.co_adaptation": "False", "options.round_robin": "False"}),
]


def _log_run(client, experiment_id, spec, index, status="FINISHED", clock=False, nhsic=False):
    from mlflow.entities import Metric, Param

    method, dataset, model, partition, seed, accuracy, pr, extra = spec
    tags = {"fedbench.method": method, "fedbench.dataset": dataset, "fedbench.model": model,
            "fedbench.run_key": f"key-{experiment_id}-{index}"}
    run = client.create_run(experiment_id, tags=tags, start_time=1000 + index)
    params = {"method": method, "data.dataset": dataset, "model.name": model, "data.partition": partition,
              "data.alpha": "0.5", "seed": str(seed), "rounds": "4", **extra}
    metrics = []
    for round_idx in range(4):
        metrics.append(Metric("participation/rate", pr, 0, round_idx))
        if accuracy is not None:
            metrics.append(Metric("eval/accuracy", accuracy[round_idx], 0, round_idx))
        if clock:
            metrics.append(Metric("clock/total_s", 10.0 * (round_idx + 1), 0, round_idx))
        if nhsic and round_idx % 2 == 1:
            for block in (1, 2):
                metrics.append(Metric(f"nhsic/xz/block{block}", 0.9 - 0.1 * round_idx / block, 0, round_idx))
                metrics.append(Metric(f"nhsic/yz/block{block}", 0.2 + 0.1 * round_idx * block, 0, round_idx))
    client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
    client.set_terminated(run.info.run_id, status=status)
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store with experiments ``grid`` (Table 1/2), ``ablation`` (Fig. 8, with clock and nHSIC) and
    ``broken`` (only a failed run)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('reports') / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    ids = {}
    grid = client.create_experiment("grid")
    for i, spec in enumerate(GRID):
        _log_run(client, grid, spec, i)
    _log_run(client, grid, ("fedavg", "cifar100", "resnet18", "dirichlet", 1, [0.9] * 4, 1.0, {}), 99,
             status="FAILED")
    ablation = client.create_experiment("ablation")
    for i, spec in enumerate(ABLATION):
        ids[i] = _log_run(client, ablation, spec, i, clock=True, nhsic=(i == 1))
    broken = client.create_experiment("broken")
    _log_run(client, broken, GRID[0], 0, status="FAILED")
    mixed = client.create_experiment("mixed")  # two α in one non-IID Table 1; seed 2 run twice
    for i, (seed, accuracy, extra) in enumerate([
        (1, [0.1, 0.5, 0.6, 0.7], {}),
        (2, [0.1, 0.1, 0.1, 0.1], {}),
        (1, [0.2, 0.3, 0.3, 0.3], {"data.alpha": "0.1"}),
        (2, [0.1, 0.6, 0.7, 0.8], {"threads": "2"}),  # the same run as seed 2's, on 2 threads, later
    ]):
        _log_run(client, mixed, ("fedavg", "cifar10", "resnet18", "dirichlet", seed, accuracy, 1.0, extra), i)
    return {"uri": uri, "neulite_run": ids[1], "fedavg_run": ids[0]}


def _report(*args):
    return runner.invoke(app, ["report", *args])


TABLE1_MD = """\
| Method | Incl. | cifar10 resnet18 | cifar10 resnet34 | PR resnet18 | PR resnet34 |
|---|---|---|---|---|---|
| exclusivefl | no | 80.0 (n=1) | NA | 20 | 0 |
| heterofl | yes | – | – | 100 | – |
| fedavg | yes | 65.0 ± 7.1 (n=2) | – | 100 | – |
| neulite | yes | **75.0 (n=1)** | **55.0 (n=1)** | 100 | 100 |
"""


def test_table1_markdown_matches_the_golden_table_with_na_missing_and_bold_cells(store, tmp_path):
    result = _report("table1", "--experiment", "grid", "--tracking-uri", store["uri"], "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(TABLE1_MD)
    assert "mean over the last 3 evaluation intervals" in result.stdout
    assert (tmp_path / "table1.md").read_text() == result.stdout
    assert "run " in result.stderr and "(heterofl, cifar10, resnet18) has no eval/accuracy" in result.stderr


def test_table1_keeps_partitions_apart_and_counts_a_seed_run_twice_once(store, tmp_path):
    result = _report("table1", "--experiment", "mixed", "--tracking-uri", store["uri"], "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    header, _, fedavg = result.stdout.splitlines()[:3]
    assert header.startswith("| Method | Incl. | cifar10 non-IID α=0.1 resnet18 | cifar10 non-IID α=0.5 resnet18 |")
    # α 0.1: seed 1 alone; α 0.5: seeds 1 and 2, seed 2 from its later run: finals 0.6 and 0.7
    assert fedavg.startswith("| fedavg | yes | **30.0 (n=1)** | **65.0 ± 7.1 (n=2)** |")
    assert "repeats a later run's configuration and seed in all but where it ran" in result.stderr


def test_table1_best_metric_uses_the_maximum_and_last_changes_the_final_window(store, tmp_path):
    best = _report("table1", "--experiment", "grid", "--tracking-uri", store["uri"], "--out", str(tmp_path),
                   "--metric", "best")
    assert "| fedavg | yes | 75.0 ± 7.1 (n=2) |" in best.stdout  # max 0.7 and 0.8
    assert (tmp_path / "table1-best.md").read_text() == best.stdout  # beside table1.md, never over it
    last1 = _report("table1", "--experiment", "grid", "--tracking-uri", store["uri"], "--out", str(tmp_path),
                    "--last", "1")
    assert "| neulite | yes | **80.0 (n=1)** | **60.0 (n=1)** |" in last1.stdout


def test_rounds_a_resumed_run_logged_twice_count_once_with_the_value_logged_last(tmp_path):
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from fedbench.reports import series
    from fedbench.reports.runs import load_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("resumed")
    run_id = _log_run(client, experiment, GRID[0], 0)  # eval/accuracy 0.1, 0.5, 0.6, 0.7 at time 0
    # The run stopped after round 3 with its checkpoint at round 1, resumed and logged rounds 2-3 again
    # (a stale 0.0 stands for any earlier value: the last one logged is the run's own).
    client.log_batch(run_id, metrics=[Metric("eval/accuracy", 0.0, 1, 2), Metric("eval/accuracy", 0.6, 2, 2),
                                      Metric("eval/accuracy", 0.7, 2, 3)])
    summary, history, _ = load_experiment("resumed", uri)
    assert history["round"].tolist() == [0, 1, 2, 3]
    assert summary["final_accuracy"].tolist() == [pytest.approx((0.5 + 0.6 + 0.7) / 3)]
    frame, _ = series.curves(summary, history, "round")
    assert frame["accuracy"].round(6).tolist() == [0.1, 0.5, 0.6, 0.7]


def test_an_evaluation_that_ends_no_cycle_is_left_out_of_final_and_best_with_a_warning(tmp_path):
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from fedbench import engine
    from fedbench.reports.runs import load_experiment
    from fedbench.reports.summary import CYCLE_END

    assert CYCLE_END == engine.CYCLE_END
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("off-cycle")
    # 2-stage NeuLite, 5 rounds: evaluated after rounds 2 and 4 (stage 2) and 5 (stage 1, the last round).
    spec = ("neulite", "cifar10", "resnet18", "dirichlet", 1, None, 1.0, {})
    run_id = _log_run(client, experiment, spec, 0)
    client.log_batch(run_id, metrics=[
        metric for round_idx, accuracy, ends in ((1, 0.4, 1.0), (3, 0.6, 1.0), (4, 0.9, 0.0))
        for metric in (Metric("eval/accuracy", accuracy, 0, round_idx), Metric(CYCLE_END, ends, 0, round_idx))
    ])
    summary, history, warnings = load_experiment("off-cycle", uri)
    assert summary[["final_accuracy", "best_accuracy"]].values.tolist() == [[pytest.approx(0.5), 0.6]]
    assert history["round"].tolist() == [1, 3]
    assert [w for w in warnings if "ends no cycle" in w] == [
        f"run {run_id[:8]}: the evaluation after round 5 ends no cycle of its method (NeuLite: --rounds not "
        "a multiple of its stages) and is left out of final and best accuracy"]


def test_table2_puts_iid_next_to_non_iid_and_keeps_pr_per_model(store, tmp_path):
    result = _report("table2", "--experiment", "grid", "--tracking-uri", store["uri"], "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == ("| Method | Incl. | cifar10 IID resnet18 | cifar10 non-IID α=0.5 resnet18 | "
                        "cifar10 non-IID α=0.5 resnet34 | PR resnet18 | PR resnet34 |")
    assert lines[4] == "| fedavg | yes | **85.0 (n=1)** | 65.0 ± 7.1 (n=2) | – | 100 | – |"
    assert lines[2] == "| exclusivefl | no | – | 80.0 (n=1) | NA | 20 | 0 |"


def test_latex_and_csv_carry_the_same_cells(store, tmp_path):
    tex = _report("table1", "--experiment", "grid", "--tracking-uri", store["uri"], "--out", str(tmp_path),
                  "--format", "tex")
    assert tex.exit_code == 0, tex.output
    assert r"neulite & yes & \textbf{75.0 (n=1)} & \textbf{55.0 (n=1)} & 100 & 100 \\" in tex.stdout
    assert r"fedavg & yes & 65.0 $\pm$ 7.1 (n=2) & -- & 100 & -- \\" in tex.stdout
    assert tex.stdout.startswith(r"\begin{table}") and r"\toprule" in tex.stdout
    csv = _report("table1", "--experiment", "grid", "--tracking-uri", store["uri"], "--out", str(tmp_path),
                  "--format", "csv")
    assert csv.stdout.splitlines()[1] == "exclusivefl,no,80.0 (n=1),NA,20,0"
    assert csv.stdout.splitlines()[3] == "fedavg,yes,65.0 ± 7.1 (n=2),,100,"
    assert (tmp_path / "table1.csv").exists() and (tmp_path / "table1.tex").exists()


def test_runs_exports_every_run_the_tables_use_as_numbers(store, tmp_path):
    import io

    import pandas as pd

    result = _report("runs", "--experiment", "grid", "--tracking-uri", store["uri"], "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs.csv").read_text() == result.stdout
    runs = pd.read_csv(io.StringIO(result.stdout))
    assert list(runs.columns[:9]) == ["run_id", "method", "method_label", "dataset", "model", "partition", "alpha",
                                      "seed", "final_accuracy"]
    assert len(runs) == len(GRID)  # every finished run, the FAILED one left out
    assert runs["method_label"].tolist() == sorted(runs["method_label"].tolist())
    fedavg = runs[(runs["method"] == "fedavg") & (runs["partition"] == "dirichlet")].set_index("seed")
    assert fedavg.loc[1, "final_accuracy"] == pytest.approx(0.6)  # mean of the evaluations in the last 3 rounds
    assert fedavg.loc[2, "best_accuracy"] == pytest.approx(0.8)
    assert fedavg.loc[1, "pr"] == 1.0 and fedavg.loc[1, "rounds"] == 4
    assert ",4," in result.stdout.splitlines()[1]  # a count is written as one
    na = runs[(runs["method"] == "exclusivefl") & (runs["model"] == "resnet34")].iloc[0]
    assert na["pr"] == 0.0 and math.isnan(na["final_accuracy"])  # NA: no accuracy, an empty cell
    last = _report("runs", "--experiment", "grid", "--tracking-uri", store["uri"], "--out", str(tmp_path), "--last", "1")
    fedavg = pd.read_csv(io.StringIO(last.stdout)).query("method == 'fedavg' and partition == 'dirichlet'")
    assert sorted(fedavg["final_accuracy"]) == pytest.approx([0.7, 0.8])


def test_a_curve_over_few_rounds_has_ticks_at_whole_rounds_only():
    import pandas as pd

    from fedbench.reports import figures

    frame = pd.DataFrame({"panel": ["p", "p"], "method": ["fedavg", "fedavg"], "x": [2, 4],
                          "accuracy": [0.5, 0.6], "std": [0.0, 0.0]})
    fig = figures.curves_figure(frame, "round")
    fig.canvas.draw()
    assert [tick for tick in fig.axes[0].get_xticks() if tick != int(tick)] == []
    fig = figures.curves_figure(frame, "virtual time (s)")  # time is not counted in whole units
    fig.canvas.draw()
    assert [tick for tick in fig.axes[0].get_xticks() if tick != int(tick)] != []


def test_curves_draw_the_seed_mean_per_method_against_round_and_virtual_time(store, tmp_path):
    from fedbench.reports import figures, series
    from fedbench.reports.runs import load_experiment

    summary, history, _ = load_experiment("grid", store["uri"])
    frame, _ = series.curves(summary, history, "round")
    fig = figures.curves_figure(frame, "round")
    assert len(fig.axes) == 3  # IID r18, non-IID r18, non-IID r34
    fedavg = next(line for line in fig.axes[1].lines if line.get_label() == "fedavg")
    assert list(fedavg.get_xdata()) == [1, 2, 3, 4]
    assert [round(y, 6) for y in fedavg.get_ydata()] == [10.0, 55.0, 65.0, 75.0]
    assert fig.axes[0].get_xlabel() == "round" and fig.axes[0].get_ylabel() == "test accuracy (%)"

    result = _report("curves", "--experiment", "ablation", "--tracking-uri", store["uri"], "--out", str(tmp_path),
                     "--x", "virtual_time")
    assert result.exit_code == 0, result.output
    png, pdf = result.stdout.split()
    assert png.endswith("curves-virtual_time.png") and pdf.endswith(".pdf")
    assert (tmp_path / "curves-virtual_time.png").stat().st_size > 10_000
    summary, history, _ = load_experiment("ablation", store["uri"], keys=("eval/accuracy", "clock/total_s"))
    frame, _ = series.curves(summary, history, "virtual_time")
    assert sorted(set(frame["x"])) == [10.0, 20.0, 30.0, 40.0]


def _rows(markdown: str) -> dict[str, list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| Method")]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("| ").split(" | ")] for line in lines)}


def test_time_to_accuracy_gives_each_method_its_first_round_at_the_target_with_speedups(store, tmp_path):
    """Simulated time 10 s a round: FedAvg gets to 70 % in round 4, NeuLite in round 2 (2×)."""
    result = _report("tta", "--experiment", "ablation", "--target", "0.7", "--tracking-uri", store["uri"],
                     "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "tta-0.7.md").read_text() == result.stdout
    rows = _rows(result.stdout)
    assert rows["fedavg"] == ["40 s · round 4"]
    assert rows["neulite"] == ["**20 s · round 2 (2.00×)**"]
    assert rows["neulite (curriculum_loss=False)"] == ["40 s · round 4 (1.00×)"]
    assert rows["neulite (co_adaptation=False, round_robin=False)"] == ["30 s · round 3 (1.33×)"]
    above = _report("tta", "--experiment", "ablation", "--target", "0.78", "--tracking-uri", store["uri"],
                    "--baseline", "", "--out", str(tmp_path))
    assert _rows(above.stdout)["fedavg"] == ["not reached (best 70.0)"]
    assert _rows(above.stdout)["neulite"] == ["**40 s · round 4**"]
    missing = _report("tta", "--experiment", "ablation", "--target", "0.7", "--tracking-uri", store["uri"],
                      "--baseline", "nosuch", "--out", str(tmp_path))
    assert missing.exit_code == 0, missing.output
    assert "no row is 'nosuch', so no speed-ups are shown; --baseline takes a row: fedavg; neulite" in " ".join(
        missing.output.split())
    assert "×" not in missing.stdout


def test_time_to_accuracy_never_bolds_a_reference_that_ignores_memory():
    import pandas as pd

    from fedbench.reports.time_to_accuracy import time_to_accuracy

    runs = [("a", "fedavg", True, [0.8, 0.9]), ("b", "exclusivefl", False, [0.5, 0.8])]
    summary = pd.DataFrame([{"run_id": r, "method": m, "method_label": m, "dataset": "d", "partition_label": "IID",
                             "model": "m", "pr": 1.0, "ignores_memory": ignores} for r, m, ignores, _ in runs])
    history = pd.DataFrame(
        [(r, key, i, value) for r, _, _, accuracy in runs for i, acc in enumerate(accuracy)
         for key, value in (("eval/accuracy", acc), ("clock/total_s", 10.0 * (i + 1)))],
        columns=["run_id", "key", "round", "value"])
    table, warnings = time_to_accuracy(summary, history, 0.75)
    cells = {row[0].text: row[1] for row in table.rows}
    assert warnings == []
    assert cells["fedavg"].text == "10 s · round 1" and not cells["fedavg"].bold
    assert cells["exclusivefl"].text == "20 s · round 2 (0.50×)" and cells["exclusivefl"].bold


def test_time_to_accuracy_finds_the_baseline_by_method_where_its_row_has_a_longer_label():
    from fedbench.reports.time_to_accuracy import baseline_rows

    methods = {"fedavg (rounds=8)": "fedavg", "fedavg (rounds=6)": "fedavg", "neulite": "neulite", "fedavg": "fedavg"}
    chosen, warnings = baseline_rows({("a",): ["fedavg (rounds=8)", "neulite"], ("b",): ["neulite"]}, methods, "fedavg")
    assert chosen == {("a",): "fedavg (rounds=8)"} and warnings == []
    chosen, warnings = baseline_rows({("a",): ["fedavg (rounds=8)", "fedavg (rounds=6)"]}, methods, "fedavg")
    assert chosen == {} and warnings == ["2 rows of fedavg in a (fedavg (rounds=8); fedavg (rounds=6)): no speed-ups "
                                         "there; name one with --baseline 'LABEL'"]
    chosen, _ = baseline_rows({("a",): ["fedavg (rounds=8)", "fedavg"]}, methods, "fedavg")
    assert chosen == {("a",): "fedavg"}


def test_time_to_accuracy_counts_the_seeds_that_got_there_and_keeps_na_and_missing_cells(store, tmp_path):
    """Seed 2 of FedAvg reaches 75 % in round 4, seed 1 never: no speed-up against it. No clock
    logged: rounds only. ExclusiveFL on ResNet34 had PR 0 (NA); HeteroFL logged no accuracy."""
    result = _report("tta", "--experiment", "grid", "--target", "0.75", "--tracking-uri", store["uri"],
                     "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    header = next(line for line in result.stdout.splitlines() if line.startswith("| Method"))
    assert header == "| Method | cifar10 IID resnet18 | cifar10 non-IID α=0.5 resnet18 | cifar10 non-IID α=0.5 resnet34 |"
    rows = _rows(result.stdout)
    assert rows["fedavg"] == ["**round 2**", "round 4 (1/2 seeds)", "–"]
    assert rows["exclusivefl"] == ["–", "**round 3**", "NA"]
    assert rows["neulite"] == ["–", "**round 3**", "not reached (best 60.0)"]
    assert rows["heterofl"] == ["–", "–", "–"]


def test_time_to_accuracy_averages_the_seeds_that_reached_the_target():
    from fedbench.reports.time_to_accuracy import Reached, group_of

    group = group_of([Reached(3, 30.0, 0.8), Reached(5, 50.0, 0.9), Reached(None, math.nan, 0.6)])
    assert (group.seeds, group.reached, group.best) == (3, 2, 0.9)
    assert group.text(None) == "40 ± 14.1 s · round 4 (2/3 seeds)"
    assert group_of([Reached(3, 300.0, 0.8), Reached(4, 500.0, 0.8)]).text(1.5) == "400 ± 141 s · round 3.5 (1.50×, n=2)"
    assert group_of([Reached(None, math.nan, 0.6)]).text(None) == "not reached (best 60.0)"


def test_ablation_bars_key_neulite_runs_by_their_options_next_to_fedavg(store, tmp_path):
    from fedbench.reports import figures, series
    from fedbench.reports.runs import load_experiment

    summary, _, _ = load_experiment("ablation", store["uri"])
    assert sorted(set(summary["method_label"])) == [  # runs with other options are other rows, not seeds
        "fedavg", "neulite", "neulite (co_adaptation=False, round_robin=False)", "neulite (curriculum_loss=False)"]
    bars = series.ablation(summary)
    assert bars["variant"].tolist() == ["FedAvg", "w/o curriculum loss", "w/o co-adaptation", "NeuLite"]
    assert [round(v, 6) for v in bars["accuracy"]] == [0.6, 0.65, 0.7, 0.75]
    fig = figures.ablation_figure(bars)
    heights = [round(p.get_height(), 6) for p in fig.axes[0].patches]
    assert heights == [60.0, 65.0, 70.0, 75.0]
    result = _report("ablation", "--experiment", "ablation", "--tracking-uri", store["uri"], "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ablation.pdf").stat().st_size > 1000
    other = _report("ablation", "--experiment", "ablation", "--tracking-uri", store["uri"], "--out", str(tmp_path),
                    "--baseline", "oort")
    assert "no oort runs for the reference bar; pass --baseline with one of fedavg" in other.output


def test_ablation_bars_average_only_seeds_of_one_configuration():
    import pandas as pd

    from fedbench.reports import series

    common = {"dataset": "fashion-mnist", "model": "cnn", "partition_label": "IID"}
    summary = pd.DataFrame([
        {**common, "method": "fedavg", "ablation_label": "fedavg", "final_accuracy": 0.6},
        {**common, "method": "neulite", "ablation_label": "neulite (rounds=40)", "final_accuracy": 0.7},
        {**common, "method": "neulite", "ablation_label": "neulite (rounds=40)", "final_accuracy": 0.8},
        {**common, "method": "neulite", "ablation_label": "neulite (rounds=80)", "final_accuracy": 0.9,
         "options.curriculum_loss": "False"},
    ])
    bars = series.ablation(summary)
    assert dict(zip(bars["variant"], bars["runs"], strict=True)) == {
        "FedAvg": 1, "NeuLite (rounds=40)": 2, "w/o curriculum loss (rounds=80)": 1}
    assert round(bars.set_index("variant").loc["NeuLite (rounds=40)", "accuracy"], 6) == 0.75
    # Bars keep the paper's order (FedAvg, the ablations, NeuLite) whatever settings name them apart.
    assert bars["bar"].tolist() == ["FedAvg", "w/o curriculum loss", "NeuLite"]
    assert series.missing_bars(bars) == ["fashion-mnist · cnn · IID: no runs for w/o co-adaptation"]


@pytest.mark.parametrize(("switches", "variant"), [
    ((True, True, True), "NeuLite"),
    ((False, True, True), "w/o curriculum loss"),
    ((True, False, False), "w/o co-adaptation"),  # spec §2.11: sequential, no co-adapted layers
    ((False, False, False), "w/o both"),
    ((True, False, True), "w/o co-adapted layers"),  # one harmonizer switch alone is not a paper bar
    ((True, True, False), "w/o round-robin"),
    ((False, False, True), "w/o curriculum loss, co-adapted layers"),
])
def test_ablation_variant_names_follow_the_specs_definition_of_each_bar(switches, variant):
    from fedbench.reports import series

    assert series.ablation_variant(*switches) == variant


def test_info_plane_gives_each_block_a_panel_with_every_runs_nhsic_path_and_names_missing_metrics(store, tmp_path):
    result = _report("info-plane", "--run", store["neulite_run"], "--tracking-uri", store["uri"], "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert (tmp_path / f"info-plane-{store['neulite_run'][:8]}.png").exists()

    import pandas as pd

    from fedbench.reports import figures, series
    from fedbench.reports.runs import RunStore

    run_store = RunStore(store["uri"])
    keys = series.nhsic_keys(run_store.metric_keys(store["neulite_run"]))
    points = series.info_plane(run_store.histories([store["neulite_run"]], keys), "neulite")
    assert points[points["block"] == 2]["round"].tolist() == [1, 3]
    two_runs = pd.concat([points, points.assign(run="e2e", xz=points["xz"] / 2)], ignore_index=True)
    fig = figures.info_plane_figure(two_runs)  # one panel per block, each run a path in it (Fig. 2a-d)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert [ax.get_title() for ax in panels] == [f"block {b}" for b in sorted(points["block"].unique())]
    neulite, e2e = panels[0].lines
    assert neulite.get_label() == "neulite" and e2e.get_label() == "e2e"
    assert [round(v, 6) for v in neulite.get_xdata()] == [0.8, 0.6]
    assert [round(v, 6) for v in neulite.get_ydata()] == [0.3, 0.5]
    assert [round(v, 6) for v in e2e.get_xdata()] == [0.4, 0.3]
    assert "nHSIC(X; Z)" in panels[0].get_xlabel()
    colorbar_labels = {ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>"}
    assert colorbar_labels == {"round (light = early, dark = late)"}  # the shading is explained

    missing = _report("info-plane", "--run", store["fedavg_run"], "--tracking-uri", store["uri"])
    assert missing.exit_code == 2
    assert "nhsic/xz/block<b>" in missing.output and len(missing.output.strip().splitlines()) == 1


def test_memory_report_compares_every_block_with_the_full_model(tmp_path):
    from fedbench.models import build_model
    from fedbench.reports import costs, figures

    model = build_model("cnn", (1, 28, 28), 10, width=0.25)
    frame, _source = costs.block_memory(model, (1, 28, 28), 16)
    assert frame["label"].tolist()[-1] == "full" and len(frame) == model.num_blocks + 1
    parts = ["params_bytes", "grads_bytes", "optimizer_bytes", "activations_bytes"]
    assert (frame[parts].sum(axis=1) == frame["peak_bytes"]).all()
    fig = figures.bars_vs_full(frame, [(p, p) for p in parts], "peak training memory (MiB)", "t", scale=figures.MIB)
    tops = [p.get_y() + p.get_height() for p in fig.axes[0].patches[-len(frame):]]
    assert [round(t, 6) for t in tops] == [round(b / figures.MIB, 6) for b in frame["peak_bytes"]]
    result = _report("memory", "--model", "cnn", "--dataset", "fashion-mnist", "--batch-size", "16",
                     "--width", "0.25", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "memory-cnn-fashion-mnist-b16.png").stat().st_size > 10_000


def test_time_report_draws_compute_and_transfer_per_block(tmp_path):
    pytest.importorskip("fedbench.simulation.clock")
    result = _report("time", "--model", "cnn", "--dataset", "fashion-mnist", "--width", "0.25",
                     "--samples", "100", "--epochs", "1", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "time-cnn-fashion-mnist-jetson-tx2.pdf").exists()
    # The per-round speed-up over the full model (the paper's "up to 1.9×") is printed per block.
    result = _report("time", "--model", "resnet18", "--dataset", "cifar10", "--samples", "500", "--out", str(tmp_path))
    line = " ".join(result.stderr.split())
    full, blocks = line.split("full model ")[1].split(" s per round; blocks ")
    times = [float(t) for t in blocks.split(" s (speed-up")[0].split(", ")]
    ratios = [float(r.rstrip("×")) for r in blocks.split("(speed-up ")[1].split(")")[0].split(", ")]
    assert ratios == pytest.approx([float(full) / t for t in times], rel=0.02)  # times print to 0.1 s


def test_time_report_over_a_fleet_times_each_stages_slowest_selected_device_without_training(tmp_path):
    from fedbench.config import make_config
    from fedbench.reports import costs

    config = make_config(overrides={
        "data": {"dataset": "synthetic", "num_clients": 20, "partition": "iid"}, "model": {"name": "cnn"},
        "fleet": {"profile": "relative"}, "train": {"local_epochs": 1},
        "clients_per_round": 4, "rounds": 6, "tracking": {"enabled": False},
    })
    blank = costs.shape_only_dataset("synthetic", (3, 16, 16), 10, 20 * 30)
    assert blank.train_images.stride(0) == 0  # no pixels stored
    frame = costs.fleet_round_times(config, blank, rounds=6)
    assert frame["label"].tolist() == ["block 1", "block 2", "full"]
    assert frame["rounds"].tolist() == [3, 3, 6]  # cnn has 2 stages, round-robin
    assert frame.loc[frame["label"] == "full", "eligible"].item() == 20  # FedAvg draws from every device
    assert all(0 < n < 20 for n in frame.loc[frame["label"] != "full", "eligible"])  # relative fleet
    assert (frame["total_s"] - frame["compute_s"] - frame["comm_s"]).abs().max() < 1e-9

    result = _report("time", "--model", "cnn", "--dataset", "synthetic", "--fleet", "relative", "--clients", "20",
                     "--clients-per-round", "4", "--rounds", "4", "--samples", "30", "--epochs", "1",
                     "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "devices eligible per block" in " ".join(result.output.split())
    assert (tmp_path / "time-cnn-synthetic-fleet-relative.png").exists()
    unknown = _report("time", "--model", "cnn", "--dataset", "synthetic", "--fleet", "papr")
    assert unknown.exit_code == 2 and "papr" in unknown.output and len(unknown.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["tabel1"], "unknown report 'tabel1' (did you mean 'table1'?)"),
        (["table1", "--experiment", "nope"], "unknown experiment 'nope'; known: Default, ablation, broken"),
        (["table1", "--experiment", "broken"], "experiment 'broken' has no finished runs (runs: 1 FAILED); continue "
         "a stopped run with 'fedbench run --resume RUN_ID'"),
        (["table1", "--experiment", "grid", "--format", "docx"], "unknown format 'docx'; use one of md, tex, csv"),
        (["table1", "--experiment", "ablation", "--iid"], "no IID runs for Table 1"),
        (["curves", "--experiment", "grid", "--x", "virtual_time"], "no run logged clock/total_s"),
        (["ablation", "--experiment", "broken"], "has no finished runs"),
        (["info-plane", "--run", "0123456789abcdef"], "run '0123456789abcdef' is not in the tracking store"),
        (["tta", "--experiment", "grid", "--target", "75"], "--target (75) must be an accuracy in (0, 1], e.g. 0.75 "
         "(for 75 %, give 0.75)"),
        (["tta", "--experiment", "broken", "--target", "0.5"], "has no finished runs"),
        (["ablation", "--experiment", "ablation", "--baseline", "fedavgg"],
         "unknown method 'fedavgg' (did you mean 'fedavg'?)"),
    ],
)
def test_bad_input_is_one_line_with_exit_code_2(store, args, expected):
    result = _report(*args, "--tracking-uri", store["uri"]) if args != ["tabel1"] else _report(*args)
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_an_unreachable_tracking_uri_is_one_line_with_exit_code_2():
    result = _report("table1", "--experiment", "grid", "--tracking-uri", "http://127.0.0.1:9")
    assert result.exit_code == 2, result.output
    assert "cannot" in result.output and "http://127.0.0.1:9" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("kind", "fix"),
    [
        ("folder", "give --tracking-uri (or MLFLOW_TRACKING_URI) the sqlite:///PATH.db store 'fedbench run' wrote"),
        ("file-uri-folder", "the sqlite:///PATH.db store 'fedbench run' wrote, not a folder"),
        ("env-folder", "the sqlite:///PATH.db store 'fedbench run' wrote, not a folder"),
        ("junk-db", "is the MLflow database 'fedbench run' wrote and is readable"),
        ("truncated-db", "is the MLflow database 'fedbench run' wrote and is readable"),
        ("db-without-scheme", "a store in a database file needs the scheme: --tracking-uri sqlite:///"),
    ],
)
def test_a_store_that_cannot_be_opened_is_one_line_naming_it_and_the_fix(store, tmp_path, monkeypatch, kind, fix):
    """MLflow opens the store in MlflowClient's constructor: a folder (its refused file store), a
    junk or truncated database fail there, which once escaped as "unexpected ..." (exit code 1)."""
    from pathlib import Path

    real = Path(store["uri"].removeprefix("sqlite:///"))
    folder = tmp_path / "mlruns"
    folder.mkdir()
    (tmp_path / "junk.db").write_text("junk\n")
    (tmp_path / "truncated.db").write_bytes(real.read_bytes()[:4096])
    uri = {"folder": str(folder), "file-uri-folder": folder.as_uri(), "env-folder": None,
           "junk-db": f"sqlite:///{tmp_path / 'junk.db'}", "truncated-db": f"sqlite:///{tmp_path / 'truncated.db'}",
           "db-without-scheme": str(real)}[kind]
    if uri is None:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", str(folder))
    result = _report("table1", "--experiment", "grid", "--out", str(tmp_path / "out"),
                     *(["--tracking-uri", uri] if uri else []))
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert f"cannot open the MLflow tracking store at {uri or folder} (" in result.output
    assert fix in result.output and "unexpected" not in result.output


def test_a_store_that_fails_a_run_lookup_is_an_error_not_a_missing_run(store):
    """``checkpoints prune --finished`` asks the status of each checkpoint's run: "no such run"
    keeps the checkpoint, so a store that is down must not look like one (nothing pruned, silently)."""
    from fedbench.errors import TrackingError
    from fedbench.reports.runs import RunStore

    runs = RunStore(store["uri"])
    assert runs.status(store["fedavg_run"]) == "FINISHED"
    assert runs.status("0" * 32) is None and runs.status("../x") is None  # unknown / not an id
    with pytest.raises(TrackingError, match=r"cannot read run 0+ in .*http://127.0.0.1:9.*start the server"):
        RunStore("http://127.0.0.1:9").status("0" * 32)


REPORTS_WITH_OUT = {
    "table1": ["table1", "--experiment", "grid"],
    "table2": ["table2", "--experiment", "grid"],
    "curves": ["curves", "--experiment", "grid"],
    "ablation": ["ablation", "--experiment", "ablation"],
    "tta": ["tta", "--experiment", "ablation", "--target", "0.7"],
    "runs": ["runs", "--experiment", "grid"],
    "info-plane": ["info-plane", "--run", "{neulite_run}"],
    "memory": ["memory", "--model", "cnn", "--dataset", "synthetic"],
    "time": ["time", "--model", "cnn", "--dataset", "synthetic", "--samples", "30", "--epochs", "1"],
}


@pytest.mark.parametrize("report", list(REPORTS_WITH_OUT))
def test_an_out_that_is_a_file_is_one_line_with_exit_code_2(store, tmp_path, report):
    args = [a.format(**store) for a in REPORTS_WITH_OUT[report]]
    if report not in ("memory", "time"):
        args += ["--tracking-uri", store["uri"]]
    (tmp_path / "base.txt").write_text("a file where the output folder belongs\n")
    result = _report(*args, "--out", str(tmp_path / "base.txt"))
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert f"--out {tmp_path / 'base.txt'} is a file; give --out a folder" in result.output
    assert (tmp_path / "base.txt").read_text().startswith("a file")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc, where no folder can be made")
@pytest.mark.parametrize("report", ["table1", "curves", "memory"])
def test_an_out_that_cannot_be_made_is_one_line_with_exit_code_2(store, report):
    args = [a.format(**store) for a in REPORTS_WITH_OUT[report]]
    if report != "memory":
        args += ["--tracking-uri", store["uri"]]
    result = _report(*args, "--out", "/proc/fedbench-report")
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "output folder /proc/fedbench-report is not writable" in result.output


@pytest.mark.parametrize(("args", "name"), [
    (["table1", "--experiment", "ablation"], "table1.md"),
    (["memory", "--model", "cnn", "--dataset", "synthetic", "--batch-size", "32"], "memory-cnn-synthetic-b32.png"),
])
def test_an_output_file_that_cannot_be_written_is_one_line_naming_it(store, tmp_path, args, name):
    (tmp_path / name).mkdir()  # a folder where the file goes: the folder itself is writable
    result = _report(*args, *(["--tracking-uri", store["uri"]] if args[0] == "table1" else []), "--out", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert f"cannot write {tmp_path / name} (Is a directory); give --out a folder you can write to" in result.output


def _long_label_curves(panels: int, labels: int, settings: int):
    import pandas as pd

    names = [f"fedavg (rounds=8, train.lr=0.{i:02d}" + ", train.batch_size=32" * settings + ")" for i in range(labels)]
    rows = [(f"cifar10 resnet{p} non-IID α=0.5", name, r, 0.1 * r + 0.01 * i, 0.02)
            for p in range(panels) for i, name in enumerate(names) for r in range(1, 5)]
    return pd.DataFrame(rows, columns=["panel", "method", "x", "accuracy", "std"]), names


@pytest.mark.parametrize(("panels", "labels", "settings"), [(1, 2, 4), (3, 12, 2), (4, 7, 1), (2, 1, 0)])
def test_curves_with_long_labels_keep_every_panel_readable(panels, labels, settings):
    """Several configurations of a method give long labels (``fedavg (rounds=8, train.lr=0.05)``):
    a legend inside each panel squeezed the panels to slivers, or made constrained layout give up
    with a warning. One legend below the panels keeps them their size."""
    import io
    import warnings

    from fedbench.reports import figures

    frame, names = _long_label_curves(panels, labels, settings)
    fig = figures.curves_figure(frame, "round")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "constrained_layout not applied because axes sizes collapsed to zero"
        fig.savefig(io.BytesIO(), format="png", dpi=72)
    width_in, height_in = fig.get_size_inches()
    for ax in fig.axes:
        box = ax.get_position()
        assert box.width * width_in > 2.5 and box.height * height_in > 2.0, (box, width_in, height_in)
        assert ax.get_legend() is None
    (legend,) = fig.legends
    shown = [text.get_text().replace("\n", " ") for text in legend.get_texts()]
    assert shown == names  # wrapped at a word, never cut
    assert legend.get_window_extent().width <= fig.bbox.width
    if panels > 1:  # a configuration is drawn alike in every panel: one legend serves them all
        styles = [[(line.get_linestyle(), line.get_marker(), line.get_color()) for line in ax.lines] for ax in fig.axes]
        assert all(s == styles[0] for s in styles)


def test_two_real_runs_logged_by_the_tracker_render_as_table1(store, tiny_config, tmp_path):
    tracking_uri = store["uri"]  # one store per file: creating an MLflow database takes seconds
    from fedbench import engine
    from fedbench.config import DataConfig
    from fedbench.tracking.tracker import MlflowTracker

    finals = []
    for seed in (1, 2):
        config = dataclasses.replace(
            tiny_config, seed=seed, data=dataclasses.replace(tiny_config.data, partition="dirichlet")
        )
        assert isinstance(config.data, DataConfig)
        result = engine.run(config, tracker=MlflowTracker(tracking_uri, experiment="e2e"))
        finals.append(sum(result.metric("eval/accuracy")[-3:]) / len(result.metric("eval/accuracy")[-3:]))
    out = _report("table1", "--experiment", "e2e", "--tracking-uri", tracking_uri, "--out", str(tmp_path))
    assert out.exit_code == 0, out.output
    mean = sum(finals) / 2
    std = math.sqrt(sum((f - mean) ** 2 for f in finals))
    assert out.stdout.splitlines()[0] == "| Method | Incl. | synthetic cnn | PR cnn |"
    # FedAvg trains every device whatever its budget: its PR of 100 % is no inclusiveness (spec §13).
    assert out.stdout.splitlines()[2] == f"| fedavg | n/a | {100 * mean:.1f} ± {100 * std:.1f} (n=2) | 100 |"
    assert "Incl. n/a: the method ignores memory budgets" in out.stdout


def test_runs_of_different_configurations_are_separate_rows_never_seeds(store, tiny_config, tmp_path):
    """Issue #25's reproduction: three FedAvg runs at seed 42 that differ in lr, or in rounds and batch
    size, are three rows of one seed each, labelled by what differs; a FAILED run is left out."""
    from fedbench import engine
    from fedbench.tracking.tracker import MlflowTracker

    base = dataclasses.replace(tiny_config, seed=42, rounds=1,
                               data=dataclasses.replace(tiny_config.data, partition="dirichlet"))
    variants = [
        dataclasses.replace(base, train=dataclasses.replace(base.train, lr=0.01)),
        dataclasses.replace(base, train=dataclasses.replace(base.train, lr=0.3)),
        dataclasses.replace(base, rounds=3, train=dataclasses.replace(base.train, lr=0.01, batch_size=8)),
        dataclasses.replace(base, threads=1, train=dataclasses.replace(base.train, lr=0.01)),  # a seed's twin
    ]
    for config in variants:
        engine.run(config, tracker=MlflowTracker(store["uri"], experiment="configs"))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store["uri"])
    _log_run(client, client.get_experiment_by_name("configs").experiment_id,
             ("fedavg", "synthetic", "cnn", "dirichlet", 42, [0.99] * 4, 1.0, {}), 7, status="FAILED")
    result = _report("table1", "--experiment", "configs", "--tracking-uri", store["uri"], "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if line.startswith("| fedavg")]
    assert [row.split(" | ")[0] for row in rows] == [
        "| fedavg (rounds=1, train.batch_size=32, train.lr=0.01)",
        "| fedavg (rounds=1, train.batch_size=32, train.lr=0.3)",
        "| fedavg (rounds=3, train.batch_size=8, train.lr=0.01)",
    ]
    # The run that differs only in threads repeats the first row's seed: it replaces it, not a 2nd seed.
    assert all("(n=1)" in row and "±" not in row for row in rows)
    assert "repeats a later run's configuration and seed in all but where it ran" in result.stderr
    assert "99.0" not in result.stdout  # the FAILED run
    assert "skipping 1 unfinished run(s)" in result.stderr


def test_settings_that_do_not_change_results_are_not_configurations():
    import pandas as pd

    from fedbench.reports.summary import run_settings

    run = pd.Series({"params.seed": "3", "params.threads": "1", "params.executor": "process",
                     "params.tracking.experiment": "x", "params.data.data_dir": "/d", "params.device": "cuda",
                     "params.resident": "False", "params.cuda_graphs": "True",
                     "params.partition.size_min": "12", "params.train.lr": "0.3", "params.options.mu": float("nan")})
    settings = run_settings(run)
    assert settings["train.lr"] == "0.3" and settings["rounds"] == "20"  # not logged: the default
    assert not {"seed", "threads", "executor", "tracking.experiment", "data.data_dir", "device", "resident",
                "cuda_graphs", "partition.size_min"} & set(settings)
    assert settings["options.mu"] is None


@pytest.mark.parametrize("experiment", ["/abs/dir", "../../x", "..", "a b/c"])
def test_an_experiment_name_never_leaves_the_output_folder(store, tmp_path, monkeypatch, experiment):
    from mlflow.tracking import MlflowClient

    from fedbench.reports.render import folder_name

    client = MlflowClient(tracking_uri=store["uri"])
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    _log_run(client, experiment_id, GRID[0], 0)
    monkeypatch.chdir(tmp_path)
    result = _report("table1", "--experiment", experiment, "--tracking-uri", store["uri"])
    assert result.exit_code == 0, result.output
    written = list(tmp_path.rglob("table1.md"))
    assert written == [tmp_path / "reports" / "out" / folder_name(experiment) / "table1.md"]
    assert "/" not in folder_name(experiment) and not folder_name(experiment).startswith(".")
    assert folder_name("mini-table1") == "mini-table1"


def test_a_non_default_evaluation_protocol_is_named_in_the_row_even_when_every_run_uses_it():
    import pandas as pd

    from fedbench.reports.summary import method_labels

    frame = pd.DataFrame({"method": ["neulite", "neulite", "fedavg"]})
    settings = [{"options.evaluate": "stage"}, {"options.evaluate": "stage"}, {}]
    assert method_labels(frame, settings) == ["neulite (evaluate=stage)", "neulite (evaluate=stage)", "fedavg"]
    cycle = [{"options.evaluate": "cycle"}, {"options.evaluate": "cycle"}, {}]
    assert method_labels(frame, cycle) == ["neulite", "neulite", "fedavg"]


def test_a_preset_is_named_in_the_row_instead_of_the_training_values_it_stands_for():
    import pandas as pd

    from fedbench.config import make_config
    from fedbench.reports.summary import method_labels, run_settings

    configs = [make_config(overrides={"method": "heterofl", "preset": preset}) for preset in (None, "official")]
    configs.append(make_config(overrides={"method": "heterofl", "preset": "official", "train": {"local_epochs": 1}}))
    configs.append(make_config(overrides={"method": "depthfl", "preset": "official"}))
    frame = pd.DataFrame({"method": [c.method for c in configs]})
    settings = [run_settings(pd.Series({f"params.{k}": v for k, v in c.flat_params().items()})) for c in configs]
    assert method_labels(frame, settings) == [
        "heterofl", "heterofl (preset=official)", "heterofl (preset=official, train.local_epochs=1)",
        "depthfl (preset=official)"]


def test_final_accuracy_covers_the_same_last_rounds_for_every_method():
    from fedbench.reports.summary import final_accuracy

    every_round = [(r, 0.1 * r) for r in range(8)]  # FedAvg, eval_every 1, 8 rounds
    stage_ends = [(3, 0.3), (7, 0.7)]  # NeuLite with 4 stages, scored after stage-4 rounds only
    assert final_accuracy(every_round, 3, 8, 1) == pytest.approx((0.5 + 0.6 + 0.7) / 3)
    assert final_accuracy(stage_ends, 3, 8, 1) == pytest.approx(0.7)  # rounds 6-8 hold one evaluation
    assert final_accuracy(stage_ends, 2, 8, 4) == pytest.approx(0.5)  # two intervals of 4: rounds 1-8
    assert final_accuracy([(3, 0.3)], 1, 8, 1) == pytest.approx(0.3)  # none in the window: the last one
    assert final_accuracy(stage_ends, 1, math.nan, 1) == pytest.approx(0.7)  # no round count: last evaluations
    assert math.isnan(final_accuracy([], 3, 8, 1))


def _summary_rows(rows):
    import pandas as pd

    base = {"partition_label": "Dir(0.5)", "ignores_memory": False, "seed": 1}
    frame = pd.DataFrame([{**base, **row} for row in rows])
    frame["method_label"] = frame["method"]
    frame["best_accuracy"] = frame["final_accuracy"]
    return frame


def test_tables_put_data_sets_and_models_in_the_papers_order():
    from fedbench.reports import tables

    summary = _summary_rows([
        {"method": "neulite", "dataset": d, "model": m, "final_accuracy": 0.5, "pr": 1.0}
        for d in ("cifar100", "cinic10", "cifar10") for m in ("squeezenet", "vgg11_bn", "resnet18")])
    table = tables.table1(summary)
    assert table.columns[2:] == (
        "cifar10 resnet18", "cifar10 vgg11_bn", "cifar10 squeezenet", "cinic10 resnet18", "cinic10 vgg11_bn",
        "cinic10 squeezenet", "cifar100 resnet18", "cifar100 vgg11_bn", "cifar100 squeezenet",
        "PR resnet18", "PR vgg11_bn", "PR squeezenet")


def test_na_is_a_property_of_the_cell_a_run_of_pr_0_elsewhere_leaves_the_others_measured():
    """NA says that no device could train this cell's runs; a model with PR 0 on one data set may
    still be trainable on another, and a cell nobody ran stays "not run"."""
    from fedbench.reports import tables

    summary = _summary_rows([
        {"method": "exclusivefl", "dataset": "cifar10", "model": "resnet34", "final_accuracy": 0.3, "pr": 0.02},
        {"method": "exclusivefl", "dataset": "cifar100", "model": "resnet34", "final_accuracy": math.nan, "pr": 0.0},
        {"method": "neulite", "dataset": "cinic10", "model": "resnet34", "final_accuracy": 0.4, "pr": 1.0},
    ])
    (row,) = [r for r in tables.table1(summary).rows if r[0].text == "exclusivefl"]
    assert [c.text for c in row[2:5]] == ["30.0 (n=1)", tables.MISSING, tables.NOT_APPLICABLE]  # c10, cinic, c100


def test_latex_tables_spell_the_greek_and_typographic_symbols_as_latex():
    from fedbench.reports.render import latex_escape

    assert latex_escape("PR Δ — 2× ± α") == r"PR $\Delta$ --- 2$\times$ $\pm$ $\alpha$"


def test_ablation_reference_fills_the_fedavg_slot_whichever_method_it_is():
    """configs/paper/ablation.yaml runs ExclusiveFL as Fig. 8's reference (the paper's numbers say
    so): its bar is the reference bar, first and named for what it is, and no FedAvg is missed."""
    import pandas as pd

    from fedbench.reports import series

    common = {"dataset": "cifar100", "model": "resnet18", "partition_label": "IID"}
    summary = pd.DataFrame([
        {**common, "method": "exclusivefl", "ablation_label": "exclusivefl", "final_accuracy": 0.37},
        {**common, "method": "neulite", "ablation_label": "neulite", "final_accuracy": 0.57},
        {**common, "method": "neulite", "ablation_label": "neulite", "final_accuracy": 0.56,
         "options.curriculum_loss": "False"},
        {**common, "method": "neulite", "ablation_label": "neulite", "final_accuracy": 0.48,
         "options.co_adaptation": "False", "options.round_robin": "False"},
    ])
    bars = series.ablation(summary, baseline="exclusivefl")
    assert bars["variant"].tolist() == ["FedAvg (exclusivefl)", "w/o curriculum loss", "w/o co-adaptation", "NeuLite"]
    assert series.missing_bars(bars) == []


def test_a_table_says_when_its_methods_ran_different_protocols_and_names_a_flag_on_a_preset(tmp_path):
    """Labels name what varies within a method; 2 rounds of FedAvg beside 8 of ExclusiveFL in one
    column is a difference between methods, which a warning names. Under a preset, a training
    value a flag changed is always in the label (docs/reports.md)."""
    from mlflow.tracking import MlflowClient

    from fedbench.config import preset_layer
    from fedbench.reports.runs import load_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("mixed")
    acc = [0.1, 0.2, 0.3, 0.4]
    _log_run(client, experiment, ("fedavg", "cifar10", "resnet18", "iid", 1, acc, 1.0, {"rounds": "2"}), 0)
    _log_run(client, experiment, ("exclusivefl", "cifar10", "resnet18", "iid", 1, acc, 0.2, {"rounds": "8"}), 1)
    official = {f"train.{k}": str(v) for k, v in preset_layer("official", "heterofl")["train"].items()}
    _log_run(client, experiment, ("heterofl", "cifar10", "resnet18", "iid", 1, acc, 1.0,
                                  {**official, "rounds": "8", "preset": "official", "train.local_epochs": "1"}), 2)
    summary, _, warnings = load_experiment("mixed", uri)
    assert "heterofl (preset=official, train.local_epochs=1)" in set(summary["method_label"])
    assert ("cifar10 · resnet18 · IID: the methods ran with different rounds (exclusivefl 8, fedavg 2, heterofl 8); "
            "their rows do not share one protocol") in warnings


def test_a_configuration_where_some_seeds_could_not_train_says_so():
    import pandas as pd

    from fedbench.reports.summary import _untrainable_seeds

    common = {"method_label": "exclusivefl", "dataset": "cifar10", "model": "resnet18", "partition_label": "IID"}
    frame = pd.DataFrame([{**common, "seed": 1, "pr": 0.0}, {**common, "seed": 2, "pr": 0.04},
                          {**common, "seed": 3, "pr": 0.04}])
    assert _untrainable_seeds(frame) == [
        "exclusivefl · cifar10 · resnet18 · IID: seed(s) 1 had PR 0 (no device could train); its accuracy "
        "averages the 2 seed(s) that trained"]
    assert _untrainable_seeds(frame.assign(pr=0.0)) == []  # every seed: the cell is NA, no average
