"""The one place that decides whether a checkpoint is opened in memory or streamed from its shards."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from moeprune.arch.loading import weight_files
from moeprune.errors import MoepruneError

BUDGET_ENV = "MOEPRUNE_MEMORY_BUDGET_GB"
BUDGET_SHARE = 0.5  # of available memory, when MOEPRUNE_MEMORY_BUDGET_GB is not set


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else physical memory from `os.sysconf`."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_budget_bytes() -> int:
    """Bytes a checkpoint may take before streaming is chosen: $MOEPRUNE_MEMORY_BUDGET_GB, else half of free RAM."""
    value = os.environ.get(BUDGET_ENV)
    if value:
        try:
            return int(float(value) * 1024**3)
        except ValueError:
            raise MoepruneError(f"{BUDGET_ENV}='{value}' is not a number of GB; set it like 16 or 0.5") from None
    return int(available_memory_bytes() * BUDGET_SHARE)


def checkpoint_bytes(model_dir: str | Path) -> int:
    """Total size of the safetensors shards of a model directory."""
    return sum(path.stat().st_size for path in weight_files(model_dir))


def use_streaming(model_dir: str | Path, requested: bool) -> bool:
    """Stream when asked to, or automatically when the checkpoint is larger than the memory budget."""
    return bool(requested) or checkpoint_bytes(model_dir) > memory_budget_bytes()


def gib(size: int) -> str:
    """`size` bytes as GiB for messages, e.g. '3.2 GiB'."""
    return f"{size / 1024**3:.1f} GiB"


def _whole_model_budget(device: str) -> tuple[int, str]:
    """(bytes a whole model may take on `device`, where): GPU free memory on CUDA, else the memory budget."""
    import torch

    from moeprune.devices import resolve_device

    torch_device = resolve_device(device)
    if torch_device.type == "cuda" and not os.environ.get(BUDGET_ENV):
        free, _ = torch.cuda.mem_get_info(torch_device)
        return int(free * 0.9), f"free memory of {torch_device}"
    return memory_budget_bytes(), "memory budget"


def _bytes_when_loaded(model_dir: str | Path, device: str) -> int:
    """Checkpoint bytes, doubled for 16-bit weights on the CPU (generation tasks run there in float32)."""
    from moeprune.checkpoint.shards import ShardReader
    from moeprune.devices import resolve_device

    size = checkpoint_bytes(model_dir)
    if resolve_device(device).type != "cpu":
        return size
    stored = ShardReader(model_dir).floating_dtype()
    return size * 2 if stored is not None and stored.itemsize == 2 else size


def check_fits_whole(model_dir: str | Path, requested: bool, purpose: str, device: str = "auto") -> None:
    """MoepruneError (one line) when `purpose` needs the whole model on `device` but it cannot be held there."""
    size = checkpoint_bytes(model_dir)
    if requested:
        why = "--streaming was given"
    else:
        needed = _bytes_when_loaded(model_dir, device)
        budget, where = _whole_model_budget(device)
        if needed <= budget:
            return
        why = f"it needs {gib(needed)} and the {where} is {gib(budget)}"
    raise MoepruneError(
        f"{purpose} needs the whole model ({gib(size)} on disk) on one device, but {why}; run it where the model "
        f"fits (--device cuda on a GPU that holds it, or raise {BUDGET_ENV}), or evaluate perplexity:PATH, "
        "which reads one layer at a time"
    )
