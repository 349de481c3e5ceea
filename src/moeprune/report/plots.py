"""PNG plots of the results report (matplotlib, Agg backend): one set per study.

Each figure carries the command that reproduces it in its footer. Lines are means over seeds, error
bars the sample standard deviation.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from pathlib import Path

from moeprune.report.rows import (
    Group,
    aggregate,
    configuration_points,
    is_percent,
    labels_and_columns,
    pareto_front,
    rows_of,
    scoring_costs,
    sparsity_of,
)


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def scale(metric: str) -> float:
    """Accuracies are plotted in percent."""
    return 100.0 if is_percent(metric) else 1.0


def title(ax, group: Group, what: str) -> None:
    """The study's title and what the figure shows, wrapped to the figure's width."""
    ax.set_title(textwrap.fill(f"{group.title}: {what}", width=90), fontsize=8)


def finish(fig, path: Path, footer: str) -> None:
    """Add the reproduce footer, save and close."""
    fig.text(0.01, 0.01, footer, fontsize=6, color="dimgray", ha="left", va="bottom", wrap=True)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    pyplot().close(fig)


def _finish_metric_plot(fig, ax, group: Group, factor: float, xlabel: str, what: str, path: Path, footer: str) -> None:
    """Label the axes (the metric in percent where it is one), title, grid and legend; then `finish`."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(group.metric + (" (%)" if factor == 100 else ""))
    title(ax, group, what)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    finish(fig, path, footer)


def _lines_from_base(group: Group, kinds: tuple[str, ...], x_of: Callable, style_of: Callable):
    """One line per method of the `kinds` rows, each starting from the base model: the figure, axes and
    metric scale. `x_of(rows, label, column)` places a point; `style_of(rows, label)` styles a line."""
    plt = pyplot()
    rows = rows_of(group, *kinds)
    labels, columns = labels_and_columns(rows)
    cells, factor = aggregate(rows, group.metric), scale(group.metric)
    base = cells.get(("base", 0.0))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in (label for label in labels if label != "base"):
        xs = [c for c in columns if (label, c) in cells]
        points = ([(0.0, base)] if base else []) + [(x_of(rows, label, c), cells[(label, c)]) for c in xs]
        _errorbar(ax, points, factor, label=label, **style_of(rows, label))
    return fig, ax, factor


def plot_expert_sparsity(group: Group, path: Path, footer: str) -> None:
    """Metric vs expert sparsity, one line per method, all starting from the base model."""
    fig, ax, factor = _lines_from_base(group, ("expert",), lambda rows, label, column: column, lambda rows, label: {})
    xlabel = "expert sparsity (% of routed experts removed per MoE layer)"
    _finish_metric_plot(fig, ax, group, factor, xlabel, "accuracy vs expert sparsity", path, footer)


def _errorbar(ax, points: list, factor: float, **style) -> None:
    """One line of (sparsity, cell) points in percent, with the spread over seeds as error bars."""
    ax.errorbar(
        [100 * x for x, _ in points],
        [factor * c.mean for _, c in points],
        yerr=[factor * c.std for _, c in points],
        marker="o",
        capsize=3,
        **style,
    )


def plot_total_sparsity(group: Group, path: Path, footer: str) -> None:
    """Metric vs measured total sparsity: expert-then-unstructured (solid) vs unstructured-only (dashed)."""

    def solid_if_combined(rows: list, label: str) -> dict:
        kind = next(row.kind for row in rows if row.label == label)
        return {"linestyle": "-" if kind == "combined" else "--"}

    fig, ax, factor = _lines_from_base(group, ("combined", "unstructured"), sparsity_of, solid_if_combined)
    xlabel = "total sparsity (% of decoder Linear weights zero or removed, vs the base)"
    what = "expert-then-unstructured (solid) vs unstructured-only (dashed)"
    _finish_metric_plot(fig, ax, group, factor, xlabel, what, path, footer)


def plot_pareto(group: Group, path: Path, footer: str) -> None:
    """Every configuration (mean over seeds) and the front of the best accuracy at each total sparsity."""
    plt = pyplot()
    points = [p for p in configuration_points(group) if not math.isnan(p[2])]
    front, factor = pareto_front(points), scale(group.metric)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([100 * p[2] for p in points], [factor * p[3] for p in points], color="lightgray", label="all")
    ax.step(
        [100 * p[2] for p in front],
        [factor * p[3] for p in front],
        where="post",
        color="crimson",
        marker="o",
        label="Pareto front",
    )
    for label, column, sparsity, value in front:
        ax.annotate(
            f"{label} @{100 * column:g}%",
            (100 * sparsity, factor * value),
            fontsize=6,
            xytext=(3, 3),
            textcoords="offset points",
        )
    _finish_metric_plot(fig, ax, group, factor, "total sparsity (%)", "Pareto front", path, footer)


def cost_label(method: str, figures: dict) -> str:
    """`naee (1 fwd, 56 blocks)`: the method with its forward passes and block evaluations."""
    extra = []
    if "forward_passes" in figures:
        extra.append(f"{figures['forward_passes'].mean:g} fwd")
    if "block_evaluations" in figures:
        extra.append(f"{figures['block_evaluations'].mean:g} blocks")
    return f"{method} ({', '.join(extra)})" if extra else method


def plot_cost(group: Group, path: Path, footer: str) -> bool:
    """Seconds of each scoring method (log scale), forward passes in the labels; False if none recorded."""
    costs = scoring_costs(group)
    if not costs:
        return False
    plt = pyplot()
    ordered = sorted(costs.items(), key=lambda item: item[1]["seconds"].mean if "seconds" in item[1] else 0)
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(ordered) + 1.8))
    names = [cost_label(name, figures) for name, figures in ordered]
    seconds = [max(f["seconds"].mean, 1e-3) if "seconds" in f else 1e-3 for _, f in ordered]
    ax.barh(
        names,
        seconds,
        xerr=[f["seconds"].std if "seconds" in f else 0 for _, f in ordered],
        color="steelblue",
        capsize=3,
    )
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("seconds of the scoring step (log scale)")
    title(ax, group, "cost of each scoring method")
    finish(fig, path, footer)
    return True


def write_group_plots(group: Group, out: Path, footer: str) -> dict[str, str]:
    """Write the group's PNG files into `out`; returns {figure: file name}."""
    slug = "".join(ch if ch.isalnum() else "_" for ch in group.key).strip("_").lower() or "group"
    files = {}
    kinds = {row.kind for row in group.rows}
    if "expert" in kinds:
        files["expert"] = f"{slug}_accuracy_vs_expert_sparsity.png"
        plot_expert_sparsity(group, out / files["expert"], footer)
    if kinds & {"combined", "unstructured"}:
        files["total"] = f"{slug}_accuracy_vs_total_sparsity.png"
        plot_total_sparsity(group, out / files["total"], footer)
    files["pareto"] = f"{slug}_pareto_front.png"
    plot_pareto(group, out / files["pareto"], footer)
    if plot_cost(group, out / f"{slug}_scoring_cost.png", footer):
        files["cost"] = f"{slug}_scoring_cost.png"
    return files
