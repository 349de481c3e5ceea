"""What the benchmark scripts share: the `--threads` option, the machine they ran on, writing the results."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch

from moeprune.testbed.machine import cpu_name


def threads_parser(doc: str) -> argparse.ArgumentParser:
    """The script's parser (described by its docstring's first line), with `--threads`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    return parser


def parse_threads(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse the command line and apply `--threads`."""
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def machine() -> dict:
    """The platform, CPU name and count, torch version and CPU capability, and RAM of this machine."""
    return {
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def write_results(path: Path, record: dict) -> None:
    """Write `record` as indented JSON to `path`, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
