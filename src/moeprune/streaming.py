"""Streaming mode: one decoder layer in memory at a time, read from and written to safetensors shards.

A `StreamingModel` builds the model skeleton on the meta device from `config.json` (stock Auto classes,
as `from_pretrained` does), loads the weights outside the decoder layers for real (embeddings, final
norm, LM head) only while block 0's inputs are captured (non-persistent buffers such as rotary
frequencies are initialised once by the model's own `initialize_weights`), and materialises decoder
layer i on demand: only its keys are read from the shards (`moeprune.shards`: no memory map, the index
json when sharded); transformers' own checkpoint conversion mapping turns the on-disk names into the
module's (transformers 5 saves legacy per-expert keys such as Mixtral
`block_sparse_moe.experts.{e}.w1.weight` and fuses them into `experts.gate_up_proj [E, 2I, H]` on load),
and the tensors replace the layer's meta ones. Leaving the `block(i)` context returns them to meta.

`StreamingWriter` saves each processed layer as soon as it is done (its own shard, legacy key names as
`save_pretrained` writes them) and, at the end, the other weights, `model.safetensors.index.json`,
config, generation config and tokenizer / processor files.

    streamed = StreamingModel(model_dir)
    with atomic_dir(out) as tmp:
        writer = StreamingWriter(streamed, tmp)
        for index in range(streamed.num_blocks):
            with streamed.block(index) as block:
                ...                                  # observe / prune the block
                writer.write_block(index, block)
        writer.finish(model_dir)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moeprune.arch.adapter import MoEAdapter, get_adapter
from moeprune.arch.linears import base_stats as model_base_stats
from moeprune.arch.linears import layer_linear_weights, prunable_weights
from moeprune.arch.loading import _auto_class, check_model_dir, copy_auxiliary_files, register_own_models, weight_files
from moeprune.errors import MoepruneError
from moeprune.key_conversion import KeyConversion
from moeprune.layerwise import BlockInputs, attach_source, capture_block_inputs
from moeprune.shards import INDEX_FILE, ShardReader, write_file

BUDGET_ENV = "MOEPRUNE_MEMORY_BUDGET_GB"
BUDGET_SHARE = 0.5  # of available memory, when MOEPRUNE_MEMORY_BUDGET_GB is not set
_M_MMAP_THRESHOLD = -3  # glibc malloc.h
# oneDNN (torch's CPU bf16 matmuls) and torch's ideep layer each cache a compiled primitive per new
# matmul shape, 1,024 by default; routed experts see a new row count in nearly every layer, so the caches
# grew the heap by ~4 MB per streamed layer (bench/bench_streaming.py). Both read their capacity when
# they first run, so set it here, on import, unless the user chose one.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")
os.environ.setdefault("LRU_CACHE_CAPACITY", "1")


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else physical memory from `os.sysconf`."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_budget_bytes() -> int:
    """Bytes a checkpoint may take before streaming is chosen: $MOEPRUNE_MEMORY_BUDGET_GB, else half of free RAM."""
    value = os.environ.get(BUDGET_ENV)
    if value:
        try:
            return int(float(value) * 1024**3)
        except ValueError:
            raise MoepruneError(f"{BUDGET_ENV}='{value}' is not a number of GB; set it like 16 or 0.5") from None
    return int(available_memory_bytes() * BUDGET_SHARE)


def checkpoint_bytes(model_dir: str | Path) -> int:
    """Total size of the safetensors shards of a model directory."""
    return sum(path.stat().st_size for path in weight_files(model_dir))


def use_streaming(model_dir: str | Path, requested: bool) -> bool:
    """Stream when asked to, or automatically when the checkpoint is larger than the memory budget."""
    return bool(requested) or checkpoint_bytes(model_dir) > memory_budget_bytes()


def _checkpoint_dtype(config, reader: ShardReader) -> torch.dtype:
    """What `from_pretrained(dtype="auto")` picks: the config's dtype, else the first floating tensor's."""
    dtype = getattr(config, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        return getattr(torch, dtype)
    floating = (reader.dtype(key) for key in reader.files)
    return next((dtype for dtype in floating if dtype.is_floating_point), torch.float32)


def build_skeleton(model_dir: Path, reader: ShardReader, device: torch.device) -> nn.Module:
    """The model on the meta device (stock Auto class), with its non-persistent buffers initialised on `device`."""
    from transformers import AutoConfig
    from transformers.modeling_utils import _load_parameter_into_model

    register_own_models()
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    dtype = _checkpoint_dtype(config, reader)
    with torch.device("meta"):
        model = _auto_class(config).from_config(config, dtype=dtype, trust_remote_code=False)
    for name, buffer in model.named_non_persistent_buffers():
        _load_parameter_into_model(model, name, torch.empty_like(buffer, device="cpu"))
    model.initialize_weights()  # rotary frequencies etc., exactly as from_pretrained computes them
    for name, buffer in model.named_non_persistent_buffers():
        _set_tensor(model, name, buffer.to(device))
    return model.eval()


def _return_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc `malloc_trim`), so the next layer does not add to it.

    Layer tensors of a few MB come from the heap once glibc raises its mmap threshold; without a trim the
    freed pages of one layer stay resident and the next layer's load adds to them.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _allocate_large_tensors_with_mmap() -> None:
    """Serve every allocation of 1 MiB or more by mmap, so freeing a layer's tensors unmaps them at once.

    By default glibc raises its mmap threshold (up to 32 MiB) each time a mapped chunk is freed; the
    tensors of the next layer then come from the heap, whose freed holes stay resident and fragment.
    Measured on a 194 MB Mixtral layer: loading one cost 247 MB of RSS without this, 185 MB with it.
    """
    if _LIBC is not None and hasattr(_LIBC, "mallopt"):
        _LIBC.mallopt(_M_MMAP_THRESHOLD, 1 << 20)


def _load_libc():
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    with contextlib.suppress(OSError):
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "malloc_trim") else None
    return None


_LIBC = _load_libc() if os.name == "posix" else None


def _set_tensor(root: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Replace parameter or buffer `name` of `root` by `tensor` (a parameter stays a parameter)."""
    owner_name, _, attr = name.rpartition(".")
    owner = root.get_submodule(owner_name) if owner_name else root
    if attr in owner._parameters:
        owner._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
    else:
        owner._buffers[attr] = tensor


class StreamingModel:
    """A model whose decoder layers live on disk and are materialised one at a time (a `layerwise.BlockSource`).

    Attributes:
        model: the skeleton (meta tensors in every decoder layer, real ones elsewhere).
        adapter: its MoE adapter (modules persist; their tensors come and go).
        model_dir: the checkpoint directory.
        layers_path: dotted path of the decoder layer list (e.g. `model.layers`).
    """

    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu"):
        self.model_dir = check_model_dir(model_dir)
        self.device = torch.device(device)
        self.reader = ShardReader(self.model_dir)
        _allocate_large_tensors_with_mmap()
        self.model = build_skeleton(self.model_dir, self.reader, self.device)
        self.adapter: MoEAdapter = get_adapter(self.model)
        self.layers_path = self._layers_path()
        self.conversion = KeyConversion(self.model)
        self.layer_keys, self.other_keys = self._plan_keys()
        self.tied = set(getattr(self.model, "all_tied_weights_keys", {}) or {})
        attach_source(self.model, self)

    @property
    def num_blocks(self) -> int:
        return len(self.adapter.decoder_layers)

    def _layers_path(self) -> str:
        layers = self.adapter.decoder_layers
        return next(name for name, module in self.model.named_modules() if module is layers)

    def _plan_keys(self) -> tuple[dict[int, list[str]], list[str]]:
        pattern = re.compile(rf"^{re.escape(self.layers_path)}\.(\d+)\.")
        per_layer: dict[int, list[str]] = {}
        others = []
        for key in self.reader.files:
            found = pattern.match(self.conversion.target(key)[0])
            if found:
                per_layer.setdefault(int(found.group(1)), []).append(key)
            else:
                others.append(key)
        return per_layer, others

    def outside_tensors(self) -> dict[str, torch.Tensor]:
        """The weights outside the decoder layers (embeddings, final norm, LM head), read and converted."""
        tensors = self.conversion.convert({key: self.reader.loader(key) for key in self.other_keys})
        expected = {
            name
            for name, tensor in self.model.state_dict().items()
            if not name.startswith(f"{self.layers_path}.") and tensor.is_meta
        }
        missing = sorted(expected - set(tensors) - self.tied)
        if missing:
            raise MoepruneError(
                f"'{self.model_dir}' lacks weights {missing[:3]}{' ...' if len(missing) > 3 else ''}; "
                "pass a complete checkpoint"
            )
        return tensors

    @contextlib.contextmanager
    def outside_layers(self) -> Iterator[nn.Module]:
        """The model with its weights outside the decoder layers materialised (they go back to meta after)."""
        state = self.model.state_dict()
        loaded = []
        for name, tensor in self.outside_tensors().items():
            if name in state:
                _set_tensor(self.model, name, tensor.to(device=self.device, dtype=state[name].dtype))
                loaded.append(name)
        if self.tied:
            self.model.tie_weights()
        try:
            yield self.model
        finally:
            for name in [*loaded, *self.tied]:
                _set_tensor(self.model, name, torch.empty_like(state[name], device="meta"))

    def capture(self, batches: Iterable[dict[str, torch.Tensor]]) -> BlockInputs:
        """Block 0's inputs: the skeleton's own forward (embeddings, rotary, mask) up to block 0."""
        with self.outside_layers():
            return capture_block_inputs(self.model, self.adapter, batches)

    def load_block(self, index: int) -> nn.Module:
        """Read decoder layer `index` from the shards into its module; returns the module."""
        block = self.adapter.decoder_layers[index]
        prefix = f"{self.layers_path}.{index}."
        tensors = self.conversion.convert({key: self.reader.loader(key) for key in self.layer_keys.get(index, [])})
        local = {name.removeprefix(prefix): tensor for name, tensor in tensors.items()}
        expected = block.state_dict()
        missing = sorted(set(expected) - set(local))
        if missing:
            raise MoepruneError(
                f"'{self.model_dir}' lacks weights of layer {index} ({prefix}{missing[0]}, ...); "
                "pass a complete checkpoint"
            )
        for name, tensor in local.items():
            if name in expected:
                _set_tensor(block, name, tensor.to(device=self.device, dtype=expected[name].dtype))
        return block

    def release_block(self, index: int) -> None:
        """Return decoder layer `index`'s parameters and persistent buffers to the meta device."""
        block = self.adapter.decoder_layers[index]
        for name, tensor in block.state_dict(keep_vars=True).items():
            _set_tensor(block, name, torch.empty_like(tensor, device="meta"))
        _return_freed_memory()

    @contextlib.contextmanager
    def block(self, index: int) -> Iterator[nn.Module]:
        """Decoder layer `index`, materialised inside the `with` block and released after it."""
        try:
            yield self.load_block(index)
        finally:
            self.release_block(index)


class StreamingWriter:
    """Writes a streamed model layer by layer into `out_dir` (sharded safetensors + index, stock-loadable)."""

    def __init__(self, streamed: StreamingModel, out_dir: str | Path):
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

    def finish(self, source_dir: str | Path) -> None:
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
        copy_auxiliary_files(source_dir, self.out_dir)


def count_streamed_targets(streamed: StreamingModel, targets: str = "all") -> int:
    """The number of targeted Linear weights of a streamed model, from the skeleton's shapes (nothing is read)."""
    return sum(weight.numel() for _, weight in prunable_weights(streamed.adapter, targets))


def count_streamed_weights(streamed: StreamingModel, targets: str = "all") -> tuple[int, int]:
    """`arch.linears.count_weights` for a streamed model: (targeted weights, nonzero ones), one layer at a time."""
    nonzero = 0
    for index in range(streamed.num_blocks):
        with streamed.block(index), torch.no_grad():
            for _, weight in layer_linear_weights(streamed.adapter, index, targets):
                nonzero += int(torch.count_nonzero(weight))
    return count_streamed_targets(streamed, targets), nonzero


def base_stats(streamed: StreamingModel) -> dict[str, Any]:
    """`arch.linears.base_stats` of a streamed model, without loading its weights."""
    return model_base_stats(streamed.model, streamed.adapter)
