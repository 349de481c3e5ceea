"""Calibration data: token windows or images that profiling, scoring and pruning feed through a model.

Sources (the `--source` of `moeprune calibrate`):

    gsm8k-local:PATH   a JSONL file in GSM8K's schema; each problem becomes "Question: ...\\nAnswer: ...",
                       the text lm-eval's gsm8k task shows the model
    text:PATH          plain text (the whole file is one document) or JSONL (`.jsonl`/`.json`) with a
                       `text` field per line
    imagefolder:DIR    an ImageFolder tree DIR/<class>/<image>, preprocessed by the model's image processor
    hf:NAME[:SPLIT]    a Hugging Face data set from the local cache (`hf:NAME:CONFIG:SPLIT` names a config);
                       columns `text`, or `question` + `answer`, or `image` (+ `label`) for image models

Token sources are tokenized with the model's tokenizer, documents joined with EOS, and `samples` windows
of `seq_len` tokens are cut at random offsets drawn from a seeded generator (same seed, same windows).
The output `F` is a safetensors file (`input_ids [N, L]` int64, or `pixel_values [N, C, H, W]` float32
and `labels [N]` int64) with a JSON sidecar `F.json`: source, source sha256, sha256 of F, counts, seed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from moeprune.errors import MoepruneError
from moeprune.outputs import atomic_file, sha256_file

CALIBRATION_SOURCES = ("gsm8k-local:", "text:", "imagefolder:", "hf:")
JSONL_SUFFIXES = (".jsonl", ".json")
IMAGE_BATCH = 64
CALIBRATION_FORMAT = "moeprune-calibration"


def parse_source(source: str) -> tuple[str, str]:
    """Split `PREFIX:ARGUMENT` into (`PREFIX:`, `ARGUMENT`); raises MoepruneError for an unknown prefix."""
    for prefix in CALIBRATION_SOURCES:
        if source.startswith(prefix) and source[len(prefix) :]:
            return prefix, source[len(prefix) :]
    valid = "gsm8k-local:PATH, text:PATH, imagefolder:DIR, hf:NAME[:SPLIT]"
    raise MoepruneError(f"unknown calibration source {source!r}; valid sources: {valid}")


def format_gsm8k(question: str, answer: str) -> str:
    """One problem as lm-eval's gsm8k prompt shows it, followed by its answer."""
    return f"Question: {question}\nAnswer: {answer}"


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MoepruneError(f"data file {path} does not exist; pass the path of an existing file")
    return path


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL file (blank lines skipped); raises MoepruneError if empty or malformed."""
    path = _existing_file(path)
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MoepruneError(
                f"{path} line {number} is not valid JSON ({exc.msg}); write one object per line"
            ) from None
        if not isinstance(record, dict):
            raise MoepruneError(f"{path} line {number} is not a JSON object; write one object per line")
        records.append(record)
    if not records:
        raise MoepruneError(f"{path} is empty; it needs at least one JSON object per line")
    return records


def _record_text(record: dict[str, Any], fields: tuple[str, ...], where: str) -> str:
    """The text of one record: `text`, or the GSM8K prompt of `question` + `answer`, as `fields` allow."""
    if "text" in fields and isinstance(record.get("text"), str):
        return record["text"]
    question, answer = record.get("question"), record.get("answer")
    if "answer" in fields and isinstance(question, str) and isinstance(answer, str):
        return format_gsm8k(question, answer)
    names = {"text": "a 'text' field", "answer": "'question' and 'answer' fields"}
    wanted = " or ".join(names[f] for f in fields)
    raise MoepruneError(f"{where} has no {wanted} (string); fix the data or pick the matching source")


def gsm8k_documents(path: str | Path) -> list[str]:
    """Documents of a GSM8K-schema JSONL file, each "Question: ...\\nAnswer: ..."."""
    return [_record_text(r, ("answer",), f"{path} record {i}") for i, r in enumerate(read_jsonl(path), 1)]


def text_documents(path: str | Path, fields: tuple[str, ...] = ("text",)) -> list[str]:
    """Documents of a plain text file (one document) or of a JSONL file (one per line).

    Args:
        path: The file; `.jsonl` / `.json` files are read as JSONL, anything else as plain text.
        fields: What a JSONL record may hold: `("text",)`, or `("text", "answer")` to also accept
            GSM8K-schema records.
    """
    path = _existing_file(path)
    if path.suffix.lower() in JSONL_SUFFIXES:
        return [_record_text(r, fields, f"{path} record {i}") for i, r in enumerate(read_jsonl(path), 1)]
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise MoepruneError(f"{path} is empty; pass a file with text in it")
    return [text]


def load_hf_dataset(spec: str):
    """`NAME`, `NAME:SPLIT` or `NAME:CONFIG:SPLIT` from the Hugging Face cache (default split: train)."""
    parts = spec.split(":")
    if len(parts) > 3 or not all(parts):
        raise MoepruneError(
            f"bad Hugging Face source 'hf:{spec}'; write hf:NAME, hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT"
        )
    name = parts[0]
    config = parts[1] if len(parts) == 3 else None
    split = parts[-1] if len(parts) > 1 else "train"
    import datasets

    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # datasets raises many types (offline, missing config, bad split)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MoepruneError(
            f"data set '{name}' (split {split}) is not available offline: {reason}; cache it on a connected "
            "machine first, or use text:PATH / gsm8k-local:PATH"
        ) from None


def hf_documents(dataset, spec: str) -> list[str]:
    """Texts of a Hugging Face data set: its `text` column, or `question` + `answer` in GSM8K format."""
    columns = set(dataset.column_names)
    if "text" in columns:
        return [t for t in dataset["text"] if isinstance(t, str) and t.strip()]
    if {"question", "answer"} <= columns:
        return [format_gsm8k(q, a) for q, a in zip(dataset["question"], dataset["answer"], strict=True)]
    raise MoepruneError(f"data set hf:{spec} has no 'text' or 'question'/'answer' column (it has {sorted(columns)})")


def dataset_sha256(dataset) -> str:
    """sha256 over the cache files of a Hugging Face data set (its fingerprint if it has none)."""
    files = [Path(f["filename"]) for f in getattr(dataset, "cache_files", []) or []]
    if not files:
        return hashlib.sha256(str(dataset._fingerprint).encode()).hexdigest()
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def tree_sha256(paths: list[Path], root: Path) -> str:
    """sha256 over (relative path, content hash) of every file, so renames and edits both change it."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def tokenize_documents(tokenizer, documents: list[str]) -> list[int]:
    """Token ids of all documents, each followed by EOS (no BOS), as one flat list."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    encoded = tokenizer(documents, add_special_tokens=False)["input_ids"]
    for document in encoded:
        ids.extend(document)
        if eos is not None:
            ids.append(eos)
    return ids


def sample_windows(ids: list[int], samples: int, seq_len: int, seed: int) -> torch.Tensor:
    """`samples` windows of `seq_len` consecutive tokens at seeded random offsets: `[N, L]` int64."""
    if len(ids) < seq_len:
        raise MoepruneError(
            f"the source has only {len(ids)} tokens, fewer than one window of --seq-len {seq_len}; "
            "use a shorter --seq-len or more text"
        )
    tokens = torch.tensor(ids, dtype=torch.int64)
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.randint(0, len(ids) - seq_len + 1, (samples,), generator=generator)
    return torch.stack([tokens[start : start + seq_len] for start in offsets.tolist()])


def choose_images(count: int, samples: int, seed: int) -> list[int]:
    """Indices of `samples` distinct images out of `count`, drawn with a seeded generator."""
    if samples > count:
        raise MoepruneError(f"the source has only {count} images; ask for at most {count} --samples")
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(count, generator=generator)[:samples].tolist()


def preprocess_images(images: list, processor) -> torch.Tensor:
    """Run the model's image processor over PIL images in batches: `[N, C, H, W]` float32."""
    batches = []
    for start in tqdm(range(0, len(images), IMAGE_BATCH), desc="preprocess images", disable=None):
        batch = processor(images=images[start : start + IMAGE_BATCH], return_tensors="pt")["pixel_values"]
        batches.append(batch.to(torch.float32))
    return torch.cat(batches)


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar of a calibration file: `F.json` beside `F`."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def write_calibration(out: str | Path, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> dict[str, Any]:
    """Write `out` (safetensors) and its sidecar, each atomically; the sidecar gains `sha256` of `out`.

    The two are one unit: the sidecar is replaced first, then the data, and `load_calibration` refuses
    a pair whose hashes differ (an interrupted write), so a reader never mixes two runs.

    Returns:
        The sidecar record as written.
    """
    from safetensors.torch import save_file

    out = Path(out)
    with atomic_file(out) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"format": CALIBRATION_FORMAT})
        record = {**info, "file": out.name, "sha256": sha256_file(tmp)}
        with atomic_file(sidecar_path(out)) as tmp_json:
            tmp_json.write_text(json.dumps(record, indent=2) + "\n")
    return record


def check_calibration_pair(path: Path) -> None:
    """A calibration file and its sidecar (when there is one) hold the same run: the sidecar's sha256."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return  # a hand-made file without a sidecar
    try:
        recorded = json.loads(sidecar.read_text()).get("sha256")
    except (ValueError, AttributeError, UnicodeDecodeError):
        raise MoepruneError(
            f"calibration sidecar {sidecar} is not a JSON object; remake {path} with `moeprune calibrate`"
        ) from None
    if recorded is not None and recorded != sha256_file(path):
        raise MoepruneError(
            f"calibration file {path} does not match its sidecar {sidecar.name} (sha256 differs: an interrupted or "
            "edited write); remake it with `moeprune calibrate`"
        )


def load_calibration(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a calibration file (`input_ids`, or `pixel_values` and `labels`), checked against its sidecar."""
    from safetensors.torch import load_file

    from moeprune.checkpoint.shards import check_safetensors

    path = Path(path)
    if not path.is_file():
        raise MoepruneError(f"calibration file {path} does not exist; make it with `moeprune calibrate`")
    check_safetensors(path)
    check_calibration_pair(path)
    return load_file(str(path))


def read_calibration_info(path: str | Path) -> dict[str, Any]:
    """The sidecar record of a calibration file (`F.json`)."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        raise MoepruneError(f"calibration sidecar {sidecar} is missing; remake {path} with `moeprune calibrate`")
    try:
        record = json.loads(sidecar.read_text())
    except (ValueError, UnicodeDecodeError):
        record = None
    if not isinstance(record, dict):
        raise MoepruneError(
            f"calibration sidecar {sidecar} is not a JSON object; remake {path} with `moeprune calibrate`"
        )
    return record


def calibration_batches(path: str | Path, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """The calibration tensors in batches along dimension 0 (the last batch may be smaller)."""
    if batch_size <= 0:
        raise MoepruneError(f"batch size must be positive, got {batch_size}")
    tensors = load_calibration(path)
    if "input_ids" not in tensors and "pixel_values" not in tensors:
        raise MoepruneError(
            f"calibration file {path} holds {sorted(tensors)}; expected input_ids or pixel_values "
            "(make it with `moeprune calibrate`)"
        )
    count = next(iter(tensors.values())).shape[0]
    if count == 0:
        raise MoepruneError(f"calibration file {path} is empty; make it with `moeprune calibrate --samples N`")
    return [
        {name: tensor[start : start + batch_size] for name, tensor in tensors.items()}
        for start in range(0, count, batch_size)
    ]


def load_tokenizer(model_dir: str | Path):
    """The tokenizer saved beside a model; raises MoepruneError if there is none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    except Exception as exc:  # transformers raises OSError / ValueError / TypeError for missing files
        raise MoepruneError(
            f"no usable tokenizer in {model_dir} ({type(exc).__name__}); save one beside the model"
        ) from None


def load_image_processor(model_dir: str | Path):
    """The image processor saved beside a model; raises MoepruneError if there is none."""
    from transformers import AutoImageProcessor

    from moeprune.arch.loading import register_own_models

    register_own_models()
    try:
        return AutoImageProcessor.from_pretrained(str(model_dir))
    except Exception as exc:  # as above: several exception types for a missing processor
        raise MoepruneError(
            f"no image processor in {model_dir} ({type(exc).__name__}); save one beside the model"
        ) from None
