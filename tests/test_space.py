"""Tests of lorasearch.space: the file format, the gene API and the error messages."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_good_error, one_line
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorasearch.errors import SpaceError
from lorasearch.space import SearchSpace

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
SPACE_FILES = sorted(p for p in SPACES_DIR.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.up_proj", "q_proj")

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def rank_space(**extra) -> dict:
    """A small valid per-layer space dict with one rank group; ``extra`` updates the top level."""
    data = {
        "name": "t",
        "adapter": {"rank": 8, "alpha": 16},
        "groups": {"attn": {"modules": ["self_attn.q_proj", "self_attn.v_proj"], "rank": [8, 6, 4]}},
    }
    data.update(extra)
    return data


# --------------------------------------------------------------------------- shipped files
@pytest.mark.parametrize("path", SPACE_FILES, ids=lambda p: p.name)
def test_shipped_space_loads(path):
    space = SearchSpace.load(path)
    assert space.name
    assert space.groups
    assert space.source == str(path)
    for group in space.groups:
        assert list(group.choices) == sorted(group.choices, reverse=True)


@pytest.mark.parametrize("path", SPACE_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_shipped_space_text_round_trip(path, fmt):
    space = SearchSpace.load(path)
    again = SearchSpace.loads(space.dumps(fmt), fmt=fmt)
    assert again == space
    assert again.to_dict() == space.to_dict()


@pytest.mark.parametrize("path", SPACE_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_shipped_space_file_round_trip(path, suffix, tmp_path):
    space = SearchSpace.load(path)
    out = space.save(tmp_path / f"copy{suffix}")
    assert out.is_file()
    again = SearchSpace.load(out)
    assert again == space
    assert again.source == str(out)


def test_save_writes_json_for_json_suffix_and_yaml_otherwise(tmp_path):
    import json

    import yaml

    space = SearchSpace.load(SPACES_DIR / "tiny-llama.yaml")
    as_json = space.save(tmp_path / "s.json").read_text()
    as_yaml = space.save(tmp_path / "s.yaml").read_text()
    assert json.loads(as_json) == space.to_dict()
    assert as_yaml.lstrip()[0] != "{"
    assert yaml.safe_load(as_yaml) == space.to_dict()


def test_tiny_llama_space_contents():
    space = SearchSpace.load(SPACES_DIR / "tiny-llama.yaml")
    assert [g.name for g in space.groups] == ["attn", "up", "mlp", "heads"]
    assert [g.kind for g in space.groups] == ["rank", "rank", "width", "heads"]
    assert space.group("mlp").channels_out == ("mlp.gate_proj", "mlp.up_proj")
    assert space.group("mlp").channels_in == ("mlp.down_proj",)
    assert space.adapter.rank == 8 and space.adapter.effective_alpha == 16.0
    assert space.mode == "B"
    assert SearchSpace.load(SPACES_DIR / "llama-shears.yaml").mode == "A"


def test_round_trip_keeps_every_optional_field(tmp_path):
    data = {
        "name": "full",
        "description": "all the fields",
        "adapter": {"rank": 16, "alpha": 32.5, "dropout": 0.05, "use_rslora": True, "targets": ["mlp.down_proj"]},
        "per_layer": "model.layers.{i}",
        "num_layers": 6,
        "groups": {
            "attn": {"modules": ["self_attn.q_proj"], "rank": [16, 8], "share": "module", "layers": [0, 2]},
            "width": {"width": [96, 64], "channels": {"out": ["mlp.up_proj"], "in": ["mlp.down_proj"]}, "share": "global"},
            "heads": {"heads": [8, 4], "attention": "attn"},
        },
    }
    space = SearchSpace.from_dict(data)
    assert space.to_dict() == data
    for suffix in (".yaml", ".json"):
        assert SearchSpace.load(space.save(tmp_path / f"f{suffix}")) == space


def test_round_trip_of_space_without_per_layer():
    space = SearchSpace.from_dict(
        {"name": "flat", "adapter": {"rank": 4}, "per_layer": None, "groups": {"q": {"modules": ["q_proj"], "rank": [4, 2]}}}
    )
    assert space.group("q").share == "global"
    for fmt in ("yaml", "json"):
        again = SearchSpace.loads(space.dumps(fmt), fmt=fmt)
        assert again == space and again.per_layer is None


# ------------------------------------------------------------------------- property tests
def _descending(values) -> list:
    return sorted(set(values), reverse=True)


@st.composite
def group_dicts(draw, rank: int, per_layer: bool, num_layers: int):
    kind = draw(st.sampled_from(["rank", "width", "heads"]))
    if kind == "rank":
        rest = draw(st.lists(st.integers(0, rank - 1), max_size=4, unique=True)) if rank > 1 else []
        group = {
            "modules": draw(st.lists(st.sampled_from(MODULES), min_size=1, max_size=3, unique=True)),
            "rank": [rank] + _descending(rest),
        }
        shares = ["layer", "global", "module"] if per_layer else ["global", "module"]
    elif kind == "width":
        if draw(st.booleans()):
            fractions = st.floats(min_value=0.01, max_value=1.0, exclude_max=True, allow_nan=False)
            choices = [1.0] + _descending(draw(st.lists(fractions, max_size=4, unique=True)))
        else:
            choices = _descending(draw(st.lists(st.integers(1, 4096), min_size=1, max_size=5, unique=True)))
        group = {"width": choices, "channels": "mlp"}
        shares = ["layer", "global"] if per_layer else ["global"]
    else:
        group = {"heads": _descending(draw(st.lists(st.integers(1, 64), min_size=1, max_size=5, unique=True)))}
        shares = ["layer", "global"] if per_layer else ["global"]
    group["share"] = draw(st.sampled_from(shares))
    if per_layer and draw(st.booleans()):
        group["layers"] = sorted(draw(st.sets(st.integers(0, num_layers - 1), min_size=1)))
    return group


@st.composite
def space_dicts(draw):
    """Random valid space dicts: 1-4 groups of random kinds, with num_layers 1-6."""
    num_layers = draw(st.integers(1, 6))
    rank = draw(st.integers(1, 64))
    per_layer = draw(st.booleans()) or draw(st.booleans())  # mostly per layer
    names = draw(st.lists(st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,6}", fullmatch=True), min_size=1, max_size=4, unique=True))
    data = {
        "name": draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_ .", min_size=1, max_size=12).filter(str.strip)),
        "adapter": {"rank": rank, "alpha": draw(st.integers(1, 128))},
        "per_layer": "model.layers.{i}" if per_layer else None,
        "num_layers": num_layers,
        "groups": {name: draw(group_dicts(rank, per_layer, num_layers)) for name in names},
    }
    return data


def expected_gene_counts(data: dict) -> list[tuple[int, int]]:
    """(genes, choices per gene) per group, computed from the dict alone."""
    out = []
    for group in data["groups"].values():
        kind = next(k for k in ("rank", "width", "heads") if k in group)
        layers = len(group.get("layers", range(data["num_layers"]))) if data["per_layer"] else 1
        if group["share"] == "global":
            genes = 1
        elif group["share"] == "layer":
            genes = layers
        else:
            genes = layers * len(group["modules"])
        out.append((genes, len(group[kind])))
    return out


@SETTINGS
@given(space_dicts())
def test_property_size_is_product_of_list_lengths(data):
    space = SearchSpace.from_dict(data)
    counts = expected_gene_counts(data)
    assert len(space.genes) == sum(n for n, _ in counts)
    assert space.size() == math.prod(k**n for n, k in counts)
    assert space.size() == math.prod(len(g.choices) for g in space.genes)
    assert len(set(space.keys)) == len(space.keys)


@SETTINGS
@given(space_dicts(), st.integers(0, 2**32 - 1))
def test_property_decode_encode_of_sampled_config(data, seed):
    space = SearchSpace.from_dict(data)
    config = space.sample(seed)
    assert set(config) == set(space.keys)
    assert space.decode(space.encode(config)) == config


@SETTINGS
@given(st.data())
def test_property_encode_decode_of_gene_vector(data):
    space = SearchSpace.from_dict(data.draw(space_dicts()))
    low, high = space.bounds()
    genes = np.array([data.draw(st.integers(int(lo), int(hi))) for lo, hi in zip(low, high)], dtype=np.int64)
    config = space.decode(genes)
    assert np.array_equal(space.encode(config), genes)
    assert space.canonical(config) == tuple(int(g) for g in genes)


@SETTINGS
@given(space_dicts())
def test_property_max_min_heuristic_within_choices(data):
    space = SearchSpace.from_dict(data)
    biggest, smallest, mid = space.max(), space.min(), space.heuristic()
    for gene in space.genes:
        assert biggest[gene.key] == gene.choices[0]
        assert smallest[gene.key] == gene.choices[-1]
        assert mid[gene.key] == gene.choices[(len(gene.choices) - 1) // 2]
        assert gene.choices[-1] <= mid[gene.key] <= gene.choices[0]


@SETTINGS
@given(space_dicts(), st.integers(0, 2**32 - 1))
def test_property_sample_is_reproducible_and_within_choices(data, seed):
    space = SearchSpace.from_dict(data)
    assert space.sample(seed) == space.sample(seed)
    assert space.sample(np.random.default_rng(seed)) == space.sample(np.random.default_rng(seed))
    assert space.sample(random.Random(seed)) == space.sample(random.Random(seed))
    for gene in space.genes:
        assert space.sample(seed)[gene.key] in gene.choices


@SETTINGS
@given(space_dicts(), st.sampled_from(["yaml", "json"]))
def test_property_text_round_trip(data, fmt):
    space = SearchSpace.from_dict(data)
    again = SearchSpace.loads(space.dumps(fmt), fmt=fmt)
    assert again == space
    assert again.keys == space.keys


@pytest.mark.parametrize(
    "choices, expected",
    [([32], 32), ([32, 28], 32), ([32, 24, 16], 24), ([32, 28, 24, 20], 28), ([32, 28, 24, 20, 16], 24)],
)
def test_heuristic_index_is_lower_middle(choices, expected):
    space = SearchSpace.from_dict(
        {"name": "h", "adapter": {"rank": 32}, "num_layers": 2, "groups": {"g": {"modules": ["q_proj"], "rank": choices}}}
    )
    assert space.heuristic() == {"g.0": expected, "g.1": expected}


def test_sample_differs_across_seeds():
    space = SearchSpace.from_dict(rank_space(num_layers=6))
    assert len({tuple(space.sample(seed).values()) for seed in range(20)}) > 1


# ------------------------------------------------------------------------------- gene keys
def test_gene_keys_share_layer():
    space = SearchSpace.from_dict(rank_space(num_layers=4))
    assert space.keys == ("attn.0", "attn.1", "attn.2", "attn.3")
    assert space.genes[3].layer == 3 and space.genes[3].module is None


def test_gene_keys_share_global():
    data = rank_space(num_layers=4)
    data["groups"]["attn"]["share"] = "global"
    space = SearchSpace.from_dict(data)
    assert space.keys == ("attn",)
    assert space.genes[0].layer is None


def test_gene_keys_share_module():
    data = rank_space(num_layers=4)
    data["groups"]["attn"]["share"] = "module"
    space = SearchSpace.from_dict(data)
    assert "attn.3.self_attn.q_proj" in space.keys
    assert space.keys[:2] == ("attn.0.self_attn.q_proj", "attn.0.self_attn.v_proj")
    assert len(space.keys) == 8
    gene = space.genes[space.keys.index("attn.3.self_attn.q_proj")]
    assert (gene.layer, gene.module) == (3, "self_attn.q_proj")


def test_gene_keys_share_module_without_per_layer():
    space = SearchSpace.from_dict(
        {"name": "f", "adapter": {"rank": 8}, "per_layer": None,
         "groups": {"g": {"modules": ["q_proj", "v_proj"], "rank": [8, 4], "share": "module"}}}
    )
    assert space.keys == ("g.q_proj", "g.v_proj")


def test_gene_keys_respect_layer_subset():
    data = rank_space(num_layers=6)
    data["groups"]["attn"]["layers"] = [4, 1, 4]
    space = SearchSpace.from_dict(data)
    assert space.keys == ("attn.1", "attn.4")


def test_gene_keys_follow_group_order():
    space = SearchSpace.load(SPACES_DIR / "tiny-llama.yaml").with_num_layers(2)
    assert space.keys == ("attn.0", "attn.1", "up.0", "up.1", "mlp.0", "mlp.1", "heads.0", "heads.1")


def test_with_num_layers_returns_copy():
    space = SearchSpace.load(SPACES_DIR / "tiny-llama.yaml")
    expanded = space.with_num_layers(3)
    assert space.num_layers is None and expanded.num_layers == 3
    assert expanded.size() == 3**3 * 2**3 * 3**3 * 2**3


def test_duplicate_module_in_share_module_group_is_rejected():
    data = rank_space(num_layers=2)
    data["groups"]["attn"] = {"modules": ["self_attn.q_proj", "self_attn.q_proj"], "rank": [8, 4], "share": "module"}
    with pytest.raises(SpaceError) as exc:
        SearchSpace.from_dict(data, source="dup.yaml")
    assert_good_error(exc, "dup.yaml", "groups.attn.modules")


# ---------------------------------------------------------------------------- bad input
def test_malformed_yaml_reports_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nadapter: {rank: 8}\ngroups:\n  a: {modules: [q_proj], rank: [8, 4]\n  b: 1\n")
    with pytest.raises(SpaceError) as exc:
        SearchSpace.load(path)
    message = assert_good_error(exc, str(path), "malformed YAML")
    assert "line 5" in message


def test_malformed_json_reports_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"name": "x",\n "groups": {,}}\n')
    with pytest.raises(SpaceError) as exc:
        SearchSpace.load(path)
    message = assert_good_error(exc, str(path), "malformed JSON")
    assert "line 2" in message


def test_json_file_is_parsed_strictly(tmp_path):
    path = tmp_path / "yamlish.json"
    path.write_text("name: x\ngroups: {}\n")  # valid YAML, not JSON
    with pytest.raises(SpaceError) as exc:
        SearchSpace.load(path)
    assert_good_error(exc, str(path), "malformed JSON")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpaceError) as exc:
        SearchSpace.load(path)
    assert_good_error(exc, str(path))


def test_non_mapping_document():
    with pytest.raises(SpaceError) as exc:
        SearchSpace.loads("- just\n- a list\n", source="list.yaml")
    assert_good_error(exc, "list.yaml")


def test_unknown_top_level_key_suggests_fix():
    data = rank_space()
    data["group"] = data.pop("groups")
    with pytest.raises(SpaceError) as exc:
        SearchSpace.from_dict(data, source="top.yaml")
    assert_good_error(exc, "top.yaml", "group", "did you mean 'groups'")


def test_unknown_group_key_suggests_fix():
    data = rank_space()
    data["groups"]["attn"]["modlues"] = data["groups"]["attn"].pop("modules")
    with pytest.raises(SpaceError) as exc:
        SearchSpace.from_dict(data, source="grp.yaml")
    assert_good_error(exc, "grp.yaml", "groups.attn.modlues", "did you mean 'modules'")


def test_unknown_adapter_key_suggests_fix():
    data = rank_space()
    data["adapter"]["aplha"] = 16
    with pytest.raises(SpaceError) as exc:
        SearchSpace.from_dict(data, source="ad.yaml")
    assert_good_error(exc, "ad.yaml", "adapter.aplha", "did you mean 'alpha'")


@pytest.mark.parametrize("kind, group", [
    ("rank", {"modules": ["q_proj"], "rank": []}),
    ("width", {"width": []}),
    ("heads", {"heads": []}),
])
def test_empty_choice_list(kind, group):
    data = rank_space()
    data["groups"] = {"g": group}
    with pytest.raises(SpaceError) as exc:
        SearchSpace.from_dict(data, source="empty.yaml")
    assert_good_error(exc, "empty.yaml", f"groups.g.{kind}", "non-empty")


@pytest.mark.parametrize("choices", [[8, 4, 6], [4, 8], [8, 4, 4], [8, 8]])
def test_non_descending_or_repeated_rank_list(choices):
    data = rank_space()
    data["groups"]["attn"]["rank"] = choices
    with pytest.raises(SpaceError) as exc:
        SearchSpace.from_dict(data, source="order.yaml")
    message = assert_good_error(exc, "order.yaml", "groups.attn.rank", "strictly descending")
    assert str(sorted(set(choices), reverse=True)) in message


@pytest.mark.parametrize("choices", [[1.0, 0.5, 0.75], [1.0, 0.5, 0.5], [128, 128]])
def test_non_descending_or_repeated_width_list(choices):
    data = rank_space()
    data["groups"] = {"mlp": {"width": choices}}
    with pytest.raises(SpaceError) as exc:
        SearchSpace.from_dict(data, source="w.yaml")
    assert_good_error(exc, "w.yaml", "groups.mlp.width", "descending")


def test_rank_group_must_start_at_the_trained_rank_of_fresh_adapters():
    """The file alone cannot tell: a loaded adapter's modules have their own ranks (PEFT's rank_pattern),
    so the first choice is checked against each module's trained rank when the network is built."""
    from lorasearch import SuperNetwork
    from lorasearch.models.loading import tiny_model

    data = rank_space()
    data["groups"]["attn"]["rank"] = [6, 4]
    space = SearchSpace.from_dict(data, source="rank.yaml")
    with pytest.raises(SpaceError) as exc:
        SuperNetwork(tiny_model("llama"), space)  # fresh adapters are trained at adapter.rank = 8
    assert_good_error(exc, "rank.yaml", "groups.attn.rank", "start at 6", "trained rank is 8", "make 8 the first rank choice")


def test_rank_group_needs_adapter_rank():
    data = rank_space()
    del data["adapter"]
    with pytest.raises(SpaceError) as exc:
        SearchSpace.from_dict(data, source="norank.yaml")
    assert_good_error(exc, "norank.yaml", "adapter.rank")


def test_fractions_must_start_at_one():
    data = rank_space()
    data["groups"] = {"mlp": {"width": [0.9, 0.5]}}
    with pytest.raises(SpaceError) as exc:
        SearchSpace.from_dict(data, source="frac.yaml")
    assert_good_error(exc, "frac.yaml", "groups.mlp.width", "1.0")


@pytest.mark.parametrize("choices", [[1.0, 0.0], [1.0, -0.5], [1.5, 1.0]])
def test_fractions_outside_unit_interval(choices):
    data = rank_space()
    data["groups"] = {"mlp": {"width": choices}}
    with pytest.raises(SpaceError) as exc:
        SearchSpace.from_dict(data, source="frac.yaml")
    assert_good_error(exc, "frac.yaml", "groups.mlp.width")


@pytest.mark.parametrize("kind", ["width", "heads"])
def test_share_module_only_for_rank_groups(kind):
    data = rank_space()
    data["groups"] = {"g": {kind: [4, 2], "share": "module"}}
    with pytest.raises(SpaceError) as exc:
        SearchSpace.from_dict(data, source="share.yaml")
    assert_good_error(exc, "share.yaml", "groups.g.share", "module")


def test_unknown_share_mode():
    data = rank_space()
    data["groups"]["attn"]["share"] = "layers"
    with pytest.raises(SpaceError) as exc:
        SearchSpace.from_dict(data, source="share.yaml")
    message = str(exc.value)
    assert one_line(message) and "share.yaml" in message and "groups.attn.share" in message
    assert "layer, global, module" in message


def test_two_kinds_in_one_group():
    data = rank_space()
    data["groups"]["attn"]["width"] = [1.0, 0.5]
    with pytest.raises(SpaceError) as exc:
        SearchSpace.from_dict(data, source="kinds.yaml")
    message = str(exc.value)
    assert one_line(message) and "kinds.yaml" in message and "groups.attn" in message and "exactly one" in message


def test_num_layers_mismatch_with_with_num_layers():
    space = SearchSpace.from_dict(rank_space(num_layers=3), source="layers.yaml")
    assert space.with_num_layers(3).num_layers == 3
    with pytest.raises(SpaceError) as exc:
        space.with_num_layers(4)
    assert_good_error(exc, "layers.yaml", "num_layers", "3", "4")


def test_layer_subset_beyond_num_layers():
    data = rank_space(num_layers=2)
    data["groups"]["attn"]["layers"] = [0, 5]
    with pytest.raises(SpaceError) as exc:
        SearchSpace.from_dict(data, source="sub.yaml")
    assert_good_error(exc, "sub.yaml", "groups.attn.layers", "layer 5")


def test_genes_need_num_layers():
    space = SearchSpace.from_dict(rank_space(), source="nolayers.yaml")
    with pytest.raises(SpaceError) as exc:
        space.size()
    assert_good_error(exc, "nolayers.yaml", "num_layers", "with_num_layers")


def test_per_layer_without_placeholder():
    with pytest.raises(SpaceError) as exc:
        SearchSpace.from_dict(rank_space(per_layer="model.layers"), source="pl.yaml")
    assert_good_error(exc, "pl.yaml", "per_layer", "{i}")


@pytest.fixture
def two_layer_space() -> SearchSpace:
    return SearchSpace.from_dict(rank_space(num_layers=2), source="enc.yaml")


def test_encode_missing_key(two_layer_space):
    with pytest.raises(SpaceError) as exc:
        two_layer_space.encode({"attn.0": 8})
    assert_good_error(exc, "attn.1", "missing", "[8, 6, 4]")


def test_encode_unknown_key(two_layer_space):
    with pytest.raises(SpaceError) as exc:
        two_layer_space.encode({"attn.0": 8, "attn.1": 8, "attn.7": 8})
    assert_good_error(exc, "attn.7", "unknown key")


def test_encode_value_not_in_choices(two_layer_space):
    with pytest.raises(SpaceError) as exc:
        two_layer_space.encode({"attn.0": 8, "attn.1": 5})
    assert_good_error(exc, "attn.1=5", "[8, 6, 4]")


@pytest.mark.parametrize("config", [{"attn.0": 8}, {"attn.0": 8, "attn.1": 8, "x": 1}, {"attn.0": 8, "attn.1": 5}])
def test_encode_errors_name_the_space_file(two_layer_space, config):
    with pytest.raises(SpaceError) as exc:
        two_layer_space.encode(config)
    assert "enc.yaml" in str(exc.value)


def test_decode_rejects_wrong_length_and_out_of_range(two_layer_space):
    with pytest.raises(SpaceError, match="got 3 values for 2 genes"):
        two_layer_space.decode([0, 0, 0])
    with pytest.raises(SpaceError, match="index 3 out of range for attn.1"):
        two_layer_space.decode([0, 3])
    with pytest.raises(SpaceError, match="index -1"):
        two_layer_space.decode([-1, 0])


def test_encode_accepts_numerically_equal_values(two_layer_space):
    assert list(two_layer_space.encode({"attn.0": 8.0, "attn.1": np.int64(4)})) == [0, 2]


def test_a_group_declared_twice_is_an_error_not_silently_dropped():
    text = "name: x\nadapter: {rank: 8}\ngroups:\n  a: {modules: [q_proj], rank: [8, 4]}\n  a: {modules: [k_proj], rank: [8, 4]}\n"
    with pytest.raises(SpaceError, match=r"dup.yaml: line 5: .*'a' appears twice"):
        SearchSpace.loads(text, source="dup.yaml")
