"""Prefect flows: `pipeline` (the DVC stages as tasks), `sweep` (a grid of DVC experiments), `promote`.

Flows only sequence tasks; they never import torch. `flows.deployments` declares the cron schedules;
`python -m flows.sweep` and `python -m flows.serve` are the command-line doors (`moeprune sweep` and
`moeprune serve` run them in a child interpreter, so the core library never imports flows or prefect).
"""

import sys
from collections.abc import Callable
from typing import Any

from moeprune.env import apply_offline_defaults

apply_offline_defaults()  # before prefect is imported: offline, no analytics, a patient server start-up

from moeprune.errors import MoepruneError  # noqa: E402


def exit_code(entry: Callable[..., Any], *args: Any) -> int:
    """Run a `python -m flows.X` entry point: a user error is one `error:` line on stderr and status 1."""
    try:
        entry(*args)
    except MoepruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
