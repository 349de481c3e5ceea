"""The `--out` contract: a stage never destroys data it did not write.

Every stage claims its output before it does any work:

    out = claim_output(out, "prune-experts", inputs=[model, scores], overwrite=overwrite)

which first undoes what an interrupted earlier write of `out` left (`atomic.clean_leftovers`), then
refuses (one `MoepruneError` line) an `--out` that is the current directory or above it; that is,
contains or lies inside an input; is a file where the stage writes a directory (or the reverse); or
already holds something other than an earlier output of the same stage, unless `overwrite`. An earlier
output is recognised by the record the stage writes into it (`OUTPUT_KINDS`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moeprune.errors import MoepruneError
from moeprune.outputs.atomic import clean_leftovers


def _json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _lineage_of(stage: str) -> Callable[[Path], bool]:
    def written_by_stage(out: Path) -> bool:
        # imported on use: the lineage module writes through `outputs.atomic`, so importing it here is a cycle
        from moeprune.registry.lineage import LINEAGE_FILE

        return _json(out / LINEAGE_FILE).get("stage") == stage

    return written_by_stage


def _has_keys(name: str | None, *keys: str) -> Callable[[Path], bool]:
    """A record `out/name` (or `out` itself when name is None): a non-empty JSON object holding every key."""

    def recognise(out: Path) -> bool:
        record = _json(out / name if name else out)
        return bool(record) and set(keys) <= set(record)

    return recognise


def _calibration(out: Path) -> bool:
    return {"sha256", "source", "samples"} <= set(_json(out.with_name(out.name + ".json")))


@dataclass(frozen=True)
class OutputKind:
    """What a stage writes at `--out`: a directory or a file, and how to recognise an earlier one."""

    is_dir: bool
    recognise: Callable[[Path], bool]


OUTPUT_KINDS: dict[str, OutputKind] = {
    "testbed": OutputKind(True, _has_keys("testbed.json")),
    "calibrate": OutputKind(False, _calibration),
    "profile": OutputKind(True, _has_keys("profile.json", "model_sha256", "calibration_sha256")),
    "score": OutputKind(False, _has_keys(None, "method", "layers", "model_sha256")),
    "prune-experts": OutputKind(True, _lineage_of("prune-experts")),
    "prune-unstructured": OutputKind(True, _lineage_of("prune-unstructured")),
    "evaluate": OutputKind(False, _has_keys(None, "task", "model", "seconds")),
    "report": OutputKind(True, _has_keys("report.json", "context", "groups")),
}


def _check_place(out: Path, inputs: Iterable[str | os.PathLike | None]) -> None:
    """`out` is neither the working directory (or above it) nor overlapping an input."""
    where = out.resolve()
    if Path.cwd().resolve().is_relative_to(where):
        raise MoepruneError(
            f"--out '{out}' is the current directory or one above it; name a new folder, e.g. --out runs/x"
        )
    ancestor = where.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise MoepruneError(f"--out '{out}' lies under the file '{ancestor}'; choose a path in a directory")
    for given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        if where == source or source.is_relative_to(where):
            relation = "is" if where == source else "contains"
            raise MoepruneError(f"--out '{out}' {relation} the input '{given}'; write the output somewhere else")
        if source.is_dir() and where.is_relative_to(source):
            raise MoepruneError(f"--out '{out}' lies inside the input '{given}'; write the output somewhere else")


def _check_existing(out: Path, stage: str, kind: OutputKind, overwrite: bool) -> None:
    """An existing `out` may be replaced only by the same kind, and only if it is ours or `overwrite`."""
    if not (out.exists() or out.is_symlink()):
        return
    if kind.is_dir and not out.is_dir():
        raise MoepruneError(
            f"--out '{out}' is a file and `moeprune {stage}` writes a directory; a file is never replaced by "
            "a directory, so choose another --out"
        )
    if not kind.is_dir and out.is_dir():
        raise MoepruneError(f"--out '{out}' is a directory and `moeprune {stage}` writes a file; choose another --out")
    if (out.is_dir() and not any(out.iterdir())) or kind.recognise(out) or overwrite:
        return
    raise MoepruneError(
        f"--out '{out}' already exists and is not an earlier `moeprune {stage}` output; choose a new --out, "
        "or pass --overwrite to replace it"
    )


def claim_output(
    out: str | os.PathLike,
    stage: str,
    inputs: Iterable[str | os.PathLike | None] = (),
    overwrite: bool = False,
    companions: Iterable[str | os.PathLike] = (),
) -> Path:
    """Check that `stage` may write `out` (see the module docstring) and clean up after earlier crashes.

    Args:
        out: the output path the user gave.
        stage: a key of `OUTPUT_KINDS`.
        inputs: paths the stage reads (None entries are skipped).
        overwrite: replace an existing `out` that the stage did not write (`--overwrite`).
        companions: other paths the stage writes beside `out` (the calibration sidecar).

    Returns:
        `out` as a Path.
    """
    out = Path(out)
    _check_place(out, inputs)
    companions = [Path(path) for path in companions]
    for path in (out, *companions):
        clean_leftovers(path)
    kind = OUTPUT_KINDS[stage]
    _check_existing(out, stage, kind, overwrite)
    for path in companions:
        if path.exists() and not (overwrite or kind.recognise(out)):
            raise MoepruneError(
                f"'{path}', which `moeprune {stage}` writes beside --out, already exists and is not its output; "
                "choose a new --out, or pass --overwrite to replace both"
            )
    return out
