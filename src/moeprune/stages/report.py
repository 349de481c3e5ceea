"""Stage `report`: the results report (markdown + PNG plots + JSON) from the registry or a study's results.

    moeprune report --out DIR [--params params.yaml] [--tracking-uri URI] [--study runs/study/study.json]

Without `--study` every version of every moeprune model in the registry is reported, grouped by
registered model. With it, the studies of `flows/study.py` are reported point by point (each point's
figures are still its registered version's tags). `DIR` receives `report.md`, `report.json` and the
PNG files, written atomically.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path
from typing import Any

from moeprune.outputs import atomic_dir, claim_output
from moeprune.params import RegistrySection
from moeprune.report.markdown import render
from moeprune.report.plots import write_group_plots
from moeprune.report.rows import (
    Group,
    aggregate,
    comparison_rows,
    configuration_points,
    load_registry_results,
    load_study_results,
    missing_requests,
    pareto_front,
    read_study,
    scoring_costs,
)
from moeprune.report.testbed import copy_heatmaps, read_testbed

REPORT_FILE = "report.md"
DATA_FILE = "report.json"


def report_command(out: Path, study: Path | None, tracking_uri: str | None) -> str:
    """The `moeprune report` command line that rebuilds this report."""
    parts = ["moeprune", "report", "--out", str(out)]
    if study is not None:
        parts += ["--study", str(study)]
    elif tracking_uri:
        parts += ["--tracking-uri", tracking_uri]
    return shlex.join(parts)


def timing_line(study: dict[str, Any]) -> str:
    """Wall and CPU time of the study, as the study recorded them."""
    wall, cpu = study.get("wall_seconds"), study.get("cpu_seconds")
    if wall is None:
        return ""
    variant = "quick variant" if study.get("quick") else "full study"
    line = f"Study wall time ({variant}): {wall / 60:.1f} min"
    if cpu is not None:
        line += f", CPU time of its commands {cpu / 60:.1f} min"
    return line + f" on {study.get('machine', 'this machine')}."


def group_data(group: Group) -> dict[str, Any]:
    """The group's rows, aggregated cells, Pareto front, costs and comparisons as JSON-ready data."""
    cells = {}
    for metric in group.metrics:
        for (label, column), cell in aggregate(group.rows, metric).items():
            cells.setdefault(metric, {}).setdefault(label, {})[f"{column:g}"] = vars(cell)
    front = pareto_front([p for p in configuration_points(group) if p[2] == p[2]])
    return {
        "title": group.title,
        "metrics": list(group.metrics),
        "claim": group.claim,
        "rows": [
            {
                "point": r.point,
                "label": r.label,
                "kind": r.kind,
                "column": r.column,
                "model": r.model,
                "version": r.version,
                "seed": r.seed,
                "values": r.values,
                "scoring": r.scoring,
            }
            for r in group.rows
        ],
        "cells": cells,
        "pareto_front": [{"label": p[0], "column": p[1], "total_sparsity": p[2], "value": p[3]} for p in front],
        "scoring_costs": {m: {k: vars(c) for k, c in f.items()} for m, f in scoring_costs(group).items()},
        "comparisons": {metric: comparison_rows(group, metric) for metric in group.metrics},
        "missing": missing_requests(group),
    }


def resolve_uri(params: RegistrySection | None, tracking_uri: str | None) -> str | None:
    """--tracking-uri, else params.yaml's registry.tracking_uri, else None (the registry's defaults)."""
    return tracking_uri or (params.tracking_uri if params is not None else None)


def run(
    out: Path,
    params: RegistrySection | None = None,
    tracking_uri: str | None = None,
    study: Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the report into `out` (atomically) and return a summary.

    Args:
        out: the report directory (report.md, report.json, PNG files).
        params: params.yaml's `registry` section (`moeprune.params.RegistrySection`, already validated),
            for the tracking URI (optional).
        tracking_uri: the MLflow tracking URI; overrides params and the study file's.
        study: a study results file from `flows/study.py`; None reports the whole registry.

    Returns:
        `{out, report, figures, groups, versions, missing}`.

    Raises:
        MoepruneError: nothing registered, a study point without a version, or a missing study file.
    """
    out = claim_output(out, "report", inputs=[study], overwrite=overwrite)
    uri = resolve_uri(params, tracking_uri)
    record = read_study(Path(study)) if study is not None else None
    groups = load_study_results(record, uri) if record else load_registry_results(uri)
    used_uri = uri or (record or {}).get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI", "")
    versions = {(row.model, row.version) for group in groups for row in group.rows}
    source = (
        f"Generated by `{report_command(out, study, uri)}` on {time.strftime('%Y-%m-%d %H:%M')} from "
        f"{len(versions)} registered versions" + (f" at `{used_uri}`" if used_uri else "") + "; no number is typed."
    )
    context = {
        "source": source,
        "report_command": report_command(out, study, uri),
        "study_command": (record or {}).get("command", ""),
        "timing": timing_line(record) if record else "",
    }
    with atomic_dir(out) as tmp:
        files = {group.key: write_group_plots(group, tmp, context["report_command"]) for group in groups}
        for group in groups:
            if group.testbed_dir and read_testbed(group.testbed_dir):
                group.testbed_heatmaps = copy_heatmaps(group.testbed_dir, tmp)
        (tmp / REPORT_FILE).write_text(render(groups, files, context))
        data = {"context": context, "groups": {group.key: group_data(group) for group in groups}, "files": files}
        (tmp / DATA_FILE).write_text(json.dumps(data, indent=2) + "\n")
    missing = {g.key: m for g in groups if (m := missing_requests(g))}
    print(f"report: {out / REPORT_FILE} ({len(versions)} versions, {sum(len(f) for f in files.values())} figures)")
    return {
        "out": str(out),
        "report": str(out / REPORT_FILE),
        "figures": [str(out / name) for group_files in files.values() for name in group_files.values()],
        "groups": [group.key for group in groups],
        "versions": len(versions),
        "missing": missing,
    }
