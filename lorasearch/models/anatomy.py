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


def bytes_per_token(model: nn.Module) -> int:
    """Device memory one token of an evaluation batch takes at most, from the model's config:

    ``dtype_bytes * (2 * layers * kv_heads * head_dim + 6 * hidden + 3 * intermediate) + 8 * vocab``

    the key/value cache (kept for every token of the batch, in the model's dtype), one decoder
    layer's activations (freed layer by layer under inference mode: the residual stream, the
    attention's and the MLP's inputs and outputs) and the fp32 logits with their log-softmax of a
    scored token. For Llama-2-7B in fp16 that is 2 * 319,744 + 256,000 = 895,488 bytes.
    """
    config = model.config
    dtype_bytes = next(model.parameters()).element_size()
    hidden = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    intermediate = int(getattr(config, "intermediate_size", None) or 4 * hidden)
    per_token = 2 * int(config.num_hidden_layers) * kv_heads * head_dim + 6 * hidden + 3 * intermediate
    return dtype_bytes * per_token + 8 * int(config.vocab_size)
