"""How a stage writes its output: never half-written, never over data it did not write.

`atomic` writes files and directories through a temporary sibling renamed on success (and cleans what a
killed writer left), plus the sha256 helpers of what was written; `claim` is the `--out` contract every
stage applies before any work (`claim_output`). Import from here: `from moeprune.outputs import
atomic_dir, claim_output`.
"""

from moeprune.outputs.atomic import (
    apply_umask,
    atomic_dir,
    atomic_file,
    clean_leftovers,
    current_umask,
    disk_full_error,
    leftovers,
    scratch_dir,
    sha256_file,
    sha256_files,
    weights_sha256,
    write_json,
)
from moeprune.outputs.claim import OUTPUT_KINDS, OutputKind, claim_output

__all__ = [
    "OUTPUT_KINDS",
    "OutputKind",
    "apply_umask",
    "atomic_dir",
    "atomic_file",
    "claim_output",
    "clean_leftovers",
    "current_umask",
    "disk_full_error",
    "leftovers",
    "scratch_dir",
    "sha256_file",
    "sha256_files",
    "weights_sha256",
    "write_json",
]
