"""`open_model`: the one way every stage opens a checkpoint, in memory or streamed from its shards.

Both kinds of `ModelSource` answer the same questions, so a stage never asks which one it holds:

    source = open_model(model_dir, streaming=False, device="auto")
    with source.materialized(router_modules): ...       # only these modules' tensors (streamed: read now)
    with source.block(i) as layer: ...                  # decoder layer i (streamed: read now, released after)
    source.forward(batches, "profile")                  # every batch through the whole model
    for logits in source.logits(batches, "perplexity"): ...
    source.base_stats(); source.targeted_weights("experts"); source.nonzero_weights("all")
    writer = source.writer(out_dir); writer.write_block(i, layer); writer.finish()

The choice is made here and only here: streamed when asked to (`--streaming`) or when the checkpoint
is larger than the memory budget (`checkpoint.budget.use_streaming`); a stage whose work never needs
more than one layer may ask for the streamed source always (`score`, `prune-experts`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from moeprune.arch.adapter import MoEAdapter, get_adapter
from moeprune.arch.linears import base_stats, nonzero_count, prunable_weights, targeted_count
from moeprune.arch.loading import check_model_dir, load_model
from moeprune.checkpoint import layerwise
from moeprune.checkpoint.budget import use_streaming
from moeprune.checkpoint.writer import InMemoryWriter


class ModelWriter(Protocol):
    def write_block(self, index: int, block: nn.Module) -> None: ...

    def finish(self) -> None: ...


class ModelSource(layerwise.BlockSource, Protocol):
    """A checkpoint opened for a stage (see the module docstring for what it offers)."""

    model_dir: Path | None
    streamed: bool

    def materialized(self, modules: Iterable[nn.Module]) -> contextlib.AbstractContextManager[None]: ...

    def forward(self, batches: list[dict[str, torch.Tensor]], description: str) -> None: ...

    def logits(self, batches: list[dict[str, torch.Tensor]], description: str) -> Iterator[torch.Tensor]: ...

    def base_stats(self) -> dict[str, Any]: ...

    def targeted_weights(self, targets: str = "all") -> int: ...

    def nonzero_weights(self, targets: str = "all") -> int: ...

    def census(self) -> dict[str, int]: ...

    def writer(self, out_dir: str | Path) -> ModelWriter: ...


class InMemorySource:
    """The whole model loaded (`from_pretrained`); blocks and modules are simply there."""

    streamed = False

    def __init__(self, model: nn.Module, model_dir: str | Path | None = None):
        self.model = model
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.adapter: MoEAdapter = get_adapter(model)

    @classmethod
    def load(cls, model_dir: str | Path, device: torch.device | str | None = None) -> InMemorySource:
        """The model of `model_dir`, loaded whole (`arch.loading.load_model`)."""
        return cls(load_model(model_dir, device=device), model_dir)

    @property
    def num_blocks(self) -> int:
        return len(self.adapter.decoder_layers)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def capture(self, batches: Iterable[dict[str, torch.Tensor]]) -> layerwise.CapturedInputs:
        return layerwise.capture_block_inputs(self.model, self.adapter, batches)

    @contextlib.contextmanager
    def block(self, index: int) -> Iterator[nn.Module]:
        yield self.adapter.decoder_layers[index]

    @contextlib.contextmanager
    def materialized(self, modules: Iterable[nn.Module]) -> Iterator[None]:
        yield

    def forward(self, batches: list[dict[str, torch.Tensor]], description: str) -> None:
        with torch.no_grad():
            for batch in tqdm(batches, desc=description, unit="batch", disable=None):
                self.model(**layerwise.model_inputs(batch, self.model))

    def logits(self, batches: list[dict[str, torch.Tensor]], description: str) -> Iterator[torch.Tensor]:
        for batch in tqdm(batches, desc=description, unit="batch", disable=None):
            with torch.no_grad():
                yield self.model(**layerwise.model_inputs(batch, self.model)).logits

    def base_stats(self) -> dict[str, Any]:
        return base_stats(self.model, self.adapter)

    def targeted_weights(self, targets: str = "all") -> int:
        return targeted_count(self.adapter, targets)

    def nonzero_weights(self, targets: str = "all") -> int:
        return nonzero_count(prunable_weights(self.adapter, targets))

    def census(self) -> dict[str, int]:
        """`params`, `nonzero_params` (every parameter), `targeted`, `nonzero_targeted` (prunable Linears)."""
        return {
            **parameter_census(self.model.parameters()),
            "targeted": self.targeted_weights(),
            "nonzero_targeted": self.nonzero_weights(),
        }

    def writer(self, out_dir: str | Path) -> InMemoryWriter:
        if self.model_dir is None:
            raise ValueError("a model loaded without its directory cannot be written (tokenizer files unknown)")
        return InMemoryWriter(self.model, self.model_dir, out_dir)


def parameter_census(parameters: Iterable[torch.Tensor]) -> dict[str, int]:
    """`params` (shapes only, so meta tensors count) and `nonzero_params` of real tensors (meta ones: 0)."""
    total = nonzero = 0
    with torch.no_grad():
        for param in parameters:
            total += param.numel()
            nonzero += 0 if param.is_meta else int(torch.count_nonzero(param))
    return {"params": total, "nonzero_params": nonzero}


def open_model(model_dir: str | Path, streaming: bool = False, device: torch.device | str = "cpu") -> ModelSource:
    """The checkpoint in `model_dir`: streamed when asked or above the memory budget, else loaded whole.

    Raises:
        MoepruneError: not a usable model directory (`arch.loading.check_model_dir`), refused family, ...
    """
    from moeprune.checkpoint.streamed import StreamedSource

    check_model_dir(model_dir)
    if use_streaming(model_dir, streaming):
        return StreamedSource(model_dir, device=device)
    return InMemorySource.load(model_dir, device=device)


def as_source(model: nn.Module | ModelSource) -> ModelSource:
    """A `ModelSource` as is; a loaded model wrapped as an `InMemorySource` (library callers and tests)."""
    return InMemorySource(model) if isinstance(model, nn.Module) else model
