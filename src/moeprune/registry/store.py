"""The MLflow store: which one (tracking URI), whether it answers, a client for it, and its lock.

A sqlite store is one file that every process of the machine may write at once (the sweep runs
parallel `dvc exp run`s, each with a register stage). MLflow migrates an empty store on first use and
does not guard that against a second process; moeprune's registration is check-then-create. Both are
therefore serialised by a file lock beside the store (`mlflow.db` -> `mlflow.db.lock`; a file store
`mlruns` -> `mlruns.lock`). The lock is an OS lock (flock): a killed holder releases it. A tracking
server serialises its own database; no lock is taken for one (nor for other database URIs).
"""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from moeprune.errors import MoepruneError
from moeprune.params import RegistrySection
from moeprune.registry.tags import repo_root

EXPERIMENT = "moeprune"
LOCK_TIMEOUT_S = 1800.0  # a registration uploads a whole model directory while it holds the lock
_LOCKS: dict[str, tuple[threading.RLock, FileLock]] = {}
_LOCKS_GUARD = threading.Lock()


def resolve_tracking_uri(
    tracking_uri: str | None = None, registry: RegistrySection | None = None, start: Path | None = None
) -> str:
    """Argument, else $MLFLOW_TRACKING_URI, else params.yaml's registry.tracking_uri, else repo sqlite.

    The repository of the default store is found from `start` (default: the working directory).
    """
    if tracking_uri:
        return tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if registry is not None and registry.tracking_uri:
        return registry.tracking_uri
    return f"sqlite:///{repo_root(start) / 'mlflow.db'}"


def is_server(uri: str) -> bool:
    """True for a tracking server (http/https), False for a local store."""
    return uri.startswith(("http://", "https://"))


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast with a clear message when a tracking server does not answer its health check."""
    if not is_server(uri):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
            response.read()
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise MoepruneError(
            f"MLflow tracking server {uri} is not reachable ({reason}); start it with infra/mlflow_server.sh "
            f"or point registry.tracking_uri / MLFLOW_TRACKING_URI at a running one"
        ) from None


def lock_path(uri: str) -> Path | None:
    """The lock file of a local store: `<db>.lock` for `sqlite:///<db>`, `<dir>.lock` for a file store.

    None for a tracking server, an in-memory sqlite database and other database URIs.
    """
    if uri.startswith("sqlite:///"):
        database = uri.removeprefix("sqlite:///").split("?", 1)[0]
        return Path(f"{database}.lock") if database and database != ":memory:" else None
    if uri.startswith("file:"):
        folder = Path(urllib.parse.unquote(urllib.parse.urlparse(uri).path))
    elif "://" not in uri:
        folder = Path(uri)
    else:
        return None
    return folder.with_name(f"{folder.name}.lock")


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold the store's lock while the block runs: one registration or migration per store at a time.

    Re-entrant in a thread (registering a pruned model registers its base inside the same lock);
    threads of one process take turns. A no-op for stores `lock_path` gives no lock file for.
    """
    path = lock_path(uri)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    with _LOCKS_GUARD:
        if key not in _LOCKS:
            _LOCKS[key] = (threading.RLock(), FileLock(key, thread_local=False))
        thread_lock, file_lock = _LOCKS[key]
    with thread_lock:
        try:
            file_lock.acquire(timeout=LOCK_TIMEOUT_S)
        except Timeout:
            raise MoepruneError(
                f"{key}: another registration held this MLflow store's lock for {LOCK_TIMEOUT_S:.0f} s; "
                f"wait for it to finish (or end it) and register again"
            ) from None
        try:
            yield
        finally:
            file_lock.release()


def mlflow_client(uri: str) -> Any:
    """An `MlflowClient` for `uri` (tracking and registry) whose store is created / migrated already.

    The server's health is checked first; a local store's schema is made under the store lock, so
    two processes opening a new store never migrate it at once.
    """
    check_server(uri)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    with store_lock(uri):
        try:
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            client.search_experiments(max_results=1)  # opens (and, when new, migrates) the tracking store
            client.search_registered_models(max_results=1)  # the same for the model registry store
        except (MlflowException, SQLAlchemyError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise MoepruneError(
                f"MLflow store {uri} could not be opened ({reason}); point --tracking-uri / "
                f"registry.tracking_uri at a working store, or move this one aside to start a new one"
            ) from None
    return client


def experiment_id(client: Any, uri: str) -> str:
    """The `moeprune` experiment (created on first use: call under `store_lock`).

    A local store keeps its artifacts in `mlruns/` beside its database, not under the working
    directory: a DVC experiment runs in a temporary copy of the repository that is deleted afterwards.
    """
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(EXPERIMENT, artifact_location=local_artifact_location(uri))


def local_artifact_location(uri: str) -> str | None:
    """`file://.../mlruns` beside a sqlite store, `<repo>/mlruns` for other local stores, None for servers."""
    if is_server(uri):
        return None
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns").as_uri()
    return (repo_root() / "mlruns").as_uri()
