"""The one layer loop: push calibration hidden states through the decoder one block at a time.

As in wanda's `prune.py` and llm-compressor's sequential pipeline: capture the inputs of block 0
once, then for each block let a callback observe / modify it, and run the block to produce the
inputs of the next one. Only one block's activations are live at a time, and a callback that
prunes a block before its outputs are computed passes the pruned outputs on (errors do not hide).

The blocks come from a `moeprune.checkpoint.ModelSource` (a loaded model, or one decoder layer read
from the safetensors shards at a time and released after use); the loop is the same:

    source = open_model(model_dir, streaming, device)
    run(source, batches, on_block, on_done=writer.write_block)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from moeprune.arch.adapter import MoEAdapter
from moeprune.errors import MoepruneError


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
    device = next(p.device for p in model.parameters() if not p.is_meta)  # streaming skeletons: the embeddings
    inputs: dict[str, Any] = {
        k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "pixel_values")
    }
    if "input_ids" not in inputs and "pixel_values" not in inputs:
        raise MoepruneError(
            f"calibration batch holds {sorted(batch)}; expected input_ids [N, L] or pixel_values [N, C, H, W]"
        )
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
OnDone = Callable[[int, nn.Module], None]


class BlockSource(Protocol):
    """Where the decoder blocks come from: a model in memory or a streamed checkpoint."""

    model: nn.Module
    adapter: MoEAdapter

    @property
    def num_blocks(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    def capture(self, batches: Iterable[dict[str, torch.Tensor]]) -> BlockInputs:
        """What block 0 receives for every batch."""
        ...

    def block(self, index: int) -> contextlib.AbstractContextManager[nn.Module]:
        """Block `index`, usable inside the `with` statement."""
        ...


def check_shared_block_inputs(model: nn.Module) -> None:
    """Refuse models whose blocks get different masks (mixed sliding / full attention): block 0's do not fit all."""
    layer_types = getattr(getattr(model, "config", None), "layer_types", None) or []
    if len(set(layer_types)) > 1:
        raise MoepruneError(
            f"this model mixes attention types per layer ({sorted(set(layer_types))}); layer-by-layer processing "
            "reuses block 0's attention mask for every block, so disable sliding-window attention in config.json"
        )


def run(
    source: BlockSource,
    batches: Iterable[dict[str, torch.Tensor]],
    on_block: OnBlock,
    description: str = "layers",
    on_done: OnDone | None = None,
) -> list[torch.Tensor]:
    """Call `on_block(index, block, inputs)` for each decoder block in order, then propagate.

    `on_block` may run the block itself (with hooks) and change its weights; the next block receives
    the outputs of the block as it is after `on_block` returns. `on_done(index, block)` runs after the
    outputs are computed, while the block is still materialised (e.g. to write it out).

    Returns:
        The outputs of the last block for every batch.
    """
    check_shared_block_inputs(source.model)
    inputs = source.capture(batches)
    for index in tqdm(range(source.num_blocks), desc=description, unit="layer", disable=None):
        with source.block(index) as block:
            on_block(index, block, inputs)
            inputs.hidden = run_block(block, inputs)
            if on_done is not None:
                on_done(index, block)
    return inputs.hidden
