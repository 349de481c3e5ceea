"""Stage `prune-experts`: remove the experts a scores file does not keep, save a stock-loadable model."""

from __future__ import annotations

import json
import math
import re
import time
import warnings
from pathlib import Path
from typing import Any

from moeprune.arch import get_adapter, load_model, merge_experts, remove_experts, save_model_dir, weights_sha256
from moeprune.errors import MoepruneError
from moeprune.io_utils import atomic_dir
from moeprune.lineage import build_lineage, write_lineage, write_model_card
from moeprune.outputs import claim_output


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise MoepruneError(f"key(s) {repeated} appear twice in one object")
    return dict(pairs)


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise MoepruneError(f"scores file '{path}' does not exist; write it with `moeprune score`")
    try:
        return json.loads(path.read_text(), object_pairs_hook=_unique_keys)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MoepruneError(
            f"scores file '{path}' is not valid JSON ({exc}); remake it with `moeprune score`"
        ) from None
    except MoepruneError as exc:
        raise MoepruneError(f"scores file '{path}': {exc}; write each key once") from None


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_canonical(key: str) -> bool:
    return re.fullmatch(r"0|[1-9][0-9]*", key) is not None


def read_scores(path: str | Path) -> dict[str, Any]:
    """Read and check a scores file: `{"method", "expert_sparsity", "layers": {"<l>": {"scores", "keep"}}}`.

    A layer may also hold `"merge": {"<kept>": [members]}` (STUN's selective reconstruction): expert
    `kept` becomes the mean of `members` before the others are removed. Layer keys are canonical
    (`"0"`, `"12"`, never `"00"`), indices integers, scores finite numbers.
    """
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict):
        raise MoepruneError(
            f"scores file '{path}' holds a JSON {type(data).__name__}, not an object; remake it with `moeprune score`"
        )
    missing = [key for key in ("method", "expert_sparsity", "layers") if key not in data]
    if missing or not isinstance(data.get("layers"), dict) or not data["layers"]:
        raise MoepruneError(f"scores file '{path}' lacks {missing or ['layers']}; see the schema in docs/design.md")
    for layer, entry in data["layers"].items():
        _check_layer(path, layer, entry)
    return data


def _check_layer(path: Path, layer: str, entry: Any) -> None:
    if not _is_canonical(layer):
        raise MoepruneError(f"scores file '{path}': layer key '{layer}' is not a layer index; write 0, 1, 2, ...")
    if not isinstance(entry, dict) or not isinstance(entry.get("keep"), list):
        raise MoepruneError(f"scores file '{path}': layer {layer} has no 'keep' list")
    if not all(_is_index(i) for i in entry["keep"]):
        raise MoepruneError(f"scores file '{path}': layer {layer} 'keep' must hold integer expert indices")
    scores = entry.get("scores", [])
    finite = isinstance(scores, list) and all(
        isinstance(s, int | float) and not isinstance(s, bool) and math.isfinite(s) for s in scores
    )
    if not finite:
        raise MoepruneError(
            f"scores file '{path}': layer {layer} 'scores' must be finite numbers (no NaN or infinity); "
            "remake it with `moeprune score`"
        )
    _check_merge(path, layer, entry)


def _check_merge(path: Path, layer: str, entry: dict[str, Any]) -> None:
    merge = entry.get("merge", {})
    well_formed = isinstance(merge, dict) and all(
        _is_canonical(kept) and isinstance(members, list) and all(_is_index(m) for m in members)
        for kept, members in merge.items()
    )
    if not well_formed:
        raise MoepruneError(
            f"scores file '{path}': layer {layer} 'merge' must map a kept expert to a list of integer experts"
        )
    stray = sorted(int(kept) for kept in merge if int(kept) not in entry["keep"])
    if stray:
        raise MoepruneError(f"scores file '{path}': layer {layer} merges into experts {stray} that it does not keep")


def check_scores_model(scores: dict[str, Any], path: Path, model: Path, force: bool) -> None:
    """The scores were computed on `model`'s weights (their `model_sha256`), unless `force`."""
    recorded = scores.get("model_sha256")
    if recorded is None or force or recorded == weights_sha256(model):
        return
    raise MoepruneError(
        f"scores file '{path}' was computed on other weights than '{model}' (model_sha256 differs); "
        "score this model with `moeprune score`, or pass --force to apply them anyway"
    )


def _merge_map(scores: dict[str, Any]) -> dict[int, dict[int, list[int]]]:
    return {
        int(layer): {int(kept): members for kept, members in entry["merge"].items()}
        for layer, entry in scores["layers"].items()
        if entry.get("merge")
    }


def _keep_map(scores: dict[str, Any], adapter) -> dict[int, list[int]]:
    keep = {int(layer): entry["keep"] for layer, entry in scores["layers"].items()}
    for layer in adapter.layers:
        given = scores["layers"].get(str(layer.index), {}).get("scores")
        if given is not None and len(given) != layer.num_experts:
            raise MoepruneError(
                f"scores file: layer {layer.index} has {len(given)} scores "
                f"but the model has {layer.num_experts} experts"
            )
    missing = sorted(set(adapter.moe_indices) - set(keep))
    if missing:
        raise MoepruneError(f"scores file has no keep-set for MoE layer(s) {missing}; score every MoE layer")
    return keep


def run(model: Path, scores: Path, out: Path, force: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Remove experts per the scores file and write the pruned model directory `out` (atomically).

    `force` applies scores computed on other weights; `overwrite` replaces an `out` that is not an
    earlier prune-experts output (`moeprune.outputs.claim_output`).
    """
    start = time.perf_counter()
    out = claim_output(out, "prune-experts", inputs=[model, scores], overwrite=overwrite)
    data = read_scores(scores)
    net = load_model(model)
    check_scores_model(data, Path(scores), Path(model), force)
    adapter = get_adapter(net)
    keep = _keep_map(data, adapter)
    record = build_lineage(
        stage="prune-experts", params={"method": data["method"]}, parent=model, parent_model=net, scores=scores
    )
    before = adapter.layers[0].num_experts
    merges = _merge_map(data)
    merge_experts(net, merges)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        applied = remove_experts(net, keep)
    notes = [str(w.message) for w in caught]
    after = len(next(iter(applied.values())))
    record["params"].update(
        expert_sparsity=1 - after / before,  # what was removed, whatever the file asked for
        scores_expert_sparsity=data["expert_sparsity"],
        keep={str(k): v for k, v in applied.items()},
    )
    if merges:
        record["params"]["merge"] = {
            str(layer): {str(k): v for k, v in groups.items()} for layer, groups in merges.items()
        }
    record["notes"] = notes
    with atomic_dir(out) as tmp:
        save_model_dir(net, model, tmp)
        write_lineage(tmp, record)
        write_model_card(tmp, record, _card_summary(data, adapter, before, after, notes, merges))
    return {
        "out": str(out),
        "experts_before": before,
        "experts_after": after,
        "notes": notes,
        "seconds": round(time.perf_counter() - start, 3),
    }


def _card_summary(
    data: dict[str, Any], adapter, before: int, after: int, notes: list[str], merges: dict[int, dict]
) -> list[str]:
    summary = [
        f"Expert pruning with `{data['method']}`: {before} -> {after} routed experts in each of "
        f"{len(adapter.layers)} MoE layers (expert sparsity {1 - after / before:.2f}).",
    ]
    merged = sum(len(groups) for groups in merges.values())
    if merged:
        summary.append(f"{merged} kept experts are the mean of their cluster (STUN's selective reconstruction).")
    if not adapter.renormalises:
        summary.append(
            f"Note: the {adapter.family.name} gate does not renormalise over the chosen experts, so outputs "
            "shift slightly even for tokens that never used a removed expert (the softmax loses terms)."
        )
    return summary + [f"Warning: {note}" for note in notes]
