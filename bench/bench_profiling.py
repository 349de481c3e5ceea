"""Profiling overhead: one profiling pass vs a bare forward pass on the same tokens.

Target (issue 4): profiling pass time / bare forward time <= 1.25. The bare pass is timed with the
model's default experts implementation (grouped_mm) and with eager, which the profiling implementation
mirrors. Model: a testbed-sized Mixtral (hidden 128, 4 layers, 8 experts top-2, intermediate 256).

    .venv/bin/python bench/bench_profiling.py          # prints a table, writes bench/results/profiling.json
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch
from _shared import parse_threads, threads_parser, write_results

from moeprune.profiling import forward_batch, profile_model
from moeprune.testing import tiny_moe_model

RESULTS = Path(__file__).parent / "results" / "profiling.json"
TARGET = 1.25
BATCHES, BATCH_SIZE, SEQ_LEN, REPEATS = 4, 32, 128, 3


def _model():
    return tiny_moe_model(
        "mixtral",
        num_experts=8,
        top_k=2,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=SEQ_LEN,
    )


def _best_of(fn) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> dict:
    model = _model()
    generator = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(3, 128, (BATCH_SIZE, SEQ_LEN), generator=generator)} for _ in range(BATCHES)]

    def bare():
        for batch in batches:
            forward_batch(model, batch)

    bare()  # warm-up
    seconds = {}
    for implementation in ("grouped_mm", "eager"):
        model.set_experts_implementation(implementation)
        seconds[f"bare_{implementation}"] = _best_of(bare)
    model.set_experts_implementation("grouped_mm")
    seconds["profile"] = _best_of(lambda: profile_model(model, batches))
    tokens = BATCHES * BATCH_SIZE * SEQ_LEN
    result = {
        "tokens": tokens,
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
        "ratio_vs_default": round(seconds["profile"] / seconds["bare_grouped_mm"], 3),
        "ratio_vs_eager": round(seconds["profile"] / seconds["bare_eager"], 3),
        "target": TARGET,
        "machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform()},
    }
    result["meets_target"] = result["ratio_vs_default"] <= TARGET
    for name, value in seconds.items():
        print(f"{name:18s} {value:8.3f} s   {tokens / value:10.0f} tokens/s")
    print(f"profile / bare (grouped_mm default) = {result['ratio_vs_default']}   (target <= {TARGET})")
    print(f"profile / bare (eager)              = {result['ratio_vs_eager']}")
    write_results(RESULTS, result)
    return result


if __name__ == "__main__":
    parse_threads(threads_parser(__doc__))
    main()
