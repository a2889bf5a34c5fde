"""Physically pruned Mode B models: a config that says what they are, and loading them back.

When every layer keeps the same sizes, `fit_stock_config` makes ``config.json`` a stock config
(smaller ``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads``, with an explicit
``head_dim``) and ``AutoModelForCausalLM.from_pretrained`` loads the folder. When sizes differ per
layer, no stock config class can express them: ``lorasearch_pruned.json`` lists every linear layer
whose shape differs from ``config.json``, and `load_pruned` rebuilds the model (it loads both kinds).
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from ..errors import ExportError

PRUNED_FILE = "lorasearch_pruned.json"


def fit_stock_config(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Set the model's config to its most common per-layer sizes; return the linears it cannot express."""
    config = model.config
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    intermediate = _mode(m.out_features for n, m in linears.items() if n.endswith("mlp.up_proj"))
    heads = _mode(m.out_features // head_dim for n, m in linears.items() if n.endswith("self_attn.q_proj"))
    kv_heads = _mode(m.out_features // head_dim for n, m in linears.items() if n.endswith("self_attn.k_proj"))
    sizes = {"intermediate_size": intermediate, "num_attention_heads": heads, "num_key_value_heads": kv_heads}
    for key, value in sizes.items():
        if value is not None:
            setattr(config, key, value)
    config.head_dim = head_dim
    return _unexpressed_linears(model, linears)


def _mode(values: Iterator[int]) -> int | None:
    counts = Counter(values)
    return max(counts, key=lambda v: (counts[v], v)) if counts else None


def _unexpressed_linears(model: nn.Module, linears: Mapping[str, nn.Linear]) -> dict[str, dict[str, Any]]:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        reference = AutoModelForCausalLM.from_config(copy.deepcopy(model.config))
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    actual = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    odd = {}
    for key in sorted(set(expected) | set(actual)):
        if expected.get(key) == actual.get(key):
            continue
        module = key.rsplit(".", 1)[0]
        if module not in linears or key not in expected or key not in actual:
            raise ExportError(
                f"--format pruned: {key} has shape {actual.get(key)} but the config gives {expected.get(key)}; "
                "only linear layers can be pruned"
            )
        layer = linears[module]
        odd[module] = {"in": layer.in_features, "out": layer.out_features, "bias": layer.bias is not None}
    return odd


def load_pruned(
    path: str | Path, *, dtype: torch.dtype | None = None, attn_implementation: str | None = None
) -> nn.Module:
    """Load a model written by `export_pruned` (or any ``save_pretrained`` folder).

    Without per-layer sizes (or without ``lorasearch_pruned.json``) this is
    ``AutoModelForCausalLM.from_pretrained``; otherwise the stock architecture is built from
    ``config.json``, the linears listed in ``lorasearch_pruned.json`` are replaced by smaller ones,
    and the saved weights are loaded strictly.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    layout_file = path / PRUNED_FILE
    layout = json.loads(layout_file.read_text()) if layout_file.is_file() else {}
    kwargs: dict[str, Any] = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if not layout.get("linears"):
        return AutoModelForCausalLM.from_pretrained(path, **({"dtype": dtype} if dtype else {}), **kwargs).eval()
    config = AutoConfig.from_pretrained(path)
    state = _read_weights(path)
    with _no_init():
        model = AutoModelForCausalLM.from_config(config, **kwargs)
    model.to(dtype or next(iter(state.values())).dtype)
    for name, shape in layout["linears"].items():
        model.set_submodule(name, _empty_linear(shape, model))
    _load_strict(model, state, path)
    return model.eval()


def _empty_linear(shape: Mapping[str, Any], model: nn.Module) -> nn.Linear:
    ref = next(model.parameters())
    return torch.nn.utils.skip_init(nn.Linear, int(shape["in"]), int(shape["out"]), bias=bool(shape["bias"]),
                                    device=ref.device, dtype=ref.dtype)


def _no_init() -> contextlib.AbstractContextManager:
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers < 5
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    files = ["model.safetensors"]
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    state: dict[str, torch.Tensor] = {}
    for name in files:
        if not (path / name).is_file():
            raise ExportError(f"{path / name}: missing; fix: re-export the pruned model")
        state.update(load_file(str(path / name)))
    return state


def _load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ExportError(f"{path}: unexpected tensor {result.unexpected_keys[0]}; fix: re-export the pruned model")
    model.tie_weights()
    tensors = model.state_dict()
    loaded = {t.data_ptr() for k, t in tensors.items() if k not in result.missing_keys}
    untied = [k for k in result.missing_keys if tensors[k].data_ptr() not in loaded]
    if untied:
        raise ExportError(f"{path}: tensor {untied[0]} is missing; fix: re-export the pruned model")
