"""Reading and writing safetensors shards one tensor at a time, without memory-mapping them.

`safetensors.safe_open` maps the whole file; every page a read touches stays resident (and counts in
the process's RSS) until the handle closes, and `safetensors.torch.save_file` first turns every tensor
into a `bytes` copy. Streaming mode holds one decoder layer at a time, so both would double its peak.
The format is simple (https://huggingface.co/docs/safetensors: an 8-byte little-endian header length, a
JSON header of `{name: {dtype, shape, data_offsets}}` plus `__metadata__`, then the raw bytes), so here
a tensor is read with `readinto` straight into its own storage and written from a view of its storage.
Files written here load with `safe_open` and stock `from_pretrained` (tests check it).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from moeprune.errors import MoepruneError

INDEX_FILE = "model.safetensors.index.json"
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_ALIGN = 8


def read_header(path: str | Path) -> tuple[dict[str, Any], int]:
    """(the tensor entries of a safetensors file, the byte offset where its data starts)."""
    size = Path(path).stat().st_size
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise MoepruneError(f"'{path}' is not a safetensors file (too short); re-save the checkpoint")
        (length,) = struct.unpack("<Q", raw)
        if 8 + length > size:
            raise MoepruneError(f"'{path}' is truncated or not a safetensors file (header past its end); re-save it")
        try:
            header = json.loads(handle.read(length))
        except (ValueError, UnicodeDecodeError):
            raise MoepruneError(f"'{path}' has a corrupt safetensors header; re-save or re-download it") from None
    if not isinstance(header, dict):
        raise MoepruneError(f"'{path}' has a corrupt safetensors header; re-save or re-download it")
    header.pop("__metadata__", None)
    return header, 8 + length


def check_safetensors(path: str | Path) -> None:
    """A readable header whose tensors all end inside the file (catches truncated copies and downloads)."""
    header, start = read_header(path)
    try:
        end = max((int(entry["data_offsets"][1]) for entry in header.values()), default=0)
    except (KeyError, IndexError, TypeError, ValueError):
        raise MoepruneError(f"'{path}' has a corrupt safetensors header; re-save or re-download it") from None
    size = Path(path).stat().st_size
    if start + end > size:
        raise MoepruneError(
            f"'{path}' is truncated ({size} bytes, its header needs {start + end}); re-save or re-download it"
        )


def _readinto(handle, buffer: memoryview) -> None:
    done = 0
    while done < len(buffer):
        count = handle.readinto(buffer[done:])
        if not count:
            raise MoepruneError(f"'{handle.name}' ends early; the checkpoint is truncated, re-download or re-save it")
        done += count


class ShardReader:
    """The tensors of a model directory's safetensors shards, readable one by one (no mmap).

    Attributes:
        files: checkpoint key -> shard path (from `model.safetensors.index.json`, else every shard's header).
    """

    def __init__(self, model_dir: str | Path):
        model_dir = Path(model_dir)
        self._headers: dict[Path, tuple[dict[str, Any], int]] = {}
        index = model_dir / INDEX_FILE
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            self.files = {key: model_dir / name for key, name in weight_map.items()}
        else:
            self.files = {}
            for path in sorted(model_dir.glob("*.safetensors")):
                self.files.update(dict.fromkeys(self._header(path)[0], path))

    def _header(self, path: Path) -> tuple[dict[str, Any], int]:
        if path not in self._headers:
            self._headers[path] = read_header(path)
        return self._headers[path]

    def dtype(self, key: str) -> torch.dtype:
        """The stored dtype of `key`."""
        return DTYPES[self._header(self.files[key])[0][key]["dtype"]]

    def floating_dtype(self) -> torch.dtype | None:
        """The dtype of the first floating-point tensor (what `from_pretrained(dtype="auto")` falls back to)."""
        floating = (self.dtype(key) for key in self.files)
        return next((dtype for dtype in floating if dtype.is_floating_point), None)

    def read(self, key: str, device: torch.device | str = "cpu") -> torch.Tensor:
        """Tensor `key`, read from its shard into fresh memory."""
        path = self.files[key]
        header, start = self._header(path)
        entry = header[key]
        begin, end = entry["data_offsets"]
        data = torch.empty(end - begin, dtype=torch.uint8)
        with open(path, "rb", buffering=0) as handle:
            handle.seek(start + begin)
            _readinto(handle, memoryview(data.numpy()))
        tensor = data.view(DTYPES[entry["dtype"]]).reshape(entry["shape"])
        return tensor if torch.device(device).type == "cpu" else tensor.to(device)

    def loader(self, key: str) -> Callable[[], torch.Tensor]:
        """A zero-argument function that reads `key` when called (transformers' converters call it late)."""
        return lambda: self.read(key)


def write_file(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> int:
    """Write `tensors` as one safetensors file, one tensor at a time; returns the bytes of tensor data."""
    names = sorted(tensors)
    header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name in names:
        tensor = tensors[name]
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": DTYPE_NAMES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % _ALIGN)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for name in names:
            flat = tensors[name].detach().to("cpu").contiguous().reshape(-1)
            handle.write(memoryview(flat.view(torch.uint8).numpy()))
    return offset
