"""Cost of a sub-network: parameters (and, with the objectives issue, MACs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .supernet import SuperNetwork


@dataclass(frozen=True)
class ParameterCounts:
    """Parameters of one sub-network.

    Attributes:
        total: base parameters at the active widths plus the active adapter parameters (unmerged).
        trainable: the active adapter parameters.
        base: base parameters at the active widths (what a merged model holds).
    """

    total: int
    trainable: int
    base: int


def parameter_counts(net: SuperNetwork, config: Mapping[str, Any] | None = None) -> ParameterCounts:
    """Count the parameters of ``config`` (default: the active config) in closed form."""
    sizes = net.binding.resolve(config if config is not None else net.active_config)
    base = sum(p.numel() for n, p in net.model.named_parameters() if ".lora_" not in n)
    trainable = 0
    for name, m in net.elastic.items():
        dims = sizes.get(name, {})
        i, o, r = dims.get("in", m.in_features), dims.get("out", m.out_features), dims.get("rank", m.max_rank)
        has_bias = m.base_layer.bias is not None
        base -= (m.in_features - i) * m.out_features + i * (m.out_features - o) + (m.out_features - o) * has_bias
        trainable += r * (i + o)
    return ParameterCounts(total=base + trainable, trainable=trainable, base=base)
