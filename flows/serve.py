"""Serve the Prefect deployments (nightly sweep, promotion) with the cron schedules of params `schedules:`.

    python -m flows.serve [--params params.yaml]      # or: moeprune serve

Blocks until interrupted; the runs appear in the Prefect UI (`infra/prefect_server.sh`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefect import serve

from flows import exit_code
from flows.deployments import build_deployments
from moeprune.params import load_params
from moeprune.registry.tags import repo_root


def serve_params_file(params: str | Path | None = None) -> None:
    """Build the deployments from the params file's `schedules:` (default ./params.yaml) and serve them."""
    params_file = Path(params or "params.yaml").resolve()
    config = load_params(params_file)
    serve(*build_deployments(config, str(repo_root(params_file.parent)), str(params_file)))


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.serve [--params P]`."""
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=None, help="params.yaml (schedules; default ./params.yaml)")
    return exit_code(serve_params_file, parser.parse_args(argv).params)


if __name__ == "__main__":
    sys.exit(main())
