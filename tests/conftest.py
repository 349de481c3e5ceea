"""Shared test set-up: offline, telemetry-free, quiet, one BLAS thread per process.

Tiny models gain nothing from a second thread, and tests that start subprocesses (DVC stages, sweep
workers) would otherwise oversubscribe a 2-core machine.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from moeprune.env import apply_offline_defaults  # noqa: E402

apply_offline_defaults()

pytest_plugins = ["prefect_fixtures"]  # one Prefect test harness (session-scoped) for every test module


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one intra-op thread is faster and immune to a busy machine's thread contention.

    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
