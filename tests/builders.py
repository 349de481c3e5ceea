"""Tiny models and data files shared by test modules in different folders (CPU, seconds).

Model builders for every covered family live in `moeprune.testing` (tests, testbed and bench use them);
these add what a stage needs beside a model: a word-level tokenizer, GSM8K-schema problems, a tiny V-MoE
with its image processor and an ImageFolder tree.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

WORDS = (
    "<pad> <s> </s> <unk> 0 1 2 3 4 5 6 7 8 9 Question Answer : . , ? # + - = the a of to and is has how "
    "many more each in he she it they apples pencils books coins boxes bags buys sells gives eats left total "
    "then Tom Anna Sam Mia cat dog red blue green count copy words"
).split()


def tiny_tokenizer():
    """A word-level fast tokenizer over WORDS (ids below the tiny models' vocabulary of 128)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation(),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def save_tiny_lm(out: Path, **overrides) -> Path:
    """A tiny random Mixtral (context 128 tokens) with the word-level tokenizer, saved to `out`."""
    from moeprune.testing import tiny_moe_model

    tiny_moe_model("mixtral", **overrides).save_pretrained(out)
    tiny_tokenizer().save_pretrained(out)
    return out


def write_gsm8k_jsonl(path: Path, count: int = 20, seed: int = 0) -> Path:
    """`count` GSM8K-schema problems."""
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        question = f"Tom has {a} apples and buys {b} more. How many apples?"
        lines.append(json.dumps({"question": question, "answer": f"{a} + {b} = {a + b}.\n#### {a + b}"}))
    path.write_text("\n".join(lines) + "\n")
    return path


def save_tiny_vision(root: Path) -> tuple[Path, Path]:
    """A tiny V-MoE with a grayscale image processor, and an ImageFolder tree of 2 classes x 4 images."""
    from transformers import ViTImageProcessorPil

    from moeprune.arch.vmoe import VMoEConfig, VMoEForImageClassification

    config = VMoEConfig(
        image_size=8,
        patch_size=4,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=16,
        num_local_experts=4,
        num_labels=2,
        id2label={0: "cat", 1: "dog"},
        label2id={"cat": 0, "dog": 1},
    )
    torch.manual_seed(0)
    VMoEForImageClassification(config).save_pretrained(root / "model")
    processor = ViTImageProcessorPil(size={"height": 8, "width": 8}, image_mean=[0.5], image_std=[0.5])
    processor.save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / "images" / cls).mkdir(parents=True)
        for n in range(4):
            pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(root / "images" / cls / f"{n}.png")
    return root / "model", root / "images"


def unstructured_params(method: str, **options):
    """prune-unstructured's params model from its flags in Python spelling (`total_sparsity=0.6`), as the CLI
    builds it (a bad value raises the CLI's one-line MoepruneError)."""
    from moeprune.params import UnstructuredSection, from_flags

    flags = {key.replace("_", "-"): value for key, value in options.items()}
    return from_flags(UnstructuredSection, method=method, options=flags)


def evaluate_params(task: str, limit: int | None = None, batch_size: int = 8):
    """evaluate's params model with the CLI's defaults (every example, batches of 8)."""
    from moeprune.params import EvaluateSection

    return EvaluateSection(task=task, limit=limit, batch_size=batch_size)
