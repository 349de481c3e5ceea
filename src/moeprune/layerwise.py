"""The one layer loop: push calibration hidden states through the decoder one block at a time.

As in wanda's `prune.py` and llm-compressor's sequential pipeline: capture the inputs of block 0
once, then for each block let a callback observe / modify it, and run the block to produce the
inputs of the next one. Only one block's activations are live at a time, and a callback that
prunes a block before its outputs are computed passes the pruned outputs on (errors do not hide).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from moeprune.arch.adapter import MoEAdapter


class _StopForward(Exception):
    """Raised by the capture hook once block 0's inputs are recorded."""


@dataclass
class BlockInputs:
    """The inputs of one decoder block for every calibration batch.

    Attributes:
        hidden: per batch, the hidden states `[B, L, H]` (first positional argument).
        args: per batch, the other positional arguments.
        kwargs: per batch, keyword arguments (attention mask, position embeddings, ...).
    """

    hidden: list[torch.Tensor] = field(default_factory=list)
    args: list[tuple] = field(default_factory=list)
    kwargs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] if h.dim() == 3 else h.shape[0] for h in self.hidden)


def model_inputs(batch: dict[str, torch.Tensor], model: nn.Module) -> dict[str, Any]:
    """Keyword arguments of a forward pass for one calibration batch (tokens or images)."""
    device = next(model.parameters()).device
    inputs: dict[str, Any] = {
        k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "pixel_values")
    }
    if "input_ids" in inputs:
        inputs["use_cache"] = False
    return inputs


def capture_block_inputs(
    model: nn.Module, adapter: MoEAdapter, batches: Iterable[dict[str, torch.Tensor]]
) -> BlockInputs:
    """Run the model up to block 0 for every batch and keep what block 0 receives."""
    captured = BlockInputs()

    def hook(_module, args, kwargs):
        captured.hidden.append(args[0].detach() if args else kwargs.pop("hidden_states").detach())
        captured.args.append(tuple(args[1:]))
        captured.kwargs.append(dict(kwargs))
        raise _StopForward

    handle = adapter.decoder_layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for batch in batches:
                try:
                    model(**model_inputs(batch, model))
                except _StopForward:
                    pass
    finally:
        handle.remove()
    return captured


def run_block(block: nn.Module, inputs: BlockInputs) -> list[torch.Tensor]:
    """Outputs (hidden states) of `block` for every batch of `inputs`."""
    outputs = []
    with torch.no_grad():
        for hidden, args, kwargs in zip(inputs.hidden, inputs.args, inputs.kwargs, strict=True):
            out = block(hidden, *args, **kwargs)
            outputs.append(out[0] if isinstance(out, tuple) else out)
    return outputs


OnBlock = Callable[[int, nn.Module, BlockInputs], None]


def run(
    model: nn.Module,
    adapter: MoEAdapter,
    batches: Iterable[dict[str, torch.Tensor]],
    on_block: OnBlock,
    description: str = "layers",
) -> None:
    """Call `on_block(index, block, inputs)` for each decoder block in order, then propagate.

    `on_block` may run the block itself (with hooks) and change its weights; the next block receives
    the outputs of the block as it is after `on_block` returns.
    """
    inputs = capture_block_inputs(model, adapter, batches)
    blocks = adapter.decoder_layers
    for index in tqdm(range(len(blocks)), desc=description, unit="layer", disable=None):
        on_block(index, blocks[index], inputs)
        inputs.hidden = run_block(blocks[index], inputs)
