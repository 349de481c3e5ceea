"""`moeprune sweep` and `moeprune serve`: the CLI's doors to the Prefect entry points of `flows/`.

    moeprune sweep [--params P] [--dask-address ADDR]   runs   python -m flows.sweep [...]
    moeprune serve [--params P]                         runs   python -m flows.serve [...]

The entry point runs in a child interpreter with the repository that holds `flows/` and `tasks/` on its
path (the pipeline repository of the params file, else the checkout this package was installed from),
so the core library never imports flows, tasks or prefect (tests/core/test_layering.py). The child prints its
own errors; its exit status is returned.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from moeprune.errors import MoepruneError
from moeprune.registry.tags import repo_root

CHECKOUT = Path(__file__).resolve().parents[3]  # the moeprune repository: src/moeprune/stages/flows_door.py
FLOWS = ("sweep", "serve")


def flows_home(params_file: Path) -> Path:
    """The folder holding the `flows/` and `tasks/` packages: the params file's repository, else the
    checkout beside this package's source (an editable install of the moeprune repository)."""
    root = repo_root(params_file.parent)
    for candidate in (root, CHECKOUT):
        if (candidate / "flows" / "__init__.py").is_file() and (candidate / "tasks" / "__init__.py").is_file():
            return candidate
    raise MoepruneError(
        f"{root}: no flows/ and tasks/ packages here or in {CHECKOUT}; run moeprune sweep/serve in a "
        f"clone of the moeprune repository (installed with `pip install -e .`)"
    )


def flow_command(flow: str, options: dict[str, Any]) -> list[str]:
    """`python -m flows.<flow> --key value ...` for the options that are set."""
    command = [sys.executable, "-m", f"flows.{flow}"]
    for key, value in options.items():
        if value is not None:
            command += [f"--{key.replace('_', '-')}", str(value)]
    return command


def run(flow: str, options: dict[str, Any]) -> int:
    """Run `python -m flows.<flow>` with `options` as flags; returns its exit status."""
    if flow not in FLOWS:
        raise MoepruneError(f"unknown flow '{flow}'; valid: {', '.join(FLOWS)}")
    home = flows_home(Path(options.get("params") or "params.yaml").resolve())
    path = os.pathsep.join(p for p in (str(home), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.run(flow_command(flow, options), env={**os.environ, "PYTHONPATH": path}, check=False).returncode
