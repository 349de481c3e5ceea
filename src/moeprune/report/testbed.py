"""The report's testbed section: what the LM testbed build measured (its testbed.json), as markdown.

Per kind of pretraining text: held-out perplexity of the pretrained and the adapted model beside the
kind's unigram baseline, and the share of the kind's routing that goes to its most-used quarter and
half of the experts; per MoE layer: the normalised mutual information between kind and chosen expert.
The build's heat maps (`routing_<model>.png`) are copied beside the report.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

MODELS = ("pretrained", "finetuned")
HEATMAP = "routing_{model}.png"


def read_testbed(folder: str | Path) -> dict[str, Any] | None:
    """The LM testbed record of `folder` (None when absent, or when it has no routing diagnostics)."""
    path = Path(folder) / "testbed.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if isinstance(record, dict) and "diagnostics" in record else None


def top_share(load: list[float], fraction: float) -> float:
    """Share of the routing that the most-used `fraction` of the experts receive."""
    ranked = sorted(load, reverse=True)
    return sum(ranked[: max(1, round(fraction * len(ranked)))])


def copy_heatmaps(folder: str | Path, out: Path) -> dict[str, str]:
    """Copy the build's routing heat maps into `out`; model -> file name."""
    copied = {}
    for model in MODELS:
        source = Path(folder) / HEATMAP.format(model=model)
        if source.is_file():
            name = f"testbed_{source.name}"
            shutil.copyfile(source, out / name)
            copied[model] = name
    return copied


def _kind_rows(record: dict[str, Any]) -> list[str]:
    diag, unigram = record["diagnostics"], record["unigram_perplexity"]
    header = "| kind | unigram ppl | pretrained ppl | adapted ppl | adapted: top 25% experts | top 50% experts |"
    lines = [header, "|---|---|---|---|---|---|"]
    for kind in record["data"]["kinds"]:
        layers = diag["finetuned"]["routing"]["layers"].values()
        quarter = [top_share(layer["load"][kind], 0.25) for layer in layers]
        half = [top_share(layer["load"][kind], 0.5) for layer in layers]
        lines.append(
            f"| {kind} | {unigram[kind]:.1f} | {diag['pretrained']['perplexity'][kind]:.2f} | "
            f"{diag['finetuned']['perplexity'][kind]:.2f} | {sum(quarter) / len(quarter):.2f} | "
            f"{sum(half) / len(half):.2f} |"
        )
    return lines


def _nmi_rows(record: dict[str, Any]) -> list[str]:
    layers = list(record["diagnostics"]["pretrained"]["routing"]["layers"])
    lines = ["| model | " + " | ".join(f"layer {i}" for i in layers) + " |", "|---|" + "---|" * len(layers)]
    for model in MODELS:
        routing = record["diagnostics"][model]["routing"]["layers"]
        lines.append(f"| {model} | " + " | ".join(f"{routing[i]['nmi']:.3f}" for i in layers) + " |")
    return lines


def _machine_sentence(record: dict[str, Any]) -> str:
    """Which CPU and kernels trained the weights (another CPU trains others); empty for older records."""
    machine = record.get("machine")
    if not machine:
        return ""
    mkl = f"`MKL_CBWR={machine['mkl_cbwr']}`" if machine.get("mkl_cbwr") else "chosen by MKL"
    return (
        f" Trained on {machine['cpu']} with torch's `{machine['torch_cpu_capability']}` kernels, MKL branch "
        f"{mkl}: the same plan and seed give other weights on another CPU."
    )


def testbed_lines(record: dict[str, Any], heatmaps: dict[str, str]) -> list[str]:
    """The markdown of the testbed section."""
    size = record["size"]
    lines = [
        "### The LM testbed of this run",
        "",
        f"Preset `{record.get('preset', '?')}`: {record['model_type']}, {size['layers']} layers, hidden "
        f"{size['hidden']}, {size['experts']} routed experts per layer, top-{size['top_k']}, expert width "
        f"{size['intermediate']}; {record['params']:,} parameters. Build: {record['build_seconds'] / 60:.1f} min "
        f"wall, {record['build_cpu_seconds'] / 60:.1f} CPU-min (seed {record['seed']}).{_machine_sentence(record)}",
        "",
        "Held-out perplexity per kind of pretraining text, and how concentrated each kind's routing is "
        "(share of its (token, expert) pairs on its most-used experts, mean over layers):",
        "",
        *_kind_rows(record),
        "",
        "Normalised mutual information between kind and chosen expert, per layer:",
        "",
        *_nmi_rows(record),
        "",
    ]
    for model, name in heatmaps.items():
        lines += [f"![{model}: kind x expert load]({name})", "", "_Drawn by `moeprune testbed lm` (testbed.json)._", ""]
    return lines
