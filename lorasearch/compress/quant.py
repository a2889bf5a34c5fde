"""Group-wise asymmetric integer quantization of a base model (SQFT's INT4 base): round-to-nearest here,
GPTQ through llm-compressor (`lorasearch.compress.gptq`).

Each row of a weight is cut into groups of ``group_size`` consecutive inputs; a group gets a scale
``s = (max - min) / (2^bits - 1)`` (rounded to the weight's dtype, the dtype it is stored in) and an
*integer* zero point ``z = round(-min / s)``, with the range widened to hold 0
(``min <= 0 <= max``). A weight is stored as the code ``q = clamp(round(w / s) + z, 0, 2^bits - 1)``
and read back as ``s * (q - z)`` (the paper's equations 3 and 4), so a zero weight maps to code
``z`` and back to exactly 0: quantization keeps a sparse base sparse.

A quantized folder is a ``compressed-tensors`` ``pack-quantized`` checkpoint (W4A16, asymmetric,
group-wise; `lorasearch.models.int_checkpoint`): stock ``from_pretrained`` loads it where the
``compressed-tensors`` package is installed, vLLM serves it, and lorasearch reads it without that
package. ``lorasearch_quant.json`` beside it records the method, the layers and the share of zero
weights (a sparse base is written dense: its zeros are codes like any other). `load_quantized`
loads such a folder, or any compressed-tensors / GPTQ INT checkpoint, with each layer's `QuantGrid`
attached as ``layer.quant_grid``, which QA-SparsePEFT needs. Folders written before (de-quantised
float weights plus ``lorasearch_quant.safetensors``) still load.

`quantize_model` also keeps each layer's weights from before quantization, ``W^p``, and the folder
stores them in ``lorasearch_prequant.safetensors`` (the decoder linears once more, in the model's
dtype: about the size of the float checkpoint's decoder layers). QA-SparsePEFT's equation 3
quantizes ``W^p + L^p``, not ``s (q - z) + L^p``: on the de-quantised base an adapter entry below
half a step rounds back to the same code and has no effect. ``load_quantized(..., float_base=True)``
attaches them as ``layer.prequant_weight`` after checking that they reproduce the codes. A folder
without them (a merged QA export, a GPTQ base, a checkpoint from elsewhere) loads de-quantised only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import CompressError
from ..io import atomic_write_json, staged
from ..models.anatomy import decoder_linears
from ..models.int_checkpoint import IntLayer, int_checkpoint_kind, read_int_layers, save_int_model
from ..models.loading import forget_dequantized_gguf, load_model
from ..network.supernet import QUANT_FILE

CODES_FILE = "lorasearch_quant.safetensors"  # the codes of folders written before compressed-tensors
PREQUANT_FILE = "lorasearch_prequant.safetensors"
GRID_ATTR = "quant_grid"
PREQUANT_ATTR = "prequant_weight"


@dataclass
class QuantGrid:
    """The frozen grid of one linear: per-group ``scales`` and integer ``zeros`` (``[out, in / group_size]``)."""

    scales: torch.Tensor
    zeros: torch.Tensor
    bits: int
    group_size: int

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    def sliced(self, out: int, in_: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Scales and zeros of the top-left ``out x in_`` slice (``in_`` must be a multiple of the group size)."""
        if in_ % self.group_size:
            raise CompressError(f"a width of {in_} inputs cuts a quantization group of {self.group_size}; fix: use widths that are multiples of the group size")
        g = in_ // self.group_size
        return self.scales[:out, :g], self.zeros[:out, :g]

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        """Codes of ``w`` (a top-left slice of the weight) on this grid: equation 3."""
        s, z = self._grouped(w)
        q = torch.clamp(torch.round(w.float().view(*s.shape[:2], -1) / s) + z, 0, self.qmax)
        return q.view_as(w)

    def dequantize(self, codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``s * (q - z)``: equation 4."""
        s, z = self._grouped(codes)
        return ((codes.float().view(*s.shape[:2], -1) - z) * s).view(codes.shape).to(dtype)

    def fake_quantize(self, w: torch.Tensor) -> torch.Tensor:
        """``dequantize(quantize(w))`` forward (exactly), identity backward (straight-through estimator,
        also where the codes are clamped)."""
        q = self.dequantize(self.quantize(w.detach()), w.dtype)
        return q + (w - w.detach())  # w - w is exactly 0: the value is q, the gradient flows to w unchanged

    def int_layer(self, codes: torch.Tensor) -> IntLayer:
        """``codes`` on this grid as the `IntLayer` a checkpoint stores."""
        return IntLayer(codes.to(torch.uint8), self.scales, self.zeros.to(torch.uint8), self.bits, self.group_size)

    @classmethod
    def of(cls, layer: IntLayer) -> "QuantGrid":
        """The grid of a stored `IntLayer`."""
        return cls(layer.scales, layer.zeros, layer.bits, layer.group_size)

    def _grouped(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, z = self.sliced(*w.shape)
        s, z = s.to(w.device), z.to(w.device)
        return s.float()[..., None], z.float()[..., None]


def check_group_size(model: nn.Module, group_size: int) -> None:
    """Refuse a group size that does not divide every decoder linear's input size."""
    if group_size < 1:
        raise CompressError(f"--group-size {group_size}: must be >= 1; fix: e.g. --group-size 128")
    for name, layer in decoder_linears(model).items():
        if layer.in_features % group_size:
            divisors = [g for g in (256, 128, 64, 32, 16) if all(m.in_features % g == 0 for m in decoder_linears(model).values())]
            hint = f"e.g. --group-size {divisors[0]}" if divisors else "a divisor of every input size"
            raise CompressError(
                f"--group-size {group_size}: {name} has {layer.in_features} inputs, not a multiple of {group_size}; fix: use {hint}"
            )


def quantize_weight(w: torch.Tensor, bits: int = 4, group_size: int = 128) -> tuple[QuantGrid, torch.Tensor]:
    """Round-to-nearest asymmetric quantization of ``w`` (``[out, in]``): its grid and its uint8 codes.

    The scales are rounded to ``w``'s dtype (the dtype a checkpoint stores them in), so the grid
    lorasearch computes with is the one every loader reads back."""
    if not 2 <= bits <= 8:
        raise CompressError(f"--bits {bits}: supported are 2 to 8 bits; fix: use --bits 4")
    out, inp = w.shape
    if inp % group_size:
        raise CompressError(f"--group-size {group_size}: does not divide the input size {inp}; fix: use a divisor of {inp}")
    groups = w.detach().float().view(out, inp // group_size, group_size)
    lo = groups.amin(-1).clamp(max=0)
    hi = groups.amax(-1).clamp(min=0)
    qmax = 2**bits - 1
    stored = w.dtype if w.is_floating_point() else torch.float32
    scales = ((hi - lo) / qmax).to(stored)
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    zeros = torch.clamp(torch.round(-lo / scales.float()), 0, qmax)
    grid = QuantGrid(scales, zeros.to(torch.uint8), bits, group_size)
    return grid, grid.quantize(w).to(torch.uint8)


def dequantize(grid: QuantGrid, codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight that ``codes`` stand for on ``grid``."""
    return grid.dequantize(codes, dtype)


def fake_quantize(w: torch.Tensor, grid: QuantGrid) -> torch.Tensor:
    """Quantize-dequantize ``w`` on the frozen ``grid`` with a straight-through gradient."""
    return grid.fake_quantize(w)


@torch.no_grad()
def quantize_model(model: nn.Module, bits: int = 4, group_size: int = 128,
                   device: torch.device | None = None, keep_float: bool = True) -> dict[str, torch.Tensor]:
    """Quantize every decoder linear in place (weights become their de-quantised values, grids attached).

    ``device`` (default: each layer's own) is where the rounding runs, one linear at a time, so a
    model in CPU memory quantizes on a GPU. Returns the uint8 codes per layer name, where the
    weights are. Embeddings and ``lm_head`` stay in their precision. With ``keep_float`` (default)
    each layer keeps its weights from before, ``W^p``, as ``layer.prequant_weight`` (one more copy of
    the decoder linears in memory), which `save_quantized` writes for QA-SparsePEFT.
    """
    check_group_size(model, group_size)
    codes = {}
    for name, layer in decoder_linears(model).items():
        home = layer.weight.device
        grid, q = quantize_weight(layer.weight.to(device or home), bits, group_size)
        grid = QuantGrid(grid.scales.to(home), grid.zeros.to(home), grid.bits, grid.group_size)
        q = q.to(home)
        if keep_float:
            setattr(layer, PREQUANT_ATTR, layer.weight.detach().clone())
        layer.weight.copy_(grid.dequantize(q, layer.weight.dtype))
        setattr(layer, GRID_ATTR, grid)
        codes[name] = q
    return codes


def layer_codes(model: nn.Module) -> dict[str, torch.Tensor]:
    """The codes of every quantized decoder linear's current weight on its grid."""
    return {name: layer.quant_grid.quantize(layer.weight).to(torch.uint8)
            for name, layer in decoder_linears(model).items() if hasattr(layer, GRID_ATTR)}


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte along the last axis (even length)."""
    c = codes.to(torch.uint8)
    return c[..., 0::2] | (c[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of `pack_int4`."""
    return torch.stack((packed & 0x0F, packed >> 4), dim=-1).flatten(-2)


def write_quantized_folder(folder: Path, model: nn.Module, tokenizer: Any = None,
                           provenance: Mapping[str, Any] | None = None) -> None:
    """Save ``model``, whose decoder linears carry grids, into ``folder`` as a compressed-tensors
    ``pack-quantized`` checkpoint, with ``lorasearch_quant.json`` (and ``W^p`` where the layers keep it)."""
    from safetensors.torch import save_file

    forget_dequantized_gguf(model)
    linears = decoder_linears(model)
    layers = {name: getattr(linears[name], GRID_ATTR).int_layer(q) for name, q in layer_codes(model).items()}
    if not layers:
        raise CompressError("the model has no quantized layers; fix: quantize it first (lorasearch quantize)")
    save_int_model(folder, model, layers, tokenizer)
    prequant = {name: getattr(linears[name], PREQUANT_ATTR) for name in layers if hasattr(linears[name], PREQUANT_ATTR)}
    if prequant and len(prequant) != len(layers):
        missing = next(n for n in layers if n not in prequant)
        raise CompressError(f"{missing}: no weights from before quantization, unlike the other layers; fix: quantize "
                            "the whole model in one call of quantize_model")
    if prequant:
        save_file({k: v.detach().contiguous().cpu() for k, v in prequant.items()}, str(folder / PREQUANT_FILE))
    first = next(iter(layers.values()))
    atomic_write_json(folder / QUANT_FILE, {
        "format": "lorasearch-quant", "version": 2, "checkpoint": "compressed-tensors", "method": "rtn",
        "asymmetric": True, "bits": first.bits, "group_size": first.group_size, **dict(provenance or {}),
        "sparsity": zero_share(linears.values()), "layers": list(layers),
        "float_base": PREQUANT_FILE if prequant else None,
    })


def zero_share(linears) -> float:
    """The share of zero weights over ``linears`` (a sparse base's zeros, kept by quantization)."""
    weights = [m.weight for m in linears]
    total = sum(w.numel() for w in weights)
    return float(sum(int((w == 0).sum()) for w in weights) / total) if total else 0.0


def save_quantized(model: nn.Module, tokenizer: Any, out: str | Path, provenance: Mapping[str, Any] | None = None) -> Path:
    """Save a quantized model as a compressed-tensors INT checkpoint (see `write_quantized_folder`)."""
    with staged(out, CompressError) as tmp:
        write_quantized_folder(tmp, model, tokenizer, provenance)
    return Path(out)


def is_quantized_folder(path: str | Path) -> bool:
    """Whether ``path`` is an INT-quantized base: written by `save_quantized` (or a merged QA export), or
    a compressed-tensors ``pack-quantized`` / GPTQ checkpoint from elsewhere."""
    return (Path(path) / QUANT_FILE).is_file() or int_checkpoint_kind(path) is not None


def has_float_base(path: str | Path) -> bool:
    """Whether the quantized folder ``path`` keeps the weights from before quantization (``W^p``)."""
    return (Path(path) / PREQUANT_FILE).is_file()


def stored_layers(path: str | Path) -> dict[str, IntLayer]:
    """The codes and grids of every quantized linear in the folder ``path`` (any kind `is_quantized_folder` accepts)."""
    path = Path(path)
    if not (path / CODES_FILE).is_file():
        return read_int_layers(path)
    from safetensors.torch import load_file

    meta = json.loads((path / QUANT_FILE).read_text())
    tensors = load_file(str(path / CODES_FILE))
    bits, group = int(meta["bits"]), int(meta["group_size"])
    layers = {}
    for name in meta["layers"]:
        codes = tensors[f"{name}.codes"]
        layers[name] = IntLayer(unpack_int4(codes) if bits == 4 else codes, tensors[f"{name}.scales"],
                                tensors[f"{name}.zeros"], bits, group)
    return layers


@torch.no_grad()
def attach_grids(model: nn.Module, path: str | Path, float_base: bool = False) -> None:
    """Rebuild the decoder linears' weights from ``path``'s codes and attach their grids; with
    ``float_base`` (and a folder that has them) also attach the weights from before quantization."""
    from safetensors.torch import load_file

    path = Path(path)
    prequant = load_file(str(path / PREQUANT_FILE)) if float_base and has_float_base(path) else {}
    linears = decoder_linears(model)
    modules = dict(model.named_modules())
    for name, stored in stored_layers(path).items():
        if name not in linears:
            if isinstance(modules.get(name), nn.Linear):
                continue  # e.g. a quantized lm_head: loaded de-quantised, no grid (adapters sit in the decoder)
            raise CompressError(f"{path}: quantized layer {name} is not a decoder linear of the model; fix: load "
                                "the model the checkpoint was quantized from")
        layer = linears[name]
        if tuple(stored.codes.shape) != tuple(layer.weight.shape):
            raise CompressError(f"{path}: {name}: codes of shape {tuple(stored.codes.shape)} for a weight of shape "
                                f"{tuple(layer.weight.shape)}; fix: load the model the checkpoint was quantized from")
        device = layer.weight.device
        grid = QuantGrid(stored.scales.to(device), stored.zeros.to(device), stored.bits, stored.group_size)
        layer.weight.copy_(grid.dequantize(stored.codes.to(device), layer.weight.dtype))
        setattr(layer, GRID_ATTR, grid)
        if prequant:
            setattr(layer, PREQUANT_ATTR, _checked_float_weight(prequant, name, grid, stored.codes, path))


def _checked_float_weight(prequant: Mapping[str, torch.Tensor], name: str, grid: QuantGrid, codes: torch.Tensor,
                          path: Path) -> torch.Tensor:
    """``W^p`` of one layer, refused unless it rounds to the stored codes (else it is another model's)."""
    weight = prequant.get(name)
    cpu = QuantGrid(grid.scales.cpu(), grid.zeros.cpu(), grid.bits, grid.group_size)
    if weight is None or weight.shape != codes.shape or not torch.equal(cpu.quantize(weight).to(torch.uint8), codes.cpu()):
        raise CompressError(
            f"{path / PREQUANT_FILE}: {name}: the weights from before quantization do not round to the stored codes; "
            f"fix: quantize the model again (lorasearch quantize), or delete {PREQUANT_FILE} to train against the "
            "de-quantised base"
        )
    return weight.to(device=grid.scales.device)


def load_quantized(path: str | Path, float_base: bool = False, **load_kwargs: Any):
    """Load a quantized folder: a `LoadedModel` whose linears hold the de-quantised codes and carry their
    grids (and, with ``float_base``, their weights from before quantization where the folder has them)."""
    if not is_quantized_folder(path):
        raise CompressError(f"{path}: no {QUANT_FILE} and no compressed-tensors or GPTQ INT checkpoint; fix: quantize "
                            "the model first (lorasearch quantize --out ...)")
    loaded = load_model(str(path), **load_kwargs)
    attach_grids(loaded.model, path, float_base)
    return loaded
