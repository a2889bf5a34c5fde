"""Importers of the reference implementation's space files (SQFT JSON, LoNAS/Shears NNCF JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorasearch.errors import SpaceError
from lorasearch.formats import import_space, read_reference_json
from lorasearch.formats.nncf import Node, parse_node
from lorasearch.formats.sqft import parse_target
from lorasearch.space import SearchSpace

FIXTURES = Path(__file__).parent / "fixtures" / "reference"
QKV = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
ADAPTER = {"rank": 32, "alpha": 64}
LAYER = (
    "PeftModelForCausalLM/LoraModel[base_model]/LlamaForCausalLM[model]/LlamaModel[model]/"
    "ModuleList[layers]/LlamaDecoderLayer[{i}]"
)
SQFT_TARGET = "base_model.model.model.layers.{i}.self_attn.{m}.lora_A"


def lora_a(i: int | str, module: str = "q_proj", parent: str = "LlamaAttention[self_attn]") -> str:
    return f"{LAYER.format(i=i)}/{parent}/Linear[{module}]/ModuleDict[lora_A]/NNCFLinear[default]/linear_0"


def lora_b(i: int, module: str) -> str:
    return f"{LAYER.format(i=i)}/LlamaMLP[mlp]/Linear[{module}]/ModuleDict[lora_B]/NNCFLinear[default]/linear_0"


def base(i: int, module: str) -> str:
    return f"{LAYER.format(i=i)}/LlamaMLP[mlp]/Linear[{module}]/NNCFUserSelfLinear[self_linear]/linear_0"


def nncf_config(groups: list, widths: list, root: str = "bootstrapNAS") -> dict:
    width = {"overwrite_groups": groups, "overwrite_groups_widths": widths}
    return {root: {"training": {"elasticity": {"available_elasticity_dims": ["width"], "width": width}}}}


def write(tmp_path: Path, data, name: str = "ref.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def expected(space: SearchSpace, data: dict) -> SearchSpace:
    """A hand-written space with the imported one's name and description (free text)."""
    return SearchSpace.from_dict({"name": space.name, "description": space.description, **data})


# ---------------------------------------------------------------------------------------- SQFT
def test_sqft_per_layer_entries_collapse_into_one_layer_shared_group():
    space = import_space(FIXTURES / "sqft_elastic_adapter_config.json")
    assert space == expected(space, {
        "adapter": ADAPTER, "per_layer": "model.layers.{i}", "num_layers": 2,
        "groups": {"attn": {"modules": QKV, "rank": [32, 24, 16]}},
    })
    assert space.name == "sqft_elastic_adapter_config"
    assert "alpha" in space.description and "r=32, alpha=64" in space.description
    space = space.with_num_layers(2)
    assert space.size() == 9
    assert space.keys == ("attn.0", "attn.1")
    assert space.heuristic() == {"attn.0": 24, "attn.1": 24}


def test_sqft_per_module_entries_become_a_module_shared_group():
    space = import_space(FIXTURES / "sqft_elastic_adapter_config_per_module.json")
    assert space == expected(space, {
        "adapter": ADAPTER, "per_layer": "model.layers.{i}", "num_layers": 2,
        "groups": {"attn": {"modules": QKV, "rank": [32, 24, 16], "share": "module"}},
    })
    space = space.with_num_layers(2)
    assert space.size() == 3**6
    assert space.keys[:3] == ("attn.0.self_attn.q_proj", "attn.0.self_attn.k_proj", "attn.0.self_attn.v_proj")
    assert set(space.heuristic().values()) == {24}


def test_sqft_legacy_list_under_sqft_key(tmp_path):
    entries = read_reference_json(FIXTURES / "sqft_elastic_adapter_config.json")
    path = write(tmp_path, {"algorithm": "nls", "SQFT": entries})
    assert import_space(path, name="x").groups == import_space(FIXTURES / "sqft_elastic_adapter_config.json").groups


def test_sqft_layers_that_disagree_get_layer_subsets(tmp_path):
    spaces = [[32, 24, 16], [32, 16], [32, 24, 16]]
    entries = [{"target": [SQFT_TARGET.format(i=i, m=m) for m in ("q_proj", "k_proj", "v_proj")], "search_space": s}
               for i, s in enumerate(spaces)]
    entries.append({"target": [SQFT_TARGET.format(i=2, m="o_proj")], "search_space": [32, 8]})
    space = import_space(write(tmp_path, entries), name="mixed", alpha=16)
    assert space == expected(space, {
        "adapter": {"rank": 32, "alpha": 16}, "per_layer": "model.layers.{i}", "num_layers": 3,
        "groups": {
            "attn": {"modules": QKV, "rank": [32, 24, 16], "layers": [0, 2]},
            "attn_2": {"modules": QKV, "rank": [32, 16], "layers": [1]},
            "o": {"modules": ["self_attn.o_proj"], "rank": [32, 8], "layers": [2]},
        },
    })
    assert space.with_num_layers(3).size() == 3 * 2 * 3 * 2


def test_parse_target_strips_peft_prefix_and_lora_suffix():
    assert parse_target("base_model.model.model.layers.7.mlp.up_proj.lora_A") == ("model.layers.{i}", 7, "mlp.up_proj")
    assert parse_target("base_model.model.model.layers.0.self_attn.qkv_proj.lora_B.default.weight") == (
        "model.layers.{i}", 0, "self_attn.qkv_proj")


# ---------------------------------------------------------------------------------------- NNCF
def test_shears_templates_apply_to_every_layer():
    space = import_space(FIXTURES / "shears_nncf_llama.json")
    assert space == expected(space, {
        "adapter": ADAPTER, "per_layer": "model.layers.{i}",
        "groups": {
            "attn": {"modules": QKV, "rank": [32, 24, 16]},
            "up": {"modules": ["mlp.up_proj"], "rank": [32, 24, 16]},
            "down": {"modules": ["mlp.down_proj"], "rank": [32, 24, 16]},
        },
    })
    assert space.num_layers is None
    space = space.with_num_layers(2)
    assert space.size() == 3**6
    assert space.keys == ("attn.0", "attn.1", "up.0", "up.1", "down.0", "down.1")
    assert set(space.heuristic().values()) == {24}


def test_lonas_explicit_layers_with_mode_b_width():
    space = import_space(FIXTURES / "lonas_nncf_llama.json")
    assert space == expected(space, {
        "adapter": ADAPTER, "per_layer": "model.layers.{i}", "num_layers": 2,
        "groups": {
            "attn": {"modules": QKV, "rank": [32, 28]},
            "mlp": {"width": [11008, 9632, 8256, 6880, 5504], "channels": "mlp"},
            "gate_up": {"modules": ["mlp.gate_proj", "mlp.up_proj"], "rank": [32, 28]},
        },
    })
    assert space.mode == "B"
    space = space.with_num_layers(2)
    assert space.size() == 2 * 2 * 5 * 5 * 2 * 2
    assert space.keys == ("attn.0", "attn.1", "mlp.0", "mlp.1", "gate_up.0", "gate_up.1")
    assert space.heuristic() == {
        "attn.0": 32, "attn.1": 32, "mlp.0": 8256, "mlp.1": 8256, "gate_up.0": 32, "gate_up.1": 32,
    }


def test_width_group_outside_the_mlp_preset_names_its_reader(tmp_path):
    groups = [[base(0, "up_proj"), lora_b(0, "up_proj")], [base(1, "up_proj")]]
    space = import_space(write(tmp_path, nncf_config(groups, [[128, 64], [128, 64]])))
    assert space.to_dict()["groups"] == {
        "mlp": {"width": [128, 64], "channels": {"out": ["mlp.up_proj"], "in": ["mlp.down_proj"]}},
    }
    assert space.adapter.targets == ("mlp.up_proj",)  # its lora_B follows the cut; its rank is fixed


def test_sqft_legacy_nncf_tree(tmp_path):
    sdpa = "LlamaSdpaAttention[self_attn]"
    groups = [[lora_a(i, m, sdpa).replace("Linear[", "QuantLinear[") for m in ("q_proj", "k_proj", "v_proj")]
              for i in range(2)]
    data = nncf_config(groups, [[16, 12, 8]] * 2, root="SQFT")
    data["SQFT"]["training"]["algorithm"] = "nls"
    space = import_space(write(tmp_path, data))
    assert space.to_dict()["groups"] == {"attn": {"modules": QKV, "rank": [16, 12, 8]}}
    assert space.adapter.rank == 16 and space.adapter.alpha == 32


def test_group_across_layers_becomes_one_global_gene(tmp_path):
    space = import_space(write(tmp_path, nncf_config([[lora_a(0), lora_a(1)]], [[32, 16]])))
    assert space.to_dict()["groups"] == {"q": {"modules": ["self_attn.q_proj"], "rank": [32, 16], "share": "global"}}
    assert space.with_num_layers(2).keys == ("q",)


def test_parse_node_roles():
    assert parse_node(lora_a(3)) == Node("model.layers.{i}", 3, "self_attn.q_proj", "lora_A")
    assert parse_node(base(0, "gate_proj")) == Node("model.layers.{i}", 0, "mlp.gate_proj", "base")
    assert parse_node(lora_b(1, "up_proj")).role == "lora_B"
    assert parse_node("{re}" + lora_a("{*}")).layer is None


def test_comments_and_trailing_commas_are_read_but_strings_are_untouched(tmp_path):
    text = '{"a": "http://x//y, ]", // note\n "b": [1, 2,],\n /* block\n */ "c": {"d": "\\"//",},}'
    assert read_reference_json(write(tmp_path, text)) == {"a": "http://x//y, ]", "b": [1, 2], "c": {"d": '"//'}}


# ---------------------------------------------------------------------------------------- errors
def lonas_group(*nodes):
    return nncf_config([list(nodes)], [[11008, 5504]])


@pytest.mark.parametrize("content, message", [
    ("[1, 2", "malformed JSON"),
    ('"just text"', "not a reference search space"),
    ({"other": 1}, "without bootstrapNAS or SQFT"),
    ({"SQFT": "x"}, "SQFT: must be a list"),
    ([], "must be a non-empty list"),
    ([{"target": [SQFT_TARGET.format(i=0, m="q_proj")]}], "[0].search_space: missing"),
    ([{"target": ["lm_head.lora_A"], "search_space": [8]}], "[0].target[0]: cannot parse"),
    ([{"target": [SQFT_TARGET.format(i=0, m="q_proj")], "search_space": [16, 32]}], "not strictly descending"),
    ([{"target": [SQFT_TARGET.format(i=i, m="q_proj")], "search_space": [32, 16]} for i in (0, 0)], "already in [0]"),
    ([{"target": [SQFT_TARGET.format(i=0, m=m)], "search_space": s} for m, s in (("q_proj", [32]), ("k_proj", [16]))],
     "trained rank 32"),
    (nncf_config([["model/layers/q_proj"]], [[32]]), "overwrite_groups[0][0]: cannot parse node"),
    (nncf_config([[lora_a(0)]], [[16, 24, 32]]), "overwrite_groups_widths[0]: [16, 24, 32] is not strictly descending"),
    (nncf_config([[lora_a(0)]], [[-1]]), "-1 is a placeholder"),
    (nncf_config([[lora_a(0)]], []), "1 overwrite_groups but 0"),
    (nncf_config([], []), "overwrite_groups: missing or empty"),
    (lonas_group(lora_b(0, "up_proj")), "only lora_B nodes"),
    (lonas_group(lora_a(0), base(0, "up_proj")), "mixes lora_A"),
    (lonas_group(base(0, "up_proj"), lora_b(0, "gate_proj")), "lora_B of mlp.gate_proj is cut but not its base"),
    (lonas_group(base(0, "up_proj").replace("up_proj", "act_fn")), "cannot tell which module reads"),
    (nncf_config([[lora_a(0), lora_a(1, "k_proj")]], [[32]]), "different modules in each"),
    (nncf_config([[lora_a(0), lora_a("{*}")]], [[32]]), "mixes {*} with explicit"),
])
def test_malformed_input_names_the_file_and_field(tmp_path, content, message):
    path = write(tmp_path, content, name="bad_space.json")
    with pytest.raises(SpaceError) as err:
        import_space(path)
    text = str(err.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text
    assert "fix" in text


# ---------------------------------------------------------------------------------------- binding
@pytest.fixture(scope="module")
def tiny_llama():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
    return transformers.LlamaForCausalLM(config)


@pytest.mark.parametrize("fixture", ["sqft_elastic_adapter_config", "sqft_elastic_adapter_config_per_module",
                                     "shears_nncf_llama", "lonas_nncf_llama"])
def test_imported_spaces_bind_to_a_llama(tmp_path, tiny_llama, fixture):
    from lorasearch.network.binding import bind

    path = FIXTURES / f"{fixture}.json"
    text = path.read_text().replace("11008, 9632, 8256, 6880, 5504", "128, 112, 96, 80, 64")  # the tiny MLP
    space = import_space(write(tmp_path, text, name=path.name))
    binding = bind(space, tiny_llama)
    assert set(binding.slots) == set(space.with_num_layers(2).keys)
    assert "model.layers.1.self_attn.q_proj" in binding.rank_modules


# ------------------------------------------------------------------------------ descriptions
@pytest.mark.parametrize("fixture, missing", [
    ("sqft_elastic_adapter_config", "mlp.up_proj, mlp.gate_proj, mlp.down_proj"),
    ("sqft_elastic_adapter_config_per_module", "mlp.up_proj, mlp.gate_proj, mlp.down_proj"),
    ("shears_nncf_llama", "mlp.gate_proj"),
    ("lonas_nncf_llama", "mlp.down_proj"),  # LoNAS's LLaMA command trains down_proj with a fixed rank
])
def test_descriptions_name_the_lora_modules_without_a_group_and_how_alpha_was_chosen(fixture, missing):
    description = import_space(FIXTURES / f"{fixture}.json").description
    assert "--target_modules that are in no group keep their trained rank: add them to adapter.targets" in description
    assert f"of the modules the reference's LLaMA commands train, these are in no group here: {missing} (" in description
    assert "alpha = 2 x rank = 64 (the file does not record alpha" in description
    assert "alpha = 16 (given)" in import_space(FIXTURES / f"{fixture}.json", alpha=16).description


def test_the_modules_a_description_names_are_real_module_paths(tmp_path, tiny_llama):
    """Following the description (adding its modules to adapter.targets) gives their LoRA a fixed rank."""
    from lorasearch.network.binding import bind

    space = import_space(FIXTURES / "shears_nncf_llama.json")
    data = space.to_dict()
    data["adapter"]["targets"] = ["mlp.gate_proj"]
    binding = bind(SearchSpace.from_dict(data), tiny_llama)
    assert {"model.layers.0.mlp.gate_proj", "model.layers.1.mlp.gate_proj"} <= set(binding.fixed_modules)


def test_descriptions_of_other_families_and_of_width_only_files(tmp_path):
    phi3 = [{"target": [f"base_model.model.model.layers.{i}.self_attn.qkv_proj.lora_A"], "search_space": [16, 12, 8]}
            for i in range(2)]
    assert "every module the reference's Phi-3 commands train has a group here" in import_space(
        write(tmp_path, phi3, "phi3.json")).description
    bert = [{"target": [f"base_model.model.bert.encoder.layer.{i}.attention.self.query.lora_A"], "search_space": [8, 4]}
            for i in range(2)]
    description = import_space(write(tmp_path, bert, "bert.json")).description
    assert "add them to adapter.targets." in description and "reference's" not in description
    width_only = import_space(write(tmp_path, nncf_config([[base(0, "gate_proj"), base(0, "up_proj")]],
                                                          [[128, 64]]), "width.json")).description
    assert "No rank group, so no adapter rank or alpha is set" in width_only
