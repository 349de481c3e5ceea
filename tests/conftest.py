"""Shared test set-up: offline, telemetry-free, quiet, one BLAS thread per process.

Tiny models gain nothing from a second thread, and tests that start subprocesses (DVC stages, sweep
workers) would otherwise oversubscribe a 2-core machine.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from moeprune.env import apply_offline_defaults  # noqa: E402

apply_offline_defaults()

pytest_plugins = ["prefect_fixtures"]  # one Prefect test harness (session-scoped) for every test module
