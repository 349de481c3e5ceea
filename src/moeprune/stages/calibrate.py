"""`moeprune calibrate`: make the calibration file that profiling, scoring and pruning read.

    moeprune calibrate --model M --source gsm8k-local:data/train.jsonl --samples 64 --seq-len 128 --out F

writes `F` (safetensors: `input_ids [N, L]`, or `pixel_values [N, C, H, W]` + `labels [N]` for image
models) and `F.json` (source, source sha256, sha256 of F, samples, seq_len, seed, tokens, model).
Sources and formats are described in `moeprune.data.calibration`. Everything is checked and built in
memory before anything is written; on an error nothing is left behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from moeprune.arch.loading import check_model_dir, register_own_models
from moeprune.data.calibration import (
    choose_images,
    dataset_sha256,
    gsm8k_documents,
    hf_documents,
    load_hf_dataset,
    load_image_processor,
    load_tokenizer,
    parse_source,
    preprocess_images,
    sample_windows,
    sidecar_path,
    text_documents,
    tokenize_documents,
    tree_sha256,
    write_calibration,
)
from moeprune.errors import MoepruneError
from moeprune.outputs import claim_output, sha256_file
from moeprune.params import CalibrateSection


def model_config(model_dir: str | Path):
    """The model's config (moeprune's own model types registered first)."""
    from transformers import AutoConfig

    register_own_models()
    return AutoConfig.from_pretrained(check_model_dir(model_dir), trust_remote_code=False)


def is_image_model(config) -> bool:
    """True for image classifiers (they calibrate on images, not tokens)."""
    architectures = getattr(config, "architectures", None) or []
    return any(name.endswith("ForImageClassification") for name in architectures)


def check_context(seq_len: int, config, image_model: bool) -> None:
    """For language models, `seq_len` <= the model's context (the params model checked both counts are > 0)."""
    if image_model:
        return
    context = getattr(config.get_text_config(), "max_position_embeddings", None)
    if context is not None and seq_len > context:
        raise MoepruneError(
            f"--seq-len {seq_len} exceeds the model's context of {context} tokens; use at most {context}"
        )


def token_documents(prefix: str, argument: str) -> tuple[list[str], str]:
    """(documents, source sha256) of a token source."""
    if prefix == "hf:":
        dataset = load_hf_dataset(argument)
        return hf_documents(dataset, argument), dataset_sha256(dataset)
    if prefix == "gsm8k-local:":
        return gsm8k_documents(argument), sha256_file(argument)
    if prefix == "text:":
        return text_documents(argument), sha256_file(argument)
    raise MoepruneError(
        f"{prefix}{argument} holds images, but this model is a language model; use text:, gsm8k-local: or hf:"
    )


def image_source(prefix: str, argument: str, config) -> tuple[int, Callable[[list[int]], list], list[int], str]:
    """(number of images, `fetch(indices) -> PIL images`, model label per image, source sha256)."""
    from moeprune.data.digits import load_imagefolder, map_folders_to_labels, read_image

    channels = int(getattr(config, "num_channels", 3))
    if prefix == "imagefolder:":
        paths, folder_labels, classes = load_imagefolder(Path(argument))
        label_of = map_folders_to_labels(classes, dict(config.label2id or {}), config.num_labels)

        def fetch_files(chosen: list[int]) -> list:
            return [read_image(paths[i], channels) for i in chosen]

        return len(paths), fetch_files, [label_of[f] for f in folder_labels], tree_sha256(paths, Path(argument))
    if prefix == "hf:":
        dataset = load_hf_dataset(argument)
        column = next((c for c in ("image", "img") if c in dataset.column_names), None)
        if column is None:
            raise MoepruneError(f"data set hf:{argument} has no 'image' column; image models need images")
        labels = list(dataset["label"]) if "label" in dataset.column_names else [-1] * len(dataset)

        def fetch_rows(chosen: list[int]) -> list:
            return [image.convert("L" if channels == 1 else "RGB") for image in dataset.select(chosen)[column]]

        return len(dataset), fetch_rows, labels, dataset_sha256(dataset)
    raise MoepruneError(
        f"{prefix}{argument} is text, but this model is an image classifier; use imagefolder:DIR or hf:NAME"
    )


def build_tokens(
    model_dir: Path, prefix: str, argument: str, samples: int, seq_len: int, seed: int, info: dict
) -> dict[str, torch.Tensor]:
    """`samples` token windows of `seq_len` at seeded offsets; fills the token fields of `info`."""
    documents, info["source_sha256"] = token_documents(prefix, argument)
    ids = tokenize_documents(load_tokenizer(model_dir), documents)
    input_ids = sample_windows(ids, samples, seq_len, seed)  # [N, L]
    info.update(kind="tokens", seq_len=seq_len, tokens=input_ids.numel(), source_tokens=len(ids))
    return {"input_ids": input_ids}


def build_images(
    model_dir: Path, config, prefix: str, argument: str, samples: int, seed: int, info: dict
) -> dict[str, torch.Tensor]:
    """`samples` distinct images, preprocessed, with their labels; fills the image fields of `info`."""
    processor = load_image_processor(model_dir)
    count, fetch, labels, info["source_sha256"] = image_source(prefix, argument, config)
    chosen = choose_images(count, samples, seed)
    pixel_values = preprocess_images(fetch(chosen), processor)  # [N, C, H, W]
    info.update(kind="images", seq_len=None, tokens=0, source_images=count, shape=list(pixel_values.shape))
    return {"pixel_values": pixel_values, "labels": torch.tensor([labels[i] for i in chosen], dtype=torch.int64)}


def build_calibration(
    model_dir: str | Path, source: str, samples: int, seq_len: int, seed: int = 0
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Make calibration tensors for a model from a source, in memory.

    Returns:
        `(tensors, info)`: `{"input_ids": [N, L]}` or `{"pixel_values": [N, C, H, W], "labels": [N]}`,
        and the sidecar fields (all but the file's own sha256).
    """
    prefix, argument = parse_source(source)
    config = model_config(model_dir)
    image_model = is_image_model(config)
    check_context(seq_len, config, image_model)
    info: dict[str, Any] = {"source": source, "model": str(model_dir), "samples": samples, "seed": seed}
    if image_model:
        return build_images(Path(model_dir), config, prefix, argument, samples, seed, info), info
    return build_tokens(Path(model_dir), prefix, argument, samples, seq_len, seed, info), info


def run(model: Path, out: Path, params: CalibrateSection, overwrite: bool = False) -> dict[str, Any]:
    """Build calibration data for `model` from `params.source` and write it to `out` (+ `out.json`).

    Args:
        model: The model directory whose tokenizer or image processor prepares the data.
        out: The safetensors file to write.
        params: `moeprune.params.CalibrateSection`, already validated: `source` (`gsm8k-local:PATH`,
            `text:PATH`, `imagefolder:DIR` or `hf:NAME[:SPLIT]`), `samples` (token windows or images),
            `seq_len` (tokens per window; ignored for image models) and `seed` (of the window offsets or
            the image choice).
        overwrite: Replace an existing `out` that is not an earlier calibration file.

    Returns:
        The sidecar record (as written to `out.json`) plus `seconds`.

    Raises:
        MoepruneError: missing / empty / malformed data, seq_len beyond the context.
    """
    started = time.perf_counter()
    source = params.source
    prefix, argument = parse_source(source)
    source_path = argument if prefix != "hf:" else None
    out = claim_output(
        out, "calibrate", inputs=[model, source_path], overwrite=overwrite, companions=[sidecar_path(out)]
    )
    tensors, info = build_calibration(check_model_dir(model), source, params.samples, params.seq_len, params.seed)
    record = write_calibration(out, tensors, info)
    return {**record, "seconds": round(time.perf_counter() - started, 3)}
