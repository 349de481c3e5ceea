"""Stage `inspect`: what moeprune sees in a model directory (family, MoE layers, experts, parameters).

Everything comes from the config and the tensor shapes: the checkpoint is opened streamed and no weight
is read, whatever its size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moeprune.checkpoint.source import open_model
from moeprune.registry.lineage import read_lineage


def describe(model_dir: Path) -> dict[str, Any]:
    """A JSON-able description of the MoE structure and parameter counts of a model directory."""
    source = open_model(model_dir, streaming=True)
    model, adapter = source.model, source.adapter
    first = adapter.layers[0]
    params_total = sum(p.numel() for p in model.parameters())
    per_expert = first.expert_param_count()
    return {
        "model": str(model_dir),
        "family": adapter.family.name,
        "architecture": type(model).__name__,
        "num_layers": len(adapter.decoder_layers),
        "moe_layers": adapter.moe_indices,
        "dense_layers": [i for i in range(len(adapter.decoder_layers)) if i not in adapter.moe_indices],
        "experts_per_layer": {str(layer.index): layer.num_experts for layer in adapter.layers},
        "top_k": first.top_k,
        "gate": adapter.family.gate,
        "gate_renormalises": adapter.renormalises,
        "shared_experts": list(first.shared_experts),
        "router_bias": first.router_bias is not None,
        "params_total": params_total,
        "params_per_expert": per_expert,
        "params_routed_experts": adapter.routed_expert_params(),
        "active_params_per_token": adapter.active_params_per_token(),
        "lineage": read_lineage(model_dir) is not None,
    }


def render(info: dict[str, Any]) -> None:
    """Print `describe()`'s result as a readable table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"moeprune inspect: {info['model']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    counts = sorted(set(info["experts_per_layer"].values()))
    rows = [
        ("family", f"{info['family']} ({info['architecture']})"),
        ("layers", str(info["num_layers"])),
        ("MoE layers", _ranges(info["moe_layers"])),
        ("dense layers", _ranges(info["dense_layers"]) or "-"),
        ("routed experts / layer", ", ".join(map(str, counts))),
        ("top_k", str(info["top_k"])),
        ("gate", f"{info['gate']} (renormalises: {'yes' if info['gate_renormalises'] else 'no'})"),
        ("shared experts", ", ".join(info["shared_experts"]) or "none"),
        ("router bias", "yes" if info["router_bias"] else "no"),
        ("params (total)", f"{info['params_total']:,}"),
        ("params per expert", f"{info['params_per_expert']:,}"),
        ("params in routed experts", f"{info['params_routed_experts']:,}"),
        ("active params per token", f"{info['active_params_per_token']:,}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)


def _ranges(indices: list[int]) -> str:
    if not indices:
        return ""
    parts, start, prev = [], indices[0], indices[0]
    for value in [*indices[1:], None]:
        if value is not None and value == prev + 1:
            prev = value
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if value is not None:
            start = prev = value
    return ", ".join(parts)


def run(model: Path, as_json: bool = False) -> dict[str, Any]:
    info = describe(model)
    if as_json:
        import json

        print(json.dumps(info, indent=2))
    else:
        render(info)
    return info
