"""The `sweep` flow: a grid of (score method, expert sparsity, unstructured method, total sparsity), each
point a DVC experiment (`dvc exp run --temp -S ...`), run in parallel through a Prefect task runner.

Locally a ThreadPoolTaskRunner (params.yaml `sweep.max_workers`); with `dask_address` the points run
on that Dask cluster through prefect-dask (the workers need this repository at the same path).

    python -m flows.sweep [--params params.yaml] [--dask-address tcp://HOST:8786]   # or: moeprune sweep
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows import exit_code
from moeprune.errors import MoepruneError
from moeprune.params import SweepSection, load_params
from moeprune.registry import resolve_tracking_uri
from moeprune.registry.tags import repo_root
from tasks.stages import existing_experiments, run_experiment

DASK_PINS = "prefect-dask==0.3.7 'dask[distributed]==2026.8.0'"


def grid_points(
    sweep: SweepSection, base_options: dict[str, Any], prefix: str = ""
) -> list[tuple[str, dict[str, Any]]]:
    """(experiment name, `-S` overrides) per grid point; `none` runs once per expert setting."""
    points, seen = [], set()
    for method, expert, unstructured, total in itertools.product(
        sweep.methods, sweep.expert_sparsity, sweep.unstructured_methods, sweep.total_sparsity
    ):
        target = max(total, expert) if unstructured != "none" else expert
        name = f"{prefix}{method}-e{round(expert * 100)}-{unstructured}" + (
            f"-t{round(target * 100)}" if unstructured != "none" else ""
        )
        if name in seen:
            continue
        seen.add(name)
        overrides = {
            "score.method": method,
            "score.expert_sparsity": expert,
            "prune_unstructured.method": unstructured,
        }
        key = "total-sparsity" if "total-sparsity" in base_options else "sparsity"
        overrides[f"prune_unstructured.options.{key}"] = target
        points.append((name, overrides))
    return points


def task_runner(max_workers: int, dask_address: str | None) -> Any:
    """ThreadPoolTaskRunner locally; a DaskTaskRunner connected to `dask_address`."""
    if not dask_address:
        return ThreadPoolTaskRunner(max_workers=max_workers)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise MoepruneError(
            f"--dask-address needs prefect-dask, which is not installed; pip install {DASK_PINS} "
            f"(or `pip install -e .[dask]`)"
        ) from None
    return DaskTaskRunner(address=dask_address)


@flow(name="moeprune-sweep-grid", log_prints=True)
def run_grid(
    workdir: str, points: list[tuple[str, dict[str, Any]]], tracking_uri: str | None = None
) -> list[dict[str, Any]]:
    """Submit every point to the flow's task runner and wait for all of them."""
    futures = [run_experiment.submit(workdir, name, overrides, tracking_uri) for name, overrides in points]
    results = []
    for (name, overrides), future in zip(points, futures, strict=True):
        future.wait()
        state = future.state
        row = {"name": name, "overrides": overrides, "ok": state.is_completed(), "state": state.name}
        results.append(row)
    return results


def sweep(
    root: str = ".",
    pipeline_dir: str = ".",
    dask_address: str | None = None,
    max_workers: int | None = None,
    force: bool = False,
) -> list[dict[str, Any]]:
    """Run the params.yaml grid as DVC experiments; returns one `{name, overrides, ok}` per point.

    Args:
        root: the repository root.
        pipeline_dir: the folder holding dvc.yaml and params.yaml, relative to `root`.
        dask_address: a Dask scheduler address (`tcp://host:8786`); None runs locally in threads.
        max_workers: parallel points locally (default: params.yaml `sweep.max_workers`).
        force: rerun points whose experiment already exists for this commit (default: skip them).
    """
    workdir = Path(root) / pipeline_dir
    params = load_params(workdir / "params.yaml")  # first: a bad key stops the sweep before any experiment
    options = params.prune_unstructured.options.model_dump(by_alias=True, exclude_none=True)
    points = grid_points(params.sweep, options, prefix=f"{params.kind}-")
    done = set() if force else existing_experiments(root)
    skipped = [
        {"name": name, "overrides": overrides, "ok": True, "state": "exists"}
        for name, overrides in points
        if name in done
    ]
    points = [(name, overrides) for name, overrides in points if name not in done]
    if not points:
        return skipped
    runner = task_runner(max_workers or params.sweep.max_workers, dask_address)
    tracking_uri = resolve_tracking_uri(None, params.registry, start=workdir)
    return skipped + run_grid.with_options(task_runner=runner)(str(workdir), points, tracking_uri)


@flow(name="moeprune-sweep", log_prints=True)
def nightly_sweep(root: str = ".", pipeline_dir: str = ".", dask_address: str | None = None) -> list[dict]:
    """The scheduled entry point: the sweep, then a markdown artifact listing each experiment's outcome."""
    results = sweep(root, pipeline_dir, dask_address)
    lines = ["| experiment | ok |", "|---|---|"] + [f"| {r['name']} | {r['ok']} |" for r in results]
    create_markdown_artifact("\n".join(lines), key="moeprune-sweep")
    return results


def sweep_params_file(params: str | Path | None = None, dask_address: str | None = None) -> list[dict[str, Any]]:
    """The sweep of one params file (default ./params.yaml) in its repository; one result per point.

    Raises:
        MoepruneError: a bad params file, or experiments that failed (named).
    """
    params_file = Path(params or "params.yaml").resolve()
    load_params(params_file)
    root = repo_root(params_file.parent)
    pipeline_dir = str(params_file.parent.relative_to(root)) if params_file.parent != root else "."
    results = nightly_sweep(str(root), pipeline_dir, dask_address)
    failed = [r["name"] for r in results if not r["ok"]]
    print(f"sweep: {len(results) - len(failed)} of {len(results)} experiments done", file=sys.stderr)
    if failed:
        raise MoepruneError(f"sweep: experiments failed: {', '.join(failed)}; see the Prefect logs")
    return results


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.sweep [--params P] [--dask-address ADDR]`."""
    parser = argparse.ArgumentParser(prog="python -m flows.sweep", description="Run the params.yaml sweep grid.")
    parser.add_argument("--params", default=None, help="params.yaml (sweep grid; default ./params.yaml)")
    parser.add_argument("--dask-address", default=None, help="run on this Dask cluster (tcp://HOST:8786)")
    args = parser.parse_args(argv)
    return exit_code(sweep_params_file, args.params, args.dask_address)


if __name__ == "__main__":
    sys.exit(main())
