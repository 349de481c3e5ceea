"""Seeded, deterministic CPU training for the testbed language models.

Two kinds of data, both tokenized once up front:
- pretraining: each kind of text as one token stream cut into fixed-length rows (mixed per batch by
  `testbed.corpus`), loss on every token;
- fine-tuning: packed few-shot sequences in exactly the text format lm-eval's gsm8k task feeds
  ("Question: q\\nAnswer: a" joined by a blank line), loss only on the answers and on the
  "\\n\\nQuestion:" that follows each one, so the model answers the last question of a 5-shot prompt
  and then starts the next question (lm-eval's stop string).
The whole string is tokenized at once (as lm-eval does) and the loss mask comes from character offsets.
Every row starts with `<s>`, as lm-eval's HF wrapper adds it with this tokenizer.
"""

from __future__ import annotations

import math
import random
import time

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from moeprune.testbed.presets import TrainConfig

IGNORE = -100
QUESTION_PREFIX = "Question:"
FEWSHOT_DELIMITER = "\n\n"


def make_deterministic(seed: int, threads: int = 2) -> None:
    """Seed Python and torch, fix the thread count, and ask torch for deterministic kernels."""
    random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def format_example(record: dict) -> tuple[str, str]:
    """lm-eval gsm8k's prompt ("Question: q\\nAnswer:") and target (" a") for one record."""
    return f"Question: {record['question']}\nAnswer:", f" {record['answer']}"


def pack_fewshot(records: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Join records as a few-shot prompt, then the next "Question:"; return text and loss spans.

    Each loss span covers an answer, the blank line after it and the following "Question:".
    """
    text, spans = "", []
    follow = len(FEWSHOT_DELIMITER + QUESTION_PREFIX)
    for index, record in enumerate(records):
        prompt, target = format_example(record)
        text += (FEWSHOT_DELIMITER if index else "") + prompt
        spans.append((len(text), len(text) + len(target) + follow))
        text += target
    return text + FEWSHOT_DELIMITER + QUESTION_PREFIX, spans


def encode_with_mask(
    tokenizer: PreTrainedTokenizerBase, text: str, spans: list[tuple[int, int]], max_len: int
) -> tuple[list[int], list[int]]:
    """Token ids of `text` (with `<s>`) and labels that keep only tokens starting inside `spans`."""
    encoding = tokenizer(text, return_offsets_mapping=True)
    ids, labels = encoding["input_ids"], []
    for token_id, (start, end) in zip(ids, encoding["offset_mapping"], strict=True):
        inside = end > start and any(lo <= start < hi for lo, hi in spans)
        labels.append(token_id if inside else IGNORE)
    return ids[:max_len], labels[:max_len]


def finetune_rows(
    tokenizer: PreTrainedTokenizerBase, records: list[dict], n_rows: int, shots: int, max_len: int, seed: int
) -> list[tuple[list[int], list[int]]]:
    """`n_rows` packed rows of `shots` random records each (ids, labels); repeats only if too few records."""
    rng = random.Random(seed)
    rows = []
    for _ in tqdm(range(n_rows), desc="packing fine-tuning rows", disable=None, leave=False):
        picked = rng.sample(records, shots) if len(records) >= shots else rng.choices(records, k=shots)
        text, spans = pack_fewshot(picked)
        rows.append(encode_with_mask(tokenizer, text, spans, max_len))
    return rows


def pretrain_rows(tokenizer: PreTrainedTokenizerBase, documents: list[str], seq_len: int) -> torch.Tensor:
    """The documents as one stream (blank-line separated) cut into `<s>`-prefixed rows `[N, seq_len]`."""
    stream = tokenizer(FEWSHOT_DELIMITER.join(documents), add_special_tokens=False, verbose=False)["input_ids"]
    width = seq_len - 1
    n_rows = len(stream) // width
    body = torch.tensor(stream[: n_rows * width], dtype=torch.long).view(n_rows, width)
    bos = torch.full((n_rows, 1), tokenizer.bos_token_id, dtype=torch.long)
    return torch.cat([bos, body], dim=1)


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad (ids, labels) rows into a batch with an attention mask."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (ids, row_labels) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(row_labels)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def batches_from_rows(
    rows: list[tuple[list[int], list[int]]], cfg: TrainConfig, pad_id: int
) -> list[dict[str, torch.Tensor]]:
    """`cfg.steps` consecutive batches of packed rows (the rows are already in random order)."""
    return [
        collate([rows[(step * cfg.batch_size + i) % len(rows)] for i in range(cfg.batch_size)], pad_id)
        for step in range(cfg.steps)
    ]


def _schedule(cfg: TrainConfig):
    """Linear warm-up then cosine decay to 10% of the peak learning rate."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def train(model: PreTrainedModel, batches: list[dict[str, torch.Tensor]], cfg: TrainConfig) -> dict:
    """Train `model` in place on `batches` with AdamW; the model adds its router aux loss if `cfg.balance`.

    Args:
        model: a causal MoE LM; `config.router_aux_loss_coef` weighs the load-balancing loss.
        batches: one batch per step (`input_ids`, `labels` with -100 for ignored, `attention_mask`).
        cfg: optimiser settings; `cfg.seed` seeds dropout-free but order-dependent parts.

    Returns:
        `{"steps", "seconds", "cpu_seconds", "tokens", "losses"}` with the loss logged every 10 steps
        (`cpu_seconds` is process CPU time: on a shared machine wall time overstates the cost).
    """
    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg))
    model.train()
    losses, tokens, start, cpu_start = [], 0, time.perf_counter(), time.process_time()
    progress = tqdm(batches, desc=cfg.desc, disable=None)
    for step, batch in enumerate(progress):
        out = model(**batch, output_router_logits=cfg.balance)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        tokens += int(batch["attention_mask"].sum())
        if step % 10 == 0 or step == len(batches) - 1:
            loss = out.loss.item()
            losses.append([step, round(loss, 4)])
            progress.set_postfix(loss=f"{loss:.3f}")
    model.eval()
    return {
        "steps": len(batches),
        "seconds": round(time.perf_counter() - start, 2),
        "cpu_seconds": round(time.process_time() - cpu_start, 2),
        "tokens": tokens,
        "losses": losses,
    }
