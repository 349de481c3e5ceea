#!/usr/bin/env bash
# Start a local Dask cluster (scheduler + N workers) for `moeprune sweep --dask-address tcp://127.0.0.1:8786`.
#   DASK_PORT (8786)  DASK_DASHBOARD (8787)  DASK_WORKERS (2)  DASK_THREADS (1 per worker)
# Needs prefect-dask and dask[distributed] in .venv: pip install -e '.[dask]'.
# On several machines: run `dask worker tcp://SCHEDULER:8786` on each; every worker needs this repository
# (same path) and the venv, because each sweep point runs `dvc exp run` in it.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PORT="${DASK_PORT:-8786}"
if ! "$VENV/bin/python" -c "import distributed, prefect_dask" 2>/dev/null; then
  echo "dask[distributed] and prefect-dask are not installed in $VENV: pip install -e '.[dask]'" >&2
  exit 1
fi
"$VENV/bin/dask" scheduler --host 127.0.0.1 --port "$PORT" --dashboard-address "127.0.0.1:${DASK_DASHBOARD:-8787}" &
SCHEDULER=$!
trap 'kill $SCHEDULER $(jobs -p) 2>/dev/null' EXIT
sleep 3
for _ in $(seq "${DASK_WORKERS:-2}"); do
  (cd "$ROOT" && "$VENV/bin/dask" worker "tcp://127.0.0.1:$PORT" --nthreads "${DASK_THREADS:-1}" --host 127.0.0.1) &
done
wait $SCHEDULER
