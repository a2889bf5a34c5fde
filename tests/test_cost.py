"""The closed-form cost model against fresh fvcore traces and physically smaller models."""

from __future__ import annotations

import copy

import pytest
import torch
from fvcore.nn import FlopCountAnalysis
from helpers import MODE_B, merged_smaller_copy, mode_a_space
from torch import nn

from lorasearch import SearchSpace, SuperNetwork
from lorasearch.cost import (
    CostError,
    CostModel,
    fvcore_macs,
    measure_latency,
    parameter_counts,
)
from lorasearch.errors import CostWarning, LoraSearchError, SpaceError
from lorasearch.models.loading import tiny_model

T = 16  # tokens per traced sequence
LAYERS = 2  # two decoder layers keep each fvcore trace well under a second

MODE_A = {
    "name": "a",
    "adapter": {"rank": 8, "alpha": 16},
    "groups": {
        "attn": {"modules": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], "rank": [8, 6, 4, 2]},
        "up": {"modules": ["mlp.up_proj"], "rank": [8, 4, 0]},
        "down": {"modules": ["mlp.down_proj"], "rank": [8, 4], "share": "global"},
    },
}
SPACES = {"A": MODE_A, "B": MODE_B}




def make_net(family: str = "llama", mode: str = "B", attn: str = "eager") -> SuperNetwork:
    model = tiny_model(family, attn_implementation=attn, num_hidden_layers=LAYERS)
    return SuperNetwork(model, SearchSpace.from_dict(SPACES[mode]))


def nonzero_entries(d: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in d.items() if v}




# ------------------------------------------------------------------- closed form vs fvcore
# Every tiny family; Phi-3 fuses q/k/v and gate/up, so it has Mode A (its fused modules) only.
FAMILY_MODES = [(f, m) for f in ("llama", "mistral", "qwen2") for m in ("A", "B")] + [("phi3", "A")]


@pytest.mark.parametrize("family, mode", FAMILY_MODES)
def test_closed_form_equals_fresh_fvcore_traces(family, mode):
    """What makes ``--cost-reference analytic`` the search's default: the closed form and fvcore agree
    module by module, at random configs, unmerged and merged, on every tiny family."""
    space = mode_a_space("phi3") if family == "phi3" else SearchSpace.from_dict(SPACES[mode])
    net = SuperNetwork(tiny_model(family, num_hidden_layers=LAYERS), space)
    cost = CostModel(net, T)
    analytic = CostModel(net, T, reference="analytic")
    configs = [net.space.min()] + [net.space.sample(seed) for seed in range(4)]
    for config in configs:
        total, traced = fvcore_macs(net, config, T)
        closed = cost.by_module(config)
        # Every linear (base + adapter, unmerged) and every attention module, exactly.
        assert nonzero_entries(closed) == nonzero_entries(traced)
        assert cost.macs(config) == analytic.macs(config) == total
        df = cost.breakdown(config)
        adapter = int(df.loc[df["kind"] == "adapter", "macs"].sum())
        assert cost.macs(config, "merged") == total - adapter
    assert net.active_config == net.space.max()  # traces restore the active config
    merged_total, _ = fvcore_macs(net, configs[-1], T, deployment="merged")
    assert merged_total == cost.macs(configs[-1], "merged")


def test_attention_is_heads_times_t_squared_times_head_dim_twice():
    net = make_net("llama", "B")
    cost = CostModel(net, T, reference="analytic")
    config = dict(net.space.max(), **{"heads.0": 2})
    df = cost.breakdown(config).set_index(["module", "kind"])
    head_dim = 16
    assert df.loc[("model.layers.0.self_attn", "attention"), "macs"] == 2 * 2 * T * T * head_dim
    assert df.loc[("model.layers.1.self_attn", "attention"), "macs"] == 2 * 4 * T * T * head_dim
    assert df.loc[("lm_head", "lm_head"), "macs"] == T * 64 * 259
    assert df.loc[("model.embed_tokens", "embedding"), "macs"] == 0
    assert [a.gene for a in cost.attention] == ["heads.0", "heads.1"]
    assert cost.attention[0].kv_heads == 2


def test_sdpa_models_cost_the_same_and_fvcore_gets_an_sdpa_handle():
    eager, sdpa = make_net("llama", "B", "eager"), make_net("llama", "B", "sdpa")
    closed = CostModel(sdpa, T)  # the reference trace itself goes through the SDPA handle
    config = sdpa.space.sample(7)
    assert closed.macs(config) == CostModel(eager, T, reference="analytic").macs(config)
    total, traced = fvcore_macs(sdpa, config, T)
    assert total == closed.macs(config)
    assert nonzero_entries(traced) == nonzero_entries(closed.by_module(config))
    # Without the handle, fvcore silently drops SDPA: the count falls short by exactly the attention.
    plain = FlopCountAnalysis(_Logits(sdpa.model), (torch.zeros(1, T, dtype=torch.long),))
    plain.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    with sdpa.activated(sdpa.space.max()), torch.no_grad():
        missed = plain.total()
    df = closed.breakdown(sdpa.space.max())
    assert missed == closed.macs(sdpa.space.max()) - int(df.loc[df["kind"] == "attention", "macs"].sum())


class _Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, use_cache=False).logits


def test_a_trace_that_disagrees_with_the_shapes_is_a_warning_and_the_closed_form_stays(monkeypatch):
    import lorasearch.cost as cost_module

    real = cost_module.trace_macs

    def off_by_one(model, seq_len):
        own = real(model, seq_len)
        own["model.layers.0.mlp.up_proj"] += 1
        return own

    monkeypatch.setattr(cost_module, "trace_macs", off_by_one)
    net = make_net()
    with pytest.warns(CostWarning, match=r"layers\.0\.mlp\.up_proj: fvcore counts .* the closed form is kept") as caught:
        traced = CostModel(net, T)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    analytic = CostModel(net, T, reference="analytic")
    for config in (net.space.max(), net.space.min()):
        assert traced.macs(config) == analytic.macs(config)


# --------------------------------------------------------------------------- breakdown
def test_breakdown_rows_totals_and_deployment():
    net = make_net("qwen2", "B")
    cost = CostModel(net, T, reference="analytic")
    config = net.space.sample(3)
    df = cost.breakdown(config)
    assert df.attrs["deployment"] == "unmerged" and set(df["deployment"]) == {"unmerged"}
    assert df.attrs["unit"] == "MACs" and df.attrs["seq_len"] == T
    body, total = df.iloc[:-1], df.iloc[-1]
    assert total["module"] == "total" and total["macs"] == cost.macs(config) == body["macs"].sum()
    assert set(body["kind"]) == {"embedding", "linear", "adapter", "attention", "lm_head", "other"}
    assert total["params"] == cost.parameters(config).total
    merged = cost.breakdown(config, "merged")
    assert (merged.loc[merged["kind"] == "adapter", ["macs", "params"]] == 0).all().all()
    assert merged.iloc[-1]["params"] == cost.parameters(config).base
    assert "GMACs (merged adapters, 16 tokens)" in cost.describe(config, "merged")
    assert cost.gmacs(config) == cost.macs(config) / 1e9


# -------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_parameters_equal_a_physically_smaller_model(family):
    original = tiny_model(family, num_hidden_layers=LAYERS)
    net = SuperNetwork(copy.deepcopy(original), SearchSpace.from_dict(MODE_B))
    cost = CostModel(net, T, reference="analytic")
    full = cost.parameters(net.space.max())
    assert full.total == sum(p.numel() for p in net.model.parameters())
    for seed in range(3):
        config = net.space.sample(seed)
        net.activate(config)
        small = merged_smaller_copy(net, original)
        counts = cost.parameters(config)
        adapters = sum(m.active_rank * (m.active_in + m.active_out) for m in net.elastic.values())
        assert counts.base == sum(p.numel() for p in small.parameters())
        assert counts.trainable == adapters and counts.total == counts.base + adapters
        # Fresh adapters have B = 0, so the small model holds exactly the kept base entries.
        assert counts.nonzero == sum(int(torch.count_nonzero(p)) for p in small.parameters())


def test_nonzero_counts_a_sparse_base():
    original = tiny_model("llama", num_hidden_layers=LAYERS)
    with torch.no_grad():
        for name, module in original.named_modules():
            if isinstance(module, nn.Linear) and ".layers." in name:
                module.weight[:, ::2] = 0  # 50 % unstructured-looking sparsity
    net = SuperNetwork(copy.deepcopy(original), SearchSpace.from_dict(MODE_B))
    cost = CostModel(net, T, reference="analytic")
    config = dict(net.space.min())
    net.activate(config)
    small = merged_smaller_copy(net, original)
    counts = cost.parameters(config)
    assert counts.nonzero == sum(int(torch.count_nonzero(p)) for p in small.parameters())
    assert counts.nonzero < counts.base
    assert cost.parameters(config).nonzero == counts.nonzero  # cached slices give the same count


def test_parameter_counts_keeps_its_interface():
    net = make_net("llama", "A")
    counts = parameter_counts(net)
    assert counts.total == sum(p.numel() for p in net.model.parameters())
    assert counts.nonzero is None
    assert parameter_counts(net, net.space.min(), nonzero=True).nonzero is not None


# ------------------------------------------------------------------------------ latency
def test_measure_latency_runs_the_merged_subnet_and_restores():
    net = make_net("llama", "B")
    config = net.space.heuristic()
    seconds = measure_latency(net, config, seq_len=8, n=3, warmup=1)
    assert 0 < seconds < 10
    assert net.active_config == net.space.max()
    assert all(m.active_rank == m.max_rank for m in net.elastic.values())


# ------------------------------------------------------------------------------- errors
def test_bad_input_gives_one_line_errors():
    net = make_net("llama", "A")
    for call in (
        lambda: CostModel(net, 0),
        lambda: fvcore_macs(net, net.space.max(), 0),
        lambda: measure_latency(net, net.space.max(), 0),
    ):
        with pytest.raises(LoraSearchError, match=r"^seq_len=0: .*; fix: pass an integer >= 1") as info:
            call()
        assert "\n" not in str(info.value)
    with pytest.raises(CostError, match="deployment='fused' is unknown; fix"):
        CostModel(net, T, deployment="fused", reference="analytic")
    cost = CostModel(net, T, reference="analytic")
    with pytest.raises(CostError, match="deployment='fused'"):
        cost.macs(net.space.max(), "fused")
    with pytest.raises(SpaceError, match="not a choice"):
        cost.macs(dict(net.space.max(), **{"attn.0": 5}))
    with pytest.raises(SpaceError, match="missing"):
        cost.macs({k: v for k, v in net.space.max().items() if k != "down"})
