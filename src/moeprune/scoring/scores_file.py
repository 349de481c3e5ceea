"""The scores file: the contract between `moeprune score` (writes it) and `prune-experts` (reads it).

    {"method": "reap", "expert_sparsity": 0.5, "num_experts": 8, "keep_per_layer": 4,
     "layers": {"0": {"scores": [...one per expert...], "keep": [sorted kept indices]},
                "1": {"scores": [...], "keep": [...], "merge": {"3": [1, 3]}}, ...},
     "forward_passes": 0, "device": "cpu", "seconds": 0.12, "seed": 0, "options": {}, "family": "mixtral",
     "model": "...", "model_sha256": "...", "profile": "...", "profile_sha256": "...",
     "reference": null, "calibration_sha256": null, "notes": [...], "<method>": {...details...}}

Only `method`, `expert_sparsity` and, per layer, `keep` (plus the optional `merge`) are required, so a
scores file may be written by hand. Layer keys are canonical decoder-layer indices (`"0"`, `"12"`, never
`"00"`), indices are integers (never booleans), scores finite numbers, and no JSON object repeats a key.
`ScoresFile` is the one schema; `read_scores` and `write_scores` go through it, and every way a file
can be wrong is one `MoepruneError` line naming the file and the fix. docs/design.md, "Scores file".
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError, field_validator, model_validator

from moeprune.errors import MoepruneError
from moeprune.outputs import weights_sha256, write_json
from moeprune.scoring.base import LayerScores

SCHEMA = "see the schema in docs/design.md"


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_canonical(key: Any) -> bool:
    return isinstance(key, str) and re.fullmatch(r"0|[1-9][0-9]*", key) is not None


def _is_finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class LayerEntry(BaseModel):
    """One MoE layer: `scores` per expert (higher = keep), the `keep` indices and, for STUN's selective
    reconstruction, `merge`: kept expert (a string key) -> the cluster members whose mean replaces it."""

    model_config = ConfigDict(extra="allow", strict=True)

    scores: list[float] | None = None
    keep: list[int]
    merge: dict[str, list[int]] | None = None

    @model_validator(mode="before")
    @classmethod
    def _has_keep(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("keep"), list):
            raise ValueError("has no 'keep' list")
        if not all(_is_index(i) for i in data["keep"]):
            raise ValueError("'keep' must hold integer expert indices")
        return data

    @field_validator("scores", mode="before")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        if not isinstance(value, list) or not all(_is_finite(s) for s in value):
            raise ValueError("'scores' must be finite numbers (no NaN or infinity); remake it with `moeprune score`")
        return value

    @field_validator("merge", mode="before")
    @classmethod
    def _merge_form(cls, value: Any) -> Any:
        well_formed = isinstance(value, dict) and all(
            _is_canonical(kept) and isinstance(members, list) and all(_is_index(m) for m in members)
            for kept, members in value.items()
        )
        if not well_formed:
            raise ValueError("'merge' must map a kept expert to a list of integer experts")
        return value

    @model_validator(mode="after")
    def _merge_into_kept(self) -> LayerEntry:
        stray = sorted(int(kept) for kept in self.merge or {} if int(kept) not in self.keep)
        if stray:
            raise ValueError(f"merges into experts {stray} that it does not keep")
        return self


class ScoresFile(BaseModel):
    """The scores file; fields in the order `moeprune score` writes them, method details as extra keys."""

    model_config = ConfigDict(extra="allow", strict=True)

    method: str
    expert_sparsity: float
    num_experts: int | None = None
    keep_per_layer: int | dict[str, int] | None = None
    layers: dict[str, LayerEntry]
    forward_passes: int | None = None
    device: str | None = None
    seconds: float | None = None
    seed: int | None = None
    options: dict[str, Any] | None = None
    family: str | None = None
    model: str | None = None
    model_sha256: str | None = None
    profile: str | None = None
    profile_sha256: str | None = None
    reference: str | None = None
    calibration_sha256: str | None = None
    notes: list[str] | None = None
    _path: Path | None = PrivateAttr(default=None)

    @field_validator("layers", mode="before")
    @classmethod
    def _some_layers(cls, value: Any) -> Any:
        if not isinstance(value, dict) or not value:
            raise ValueError(f"lacks ['layers']; {SCHEMA}")
        for key in value:
            if not _is_canonical(key):
                raise ValueError(f"layer key '{key}' is not a layer index; write 0, 1, 2, ...")
        return value

    def keep_sets(self) -> dict[int, list[int]]:
        """Decoder-layer index -> kept expert indices."""
        return {int(layer): entry.keep for layer, entry in self.layers.items()}

    def merges(self) -> dict[int, dict[int, list[int]]]:
        """Decoder-layer index -> {kept expert: members whose mean it becomes}, for layers that merge."""
        return {
            int(layer): {int(kept): members for kept, members in entry.merge.items()}
            for layer, entry in self.layers.items()
            if entry.merge
        }

    def record(self) -> dict[str, Any]:
        """The JSON object as written: the keys that were given, in the schema's order."""
        return self.model_dump(exclude_unset=True)  # json.dumps writes it, exactly as it was given

    def where(self) -> str:
        """How error messages name this file."""
        return f"scores file '{self._path}'" if self._path else "scores file"


def layer_record(entry: LayerScores) -> dict[str, Any]:
    """A scorer's result for one layer as it is written (`merge` only when the method merged experts)."""
    record: dict[str, Any] = {"scores": entry.scores, "keep": entry.keep}
    if entry.merge:
        record["merge"] = {str(kept): members for kept, members in entry.merge.items()}
    return record


def _where(loc: tuple) -> str:
    """`layer 3 ` when the error is about a layer's entry (its validators do not know their layer)."""
    return f"layer {loc[1]} " if loc[:1] == ("layers",) and len(loc) >= 2 else ""


def _one_line(exc: ValidationError, path: Path | None) -> MoepruneError:
    name = f"scores file '{path}'" if path else "scores file"
    errors = exc.errors()
    missing = [e["loc"][0] for e in errors if e["type"] == "missing" and len(e["loc"]) == 1]
    if missing:
        return MoepruneError(f"{name} lacks {missing}; {SCHEMA}")
    first = errors[0]
    if first["type"] == "value_error":
        return MoepruneError(f"{name}: {_where(first['loc'])}{first['ctx']['error']}")
    field = ".".join(str(part) for part in first["loc"])
    return MoepruneError(f"{name}: '{field}': {first['msg'].lower()}; {SCHEMA}")


def parse_scores(data: Any, path: Path | None = None) -> ScoresFile:
    """Validate a scores object (already parsed JSON); every problem is one line naming `path`."""
    if not isinstance(data, dict):
        raise MoepruneError(
            f"scores file '{path}' holds a JSON {type(data).__name__}, not an object; remake it with `moeprune score`"
        )
    try:
        scores = ScoresFile.model_validate(data)
    except ValidationError as exc:
        raise _one_line(exc, path) from None
    scores._path = path
    return scores


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


def read_scores(path: str | Path) -> ScoresFile:
    """Read and check the scores file at `path`."""
    path = Path(path)
    return parse_scores(_load_json(path), path)


def write_scores(path: str | Path, record: dict[str, Any]) -> dict[str, Any]:
    """Check `record` against the schema and write it to `path` (atomically); returns what was written."""
    written = parse_scores(record, Path(path)).record()
    write_json(path, written)
    return written


def check_scores_model(scores: ScoresFile, model: Path, force: bool) -> None:
    """The scores were computed on `model`'s weights (their `model_sha256`), unless `force`."""
    recorded = scores.model_sha256
    if recorded is None or force or recorded == weights_sha256(model):
        return
    raise MoepruneError(
        f"{scores.where()} was computed on other weights than '{model}' (model_sha256 differs); "
        "score this model with `moeprune score`, or pass --force to apply them anyway"
    )


def keep_sets_for(scores: ScoresFile, adapter) -> dict[int, list[int]]:
    """The keep-sets, checked against the model's MoE layers (one score per expert, every layer kept)."""
    keep = scores.keep_sets()
    for layer in adapter.layers:
        entry = scores.layers.get(str(layer.index))
        if entry is not None and entry.scores is not None and len(entry.scores) != layer.num_experts:
            raise MoepruneError(
                f"{scores.where()}: layer {layer.index} has {len(entry.scores)} scores "
                f"but the model has {layer.num_experts} experts"
            )
    missing = sorted(set(adapter.moe_indices) - set(keep))
    if missing:
        raise MoepruneError(f"{scores.where()} has no keep-set for MoE layer(s) {missing}; score every MoE layer")
    return keep
