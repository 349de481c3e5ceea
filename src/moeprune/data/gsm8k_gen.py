"""Grade-school arithmetic word problems in GSM8K's exact schema.

Each problem is `{"question": str, "answer": "<worked steps>\\n#### <integer>"}`, like
`openai/gsm8k`: the steps are short sentences with the arithmetic written out ("3 + 4 = 7"), the last
line is `#### N`. Problems use one to three operations on small operands (multi-digit products are
where a small model errs most), varied names, objects and phrasings, and are fully determined by the
seed. `write_splits` writes disjoint `train.jsonl` / `test.jsonl` (no question appears in both).

GSM8K's `<<3+4=7>>` calculator annotations are optional (`calc_annotations=True`); they are off by
default because they lengthen every answer without telling the model anything new.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from moeprune.errors import MoepruneError
from moeprune.outputs import atomic_file

HE_NAMES = [
    "Tom",
    "Ben",
    "Sam",
    "Leo",
    "Max",
    "Omar",
    "Ivan",
    "Raj",
    "Carlos",
    "Jack",
    "Noah",
    "Liam",
    "Hugo",
    "Kenji",
    "Felix",
    "Ali",
]
SHE_NAMES = [
    "Anna",
    "Mia",
    "Lucy",
    "Emma",
    "Sara",
    "Nina",
    "Julia",
    "Aisha",
    "Maria",
    "Lily",
    "Zoe",
    "Grace",
    "Mei",
    "Olga",
    "Rosa",
    "Ella",
]
OBJECTS = [
    "apples",
    "pencils",
    "marbles",
    "stickers",
    "books",
    "cookies",
    "shells",
    "cards",
    "coins",
    "stamps",
    "oranges",
    "balloons",
    "toy cars",
    "flowers",
    "candies",
    "buttons",
    "eggs",
    "rocks",
    "crayons",
    "cupcakes",
]
ITEMS = ["notebooks", "pens", "toys", "tickets", "sandwiches", "bracelets", "plants", "muffins", "kites", "puzzles"]
CONTAINERS = ["boxes", "bags", "jars", "baskets", "packs"]
PLACES = ["the market", "the store", "the fair", "the shop", "school"]
MAX_OPERAND = 10
MAX_VALUE = 60
MAX_START = 12


@dataclass
class Step:
    """One arithmetic step `left op right = result`, with the sentence that states it."""

    left: int
    op: str
    right: int
    result: int
    sentence: str


@dataclass
class Problem:
    """A generated problem: its question, its worked steps and its integer answer."""

    question: str
    steps: list[Step] = field(default_factory=list)

    @property
    def value(self) -> int:
        """The final answer (the result of the last step)."""
        return self.steps[-1].result

    def answer(self, calc_annotations: bool = False) -> str:
        """The GSM8K-style answer text: one line per step, then `#### N`."""
        lines = [_annotate(step) if calc_annotations else step.sentence for step in self.steps]
        return "\n".join(lines) + f"\n#### {self.value}"

    def to_record(self, calc_annotations: bool = False) -> dict[str, str]:
        """The problem as a GSM8K record."""
        return {"question": self.question, "answer": self.answer(calc_annotations)}


def _annotate(step: Step) -> str:
    """Insert GSM8K's calculator annotation `<<a+b=c>>` before the result in the step's sentence."""
    expr = f"{step.left} {step.op} {step.right} = {step.result}"
    annotated = f"{step.left} {step.op} {step.right} = <<{step.left}{step.op}{step.right}={step.result}>>{step.result}"
    return step.sentence.replace(expr, annotated, 1)


def _apply(left: int, op: str, right: int) -> int:
    """Compute `left op right` for the four operations the generator uses (division is exact)."""
    return {"+": left + right, "-": left - right, "*": left * right, "/": left // right if right else 0}[op]


def _person(rng: random.Random) -> tuple[str, str, str]:
    """A random name with its subject and possessive pronouns."""
    if rng.random() < 0.5:
        return rng.choice(HE_NAMES), "he", "his"
    return rng.choice(SHE_NAMES), "she", "her"


def _other(rng: random.Random, name: str) -> str:
    """A second name different from `name`."""
    while (other := rng.choice(HE_NAMES + SHE_NAMES)) == name:
        pass
    return other


def _step(left: int, op: str, right: int, template: str) -> Step:
    """Build a step whose sentence template contains `{expr}` (the written-out arithmetic)."""
    result = _apply(left, op, right)
    return Step(left, op, right, result, template.format(expr=f"{left} {op} {right} = {result}"))


def _next_op(rng: random.Random, value: int) -> str:
    """Choose an operation that keeps numbers small and non-negative."""
    ops = ["+", "+", "-", "-"] if value > 0 else ["+"]
    if value <= 10:
        ops.append("*")
    if any(value % k == 0 for k in (2, 3, 4, 5)) and value >= 4:
        ops.append("/")
    return rng.choice(ops)


def _story_step(rng: random.Random, value: int, name: str, he: str, his: str, obj: str) -> tuple[str, Step]:
    """One event that changes the quantity `name` holds: its sentence and its worked step."""
    op = _next_op(rng, value)
    other = _other(rng, name)
    cap = he.capitalize()
    if op == "+":
        k = rng.randint(1, MAX_OPERAND)
        text = rng.choice(
            [
                f"{cap} buys {k} more {obj} at {rng.choice(PLACES)}.",
                f"{other} gives {name} {k} {obj}.",
                f"{cap} finds {k} more {obj}.",
                f"Then {he} gets {k} {obj} as a gift.",
            ]
        )
        step = _step(value, "+", k, f"After that, {name} has {{expr}} {obj}.")
    elif op == "-":
        k = rng.randint(1, min(value, MAX_OPERAND)) if value > 0 else 0
        text = rng.choice(
            [
                f"{cap} gives {k} {obj} to {other}.",
                f"{cap} loses {k} {obj}.",
                f"{cap} sells {k} of {his} {obj}.",
                f"Then {he} uses {k} {obj}.",
            ]
        )
        step = _step(value, "-", k, f"Then {name} has {{expr}} {obj} left.")
    elif op == "*":
        k = rng.choice([2, 3]) if value > 5 else rng.randint(2, 4)
        word = {2: "doubles", 3: "triples"}.get(k)
        text = (
            f"The number of {obj} {name} has {word}."
            if word and rng.random() < 0.5
            else f"Now {name} has {k} times as many {obj} as before."
        )
        step = _step(value, "*", k, f"So {name} has {{expr}} {obj}.")
    else:
        k = rng.choice([d for d in (2, 3, 4, 5) if value % d == 0])
        text = f"{cap} splits {his} {obj} into {k} equal groups and keeps one group."
        step = _step(value, "/", k, f"One group has {{expr}} {obj}.")
    return text, step


def story_problem(rng: random.Random, n_ops: int) -> Problem:
    """A quantity held by one person changes `n_ops` times (the first may be a product of boxes)."""
    name, he, his = _person(rng)
    obj = rng.choice(OBJECTS)
    steps: list[Step] = []
    if n_ops >= 2 and rng.random() < 0.3:
        boxes, per_box = rng.randint(2, 5), rng.randint(2, MAX_OPERAND)
        container = rng.choice(CONTAINERS)
        sentences = [f"{name} has {boxes} {container} of {obj}. Each of them holds {per_box} {obj}."]
        steps.append(_step(boxes, "*", per_box, f"{name} has {{expr}} {obj}."))
        value, n_ops = steps[-1].result, n_ops - 1
    else:
        value = rng.randint(2, MAX_START)
        sentences = [
            rng.choice(
                [
                    f"{name} has {value} {obj}.",
                    f"{name} had {value} {obj} in {his} bag.",
                    f"At first, {name} owns {value} {obj}.",
                ]
            )
        ]
    for _ in range(n_ops):
        text, step = _story_step(rng, value, name, he, his, obj)
        sentences.append(text)
        steps.append(step)
        value = step.result
    sentences.append(
        rng.choice(
            [
                f"How many {obj} does {name} have now?",
                f"How many {obj} does {name} have in the end?",
                f"How many {obj} does {he} have at the end?",
            ]
        )
    )
    return Problem(" ".join(sentences), steps)


def compare_problem(rng: random.Random, n_ops: int) -> Problem:
    """Two people's quantities compared ("more than"), then a total or a difference."""
    (a_name, _, _), obj = _person(rng), rng.choice(OBJECTS)
    b_name = _other(rng, a_name)
    a, k = rng.randint(2, MAX_START), rng.randint(1, MAX_OPERAND)
    if n_ops == 1:
        b = rng.randint(1, a)
        question = (
            f"{a_name} has {a} {obj} and {b_name} has {b} {obj}. How many more {obj} does {a_name} have than {b_name}?"
        )
        return Problem(question, [_step(a, "-", b, f"{a_name} has {{expr}} more {obj} than {b_name}.")])
    steps = [_step(a, "+", k, f"{b_name} has {{expr}} {obj}.")]
    question = f"{a_name} has {a} {obj}. {b_name} has {k} more {obj} than {a_name}."
    if n_ops == 3:
        m = rng.randint(1, MAX_OPERAND)
        question += f" {b_name} then gives away {m} {obj}."
        steps.append(_step(steps[-1].result, "-", m, f"After giving some away, {b_name} has {{expr}} {obj}."))
    question += f" How many {obj} do they have together?"
    steps.append(_step(a, "+", steps[-1].result, f"Together they have {{expr}} {obj}."))
    return Problem(question, steps)


def shopping_problem(rng: random.Random, n_ops: int) -> Problem:
    """Buying items at a unit price, optionally with change from a bill or a second purchase."""
    name, he, _ = _person(rng)
    item, count, price = rng.choice(ITEMS), rng.randint(2, 5), rng.randint(1, MAX_OPERAND)
    question = f"{name} buys {count} {item} that cost ${price} each."
    steps = [_step(count, "*", price, f"The {item} cost {{expr}} dollars.")]
    if n_ops >= 2:
        extra = rng.randint(1, MAX_OPERAND)
        question += f" {he.capitalize()} also pays ${extra} for a bag."
        steps.append(_step(steps[-1].result, "+", extra, f"In total {he} spends {{expr}} dollars."))
    if n_ops >= 3:
        bill = 100 if steps[-1].result > 50 else 50
        question += f" {he.capitalize()} pays with a ${bill} bill. How much change does {he} get?"
        steps.append(_step(bill, "-", steps[-1].result, "The change is {expr} dollars."))
    else:
        question += f" How many dollars does {he} spend?"
    return Problem(question, steps)


BUILDERS = (story_problem, story_problem, compare_problem, shopping_problem)


def generate_problem(rng: random.Random) -> Problem:
    """One random problem with one to three operations."""
    n_ops = rng.choice([1, 2, 2, 3])
    problem = rng.choice(BUILDERS)(rng, n_ops)
    if any(step.result < 0 or step.result > MAX_VALUE for step in problem.steps):
        return generate_problem(rng)
    return problem


def generate_problems(n: int, seed: int) -> list[Problem]:
    """`n` problems with pairwise different questions, determined by `seed`."""
    rng, seen, problems = random.Random(seed), set(), []
    for _ in range(50 * n + 1000):
        if len(problems) == n:
            return problems
        problem = generate_problem(rng)
        if problem.question not in seen:
            seen.add(problem.question)
            problems.append(problem)
    raise MoepruneError(f"could only generate {len(problems)} distinct problems out of {n}; ask for fewer")


def write_jsonl(path: Path, records: list[dict]) -> None:
    """Write records as JSON lines, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text("".join(json.dumps(record) + "\n" for record in records))


def write_splits(
    out_dir: Path, n_train: int, n_test: int, seed: int, calc_annotations: bool = False
) -> dict[str, Path]:
    """Write disjoint `train.jsonl` and `test.jsonl` GSM8K-schema splits into `out_dir`.

    Args:
        out_dir: folder to write into (created if missing).
        n_train: number of training problems.
        n_test: number of held-out problems (no question is shared with train).
        seed: random seed; the same seed gives the same files.
        calc_annotations: write GSM8K's `<<a+b=c>>` calculator annotations in the steps.

    Returns:
        The paths written, by split name.
    """
    if n_train < 1 or n_test < 1:
        raise MoepruneError(f"n_train and n_test must be positive (got {n_train}, {n_test})")
    problems = generate_problems(n_train + n_test, seed)
    records = [problem.to_record(calc_annotations) for problem in problems]
    out_dir = Path(out_dir)
    paths = {"train": out_dir / "train.jsonl", "test": out_dir / "test.jsonl"}
    write_jsonl(paths["test"], records[:n_test])
    write_jsonl(paths["train"], records[n_test:])
    return paths


def read_jsonl(path: Path) -> list[dict]:
    """Read a GSM8K-schema JSONL file, checking every line has `question` and `answer`."""
    path = Path(path)
    if not path.is_file():
        raise MoepruneError(f"{path} does not exist; give a GSM8K-schema JSONL file")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records:
        raise MoepruneError(f"{path} is empty; give a JSONL file with question/answer lines")
    for number, record in enumerate(records, 1):
        if "question" not in record or "answer" not in record:
            raise MoepruneError(f"{path} line {number} lacks 'question' or 'answer'; fix the file")
    return records
