"""The evaluation task registry: `--task` strings of `moeprune evaluate` and what runs them.

    gsm8k               lm-eval's own gsm8k task (needs the data set in the local cache)
    gsm8k-local:PATH    a GSM8K-schema JSONL through lm-eval with gsm8k's prompt and filters
    perplexity:PATH     perplexity on plain text or JSONL (`text`, or `question` + `answer`)
    imagenet:DIR        top-1 / top-5 on an ImageFolder tree DIR/<class>/<image>

Several tasks may be given at once, comma-separated (`gsm8k-local:test.jsonl,perplexity:test.jsonl`).
A new task is one function decorated with `@register_task("name", metrics="prefix", argument="PATH")`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moeprune.errors import MoepruneError

Evaluator = Callable[[Path, "Path | None", "int | None", int, str], dict[str, Any]]


@dataclass(frozen=True)
class Task:
    """One evaluation task.

    Attributes:
        name: The name before the colon (`gsm8k-local`).
        argument: What follows the colon (`PATH`, `DIR`), or None for a task without one.
        evaluate: `evaluate(model_dir, path, limit, batch_size, device) -> flat metrics`.
        metrics: The prefix of its metric names (`gsm8k` for `gsm8k.exact_match_strict`); two tasks
            with the same prefix cannot run together.
    """

    name: str
    argument: str | None
    evaluate: Evaluator
    metrics: str

    @property
    def usage(self) -> str:
        return f"{self.name}:{self.argument}" if self.argument else self.name


TASKS: dict[str, Task] = {}


def register_task(name: str, metrics: str, argument: str | None = None) -> Callable[[Evaluator], Evaluator]:
    """Register `fn(model_dir, path, limit, batch_size, device)` as task `name` (`name:ARGUMENT` if it takes one)."""

    def decorator(fn: Evaluator) -> Evaluator:
        TASKS[name] = Task(name, argument, fn, metrics)
        return fn

    return decorator


@register_task("gsm8k", metrics="gsm8k")
def _gsm8k(model_dir: Path, path: Path | None, limit: int | None, batch_size: int, device: str) -> dict[str, Any]:
    from moeprune.evaluation.gsm8k import evaluate_gsm8k

    return evaluate_gsm8k(model_dir, None, limit, batch_size, device=device)


@register_task("gsm8k-local", metrics="gsm8k", argument="PATH")
def _gsm8k_local(model_dir: Path, path: Path | None, limit: int | None, batch_size: int, device: str) -> dict[str, Any]:
    from moeprune.evaluation.gsm8k import evaluate_gsm8k

    return evaluate_gsm8k(model_dir, path, limit, batch_size, device=device)


@register_task("perplexity", metrics="perplexity", argument="PATH")
def _perplexity(model_dir: Path, path: Path | None, limit: int | None, batch_size: int, device: str) -> dict[str, Any]:
    from moeprune.evaluation.perplexity import evaluate_perplexity

    return evaluate_perplexity(model_dir, path, limit, batch_size, device=device)


@register_task("imagenet", metrics="imagenet", argument="DIR")
def _imagenet(model_dir: Path, path: Path | None, limit: int | None, batch_size: int, device: str) -> dict[str, Any]:
    from moeprune.evaluation.imagenet import evaluate_imagenet

    return evaluate_imagenet(model_dir, path, limit, batch_size, device=device)


def valid_tasks() -> str:
    """The task forms, for error messages: `gsm8k, gsm8k-local:PATH, ...`."""
    return ", ".join(task.usage for task in TASKS.values())


def parse_task(spec: str) -> tuple[Task, Path | None]:
    """The task and its path for one `--task` string; the path must exist.

    Raises:
        MoepruneError: unknown task (the message lists the valid ones), missing or unexpected argument,
            or a path that does not exist.
    """
    name, _, argument = spec.strip().partition(":")
    task = TASKS.get(name)
    if task is None:
        raise MoepruneError(f"unknown evaluation task {spec!r}; valid tasks: {valid_tasks()}")
    if task.argument is None:
        if argument:
            raise MoepruneError(f"task {name!r} takes no argument, got {spec!r}; write it as `{name}`")
        return task, None
    if not argument:
        raise MoepruneError(f"task {name!r} needs a {task.argument}; write it as `{task.usage}`")
    path = Path(argument)
    if not path.exists():
        raise MoepruneError(f"{task.argument} {path} of task {spec!r} does not exist; pass an existing one")
    return task, path


def parse_tasks(specs: str) -> list[tuple[Task, Path | None]]:
    """Every task of a comma-separated `--task` string, each validated; a task name may appear once."""
    parsed = [parse_task(spec) for spec in specs.split(",") if spec.strip()]
    if not parsed:
        raise MoepruneError(f"no evaluation task given; valid tasks: {valid_tasks()}")
    prefixes = [task.metrics for task, _ in parsed]
    repeated = sorted({prefix for prefix in prefixes if prefixes.count(prefix) > 1})
    if repeated:
        raise MoepruneError(
            f"two tasks in {specs!r} both write the '{repeated[0]}.*' metrics; evaluate them in separate runs"
        )
    return parsed


def run_tasks(model_dir: Path, specs: str, limit: int | None, batch_size: int, device: str = "auto") -> dict[str, Any]:
    """Run every task of a comma-separated `--task` string on one model; merge their flat metrics."""
    metrics: dict[str, Any] = {}
    for task, path in parse_tasks(specs):
        metrics.update(task.evaluate(Path(model_dir), path, limit, batch_size, device))
    return metrics
