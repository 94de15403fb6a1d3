"""The paper's figures as matplotlib figures (Agg backend), readable in greyscale.

Every function takes a tidy frame (see :mod:`fedbench.reports.series`) and returns
a :class:`~matplotlib.figure.Figure`; :func:`save_figure` writes it as PNG and PDF.
Lines differ by line style and marker, bars by grey level and hatch, so nothing
relies on colour.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fedbench.reports.render import check_out_dir, write_out  # noqa: E402
from fedbench.reports.series import X_AXES  # noqa: E402

GREYS = ("0.1", "0.45", "0.7", "0.3", "0.85", "0.55")
# 7 hatches against 6 greys: the first 42 bars of a figure all look different.
HATCHES = ("", "//", "..", "xx", "\\\\", "--", "++")
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "x", "*", "P")
MIB = 1024 * 1024
# A panel of a grid figure (curves, info plane), in inches, and the most panels a row holds.
PANEL_WIDTH_IN, PANEL_HEIGHT_IN, GRID_COLS = 4.2, 3.2, 3
# Legend metrics at LEGEND_FONT points, in inches, for sizing a figure legend before it is drawn:
# a character's mean width, one line's height, the line sample with the gaps around it (handle,
# text pad and column spacing), and the margin kept around the legend.
LEGEND_FONT = 8
LEGEND_CHAR_IN = 0.55 * LEGEND_FONT / 72
LEGEND_LINE_IN = 1.25 * LEGEND_FONT / 72
LEGEND_HANDLE_IN = 4.8 * LEGEND_FONT / 72
LEGEND_MARGIN_IN = 0.25


def _style(i: int) -> dict:
    return {"color": GREYS[i % len(GREYS)] if i < len(GREYS) else "0.0",
            "linestyle": LINESTYLES[i % len(LINESTYLES)], "marker": MARKERS[i % len(MARKERS)]}


def _bar_style(i: int) -> dict:
    return {"color": GREYS[i % len(GREYS)], "hatch": HATCHES[i % len(HATCHES)], "edgecolor": "0.0"}


def _grid(n: int, extra_height_in: float = 0.0) -> tuple[Figure, list]:
    """``n`` panels, at most :data:`GRID_COLS` a row, each :data:`PANEL_WIDTH_IN` ×
    :data:`PANEL_HEIGHT_IN`; ``extra_height_in`` more at the bottom for a figure legend, so that
    the legend does not take its room from the panels."""
    cols = min(n, GRID_COLS)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(PANEL_WIDTH_IN * cols, PANEL_HEIGHT_IN * rows + extra_height_in), layout="constrained")
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    return fig, axes


def legend_layout(labels: list[str], width_in: float) -> tuple[list[str], int, float]:
    """Labels wrapped to fit a legend ``width_in`` wide, its number of columns and its height (inches).

    A configuration's label (``fedavg (rounds=8, train.lr=0.05)``) can be longer than a panel
    is wide; a legend inside a panel then squeezes the panel to a sliver, or constrained layout
    gives up ("axes sizes collapsed to zero"). One legend below the panels, with as many columns
    as the longest label allows and labels wrapped at a word only where one alone is wider than
    the figure, keeps every panel its size whatever the labels. Sizes are estimated from character
    counts (no renderer needed), with a margin."""
    usable = max(width_in - 2 * LEGEND_MARGIN_IN, 1.0)
    chars = max(int((usable - LEGEND_HANDLE_IN) / LEGEND_CHAR_IN), 12)
    wrapped = [textwrap.fill(label, chars, break_long_words=False, break_on_hyphens=False) for label in labels]
    widest = max((len(line) for label in wrapped for line in label.splitlines()), default=1)
    ncol = max(1, min(len(wrapped), int(usable // (widest * LEGEND_CHAR_IN + LEGEND_HANDLE_IN))))
    # Matplotlib fills a legend column by column: rows of ncol labels, each as tall as its tallest.
    rows = math.ceil(len(wrapped) / ncol) if wrapped else 0
    lines = sum(max(wrapped[r + rows * c].count("\n") + 1 for c in range(ncol) if r + rows * c < len(wrapped))
                for r in range(rows))
    height = lines * LEGEND_LINE_IN + rows * 0.5 * LEGEND_FONT / 72 + 2 * LEGEND_MARGIN_IN
    return wrapped, ncol, height


def save_figure(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write ``<stem>.png`` (150 dpi) and ``<stem>.pdf`` into ``out_dir``; returns both paths.
    A folder or file that cannot be written is a one-line :class:`~fedbench.errors.ConfigError`
    (:func:`~fedbench.reports.render.check_out_dir`), as for tables."""
    check_out_dir(out_dir)
    return [write_out(out_dir / f"{stem}.png", lambda path: fig.savefig(path, dpi=150)),
            write_out(out_dir / f"{stem}.pdf", fig.savefig)]


def curves_figure(curves: pd.DataFrame, x_label: str) -> Figure:
    """Fig. 5: one panel per (data set, model, partition), one line per method.

    ``curves`` has columns ``panel, method, x, accuracy, std`` (accuracy as a fraction);
    a band shows ± std over seeds where there are several. A method (configuration) has the same
    line style in every panel, so one legend below the panels names them all
    (:func:`legend_layout`): labels of any length leave the panels their size.
    """
    panels = list(dict.fromkeys(curves["panel"]))
    methods = list(dict.fromkeys(curves["method"]))
    labels, ncol, legend_in = legend_layout(methods, PANEL_WIDTH_IN * min(len(panels), GRID_COLS))
    fig, axes = _grid(len(panels), extra_height_in=legend_in)
    handles: dict[str, Line2D] = {}
    for ax, panel in zip(axes, panels, strict=True):
        part = curves[curves["panel"] == panel]
        for method, line in part.groupby("method", sort=False):
            line = line.sort_values("x")
            style = _style(methods.index(method))
            (handles[method],) = ax.plot(line["x"], 100 * line["accuracy"], label=method, markersize=4, **style)
            if (line["std"] > 0).any():
                ax.fill_between(line["x"], 100 * (line["accuracy"] - line["std"]),
                                100 * (line["accuracy"] + line["std"]), color=style["color"], alpha=0.15)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel(x_label)
        if x_label == X_AXES["round"]:  # rounds are counted: no tick at round 2.5
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, color="0.9")
    if methods:  # every method has a line in some panel, hence a handle
        fig.legend([handles[m] for m in methods], labels, loc="outside lower center", ncol=ncol,
                   fontsize=LEGEND_FONT, frameon=False)
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
    """Fig. 2: one panel per block, as the paper's Figs. 2a–d; in each, every run's path of
    (nHSIC(X;Z), nHSIC(Y;Z)) over rounds, points shaded from light (early) to dark (late), with a
    colour bar of the round, so that runs (end-to-end against progressive training, say) are
    compared block by block."""
    runs = list(dict.fromkeys(points["run"]))
    blocks = sorted(points["block"].unique())
    fig, axes = _grid(len(blocks))
    last_round = max(points["round"].max() + 1, 1)  # rounds are 1-based on figures, as on the curves
    for ax, block in zip(axes, blocks, strict=True):
        part = points[points["block"] == block]
        for i, run in enumerate(runs):
            path = part[part["run"] == run].sort_values("round")
            if path.empty:
                continue
            style = _style(i)
            ax.plot(path["xz"], path["yz"], color="0.5", linestyle=style["linestyle"], linewidth=0.8,
                    label=run, marker=style["marker"], markersize=0)
            shaded = ax.scatter(path["xz"], path["yz"], c=path["round"] + 1, cmap="Greys", vmin=-0.3 * last_round,
                                vmax=last_round, marker=style["marker"], edgecolors="0.0", linewidths=0.4, s=22)
        # The shading is time: say so on the figure itself, not only in the caption.
        colorbar = fig.colorbar(shaded, ax=ax, pad=0.02)
        colorbar.set_label("round (light = early, dark = late)", fontsize=8)
        colorbar.ax.set_ylim(0, last_round)
        ax.set_title(f"block {block}", fontsize=9)
        ax.set_xlabel("nHSIC(X; Z) (unitless, 0–1)")
        ax.set_ylabel("nHSIC(Y; Z) (unitless, 0–1)")
        ax.grid(True, color="0.9")
        ax.legend(fontsize=8)
    return fig
