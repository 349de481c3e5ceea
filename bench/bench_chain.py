"""The whole chain on a checkpoint larger than this machine's RAM, each stage as the CLI: peak RSS and wall time.

A random Mixtral-shaped bf16 checkpoint (default 16 layers, hidden 3072, expert intermediate 12288,
8 experts top-2, vocab 32000: about 28 GiB, more than the 24 GiB of RAM here) is written layer by layer
(`bench_streaming.write_checkpoint`, about one layer of memory), with a word-level tokenizer over its
32000 ids so that `calibrate` and `evaluate` run as they would on a real model. Then, each as its own
`moeprune` process:

    calibrate (text) -> profile -> score (router-change, stun, reap, frequency, random)
      -> prune-experts (the stun scores, 50%) -> prune-unstructured wanda 50% -> evaluate perplexity

router-change needs the pretrained checkpoint: the reference shares every shard of the model (hard
links, no disk) except one small shard with other router rows, so it is a complete checkpoint that
differs from the model in its routers, as a fine-tuned model's would. Peak RSS is each process's
VmHWM, read as it exits: every resident page of the process (file pages mapped included; moeprune does
not map the shards). Disk: the original is deleted once prune-experts has written the
half-size model, and that one once wanda has written its output (peak about 1.5x the checkpoint).

    .venv/bin/python bench/bench_chain.py                    # about 30 GiB of disk; writes bench/results/chain.json
    .venv/bin/python bench/bench_chain.py --hidden 512 --intermediate 1024 --layers 4   # a quick small run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _shared import machine, write_results  # noqa: E402
from bench_streaming import BASE_SHAPE, write_checkpoint  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "chain.json"
TARGET = 0.15
# The stage's own high-water mark, written when it exits. (ru_maxrss from wait4 would also count the
# pages the child shared with this process between fork and exec.)
_WRAPPER = """
import atexit, sys
def _peak(path=sys.argv[1]):
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            with open(path, "w") as out:
                out.write(str(int(line.split()[1]) * 1024))
atexit.register(_peak)
sys.argv = ["moeprune", *sys.argv[2:]]
from moeprune.cli import main
main()
"""
SCORERS = ("router-change", "stun", "reap", "frequency", "random")
EXPERT_SPARSITY = 0.5
SAMPLES, SEQ_LEN = 8, 64


def _tokenizer(model_dir: Path, vocab_size: int) -> None:
    """A word-level tokenizer whose words w0 ... w{V-1} are the ids 0 ... V-1."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab_size)}, unk_token="w3"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="w1", eos_token="w2", unk_token="w3")
    fast.save_pretrained(model_dir)


def _corpus(path: Path, vocab_size: int, words: int) -> Path:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab_size, (words,), generator=generator).tolist()
    lines = [" ".join(f"w{i}" for i in ids[start : start + 50]) for start in range(0, len(ids), 50)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _reference(model: Path, out: Path) -> Path:
    """The model's shards hard-linked, except a new shard with other router rows (a complete checkpoint)."""
    from moeprune.checkpoint.shards import INDEX_FILE, ShardReader, write_file

    out.mkdir(parents=True)
    for item in model.iterdir():
        if item.name != INDEX_FILE:
            os.link(item, out / item.name)
    reader = ShardReader(model)
    generator = torch.Generator().manual_seed(7)
    routers = {
        key: (reader.read(key).float() + 0.1 * torch.randn(reader.read(key).shape, generator=generator)).to(
            torch.bfloat16
        )
        for key in reader.files
        if key.endswith("block_sparse_moe.gate.weight")
    }
    write_file(out / "routers.safetensors", routers)
    index = json.loads((model / INDEX_FILE).read_text())
    index["weight_map"].update(dict.fromkeys(routers, "routers.safetensors"))
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return out


def _stage(name: str, args: list[str], input_bytes: int) -> dict:
    """Run `moeprune <args>` as its own process; wall time and that process's peak RSS."""
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    with tempfile.NamedTemporaryFile(suffix=".peak") as peak_file:
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", _WRAPPER, peak_file.name, *args], env=env, capture_output=True, text=True
        )
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
        peak = int(Path(peak_file.name).read_text())
    ratio = peak / input_bytes
    print(f"{name:>24}: {seconds:7.1f} s, peak RSS {peak / 2**30:6.2f} GiB = {ratio:.3f}x its input", flush=True)
    return {
        "stage": name,
        "command": "moeprune " + " ".join(args),
        "seconds": round(seconds, 1),
        "peak_rss_bytes": peak,
        "input_bytes": input_bytes,
        "peak_over_input": round(ratio, 4),
    }


def _import_floor() -> int:
    """VmHWM of a process that only imports what every stage imports (torch, transformers, Mixtral's code)."""
    code = (
        "import torch, transformers, moeprune.cli\n"
        "from transformers import MixtralForCausalLM\n"
        "print([l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1]) * 1024


def _size(model_dir: Path) -> int:
    return sum(path.stat().st_size for path in model_dir.glob("*.safetensors"))


def run_chain(workdir: Path, shape: dict, layers: int) -> dict:
    model = workdir / "model"
    start = time.perf_counter()
    size = write_checkpoint(model, layers, shape)
    _tokenizer(model, shape["vocab_size"])
    build = time.perf_counter() - start
    print(f"checkpoint: {size / 2**30:.2f} GiB in {build:.0f} s", flush=True)
    reference = _reference(model, workdir / "reference")
    corpus = _corpus(workdir / "corpus.txt", shape["vocab_size"], words=SAMPLES * SEQ_LEN * 4)
    stages = []
    calib = workdir / "calib.safetensors"
    stages.append(
        _stage(
            "calibrate",
            ["calibrate", "--model", str(model), "--source", f"text:{corpus}", "--samples", str(SAMPLES)]
            + ["--seq-len", str(SEQ_LEN), "--out", str(calib)],
            size,
        )
    )
    profile = workdir / "profile"
    stages.append(
        _stage("profile", ["profile", "--model", str(model), "--calib", str(calib), "--out", str(profile)], size)
    )
    inputs = {"router-change": ["--reference", str(reference)], "reap": ["--profile", str(profile)]}
    inputs["frequency"] = inputs["reap"]
    for method in SCORERS:
        args = ["score", "--model", str(model), "--method", method, "--expert-sparsity", str(EXPERT_SPARSITY)]
        args += [*inputs.get(method, []), "--out", str(workdir / f"{method}.json")]
        stages.append(_stage(f"score {method}", args, size))
    pruned = workdir / "experts-pruned"
    args = ["prune-experts", "--model", str(model), "--scores", str(workdir / "stun.json"), "--out", str(pruned)]
    stages.append(_stage("prune-experts (stun)", args, size))
    shutil.rmtree(reference)
    shutil.rmtree(model)
    pruned_size = _size(pruned)
    final = workdir / "wanda"
    args = ["prune-unstructured", "--model", str(pruned), "--method", "wanda", "--sparsity", "0.5"]
    stages.append(_stage("prune-unstructured wanda", [*args, "--calib", str(calib), "--out", str(final)], pruned_size))
    shutil.rmtree(pruned)
    final_size = _size(final)
    args = ["evaluate", "--model", str(final), "--task", f"perplexity:{corpus}", "--limit", "4", "--batch-size", "2"]
    stages.append(_stage("evaluate perplexity", [*args, "--out", str(workdir / "metrics.json")], final_size))
    metrics = json.loads((workdir / "metrics.json").read_text())
    floor = _import_floor()
    for stage in stages:
        stage["peak_above_import_floor_over_input"] = round((stage["peak_rss_bytes"] - floor) / stage["input_bytes"], 4)
    return {
        "import_floor_bytes": floor,
        "checkpoint": {
            "layers": layers,
            **shape,
            "bytes": size,
            "gib": round(size / 2**30, 2),
            "build_seconds": round(build),
        },
        "after_prune_experts_gib": round(pruned_size / 2**30, 2),
        "stages": stages,
        "perplexity": metrics.get("perplexity"),
        "worst_peak_over_input": max(stage["peak_over_input"] for stage in stages),
        "target": TARGET,
        "target_met": all(stage["peak_over_input"] <= TARGET for stage in stages),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=3072)
    parser.add_argument("--intermediate", type=int, default=12288)
    parser.add_argument("--workdir", type=Path, default=None, help="Where the checkpoints go (default: a temp dir).")
    parser.add_argument("--results", type=Path, default=None, help="Write the JSON here (default: full size only).")
    args = parser.parse_args()
    shape = {**BASE_SHAPE, "hidden_size": args.hidden, "intermediate_size": args.intermediate}
    workdir = Path(tempfile.mkdtemp(prefix="moeprune-bench-chain-", dir=args.workdir))
    try:
        result = run_chain(workdir, shape, args.layers)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["machine"] = machine()
    result["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    full_size = (args.layers, args.hidden, args.intermediate) == (16, 3072, 12288)
    target = args.results or (RESULTS if full_size else None)
    print(
        f"worst stage peak / input = {result['worst_peak_over_input']} (target <= {TARGET}): "
        f"{'met' if result['target_met'] else 'NOT met'}"
    )
    if target is not None:
        write_results(target, result)
        print(f"wrote {target}")


if __name__ == "__main__":
    main()
