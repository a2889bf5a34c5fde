"""Calibration data and layer-by-layer replay of a decoder's blocks (Wanda, quantization, reordering).

Calibration samples are ``n_samples`` windows of ``seq_len`` tokens cut from one token stream made
of a task file's training texts (prompt plus answer), as Wanda cuts C4 documents: no padding, so
no attention mask is needed and every token counts.

The replay is layer-sequential, the reference's procedure: the inputs of the first block are
captured, then each block in turn runs on them and its outputs become the next block's inputs.
On a compute device other than the model's (a GPU for a model kept in CPU memory), only the
embeddings, the block at hand and the calibration activations are on the device at a time.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ..data import Record, format_example
from ..errors import CalibrationError
from .anatomy import decoder_layers


def calibration_tokens(tokenizer: Any, records: Sequence[Record], n_samples: int, seq_len: int) -> torch.Tensor:
    """``[n_samples, seq_len]`` token ids: consecutive windows of the records' concatenated texts.

    Raises `CalibrationError` when the records hold fewer than ``n_samples * seq_len`` tokens.
    """
    if n_samples < 1 or seq_len < 1:
        raise CalibrationError(f"calibration: {n_samples} samples of {seq_len} tokens; fix: use --samples >= 1 and --seq-len >= 1")
    need = n_samples * seq_len
    stream: list[int] = []
    for record in records:
        stream += tokenizer(format_example(record), add_special_tokens=False)["input_ids"]
        if len(stream) >= need:
            break
    if len(stream) < need:
        raise CalibrationError(
            f"calibration set too small: {len(records)} records give {len(stream)} tokens, but {n_samples} samples "
            f"of {seq_len} tokens need {need}; fix: use a larger task file, fewer --samples or a shorter --seq-len"
        )
    return torch.tensor(stream[:need], dtype=torch.long).view(n_samples, seq_len)


@contextlib.contextmanager
def on_device(module: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """``module`` moved to ``device`` for the block, then back where it was."""
    home = next(module.parameters()).device
    module.to(device)
    try:
        yield module
    finally:
        module.to(home)


@contextlib.contextmanager
def outside_layers_on(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Everything but the decoder blocks (embeddings, rotary tables, norms, head) on ``device`` for the block."""
    layers = decoder_layers(model)
    inner = getattr(model, "model", model)
    outside = [m for name, m in inner.named_children() if m is not layers]
    with contextlib.ExitStack() as stack:
        for module in outside:
            if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
                home = next(iter(list(module.parameters()) + list(module.buffers()))).device
                module.to(device)
                stack.callback(module.to, home)
        yield


class _Stop(Exception):
    pass


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, tokens: torch.Tensor, batch_size: int) -> list[tuple[tuple, dict]]:
    """The positional and keyword inputs of the first decoder block, one entry per batch of ``tokens``."""
    first = decoder_layers(model)[0]
    captured: list[tuple[tuple, dict]] = []

    def hook(module, args, kwargs):
        captured.append((args, kwargs))
        raise _Stop

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    device = _input_device(model)
    try:
        for start in range(0, len(tokens), batch_size):
            try:
                model(input_ids=tokens[start:start + batch_size].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return captured


def run_layer(layer: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
    """One decoder block on captured inputs; returns its hidden states (tuple outputs unwrapped)."""
    out = layer(*args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    """The captured inputs with the hidden states replaced (the previous block's output)."""
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _input_device(model: nn.Module) -> torch.device:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return embeddings.weight.device if embeddings is not None else next(model.parameters()).device
