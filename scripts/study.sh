#!/usr/bin/env bash
# `make study`: Study A (router-change, vision testbed) and Study B (STUN, LM testbed) through the Prefect
# flow flows/study.py, every point registered in runs/study/mlflow.db, then the report in runs/study/report/.
#   bash scripts/study.sh            the full study (about an hour on 2 cores; testbeds kept when present)
#   bash scripts/study.sh --quick    the CI variant in runs/study/quick (quick testbeds, limit 8)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
python -m flows.study "$@"
