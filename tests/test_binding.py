"""Tests of lorasearch.network.binding: resolving spaces against tiny models, sizes per config, and errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lorasearch.errors import SpaceError
from lorasearch.models.loading import tiny_model
from lorasearch.network.binding import bind, find_layers, linear_modules
from lorasearch.space import SearchSpace

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
L0 = "model.layers.0."


def load_space(name: str) -> SearchSpace:
    return SearchSpace.load(SPACES_DIR / name)


def write_space(tmp_path: Path, data: dict, name: str = "space.yaml") -> SearchSpace:
    """Write ``data`` as a YAML space file and load it back (so errors name a real file)."""
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return SearchSpace.load(path)


def space_dict(groups: dict, rank: int = 8, **extra) -> dict:
    return {"name": "t", "adapter": {"rank": rank, "alpha": 2 * rank}, "groups": groups, **extra}


def bind_error(space: SearchSpace, model, *parts: str) -> str:
    """Bind, expect a one-line SpaceError naming the source file and every part; return the message."""
    with pytest.raises(SpaceError) as exc:
        bind(space, model)
    message = str(exc.value)
    assert "\n" not in message, f"not one line: {message!r}"
    assert message.startswith(f"{space.source}: "), message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message


@pytest.fixture(scope="module")
def llama():
    """Default tiny Llama: 4 layers, hidden 64, MLP 128, 4 query heads over 2 key/value heads (head_dim 16)."""
    return tiny_model("llama")


@pytest.fixture(scope="module")
def llama128():
    """A tiny Llama wide enough for the rank-32 Shears/SQFT/LoNAS spaces."""
    return tiny_model("llama", hidden_size=128, intermediate_size=256)


@pytest.fixture(scope="module")
def phi3():
    return tiny_model("phi3")


def slot_view(binding, key: str) -> list[tuple[str, str]]:
    return [(s.module, s.dim) for s in binding.slots[key]]


# --------------------------------------------------------------------------- tiny-llama.yaml
def test_tiny_llama_space_slots_per_gene(llama):
    binding = bind(load_space("tiny-llama.yaml"), llama)
    assert binding.space.num_layers == 4
    assert len(binding.space.keys) == 16
    assert slot_view(binding, "attn.2") == [
        ("model.layers.2.self_attn.q_proj", "rank"),
        ("model.layers.2.self_attn.k_proj", "rank"),
        ("model.layers.2.self_attn.v_proj", "rank"),
    ]
    assert slot_view(binding, "up.0") == [(L0 + "mlp.up_proj", "rank")]
    assert slot_view(binding, "mlp.1") == [
        ("model.layers.1.mlp.gate_proj", "out"),
        ("model.layers.1.mlp.up_proj", "out"),
        ("model.layers.1.mlp.down_proj", "in"),
    ]
    assert slot_view(binding, "heads.3") == [
        ("model.layers.3.self_attn.q_proj", "out"),
        ("model.layers.3.self_attn.k_proj", "out"),
        ("model.layers.3.self_attn.v_proj", "out"),
        ("model.layers.3.self_attn.o_proj", "in"),
    ]


def test_tiny_llama_space_module_lists(llama):
    binding = bind(load_space("tiny-llama.yaml"), llama)
    assert binding.rank_modules[:4] == tuple(L0 + m for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.up_proj"))
    assert len(binding.rank_modules) == 16
    assert binding.fixed_modules == ()
    assert set(binding.width_modules) == {
        f"model.layers.{i}.{m}" for i in range(4)
        for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    }
    assert len(binding.modules) == len(set(binding.modules)) == 28
    assert set(binding.modules) == set(binding.rank_modules) | set(binding.width_modules)


def test_binding_modules_are_in_model_order(llama):
    binding = bind(load_space("tiny-llama.yaml"), llama)
    order = list(linear_modules(llama))
    assert list(binding.modules) == sorted(binding.modules, key=order.index)


def test_tiny_llama_resolve_max(llama):
    binding = bind(load_space("tiny-llama.yaml"), llama)
    sizes = binding.resolve(binding.space.max())
    assert sizes[L0 + "self_attn.q_proj"] == {"rank": 8, "out": 64}
    assert sizes[L0 + "self_attn.k_proj"] == {"rank": 8, "out": 32}
    assert sizes[L0 + "self_attn.o_proj"] == {"in": 64}
    assert sizes[L0 + "mlp.gate_proj"] == {"out": 128}
    assert sizes[L0 + "mlp.up_proj"] == {"rank": 8, "out": 128}
    assert sizes[L0 + "mlp.down_proj"] == {"in": 128}


def test_tiny_llama_resolve_smaller_config(llama):
    binding = bind(load_space("tiny-llama.yaml"), llama)
    config = binding.space.max()
    config.update({"attn.0": 4, "up.0": 4, "mlp.0": 0.75, "heads.0": 2, "mlp.1": 0.5})
    sizes = binding.resolve(config)
    # heads: 2 of 4 query heads (head_dim 16) keep 1 of 2 key/value heads
    assert sizes[L0 + "self_attn.q_proj"] == {"rank": 4, "out": 32}
    assert sizes[L0 + "self_attn.k_proj"] == {"rank": 4, "out": 16}
    assert sizes[L0 + "self_attn.v_proj"] == {"rank": 4, "out": 16}
    assert sizes[L0 + "self_attn.o_proj"] == {"in": 32}
    assert sizes[L0 + "mlp.gate_proj"] == {"out": 96}
    assert sizes[L0 + "mlp.up_proj"] == {"rank": 4, "out": 96}
    assert sizes[L0 + "mlp.down_proj"] == {"in": 96}
    assert sizes["model.layers.1.mlp.down_proj"] == {"in": 64}
    assert sizes["model.layers.1.self_attn.q_proj"] == {"rank": 8, "out": 64}


def test_resolve_validates_config(llama):
    binding = bind(load_space("tiny-llama.yaml"), llama)
    config = binding.space.max()
    config["attn.0"] = 5
    with pytest.raises(SpaceError, match="attn.0=5 is not a choice"):
        binding.resolve(config)
    del config["attn.0"]
    with pytest.raises(SpaceError, match="'attn.0' is missing"):
        binding.resolve(config)


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_tiny_llama_space_binds_other_llama_like_families(family):
    binding = bind(load_space("tiny-llama.yaml"), tiny_model(family))
    assert len(binding.space.keys) == 16
    sizes = binding.resolve(binding.space.min())
    assert sizes[L0 + "self_attn.q_proj"] == {"rank": 4, "out": 32}
    assert sizes[L0 + "mlp.down_proj"] == {"in": 64}


def test_binding_does_not_touch_the_model(llama):
    before = {n: type(m) for n, m in llama.named_modules()}
    bind(load_space("tiny-llama.yaml"), llama)
    assert {n: type(m) for n, m in llama.named_modules()} == before


# ------------------------------------------------------------------------ published spaces
def test_shears_space_binds(llama128):
    binding = bind(load_space("llama-shears.yaml"), llama128)
    assert binding.space.keys == tuple(f"{g}.{i}" for g in ("attn", "up", "down") for i in range(4))
    assert slot_view(binding, "down.3") == [("model.layers.3.mlp.down_proj", "rank")]
    assert len(binding.rank_modules) == 20
    assert binding.width_modules == () and binding.fixed_modules == ()
    sizes = binding.resolve(binding.space.heuristic())
    assert sizes[L0 + "self_attn.v_proj"] == {"rank": 24}
    assert sizes[L0 + "mlp.up_proj"] == {"rank": 24}
    assert L0 + "mlp.gate_proj" not in sizes


def test_sqft_space_binds(llama128):
    binding = bind(load_space("llama-sqft.yaml"), llama128)
    assert binding.space.keys == ("qkv.0", "qkv.1", "qkv.2", "qkv.3")
    assert binding.rank_modules == tuple(
        f"model.layers.{i}.self_attn.{p}" for i in range(4) for p in ("q_proj", "k_proj", "v_proj")
    )
    sizes = binding.resolve(binding.space.heuristic())
    assert {sizes[f"model.layers.{i}.self_attn.k_proj"]["rank"] for i in range(4)} == {24}


def test_lonas_space_binds_with_fixed_targets_and_fractions(llama128):
    binding = bind(load_space("llama-lonas.yaml"), llama128)
    assert binding.fixed_modules == tuple(f"model.layers.{i}.mlp.down_proj" for i in range(4))
    assert L0 + "mlp.down_proj" not in binding.rank_modules
    assert L0 + "mlp.down_proj" in binding.width_modules
    assert slot_view(binding, "gate_up.0") == [(L0 + "mlp.gate_proj", "rank"), (L0 + "mlp.up_proj", "rank")]
    expected_widths = {1.0: 256, 0.875: 224, 0.75: 192, 0.625: 160, 0.5: 128}
    for fraction, width in expected_widths.items():
        config = binding.space.max()
        config["mlp.0"] = fraction
        config["gate_up.0"] = 28
        sizes = binding.resolve(config)
        assert sizes[L0 + "mlp.gate_proj"] == {"rank": 28, "out": width}
        assert sizes[L0 + "mlp.up_proj"] == {"rank": 28, "out": width}
        assert sizes[L0 + "mlp.down_proj"] == {"in": width}
        assert sizes["model.layers.1.mlp.down_proj"] == {"in": 256}


def test_rank_32_spaces_fit_default_tiny_llama(llama):
    # k_proj/v_proj are 64 -> 32 there, so rank 32 is the largest that fits
    for name in ("llama-shears.yaml", "llama-sqft.yaml", "llama-lonas.yaml"):
        assert bind(load_space(name), llama).space.num_layers == 4


def test_smollm2_space_binds_model_with_30_layers():
    binding = bind(load_space("smollm2-135m.yaml"), tiny_model("llama", num_hidden_layers=30))
    assert len(binding.space.keys) == 90
    assert binding.slots["attn.29"][0].module == "model.layers.29.self_attn.q_proj"


# ------------------------------------------------------------------ widths, heads, shares
def test_integer_widths_resolve_to_channel_counts(tmp_path, llama128):
    space = write_space(tmp_path, space_dict({"mlp": {"width": [256, 192, 100], "channels": "mlp"}}))
    binding = bind(space, llama128)
    config = binding.space.max()
    config["mlp.2"] = 100
    sizes = binding.resolve(config)
    assert sizes["model.layers.2.mlp.gate_proj"] == {"out": 100}
    assert sizes["model.layers.2.mlp.down_proj"] == {"in": 100}
    assert sizes["model.layers.1.mlp.up_proj"] == {"out": 256}


def test_custom_channels(tmp_path, llama):
    groups = {"v": {"width": [1.0, 0.5], "channels": {"out": ["self_attn.v_proj"]}, "share": "global"}}
    binding = bind(write_space(tmp_path, space_dict(groups)), llama)
    assert slot_view(binding, "v") == [(f"model.layers.{i}.self_attn.v_proj", "out") for i in range(4)]
    assert binding.resolve({"v": 0.5})["model.layers.3.self_attn.v_proj"] == {"out": 16}


@pytest.mark.parametrize(
    "heads, kv, choice, q_out, kv_out",
    [
        (8, 2, 4, 64, 16),   # 4 query heads per kv head: 4 heads keep 1 kv head
        (8, 4, 6, 96, 48),   # 2 per kv head: 6 heads keep 3 kv heads
        (8, 8, 3, 48, 48),   # plain multi-head attention
    ],
)
def test_heads_under_grouped_query_attention(tmp_path, heads, kv, choice, q_out, kv_out):
    model = tiny_model("llama", hidden_size=128, num_attention_heads=heads, num_key_value_heads=kv)
    head_dim = 128 // heads
    per_kv = heads // kv
    choices = list(range(heads, 0, -per_kv))
    space = write_space(tmp_path, space_dict({"heads": {"heads": choices}}))
    binding = bind(space, model)
    config = binding.space.max()
    config["heads.1"] = choice
    sizes = binding.resolve(config)
    layer = "model.layers.1.self_attn."
    assert sizes[layer + "q_proj"] == {"out": q_out} and q_out == choice * head_dim
    assert sizes[layer + "k_proj"] == {"out": kv_out}
    assert sizes[layer + "v_proj"] == {"out": kv_out}
    assert sizes[layer + "o_proj"] == {"in": q_out}
    assert sizes["model.layers.0.self_attn.k_proj"] == {"out": kv * head_dim}


def test_share_global_drives_every_layer(tmp_path, llama):
    groups = {"q": {"modules": ["q_proj"], "rank": [8, 4], "share": "global"}}
    binding = bind(write_space(tmp_path, space_dict(groups)), llama)
    assert binding.space.keys == ("q",)
    sizes = binding.resolve({"q": 4})
    assert [sizes[f"model.layers.{i}.self_attn.q_proj"]["rank"] for i in range(4)] == [4, 4, 4, 4]


def test_share_module_drives_one_module(tmp_path, llama):
    groups = {"a": {"modules": ["self_attn.q_proj", "self_attn.v_proj"], "rank": [8, 4], "share": "module"}}
    binding = bind(write_space(tmp_path, space_dict(groups)), llama)
    assert slot_view(binding, "a.3.self_attn.v_proj") == [("model.layers.3.self_attn.v_proj", "rank")]
    config = binding.space.max()
    config["a.3.self_attn.v_proj"] = 4
    sizes = binding.resolve(config)
    assert sizes["model.layers.3.self_attn.v_proj"] == {"rank": 4}
    assert sizes["model.layers.3.self_attn.q_proj"] == {"rank": 8}


def test_layer_subset_only_binds_those_layers(tmp_path, llama):
    groups = {"q": {"modules": ["q_proj"], "rank": [8, 4], "layers": [1, 3]}}
    binding = bind(write_space(tmp_path, space_dict(groups)), llama)
    assert binding.space.keys == ("q.1", "q.3")
    assert binding.rank_modules == ("model.layers.1.self_attn.q_proj", "model.layers.3.self_attn.q_proj")


def test_bare_leaf_and_glob_patterns(tmp_path, llama):
    groups = {"a": {"modules": ["*_proj"], "rank": [8]}}
    binding = bind(write_space(tmp_path, space_dict(groups)), llama)
    assert len(binding.slots["a.0"]) == 7
    flat = space_dict({"q": {"modules": ["q_proj"], "rank": [8, 4]}}, per_layer=None)
    binding = bind(write_space(tmp_path, flat, "flat.yaml"), llama)
    assert binding.space.keys == ("q",)
    assert binding.rank_modules == tuple(f"model.layers.{i}.self_attn.q_proj" for i in range(4))


def test_adapter_targets_become_fixed_modules(tmp_path, llama):
    data = space_dict({"q": {"modules": ["self_attn.q_proj"], "rank": [8, 4]}})
    data["adapter"]["targets"] = ["self_attn.q_proj", "o_proj"]
    binding = bind(write_space(tmp_path, data), llama)
    assert binding.fixed_modules == tuple(f"model.layers.{i}.self_attn.o_proj" for i in range(4))
    assert set(binding.modules) == set(binding.rank_modules) | set(binding.fixed_modules)


def test_rank_space_binds_phi3_fused_projections(tmp_path, phi3):
    groups = {"qkv": {"modules": ["self_attn.qkv_proj"], "rank": [8, 4]}, "mlp": {"modules": ["mlp.gate_up_proj"], "rank": [8, 4]}}
    binding = bind(write_space(tmp_path, space_dict(groups)), phi3)
    assert slot_view(binding, "qkv.0") == [(L0 + "self_attn.qkv_proj", "rank")]
    assert binding.resolve(binding.space.min())[L0 + "mlp.gate_up_proj"] == {"rank": 4}


def test_find_layers(llama):
    assert find_layers(load_space("tiny-llama.yaml"), llama) == [0, 1, 2, 3]


# ---------------------------------------------------------------------------------- errors
def test_pattern_matching_nothing_lists_nearest_modules(tmp_path, llama):
    space = write_space(tmp_path, space_dict({"attn": {"modules": ["self_attn.qproj"], "rank": [8]}}))
    message = bind_error(space, llama, "groups.attn.modules", "'self_attn.qproj'", "model.layers.0.")
    assert "nearest: self_attn.q_proj" in message


def test_width_channel_pattern_matching_nothing(tmp_path, phi3):
    space = write_space(tmp_path, space_dict({"mlp": {"width": [1.0, 0.5], "channels": "mlp"}}))
    message = bind_error(space, phi3, "groups.mlp.channels", "mlp.gate_proj")
    assert "mlp.gate_up_proj" in message


def test_adapter_target_matching_nothing(tmp_path, llama):
    data = space_dict({"q": {"modules": ["q_proj"], "rank": [8]}})
    data["adapter"]["targets"] = ["dense_4h"]
    bind_error(write_space(tmp_path, data), llama, "adapter.targets", "'dense_4h'")


def test_per_layer_matching_nothing_lists_nearest(tmp_path, llama):
    space = write_space(tmp_path, space_dict({"q": {"modules": ["q_proj"], "rank": [8]}}, per_layer="model.layer.{i}"))
    message = bind_error(space, llama, "per_layer", "'model.layer.{i}'", "matches no module")
    assert "model.layers.0" in message


def test_rank_above_module_size(tmp_path, llama):
    space = write_space(tmp_path, space_dict({"kv": {"modules": ["k_proj"], "rank": [48, 32]}}, rank=48))
    bind_error(space, llama, "groups.kv.rank", "rank 48", "model.layers.0.self_attn.k_proj", "64x32", "fix", "<= 32")


def test_rank_equal_to_module_size_is_allowed(tmp_path, llama):
    space = write_space(tmp_path, space_dict({"kv": {"modules": ["k_proj"], "rank": [32, 16]}}, rank=32))
    assert len(bind(space, llama).rank_modules) == 4


def test_integer_width_must_start_at_full_size(tmp_path, llama):
    space = write_space(tmp_path, space_dict({"mlp": {"width": [100, 64], "channels": "mlp"}}))
    bind_error(space, llama, "groups.mlp.width", "100", "full size 128", "fix")


def test_width_channels_of_different_sizes(tmp_path, llama):
    groups = {"w": {"width": [1.0, 0.5], "channels": {"out": ["self_attn.q_proj", "self_attn.k_proj"]}}}
    bind_error(write_space(tmp_path, space_dict(groups)), llama, "groups.w.channels", "[32, 64]")


@pytest.mark.parametrize("choices", [[4, 3], [4, 1], [4, 3, 2]])
def test_heads_must_be_multiples_of_query_per_kv_group(tmp_path, llama, choices):
    space = write_space(tmp_path, space_dict({"heads": {"heads": choices}}))
    bind_error(space, llama, "groups.heads.heads", "multiples of 2", "fix", "[4, 2]")


@pytest.mark.parametrize("choices", [[2], [8, 4]])
def test_heads_must_start_at_full_head_count(tmp_path, llama, choices):
    space = write_space(tmp_path, space_dict({"heads": {"heads": choices}}))
    bind_error(space, llama, "groups.heads.heads", "start at 4 heads")


def test_same_module_in_two_groups(tmp_path, llama):
    groups = {
        "a": {"modules": ["q_proj"], "rank": [8, 4]},
        "b": {"modules": ["self_attn.q_proj", "self_attn.v_proj"], "rank": [8, 6]},
    }
    bind_error(write_space(tmp_path, space_dict(groups)), llama, "groups.b", "model.layers.0.self_attn.q_proj",
               "driven by both 'a.0' and 'b.0'", "fix")


def test_width_and_heads_on_same_dimension_conflict(tmp_path, llama):
    groups = {"heads": {"heads": [4, 2]}, "w": {"width": [1.0, 0.5], "channels": {"in": ["o_proj"]}}}
    bind_error(write_space(tmp_path, space_dict(groups)), llama, "groups.w", "o_proj (in)", "'heads.0'")


def test_same_module_in_two_groups_on_disjoint_layers_is_allowed(tmp_path, llama):
    groups = {
        "a": {"modules": ["q_proj"], "rank": [8, 4], "layers": [0, 1]},
        "b": {"modules": ["q_proj"], "rank": [8, 6], "layers": [2, 3]},
    }
    assert bind(write_space(tmp_path, space_dict(groups)), llama).space.keys == ("a.0", "a.1", "b.2", "b.3")


def test_rank_and_width_on_same_module_do_not_conflict(tmp_path, llama):
    groups = {"up": {"modules": ["up_proj"], "rank": [8, 4]}, "mlp": {"width": [1.0, 0.5]}}
    binding = bind(write_space(tmp_path, space_dict(groups)), llama)
    assert binding.resolve(binding.space.min())[L0 + "mlp.up_proj"] == {"rank": 4, "out": 64}


def test_two_genes_of_one_share_module_group_on_same_module(tmp_path, llama):
    groups = {"a": {"modules": ["q_proj", "self_attn.q_proj"], "rank": [8, 4], "share": "module"}}
    bind_error(write_space(tmp_path, space_dict(groups)), llama, "groups.a", "model.layers.0.self_attn.q_proj")


def test_heads_on_phi3_fused_qkv(tmp_path, phi3):
    space = write_space(tmp_path, space_dict({"heads": {"heads": [4, 2]}}))
    message = bind_error(space, phi3, "groups.heads", "model.layers.0.self_attn", "q_proj", "fused", "fix")
    assert "o_proj" not in message.split("fix")[0]  # o_proj exists; only the missing projections are named


def test_heads_with_wrong_attention_module(tmp_path, llama):
    space = write_space(tmp_path, space_dict({"heads": {"heads": [4, 2], "attention": "attn"}}))
    bind_error(space, llama, "groups.heads", "model.layers.0.attn", "fix")


def test_num_layers_mismatch(llama):
    space = load_space("smollm2-135m.yaml")
    bind_error(space, llama, "num_layers", "30", "4", "fix")


def test_num_layers_match_is_accepted(tmp_path, llama):
    space = write_space(tmp_path, space_dict({"q": {"modules": ["q_proj"], "rank": [8]}}, num_layers=4))
    assert bind(space, llama).space.num_layers == 4


def test_layer_subset_beyond_model(tmp_path, llama):
    space = write_space(tmp_path, space_dict({"q": {"modules": ["q_proj"], "rank": [8], "layers": [0, 6]}}))
    bind_error(space, llama, "groups.q.layers", "layer 6", "fix")
