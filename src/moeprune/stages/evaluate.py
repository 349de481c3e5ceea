"""`moeprune evaluate`: task metrics + sparsity accounting of one model, as one flat JSON file.

    moeprune evaluate --model D --task gsm8k-local:data/test.jsonl --limit 200 --out metrics.json

The JSON holds `task`, `model`, the task metrics (`gsm8k.exact_match_strict`, `perplexity`,
`imagenet.top1`, ...), the sparsity figures of docs/algorithms.md (`expert_sparsity`, `weight_sparsity`,
`total_sparsity`, `params`, `nonzero_params`, `active_params_per_token`, `size_bytes`,
`experts_per_layer`, ...) and `seconds` (wall time of the whole stage). `--task` may list several
tasks separated by commas; their metrics are merged. Tasks and paths are checked before anything
runs, and the file is written atomically. `--task lm-eval:NAME[+NAME...]` runs lm-eval's own tasks
(`--include-path DIR` for task YAMLs, `--backend hf|vllm`); their metrics are `<task>.<metric>`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from moeprune.arch.loading import check_model_dir
from moeprune.devices import resolve_device
from moeprune.errors import MoepruneError
from moeprune.evaluation.efficiency import sparsity_figures
from moeprune.evaluation.tasks import check_tasks, run_tasks
from moeprune.io_utils import scratch_dir, write_json
from moeprune.outputs import claim_output


def run(
    model: Path,
    task: str,
    out: Path,
    limit: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    overwrite: bool = False,
    include_path: Path | None = None,
    backend: str = "hf",
    streaming: bool = False,
) -> dict[str, Any]:
    """Evaluate `model` on `task` and write the flat metrics JSON to `out`.

    Args:
        model: The model directory.
        task: One task or a comma-separated list: `gsm8k`, `gsm8k-local:PATH`, `perplexity:PATH`,
            `imagenet:DIR`, `lm-eval:NAME[+NAME...]`.
        out: The JSON file to write.
        limit: Evaluate at most this many examples (problems, windows, images) per task; None: all.
        batch_size: Batch size of the task's forward passes.
        device: auto, cpu, cuda, cuda:N or mps (`moeprune.devices.resolve_device`).
        include_path: a folder of lm-eval task YAMLs for `lm-eval:` tasks.
        backend: lm-eval's model backend for `lm-eval:` tasks, `hf` or `vllm`.
        streaming: read the model one decoder layer at a time (perplexity; automatic above the memory
            budget). Tasks that generate need the whole model and refuse a model that must be streamed.

    Returns:
        The metrics written to `out`.

    Raises:
        MoepruneError: missing model, unknown task, missing task data, a missing lm-eval backend, or a bad
            limit / batch size.
    """
    started = time.perf_counter()
    options = {"include_path": include_path, "backend": backend}
    tasks = check_tasks(task, **options)  # fail fast, before any model is loaded
    paths = [arg for t, arg in tasks if t.is_path]
    out = claim_output(out, "evaluate", inputs=[model, include_path, *paths], overwrite=overwrite)
    check_model_dir(model)
    if limit is not None and limit <= 0:
        raise MoepruneError(f"--limit must be a positive number of examples (or omitted: all), got {limit}")
    if batch_size <= 0:
        raise MoepruneError(f"--batch-size must be positive, got {batch_size}")
    resolve_device(device)  # fail fast on a device this machine lacks
    with scratch_dir(out):  # lm-eval's task folders and other temporaries live beside out, and go
        metrics = run_tasks(Path(model), task, limit, batch_size, device, streaming=streaming, **options)
    result = {"task": task, "model": str(model), **metrics, **sparsity_figures(model, streaming)}
    result["seconds"] = round(time.perf_counter() - started, 3)
    write_json(out, result)
    return result
