"""What runs the `--task` strings of `moeprune evaluate` (the tasks are listed in `moeprune.catalog.tasks`).

Several tasks may be given at once, comma-separated (`gsm8k-local:test.jsonl,perplexity:test.jsonl`).
A new task is declared, torch-free, in `moeprune.catalog.tasks` (metric prefix, argument, streams) and
implemented here by one function decorated with `@register_task("name")`, called as
`fn(model_dir, argument, limit, batch_size, device, include_path=..., backend=..., streaming=...)`
(the first two options are lm-eval's; a task declared with `streams=True` reads the model layer by layer
when `streaming` is set, every other task needs the whole model and refuses one above the memory budget).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from moeprune.catalog import Entry
from moeprune.catalog.tasks import TASKS, usage
from moeprune.errors import MoepruneError

Evaluator = Callable[..., dict[str, Any]]
Checker = Callable[..., None]
Task = Entry  # a declared task (`moeprune.catalog.tasks`): name, facts, and the attached `evaluate` / `check`


def register_task(name: str, part: str = "evaluate") -> Callable[[Evaluator], Evaluator]:
    """Attach `fn` as the `evaluate` (or `check`) of the task `name` declared in `moeprune.catalog.tasks`."""
    return TASKS.implements(name, part)


@register_task("gsm8k")
def _gsm8k(
    model_dir: Path, path: Path | None, limit: int | None, batch_size: int, device: str, **_: Any
) -> dict[str, Any]:
    from moeprune.evaluation.gsm8k import evaluate_gsm8k

    return evaluate_gsm8k(model_dir, None, limit, batch_size, device=device)


@register_task("gsm8k-local")
def _gsm8k_local(
    model_dir: Path, path: Path | None, limit: int | None, batch_size: int, device: str, **_: Any
) -> dict[str, Any]:
    from moeprune.evaluation.gsm8k import evaluate_gsm8k

    return evaluate_gsm8k(model_dir, path, limit, batch_size, device=device)


@register_task("perplexity")
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


@register_task("imagenet")
def _imagenet(
    model_dir: Path, path: Path | None, limit: int | None, batch_size: int, device: str, **_: Any
) -> dict[str, Any]:
    from moeprune.evaluation.imagenet import evaluate_imagenet

    return evaluate_imagenet(model_dir, path, limit, batch_size, device=device)


@register_task("lm-eval", "check")
def _check_lm_eval(argument: str, include_path: Path | None = None, backend: str = "hf") -> None:
    from moeprune.evaluation.lm_eval_tasks import check_backend, check_tasks, task_names

    check_backend(backend)
    check_tasks(task_names(argument), include_path)


@register_task("lm-eval")
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
    return ", ".join(usage(task) for task in TASKS.entries())


def parse_task(spec: str) -> tuple[Task, Path | str | None]:
    """The task and its argument for one `--task` string; a path argument must exist.

    Raises:
        MoepruneError: unknown task (the message lists the valid ones), missing or unexpected argument,
            or a path that does not exist.
    """
    name, _, argument = spec.strip().partition(":")
    if name not in TASKS:
        raise MoepruneError(f"unknown evaluation task {spec!r}; valid tasks: {valid_tasks()}")
    task = TASKS.get(name)
    if task.argument is None:
        if argument:
            raise MoepruneError(f"task {name!r} takes no argument, got {spec!r}; write it as `{name}`")
        return task, None
    if not argument:
        raise MoepruneError(f"task {name!r} needs a {task.argument}; write it as `{usage(task)}`")
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
        check = task.parts.get("check")
        if check is not None:
            check(argument, **options)
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
