"""The Prefect test harness as a session fixture (import it into a test module that runs flows)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API (sqlite) for the whole session; 10-20 s to start on 2 cores."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
