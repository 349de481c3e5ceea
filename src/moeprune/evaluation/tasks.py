"""The evaluation task registry: `--task` strings of `moeprune evaluate` and what runs them.

    gsm8k               lm-eval's own gsm8k task (needs the data set in the local cache)
    gsm8k-local:PATH    a GSM8K-schema JSONL through lm-eval with gsm8k's prompt and filters
    perplexity:PATH     perplexity on plain text or JSONL (`text`, or `question` + `answer`)
    imagenet:DIR        top-1 / top-5 on an ImageFolder tree DIR/<class>/<image>
    lm-eval:NAME[+NAME] lm-eval's own task(s) by name; `--include-path DIR` adds the task YAMLs under DIR

Several tasks may be given at once, comma-separated (`gsm8k-local:test.jsonl,perplexity:test.jsonl`).
A new task is one function decorated with `@register_task("name", metrics="prefix", argument="PATH")`,
called as `fn(model_dir, argument, limit, batch_size, device, include_path=..., backend=..., streaming=...)`
(the first two options are lm-eval's; a task registered with `streams=True` reads the model layer by layer
when `streaming` is set, every other task needs the whole model and refuses one above the memory budget).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moeprune.errors import MoepruneError

Evaluator = Callable[..., dict[str, Any]]
Checker = Callable[..., None]


@dataclass(frozen=True)
class Task:
    """One evaluation task.

    Attributes:
        name: The name before the colon (`gsm8k-local`).
        argument: What follows the colon (`PATH`, `DIR`, `NAME`), or None for a task without one.
        evaluate: `evaluate(model_dir, argument, limit, batch_size, device, **options) -> flat metrics`.
        metrics: The prefix of its metric names (`gsm8k` for `gsm8k.exact_match_strict`); two tasks
            with the same prefix cannot run together.
        is_path: whether the argument is a path that must exist (`lm-eval:NAME` is not).
        check: `check(argument, include_path=..., backend=...)`, run before any model is loaded.
        streams: whether the task can read the model one decoder layer at a time (perplexity).
    """

    name: str
    argument: str | None
    evaluate: Evaluator
    metrics: str
    is_path: bool = True
    check: Checker | None = None
    streams: bool = False

    @property
    def usage(self) -> str:
        return f"{self.name}:{self.argument}" if self.argument else self.name


TASKS: dict[str, Task] = {}


def register_task(
    name: str,
    metrics: str,
    argument: str | None = None,
    is_path: bool = True,
    check: Checker | None = None,
    streams: bool = False,
) -> Callable[[Evaluator], Evaluator]:
    """Register `fn(model_dir, argument, limit, batch_size, device, **options)` as task `name`."""

    def decorator(fn: Evaluator) -> Evaluator:
        TASKS[name] = Task(name, argument, fn, metrics, is_path, check, streams)
        return fn

    return decorator


@register_task("gsm8k", metrics="gsm8k")
def _gsm8k(
    model_dir: Path, path: Path | None, limit: int | None, batch_size: int, device: str, **_: Any
) -> dict[str, Any]:
    from moeprune.evaluation.gsm8k import evaluate_gsm8k

    return evaluate_gsm8k(model_dir, None, limit, batch_size, device=device)


@register_task("gsm8k-local", metrics="gsm8k", argument="PATH")
def _gsm8k_local(
    model_dir: Path, path: Path | None, limit: int | None, batch_size: int, device: str, **_: Any
) -> dict[str, Any]:
    from moeprune.evaluation.gsm8k import evaluate_gsm8k

    return evaluate_gsm8k(model_dir, path, limit, batch_size, device=device)


@register_task("perplexity", metrics="perplexity", argument="PATH", streams=True)
def _perplexity(
    model_dir: Path,
    path: Path | None,
    limit: int | None,
    batch_size: int,
    device: str,
    streaming: bool = False,
    **_: Any,
) -> dict[str, Any]:
    from moeprune.evaluation.perplexity import evaluate_perplexity

    return evaluate_perplexity(model_dir, path, limit, batch_size, device=device, streaming=streaming)


@register_task("imagenet", metrics="imagenet", argument="DIR")
def _imagenet(
    model_dir: Path, path: Path | None, limit: int | None, batch_size: int, device: str, **_: Any
) -> dict[str, Any]:
    from moeprune.evaluation.imagenet import evaluate_imagenet

    return evaluate_imagenet(model_dir, path, limit, batch_size, device=device)


def _check_lm_eval(argument: str, include_path: Path | None = None, backend: str = "hf") -> None:
    from moeprune.evaluation.lm_eval_tasks import check_backend, check_tasks, task_names

    check_backend(backend)
    check_tasks(task_names(argument), include_path)


@register_task("lm-eval", metrics="lm-eval", argument="NAME[+NAME...]", is_path=False, check=_check_lm_eval)
def _lm_eval(
    model_dir: Path,
    names: str,
    limit: int | None,
    batch_size: int,
    device: str,
    include_path: Path | None = None,
    backend: str = "hf",
    **_: Any,
) -> dict:
    from moeprune.evaluation.lm_eval_tasks import evaluate_lm_eval, task_names

    return evaluate_lm_eval(
        model_dir, task_names(names), limit, batch_size, device, include_path=include_path, backend=backend
    )


def valid_tasks() -> str:
    """The task forms, for error messages: `gsm8k, gsm8k-local:PATH, ...`."""
    return ", ".join(task.usage for task in TASKS.values())


def parse_task(spec: str) -> tuple[Task, Path | str | None]:
    """The task and its argument for one `--task` string; a path argument must exist.

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
    if not task.is_path:
        return task, argument
    path = Path(argument)
    if not path.exists():
        raise MoepruneError(f"{task.argument} {path} of task {spec!r} does not exist; pass an existing one")
    return task, path


def parse_tasks(specs: str) -> list[tuple[Task, Path | str | None]]:
    """Every task of a comma-separated `--task` string, each validated; a task name may appear once."""
    parsed = [parse_task(spec) for spec in specs.split(",") if spec.strip()]
    if not parsed:
        raise MoepruneError(f"no evaluation task given; valid tasks: {valid_tasks()}")
    prefixes = [task.metrics for task, _ in parsed]
    repeated = sorted({prefix for prefix in prefixes if prefixes.count(prefix) > 1})
    if "lm-eval" in repeated:
        raise MoepruneError(f"{specs!r} gives lm-eval: twice; list all lm-eval tasks in one `lm-eval:A+B`")
    if repeated:
        raise MoepruneError(
            f"two tasks in {specs!r} both write the '{repeated[0]}.*' metrics; evaluate them in separate runs"
        )
    return parsed


def check_tasks(specs: str, **options: Any) -> list[tuple[Task, Path | str | None]]:
    """`parse_tasks`, then each task's own check (lm-eval: backend and task names) with `options`."""
    parsed = parse_tasks(specs)
    for task, argument in parsed:
        if task.check is not None:
            task.check(argument, **options)
    return parsed


def run_tasks(
    model_dir: Path, specs: str, limit: int | None, batch_size: int, device: str = "auto", **options: Any
) -> dict[str, Any]:
    """Run every task of a comma-separated `--task` string on one model; merge their flat metrics.

    `options` (`include_path`, `backend`, `streaming`) go to every task; a task that needs the whole
    model is refused first (one line) when the model must be streamed.
    """
    from moeprune.checkpoint.budget import check_fits_whole

    parsed = parse_tasks(specs)
    for task, _ in parsed:
        if not task.streams:
            check_fits_whole(model_dir, bool(options.get("streaming")), f"task {task.name!r}", device)
    metrics: dict[str, Any] = {}
    for task, argument in parsed:
        metrics.update(task.evaluate(Path(model_dir), argument, limit, batch_size, device, **options))
    return metrics
