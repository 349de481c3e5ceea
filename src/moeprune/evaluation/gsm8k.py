"""GSM8K evaluation through lm-eval 0.4.13, and a routing report of MoE layers on the same problems.

- `evaluate_gsm8k(model_dir, data=PATH, ...)` evaluates a GSM8K-schema JSONL through a local task that
  is the installed `lm_eval/tasks/gsm8k/gsm8k.yaml` with only the dataset fields changed: the same
  prompt ("Question: ...\\nAnswer:"), 5-shot examples from the train split (`train.jsonl` beside the
  test file if present, else the file itself), greedy generation until "Question:", and the
  strict-match / flexible-extract filters with exact_match.
- `evaluate_gsm8k(model_dir, data=None, ...)` runs lm-eval's own `gsm8k` task unchanged.
- `routing_report(model_dir, data, limit)`: per MoE layer, the per-expert load (share of top-k
  slots) and the routing entropy on the test problems, read from the routers with forward hooks.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import yaml

from moeprune.data.gsm8k_gen import read_jsonl
from moeprune.env import apply_offline_defaults
from moeprune.errors import MoepruneError

LOCAL_TASK = "gsm8k_local"
BUILTIN_TASK = "gsm8k"
STRICT, FLEXIBLE = "exact_match,strict-match", "exact_match,flexible-extract"


def builtin_gsm8k_yaml() -> dict:
    """The installed lm-eval gsm8k task definition, parsed."""
    import lm_eval

    path = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml"
    return yaml.safe_load(path.read_text())


def local_task_config(test_path: Path) -> dict:
    """The built-in gsm8k task with its dataset fields pointed at a local GSM8K-schema JSONL.

    Few-shot examples come from `train.jsonl` beside the test file when it exists (and is not the
    test file itself), otherwise from the test file, as the built-in task draws them from its train split.
    """
    test_path = Path(test_path).resolve()
    train_path = test_path.parent / "train.jsonl"
    if not train_path.is_file() or train_path == test_path:
        train_path = test_path
    config = builtin_gsm8k_yaml()
    config.pop("tag", None)
    config.update(
        {
            "task": LOCAL_TASK,
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {"train": str(train_path), "test": str(test_path)}},
            "training_split": "train",
            "fewshot_split": "train",
            "test_split": "test",
        }
    )
    return config


def _check_model_dir(model_dir: Path) -> Path:
    """Fail early with a clear message when `model_dir` is not a saved HF model."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise MoepruneError(
            f"{model_dir} is not a Hugging Face model directory (no config.json); "
            "give a folder written by save_pretrained"
        )
    return model_dir


def _require_builtin_dataset() -> None:
    """Fail fast, before loading any model, when lm-eval's gsm8k data set cannot be reached."""
    from datasets import load_dataset_builder

    config = builtin_gsm8k_yaml()
    try:
        load_dataset_builder(config["dataset_path"], config["dataset_name"])
    except Exception as error:  # noqa: BLE001 - offline, not cached, or hub errors all mean "unavailable"
        raise MoepruneError(
            f"lm-eval's gsm8k data set ({config['dataset_path']}) is not available offline; "
            "cache it first or use the gsm8k-local:PATH task"
        ) from error


def _flat_metrics(results: dict, task: str) -> dict:
    """lm-eval's nested results as moeprune's flat `gsm8k.*` metrics."""
    scores = results["results"][task]
    n = results.get("n-samples", {}).get(task, {}).get("effective")
    return {
        "gsm8k.exact_match_strict": float(scores[STRICT]),
        "gsm8k.exact_match_flexible": float(scores[FLEXIBLE]),
        "gsm8k.n": int(n if n is not None else 0),
    }


def evaluate_gsm8k(
    model_dir: Path,
    data: Path | None,
    limit: int | None,
    batch_size: int,
    num_fewshot: int | None = None,
    device: str = "auto",
) -> dict:
    """Strict and flexible GSM8K exact match of a causal LM, through lm-eval's HF backend.

    Args:
        model_dir: a saved Hugging Face causal LM with its tokenizer.
        data: a GSM8K-schema JSONL (the `gsm8k-local:PATH` task), or None for lm-eval's own gsm8k.
        limit: evaluate only the first `limit` problems (None: all).
        batch_size: generation batch size.
        num_fewshot: override the task's 5 few-shot examples.
        device: see `moeprune.devices.resolve_device`; float32 on the CPU, the checkpoint's dtype on a GPU.

    Returns:
        `{"gsm8k.exact_match_strict", "gsm8k.exact_match_flexible", "gsm8k.n"}`.

    Raises:
        MoepruneError: bad model folder or data file, or lm-eval's gsm8k data set not available offline.
    """
    apply_offline_defaults()
    model_dir = _check_model_dir(model_dir)
    if data is not None:
        read_jsonl(Path(data))  # fails early on a missing, empty or malformed file
    else:
        _require_builtin_dataset()
    from moeprune.devices import resolve_device

    torch_device = resolve_device(device)
    dtype = "float32" if torch_device.type == "cpu" else "auto"
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="moeprune-gsm8k-") as tmp:
        if data is None:
            task, manager = BUILTIN_TASK, TaskManager()
        else:
            task = LOCAL_TASK
            (Path(tmp) / f"{LOCAL_TASK}.yaml").write_text(yaml.safe_dump(local_task_config(Path(data))))
            manager = TaskManager(include_path=tmp, include_defaults=False)
        results = simple_evaluate(
            model="hf",
            model_args=f"pretrained={model_dir.resolve()},dtype={dtype}",
            tasks=[task],
            num_fewshot=num_fewshot,
            batch_size=batch_size,
            limit=limit,
            device=str(torch_device),
            task_manager=manager,
            log_samples=False,
        )
    return _flat_metrics(results, task)


def _router_hook(stats: dict, mask_holder: dict):
    """A forward hook on a router that accumulates entropy and top-k counts over unmasked tokens."""
    import torch

    def hook(module, inputs, output):
        logits, _, top_index = output  # [T, E], [T, k], [T, k]
        keep = mask_holder["mask"]  # [T] bool, real (non-pad) tokens
        probs = torch.softmax(logits.float()[keep], dim=-1)
        stats["entropy_sum"] += float(-(probs * probs.clamp_min(1e-12).log()).sum())
        stats["tokens"] += int(keep.sum())
        stats["counts"] += torch.bincount(top_index[keep].flatten(), minlength=logits.shape[-1]).double()

    return hook


def _layer_summary(stats: dict) -> dict:
    """Load shares, load entropy and mean token routing entropy of one layer."""
    counts = stats["counts"]
    load = (counts / counts.sum().clamp_min(1)).tolist()
    load_entropy = -sum(p * math.log(p) for p in load if p > 0)
    return {
        "load": [round(p, 4) for p in load],
        "load_entropy": round(load_entropy, 4),
        "token_entropy": round(stats["entropy_sum"] / max(1, stats["tokens"]), 4),
        "max_entropy": round(math.log(len(load)), 4),
        "unused_experts": int((counts == 0).sum()),
    }


def routing_report(model_dir: Path, data: Path, limit: int | None) -> dict:
    """Routing entropy and per-expert load per MoE layer on GSM8K-schema problems.

    Each problem is fed as "Question: q\\nAnswer: a". `token_entropy` is the mean entropy (nats) of the
    softmax over router logits per token; `load` the share of top-k slots each expert receives;
    `load_entropy` the entropy of that share (`max_entropy` = log E means perfectly even use).

    Args:
        model_dir: a saved HF MoE causal LM whose layers hold `mlp.gate` routers.
        data: a GSM8K-schema JSONL.
        limit: use only the first `limit` problems.

    Returns:
        `{"n_problems", "n_tokens", "layers": {layer_index: summary}}`.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = _check_model_dir(model_dir)
    records = read_jsonl(Path(data))[:limit]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    routers = {
        i: layer.mlp.gate for i, layer in enumerate(model.model.layers) if hasattr(getattr(layer, "mlp", None), "gate")
    }
    if not routers:
        raise MoepruneError(f"{model_dir} has no MoE layer with an `mlp.gate` router")
    mask_holder: dict = {}
    stats = {
        i: {"entropy_sum": 0.0, "tokens": 0, "counts": torch.zeros(router.weight.shape[0], dtype=torch.float64)}
        for i, router in routers.items()
    }
    handles = [router.register_forward_hook(_router_hook(stats[i], mask_holder)) for i, router in routers.items()]
    texts = [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in records]
    try:
        with torch.no_grad():
            for start in range(0, len(texts), 16):
                batch = tokenizer(texts[start : start + 16], return_tensors="pt", padding=True)
                mask_holder["mask"] = batch["attention_mask"].flatten().bool()
                model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return {
        "n_problems": len(records),
        "n_tokens": stats[next(iter(stats))]["tokens"],
        "layers": {i: _layer_summary(s) for i, s in stats.items()},
    }
