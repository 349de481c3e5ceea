"""The generated text kinds of the embedded LM testbed's pretraining mixture (word problems aside).

`facts`: counting up and down, copying and reversing word lists, arithmetic facts, comparisons,
sorting, successor facts, and short descriptive sentences about people and objects (the first
testbed's whole corpus). The other kinds (`data.kinds`) bring their own vocabulary: stories, code-like
text, calendars, letter ciphers, translation pairs and word sorting. None of them is a word problem in
GSM8K's question/answer format. Documents are separated by a blank line; everything is determined by
the seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from moeprune.data import kinds
from moeprune.data.gsm8k_gen import HE_NAMES, OBJECTS, SHE_NAMES
from moeprune.outputs import atomic_file

COLORS = ["red", "blue", "green", "yellow", "white", "black", "brown", "pink"]
ANIMALS = ["cat", "dog", "bird", "fish", "horse", "cow", "duck", "frog"]
VERBS = ["likes", "collects", "keeps", "paints", "counts", "sorts", "draws", "hides"]
WORDS = COLORS + ANIMALS + ["tree", "house", "river", "sun", "moon", "road", "door", "cup"]
DOC_SEPARATOR = "\n\n"


def counting(rng: random.Random) -> str:
    """Count up or down between two small numbers."""
    start, length = rng.randint(0, 40), rng.randint(3, 9)
    if rng.random() < 0.5:
        return f"Count from {start} to {start + length}: " + ", ".join(map(str, range(start, start + length + 1))) + "."
    top = start + length
    return f"Count down from {top} to {start}: " + ", ".join(map(str, range(top, start - 1, -1))) + "."


def copying(rng: random.Random) -> str:
    """Repeat or reverse a short list of words."""
    words = rng.choices(WORDS, k=rng.randint(2, 6))
    if rng.random() < 0.5:
        return f"Repeat the words: {' '.join(words)}. Copy: {' '.join(words)}."
    return f"Reverse the words: {' '.join(words)}. Reversed: {' '.join(reversed(words))}."


def arithmetic_fact(rng: random.Random) -> str:
    """One or several arithmetic facts on small numbers."""
    facts = []
    for _ in range(rng.randint(1, 4)):
        a, b = rng.randint(0, 20), rng.randint(0, 10)
        op = rng.choice("+-*")
        if op == "-" and b > a:
            a, b = b, a
        if op == "*":
            a = rng.randint(0, 10)
        facts.append(f"{a} {op} {b} = {eval(f'{a}{op}{b}')}")  # noqa: S307 - digits and one operator only
    return ". ".join(facts) + "."


def comparison(rng: random.Random) -> str:
    """Which of two numbers is larger or smaller."""
    a, b = rng.sample(range(0, 60), 2)
    if rng.random() < 0.5:
        return f"{max(a, b)} is larger than {min(a, b)}."
    return f"{min(a, b)} is smaller than {max(a, b)}, so the smaller number is {min(a, b)}."


def sorting(rng: random.Random) -> str:
    """Sort a few numbers."""
    numbers = rng.sample(range(0, 30), rng.randint(3, 6))
    return f"Sort {' '.join(map(str, numbers))}: {' '.join(map(str, sorted(numbers)))}."


def successor(rng: random.Random) -> str:
    """What comes after or before a number."""
    n = rng.randint(1, 98)
    return rng.choice(
        [
            f"After {n} comes {n + 1}.",
            f"Before {n} comes {n - 1}.",
            f"The number after {n} is {n + 1}, and the number before {n} is {n - 1}.",
        ]
    )


def description(rng: random.Random) -> str:
    """Two or three descriptive sentences about people, their objects and animals."""
    sentences = []
    for _ in range(rng.randint(2, 3)):
        name = rng.choice(HE_NAMES + SHE_NAMES)
        sentences.append(
            rng.choice(
                [
                    f"{name} {rng.choice(VERBS)} {rng.choice(COLORS)} {rng.choice(OBJECTS)}.",
                    f"{name} has a {rng.choice(COLORS)} {rng.choice(ANIMALS)}.",
                    f"There are {rng.randint(2, 12)} {rng.choice(OBJECTS)} on the table near {name}.",
                    f"The {rng.choice(ANIMALS)} sits by the {rng.choice(WORDS)}.",
                ]
            )
        )
    return " ".join(sentences)


FACT_TASKS: tuple[Callable[[random.Random], str], ...] = (
    counting,
    copying,
    arithmetic_fact,
    arithmetic_fact,
    comparison,
    sorting,
    successor,
    description,
    description,
)


def facts(rng: random.Random) -> str:
    """One document of the `facts` kind (one of its tasks, drawn at random)."""
    return rng.choice(FACT_TASKS)(rng)


TEXT_KINDS: dict[str, Callable[[random.Random], str]] = {
    "facts": facts,
    "stories": kinds.story,
    "code": kinds.code,
    "calendar": kinds.calendar,
    "cipher": kinds.cipher,
    "translation": kinds.translation,
    "word_sort": kinds.word_sort,
}


def generate_kind(kind: str, n: int, seed: int) -> list[str]:
    """`n` documents of one kind of `TEXT_KINDS`, determined by `seed`."""
    rng = random.Random(f"{kind}-{seed}")
    return [TEXT_KINDS[kind](rng) for _ in range(n)]


def generate_documents(n: int, seed: int) -> list[str]:
    """`n` documents drawn from every kind of `TEXT_KINDS` in equal shares, determined by `seed`."""
    rng = random.Random(seed)
    generators = list(TEXT_KINDS.values())
    return [rng.choice(generators)(rng) for _ in range(n)]


def write_pretrain_text(path: Path, n: int, seed: int) -> Path:
    """Write `n` mixture documents, separated by blank lines, to `path` (atomically)."""
    with atomic_file(path) as tmp:
        tmp.write_text(DOC_SEPARATOR.join(generate_documents(n, seed)) + "\n")
    return Path(path)
