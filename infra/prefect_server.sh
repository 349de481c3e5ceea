#!/usr/bin/env bash
# Start a Prefect server (API + UI) on 127.0.0.1 from the project's .venv.
#   PREFECT_PORT (4200)  PREFECT_HOST (127.0.0.1)  PREFECT_HOME (<repo>/.prefect: sqlite database, logs)
# Then: export PREFECT_API_URL=http://127.0.0.1:4200/api, and `moeprune serve` (or a worker) runs the schedules.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
export PREFECT_HOME="${PREFECT_HOME:-$ROOT/.prefect}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=true
mkdir -p "$PREFECT_HOME"
exec "$VENV/bin/prefect" server start --host "${PREFECT_HOST:-127.0.0.1}" --port "${PREFECT_PORT:-4200}"
