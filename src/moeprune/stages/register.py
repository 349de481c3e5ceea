"""Stage `register`: log a model directory and its metrics to MLflow and register it as a version.

    moeprune register --model D --metrics J.json [--params params.yaml] [--tracking-uri URI]

Writes `J.registry.json` beside the metrics (name, version, run id, artifact source, tracking URI).
Registering the same weights again returns the existing version. SIGTERM (a Prefect cancellation,
`kill PID`) ends the registration like Ctrl-C: its MLflow run is closed FAILED before the process exits.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from moeprune.errors import MoepruneError
from moeprune.params import RegistrySection
from moeprune.registry import register_model_dir, write_registry_record


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    """The SIGTERM handler: exit the way Ctrl-C would, through every `finally`."""
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """While the block runs in the main thread, SIGTERM raises SystemExit (so `finally` blocks run)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(
    model: Path, metrics: Path, params: RegistrySection | None = None, tracking_uri: str | None = None
) -> dict[str, Any]:
    """Register `model` with `metrics`; the record returned is also written to `<metrics>.registry.json`.

    Args:
        model: the Hugging Face model directory.
        metrics: its flat metrics JSON (from `moeprune evaluate`).
        params: params.yaml's `registry` section (`moeprune.params.RegistrySection`, already validated):
            the registered model's name and the tracking URI; None: the defaults.
        tracking_uri: overrides params and $MLFLOW_TRACKING_URI.
    """
    model, metrics = Path(model), Path(metrics)
    if not model.is_dir():
        raise MoepruneError(f"{model}: model directory not found; pass --model DIR written by save_pretrained")
    with sigterm_as_exit():
        record = register_model_dir(model, metrics, params, tracking_uri)
    record["registry_json"] = str(write_registry_record(metrics, record))
    verb = "registered" if record["created"] else "already registered as"
    Console(stderr=True).print(
        f"[bold]{model}[/bold] {verb} [green]{record['name']}[/green] version {record['version']} "
        f"(role {record['role']}, base version {record['base_version']}) at {record['tracking_uri']}"
    )
    return record
