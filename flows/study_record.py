"""The study's results file, `<root>/study.json`: its points, their registered versions and commands.

The flow (flows/study.py) runs the plan (flows/study_plan.py); this module writes what the report reads:
the metrics file registered for each point (its evaluation plus the seed and the scoring cost), and the
record of every study, point and phase. No Prefect, no torch.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from flows.study_plan import (
    Layout,
    Point,
    point_commands,
    preparation_commands,
    register_command,
    spec_record,
    testbed_command,
)
from moeprune.outputs import write_json
from moeprune.testbed.machine import cpu_name
from tasks.commands import shell

SCORING_FIGURES = ("seconds", "forward_passes")


def scoring_figures(scores_file: str | None) -> dict[str, float]:
    """Seconds, forward passes (and NAEE's block evaluations) of the scoring step, from its scores file."""
    if not scores_file:
        return {}
    scores = json.loads(Path(scores_file).read_text())
    figures = {key: float(scores[key]) for key in SCORING_FIGURES if key in scores}
    if "naee" in scores:
        figures["block_evaluations"] = float(scores["naee"].get("block_evaluations", 0))
    return figures


def write_metrics(point: Point) -> dict[str, float]:
    """The file registered: the evaluation plus the seed and the scoring cost (they become version tags)."""
    metrics = json.loads(Path(point.eval_json).read_text())
    scoring = scoring_figures(point.scores)
    if point.seed is not None:
        metrics["seed"] = point.seed
    metrics.update({f"scoring.{key}": value for key, value in scoring.items()})
    write_json(point.metrics, metrics)
    return scoring


def registry_record(metrics_file: str | Path) -> dict[str, str]:
    """`{name, version}` from the `.registry.json` that `moeprune register` wrote beside the metrics."""
    record = json.loads(Path(metrics_file).with_suffix(".registry.json").read_text())
    return {"name": record["name"], "version": str(record["version"])}


def point_record(point: Point, points: dict[str, Point], scoring: dict, uri: str) -> dict[str, Any]:
    """A point as the results file and the report read it."""
    return {
        "id": point.id,
        "study": point.study,
        "label": point.label,
        "kind": point.kind,
        "column": point.column,
        "expert_method": point.expert_method,
        "expert_sparsity": point.expert_sparsity,
        "seed": point.seed,
        "model_dir": point.model_dir,
        "metrics": point.metrics,
        "scoring": scoring,
        "registry": registry_record(point.metrics),
        "commands": point_commands(point, points, uri),
    }


def base_record(layout: Layout, quick: bool, uri: str) -> dict[str, Any]:
    """The base model of a study as a point of the results file."""
    commands = [
        testbed_command(layout, quick),
        *preparation_commands(layout)[2:],
        register_command(layout.model, layout.base_metrics, uri),
    ]
    return {
        "id": f"{layout.spec.key}-base",
        "study": layout.spec.key,
        "label": "base",
        "kind": "base",
        "column": 0.0,
        "registry": registry_record(layout.base_metrics),
        "commands": [shell(c) for c in commands],
    }


def machine() -> str:
    """CPU, cores and load when the study started: wall times on a shared machine need all three."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu_name()}, {os.cpu_count()} CPU cores (load average {load:.1f} at the start)"


def write_all_metrics(layouts: list[Layout], points: dict[str, list[Point]]) -> dict[str, dict[str, float]]:
    """The registered metrics files of bases and points; returns each point's scoring figures."""
    scoring = {}
    for lay in layouts:
        write_json(lay.base_metrics, json.loads(lay.base_metrics.with_name("eval.json").read_text()))
        scoring.update({p.id: write_metrics(p) for p in points[lay.spec.key]})
    return scoring


def merge_previous(record: dict[str, Any], path: Path) -> dict[str, Any]:
    """Keep the other studies of an earlier run in the same folder (`--studies A`, then `--studies B`).

    Their points, phases and times are carried over, so the report covers both and the study's time is
    the sum of the runs. An earlier run of the other variant (quick vs full) is not merged.
    """
    if not path.is_file():
        return record
    previous = json.loads(path.read_text())
    others = {key: spec for key, spec in previous.get("studies", {}).items() if key not in record["studies"]}
    if not others or previous.get("quick") != record["quick"]:
        return record
    merged = dict(record)
    merged["studies"] = dict(sorted({**others, **record["studies"]}.items()))
    points = [p for p in previous["points"] if p["study"] in others] + record["points"]
    merged["points"] = sorted(points, key=lambda p: p["study"])  # stable: each study keeps its order
    merged["phases"] = [ph for ph in previous["phases"] if set(ph.get("studies", [])) <= set(others)]
    merged["phases"] += record["phases"]
    for key in ("cpu_seconds", "wall_seconds"):
        merged[key] = round(sum(ph[key] for ph in merged["phases"]), 1)
    merged["command"] = record["command"].split(" --studies")[0]
    return merged


def results_record(
    layouts: list[Layout],
    points: dict[str, Point],
    scoring: dict[str, dict[str, float]],
    run: dict[str, Any],
) -> dict[str, Any]:
    """The results file of one run; `run` holds root, quick, workers, studies, tracking_uri, machine,
    phases and wall_seconds."""
    quick, uri, studies = run["quick"], run["tracking_uri"], run["studies"]
    command = ["bash", "scripts/study.sh", *(["--quick"] if quick else [])]
    command += [] if set(studies) >= {"A", "B"} else ["--studies", *studies]
    return {
        "command": shlex.join(command),
        "quick": quick,
        "root": run["root"],
        "tracking_uri": uri,
        "workers": run["workers"],
        "machine": run["machine"],
        "studies": {
            lay.spec.key: {**spec_record(lay.spec, lay), "base": base_record(lay, quick, uri)} for lay in layouts
        },
        "points": [point_record(p, points, scoring[p.id], uri) for p in points.values()],
        "phases": run["phases"],
        "cpu_seconds": round(sum(phase["cpu_seconds"] for phase in run["phases"]), 1),
        "wall_seconds": run["wall_seconds"],
    }
