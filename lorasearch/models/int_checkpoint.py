"""INT checkpoints in the formats other tools read: ``compressed-tensors`` (written and read) and GPTQ (read).

A group-wise integer weight is three tensors here (`IntLayer`): unsigned codes ``q`` in
``[0, 2^bits - 1]`` (``[out, in]``), per-group scales ``s`` and unsigned integer zero points ``z``
(``[out, in / group_size]``); the weight is ``s (q - z)``.

* **compressed-tensors, ``pack-quantized``** (vLLM's native INT4 format; stock transformers loads it
  with the ``compressed-tensors`` package): per linear ``weight_packed`` (int32, the codes as one
  little-endian bit stream per row, ``bits`` bits each, rows padded to 32 codes),
  ``weight_scale`` (``[out, groups]``, in the model's dtype), ``weight_zero_point`` (int32, the zero
  points packed the same way along the *output* axis: ``[ceil(out * bits / 32), groups]``) and
  ``weight_shape``. compressed-tensors keeps codes and zero points signed, ``q - 2^(bits-1)``, and adds
  ``2^(bits-1)`` back when it packs them, so the packed bits are the unsigned ``q`` and ``z``.
  ``config.json`` carries the ``quantization_config`` (W4A16 asymmetric group scheme).
* **GPTQ** (AutoGPTQ / GPT-QModel, ``quant_method: gptq``, ``desc_act: false``): ``qweight``
  (int32, codes packed along the *input* axis, ``[in * bits / 32, out]``), ``qzeros`` (int32,
  ``[groups, out * bits / 32]``, packed along the output axis), ``scales`` (``[groups, out]``) and
  ``g_idx``. The ``gptq`` (v1) checkpoint format stores ``z - 1``; ``gptq_v2`` stores ``z``.
  Act-order checkpoints (``desc_act``, a permuted ``g_idx``) have no contiguous groups and are refused.

`load_int_model` builds the float model from such a folder without the ``compressed-tensors``
package: every quantized linear gets ``s (q - z)`` in the requested dtype (what stock loaders
compute), every other tensor loads as stored. `read_int_layers` gives the codes and grids
(``lorasearch.compress.quant.attach_grids`` turns them into the frozen grids QA-SparsePEFT needs).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from ..errors import ModelError

CT_METHOD = "compressed-tensors"
CT_FORMAT = "pack-quantized"
GPTQ_METHOD = "gptq"
CT_SUFFIXES = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape", "weight_g_idx")
GPTQ_SUFFIXES = ("qweight", "qzeros", "scales", "g_idx")
_CHUNK = 1 << 22  # codes per packing step: bounds the temporary memory for large layers


@dataclass
class IntLayer:
    """One group-wise quantized linear: unsigned ``codes`` (uint8, ``[out, in]``), ``scales`` and
    unsigned integer ``zeros`` (uint8), both ``[out, in / group_size]``."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    bits: int
    group_size: int

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``s (q - z)`` per group, computed in fp32 (or the scales' wider dtype) and cast to ``dtype``."""
        out, in_ = self.codes.shape
        groups = self.scales.shape[1]
        q = self.codes.float().view(out, groups, -1)
        weight = (q - self.zeros.float()[..., None]) * self.scales.float()[..., None]
        return weight.view(out, in_).to(dtype)


# ------------------------------------------------------------------------------ bit packing
def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned ``bits``-bit integers ``[rows, n]`` as int32 words ``[rows, ceil(n * bits / 32)]``: each
    row one little-endian bit stream (value ``j`` in bits ``j*bits .. j*bits + bits - 1``)."""
    _check_bits(bits)
    rows, n = values.shape
    padded = -(-n // 32) * 32
    words = -(-n * bits // 32)
    out = torch.empty(rows, words, dtype=torch.int32, device=values.device)
    step = max(1, _CHUNK // max(padded, 1))
    for start in range(0, rows, step):
        chunk = values[start:start + step].to(torch.int64)
        chunk = torch.nn.functional.pad(chunk, (0, padded - n))
        out[start:start + step] = _to_int32(_stream_words(chunk, bits))[:, :words]
    return out


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """The inverse of `pack_bits`: ``n`` unsigned values per row, as uint8."""
    _check_bits(bits)
    rows = packed.shape[0]
    out = torch.empty(rows, n, dtype=torch.uint8, device=packed.device)
    step = max(1, _CHUNK // max(n, 1))
    for start in range(0, rows, step):
        words = packed[start:start + step].to(torch.int64) & 0xFFFFFFFF
        out[start:start + step] = _stream_values(words, bits)[:, :n].to(torch.uint8)
    return out


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= 8:
        raise ModelError(f"bits {bits}: packed INT checkpoints hold 1 to 8 bits per weight; fix: use --bits 4")


def _stream_words(values: torch.Tensor, bits: int) -> torch.Tensor:
    rows, n = values.shape
    if 32 % bits == 0:  # whole values per word
        per = 32 // bits
        shifts = torch.arange(per, device=values.device) * bits
        return (values.view(rows, n // per, per) << shifts).sum(-1)
    bit_planes = (values[..., None] >> torch.arange(bits, device=values.device)) & 1
    stream = bit_planes.reshape(rows, -1, 32)
    return (stream << torch.arange(32, device=values.device)).sum(-1)


def _stream_values(words: torch.Tensor, bits: int) -> torch.Tensor:
    rows = words.shape[0]
    if 32 % bits == 0:
        per = 32 // bits
        shifts = torch.arange(per, device=words.device) * bits
        return ((words[..., None] >> shifts) & (2**bits - 1)).reshape(rows, -1)
    stream = ((words[..., None] >> torch.arange(32, device=words.device)) & 1).reshape(rows, -1)
    usable = stream.shape[1] // bits * bits
    planes = stream[:, :usable].reshape(rows, -1, bits)
    return (planes << torch.arange(bits, device=words.device)).sum(-1)


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


# --------------------------------------------------------------------- compressed-tensors: write
def ct_layer_tensors(name: str, layer: IntLayer) -> dict[str, torch.Tensor]:
    """The ``pack-quantized`` tensors of one asymmetric group-wise linear, keyed by full name."""
    out, in_ = layer.codes.shape
    return {
        f"{name}.weight_packed": pack_bits(layer.codes, layer.bits),
        f"{name}.weight_scale": layer.scales.contiguous(),
        f"{name}.weight_zero_point": pack_bits(layer.zeros.t(), layer.bits).t().contiguous(),
        f"{name}.weight_shape": torch.tensor([out, in_], dtype=torch.int64),
    }


def ct_quantization_config(bits: int, group_size: int, ignore: list[str]) -> dict[str, Any]:
    """The ``quantization_config`` of a ``pack-quantized`` W``bits``A16 asymmetric group checkpoint.

    ``dequantize: true`` asks stock transformers to de-quantise the weights while loading: its
    default path (compress the empty model, then load) sizes asymmetric zero points unpacked and
    refuses the checkpoint (transformers 5.25, compressed-tensors 0.20.0). vLLM reads the packed
    tensors and ignores the key.
    """
    weights = {"num_bits": bits, "type": "int", "symmetric": False, "strategy": "group", "group_size": group_size,
               "dynamic": False}
    return {
        "quant_method": CT_METHOD,
        "format": CT_FORMAT,
        "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": None,
                                      "output_activations": None, "format": CT_FORMAT}},
        "ignore": sorted(ignore),
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
        "sparsity_config": {},
        "transform_config": {},
        "dequantize": True,
    }


def save_int_model(folder: str | Path, model: nn.Module, layers: Mapping[str, IntLayer], tokenizer: Any = None) -> None:
    """``save_pretrained`` ``model`` into ``folder`` with ``layers`` (full linear names) written as
    compressed-tensors ``pack-quantized`` tensors instead of their float weights."""
    folder = Path(folder)
    if not layers:
        raise ModelError("no quantized layers to write; fix: quantize the model first (lorasearch quantize)")
    first = next(iter(layers.values()))
    if any((lay.bits, lay.group_size) != (first.bits, first.group_size) for lay in layers.values()):
        raise ModelError("the quantized layers mix bits or group sizes; fix: quantize the whole model in one call")
    state = {k: v for k, v in model.state_dict().items() if k.removesuffix(".weight") not in layers}
    for name, layer in layers.items():
        state.update(ct_layer_tensors(name, layer))
    model.save_pretrained(folder, state_dict={k: v.detach().contiguous().cpu() for k, v in state.items()})
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"] = ct_quantization_config(first.bits, first.group_size,
                                                           [n for n in linears if n not in layers])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


# ----------------------------------------------------------------------------------- reading
def int_checkpoint_kind(path: str | Path) -> str | None:
    """``compressed-tensors`` or ``gptq`` when ``path`` is a folder holding an INT checkpoint that
    lorasearch reads itself (see `read_int_layers`), else None (other compressed-tensors formats, such
    as FP8, are left to transformers)."""
    config = _quantization_config(path)
    if config is None:
        return None
    method = str(config.get("quant_method", "")).lower()
    if method == GPTQ_METHOD:
        return GPTQ_METHOD
    if method == CT_METHOD and config.get("format") == CT_FORMAT and _ct_int_weights_only(config):
        return CT_METHOD
    return None


def read_int_layers(path: str | Path) -> dict[str, IntLayer]:
    """Codes, scales and zero points of every quantized linear of the INT checkpoint in ``path``."""
    kind = int_checkpoint_kind(path)
    if kind is None:
        raise ModelError(f"{path}: no compressed-tensors pack-quantized or GPTQ checkpoint; fix: pass such a folder")
    tensors = dict(_tensors(Path(path), keep=_quantized_key(kind)))
    config = _quantization_config(path)
    return _read_ct(tensors, config, path) if kind == CT_METHOD else _read_gptq(tensors, config, path)


def load_int_model(path: str | Path, *, dtype: torch.dtype | None, device_map: Any = None,
                   trust_remote_code: bool = False, attn_implementation: str | None = None) -> nn.Module:
    """The float model of the INT checkpoint in ``path``: each quantized linear's weight is ``s (q - z)``
    in ``dtype`` (default: the checkpoint's own), every other tensor as stored. Needs no
    compressed-tensors or GPTQ package."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ModelError(f"{path}: model_type {config.model_type!r} is no causal LM transformers knows; lorasearch "
                         "reads INT checkpoints of stock architectures only; fix: use a Llama-like checkpoint")
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    dtype = dtype or getattr(config, "dtype", None) or torch.float32
    kind = int_checkpoint_kind(path)
    layers = read_int_layers(path)
    state = {k: v for k, v in _tensors(Path(path), keep=lambda k: not _quantized_key(kind)(k))}
    for name, layer in layers.items():
        state[f"{name}.weight"] = layer.dequantize(dtype)
    kwargs: dict[str, Any] = {"config": config, "state_dict": state, "dtype": dtype}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)].from_pretrained(None, **kwargs)


def _quantization_config(path: str | Path) -> dict[str, Any] | None:
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return None
    quant = config.get("quantization_config") if isinstance(config, dict) else None
    return quant if isinstance(quant, dict) else None


def _ct_int_weights_only(config: Mapping[str, Any]) -> bool:
    groups = config.get("config_groups") or {}
    return bool(groups) and all(
        isinstance(g, dict) and (g.get("weights") or {}).get("type") == "int" and not g.get("input_activations")
        for g in groups.values())


def _quantized_key(kind: str):
    suffixes = CT_SUFFIXES if kind == CT_METHOD else GPTQ_SUFFIXES
    return lambda key: key.rpartition(".")[2] in suffixes


def _tensors(folder: Path, keep) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
    files = [f for f in files if not f.name.startswith("lorasearch_")]
    if not files:
        raise ModelError(f"{folder}: no .safetensors weights; fix: pass a folder written by save_pretrained")
    for file in files:
        with safe_open(str(file), "pt") as handle:
            for key in handle.keys():
                if keep(key):
                    yield key, handle.get_tensor(key)


def _modules(tensors: Mapping[str, torch.Tensor], suffix: str) -> list[str]:
    return sorted(k.removesuffix("." + suffix) for k in tensors if k.endswith("." + suffix))


def _read_ct(tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any], path: str | Path) -> dict[str, IntLayer]:
    layers = {}
    for name in _modules(tensors, "weight_packed"):
        weights = _ct_scheme(config, name, path)
        bits = int(weights["num_bits"])
        out, in_ = (int(x) for x in tensors[f"{name}.weight_shape"].tolist())
        scales = tensors[f"{name}.weight_scale"].reshape(out, -1)
        group = in_ // scales.shape[1]
        if f"{name}.weight_g_idx" in tensors:
            _check_contiguous_groups(tensors[f"{name}.weight_g_idx"], group, f"{path}: {name}")
        codes = unpack_bits(tensors[f"{name}.weight_packed"], bits, in_)
        if weights.get("symmetric", True):
            zeros = torch.full(scales.shape, 2 ** (bits - 1), dtype=torch.uint8)
        else:
            zeros = unpack_bits(tensors[f"{name}.weight_zero_point"].reshape(-1, scales.shape[1]).t(), bits, out).t()
        layers[name] = IntLayer(codes, scales, zeros.contiguous(), bits, group)
    return layers


def _ct_scheme(config: Mapping[str, Any], name: str, path: str | Path) -> Mapping[str, Any]:
    for group in (config.get("config_groups") or {}).values():
        for target in group.get("targets", []):
            exact = target == name
            pattern = target.startswith("re:") and re.match(target[3:], name)
            by_class = not target.startswith("re:") and "." not in target and target[:1].isupper()
            if exact or pattern or by_class:
                weights = group["weights"]
                if weights.get("strategy") not in ("group", "channel"):
                    raise ModelError(f"{path}/config.json: {name}: strategy {weights.get('strategy')!r}; lorasearch "
                                     "reads group-wise or per-channel INT weights; fix: quantize with strategy group")
                return weights
    raise ModelError(f"{path}/config.json: {name} has packed weights but no config group targets it; fix: re-save the checkpoint")


def _read_gptq(tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any], path: str | Path) -> dict[str, IntLayer]:
    bits = int(config.get("bits", 4))
    if 32 % bits:
        raise ModelError(f"{path}/config.json: GPTQ with {bits} bits; lorasearch reads 2, 4 or 8 bits; fix: use a 4-bit checkpoint")
    if config.get("desc_act"):
        raise ModelError(f"{path}/config.json: desc_act: true (act-order): its groups are not contiguous inputs, so they "
                         "are no grid lorasearch can train on; fix: use a checkpoint quantized with desc_act false")
    version = str(config.get("checkpoint_format", "gptq")).lower()
    layers = {}
    for name in _modules(tensors, "qweight"):
        scales = tensors[f"{name}.scales"].t().contiguous()  # [out, groups]
        out = scales.shape[0]
        in_ = tensors[f"{name}.qweight"].shape[0] * 32 // bits
        group = in_ // scales.shape[1]
        if f"{name}.g_idx" in tensors:
            _check_contiguous_groups(tensors[f"{name}.g_idx"], group, f"{path}: {name}")
        codes = unpack_bits(tensors[f"{name}.qweight"].t(), bits, in_)
        zeros = unpack_bits(tensors[f"{name}.qzeros"], bits, out).t().to(torch.int16)
        if version != "gptq_v2":
            zeros = (zeros + 1) % 2**bits  # v1 stores z - 1
        layers[name] = IntLayer(codes, scales, zeros.to(torch.uint8).contiguous(), bits, group)
    return layers


def _check_contiguous_groups(g_idx: torch.Tensor, group: int, where: str) -> None:
    expected = torch.arange(g_idx.numel()) // group
    if not torch.equal(g_idx.to(torch.int64).cpu(), expected):
        raise ModelError(f"{where}: g_idx is permuted (act-order), so its groups are not contiguous inputs; "
                         "fix: use a checkpoint quantized without act-order (desc_act false, actorder none)")
