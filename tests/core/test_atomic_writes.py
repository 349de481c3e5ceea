"""Crash safety of `moeprune.outputs`: a kill between any two filesystem operations of a write.

A `Kill` injector counts the filesystem operations a write makes (mkdir, rename, replace, chmod,
unlink, rmdir, rmtree, open for writing) and "kills" the writer at the k-th: that operation and every
later one raise, so no cleanup code runs, as after `kill -9`. For every k, the previous output must
still be readable (as `out`, or restorable by `clean_leftovers`), and a rerun of the same write must
end with exactly one valid output and no leftovers. `CRASH_SCENARIOS` feeds README's "Reliability" table.
"""

from __future__ import annotations

import builtins
import io
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from moeprune.data.calibration import load_calibration, sidecar_path, write_calibration
from moeprune.outputs import atomic_dir, atomic_file, claim_output, clean_leftovers, scratch_dir, write_json
from moeprune.outputs.atomic import _is_zombie

OUTCOME = (
    "the previous output is kept until the new one is in place{torn}; the rerun cleans the leftovers "
    "and ends with exactly one valid output"
)


class Killed(BaseException):
    """The injected death of the writer (BaseException, so `except Exception` cleanups do not run)."""


class Kill:
    """Raise `Killed` from the `at`-th filesystem operation on (counting from 0), or count them (at=None)."""

    OS_CALLS = ("mkdir", "rename", "replace", "chmod", "unlink", "rmdir")

    def __init__(self, monkeypatch: pytest.MonkeyPatch, at: int | None):
        self.at, self.calls = at, 0
        for name in self.OS_CALLS:
            monkeypatch.setattr(os, name, self._wrap(getattr(os, name)))
        monkeypatch.setattr(shutil, "rmtree", self._wrap(shutil.rmtree))
        for module in (builtins, io):
            monkeypatch.setattr(module, "open", self._open_for_writing(module.open))

    def _op(self, fn, *args, **kwargs):
        if self.at is not None and self.calls >= self.at:
            raise Killed
        self.calls += 1
        return fn(*args, **kwargs)

    def _open_for_writing(self, real_open):
        def opener(file, mode="r", *args, **kwargs):
            if set(mode) & set("wax+"):
                return self._op(real_open, file, mode, *args, **kwargs)
            return real_open(file, mode, *args, **kwargs)

        return opener

    def _wrap(self, fn):
        return lambda *args, **kwargs: self._op(fn, *args, **kwargs)


@dataclass(frozen=True)
class Scenario:
    """One kind of output: how to write version `v`, and read it back (None when absent or invalid)."""

    id: str
    what: str
    write: Callable[[Path, int], None]
    read: Callable[[Path], int | str | None]
    torn: frozenset = frozenset()  # what a reader may also see right after a kill, before the rerun


def _write_dir(out: Path, version: int) -> None:
    claim_output(out, "report")  # any directory stage: cleans leftovers, accepts its own earlier output
    with atomic_dir(out) as tmp:
        (tmp / "report.json").write_text(f'{{"context": {version}, "groups": {{}}}}')
        (tmp / "weights.bin").write_bytes(bytes([version]) * 1000)


def _read_dir(out: Path) -> int | None:
    if not (out / "report.json").is_file() or not (out / "weights.bin").is_file():
        return None
    version = int((out / "report.json").read_text().split(":")[1].split(",")[0])
    return version if (out / "weights.bin").read_bytes() == bytes([version]) * 1000 else None


def _write_file(out: Path, version: int) -> None:
    claim_output(out, "evaluate")
    write_json(out, {"task": "t", "model": "m", "seconds": version})


def _read_file(out: Path) -> int | None:
    import json

    try:
        return json.loads(out.read_text())["seconds"] if out.is_file() else None
    except ValueError:
        return None


def _write_calibration(out: Path, version: int) -> None:
    claim_output(out, "calibrate", companions=[sidecar_path(out)])
    write_calibration(out, {"input_ids": torch.full((2, 4), version)}, {"source": "s", "samples": 2})


def _read_calibration(out: Path) -> int | str | None:
    from moeprune.errors import MoepruneError

    try:
        return int(load_calibration(out)["input_ids"][0, 0]) if out.is_file() else None
    except MoepruneError as exc:
        assert "does not match its sidecar" in str(exc)
        return "refused"  # a data file whose sidecar is of another run is refused, never mixed


CRASH_SCENARIOS = [
    Scenario("directory", "a model / profile / report directory (`atomic_dir`)", _write_dir, _read_dir),
    Scenario("file", "a JSON file: scores, metrics (`atomic_file`)", _write_file, _read_file),
    Scenario(
        "calibration",
        "calibration data + sidecar, one unit",
        _write_calibration,
        _read_calibration,
        frozenset({"refused"}),
    ),
]


def _entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def _kill_points(scenario: Scenario, root: Path, replacing: bool, monkeypatch) -> int:
    """How many filesystem operations the write makes (on a fresh `root/count`, or over an earlier output)."""
    if replacing:
        scenario.write(root / "count" / "out", 1)
    with monkeypatch.context() as patch:
        counter = Kill(patch, None)
        scenario.write(root / "count" / "out", 2)
    return counter.calls


@pytest.mark.parametrize("replacing", [False, True], ids=["first-write", "replace"])
@pytest.mark.parametrize("scenario", CRASH_SCENARIOS, ids=[s.id for s in CRASH_SCENARIOS])
def test_a_kill_at_any_point_leaves_a_valid_output_after_the_rerun(scenario, replacing, tmp_path, monkeypatch):
    points = _kill_points(scenario, tmp_path, replacing, monkeypatch)
    assert points >= 3
    for k in range(points):
        root = tmp_path / f"k{k}"
        root.mkdir()
        out = root / "out"
        if replacing:
            scenario.write(out, 1)
        with monkeypatch.context() as patch, pytest.raises(Killed):
            Kill(patch, k)
            scenario.write(out, 2)
        clean_leftovers(out)
        clean_leftovers(sidecar_path(out))
        allowed = ({1, 2} if replacing else {None, 2}) | scenario.torn
        assert scenario.read(out) in allowed, f"kill at operation {k}"
        scenario.write(out, 3)  # the rerun
        assert scenario.read(out) == 3, f"kill at operation {k}"
        assert _entries(root) == _entries(tmp_path / "count"), f"kill at operation {k}"


def test_the_previous_output_stays_until_the_new_one_is_in_place(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _write_dir(out, 1)
    seen = []
    real_rename = os.rename

    def watch(src, dst):
        seen.append(_read_dir(out) or _read_dir(Path(tmp_path / f".out.old-{os.getpid()}")))
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", watch)
    _write_dir(out, 2)
    assert seen and all(version in (1, 2) for version in seen) and _read_dir(out) == 2


def test_leftovers_of_a_running_writer_are_left_alone(tmp_path):
    out = tmp_path / "out"
    alive = tmp_path / f".out.tmp-{os.getppid()}-abc"  # the parent process runs
    dead = tmp_path / ".out.tmp-999999999-abc"
    legacy = tmp_path / ".out.tmp-k3j_x9ab"  # an older moeprune's temporary: no pid
    for path in (alive, dead, legacy, tmp_path / ".other.tmp-999999999-x"):
        path.mkdir()
    clean_leftovers(out)
    assert _entries(tmp_path) == sorted([alive.name, ".other.tmp-999999999-x"])


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="zombies are read from Linux's /proc")
def test_leftovers_of_a_killed_writer_not_yet_reaped_are_removed(tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        writer.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not _is_zombie(writer.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        leftover = tmp_path / f".out.tmp-{writer.pid}-abc"  # the killed writer's, before its parent waits
        leftover.mkdir()
        clean_leftovers(tmp_path / "out")
        assert not leftover.exists()
    finally:
        writer.wait()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_get_the_users_umask(umask, tmp_path):
    previous = os.umask(umask)
    try:
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "model.safetensors").write_bytes(b"x")
            (tmp / "plots").mkdir()
        write_json(tmp_path / "f.json", {})
    finally:
        os.umask(previous)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "d" / "model.safetensors") == mode(tmp_path / "f.json") == 0o666 & ~umask
    assert mode(tmp_path / "d") == mode(tmp_path / "d" / "plots") == 0o777 & ~umask


def test_scratch_dir_holds_library_temporaries_and_goes(tmp_path):
    import tempfile

    with scratch_dir(tmp_path / "metrics.json") as scratch:
        made = Path(tempfile.mkdtemp())
        assert made.parent == scratch and scratch.name.startswith(".metrics.json.tmp-")
    assert _entries(tmp_path) == []


def test_a_file_is_never_replaced_by_a_directory(tmp_path):
    (tmp_path / "out").write_text("mine")
    with pytest.raises(FileExistsError), atomic_dir(tmp_path / "out"):
        pass
    with pytest.raises(IsADirectoryError), atomic_file(tmp_path):
        pass
    assert (tmp_path / "out").read_text() == "mine"


REAL_KILL = "a real SIGKILL of a writer process replacing a directory"
CHILD = """
import os, shutil, signal, sys
from pathlib import Path
from moeprune.outputs import atomic_dir
from moeprune.outputs import claim_output
calls, at = [0], int(sys.argv[2])
def killing(fn):
    def op(*args, **kwargs):
        if calls[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        calls[0] += 1
        return fn(*args, **kwargs)
    return op
for name in ("mkdir", "rename", "chmod", "unlink", "rmdir"):
    setattr(os, name, killing(getattr(os, name)))
shutil.rmtree = killing(shutil.rmtree)
out = Path(sys.argv[1])
claim_output(out, "report")
with atomic_dir(out) as tmp:  # what _write_dir(out, 2) writes
    (tmp / "report.json").write_text('{"context": 2, "groups": {}}')
    (tmp / "weights.bin").write_bytes(bytes([2]) * 1000)
"""


def test_a_real_kill_9_of_another_process_is_undone_by_the_next_run(tmp_path):
    """The same check with a real SIGKILL in a child process (its pid is dead when the rerun looks)."""
    import signal
    import subprocess
    import sys

    out, killed_at = tmp_path / "out", []
    for k in range(100):
        _write_dir(out, 1)
        child = subprocess.run([sys.executable, "-c", CHILD, str(out), str(k)])
        if child.returncode == 0:
            break
        assert child.returncode == -signal.SIGKILL
        killed_at.append(k)
        assert _read_dir(out) in (1, 2) or any(".old-" in p.name for p in tmp_path.iterdir())
        _write_dir(out, 3)  # the rerun
        assert _read_dir(out) == 3 and _entries(tmp_path) == ["out"], f"kill at operation {k}"
    assert len(killed_at) >= 5
