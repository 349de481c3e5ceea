"""Stage `sweep`: the CLI's door to the Prefect sweep flow (`flows/sweep.py`).

moeprune sweep [--params params.yaml] [--dask-address tcp://HOST:8786]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from moeprune.config import load_params
from moeprune.errors import MoepruneError
from moeprune.registry.tags import repo_root

CHECKOUT = Path(__file__).resolve().parents[3]  # the moeprune repository: src/moeprune/stages/sweep.py


def import_flows(root: Path) -> None:
    """Make the `flows/` and `tasks/` packages importable: the pipeline repository's own, else the ones
    beside this package's source (an editable install of the moeprune repository)."""
    for candidate in (root, CHECKOUT):
        if (candidate / "flows" / "__init__.py").is_file() and (candidate / "tasks" / "__init__.py").is_file():
            if str(candidate) not in sys.path:
                sys.path.insert(0, str(candidate))
            return
    raise MoepruneError(
        f"{root}: no flows/ and tasks/ packages here or in {CHECKOUT}; run moeprune sweep/serve in a "
        f"clone of the moeprune repository (installed with `pip install -e .`)"
    )


def run(params: Path | None = None, dask_address: str | None = None) -> list[dict[str, Any]]:
    """Run the params file's sweep grid as DVC experiments (in parallel); returns one result per point."""
    params_file = Path(params or "params.yaml").resolve()
    load_params(params_file)
    root = repo_root(params_file.parent)
    import_flows(root)
    from flows.sweep import nightly_sweep

    pipeline_dir = str(params_file.parent.relative_to(root)) if params_file.parent != root else "."
    results = nightly_sweep(str(root), pipeline_dir, dask_address)
    failed = [r["name"] for r in results if not r["ok"]]
    Console(stderr=True).print(f"sweep: {len(results) - len(failed)} of {len(results)} experiments done")
    if failed:
        raise MoepruneError(f"sweep: experiments failed: {', '.join(failed)}; see the Prefect logs")
    return results
