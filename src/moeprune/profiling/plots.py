"""Plots of an activation profile: expert load per layer and co-activation matrices (PNG, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor


def plot_expert_load(layers: dict[int, dict[str, Tensor]], path: Path) -> None:
    """Heatmap, MoE layers x experts, of the share of a layer's tokens each expert received."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    indices = sorted(layers)
    width = max(int(layers[i]["frequency"].numel()) for i in indices)
    load = torch.full((len(indices), width), float("nan"))
    for row, index in enumerate(indices):
        stats = layers[index]
        share = stats["frequency"] / max(int(stats["tokens"]), 1)
        load[row, : share.numel()] = share.float()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.3 * width + 2), max(2.5, 0.35 * len(indices) + 1.5)))
    image = ax.imshow(load.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xlabel("expert")
    ax.set_ylabel("MoE layer")
    ax.set_yticks(range(len(indices)), [str(i) for i in indices])
    ax.set_title("expert load (share of tokens routed to each expert)")
    fig.colorbar(image, ax=ax)
    _save_figure(fig, path)


def plot_coactivation(layers: dict[int, dict[str, Tensor]], path: Path) -> None:
    """One panel per MoE layer: co-activation counts normalised by the layer's token count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    indices = sorted(layers)
    columns = min(4, len(indices))
    rows = -(-len(indices) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows), squeeze=False)
    for ax in axes.flat[len(indices) :]:
        ax.axis("off")
    for ax, index in zip(axes.flat, indices, strict=False):
        stats = layers[index]
        matrix = stats["coactivation"] / max(int(stats["tokens"]), 1)
        image = ax.imshow(matrix.float().numpy(), cmap="magma", interpolation="nearest")
        ax.set_title(f"layer {index}", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle("expert co-activation (share of tokens)")
    _save_figure(fig, path)


def plot_kind_load(routing: dict, path: Path, title: str = "kind x expert load") -> None:
    """One panel per MoE layer: each kind's share of routed (token, expert) pairs per expert, and the NMI.

    `routing` is the testbed's routing record: `{"kinds": [...], "layers": {i: {"nmi", "load": {kind: [...]}}}}`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds, layers = routing["kinds"], routing["layers"]
    fig, axes = plt.subplots(len(layers), 1, figsize=(10, 0.32 * len(kinds) * len(layers) + 1.2), squeeze=False)
    for ax, (index, layer) in zip(axes.flat, layers.items(), strict=True):
        image = ax.imshow([layer["load"][kind] for kind in kinds], aspect="auto", cmap="viridis")
        ax.set_yticks(range(len(kinds)), kinds, fontsize=7)
        ax.set_title(f"layer {index}: NMI(kind, expert) = {layer['nmi']:.3f}", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.02)
    axes.flat[-1].set_xlabel("expert")
    fig.suptitle(title)
    _save_figure(fig, path)


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
