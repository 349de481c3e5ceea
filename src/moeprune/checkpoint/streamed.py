"""A checkpoint streamed from its safetensors shards: one decoder layer (or one module) in memory at a time.

`StreamedSource` builds the model skeleton on the meta device from `config.json` (stock Auto classes,
as `from_pretrained` does), loads the weights outside the decoder layers for real (embeddings, final
norm, LM head) only while they are used (non-persistent buffers such as rotary frequencies are
initialised once by the model's own `initialize_weights`), and materialises decoder layer i, or only
some modules (the routers), on demand: only their keys are read from the shards
(`moeprune.checkpoint.shards`: no memory map, the index json when sharded). transformers' own checkpoint
conversion mapping turns the on-disk names into the module's (transformers 5 saves legacy per-expert
keys such as Mixtral `block_sparse_moe.experts.{e}.w1.weight` and fuses them into
`experts.gate_up_proj [E, 2I, H]` on load). Leaving the context returns the tensors to meta, so a
tensor that was never asked for cannot be read by accident: it is on the meta device.

It is one of the two `moeprune.checkpoint.ModelSource`s; `moeprune.checkpoint.open_model` chooses.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moeprune.arch.adapter import MoEAdapter, get_adapter
from moeprune.arch.linears import base_stats, layer_linear_weights, nonzero_count, targeted_count
from moeprune.arch.loading import _auto_class, check_model_dir, register_own_models
from moeprune.checkpoint import layerwise
from moeprune.checkpoint.key_conversion import KeyConversion
from moeprune.checkpoint.layerwise import CapturedInputs, capture_block_inputs, layers_replaced
from moeprune.checkpoint.shards import ShardReader
from moeprune.checkpoint.writer import ShardWriter
from moeprune.errors import MoepruneError

_M_MMAP_THRESHOLD = -3  # glibc malloc.h
# oneDNN (torch's CPU bf16 matmuls) and torch's ideep layer each cache a compiled primitive per new
# matmul shape, 1,024 by default; routed experts see a new row count in nearly every layer, so the caches
# grew the heap by ~4 MB per streamed layer (bench/bench_streaming.py). Both read their capacity when
# they first run, so set it here, on import, unless the user chose one.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")
os.environ.setdefault("LRU_CACHE_CAPACITY", "1")


def _checkpoint_dtype(config, reader: ShardReader) -> torch.dtype:
    """What `from_pretrained(dtype="auto")` picks: the config's dtype, else the first floating tensor's."""
    dtype = getattr(config, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        return getattr(torch, dtype)
    return reader.floating_dtype() or torch.float32


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


class StreamedSource:
    """A model whose decoder layers live on disk and are materialised one at a time (a `ModelSource`).

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
        self.targets = {key: self.conversion.target(key)[0] for key in self.reader.files}
        self.layer_keys, self.other_keys = self._plan_keys()
        self.tied = set(getattr(self.model, "all_tied_weights_keys", {}) or {})

    streamed = True

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
            found = pattern.match(self.targets[key])
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
    def _placed(self, tensors: dict[str, torch.Tensor], also_restore: Iterable[str] = ()) -> Iterator[None]:
        """`tensors` (module state names) set into the model on the device, in its dtypes; back to meta after."""
        state = self.model.state_dict()
        loaded = []
        try:
            for name, tensor in tensors.items():
                if name in state:
                    _set_tensor(self.model, name, tensor.to(device=self.device, dtype=state[name].dtype))
                    loaded.append(name)
            yield
        finally:
            for name in [*loaded, *also_restore]:
                _set_tensor(self.model, name, torch.empty_like(state[name], device="meta"))

    @contextlib.contextmanager
    def outside_layers(self) -> Iterator[nn.Module]:
        """The model with its weights outside the decoder layers materialised (they go back to meta after)."""
        with self._placed(self.outside_tensors(), also_restore=self.tied):
            if self.tied:
                self.model.tie_weights()
            yield self.model

    def capture(self, batches: Iterable[dict[str, torch.Tensor]]) -> CapturedInputs:
        """Every block's inputs: the skeleton's own forward (embeddings, rotary, masks), layers passed through."""
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

    def _module_names(self, modules: Iterable[nn.Module]) -> list[str]:
        names = {id(module): name for name, module in self.model.named_modules()}
        return [names[id(module)] for module in modules]

    @contextlib.contextmanager
    def materialized(self, modules: Iterable[nn.Module]) -> Iterator[None]:
        """Only `modules`' own tensors (e.g. every router) read from the shards; back to meta afterwards."""
        prefixes = tuple(f"{name}." for name in self._module_names(modules))
        keys = [key for key, target in self.targets.items() if target.startswith(prefixes)]
        with self._placed(self.conversion.convert({key: self.reader.loader(key) for key in keys})):
            yield

    def forward(self, batches: list[dict[str, torch.Tensor]], description: str) -> None:
        """Every batch through the whole model, layer by layer (each decoder layer read once)."""
        if batches:
            layerwise.run(self, batches, lambda *_: None, description=f"{description} (streaming)")

    def logits(self, batches: list[dict[str, torch.Tensor]], description: str) -> Iterator[torch.Tensor]:
        """The model's logits for every batch: the decoder layer by layer, then the model's own head."""
        if not batches:
            return
        final = layerwise.run(self, batches, lambda *_: None, description=f"{description} (streaming)")
        with self.outside_layers() as model, layers_replaced(self.adapter.decoder_layers) as stand_ins:
            for batch, hidden in zip(batches, final, strict=True):
                stand_ins[-1].output = hidden
                with torch.no_grad():
                    yield model(**layerwise.model_inputs(batch, model)).logits

    def base_stats(self) -> dict[str, Any]:
        """`arch.linears.base_stats` from the skeleton's shapes (nothing is read)."""
        return base_stats(self.model, self.adapter)

    def targeted_weights(self, targets: str = "all") -> int:
        """The number of targeted Linear weights, from the skeleton's shapes (nothing is read)."""
        return targeted_count(self.adapter, targets)

    def nonzero_weights(self, targets: str = "all") -> int:
        """The nonzero targeted Linear weights: one read of every decoder layer."""
        nonzero = 0
        for index in range(self.num_blocks):
            with self.block(index):
                nonzero += nonzero_count(layer_linear_weights(self.adapter, index, targets))
        return nonzero

    def census(self) -> dict[str, int]:
        """`InMemorySource.census` in one read of every decoder layer (shapes give the totals)."""
        from moeprune.checkpoint.source import parameter_census

        inside = {id(param) for param in self.adapter.decoder_layers.parameters()}
        with self.outside_layers() as model:
            counts = parameter_census(param for param in model.parameters() if id(param) not in inside)
        targeted, nonzero_targeted = self.targeted_weights("all"), 0
        for index in range(self.num_blocks):
            with self.block(index) as block:
                layer = parameter_census(block.parameters())
                counts = {name: counts[name] + layer[name] for name in counts}
                nonzero_targeted += nonzero_count(layer_linear_weights(self.adapter, index, "all"))
        return {**counts, "targeted": targeted, "nonzero_targeted": nonzero_targeted}

    def writer(self, out_dir: str | Path) -> ShardWriter:
        """Writes each processed layer as its own shard, then the rest (`checkpoint.writer.ShardWriter`)."""
        return ShardWriter(self, out_dir)
