"""`make study`: Study A and Study B of issue 6 as one Prefect flow, every point registered, then the report.

    python -m flows.study            # the full study under runs/study (about an hour on 2 cores)
    python -m flows.study --quick    # quick testbeds, evaluation limit 8: the CI variant (runs/study/quick)

Phases, each a set of Prefect tasks on a thread pool (`--workers`, default 2): build the testbeds (kept
when already there), calibrate + profile + evaluate the base once per model, make and evaluate every
point, register every version (`moeprune register` into the study's own MLflow store
`<root>/mlflow.db`), then `moeprune report`. Every step is a `moeprune` command run by a worker
subprocess (`flows/study_runner.py`, one interpreter per task so torch is imported once per task); the
flow itself never imports torch. `<root>/study.json` holds the points, their registered versions, their
commands and the wall / CPU time of each phase; `<root>/report/` the report.

This file is the loop; the plan (studies, points and their commands, built by `tasks/commands.py` like
dvc.yaml's) is flows/study_plan.py, the results file flows/study_record.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from moeprune.env import apply_offline_defaults

apply_offline_defaults()  # before Prefect reads its settings

from prefect import flow, task  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from flows.study_plan import (  # noqa: E402
    Layout,
    Point,
    preparation_commands,
    register_command,
    study_points,
    study_specs,
    testbed_command,
)
from flows.study_record import machine, merge_previous, results_record, write_all_metrics  # noqa: E402
from moeprune.errors import MoepruneError  # noqa: E402
from moeprune.outputs import write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Rough relative CPU cost of one command, to balance the workers (LM generation dominates).
COMMAND_COST = {
    ("lm", "evaluate"): 12.0,
    ("lm", "prune-unstructured"): 4.0,
    ("lm", "testbed"): 100.0,
    ("vision", "testbed"): 40.0,
    ("lm", "score"): 2.0,
}


def worker_env(workers: int) -> dict[str, str]:
    """The workers' environment: this venv's scripts first, BLAS threads split between the workers."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, workers))))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


@task(name="moeprune-commands", task_run_name="{name}")
def run_commands(name: str, chains: list[dict[str, Any]], log_dir: str, workers: int) -> dict[str, Any]:
    """Run chains of `moeprune` commands in one worker subprocess; fail naming the chains that failed."""
    logs = Path(log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    chains_file, status_file, log_file = (logs / f"{name}.{suffix}" for suffix in ("chains.json", "status.json", "log"))
    chains_file.write_text(json.dumps(chains, indent=2) + "\n")
    status_file.unlink(missing_ok=True)
    started = time.perf_counter()
    with open(log_file, "w") as log:
        code = subprocess.run(
            [sys.executable, "-m", "flows.study_runner", str(chains_file), str(status_file)],
            env=worker_env(workers),
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        ).returncode
    status = json.loads(status_file.read_text()) if status_file.is_file() else {"chains": []}
    failed = [chain["id"] for chain in status["chains"] if not chain["ok"]]
    if code != 0 or failed or len(status["chains"]) != len(chains):
        raise MoepruneError(f"{name}: study commands failed ({', '.join(failed) or 'worker crashed'}); see {log_file}")
    return {
        "name": name,
        "wall_seconds": time.perf_counter() - started,
        "cpu_seconds": status.get("process_cpu_seconds", 0.0),
        "chains": status["chains"],
    }


def chain(chain_id: str, commands: list[list[str]], testbed: str) -> dict[str, Any]:
    """A chain for the runner, with its estimated cost."""
    cost = sum(COMMAND_COST.get((testbed, args[0]), 1.0) for args in commands)
    return {"id": chain_id, "commands": commands, "cost": cost}


def shard(chains: list[dict[str, Any]], count: int) -> list[list[dict[str, Any]]]:
    """Longest chains first, each onto the least loaded shard."""
    shards: list[list[dict[str, Any]]] = [[] for _ in range(max(1, count))]
    loads = [0.0] * len(shards)
    for item in sorted(chains, key=lambda c: -c["cost"]):
        target = loads.index(min(loads))
        shards[target].append(item)
        loads[target] += item["cost"]
    return [s for s in shards if s]


def run_phase(name: str, shards: list[list[dict[str, Any]]], log_dir: Path, workers: int) -> dict[str, Any]:
    """Submit one task per shard, wait for all, then fail if any failed."""
    started = time.perf_counter()
    futures = [run_commands.submit(f"{name}-{i}", s, str(log_dir), workers) for i, s in enumerate(shards)]
    for future in futures:
        future.wait()
    results = [future.result() for future in futures]  # raises the first failure, after all finished
    phase = {
        "name": name,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(sum(r["cpu_seconds"] for r in results), 1),
        "commands": sum(len(c["commands"]) for r in results for c in r["chains"]),
    }
    print(
        f"[study] phase {name}: {phase['wall_seconds']:.0f} s wall, {phase['cpu_seconds']:.0f} s CPU, "
        f"{phase['commands']} commands"
    )
    return phase


def testbed_missing(layout: Layout) -> bool:
    """True unless the testbed's two models and its data are already there."""
    return not all((d / "config.json").is_file() for d in (layout.model, layout.reference)) or not layout.data.is_dir()


@task(name="moeprune-report")
def write_report(out: str, study_file: str) -> dict[str, Any]:
    """`moeprune report --out OUT --study STUDY` (the stage function: MLflow and matplotlib, no torch)."""
    from moeprune.stages.report import run

    return run(out=Path(out), study=Path(study_file))


def testbed_shards(layouts: list[Layout], quick: bool) -> list[list[dict[str, Any]]]:
    """One shard per testbed that is not built yet."""
    return [
        [chain(f"testbed-{lay.spec.testbed}", [testbed_command(lay, quick)], lay.spec.testbed)]
        for lay in layouts
        if testbed_missing(lay)
    ]


def prepare_shards(layouts: list[Layout], points: dict[str, list[Point]], parents: set[str]) -> list[list[dict]]:
    """Per study: calibrate, profile, evaluate the base, and build the points others start from."""
    shards = []
    for lay in layouts:
        builds = [args for p in points[lay.spec.key] if p.id in parents for args in p.build]
        shards.append([chain(f"prepare-{lay.spec.key}", preparation_commands(lay) + builds, lay.spec.testbed)])
    return shards


def point_chains(layouts: list[Layout], points: dict[str, list[Point]], parents: set[str]) -> list[dict]:
    """Every point: build its model (unless built in `prepare`) and evaluate it."""
    return [
        chain(p.id, ([] if p.id in parents else p.build) + [p.evaluate], lay.spec.testbed)
        for lay in layouts
        for p in points[lay.spec.key]
    ]


def register_chains(layouts: list[Layout], points: list[Point], uri: str) -> list[dict[str, Any]]:
    """Bases first, then expert-pruned points, then what builds on them (so parent versions resolve)."""
    chains = [
        chain(f"register-{lay.spec.key}-base", [register_command(lay.model, lay.base_metrics, uri)], "")
        for lay in layouts
    ]
    ordered = sorted(points, key=lambda p: p.kind != "expert")
    return chains + [chain(f"register-{p.id}", [register_command(p.model_dir, p.metrics, uri)], "") for p in ordered]


@flow(name="moeprune-study", log_prints=True)
def study_flow(
    root: str = "runs/study", quick: bool = False, workers: int = 2, studies: tuple[str, ...] = ("A", "B")
) -> dict[str, Any]:
    """Run Study A and Study B, register every version, write `<root>/study.json` and `<root>/report/`.

    Args:
        root: the folder of testbeds, points, MLflow store, logs and report (relative: to the working
            directory, which the worker processes share).
        quick: quick testbeds, fewer seeds, evaluation limit 8; every method and sparsity still present.
        workers: parallel worker processes.
        studies: which studies to run ("A", "B").

    Returns:
        The results record (also written to `<root>/study.json`).
    """
    started, machine_line = time.perf_counter(), machine()
    base = Path(root)
    logs, uri = base / "logs", f"sqlite:///{base.resolve() / 'mlflow.db'}"
    layouts = [Layout(base, spec) for spec in study_specs(quick) if spec.key in studies]
    if not layouts:
        raise MoepruneError(f"no study selected from {studies}; choose A, B or both")
    points = {lay.spec.key: study_points(lay) for lay in layouts}
    by_id = {p.id: p for group in points.values() for p in group}
    parents = {p.parent for p in by_id.values() if p.parent}
    phases = []
    if testbeds := testbed_shards(layouts, quick):
        phases.append(run_phase("testbeds", testbeds, logs, workers))
    phases.append(run_phase("prepare", prepare_shards(layouts, points, parents), logs, workers))
    phases.append(run_phase("points", shard(point_chains(layouts, points, parents), workers), logs, workers))
    scoring = write_all_metrics(layouts, points)
    phases.append(run_phase("register", [register_chains(layouts, list(by_id.values()), uri)], logs, workers))
    for phase in phases:
        phase["studies"] = [lay.spec.key for lay in layouts]
    run = {"root": str(base), "quick": quick, "workers": workers, "studies": studies, "tracking_uri": uri}
    run.update(machine=machine_line, phases=phases, wall_seconds=round(time.perf_counter() - started, 1))
    record = results_record(layouts, by_id, scoring, run)
    record = merge_previous(record, base / "study.json")
    write_json(base / "study.json", record)
    report = write_report(str(base / "report"), str(base / "study.json"))
    record["report"] = report
    record["wall_seconds_with_report"] = round(time.perf_counter() - started, 1)
    write_json(base / "study.json", record)
    print(
        f"[study] done in {record['wall_seconds_with_report'] / 60:.1f} min "
        f"({record['cpu_seconds'] / 60:.1f} CPU min of commands): {report['report']}"
    )
    return record


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.study [--quick] [--root DIR] [--workers N]`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="quick testbeds and limits (CI)")
    parser.add_argument("--root", default=None, help="output folder (default runs/study, --quick: runs/study/quick)")
    parser.add_argument("--workers", type=int, default=2, help="parallel worker processes")
    parser.add_argument("--studies", nargs="+", default=["A", "B"], choices=["A", "B"], help="which studies")
    args = parser.parse_args(argv)
    root = args.root or ("runs/study/quick" if args.quick else "runs/study")
    runner = ThreadPoolTaskRunner(max_workers=args.workers)
    study_flow.with_options(task_runner=runner)(
        root=root, quick=args.quick, workers=args.workers, studies=tuple(args.studies)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
