"""The `pipeline` flow: every DVC stage as a task, then registration (retried) and a results artifact.

    python -m flows.pipeline            # or: moeprune serve / a deployment of flows/pipeline.py:pipeline

Each stage task runs `dvc repro --single-item <stage>`: stages whose inputs did not change are skipped.
The flow logs each stage's command line first (`tasks/commands.py`, the builder dvc.yaml's commands
are tested against) and registers from the files it names.
Registration runs in-process with retries (a tracking server can be briefly down); the DVC `register`
stage is then committed to dvc.lock so `dvc repro` does not redo it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from moeprune.params import load_params
from tasks.commands import PipelineFiles, pipeline_commands, shell
from tasks.stages import STAGE_TASKS, STAGES, commit_stage, register_model, reproduce_stage, stage_target

TABLE_KEYS = ("expert_sparsity", "weight_sparsity", "total_sparsity", "nonzero_params", "size_bytes")


def results_table(rows: list[dict[str, Any]], metric: str) -> str:
    """A markdown table: one row per registered model with its metric, sparsities and version."""
    header = ["model", "version", metric, *TABLE_KEYS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["model"], row.get("version", "-"), fmt(row.get(metric))]
        cells += [fmt(row.get(key)) for key in TABLE_KEYS]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def fmt(value: Any) -> str:
    """Numbers with 4 significant decimals, anything else as text."""
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def pipeline_paths(workdir: Path, kind: str, model_path: str) -> dict[str, tuple[Path, Path]]:
    """(model dir, metrics JSON) of the base and the pruned model, as dvc.yaml writes them."""
    files = PipelineFiles(kind)
    return {
        "base": (workdir / model_path, workdir / files.base_metrics),
        "pruned": (workdir / files.pruned, workdir / files.pruned_metrics),
    }


@flow(name="moeprune-pipeline", log_prints=True)
def pipeline(
    root: str = ".",
    pipeline_dir: str = ".",
    tracking_uri: str | None = None,
    stages: list[str] | None = None,
) -> dict[str, Any]:
    """Run the DVC pipeline stage by stage, register base and pruned model, publish the results table.

    Args:
        root: the repository root (holds `.dvc/`).
        pipeline_dir: the folder of the dvc.yaml and params.yaml to run, relative to `root`
            ("." for the LM chain, "pipelines/vision" for the vision chain).
        tracking_uri: MLflow tracking URI (default: params.yaml, $MLFLOW_TRACKING_URI, sqlite in the repo).
        stages: the stages to run (default: all, in order).

    Returns:
        `{"ran": {stage: [...]}, "registered": {base|pruned: record}, "table": markdown}`.
    """
    workdir = Path(root) / pipeline_dir
    params_file = workdir / "params.yaml"
    params = load_params(params_file)  # first: a bad key stops the flow before any stage runs
    logger = get_run_logger()
    commands = pipeline_commands(params)
    ran = {}
    for stage in stages or STAGES:
        logger.info("%s: %s", stage, " && ".join(shell(argv) for argv in commands[stage]))
        ran[stage] = STAGE_TASKS[stage](root, pipeline_dir)
    registered, rows = {}, []
    for role, (model_dir, metrics) in pipeline_paths(workdir, params.kind, params.model.path).items():
        record = register_model(str(model_dir), str(metrics), str(params_file), tracking_uri)
        registered[role] = record
        rows.append({**json.loads(metrics.read_text()), "model": role, "version": record["version"]})
    commit_stage(root, stage_target(pipeline_dir, "register"))
    ran["report"] = reproduce_stage(root, stage_target(pipeline_dir, "report"))
    table = results_table(rows, params.promote.metric)
    create_markdown_artifact(table, key=f"moeprune-results-{params.kind}", description="moeprune results")
    logger.info("results:\n%s", table)
    return {"ran": ran, "registered": registered, "table": table}


if __name__ == "__main__":
    pipeline()
