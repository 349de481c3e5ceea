"""The one layer loop: push calibration hidden states through the decoder one block at a time.

As in wanda's `prune.py` and llm-compressor's sequential pipeline: capture the inputs of the blocks
once, then for each block let a callback observe / modify it, and run the block to produce the
hidden states of the next one. Each block gets its own keyword arguments (its attention mask:
sliding or full, linear-attention or mamba layers' own; position embeddings), recorded from one run
of the model's own forward with every decoder layer a pass-through (`capture_block_inputs`).
Only one block's activations are live at a time, and a callback that prunes a block before its
outputs are computed passes the pruned outputs on (errors do not hide).

The blocks come from a `moeprune.checkpoint.ModelSource` (a loaded model, or one decoder layer read
from the safetensors shards at a time and released after use); the loop is the same:

    source = open_model(model_dir, streaming, device)
    run(source, batches, on_block, on_done=writer.write_block)
"""

from __future__ import annotations

import ast
import contextlib
import functools
import inspect
import textwrap
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from moeprune.arch.adapter import MoEAdapter
from moeprune.errors import MoepruneError


class _StopForward(Exception):
    """Raised by the last stand-in once every decoder layer's inputs are recorded (the head never runs)."""


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


@dataclass
class CapturedInputs:
    """What the model's own forward hands every decoder layer, per batch: `BlockInputs` for each block.

    Attributes:
        hidden: per batch, block 0's hidden states.
        args: per layer index, per batch, the positional arguments after the hidden states.
        kwargs: per layer index, per batch, the keyword arguments (that layer's mask, position embeddings, ...).

    Layers given the same objects (most layers of one attention type get the same mask and rotary
    tensors) share one tuple and one dict, so memory does not grow with depth.
    """

    hidden: list[torch.Tensor] = field(default_factory=list)
    args: dict[int, list[tuple]] = field(default_factory=dict)
    kwargs: dict[int, list[dict[str, Any]]] = field(default_factory=dict)

    def wanted_outputs(self) -> dict[tuple[int, int], int]:
        """(layer, position) of every output another layer receives (`LayerOutput` markers) -> its last receiver."""
        wanted: dict[tuple[int, int], int] = {}
        for index in sorted(self.kwargs):
            for per_batch in (*self.args.get(index, []), *self.kwargs[index]):
                for value in per_batch.values() if isinstance(per_batch, dict) else per_batch:
                    if isinstance(value, LayerOutput):
                        wanted[(value.layer, value.position)] = index
        return wanted

    def block(
        self, index: int, hidden: list[torch.Tensor], outputs: dict[tuple[int, int], list[Any]] | None = None
    ) -> BlockInputs:
        """Block `index`'s inputs, with `hidden` (the previous block's outputs) as its hidden states and the
        earlier layers' `outputs` ((layer, position) -> per batch) in place of their markers."""
        if index not in self.kwargs:
            raise MoepruneError(
                f"the model's forward did not call decoder layer {index}; layer-by-layer processing needs "
                "every layer of its layer list to run"
            )
        args, kwargs = self.args[index], self.kwargs[index]
        if outputs:

            def real(value: Any, batch: int) -> Any:
                return outputs[(value.layer, value.position)][batch] if isinstance(value, LayerOutput) else value

            args = [tuple(real(v, b) for v in per_batch) for b, per_batch in enumerate(args)]
            kwargs = [{k: real(v, b) for k, v in per_batch.items()} for b, per_batch in enumerate(kwargs)]
        return BlockInputs(hidden, args, kwargs)


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


class Passthrough(nn.Module):
    """Stands in for decoder layer `index`: reports what it is called with, returns its input (or `output`).

    Masks and rotary embeddings do not depend on the hidden states, so a model whose layers all pass
    their input through still hands every layer the arguments it gets in a real forward.
    """

    def __init__(self, layer: nn.Module, index: int, on_call: Callable[[int, tuple, dict], None] | None = None):
        super().__init__()
        object.__setattr__(self, "_layer", layer)  # not a submodule: its (meta) weights stay out of the way
        object.__setattr__(self, "_on_call", on_call)
        self.index = index
        self.output: torch.Tensor | None = None

    def __getattr__(self, name: str) -> Any:  # attention_type, block_type and other flags the model's loop reads
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_layer"), name)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        on_call = object.__getattribute__(self, "_on_call")
        if on_call is not None:
            on_call(self.index, args, kwargs)
        hidden = args[0] if args else kwargs["hidden_states"]
        hidden = hidden if self.output is None else self.output
        arity = _output_arity(type(object.__getattribute__(self, "_layer")))
        if arity == 0:
            return hidden
        # While recording, the layer's other outputs are markers: a later layer that receives one (GLM-MoE-DSA's
        # and HY-V4's top-k indices) gets the real output of this layer in `run`.
        extras = [LayerOutput(self.index, p) if on_call is not None else None for p in range(1, arity)]
        return (hidden, *extras)


@dataclass(frozen=True, eq=False)
class LayerOutput:
    """Marks output `position` of decoder layer `layer` where the model's loop hands it to a later layer."""

    layer: int
    position: int


@functools.cache
def _output_arity(layer_class: type) -> int:
    """How many values a decoder layer returns: 0 for a bare tensor, n for `return a, b, ...` (read off its source).

    Layers such as GLM-MoE-DSA's return `(hidden_states, topk_indices)` and the model's loop unpacks them;
    the stand-in returns the hidden states and None for the rest. (Return annotations are not reliable:
    some say `tuple[...]` and return a tensor.)
    """
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(layer_class.forward)))
    except (OSError, TypeError, SyntaxError):
        return 0
    returns = [node for node in ast.walk(tree) if isinstance(node, ast.Return) and node.value is not None]
    last = max(returns, key=lambda node: node.lineno, default=None)
    return len(last.value.elts) if last is not None and isinstance(last.value, ast.Tuple) else 0


@contextlib.contextmanager
def layers_replaced(
    layers: nn.ModuleList, on_call: Callable[[int, tuple, dict], None] | None = None
) -> Iterator[list[Passthrough]]:
    """Every decoder layer of `layers` replaced by a `Passthrough` inside the `with` block (restored after)."""
    originals = list(layers)
    stand_ins = [Passthrough(layer, index, on_call) for index, layer in enumerate(originals)]
    for index, stand_in in enumerate(stand_ins):
        layers[index] = stand_in
    try:
        yield stand_ins
    finally:
        for index, layer in enumerate(originals):
            layers[index] = layer


class _Deduplicated:
    """Hands out one stored tuple / dict per distinct set of argument objects (compared by identity)."""

    def __init__(self):
        self.seen: dict[tuple, Any] = {}

    def get(self, value: tuple | dict) -> Any:
        items = tuple(value.items()) if isinstance(value, dict) else tuple(enumerate(value))
        key = (type(value), tuple((name, id(item)) for name, item in items))
        # Every stored value keeps its objects alive, so an id in a key cannot be reused by another object.
        return self.seen.setdefault(key, value)


def capture_block_inputs(
    model: nn.Module, adapter: MoEAdapter, batches: Iterable[dict[str, torch.Tensor]]
) -> CapturedInputs:
    """Run the model's own forward once per batch with every decoder layer a pass-through; keep what each receives.

    The last layer's stand-in stops the forward, so the final norm and the head never run.
    """
    captured = CapturedInputs()
    layers = adapter.decoder_layers
    last = len(layers) - 1
    args_seen, kwargs_seen = _Deduplicated(), _Deduplicated()

    def record(index: int, args: tuple, kwargs: dict) -> None:
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        if index == 0:
            captured.hidden.append(hidden.detach())
        captured.args.setdefault(index, []).append(args_seen.get(tuple(args[1:])))
        captured.kwargs.setdefault(index, []).append(kwargs_seen.get(kwargs))
        if index == last:
            raise _StopForward

    with layers_replaced(layers, record), torch.no_grad():
        for batch in batches:
            try:
                model(**model_inputs(batch, model))
            except _StopForward:
                pass
    return captured


def run_block(
    block: nn.Module,
    inputs: BlockInputs,
    keep: dict[tuple[int, int], list[Any]] | None = None,
    positions: set[int] | frozenset[int] = frozenset(),
    index: int = -1,
) -> list[torch.Tensor]:
    """Outputs (hidden states) of `block` for every batch of `inputs`; its other outputs at `positions`
    go to `keep[(index, position)]` (per batch) for the later layers that receive them."""
    outputs = []
    with torch.no_grad():
        for hidden, args, kwargs in zip(inputs.hidden, inputs.args, inputs.kwargs, strict=True):
            out = block(hidden, *args, **kwargs)
            outputs.append(out[0] if isinstance(out, tuple) else out)
            for position in positions:
                keep.setdefault((index, position), []).append(out[position])  # type: ignore[union-attr]
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

    def capture(self, batches: Iterable[dict[str, torch.Tensor]]) -> CapturedInputs:
        """What every decoder block receives for every batch (`capture_block_inputs`)."""
        ...

    def block(self, index: int) -> contextlib.AbstractContextManager[nn.Module]:
        """Block `index`, usable inside the `with` statement."""
        ...


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
    captured = source.capture(batches)
    hidden = captured.hidden
    wanted = captured.wanted_outputs()  # outputs a later layer receives -> the last layer that does
    outputs: dict[tuple[int, int], list[Any]] = {}
    for index in tqdm(range(source.num_blocks), desc=description, unit="layer", disable=None):
        inputs = captured.block(index, hidden, outputs)
        with source.block(index) as block:
            on_block(index, block, inputs)
            hidden = run_block(block, inputs, outputs, {p for layer, p in wanted if layer == index}, index)
            if on_done is not None:
                on_done(index, block)
        for key in [key for key, last in wanted.items() if last == index]:
            outputs.pop(key, None)
    return hidden
