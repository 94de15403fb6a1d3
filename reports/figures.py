"""The paper's figures as matplotlib figures (Agg backend), readable in greyscale.

Every function takes a tidy frame (see :mod:`fedbench.reports.series`) and returns
a :class:`~matplotlib.figure.Figure`; :func:`save_figure` writes it as PNG and PDF.
Lines differ by line style and marker, bars by grey level and hatch, so nothing
relies on colour.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

GREYS = ("0.1", "0.45", "0.7", "0.3", "0.85", "0.55")
# 7 hatches against 6 greys: the first 42 bars of a figure all look different.
HATCHES = ("", "//", "..", "xx", "\\\\", "--", "++")
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "x", "*", "P")
MIB = 1024 * 1024


def _style(i: int) -> dict:
    return {"color": GREYS[i % len(GREYS)] if i < len(GREYS) else "0.0",
            "linestyle": LINESTYLES[i % len(LINESTYLES)], "marker": MARKERS[i % len(MARKERS)]}


def _bar_style(i: int) -> dict:
    return {"color": GREYS[i % len(GREYS)], "hatch": HATCHES[i % len(HATCHES)], "edgecolor": "0.0"}


def _grid(n: int, width_in: float = 4.2, height_in: float = 3.2) -> tuple[Figure, list]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width_in * cols, height_in * rows), layout="constrained")
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    return fig, axes


def save_figure(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write ``<stem>.png`` (150 dpi) and ``<stem>.pdf`` into ``out_dir``; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    return paths


def curves_figure(curves: pd.DataFrame, x_label: str) -> Figure:
    """Fig. 5: one panel per (data set, model, partition), one line per method.

    ``curves`` has columns ``panel, method, x, accuracy, std`` (accuracy as a fraction);
    a band shows ± std over seeds where there are several.
    """
    panels = list(dict.fromkeys(curves["panel"]))
    fig, axes = _grid(len(panels))
    for ax, panel in zip(axes, panels, strict=True):
        part = curves[curves["panel"] == panel]
        for i, (method, line) in enumerate(part.groupby("method", sort=False)):
            line = line.sort_values("x")
            style = _style(i)
            ax.plot(line["x"], 100 * line["accuracy"], label=method, markersize=4, **style)
            if (line["std"] > 0).any():
                ax.fill_between(line["x"], 100 * (line["accuracy"] - line["std"]),
                                100 * (line["accuracy"] + line["std"]), color=style["color"], alpha=0.15)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel(x_label)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, color="0.9")
        ax.legend(fontsize=8)
    return fig


def bars_vs_full(
    rows: pd.DataFrame, parts: list[tuple[str, str]], y_label: str, title: str, scale: float = 1.0
) -> Figure:
    """Fig. 6 / Fig. 7: one stacked bar per block (NeuLite stage) and one for the full model
    (``label == "full"``), its total drawn as a dashed reference line. ``parts`` lists
    (column, legend) pairs stacked bottom-up, e.g. parameters, gradients, ... or compute, transfer."""
    fig = Figure(figsize=(5.4, 3.6), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    labels = rows["label"].tolist()
    bottom = [0.0] * len(rows)
    for i, (column, legend) in enumerate(parts):
        heights = (rows[column] / scale).tolist()
        ax.bar(range(len(rows)), heights, bottom=bottom, label=legend, **_bar_style(i))
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    for i, total in enumerate(bottom):
        ax.annotate(f"{total:.3g}", (i, total), ha="center", va="bottom", fontsize=8)
    if "full" in labels:
        ax.axhline(bottom[labels.index("full")], color="0.0", linestyle="--", linewidth=1, label="full model")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize=9)
    ax.grid(True, axis="y", color="0.9")
    ax.set_axisbelow(True)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def ablation_figure(bars: pd.DataFrame) -> Figure:
    """Fig. 8: grouped bars, one group per setting (``group``), one bar per ``variant``,
    height ``accuracy`` (fraction) with ± ``std`` error bars."""
    groups = list(dict.fromkeys(bars["group"]))
    variants = list(dict.fromkeys(bars["variant"]))
    fig = Figure(figsize=(max(5.0, 1.6 * len(groups) + 2), 3.6), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(variants)
    for i, variant in enumerate(variants):
        part = bars[bars["variant"] == variant].set_index("group")
        xs = [g + (i - (len(variants) - 1) / 2) * width for g in range(len(groups)) if groups[g] in part.index]
        present = [g for g in groups if g in part.index]
        ax.bar(xs, [100 * part.loc[g, "accuracy"] for g in present], width,
               yerr=[100 * part.loc[g, "std"] for g in present], capsize=3, label=variant, **_bar_style(i))
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, axis="y", color="0.9")
    ax.set_axisbelow(True)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def info_plane_figure(points: pd.DataFrame) -> Figure:
    """Fig. 2: one panel per run; per block the path of (nHSIC(X;Z), nHSIC(Y;Z)) over rounds,
    points shaded from light (early) to dark (late), with a colour bar of the round."""
    runs = list(dict.fromkeys(points["run"]))
    fig, axes = _grid(len(runs))
    last_round = max(points["round"].max() + 1, 1)  # rounds are 1-based on figures, as on the curves
    for ax, run in zip(axes, runs, strict=True):
        part = points[points["run"] == run]
        for i, (block, path) in enumerate(part.groupby("block", sort=True)):
            path = path.sort_values("round")
            style = _style(i)
            ax.plot(path["xz"], path["yz"], color="0.5", linestyle=style["linestyle"], linewidth=0.8,
                    label=f"block {block}", marker=style["marker"], markersize=0)
            shaded = ax.scatter(path["xz"], path["yz"], c=path["round"] + 1, cmap="Greys", vmin=-0.3 * last_round,
                                vmax=last_round, marker=style["marker"], edgecolors="0.0", linewidths=0.4, s=22)
        # The shading is time: say so on the figure itself, not only in the caption.
        colorbar = fig.colorbar(shaded, ax=ax, pad=0.02)
        colorbar.set_label("round (light = early, dark = late)", fontsize=8)
        colorbar.ax.set_ylim(0, last_round)
        ax.set_title(run, fontsize=9)
        ax.set_xlabel("nHSIC(X; Z) (unitless, 0–1)")
        ax.set_ylabel("nHSIC(Y; Z) (unitless, 0–1)")
        ax.grid(True, color="0.9")
        ax.legend(fontsize=8)
    return fig
