"""Any lm-eval task by name: `--task lm-eval:NAME[+NAME...]`, with `--include-path DIR` for task YAMLs.

The names are looked up in lm-eval's own `TaskManager` (its built-in tasks plus, with `include_path`,
every task YAML under that folder, lm-eval's own mechanism), then run by `simple_evaluate` with
lm-eval's defaults (seeds, few-shot, generation settings) on the `hf` backend, or `vllm` when it is
installed. The nested results become flat metrics `<task>.<metric>`: lm-eval's `acc,none` is
`my_mc.acc`, `exact_match,strict-match` is `my_gen.exact_match.strict-match` (the `none` filter is
dropped, any other filter name kept), plus `<task>.n`, the number of documents evaluated; characters
MLflow refuses in metric names become `_` (`pass@1` -> `pass_at_1`), so every metric can be registered.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path
from typing import Any

from moeprune.env import apply_offline_defaults
from moeprune.errors import MoepruneError

BACKENDS = {"hf": None, "vllm": "vllm"}  # backend -> the package it needs beyond lm-eval
_NOT_IN_MLFLOW_NAMES = re.compile(r"[^\w.\- /:]")  # MLflow metric and tag names allow only these


def check_backend(backend: str) -> str:
    """`backend` must be known and its package importable (one `error:` line otherwise)."""
    if backend not in BACKENDS:
        raise MoepruneError(f"unknown lm-eval backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    package = BACKENDS[backend]
    if package is not None and importlib.util.find_spec(package) is None:
        raise MoepruneError(
            f"lm-eval backend {backend!r} needs the `{package}` package, which is not installed; "
            f"install it (pip install {package}) or use --backend hf"
        )
    return backend


def task_names(argument: str) -> list[str]:
    """The task names of `NAME[+NAME...]`, in order, each once."""
    names = [name.strip() for name in argument.split("+") if name.strip()]
    if not names:
        raise MoepruneError("task 'lm-eval:' needs at least one task name; write it as `lm-eval:NAME[+NAME...]`")
    return list(dict.fromkeys(names))


@functools.lru_cache(maxsize=4)
def task_manager(include_path: str | None):
    """lm-eval's TaskManager over its own tasks and the YAMLs under `include_path` (indexing takes seconds)."""
    apply_offline_defaults()
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path)


def check_tasks(names: list[str], include_path: Path | None) -> None:
    """Every name must be an lm-eval task, group or tag, built in or under `include_path`."""
    if include_path is not None and not Path(include_path).is_dir():
        raise MoepruneError(f"--include-path {include_path} is not a folder; pass the folder holding your task YAMLs")
    known = set(task_manager(_key(include_path)).all_tasks)
    where = f"nor in the YAMLs under --include-path {include_path}" if include_path else "(no --include-path given)"
    for name in names:
        if name not in known:
            raise MoepruneError(
                f"unknown lm-eval task {name!r}: not among lm-eval's tasks {where}; "
                "check the name or pass --include-path DIR holding its YAML"
            )


def _key(include_path: Path | None) -> str | None:
    return None if include_path is None else str(Path(include_path).resolve())


def model_args(model_dir: Path, dtype: str) -> str:
    """lm-eval's `model_args` string for a saved Hugging Face model."""
    return f"pretrained={Path(model_dir).resolve()},dtype={dtype}"


def metric_name(name: str) -> str:
    """`name` as MLflow accepts it for a metric or tag: `pass@1` -> `pass_at_1`, other odd characters -> `_`."""
    return _NOT_IN_MLFLOW_NAMES.sub("_", name.replace("@", "_at_"))


def flat_metrics(results: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's nested `results` as flat `<task>.<metric>[.<filter>]` numbers plus `<task>.n`.

    Only `metric,filter` keys are metrics; `alias`, `sample_len` and non-numeric values are left out.
    """
    flat: dict[str, Any] = {}
    samples = results.get("n-samples", {})
    for task, scores in results["results"].items():
        for key, value in scores.items():
            metric, comma, filter_name = key.partition(",")
            if not comma or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # "alias", "sample_len" (not metrics), and "N/A" standard errors
            name = f"{task}.{metric}" if filter_name == "none" else f"{task}.{metric}.{filter_name}"
            flat[metric_name(name)] = float(value)
        n = samples.get(task, {}).get("effective")
        if n is not None:
            flat[f"{task}.n"] = int(n)
    return flat


def evaluate_lm_eval(
    model_dir: Path,
    names: list[str],
    limit: int | None,
    batch_size: int,
    device: str = "auto",
    include_path: Path | None = None,
    backend: str = "hf",
) -> dict[str, Any]:
    """Run lm-eval tasks by name on a saved causal LM; flat metrics (see the module docstring).

    Args:
        model_dir: a saved Hugging Face causal LM with its tokenizer.
        names: lm-eval task (or group) names.
        limit: at most this many documents per task (None: all).
        batch_size: lm-eval's batch size.
        device: see `moeprune.devices.resolve_device`; float32 on the CPU, the checkpoint's dtype on a GPU.
        include_path: a folder of the user's task YAMLs, or None.
        backend: `hf` or `vllm`.

    Raises:
        MoepruneError: unknown backend or task, or the backend's package is missing.
    """
    check_backend(backend)
    check_tasks(names, include_path)
    from moeprune.devices import resolve_device

    torch_device = resolve_device(device)
    dtype = "float32" if torch_device.type == "cpu" else "auto"
    from lm_eval import simple_evaluate

    results = simple_evaluate(
        model=backend,
        model_args=model_args(model_dir, dtype),
        tasks=names,
        batch_size=batch_size,
        limit=limit,
        device=str(torch_device),
        task_manager=task_manager(_key(include_path)),
        log_samples=False,
    )
    return flat_metrics(results)
