"""GPTQ (Frantar et al. 2023) for a base's decoder linears, with llm-compressor's implementation.

GPTQ rounds a weight's columns one after another and moves every later column to make up for each
rounding error, weighted by the inverse Hessian ``H = 2 X^T X / n`` of the layer's calibration
inputs. The column sweep, the dampening and the Cholesky factorisation are llm-compressor's
(`llmcompressor.modifiers.gptq.gptq_quantize.quantize_weight`, `accumulate_hessian`); lorasearch
runs the calibration block by block as Wanda does (each block's inputs come from the
already-quantized blocks before it), on ``device``, and hands it the grid: the same group-wise
asymmetric min-max scales and integer zero points as round-to-nearest
(`lorasearch.compress.quant.quantize_weight`), so only the codes differ. Columns stay in their
order (no act-order), which keeps the groups contiguous, as compressed-tensors and vLLM's kernels
want.

A sparse base stays sparse: GPTQ's updates also move weights that were zero, so after each layer
the codes of the base's zero weights are set back to the zero point (they read back as 0).

``pip install --no-deps llmcompressor==0.14.0.1`` (its metadata asks for transformers <= 5.17, the
project runs 5.25: see the README's install line).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from torch import nn

from ..errors import CompressError
from ..models.anatomy import block_linears, decoder_layers
from ..models.calibration import capture_layer_inputs, on_device, outside_layers_on, run_layer, with_hidden
from .quant import GRID_ATTR, QuantGrid, check_group_size, quantize_weight

GPTQ_PACKAGE = "llmcompressor"
INSTALL_HINT = "pip install --no-deps llmcompressor==0.14.0.1 -c constraints.txt"


def gptq_available() -> bool:
    """Whether llm-compressor (which `gptq_quantize_model` runs) is installed."""
    return importlib.util.find_spec(GPTQ_PACKAGE) is not None


def _library() -> Any:
    if not gptq_available():
        raise CompressError(f"--method gptq: needs llm-compressor, which is not installed; fix: {INSTALL_HINT} "
                            "(or use --method rtn)")
    from llmcompressor.modifiers.gptq import gptq_quantize, helpers

    return gptq_quantize, helpers


@torch.no_grad()
def gptq_quantize_model(model: nn.Module, tokens: torch.Tensor, bits: int = 4, group_size: int = 128,
                        batch_size: int = 8, device: torch.device | None = None, dampening: float = 0.01,
                        block_size: int = 128) -> dict[str, torch.Tensor]:
    """Quantize every decoder linear of ``model`` in place with GPTQ on the calibration ``tokens``
    (``[samples, seq_len]``): weights become their de-quantised values, grids are attached as
    ``layer.quant_grid``. Returns the uint8 codes per layer name.

    ``device`` (default: the model's) is where the work runs, one block at a time. ``dampening``
    is added to the Hessian's diagonal as a share of its mean (GPTQ's ``percdamp``); ``block_size``
    columns are swept between two updates of the rest.
    """
    gptq_quantize, helpers = _library()
    from compressed_tensors.quantization import QuantizationArgs

    check_group_size(model, group_size)
    args = QuantizationArgs(num_bits=bits, type="int", symmetric=False, strategy="group", group_size=group_size)
    device = device or next(model.parameters()).device
    with outside_layers_on(model, device):
        inputs = capture_layer_inputs(model, tokens, batch_size)
    prefix = next(n for n, m in model.named_modules() if m is decoder_layers(model))
    codes: dict[str, torch.Tensor] = {}
    for index, layer in enumerate(decoder_layers(model)):
        with on_device(layer, device):
            linears = block_linears(layer)
            hessians = _hessians(layer, linears, inputs, helpers)
            for name, linear in linears.items():
                codes[f"{prefix}.{index}.{name}"] = _quantize_linear(linear, *hessians[name], args, bits, group_size,
                                                                      dampening, block_size, gptq_quantize)
            inputs = [with_hidden(a, k, run_layer(layer, a, k)) for a, k in inputs]
    for name, linear in _named_linears(model, prefix).items():  # grids follow the layers back home
        grid = getattr(linear, GRID_ATTR)
        home = linear.weight.device
        setattr(linear, GRID_ATTR, QuantGrid(grid.scales.to(home), grid.zeros.to(home), grid.bits, grid.group_size))
        codes[name] = codes[name].to(home)
    return codes


def _named_linears(model: nn.Module, prefix: str) -> dict[str, nn.Linear]:
    return {f"{prefix}.{i}.{n}": m for i, layer in enumerate(decoder_layers(model)) for n, m in block_linears(layer).items()}


def _hessians(layer: nn.Module, linears: dict[str, nn.Linear], inputs: list, helpers: Any) -> dict[str, list]:
    """``[H, n]`` per linear of the block: the sum of ``2 x x^T`` over its calibration inputs and their count."""
    stats = {name: [helpers.make_empty_hessian(m), torch.zeros((), dtype=torch.long)] for name, m in linears.items()}

    def hook(name):
        def accumulate(module, args, _out):
            stats[name][0], stats[name][1] = helpers.accumulate_hessian(args[0].detach(), module, *stats[name])
        return accumulate

    handles = [m.register_forward_hook(hook(name)) for name, m in linears.items()]
    try:
        for args, kwargs in inputs:
            run_layer(layer, args, kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return stats


def _quantize_linear(linear: nn.Linear, hessian: torch.Tensor, samples: torch.Tensor, args: Any, bits: int,
                     group_size: int, dampening: float, block_size: int, gptq_quantize: Any) -> torch.Tensor:
    """GPTQ one linear on its round-to-nearest grid; set its weight to the de-quantised codes, attach the grid."""
    weight = linear.weight
    grid, _ = quantize_weight(weight, bits, group_size)
    signed_zero = grid.zeros.float() - 2 ** (bits - 1)  # compressed-tensors keeps zero points signed
    swept, _, _ = gptq_quantize.quantize_weight(
        weights=weight.detach().float()[None].clone(), hessians=(hessian / samples.clamp(min=1))[None],
        scale=grid.scales.float()[None], zero_point=signed_zero[None], global_scale=None, quant_args=args,
        blocksize=block_size, percdamp=dampening)
    codes = grid.quantize(swept[0]).to(torch.uint8)
    zero = weight == 0
    if zero.any():  # GPTQ moved the sparse base's zeros: give them back
        per_input = grid.zeros.repeat_interleave(group_size, dim=1)[:, : weight.shape[1]]
        codes = torch.where(zero, per_input.to(codes.dtype), codes)
    weight.copy_(grid.dequantize(codes, weight.dtype))
    setattr(linear, GRID_ATTR, grid)
    return codes
