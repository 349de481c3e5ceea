"""Stage `profile`: one calibration pass with the `moeprune_profile` experts implementation.

    moeprune profile --model M --calib F --out P

writes `P/profile.safetensors` (per MoE layer `layers.{l}.frequency`, `.soft_frequency`, `.coactivation`,
`.reap`, `.output_norm`, `.router_logit_mean`, `.router_logit_std`, `.tokens`, `.wanda_in_sq`,
`.wanda_down_sq`), `P/profile.json` (layers, tokens, calibration sha256, seconds) and
`P/plots/expert_load.png`, `P/plots/coactivation.png`, atomically.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from moeprune.arch import weights_sha256
from moeprune.checkpoint.source import open_model
from moeprune.data.calibration import calibration_batches
from moeprune.devices import resolve_device
from moeprune.outputs import atomic_dir, claim_output, sha256_file
from moeprune.params import ProfileOptions
from moeprune.profiling import profile_model, save_profile


def run(
    model: Path,
    calib: Path,
    out: Path,
    params: ProfileOptions | None = None,
    device: str = "auto",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Profile `model` on the calibration file `calib`; write the profile directory `out` (see `moeprune.stages`).

    `params` (`moeprune.params.ProfileOptions`, defaults when None): the batch size and `streaming`. With
    `streaming` (or automatically when the checkpoint exceeds the memory budget, see
    `moeprune.checkpoint.budget.use_streaming`) one decoder layer is in memory at a time; the statistics are the
    same as in memory.

    Returns:
        The summary written to `out/profile.json`.
    """
    start = time.perf_counter()
    params = params or ProfileOptions()
    batch_size = params.batch_size
    out = claim_output(out, "profile", inputs=[model, calib], overwrite=overwrite)
    batches = calibration_batches(calib, batch_size)
    torch_device = resolve_device(device)
    source = open_model(model, params.streaming, torch_device)
    profile = profile_model(source, batches)
    profile.summary.update(
        {
            "stage": "profile",
            "model": str(model),
            "model_sha256": weights_sha256(model),
            "calibration": str(calib),
            "calibration_sha256": sha256_file(calib),
            "batch_size": batch_size,
            "streaming": source.streamed,
            "device": str(torch_device),
            "seconds": round(time.perf_counter() - start, 3),
        }
    )
    with atomic_dir(out) as tmp:
        save_profile(profile, tmp)
    return profile.summary
