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
from moeprune.evaluation.efficiency import sparsity_figures
from moeprune.evaluation.tasks import check_tasks, run_tasks
from moeprune.outputs import claim_output, scratch_dir, write_json
from moeprune.params import EvaluateSection


def run(
    model: Path,
    out: Path,
    params: EvaluateSection,
    streaming: bool = False,
    device: str = "auto",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Evaluate `model` on `params.task` and write the flat metrics JSON to `out`.

    Args (`model`, `out`, `device`, `overwrite`: see `moeprune.stages`):
        params: `moeprune.params.EvaluateSection`: `task` (one task or a comma-separated
            list: `gsm8k`, `gsm8k-local:PATH`, `perplexity:PATH`, `imagenet:DIR`, `lm-eval:NAME[+NAME...]`),
            `limit` (at most this many examples per task; None: all), `batch_size` and, for `lm-eval:`
            tasks, `lm_eval.backend` (`hf` or `vllm`) and `lm_eval.include_path` (a folder of task YAMLs).
        streaming: read the model one decoder layer at a time (perplexity; automatic above the memory
            budget). Tasks that generate need the whole model and refuse a model that must be streamed.

    Returns:
        The metrics written to `out`.

    Raises:
        MoepruneError: missing model, missing task data or a missing lm-eval backend.
    """
    started = time.perf_counter()
    task, limit, batch_size = params.task, params.limit, params.batch_size
    include_path = params.lm_eval.include_path
    options = {"include_path": Path(include_path) if include_path else None, "backend": params.lm_eval.backend}
    tasks = check_tasks(task, **options)  # fail fast (task data on disk), before any model is loaded
    paths = [arg for t, arg in tasks if t.is_path]
    out = claim_output(out, "evaluate", inputs=[model, options["include_path"], *paths], overwrite=overwrite)
    check_model_dir(model)
    resolve_device(device)  # fail fast on a device this machine lacks
    with scratch_dir(out):  # lm-eval's task folders and other temporaries live beside out, and go
        metrics = run_tasks(Path(model), task, limit, batch_size, device, streaming=streaming, **options)
    result = {"task": task, "model": str(model), **metrics, **sparsity_figures(model, streaming)}
    result["seconds"] = round(time.perf_counter() - started, 3)
    write_json(out, result)
    return result
