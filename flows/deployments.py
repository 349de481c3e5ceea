"""Deployments with cron schedules (params.yaml `schedules:`): the nightly sweep, promotion after it.

`python -m flows.serve` (or `moeprune serve`) serves them from this process; `infra/prefect.yaml`
declares the same two for `prefect deploy` + a worker.
"""

from __future__ import annotations

from typing import Any

from prefect.schedules import Cron

from flows.promote import promote
from flows.sweep import nightly_sweep
from moeprune.params import Params


def build_deployments(params: Params, root: str, params_file: str) -> list[Any]:
    """The two `RunnerDeployment`s: `nightly-sweep` and `promote-after-sweep`."""
    timezone = params.schedules.timezone
    return [
        nightly_sweep.to_deployment(
            name="nightly-sweep",
            schedules=[Cron(params.schedules.sweep, timezone=timezone)],
            parameters={"root": root, "pipeline_dir": "."},
            tags=["moeprune", "sweep"],
        ),
        promote.to_deployment(
            name="promote-after-sweep",
            schedules=[Cron(params.schedules.promote, timezone=timezone)],
            parameters={"params": params_file},
            tags=["moeprune", "promote"],
        ),
    ]
