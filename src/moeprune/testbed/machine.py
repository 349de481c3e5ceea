"""The machine that trained a testbed, as its testbed.json records it.

The same plan and seed give other weights on another CPU: torch's own kernels follow its CPU
capability (pinned with ATEN_CPU_CAPABILITY) and MKL's matrix products the branch MKL picks for the
CPU (pinned with MKL_CBWR), so a record names the CPU and both choices.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_name() -> str:
    """The CPU's model name (Linux `/proc/cpuinfo`), else what `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_record() -> dict:
    """CPU name, torch's CPU capability and `MKL_CBWR` (None when MKL chooses its branch)."""
    return {
        "cpu": cpu_name(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl_cbwr": os.environ.get("MKL_CBWR"),
    }
