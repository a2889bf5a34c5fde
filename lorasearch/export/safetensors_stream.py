"""Reading safetensors files one tensor at a time, straight into the tensor's own memory.

The format is an 8-byte little-endian header length, a JSON header (``name -> {dtype, shape,
data_offsets}``), then the raw bytes. Each tensor is read with ``readinto`` into a fresh tensor, so
no memory map and no second copy of the file stays resident while a model is filled.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..errors import ExportError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_header(path: Path) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the offset where its data starts."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ExportError(f"{path}: not a safetensors file (too short); fix: re-export the model")
        (size,) = struct.unpack("<Q", head)
        try:
            header = json.loads(f.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ExportError(f"{path}: not a safetensors file (unreadable header); fix: re-export the model") from None
    header.pop("__metadata__", None)
    return header, 8 + size


def tensor_names(files: Sequence[Path]) -> list[str]:
    """Every tensor name in ``files``, in file order."""
    return [name for path in files for name in read_header(path)[0]]


def read_tensors(files: Sequence[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every tensor of ``files``, each read into its own CPU tensor."""
    for path in files:
        header, start = read_header(path)
        with open(path, "rb", buffering=0) as f:
            for name, entry in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
                yield name, _read_one(f, path, name, entry, start)


def _read_one(f, path: Path, name: str, entry: dict, start: int) -> torch.Tensor:
    dtype = DTYPES.get(entry["dtype"])
    if dtype is None:
        raise ExportError(f"{path}: tensor {name} has dtype {entry['dtype']}, which lorasearch cannot read; "
                          "fix: save the model in fp32, bf16 or fp16")
    begin, end = entry["data_offsets"]
    tensor = torch.empty(entry["shape"], dtype=dtype)
    raw = tensor.view(-1).view(torch.uint8) if tensor.numel() else torch.empty(0, dtype=torch.uint8)
    if raw.numel() != end - begin:
        raise ExportError(f"{path}: tensor {name} holds {end - begin} bytes for shape {entry['shape']}; "
                          "fix: re-export the model")
    f.seek(start + begin)
    view = memoryview(raw.numpy()).cast("B")
    done = 0
    while done < len(view):
        got = f.readinto(view[done:])
        if not got:
            raise ExportError(f"{path}: ends inside tensor {name}; fix: re-export the model")
        done += got
    return tensor
