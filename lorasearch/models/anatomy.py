"""A decoder's anatomy: its list of blocks and the linear layers inside them.

Shared by everything that walks a decoder block by block (Wanda, quantization, importance
reordering), so each finds the blocks the same way.
"""

from __future__ import annotations

from torch import nn

from ..errors import ModelError


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's list of decoder blocks (``model.model.layers`` for Llama-like models)."""
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise ModelError(f"{type(model).__name__}: no decoder layers found (model.model.layers); only decoder-only LMs are supported")
    return layers


def block_linears(layer: nn.Module) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` modules of one decoder block, by name relative to the block (adapters left out)."""
    return {name: m for name, m in layer.named_modules() if type(m) is nn.Linear and "lora_" not in name}


def decoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` inside the decoder blocks, by full name."""
    layers = decoder_layers(model)
    prefix = next(n for n, m in model.named_modules() if m is layers)
    return {f"{prefix}.{i}.{n}": m for i, layer in enumerate(layers) for n, m in block_linears(layer).items()}
