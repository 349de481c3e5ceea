"""Atomic outputs: write to a temporary sibling, rename on success, leave nothing half-written.

Temporaries sit beside the output and carry the writer's pid: `.OUT.tmp-PID-xxxx` (the new output,
or the scratch space of `scratch_dir`) and `.OUT.old-PID` (the previous output while it is being
replaced). A replace renames `out -> .old`, then `.tmp -> out`, then deletes `.old`, so the previous
output is kept until the new one is in place. `clean_leftovers(out)` (run when a stage claims its
output, see `moeprune.outputs.claim`) undoes whatever a killed writer left: with no `out`, the newest `.old`
becomes `out` again; every other temporary of a dead writer is removed. Outputs get the user's umask
permissions (`mkstemp` / `mkdtemp` make them private).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# `.OUT.tmp-PID-xxxx`, `.OUT.old-PID`; before pids were recorded, `.OUT.tmp-xxxxxxxx[.suffix]` (stale).
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<tag>[^-]+)(?:-.*)?$")
# How writers outside Python's io (safetensors' Rust writer) report a full disk: "(os error 28)", or
# "IoError(Os { code: 28, kind: StorageFull, ... })".
_DISK_FULL = re.compile(r"os error 28\b|code: 28\b|StorageFull|No space left on device")


def _tmp_prefix(out: Path) -> str:
    return f".{out.name}.tmp-{os.getpid()}-"


def _old_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.old-{os.getpid()}")


def _is_zombie(pid: int) -> bool:
    """True when `pid` has exited but its parent has not reaped it yet (Linux's /proc; False elsewhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]


def _writer_gone(tag: str) -> bool:
    """True when the writer `tag` names (its pid) no longer runs (a killed writer not reaped yet counts as
    gone: it writes nothing more), is this process (its earlier writes are over), or is not recorded (a
    temporary of an older moeprune)."""
    if not tag.isdigit():
        return True
    pid = int(tag)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(pid)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def leftovers(out: str | os.PathLike) -> list[Path]:
    """Temporaries of `out` that writers which no longer run left beside it."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    found = []
    for path in out.parent.iterdir():
        match = _LEFTOVER.match(path.name)
        if match and match["name"] == out.name and _writer_gone(match["tag"]):
            found.append(path)
    return sorted(found)


def clean_leftovers(out: str | os.PathLike) -> None:
    """Undo an interrupted write of `out`: restore the previous output if `out` is gone, drop the rest."""
    out = Path(out)
    stale = leftovers(out)
    olds = [path for path in stale if _LEFTOVER.match(path.name)["kind"] == "old"]
    if olds and not out.exists() and not out.is_symlink():
        newest = max(olds, key=lambda path: path.stat().st_mtime)
        newest.rename(out)
        stale.remove(newest)
    for path in stale:
        _remove(path)


def current_umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike) -> None:
    """Give `path` (and everything under it) the permissions a plain `open` / `mkdir` would have."""
    mask = current_umask()
    path = Path(path)
    entries = [path, *path.rglob("*")] if path.is_dir() else [path]
    for entry in entries:
        if not entry.is_symlink():
            entry.chmod((0o777 if entry.is_dir() else 0o666) & ~mask)


def disk_full_error(exc: BaseException, where: Path) -> OSError | None:
    """OSError(ENOSPC) for an exception that reports a full disk in other words, else None."""
    if isinstance(exc, OSError) or not isinstance(exc, Exception) or not _DISK_FULL.search(str(exc)):
        return None
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where))


def _replace_dir(tmp: Path, out: Path) -> None:
    """Put the finished `tmp` at `out`; an existing `out` stays (as `.old`) until `tmp` is in place."""
    if not out.exists():
        tmp.rename(out)
        return
    old = _old_path(out)
    out.rename(old)
    try:
        tmp.rename(out)
    except Exception:
        with contextlib.suppress(OSError):
            old.rename(out)  # put the previous output back at once; clean_leftovers would later
        raise
    _remove(old)


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory beside `out`; it replaces `out` only if the block succeeds.

    An existing `out` must be a directory (a file is never replaced by one); with `overwrite=False`
    it is not replaced at all (FileExistsError).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and (not out.is_dir() or not overwrite):
        raise FileExistsError(out)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(out), dir=out.parent))
    try:
        yield tmp
        apply_umask(tmp)
        _replace_dir(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if (full := disk_full_error(exc, out)) is not None:
            raise full from exc
        raise


@contextlib.contextmanager
def atomic_file(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside `out`; it is renamed onto `out` only if the block succeeds."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_dir():
        raise IsADirectoryError(out)
    fd, name = tempfile.mkstemp(prefix=_tmp_prefix(out), dir=out.parent, suffix=out.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        apply_umask(tmp)
        os.replace(tmp, out)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if (full := disk_full_error(exc, out)) is not None:
            raise full from exc
        raise


@contextlib.contextmanager
def scratch_dir(out: str | os.PathLike) -> Iterator[Path]:
    """A temporary directory beside `out` that is also Python's `tempfile` directory inside the block.

    What libraries write to "the temp dir" while `out` is made (lm-eval task folders, ...) lands in
    `.OUT.tmp-PID-*`: removed at the end, and by `clean_leftovers(out)` after a kill.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(out), dir=out.parent))
    saved = tempfile.tempdir
    tempfile.tempdir = str(tmp)
    try:
        yield tmp
    finally:
        tempfile.tempdir = saved
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of one file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(model_dir: str | os.PathLike) -> str:
    """One sha256 over every safetensors shard of a model directory."""
    from moeprune.errors import MoepruneError

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise MoepruneError(f"{model_dir}: no *.safetensors weights; pass a directory written by save_pretrained")
    return sha256_files(files)


def sha256_files(paths: list[Path]) -> str:
    """One sha256 over several files, in sorted name order (e.g. all weight shards of a model)."""
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        digest.update(path.name.encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()
