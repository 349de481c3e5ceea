"""The LM testbed's pretraining corpus: several kinds of text, tokenized per kind, mixed in every batch.

Kinds are the generated text kinds of `data.text_mix.TEXT_KINDS` plus `word_problems` (the train
split in lm-eval's `Question: ...\\nAnswer: ...` format). Each kind is one token stream cut into
`<s>`-prefixed rows, so a row holds one kind only, and every pretraining batch draws a fixed number of
rows from every kind: the load-balancing loss then sees all kinds at once, as it does in the large
mixed batches of a released model's pretraining, and experts are free to specialise by kind.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from moeprune.data.text_mix import DOC_SEPARATOR, TEXT_KINDS, generate_kind
from moeprune.testbed.train import TrainConfig, format_example, pretrain_rows

WORD_PROBLEMS = "word_problems"
KIND_NAMES = (WORD_PROBLEMS, *TEXT_KINDS)


@dataclass
class Corpus:
    """Documents per kind: `train` for pretraining, `heldout` for perplexity and routing diagnostics."""

    train: dict[str, list[str]]
    heldout: dict[str, list[str]]

    def all_documents(self) -> list[str]:
        """Every training document of every kind (the tokenizer's corpus)."""
        return [doc for docs in self.train.values() for doc in docs]


def word_problem_document(record: dict) -> str:
    """A word problem as lm-eval's gsm8k prompt and target, one document."""
    prompt, target = format_example(record)
    return prompt + target


def build_corpus(train_records: list[dict], heldout_records: list[dict], docs_per_kind: int, seed: int) -> Corpus:
    """Training and held-out documents of every kind, determined by `seed`.

    Word problems come from `train_records` (training) and `heldout_records` (held out); the text
    kinds draw `docs_per_kind` training documents and a tenth as many held-out ones from other seeds.
    """
    n_heldout = max(20, docs_per_kind // 10)
    train = {WORD_PROBLEMS: [word_problem_document(r) for r in train_records]}
    heldout = {WORD_PROBLEMS: [word_problem_document(r) for r in heldout_records]}
    for kind in TEXT_KINDS:
        train[kind] = generate_kind(kind, docs_per_kind, seed)
        heldout[kind] = generate_kind(kind, n_heldout, seed + 1_000_003)
    return Corpus(train=train, heldout=heldout)


def rows_by_kind(
    tokenizer: PreTrainedTokenizerBase, documents: dict[str, list[str]], seq_len: int
) -> dict[str, torch.Tensor]:
    """Each kind's documents as `<s>`-prefixed token rows `[N_kind, seq_len]`."""
    return {kind: pretrain_rows(tokenizer, docs, seq_len) for kind, docs in documents.items()}


def mixed_batches(rows: dict[str, torch.Tensor], rows_per_kind: int, cfg: TrainConfig) -> list[dict[str, torch.Tensor]]:
    """`cfg.steps` batches, each with `rows_per_kind` random rows of every kind (labels = inputs)."""
    generator = torch.Generator().manual_seed(cfg.seed)
    batches = []
    for _ in range(cfg.steps):
        picked = torch.cat(
            [
                kind_rows[torch.randint(len(kind_rows), (rows_per_kind,), generator=generator)]
                for kind_rows in rows.values()
            ]
        )
        batches.append({"input_ids": picked, "labels": picked.clone(), "attention_mask": torch.ones_like(picked)})
    return batches


def heldout_text(corpus: Corpus) -> dict[str, str]:
    """Each kind's held-out documents as one text (blank-line separated), as written to data/kinds/."""
    return {kind: DOC_SEPARATOR.join(docs) + "\n" for kind, docs in corpus.heldout.items()}
