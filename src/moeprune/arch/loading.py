"""Loading and saving Hugging Face model directories safely (safetensors, no remote code)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from torch import nn

from moeprune.arch.refused import check_not_refused
from moeprune.checkpoint.shards import INDEX_FILE, check_safetensors
from moeprune.errors import MoepruneError
from moeprune.outputs import weights_sha256  # noqa: F401  (re-exported by moeprune.arch)

# Files a model directory holds besides weights that the next stage must keep (tokenizer, processor).
_NOT_COPIED = {"config.json", "generation_config.json", "moeprune.json", "README.md", "model.safetensors.index.json"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def weight_files(model_dir: str | Path) -> list[Path]:
    """The safetensors weight files of a model directory."""
    return sorted(Path(model_dir).glob("*.safetensors"))


def check_model_dir(model_dir: str | Path) -> Path:
    """Validate that `model_dir` is a Hugging Face model directory moeprune may load.

    moeprune reads safetensors only: pickle weights (.bin, .pt) can run code when loaded, so a
    pickle-only checkpoint is refused with the one-line conversion that fixes it.

    Raises:
        MoepruneError: missing or empty directory; no config.json, or one that is not JSON or names a
            model type transformers does not implement; no weights, pickle-only or truncated weights.
    """
    path = Path(model_dir)
    if not path.exists():
        raise MoepruneError(f"model directory '{path}' does not exist; pass a Hugging Face model directory")
    if not path.is_dir() or not any(path.iterdir()):
        raise MoepruneError(f"model directory '{path}' is empty; pass a directory with config.json and *.safetensors")
    if not (path / "config.json").is_file():
        raise MoepruneError(f"'{path}' has no config.json; pass a Hugging Face model directory")
    _check_config(path / "config.json")
    files = weight_files(path)
    if not files and (list(path.glob("*.bin")) or list(path.glob("*.pt"))):
        raise MoepruneError(
            f"'{path}' holds only pickle weights (.bin), which can run code when loaded; convert them once with "
            f"`AutoModelForCausalLM.from_pretrained('{path}').save_pretrained(NEW_DIR)` (safetensors) and pass NEW_DIR"
        )
    if not files:
        raise MoepruneError(f"'{path}' has no weight files (*.safetensors); pass a complete model directory")
    _check_index(path)
    for file in files:
        check_safetensors(file)
    return path


def _check_index(path: Path) -> None:
    """Every shard `model.safetensors.index.json` names is there."""
    index = path / INDEX_FILE
    if not index.is_file():
        return
    try:
        shards = set(json.loads(index.read_text())["weight_map"].values())
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        raise MoepruneError(f"'{index}' is not a shard index (no weight_map); re-save the model") from None
    missing = sorted(name for name in shards if not (path / str(name)).is_file())
    if missing:
        raise MoepruneError(f"'{path}' lacks the shard(s) {missing} that {INDEX_FILE} lists; copy them or re-save")


def _check_config(config_path: Path) -> None:
    """config.json is a JSON object whose model_type transformers (or moeprune) implements, not a refused MoE."""
    from transformers import CONFIG_MAPPING

    try:
        config = json.loads(config_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise MoepruneError(f"'{config_path}' is not valid JSON ({exc}); restore it or re-save the model") from None
    if not isinstance(config, dict):
        raise MoepruneError(f"'{config_path}' is not a JSON object; restore it or re-save the model")
    register_own_models()
    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        remote = " (its auto_map points at remote code, which moeprune never runs)" if "auto_map" in config else ""
        raise MoepruneError(
            f"'{config_path}': model_type {model_type!r} is not a model transformers implements{remote}; "
            "use a checkpoint of a supported family (`moeprune --help`, README 'Covered families')"
        )
    check_not_refused(model_type)


def _auto_class(config):
    """The stock Auto class of a checkpoint: image classifier, causal LM, or vision-language model."""
    from transformers import AutoModelForCausalLM, AutoModelForImageClassification, AutoModelForImageTextToText

    architectures = getattr(config, "architectures", None) or []
    if any(name.endswith("ForImageClassification") for name in architectures):
        return AutoModelForImageClassification
    if type(config) in AutoModelForImageTextToText._model_mapping and (
        getattr(config, "vision_config", None) is not None or type(config) not in AutoModelForCausalLM._model_mapping
    ):
        # A vision-language wrapper around an MoE language model: loaded whole (AutoModelForCausalLM would
        # drop the vision tower of e.g. qwen3_5_moe), its language model's MoE layers pruned.
        return AutoModelForImageTextToText
    if type(config) not in AutoModelForCausalLM._model_mapping:
        from transformers import AutoModelForTokenClassification

        if type(config) in AutoModelForTokenClassification._model_mapping:
            return AutoModelForTokenClassification  # an MoE token classifier (openai_privacy_filter)
    return AutoModelForCausalLM


def register_own_models() -> None:
    """Register moeprune's own model classes (the V-MoE) with the transformers Auto classes."""
    import importlib

    try:
        importlib.import_module("moeprune.arch.vmoe")
    except ModuleNotFoundError as exc:  # the V-MoE module is optional for causal LMs
        if exc.name != "moeprune.arch.vmoe":
            raise


def load_model(model_dir: str | Path, dtype: str = "auto", device: str | None = None) -> nn.Module:
    """Load a causal LM or image classifier from a directory (safetensors only, see `check_model_dir`).

    `trust_remote_code` stays off: moeprune covers families that transformers implements. `device`
    (see `moeprune.devices.resolve_device`) moves the model there; None leaves it on the CPU.
    """
    from transformers import AutoConfig

    register_own_models()

    path = check_model_dir(model_dir)
    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    model = _auto_class(config).from_pretrained(path, dtype=dtype, use_safetensors=True, trust_remote_code=False)
    if device is not None:
        from moeprune.devices import resolve_device

        model.to(resolve_device(device))
    model.eval()
    return model


def copy_auxiliary_files(src: str | Path, dst: str | Path) -> list[str]:
    """Copy tokenizer / image-processor files from one model directory to another."""
    copied = []
    for item in Path(src).iterdir():
        if item.is_file() and item.name not in _NOT_COPIED and not item.name.endswith(_WEIGHT_SUFFIXES):
            shutil.copy2(item, Path(dst) / item.name)
            copied.append(item.name)
    return sorted(copied)


def save_model_dir(model: nn.Module, source_dir: str | Path, out_dir: str | Path) -> None:
    """`save_pretrained` in safetensors, then copy the tokenizer / processor of `source_dir`."""
    model.save_pretrained(out_dir, safe_serialization=True)
    copy_auxiliary_files(source_dir, out_dir)
