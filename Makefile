# moeprune: `make demo` runs the pipeline on the embedded testbed, `make test` runs the test suite.
# Both create the virtual environment first when it is missing or older than pyproject.toml.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo

# Offline, no telemetry (docs/transformers-notes.md): set before any library is imported.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export PREFECT_HOME ?= $(CURDIR)/.prefect

.PHONY: setup test stress demo study study-quick bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# The CPU build of torch first: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check src tests flows tasks bench
	$(PY) -m ruff format --check src tests flows tasks bench
	$(PY) -m pytest -q

# 10 rounds of 8 concurrent `moeprune register` processes on a new sqlite store (the suite runs 1).
stress: $(STAMP)
	MOEPRUNE_STRESS_ROUNDS=10 $(PY) -m pytest -q -s tests/registry/test_registry_concurrency.py

demo: $(STAMP)
	bash scripts/demo.sh $(DEMO_DIR)

study: $(STAMP)
	bash scripts/study.sh

study-quick: $(STAMP)
	bash scripts/study.sh --quick

bench: $(STAMP)
	set -e; for script in bench/bench_*.py; do echo "== $$script"; $(PY) $$script; done

lint: $(STAMP)
	$(PY) -m ruff check src tests flows tasks bench
	$(PY) -m ruff format --check src tests flows tasks bench

clean:
	rm -rf $(VENV) runs .prefect mlruns mlflow.db
