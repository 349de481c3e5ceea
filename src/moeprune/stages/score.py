"""Stage `score`: score every routed expert with one method and choose the keep-sets.

    moeprune score --model M --method NAME [--profile P] [--reference R] [--calib F] --expert-sparsity S --out J

writes the scores file `J` through `moeprune.scoring.scores_file` (its schema is there).

Every method reads at most one decoder layer at a time, so the model (and the reference) are always
opened streamed (`moeprune.checkpoint`): router-change, router-change-diff and stun read the router rows
only (stun also the experts of one layer when a cluster has several members), random and the
profile-based methods read no weights at all, naee one layer at a time. Peak memory does not grow
with the checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from moeprune.arch import validate_keep_sets, weights_sha256
from moeprune.catalog.scorers import CALIBRATION_BATCH_SIZE, run_needs
from moeprune.checkpoint.shards import check_safetensors
from moeprune.checkpoint.source import open_model
from moeprune.data.calibration import calibration_batches
from moeprune.devices import resolve_device
from moeprune.errors import MoepruneError
from moeprune.outputs import claim_output, sha256_file
from moeprune.params import ScoreSection
from moeprune.profiling import PROFILE_FILE, Profile, load_profile
from moeprune.scoring import SCORERS, Scorer, ScoringContext
from moeprune.scoring.router_change import check_same_architecture
from moeprune.scoring.scores_file import layer_record, write_scores

_NEED_FLAGS = {
    "profile": "--profile DIR (from `moeprune profile`)",
    "reference": "--reference DIR (the pretrained checkpoint the model was fine-tuned from)",
    "calibration": "--calib F (from `moeprune calibrate`)",
}


def parse_options(scorer: Scorer, options: dict[str, Any] | None) -> dict[str, Any]:
    """The user's method options checked against the method's declaration and typed ("true" -> True, "100" -> 100).

    Raises:
        MoepruneError: one line for an unknown option (naming the valid ones) or a value of the wrong type.
    """
    if "streaming" in (options or {}):
        raise MoepruneError("score always reads one layer at a time (the streaming option is gone); drop it")
    return scorer.parse_options(options, owner=f"method '{scorer.name}'")


def _batch_size(scorer: Scorer, options: dict[str, Any]) -> int:
    """Calibration samples per batch: the method's `batch_size` option where it declares one."""
    return {"batch_size": CALIBRATION_BATCH_SIZE, **scorer.defaults(), **options}["batch_size"]


def _check_inputs(scorer: Scorer, supplied: dict[str, Path | None], options: dict[str, Any]) -> None:
    for need in run_needs(scorer, options):
        if supplied[need] is None:
            when = f" with {scorer.needs_when[need]} set" if need not in scorer.needs else ""
            raise MoepruneError(f"method '{scorer.name}'{when} needs {_NEED_FLAGS[need]}")


def _load_checked_profile(profile: Path, model_sha: str) -> Profile:
    if (Path(profile) / PROFILE_FILE).is_file():
        check_safetensors(Path(profile) / PROFILE_FILE)
    loaded = load_profile(profile)
    recorded = loaded.summary.get("model_sha256")
    if recorded and recorded != model_sha:
        raise MoepruneError(
            f"the profile in '{profile}' was made on other weights than this model's; "
            "run `moeprune profile` on this model"
        )
    return loaded


def _notes(ctx: ScoringContext, layers: dict) -> list[str]:
    notes = []
    for layer in ctx.adapter.layers:
        kept = len(layers[layer.index].keep)
        if kept < layer.top_k:
            notes.append(
                f"layer {layer.index}: top_k={layer.top_k} is larger than the {kept} kept experts; "
                f"prune-experts will clamp top_k to {kept}"
            )
    return notes


def _check_keep_sets(scorer: Scorer, ctx: ScoringContext, layers: dict) -> None:
    varying = scorer.per_layer_counts
    if varying and {**scorer.defaults(), **ctx.options}.get(varying):
        return  # per-layer counts by design (stun's global_budget); recorded in the file
    validate_keep_sets(ctx.adapter, {index: entry.keep for index, entry in layers.items()})


def run(
    model: Path,
    out: Path,
    params: ScoreSection,
    profile: Path | None = None,
    reference: Path | None = None,
    calib: Path | None = None,
    options: dict | None = None,
    device: str = "auto",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Score the experts of `model` and write the scores file `out` (atomically).

    Args (`model`, `out`, `device`, `overwrite`: see `moeprune.stages`):
        params: Method, expert sparsity and seed (`moeprune.params.ScoreSection`).
        profile, reference, calib: The inputs the method needs (`moeprune.catalog.scorers`).
        options: The method's options as given (`KEY: "VALUE"`), checked against its declaration.

    Returns:
        The scores record written to `out`.
    """
    start = time.perf_counter()
    out = claim_output(out, "score", inputs=[model, profile, reference, calib], overwrite=overwrite)
    method, expert_sparsity, seed = params.method, params.expert_sparsity, params.seed
    scorer = SCORERS.get(method)
    options = parse_options(scorer, options)
    _check_inputs(scorer, {"profile": profile, "reference": reference, "calibration": calib}, options)
    torch_device = resolve_device(device)
    source = open_model(model, streaming=True, device=torch_device)
    adapter = source.adapter
    model_sha = weights_sha256(model)
    reference_source = None
    if reference is not None:
        reference_source = open_model(reference, streaming=True, device=torch_device)
        check_same_architecture(adapter, reference_source.adapter)
    ctx = ScoringContext(
        model=source.model,
        source=source,
        adapter=adapter,
        expert_sparsity=float(expert_sparsity),
        profile=_load_checked_profile(profile, model_sha) if profile is not None else None,
        reference=reference_source,
        batches=calibration_batches(calib, _batch_size(scorer, options)) if calib else None,
        seed=int(seed),
        options=options,
    )
    layers = scorer(ctx)
    _check_keep_sets(scorer, ctx, layers)
    counts = sorted({len(entry.keep) for entry in layers.values()})
    record = {
        "method": method,
        "expert_sparsity": float(expert_sparsity),
        "num_experts": adapter.layers[0].num_experts,
        "keep_per_layer": counts[0] if len(counts) == 1 else {str(i): len(e.keep) for i, e in layers.items()},
        "layers": {str(index): layer_record(entry) for index, entry in sorted(layers.items())},
        "forward_passes": ctx.forward_passes,
        "device": str(torch_device),
        "seconds": round(time.perf_counter() - start, 3),
        "seed": int(seed),
        "options": options,
        "family": adapter.family.name,
        "model": str(model),
        "model_sha256": model_sha,
        "profile": str(profile) if profile else None,
        "profile_sha256": sha256_file(Path(profile) / PROFILE_FILE) if profile else None,
        "reference": str(reference) if reference else None,
        "calibration_sha256": sha256_file(calib) if calib else None,
        "notes": _notes(ctx, layers),
        **ctx.extra,
    }
    return write_scores(out, record)
