"""Where the work runs: `--device auto|cpu|cuda|cuda:N|mps` (docs/design.md, "Scale").

`auto` takes the first CUDA GPU, else Apple's MPS, else the CPU. An explicit device that this machine
lacks is refused with a one-line error rather than silently replaced. Weights keep the checkpoint's dtype
(bf16 for the released MoE checkpoints); the pruning statistics accumulate in float32 / float64 on the
same device.
"""

from __future__ import annotations

import torch

from moeprune.errors import MoepruneError

AUTO = "auto"


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(spec: str | torch.device | None = AUTO) -> torch.device:
    """The torch device for `spec`: "auto" (or None), "cpu", "cuda", "cuda:N" or "mps"."""
    if spec is None or str(spec) == AUTO:
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise MoepruneError(f"unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise MoepruneError(f"device {spec!r} asked for, but torch sees no CUDA GPU here; use --device cpu or auto")
        if device.index is not None and device.index >= count:
            raise MoepruneError(
                f"device {spec!r} asked for, but torch sees {count} CUDA GPU(s); use cuda:0..{count - 1}"
            )
    elif device.type == "mps" and not _mps_available():
        raise MoepruneError(f"device {spec!r} asked for, but MPS is not available here; use --device cpu or auto")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise MoepruneError(f"device {spec!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return device
