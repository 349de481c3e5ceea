"""Perplexity of a causal LM on a text file, in non-overlapping windows.

The file (plain text, or JSONL with `text` or GSM8K `question`/`answer` fields) is tokenized with the
model's tokenizer, documents joined with EOS, and cut into consecutive windows of `seq_len` tokens;
a shorter tail is scored as a last window. Within a window every token but the first is predicted
from the ones before it (no context crosses a window border), so

    perplexity = exp( sum of -log p(token | window prefix) / number of predicted tokens )

which equals `exp(model(ids, labels=ids).loss)` for a single window.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from moeprune.checkpoint.budget import memory_budget_bytes
from moeprune.checkpoint.source import ModelSource, as_source, open_model
from moeprune.devices import resolve_device
from moeprune.errors import MoepruneError

DEFAULT_MAX_SEQ_LEN = 2048


def split_windows(ids: list[int], seq_len: int) -> list[torch.Tensor]:
    """Consecutive windows of `seq_len` tokens; a tail of 2+ tokens becomes a last, shorter window."""
    tokens = torch.tensor(ids, dtype=torch.int64)
    windows = list(torch.split(tokens, seq_len))
    if windows and len(windows[-1]) < 2:
        windows.pop()
    return windows


def window_nll(logits: torch.Tensor, batch: torch.Tensor) -> tuple[float, int]:
    """Summed negative log-likelihood (float64) of the predicted tokens of `batch [B, L]`, and their count."""
    total = 0.0
    for row in range(batch.shape[0]):  # one row at a time keeps the float32 copy of the logits small
        predicted = logits[row, :-1].float()
        total += F.cross_entropy(predicted, batch[row, 1:], reduction="sum").double().item()
    return total, batch.shape[0] * (batch.shape[1] - 1)


def window_length(model: torch.nn.Module, seq_len: int | None) -> int:
    """`seq_len` if the model's context holds it; by default the context, capped at DEFAULT_MAX_SEQ_LEN."""
    context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if seq_len is None:
        return min(int(context or DEFAULT_MAX_SEQ_LEN), DEFAULT_MAX_SEQ_LEN)
    if context is not None and seq_len > context:
        raise MoepruneError(f"seq_len {seq_len} exceeds the model's context of {context} tokens; use at most {context}")
    return seq_len


def perplexity_of_windows(
    model: torch.nn.Module | ModelSource, windows: list[torch.Tensor], batch_size: int
) -> tuple[float, int]:
    """(perplexity, number of predicted tokens) over windows; equal-length windows are batched.

    A streamed source runs a chunk of batches through the decoder layer by layer, then the model's head;
    a chunk's hidden states take at most a quarter of the memory budget.
    """
    source = as_source(model)
    full = [w for w in windows if len(w) == len(windows[0])]
    batches = [torch.stack(full[i : i + batch_size]) for i in range(0, len(full), batch_size)]
    batches += [w.unsqueeze(0) for w in windows[len(full) :]]
    nll, count = 0.0, 0
    for chunk in _chunks(batches, source.model.config.get_text_config().hidden_size):
        inputs = [{"input_ids": batch} for batch in chunk]
        for batch, logits in zip(chunk, source.logits(inputs, "perplexity"), strict=True):
            batch_nll, batch_count = window_nll(logits, batch.to(logits.device))
            nll, count = nll + batch_nll, count + batch_count
    return math.exp(nll / count), count


def _chunks(batches: list[torch.Tensor], hidden_size: int) -> list[list[torch.Tensor]]:
    """Consecutive groups of batches whose float32 hidden states take at most a quarter of the budget."""
    limit = max(1, memory_budget_bytes() // 4 // (4 * hidden_size))  # tokens per chunk
    chunks: list[list[torch.Tensor]] = [[]]
    tokens = 0
    for batch in batches:
        if chunks[-1] and tokens + batch.numel() > limit:
            chunks.append([])
            tokens = 0
        chunks[-1].append(batch)
        tokens += batch.numel()
    return chunks


def evaluate_perplexity(
    model_dir: str | Path,
    path: str | Path,
    limit: int | None = None,
    batch_size: int = 8,
    seq_len: int | None = None,
    device: str = "auto",
    streaming: bool = False,
) -> dict[str, float | int]:
    """Perplexity of the causal LM in `model_dir` on the text in `path`.

    Args:
        model_dir: A causal LM directory with its tokenizer.
        path: Plain text, or JSONL with a `text` field (or GSM8K `question` + `answer`) per line.
        limit: Score at most this many windows (None: all).
        batch_size: Windows per forward pass.
        seq_len: Tokens per window; default the model's context (at most 2048).
        device: see `moeprune.devices.resolve_device`.
        streaming: read the model one decoder layer at a time (automatic above the memory budget).

    Returns:
        `{"perplexity": float, "perplexity.tokens": number of predicted tokens}`.
    """
    from moeprune.data.calibration import load_tokenizer, text_documents, tokenize_documents

    if batch_size <= 0 or (limit is not None and limit <= 0) or (seq_len is not None and seq_len < 2):
        raise MoepruneError(
            f"perplexity needs batch_size > 0, limit > 0, seq_len >= 2; got {batch_size}, {limit}, {seq_len}"
        )
    documents = text_documents(path, fields=("text", "answer"))
    source = open_model(model_dir, streaming, resolve_device(device))
    model = source.model
    if is_image_classifier(model):
        raise MoepruneError(f"{model_dir} is an image classifier; perplexity needs a causal LM")
    ids = tokenize_documents(load_tokenizer(model_dir), documents)
    windows = split_windows(ids, window_length(model, seq_len))[:limit]
    if not windows:
        raise MoepruneError(f"{path} gives fewer than 2 tokens; perplexity needs more text")
    value, count = perplexity_of_windows(source, windows, batch_size)
    return {"perplexity": value, "perplexity.tokens": count}


def is_image_classifier(model: torch.nn.Module) -> bool:
    """True for image classification models (they have no perplexity)."""
    return type(model).__name__.endswith("ForImageClassification")
