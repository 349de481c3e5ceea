#!/usr/bin/env bash
# `make demo`: the embedded testbeds through the whole orchestrated pipeline (flows/demo.py).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
if [ ! -d .dvc ]; then dvc init -q; fi
python -m flows.demo
