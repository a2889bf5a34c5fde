"""A recorded reordering of channels: which rows and columns of which linear layers moved where.

Mode B keeps the *first* channels of a width (and the first heads); `lorasearch.train.reorder` sorts them
by importance before training, so that every prefix holds the most important ones. What it did is a
`ChannelPermutation`: one index per ``(module, "out")`` (rows of the weight, the bias and
``lora_B``) or ``(module, "in")`` (columns of the weight and ``lora_A``), meaning *new channel i is
old channel index[i]*. A permutation that moves whole MLP channels or whole key/value groups of
heads leaves the model's function unchanged.

It is stored beside the super-adapter as ``lorasearch_permutation.safetensors``. The adapter tensors
in that folder are in the *original* channel order (so stock PEFT loads the super-adapter on the
unpermuted base); `lorasearch.network.supernet.SuperNetwork` applies the permutation to the base and the
adapter together after loading, so slicing sees the reordered channels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import nn

from ..errors import AdapterError
from ..io import atomic_write_bytes
from .peft_format import AdapterModule

PERMUTATION_FILE = "lorasearch_permutation.safetensors"
DIMS = ("out", "in")
Key = tuple[str, str]  # (module name, "out" | "in")


@dataclass(frozen=True)
class ChannelPermutation:
    """Index tensors per ``(module, dim)``: new channel ``i`` of that dimension is old channel ``index[i]``.

    Attributes:
        indices: ``(module name, "out" | "in") -> LongTensor`` (a permutation of ``range(size)``).
        info: plain facts about how it was made (metric, calibration size), stored with it.
    """

    indices: Mapping[Key, torch.Tensor]
    info: Mapping[str, Any] = field(default_factory=dict)

    def then(self, other: "ChannelPermutation") -> "ChannelPermutation":
        """This permutation followed by ``other`` (``W[self][other]``), as one permutation."""
        merged = dict(self.indices)
        for key, index in other.indices.items():
            merged[key] = merged[key][index] if key in merged else index
        return ChannelPermutation(merged, {**dict(self.info), **dict(other.info)})

    def inverse_index(self, key: Key) -> torch.Tensor | None:
        """The index that undoes ``key``'s permutation, or None when that dimension did not move."""
        index = self.indices.get(key)
        return None if index is None else torch.argsort(index)

    def modules(self) -> list[str]:
        """The names of the modules that have a moved dimension."""
        return sorted({name for name, _ in self.indices})

    # ------------------------------------------------------------------------------- files
    def save(self, path: str | Path) -> Path:
        """Write the permutation to ``path`` (a safetensors file; ``info`` in its metadata), atomically."""
        tensors = {f"{name}|{dim}": index.to(torch.int64).contiguous() for (name, dim), index in self.indices.items()}
        metadata = {"format": "lorasearch-permutation", "version": "1", "info": json.dumps(dict(self.info))}
        atomic_write_bytes(path, save(tensors, metadata=metadata))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "ChannelPermutation":
        """Read a file written by `save`; raise `AdapterError` naming the file when it is unusable."""
        path = Path(path)
        try:
            data = path.read_bytes()
            tensors = load(data)
            metadata = _metadata(data)
        except (OSError, SafetensorError, ValueError) as exc:
            raise AdapterError(f"{path}: cannot read the channel permutation ({exc}); fix: re-save the adapter") from None
        if metadata.get("format") != "lorasearch-permutation":
            raise AdapterError(f"{path}: not a lorasearch channel permutation; fix: remove it or re-save the adapter")
        indices = {}
        for key, index in tensors.items():
            name, _, dim = key.rpartition("|")
            if dim not in DIMS or index.dim() != 1:
                raise AdapterError(f"{path}: entry {key!r} is not MODULE|out or MODULE|in with a 1-D index; fix: re-save the adapter")
            indices[(name, dim)] = index.long()
        return cls(indices, json.loads(metadata.get("info", "{}")))

    # ------------------------------------------------------------------------------- checks
    def check(self, linears: Mapping[str, nn.Module], source: str) -> None:
        """Raise `AdapterError` unless every entry names a linear of the model and permutes its full size."""
        for (name, dim), index in self.indices.items():
            module = linears.get(name)
            if module is None:
                raise AdapterError(f"{source}: {name} is not a linear layer of the model; fix: load the base model "
                                   "the adapter was trained on")
            size = module.out_features if dim == "out" else module.in_features
            if len(index) != size or not torch.equal(torch.sort(index).values, torch.arange(size)):
                raise AdapterError(f"{source}: the {dim} index of {name} is not a permutation of its {size} channels; "
                                   "fix: load the base model the adapter was trained on")


def read_permutation(folder: str | Path | None) -> ChannelPermutation | None:
    """The permutation saved beside an adapter folder, or None when there is none."""
    if folder is None or not (Path(folder) / PERMUTATION_FILE).is_file():
        return None
    return ChannelPermutation.load(Path(folder) / PERMUTATION_FILE)


@torch.no_grad()
def permute_linear(module: nn.Module, dim: str, index: torch.Tensor) -> None:
    """Reorder one dimension of a linear layer in place: its weight (and bias), and its LoRA tensors
    when it is an elastic module (``lora_B`` rows for ``out``, ``lora_A`` columns for ``in``)."""
    base = getattr(module, "base_layer", module)
    axis = 0 if dim == "out" else 1
    _reorder(base.weight, axis, index.to(base.weight.device))
    if dim == "out" and base.bias is not None:
        _reorder(base.bias, 0, index.to(base.bias.device))
    adapter = getattr(module, "lora_B" if dim == "out" else "lora_A", None)
    if adapter is not None:  # may live elsewhere than the base (a base on the meta device, a real adapter)
        _reorder(adapter.weight, axis, index.to(adapter.weight.device))


def permute_modules(linears: Mapping[str, nn.Module], permutation: ChannelPermutation) -> None:
    """Apply ``permutation`` to the named linear (or elastic) layers, in place."""
    for (name, dim), index in permutation.indices.items():
        permute_linear(linears[name], dim, index)


def unpermute_adapter(modules: Mapping[str, AdapterModule], permutation: ChannelPermutation) -> dict[str, AdapterModule]:
    """Adapter tensors of the permuted model expressed in the original channel order.

    ``lora_B`` rows follow the inverse of a module's ``out`` index and ``lora_A`` columns the inverse
    of its ``in`` index, so the adapter applies to the unpermuted base with the same function.
    """
    result = {}
    for name, m in modules.items():
        a, b = m.A, m.B
        out_inv, in_inv = permutation.inverse_index((name, "out")), permutation.inverse_index((name, "in"))
        if out_inv is not None:
            b = b.index_select(0, out_inv.to(b.device))
        if in_inv is not None:
            a = a.index_select(1, in_inv.to(a.device))
        result[name] = AdapterModule(a, b, m.alpha)
    return result


def _reorder(tensor: torch.Tensor, axis: int, index: torch.Tensor) -> None:
    tensor.copy_(tensor.index_select(axis, index))  # index_select copies first, so the overwrite is safe


def _metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (its JSON header)."""
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + length]).get("__metadata__", {}) or {}
