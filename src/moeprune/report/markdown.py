"""Markdown for the results report: one section per study (or registered model), then the appendix.

Every number comes from `moeprune.report.rows` (registered versions); every table and figure is
followed by the command that reproduces it.
"""

from __future__ import annotations

import math
from typing import Any

from moeprune.report.rows import (
    Cell,
    Group,
    aggregate,
    comparison_rows,
    configuration_points,
    is_percent,
    labels_and_columns,
    missing_requests,
    pareto_front,
    rows_of,
    scoring_costs,
    sparsity_of,
)
from moeprune.report.testbed import read_testbed, testbed_lines

SHORT_NAMES = {
    "imagenet.top1": "top-1",
    "imagenet.top5": "top-5",
    "gsm8k.exact_match_strict": "strict",
    "gsm8k.exact_match_flexible": "flexible",
    "perplexity": "ppl",
}
APPENDIX_FIGURES = ("expert_sparsity", "weight_sparsity", "total_sparsity")


def metric_value(metric: str, value: float) -> str:
    """Accuracies in percent with one decimal, other metrics with three significant decimals."""
    if math.isnan(value):
        return "-"
    return f"{100 * value:.1f}" if is_percent(metric) else f"{value:.3f}"


def cell_text(metric: str, cell: Cell | None) -> str:
    """`mean ± std (n=k)` over seeds, or the single value."""
    if cell is None:
        return "-"
    text = metric_value(metric, cell.mean)
    if cell.n > 1:
        text += f" ± {metric_value(metric, cell.std)} (n={cell.n})"
    return text


def percent(value: float) -> str:
    """A requested sparsity as a percentage without trailing zeros (0.25 -> 25%)."""
    return f"{100 * value:.4g}%"


def measured(value: float) -> str:
    """A measured sparsity as a percentage with one decimal."""
    return "-" if math.isnan(value) else f"{100 * value:.1f}%"


def table(header: list[str], body: list[list[str]]) -> list[str]:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in body]


def metric_table(group: Group, kinds: tuple[str, ...], with_sparsity: bool) -> list[str]:
    """Methods as rows, sparsity x metric as columns; optionally the measured total sparsity per cell."""
    rows = rows_of(group, *kinds)
    labels, columns = labels_and_columns(rows)
    cells = {metric: aggregate(rows, metric) for metric in group.metrics}
    header = ["method", "0% (base)"] if len(group.metrics) == 1 else ["method"]
    if len(group.metrics) > 1:
        header += [f"base {SHORT_NAMES.get(m, m)}" for m in group.metrics]
    header += [f"{percent(c)} {SHORT_NAMES.get(m, m)}" for c in columns for m in group.metrics]
    if with_sparsity:
        header += [f"{percent(c)} measured total" for c in columns]
    body = []
    for label in labels:
        is_base = label == "base"
        line = [f"`{label}`"]
        line += [cell_text(m, cells[m].get(("base", 0.0))) if is_base else "" for m in group.metrics]
        line += ["" if is_base else cell_text(m, cells[m].get((label, c))) for c in columns for m in group.metrics]
        if with_sparsity:
            present = [c for c in columns if (label, c) in cells[group.metric] and not is_base]
            line += [measured(sparsity_of(rows, label, c)) if c in present else "" for c in columns]
        body.append(line)
    return table(header, body)


def reproduce(context: dict[str, str]) -> str:
    """The italic line under every table and figure."""
    parts = [f"`{context['study_command']}`"] if context.get("study_command") else []
    parts.append(f"`{context['report_command']}`")
    return "_Reproduce: " + " then ".join(parts) + "._"


def figure(name: str | None, title: str, context: dict[str, str]) -> list[str]:
    """The PNG reference (when there is one) and the reproduce line of the table above and the figure."""
    return ([f"![{title}]({name})", ""] if name else []) + [reproduce(context), ""]


def comparison_section(group: Group, context: dict[str, str]) -> list[str]:
    """The paper claims as computed differences between two methods at each shared sparsity."""
    lines = []
    for metric in group.metrics:
        found = comparison_rows(group, metric)
        if not found:
            continue
        short = SHORT_NAMES.get(metric, metric)
        body = [
            [
                c["name"],
                percent(c["column"]),
                f"`{c['a']}` {metric_value(metric, c['a_mean'])}",
                f"`{c['b']}` {metric_value(metric, c['b_mean'])}",
                f"{metric_value(metric, c['difference'])}",
            ]
            for c in found
        ]
        lines += [f"**Claims, {short}** (difference of means; positive: the first method is better)", ""]
        lines += table(["comparison", "sparsity", "first", "second", f"difference ({short})"], body)
        lines += ["", reproduce(context), ""]
    return lines


def pareto_section(group: Group, files: dict[str, str], context: dict[str, str]) -> list[str]:
    """The configurations on the accuracy / total sparsity Pareto front."""
    metric = group.metric
    front = pareto_front([p for p in configuration_points(group) if not math.isnan(p[2])])
    body = [
        [f"`{label}`", percent(column), measured(sparsity), metric_value(metric, value)]
        for label, column, sparsity, value in front
    ]
    lines = [f"### Pareto front ({SHORT_NAMES.get(metric, metric)} vs total sparsity)", ""]
    lines += table(["method", "filed under", "total sparsity", SHORT_NAMES.get(metric, metric)], body) + [""]
    return lines + figure(files.get("pareto"), "Pareto front", context)


def cost_section(group: Group, files: dict[str, str], context: dict[str, str]) -> list[str]:
    """Seconds and forward passes of each scoring method (the scores files' own figures)."""
    costs = scoring_costs(group)
    if not costs:
        return []
    body = []
    for method, figures in sorted(costs.items(), key=lambda item: item[1]["seconds"].mean):
        seconds, passes = figures.get("seconds"), figures.get("forward_passes")
        blocks = figures.get("block_evaluations")
        body.append(
            [
                f"`{method}`",
                f"{seconds.mean:.2f} ± {seconds.std:.2f}" if seconds else "-",
                f"{passes.mean:g}" if passes else "-",
                f"{blocks.mean:g}" if blocks else "-",
                str(seconds.n if seconds else 0),
            ]
        )
    lines = ["### Cost of each scoring method", ""]
    lines += table(["method", "seconds (mean ± std)", "forward passes", "block evaluations", "points"], body)
    lines += [
        "",
        "Seconds are the scoring step alone (`seconds` of the scores JSON, model loading included); "
        "methods that read the profile (frequency, reap) also rely on the one profiling pass shared by "
        "all of them.",
        "",
    ]
    return lines + figure(files.get("cost"), "Cost of scoring", context)


def group_section(group: Group, files: dict[str, str], context: dict[str, str]) -> list[str]:
    """All tables and figures of one study."""
    base = next((row for row in group.rows if row.kind == "base"), None)
    lines = [f"## {group.title}", ""]
    if group.claim:
        lines += [f"Claim tested: {group.claim}", ""]
    if base is not None:
        figures = ", ".join(
            f"{SHORT_NAMES.get(m, m)} {metric_value(m, base.values.get(m, math.nan))}" for m in group.metrics
        )
        lines += [f"Base model: `{base.model}` version {base.version} ({figures}).", ""]
    if any(row.kind == "expert" for row in group.rows):
        lines += ["### Accuracy vs expert sparsity (expert pruning only)", ""]
        lines += metric_table(group, ("expert",), with_sparsity=False) + [""]
        lines += figure(files.get("expert"), "accuracy vs expert sparsity", context)
    if any(row.kind in ("combined", "unstructured") for row in group.rows):
        lines += ["### Accuracy vs total sparsity (expert-then-unstructured vs unstructured-only)", ""]
        lines += metric_table(group, ("combined", "unstructured"), with_sparsity=True) + [""]
        lines += figure(files.get("total"), "accuracy vs total sparsity", context)
    lines += comparison_section(group, context)
    lines += pareto_section(group, files, context)
    lines += cost_section(group, files, context)
    if group.testbed_dir and (record := read_testbed(group.testbed_dir)):
        lines += testbed_lines(record, group.testbed_heatmaps)
    for entry in group.not_run:
        where = f"{entry['method']} at {percent(entry['expert_sparsity'])} expert sparsity"
        lines += [f"**Not run**: {where}: {entry['reason']}.", ""]
    missing = missing_requests(group)
    if missing:
        lines += [f"**Missing points** (requested, not registered): {', '.join(missing)}", ""]
    return lines


def appendix(groups: list[Group]) -> list[str]:
    """Every row: its registered version, seed, sparsities and metrics, then the commands that made it."""
    lines = ["## Appendix: every registered version in this report", ""]
    metrics = list(dict.fromkeys(m for group in groups for m in group.metrics))
    body = []
    for group in groups:
        for row in group.rows:
            body.append(
                [
                    group.key,
                    row.point or "-",
                    f"`{row.label}`",
                    f"{row.model} v{row.version}",
                    "-" if row.seed is None else str(row.seed),
                ]
                + [measured(row.values[k]) if k in row.values else "-" for k in APPENDIX_FIGURES]
                + [metric_value(m, row.values[m]) if m in row.values else "-" for m in metrics]
            )
    header = ["study", "point", "method", "version", "seed", "expert sp.", "weight sp.", "total sp."]
    lines += table(header + [SHORT_NAMES.get(m, m) for m in metrics], body)
    commands = [(row.point, row.commands) for group in groups for row in group.rows if row.commands]
    if commands:
        lines += ["", "### Commands of each point", "", "<details><summary>show</summary>", ""]
        for point, chain in commands:
            lines += [f"`{point}`:", "", "```", *chain, "```", ""]
        lines += ["</details>", ""]
    return lines


def render(groups: list[Group], files: dict[str, dict[str, str]], context: dict[str, Any]) -> str:
    """The whole report as markdown."""
    lines = ["# moeprune results", ""]
    lines += [context["source"], ""]
    if context.get("timing"):
        lines += [context["timing"], ""]
    lines += [
        "Cells are the mean over seeds, ± the sample standard deviation and the number of seeds where "
        "there are several; accuracies in percent.",
        "",
    ]
    for group in groups:
        lines += group_section(group, files.get(group.key, {}), context)
    lines += appendix(groups)
    return "\n".join(lines) + "\n"
