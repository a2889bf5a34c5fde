"""Tests of reading PEFT adapter folders into a SuperNetwork: the good path and every way a folder can be bad."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorasearch.errors import AdapterError, SpaceError
from lorasearch.models.loading import tiny_model
from lorasearch.network.peft_format import CONFIG_NAME, PICKLE_NAME, WEIGHTS_NAME
from lorasearch.network.supernet import SPACE_FILE_NAME, SuperNetwork
from lorasearch.space import SearchSpace

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
TINY_SPACE = SPACES_DIR / "tiny-llama.yaml"
Q0 = "model.layers.0.self_attn.q_proj"
UP2 = "model.layers.2.mlp.up_proj"


def key(module: str, part: str) -> str:
    return f"base_model.model.{module}.{part}.weight"


def one_line_error(exc: pytest.ExceptionInfo, *parts: str) -> str:
    message = str(exc.value)
    assert "\n" not in message, f"not one line: {message!r}"
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message


def build_adapter(path: Path, space=TINY_SPACE, seed: int = 1) -> Path:
    """Save a super-adapter with non-zero A and B (so loading it is observable)."""
    net = SuperNetwork(tiny_model("llama"), space)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.adapter_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return net.save_adapter(path)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return build_adapter(tmp_path_factory.mktemp("pristine") / "adapter")


@pytest.fixture
def adapter(pristine, tmp_path) -> Path:
    """A fresh copy of the saved super-adapter, free to tamper with."""
    return Path(shutil.copytree(pristine, tmp_path / "adapter"))


def load(adapter_dir: Path, space=TINY_SPACE) -> SuperNetwork:
    return SuperNetwork(tiny_model("llama"), space, adapter=adapter_dir)


def edit_tensors(adapter_dir: Path, edit) -> None:
    tensors = load_file(str(adapter_dir / WEIGHTS_NAME))
    edit(tensors)
    save_file(tensors, str(adapter_dir / WEIGHTS_NAME))


def edit_config(adapter_dir: Path, **changes) -> Path:
    path = adapter_dir / CONFIG_NAME
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))
    return path


# ---------------------------------------------------------------------------- good folders
def test_saved_folder_layout(pristine):
    assert {p.name for p in pristine.iterdir()} == {CONFIG_NAME, WEIGHTS_NAME, SPACE_FILE_NAME}
    config = json.loads((pristine / CONFIG_NAME).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and config["lora_alpha"] == 16
    assert config["bias"] == "none" and config["fan_in_fan_out"] is False
    tensors = load_file(str(pristine / WEIGHTS_NAME))
    assert len(tensors) == 32  # q, k, v, up per layer, A and B
    assert tensors[key(Q0, "lora_A")].shape == (8, 64)
    assert tensors[key(Q0, "lora_B")].shape == (64, 8)
    assert SearchSpace.load(pristine / SPACE_FILE_NAME) == SearchSpace.load(TINY_SPACE).with_num_layers(4)


def test_adapter_round_trip_restores_weights_and_outputs(pristine):
    net = load(pristine)
    tensors = load_file(str(pristine / WEIGHTS_NAME))
    assert torch.equal(net.elastic[Q0].lora_A.weight, tensors[key(Q0, "lora_A")])
    assert torch.equal(net.elastic[UP2].lora_B.weight, tensors[key(UP2, "lora_B")])
    assert net.elastic[Q0].max_rank == 8 and net.elastic[Q0].scaling == pytest.approx(2.0)
    ids = torch.tensor([[1, 5, 9, 20, 7]])
    fresh = SuperNetwork(tiny_model("llama"), TINY_SPACE)
    with torch.no_grad():
        assert not torch.allclose(net.model(ids).logits, fresh.model(ids).logits)
        with net.activated(net.space.min()):
            small = net.model(ids).logits
        assert not torch.allclose(small, net.model(ids).logits)


def test_peft_adapter_name_in_keys_is_accepted(adapter):
    edit_tensors(adapter, lambda t: t.update({k.replace(".weight", ".default.weight"): t.pop(k) for k in list(t)}))
    net = load(adapter)
    assert net.elastic[Q0].lora_A.weight.abs().sum() > 0


def test_adapter_module_outside_space_gets_fixed_adapter(adapter):
    o_proj = "model.layers.1.self_attn.o_proj"
    edit_tensors(adapter, lambda t: t.update({key(o_proj, "lora_A"): torch.ones(8, 64), key(o_proj, "lora_B"): torch.ones(64, 8)}))
    net = load(adapter)
    assert net.elastic[o_proj].max_rank == 8
    assert torch.equal(net.elastic[o_proj].lora_B.weight, torch.ones(64, 8))


# --------------------------------------------------------------------------- missing files
def test_missing_adapter_config(adapter):
    (adapter / CONFIG_NAME).unlink()
    with pytest.raises(AdapterError) as exc:
        load(adapter)
    one_line_error(exc, str(adapter / CONFIG_NAME), "missing", "fix")


def test_missing_adapter_folder(tmp_path):
    with pytest.raises(AdapterError) as exc:
        load(tmp_path / "does-not-exist")
    one_line_error(exc, str(tmp_path / "does-not-exist" / CONFIG_NAME), "fix")


def test_missing_weights_file(adapter):
    (adapter / WEIGHTS_NAME).unlink()
    with pytest.raises(AdapterError) as exc:
        load(adapter)
    one_line_error(exc, str(adapter), WEIGHTS_NAME, PICKLE_NAME, "fix")


@pytest.mark.parametrize("corrupt", ["garbage", "truncated", "empty"])
def test_corrupt_safetensors(adapter, corrupt):
    weights = adapter / WEIGHTS_NAME
    data = weights.read_bytes()
    weights.write_bytes({"garbage": b"not a safetensors file at all" * 4, "truncated": data[: len(data) // 2], "empty": b""}[corrupt])
    with pytest.raises(AdapterError) as exc:
        load(adapter)
    one_line_error(exc, str(weights), "unreadable safetensors", "fix")


def test_weights_without_lora_tensors(adapter):
    save_file({"base_model.model.lm_head.weight": torch.zeros(2, 2)}, str(adapter / WEIGHTS_NAME))
    with pytest.raises(AdapterError) as exc:
        load(adapter)
    one_line_error(exc, str(adapter / WEIGHTS_NAME), "no lora_A/lora_B", "fix")


# ------------------------------------------------------------------------ bad tensors
@pytest.mark.parametrize("part", ["lora_A", "lora_B"])
def test_missing_half_of_a_pair(adapter, part):
    edit_tensors(adapter, lambda t: t.pop(key(Q0, part)))
    with pytest.raises(AdapterError) as exc:
        load(adapter)
    one_line_error(exc, str(adapter / WEIGHTS_NAME), key(Q0, part), "missing", "fix")


def test_lora_a_with_wrong_in_features(adapter):
    edit_tensors(adapter, lambda t: t.update({key(Q0, "lora_A"): torch.zeros(8, 32)}))
    with pytest.raises(AdapterError) as exc:
        load(adapter)
    one_line_error(exc, str(adapter / WEIGHTS_NAME), key(Q0, "lora_A"), "(8, 32)", "expected (8, 64)", "fix")


def test_lora_b_with_wrong_out_features(adapter):
    k_proj = "model.layers.3.self_attn.k_proj"
    edit_tensors(adapter, lambda t: t.update({key(k_proj, "lora_B"): torch.zeros(64, 8)}))
    with pytest.raises(AdapterError) as exc:
        load(adapter)
    one_line_error(exc, key(k_proj, "lora_B"), "(64, 8)", "expected (32, 8)", "fix")


def test_lora_pair_with_different_ranks(adapter):
    edit_tensors(adapter, lambda t: t.update({key(Q0, "lora_A"): torch.zeros(4, 64)}))
    with pytest.raises(AdapterError) as exc:
        load(adapter)
    one_line_error(exc, str(adapter / WEIGHTS_NAME), Q0, "(4, 64)", "(64, 8)", "fix")


def test_module_not_in_model(adapter):
    ghost = "model.layers.9.self_attn.q_proj"
    edit_tensors(adapter, lambda t: t.update({key(ghost, "lora_A"): torch.zeros(8, 64), key(ghost, "lora_B"): torch.zeros(64, 8)}))
    with pytest.raises(AdapterError) as exc:
        load(adapter)
    one_line_error(exc, str(adapter / WEIGHTS_NAME), ghost, "not a linear layer", "fix")


def test_adapter_lacks_elastic_module(adapter):
    edit_tensors(adapter, lambda t: [t.pop(key(UP2, part)) for part in ("lora_A", "lora_B")])
    with pytest.raises(AdapterError) as exc:
        load(adapter)
    one_line_error(exc, str(adapter / WEIGHTS_NAME), UP2, "space makes elastic", "fix")


def test_trained_rank_differs_from_first_rank_choice(adapter, tmp_path):
    data = SearchSpace.load(TINY_SPACE).to_dict()
    data["adapter"]["rank"] = 6
    data["groups"]["attn"]["rank"] = [6, 4]
    data["groups"]["up"]["rank"] = [6, 4]
    space_file = SearchSpace.from_dict(data).save(tmp_path / "rank6.yaml")
    with pytest.raises(SpaceError) as exc:
        load(adapter, space_file)
    one_line_error(exc, str(space_file), "start at 6", "trained rank is 8", "fix", "make 8 the first rank choice")


def test_adapter_of_lower_rank_than_space(adapter):
    def shrink(t):
        for k in list(t):
            t[k] = t[k][:4] if ".lora_A." in k else t[k][:, :4].contiguous()
    edit_tensors(adapter, shrink)
    edit_config(adapter, r=4)  # a consistent rank-4 adapter (a config that disagrees is refused on its own)
    with pytest.raises(SpaceError) as exc:
        load(adapter)
    one_line_error(exc, str(TINY_SPACE), "start at 8", "trained rank is 4", "fix")


def test_adapter_lacks_fixed_target_module(tmp_path):
    lonas = SPACES_DIR / "llama-lonas.yaml"
    folder = build_adapter(tmp_path / "lonas", space=lonas)
    down = "model.layers.0.mlp.down_proj"
    edit_tensors(folder, lambda t: [t.pop(key(down, part)) for part in ("lora_A", "lora_B")])
    with pytest.raises(AdapterError) as exc:
        load(folder, lonas)
    one_line_error(exc, down, "fix")


# ---------------------------------------------------------------------------- pickle files
def test_pickle_weights_load_with_warning(adapter):
    tensors = load_file(str(adapter / WEIGHTS_NAME))
    torch.save(tensors, adapter / PICKLE_NAME)
    (adapter / WEIGHTS_NAME).unlink()
    with pytest.warns(UserWarning, match="weights_only=True") as record:
        net = load(adapter)
    assert any(PICKLE_NAME in str(w.message) for w in record)
    assert torch.equal(net.elastic[Q0].lora_A.weight, tensors[key(Q0, "lora_A")])
    assert torch.equal(net.elastic[UP2].lora_B.weight, tensors[key(UP2, "lora_B")])


def test_safetensors_preferred_over_pickle(adapter):
    (adapter / PICKLE_NAME).write_bytes(b"not even a pickle")
    net = load(adapter)  # no warning needed, no error: the .bin is never opened
    assert net.elastic[Q0].lora_A.weight.abs().sum() > 0


class NotATensor:
    """A class that torch.load(weights_only=True) refuses to unpickle."""


def _write_unsafe_pickle(adapter: Path) -> None:
    tensors = load_file(str(adapter / WEIGHTS_NAME))
    tensors["extra"] = NotATensor()
    torch.save(tensors, adapter / PICKLE_NAME)
    (adapter / WEIGHTS_NAME).unlink()


def test_pickle_with_arbitrary_objects_is_refused(adapter):
    _write_unsafe_pickle(adapter)
    with pytest.warns(UserWarning), pytest.raises(AdapterError) as exc:
        load(adapter)
    assert str(adapter / PICKLE_NAME) in str(exc.value) and "refused" in str(exc.value)


def test_refused_pickle_error_is_one_line(adapter):
    _write_unsafe_pickle(adapter)
    with pytest.warns(UserWarning), pytest.raises(AdapterError) as exc:
        load(adapter)
    one_line_error(exc, str(adapter / PICKLE_NAME), "fix")
    assert "\x1b" not in str(exc.value)


# ----------------------------------------------------------------------------- PEFT configs
@pytest.mark.parametrize(
    "changes, field",
    [
        ({"fan_in_fan_out": True}, "fan_in_fan_out"),
        ({"use_dora": True}, "use_dora"),
        ({"bias": "all"}, "bias"),
        ({"bias": "lora_only"}, "bias"),
        ({"peft_type": "IA3"}, "peft_type"),
    ],
)
def test_unsupported_peft_config_is_refused(adapter, changes, field):
    config_file = edit_config(adapter, **changes)
    with pytest.raises(AdapterError) as exc:
        load(adapter)
    one_line_error(exc, str(config_file), field, "fix")


def test_supported_peft_flags_explicitly_off_are_accepted(adapter):
    edit_config(adapter, fan_in_fan_out=False, use_dora=False, bias="none")
    assert load(adapter).elastic[Q0].max_rank == 8


def test_malformed_adapter_config(adapter):
    (adapter / CONFIG_NAME).write_text('{"peft_type": "LORA",\n "r": 8,,}')
    with pytest.raises(AdapterError) as exc:
        load(adapter)
    one_line_error(exc, str(adapter / CONFIG_NAME), "line 2", "malformed JSON")


@pytest.mark.parametrize("r", [0, "8", 2.5])
def test_bad_rank_in_adapter_config(adapter, r):
    edit_config(adapter, r=r)
    with pytest.raises(AdapterError) as exc:
        load(adapter)
    one_line_error(exc, str(adapter / CONFIG_NAME), "r:")


@pytest.mark.parametrize("content", ['{"r": 8,,}', '{"peft_type": "LORA", "r": 0}'])
def test_adapter_config_errors_give_a_fix(adapter, content):
    (adapter / CONFIG_NAME).write_text(content)
    with pytest.raises(AdapterError) as exc:
        load(adapter)
    one_line_error(exc, "fix")


def test_failed_load_leaves_model_unwrapped(adapter, pristine):
    edit_tensors(adapter, lambda t: t.pop(key(Q0, "lora_B")))
    model = tiny_model("llama")
    with pytest.raises(AdapterError):
        SuperNetwork(model, TINY_SPACE, adapter=adapter)
    assert type(model.get_submodule(Q0)) is torch.nn.Linear
    net = SuperNetwork(model, TINY_SPACE, adapter=pristine)  # the same model can still be wrapped
    assert net.elastic[Q0].max_rank == 8


# ------------------------------------------------------- every tensor accounted for, stock PEFT the oracle
QV_SPACE = {"name": "qv", "adapter": {"rank": 4, "alpha": 8},
            "groups": {"qv": {"modules": ["self_attn.q_proj", "self_attn.v_proj"], "rank": [4, 2]}}}


def stock_peft_folder(path: Path, tied: bool = False, seed: int = 0, **config) -> Path:
    """A folder written by stock PEFT, with non-zero LoRA weights and changed modules_to_save weights."""
    from peft import LoraConfig, get_peft_model

    model = tiny_model("llama", tie_word_embeddings=tied)
    options = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], **config}
    peft_model = get_peft_model(model, LoraConfig(**options))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if p.requires_grad:  # LoRA weights and the modules_to_save copies
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    peft_model.save_pretrained(path)
    return path


def stock_logits(folder: Path, ids: torch.Tensor, tied: bool = False) -> torch.Tensor:
    from peft import PeftModel

    model = PeftModel.from_pretrained(tiny_model("llama", tie_word_embeddings=tied), folder).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def ids() -> torch.Tensor:
    return torch.randint(3, 250, (2, 10), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("tied", [False, True])
def test_modules_to_save_load_into_the_base_and_travel_into_every_export(tmp_path, tied):
    from transformers import AutoModelForCausalLM

    from lorasearch.export.exporters import export_merged, export_peft, export_pruned, load_pruned

    folder = stock_peft_folder(tmp_path / "stock", tied=tied, modules_to_save=["lm_head", "embed_tokens"])
    want = stock_logits(folder, ids(), tied)
    space = SearchSpace.from_dict(QV_SPACE)
    net = SuperNetwork(tiny_model("llama", tie_word_embeddings=tied), space, adapter=folder)
    assert set(net.saved_tensors()) == {"lm_head.weight", "model.embed_tokens.weight"}
    with torch.no_grad():
        torch.testing.assert_close(net.model(input_ids=ids()).logits, want, atol=1e-5, rtol=1e-5)
    config = net.space.max()
    export_peft(net, config, tmp_path / "peft")
    assert json.loads((tmp_path / "peft" / CONFIG_NAME).read_text())["modules_to_save"] == ["lm_head", "model.embed_tokens"]
    torch.testing.assert_close(stock_logits(tmp_path / "peft", ids(), tied), want, atol=1e-5, rtol=1e-5)
    export_merged(net, config, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids()).logits, want, atol=1e-5, rtol=1e-5)
    again = SuperNetwork(tiny_model("llama", tie_word_embeddings=tied), space, adapter=net.save_adapter(tmp_path / "super"))
    assert again.fingerprint() == net.fingerprint()
    mode_b = SearchSpace.from_dict({**QV_SPACE, "groups": {**QV_SPACE["groups"], "mlp": {"width": [1.0, 0.5], "channels": "mlp"}}})
    pruned_net = SuperNetwork(tiny_model("llama", tie_word_embeddings=tied), mode_b, adapter=folder)
    small = {**pruned_net.space.min()}
    export_pruned(pruned_net, small, tmp_path / "pruned")
    pruned = load_pruned(tmp_path / "pruned").eval()
    with pruned_net.activated(small), torch.no_grad():
        torch.testing.assert_close(pruned(input_ids=ids()).logits, pruned_net.model(input_ids=ids()).logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(pruned.lm_head.weight, net.saved_tensors()["lm_head.weight"])
    plain = SuperNetwork(tiny_model("llama", tie_word_embeddings=tied), space, adapter=folder)
    with torch.no_grad():
        plain.saved_parameters["lm_head.weight"][0].weight.mul_(2)
    assert plain.fingerprint() != net.fingerprint()  # the modules_to_save weights count in the fingerprint


def test_layers_to_transform_is_represented_by_the_tensors_themselves(tmp_path):
    folder = stock_peft_folder(tmp_path / "stock", layers_to_transform=[0, 2], layers_pattern="layers")
    space = SearchSpace.from_dict({**QV_SPACE, "groups": {"qv": {**QV_SPACE["groups"]["qv"], "layers": [0, 2]}}})
    net = SuperNetwork(tiny_model("llama"), space, adapter=folder)
    assert sorted(n for n, m in net.elastic.items() if m.lora_A is not None) == [
        f"model.layers.{i}.self_attn.{p}_proj" for i in (0, 2) for p in ("q", "v")]
    with torch.no_grad():
        torch.testing.assert_close(net.model(input_ids=ids()).logits, stock_logits(folder, ids()), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("config, key", [
    ({"target_modules": ["q_proj", "v_proj", "embed_tokens"]}, "lora_embedding_A"),
    ({"lora_bias": True}, "lora_bias"),
    ({"use_dora": True}, "use_dora"),
    ({"layer_replication": [[0, 2], [1, 4]]}, "layer_replication"),
    ({"trainable_token_indices": [5, 6]}, "trainable_token_indices"),
])
def test_tensors_and_fields_lorasearch_cannot_represent_are_refused_naming_the_key(tmp_path, config, key):
    folder = stock_peft_folder(tmp_path / "stock", **config)
    with pytest.raises(AdapterError) as exc:
        SuperNetwork(tiny_model("llama"), SearchSpace.from_dict(QV_SPACE), adapter=folder)
    one_line_error(exc, key, "fix")


def test_an_unknown_tensor_is_refused_naming_it(adapter):
    edit_tensors(adapter, lambda t: t.update({"base_model.model.model.norm.lora_magnitude_vector": torch.ones(64)}))
    with pytest.raises(AdapterError) as exc:
        load(adapter)
    one_line_error(exc, "model.norm.lora_magnitude_vector", "fix")


def test_an_adapter_of_a_base_rewritten_at_initialisation_is_refused(adapter):
    edit_config(adapter, init_lora_weights="pissa")
    with pytest.raises(AdapterError) as exc:
        load(adapter)
    one_line_error(exc, "init_lora_weights", "pissa", "fix")


# ------------------------------------------------------------------------- rank_pattern modules
def test_a_rank_pattern_module_is_elastic_in_a_group_that_starts_at_its_own_rank(tmp_path):
    from peft import PeftModel

    from lorasearch.export.exporters import export_peft

    folder = stock_peft_folder(tmp_path / "stock", rank_pattern={"layers.0.self_attn.q_proj": 2})
    q0 = "model.layers.0.self_attn.q_proj"
    with pytest.raises(SpaceError) as exc:  # one group for every q_proj and v_proj: its 4 is above q0's 2
        SuperNetwork(tiny_model("llama"), SearchSpace.from_dict(QV_SPACE), adapter=folder)
    one_line_error(exc, "groups.qv.rank", q0, "start at 4", "trained rank is 2", "fix: make 2 the first rank choice",
                   "separate groups")
    space = SearchSpace.from_dict({  # the fix the message names: q0 in a group of its own that starts at 2
        "name": "qv", "adapter": {"rank": 4, "alpha": 8},
        "groups": {"q0": {"modules": ["self_attn.q_proj"], "layers": [0], "rank": [2, 1]},
                   "q": {"modules": ["self_attn.q_proj"], "layers": [1, 2, 3], "rank": [4, 2]},
                   "v": {"modules": ["self_attn.v_proj"], "rank": [4, 2]}},
    })
    net = SuperNetwork(tiny_model("llama"), space, adapter=folder)
    with torch.no_grad():
        torch.testing.assert_close(net.model(input_ids=ids()).logits, stock_logits(folder, ids()), atol=1e-5, rtol=1e-5)
    config = {**net.space.max(), "q0.0": 1, "q.2": 2}
    net.activate(config)
    assert net.elastic[q0].active_rank == 1 and net.elastic[q0].max_rank == 2
    export_peft(net, config, tmp_path / "sub")
    stock = PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "sub").eval()
    with torch.no_grad():
        torch.testing.assert_close(stock(input_ids=ids()).logits, net.model(input_ids=ids()).logits, atol=1e-5, rtol=1e-5)
    fresh = {**space.to_dict(), "groups": {"q0": {"modules": ["self_attn.q_proj"], "layers": [0], "rank": [2, 1]}}}
    with pytest.raises(SpaceError) as exc:  # fresh adapters are trained at adapter.rank
        SuperNetwork(tiny_model("llama"), SearchSpace.from_dict(fresh))
    one_line_error(exc, "groups.q0.rank", "start at 2", "trained rank is 4", "fix")
