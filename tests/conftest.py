"""Shared test settings and helpers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn


# A Mode B space for the tiny models: ranks, MLP width and heads together.
MODE_B = {
    "name": "b",
    "adapter": {"rank": 8, "alpha": 16},
    "groups": {
        "attn": {"modules": ["self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj"], "rank": [8, 4]},
        "mlp_rank": {"modules": ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"], "rank": [8, 4]},
        "mlp": {"width": [1.0, 0.75, 0.5], "channels": "mlp"},
        "heads": {"heads": [4, 2]},
    },
}


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models gain nothing from intra-op threads; on a busy two-core machine they cost 10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def merged_smaller_copy(net, original: nn.Module) -> nn.Module:
    """A copy of ``original`` whose elastic linears are physically smaller ``nn.Linear`` layers
    holding the kept base weights plus the active adapter delta (the reference for Mode B)."""
    small = copy.deepcopy(original)
    for name, m in net.elastic.items():
        o, i = m.active_out, m.active_in
        layer = nn.Linear(i, o, bias=m.base_layer.bias is not None)
        with torch.no_grad():
            weight = m.base_layer.weight[:o, :i].clone()
            delta = m.active_delta_weight()
            layer.weight.copy_(weight + delta if delta is not None else weight)
            if layer.bias is not None:
                layer.bias.copy_(m.base_layer.bias[:o])
        small.set_submodule(name, layer)
    return small.eval()
