"""Writing a processed model: layer by layer into new shards (streamed), or `save_pretrained` (in memory).

A stage calls `write_block(i, block)` after it processed decoder layer i (while the layer is still
materialised) and `finish()` at the end; which writer it gets is the `ModelSource`'s business.
`ShardWriter` saves each layer as its own shard under the legacy key names `save_pretrained` writes,
then the weights outside the layers, `model.safetensors.index.json`, config (with whatever the stage
changed, e.g. expert counts), generation config and tokenizer / processor files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from moeprune.arch.loading import copy_auxiliary_files, save_model_dir
from moeprune.checkpoint.shards import INDEX_FILE, write_file
from moeprune.errors import MoepruneError

if TYPE_CHECKING:
    from moeprune.checkpoint.streamed import StreamedSource


class InMemoryWriter:
    """Saves a model held in memory once, at the end (`save_pretrained`, then the tokenizer files)."""

    def __init__(self, model: nn.Module, model_dir: Path, out_dir: str | Path):
        self.model, self.model_dir, self.out_dir = model, model_dir, Path(out_dir)

    def write_block(self, index: int, block: nn.Module) -> None:
        """Nothing to do: the block is part of the model saved by `finish`."""

    def finish(self) -> None:
        save_model_dir(self.model, self.model_dir, self.out_dir)


class ShardWriter:
    """Writes a streamed model layer by layer into `out_dir` (sharded safetensors + index, stock-loadable)."""

    def __init__(self, streamed: StreamedSource, out_dir: str | Path):
        self.streamed = streamed
        self.out_dir = Path(out_dir)
        self.shards = streamed.num_blocks + 1  # one per decoder layer, one for the rest
        self.weight_map: dict[str, str] = {}
        self.total_size = 0

    def _shard_name(self, number: int) -> str:
        return f"model-{number:05d}-of-{self.shards:05d}.safetensors"

    def _write(self, number: int, tensors: dict[str, torch.Tensor]) -> None:
        legacy = self.streamed.conversion.revert(tensors)
        name = self._shard_name(number)
        self.total_size += write_file(self.out_dir / name, legacy)
        self.weight_map.update(dict.fromkeys(legacy, name))

    def write_block(self, index: int, block: nn.Module) -> None:
        """Save decoder layer `index` (materialised, processed) as its own shard."""
        prefix = f"{self.streamed.layers_path}.{index}."
        self._write(index + 1, {prefix + name: tensor for name, tensor in block.state_dict().items()})

    def finish(self) -> None:
        """Write the weights outside the decoder layers, the index, config and tokenizer / processor files."""
        written = set(range(1, self.shards))
        done = {int(name.split("-")[1]) for name in set(self.weight_map.values())}
        if written - done:
            raise MoepruneError(f"streamed layers {sorted(n - 1 for n in written - done)} were never written")
        model = self.streamed.model
        rest = self.streamed.outside_tensors()  # never pruned: as in the source checkpoint
        self._write(self.shards, {name: tensor for name, tensor in rest.items() if name not in self.streamed.tied})
        index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(self.weight_map.items()))}
        (self.out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        model.config.save_pretrained(self.out_dir)
        if model.can_generate() and getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(self.out_dir)
        copy_auxiliary_files(self.streamed.model_dir, self.out_dir)
