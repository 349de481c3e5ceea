"""The evaluation tasks: names, arguments and facts (torch-free; `evaluation/tasks.py` implements them).

A `--task` string is `name` or `name:ARGUMENT`; several are comma-separated.

Facts:
    metrics: the prefix of the task's metric names (`gsm8k` for `gsm8k.exact_match_strict`); two tasks with
        the same prefix cannot run together.
    argument: what follows the colon (`PATH`, `DIR`, `NAME[+NAME...]`), or None for a task without one.
    is_path: the argument is a path that must exist (`lm-eval:NAME` is not).
    streams: the task can read the model one decoder layer at a time (`--streaming`).
"""

from __future__ import annotations

from moeprune.catalog import Entry, Registry

TASKS = Registry(
    "evaluation task", facts={"metrics": "", "argument": None, "is_path": True, "streams": False}, listing="valid tasks"
)

TASKS.declare("gsm8k", "lm-eval's own gsm8k task (the data set in the local cache)", metrics="gsm8k")
TASKS.declare(
    "gsm8k-local",
    "A GSM8K-schema JSONL through lm-eval, with gsm8k's prompt and filters",
    metrics="gsm8k",
    argument="PATH",
)
TASKS.declare(
    "perplexity",
    "Perplexity on plain text or JSONL (`text`, or `question` + `answer`)",
    metrics="perplexity",
    argument="PATH",
    streams=True,
)
TASKS.declare(
    "imagenet", "Top-1 / top-5 accuracy on an ImageFolder tree (`DIR/CLASS/IMAGE`)", metrics="imagenet", argument="DIR"
)
TASKS.declare(
    "lm-eval",
    "lm-eval's own tasks by name; `--include-path DIR` adds task YAMLs",
    metrics="lm-eval",
    argument="NAME[+NAME...]",
    is_path=False,
)


def usage(task: Entry) -> str:
    """How the task is written: `gsm8k`, `perplexity:PATH`."""
    return f"{task.name}:{task.argument}" if task.argument else task.name


def task_prefixes() -> tuple[str, ...]:
    """What params.yaml's `evaluate.task` may be or start with: `gsm8k`, `perplexity:`, ..."""
    return tuple(f"{task.name}:" if task.argument else task.name for task in TASKS.entries())


__all__ = ["TASKS", "task_prefixes", "usage"]
