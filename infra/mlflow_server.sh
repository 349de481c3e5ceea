#!/usr/bin/env bash
# Start an MLflow tracking server on 127.0.0.1 from the project's .venv (sqlite store, local artifacts).
#   MLFLOW_PORT (5000)  MLFLOW_HOST (127.0.0.1)  MLFLOW_DATA (<repo>/.mlflow-server: mlflow.db + artifacts/)
# Then: export MLFLOW_TRACKING_URI=http://127.0.0.1:5000  (or set registry.tracking_uri in params.yaml)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
HOST="${MLFLOW_HOST:-127.0.0.1}"
PORT="${MLFLOW_PORT:-5000}"
DATA="${MLFLOW_DATA:-$ROOT/.mlflow-server}"
mkdir -p "$DATA/artifacts"
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
exec "$VENV/bin/mlflow" server --host "$HOST" --port "$PORT" \
  --backend-store-uri "sqlite:///$DATA/mlflow.db" --artifacts-destination "$DATA/artifacts" \
  --workers "${MLFLOW_WORKERS:-1}"
