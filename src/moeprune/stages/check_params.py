"""Stage `check-params`: validate a params file before any work; the first command of every dvc.yaml stage.

    moeprune check-params [--params params.yaml]

Silent when the file is valid. Otherwise one `error:` line naming the file and every bad key, and exit
code 1, so `dvc repro` stops at the first stage it runs instead of after hours of stages.
"""

from __future__ import annotations

from pathlib import Path

from moeprune.params import Params, load_params


def run(params: Path = Path("params.yaml")) -> Params:
    """The validated parameters of `params` (raises `MoepruneError` naming each bad key)."""
    return load_params(params)
