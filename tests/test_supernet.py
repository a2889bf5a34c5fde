"""The super-network against the real thing: stock PEFT LoRA models and physically smaller models."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import MODE_A_MODULES, MODE_B, merged_smaller_copy, mode_a_space, randomize_adapters
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from lorasearch import SearchSpace, SuperNetwork
from lorasearch.models.loading import tiny_config, tiny_model
from lorasearch.network.peft_format import AdapterModule, write_adapter

ATOL = 1e-5

def inputs(seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 250, (2, 12), generator=torch.Generator().manual_seed(seed))


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids).logits


def peft_from_modules(family: str, modules: dict[str, AdapterModule], tmp_path, **model_kw) -> nn.Module:
    folder = write_adapter(tmp_path / "adapter", modules, base_model=f"tiny-{family}")
    return PeftModel.from_pretrained(tiny_model(family, **model_kw), folder).eval()


@pytest.mark.parametrize("family", list(MODE_A_MODULES))
def test_max_config_equals_stock_peft_lora(family):
    net = SuperNetwork(tiny_model(family), mode_a_space(family))
    randomize_adapters(net)
    targets = sorted({m.rsplit(".", 1)[-1] for mods in MODE_A_MODULES[family].values() for m in mods})
    peft_model = get_peft_model(tiny_model(family), LoraConfig(r=8, lora_alpha=16, target_modules=targets)).eval()
    with torch.no_grad():
        for name, m in net.adapter_modules().items():
            layer = peft_model.base_model.model.get_submodule(name)
            layer.lora_A["default"].weight.copy_(m.A)
            layer.lora_B["default"].weight.copy_(m.B)
    ids = inputs()
    torch.testing.assert_close(logits(net.model, ids), logits(peft_model, ids), atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", list(MODE_A_MODULES))
def test_random_subrank_configs_equal_peft_with_sliced_weights(family, tmp_path):
    net = SuperNetwork(tiny_model(family), mode_a_space(family))
    randomize_adapters(net, seed=1)
    ids = inputs(1)
    for seed in range(3):
        config = net.space.sample(seed)
        net.activate(config)
        sliced = {}
        for name, m in net.elastic.items():
            r = m.active_rank
            # PEFT's scale is alpha / r, so alpha' = s * r' keeps the super-network's alpha / r_max.
            sliced[name] = AdapterModule(m.lora_A.weight[:r], m.lora_B.weight[:, :r], m.scaling * r)
        peft_model = peft_from_modules(family, sliced, tmp_path / str(seed))
        for name, m in net.elastic.items():
            assert peft_model.base_model.model.get_submodule(name).r["default"] == m.active_rank
        torch.testing.assert_close(logits(net.model, ids), logits(peft_model, ids), atol=ATOL, rtol=0)


def test_rslora_subrank_keeps_scale(tmp_path):
    space = SearchSpace.from_dict(
        {"name": "rs", "adapter": {"rank": 8, "alpha": 16, "use_rslora": True},
         "groups": {"q": {"modules": ["self_attn.q_proj"], "rank": [8, 4]}}}
    )
    net = SuperNetwork(tiny_model("llama"), space)
    randomize_adapters(net)
    net.activate(net.space.min())
    sliced = {
        n: AdapterModule(m.lora_A.weight[:4], m.lora_B.weight[:, :4], m.scaling * 4**0.5) for n, m in net.elastic.items()
    }
    folder = write_adapter(tmp_path / "a", sliced, base_model="tiny-llama", use_rslora=True)
    peft_model = PeftModel.from_pretrained(tiny_model("llama"), folder).eval()
    ids = inputs()
    torch.testing.assert_close(logits(net.model, ids), logits(peft_model, ids), atol=ATOL, rtol=0)


def test_loads_a_folder_saved_by_peft_itself(tmp_path):
    peft_model = get_peft_model(
        tiny_model("llama"),
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj", "gate_proj"],
                   init_lora_weights=False),
    ).eval()
    peft_model.save_pretrained(tmp_path / "peft")
    net = SuperNetwork(tiny_model("llama"), mode_a_space("llama"), adapter=tmp_path / "peft")
    # gate_proj is in the adapter but not in the space: it keeps a fixed-rank adapter.
    assert net.elastic["model.layers.0.mlp.gate_proj"].max_rank == 8
    ids = inputs()
    torch.testing.assert_close(logits(net.model, ids), logits(peft_model, ids), atol=ATOL, rtol=0)


def test_save_adapter_round_trips_through_stock_peft(tmp_path):
    net = SuperNetwork(tiny_model("qwen2"), mode_a_space("qwen2"))
    randomize_adapters(net)
    net.save_adapter(tmp_path / "super")
    assert (tmp_path / "super" / "lorasearch_space.yaml").is_file()
    peft_model = PeftModel.from_pretrained(tiny_model("qwen2"), tmp_path / "super").eval()
    reloaded = SuperNetwork(tiny_model("qwen2"), tmp_path / "super" / "lorasearch_space.yaml", adapter=tmp_path / "super")
    ids = inputs()
    expected = logits(net.model, ids)
    torch.testing.assert_close(logits(peft_model, ids), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(logits(reloaded.model, ids), expected, atol=0, rtol=0)


def test_activation_context_restores_and_validates():
    net = SuperNetwork(tiny_model("llama"), mode_a_space("llama"))
    heuristic = net.space.heuristic()
    with net.activated(net.space.min()):
        assert net.active_config == net.space.min()
        assert net.elastic["model.layers.0.self_attn.q_proj"].active_rank == 2
    assert net.active_config == net.space.max()
    net.activate(heuristic)
    bad = dict(heuristic, **{"attn.0": 5})
    with pytest.raises(Exception, match="not a choice"):
        net.activate(bad)
    assert net.active_config == heuristic  # a rejected config changes nothing
    net.reset()
    assert all(m.active_rank == m.max_rank for m in net.elastic.values())


def test_only_adapters_are_trainable():
    net = SuperNetwork(tiny_model("llama"), mode_a_space("llama"))
    net.train_adapters()
    trainable = {n for n, p in net.model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)


def test_switching_configs_allocates_no_parameters():
    net = SuperNetwork(tiny_model("llama"), mode_a_space("llama"))
    before = [p.data_ptr() for p in net.model.parameters()]
    for seed in range(5):
        net.activate(net.space.sample(seed))
    assert [p.data_ptr() for p in net.model.parameters()] == before


# ------------------------------------------------------------------------------ Mode B




@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_mode_b_subnet_equals_a_physically_smaller_model(family):
    original = tiny_model(family)
    net = SuperNetwork(copy.deepcopy(original), SearchSpace.from_dict(MODE_B))
    randomize_adapters(net, seed=2)
    ids = inputs(2)
    for seed in range(4):
        net.activate(net.space.sample(seed))
        small = merged_smaller_copy(net, original)
        torch.testing.assert_close(logits(net.model, ids), logits(small, ids), atol=ATOL, rtol=0)


def test_mode_b_uniform_subnet_equals_a_model_built_from_a_smaller_config():
    original = tiny_model("llama")
    net = SuperNetwork(copy.deepcopy(original), SearchSpace.from_dict(MODE_B))
    randomize_adapters(net, seed=3)
    config = {k: (0.5 if k.startswith("mlp.") else 2 if k.startswith("heads.") else 4) for k in net.space.keys}
    net.activate(config)
    cfg = tiny_config("llama", intermediate_size=64, num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    from transformers import AutoModelForCausalLM

    cfg._attn_implementation = "eager"
    small = AutoModelForCausalLM.from_config(cfg).float().eval()
    reference = merged_smaller_copy(net, original).state_dict()
    assert small.load_state_dict(reference, strict=True)
    ids = inputs(3)
    torch.testing.assert_close(logits(net.model, ids), logits(small, ids), atol=ATOL, rtol=0)


def test_mode_b_slices_are_views_of_the_base_weights():
    net = SuperNetwork(tiny_model("llama"), SearchSpace.from_dict(MODE_B))
    net.activate(net.space.min())
    up = net.elastic["model.layers.0.mlp.up_proj"]
    assert (up.active_out, up.active_in) == (64, 64)
    o_proj = net.elastic["model.layers.0.self_attn.o_proj"]
    assert o_proj.active_in == 2 * 16
    k_proj = net.elastic["model.layers.0.self_attn.k_proj"]
    assert k_proj.active_out == 1 * 16  # 2 query heads keep 1 of the 2 key/value heads
