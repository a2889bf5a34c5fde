"""Export against the real loaders: stock PEFT, AutoModelForCausalLM, and `load_pruned`."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import torch
import yaml
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import AutoModelForCausalLM

from lorasearch import SearchSpace, SuperNetwork
from lorasearch.errors import LoraSearchWarning
from lorasearch.export.exporters import (
    PRUNED_FILE,
    SUBNET_FILE,
    ExportError,
    export_config,
    export_merged,
    export_peft,
    export_pruned,
    load_pruned,
)
from lorasearch.models.loading import byte_tokenizer, save_model_folder, tiny_model
from lorasearch.results.pick import knee_index, pick_config
from lorasearch.runs.exporting import export_run, load_results

ATOL_PEFT = 1e-5
ATOL_PRUNED = 1e-4

ATTN = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]


def rank_space(rslora: bool = False) -> SearchSpace:
    """Mode A with rank 0 among the choices, so some modules drop out of the sub-adapter."""
    return SearchSpace.from_dict({
        "name": "a", "adapter": {"rank": 8, "alpha": 16, "use_rslora": rslora},
        "groups": {
            "attn": {"modules": ATTN, "rank": [8, 6, 3, 0]},
            "up": {"modules": ["mlp.up_proj"], "rank": [8, 5, 0]},
        },
    })


def width_space(share: str) -> SearchSpace:
    return SearchSpace.from_dict({
        "name": f"b-{share}", "adapter": {"rank": 8, "alpha": 16},
        "groups": {
            "attn": {"modules": ["self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj"], "rank": [8, 4]},
            "mlp_rank": {"modules": ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"], "rank": [8, 4, 0]},
            "mlp": {"width": [1.0, 0.75, 0.5], "channels": "mlp", "share": share},
            "heads": {"heads": [4, 2], "share": share},
        },
    })


def make_net(family: str, space: SearchSpace, seed: int = 0, **model_kw) -> SuperNetwork:
    net = SuperNetwork(tiny_model(family, **model_kw), space, tokenizer=byte_tokenizer(), model_spec=f"tiny-{family}")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.adapter_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return net


def inputs(seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 250, (2, 12), generator=torch.Generator().manual_seed(seed))


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids).logits


def net_logits(net: SuperNetwork, config, ids) -> torch.Tensor:
    with net.activated(config):
        return logits(net.model, ids)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------- peft
def configs_with_zero_ranks(net: SuperNetwork, seeds=range(3)):
    for seed in seeds:
        config = net.space.sample(seed)
        config["attn.1"], config["up.2"] = 0, 0  # always some rank-0 modules
        yield config


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_peft_sub_adapter_loads_in_stock_peft_with_the_same_logits(family, tmp_path):
    net = make_net(family, rank_space())
    ids = inputs(1)
    for n, config in enumerate(configs_with_zero_ranks(net)):
        out = export_peft(net, config, tmp_path / f"peft{n}")
        loaded = PeftModel.from_pretrained(tiny_model(family), out).eval()
        torch.testing.assert_close(logits(loaded, ids), net_logits(net, config, ids), atol=ATOL_PEFT, rtol=0)
        sizes = json.loads((out / SUBNET_FILE).read_text())["modules"]
        inner = loaded.base_model.model
        for name, size in sizes.items():
            module = inner.get_submodule(name)
            if size["rank"] == 0:
                assert not isinstance(module, LoraLayer), f"{name} has rank 0 and must be absent"
            else:
                assert module.r["default"] == size["rank"]
                assert module.scaling["default"] == pytest.approx(16 / 8)  # the training scale alpha / r_max


def test_peft_keys_match_one_module_each(tmp_path):
    net = make_net("llama", rank_space())
    config = next(configs_with_zero_ranks(net))
    adapter = json.loads((export_peft(net, config, tmp_path / "p") / "adapter_config.json").read_text())
    names = [n for n, _ in tiny_model("llama").named_modules()]
    for key in list(adapter["rank_pattern"]) + list(adapter["alpha_pattern"]):
        hits = [n for n in names if re.match(rf"(.*\.)?({key})$", n)]
        assert len(hits) == 1, (key, hits)
    assert "model.layers.1.self_attn.q_proj" not in adapter["target_modules"]


def test_peft_rslora_keeps_the_scale(tmp_path):
    net = make_net("llama", rank_space(rslora=True))
    config = net.space.sample(4)
    out = export_peft(net, config, tmp_path / "rs")
    loaded = PeftModel.from_pretrained(tiny_model("llama"), out).eval()
    ids = inputs()
    torch.testing.assert_close(logits(loaded, ids), net_logits(net, config, ids), atol=ATOL_PEFT, rtol=0)


def test_peft_refuses_shrunk_widths_and_empty_adapters(tmp_path):
    net = make_net("llama", width_space("global"))
    with pytest.raises(ExportError, match="--format peft: the config shrinks.*fix: use --format pruned"):
        export_peft(net, net.space.min(), tmp_path / "p")
    zero = {k: 0 for k in rank_space().with_num_layers(4).keys}
    with pytest.raises(ExportError, match="rank 0"):
        export_peft(make_net("llama", rank_space()), zero, tmp_path / "z")
    assert not any(tmp_path.iterdir())  # nothing half-written


# ----------------------------------------------------------------------------------- merged
def test_merged_loads_with_auto_model_and_the_same_logits(tmp_path):
    net = make_net("llama", rank_space())
    config = net.space.sample(7)
    out = export_merged(net, config, tmp_path / "merged")
    loaded = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    ids = inputs(2)
    torch.testing.assert_close(logits(loaded, ids), net_logits(net, config, ids), atol=ATOL_PEFT, rtol=0)
    assert (out / "tokenizer.json").is_file()
    assert n_params(loaded) == n_params(tiny_model("llama"))
    assert net.active_config == net.space.max()  # the network is left as it was


def test_merged_refuses_shrunk_widths(tmp_path):
    net = make_net("llama", width_space("global"))
    with pytest.raises(ExportError, match="--format merged.*fix: use --format pruned"):
        export_merged(net, net.space.min(), tmp_path / "m")
    export_merged(net, dict(net.space.min(), mlp=1.0, heads=4), tmp_path / "full")  # full width is fine


# ------------------------------------------------------------- README "Serving": the lm-eval lines
@pytest.mark.parametrize("fmt", ["peft", "merged", "pruned"])
def test_the_readmes_lm_eval_hf_line_loads_each_format(fmt, tmp_path):
    """``lm_eval --model hf --model_args pretrained=BASE,peft=path`` (peft) or ``pretrained=path``
    (merged, pruned with one shape for every block) runs the exported subnet: lm-eval's own loader,
    the super-network's sub-network as the oracle."""
    huggingface = pytest.importorskip("lm_eval.models.huggingface")
    if fmt == "peft":
        net = make_net("llama", rank_space())
        config = next(configs_with_zero_ranks(net))
        save_model_folder(tmp_path / "base", tiny_model("llama"), byte_tokenizer())
        out = export_peft(net, config, tmp_path / fmt)
        model_args = {"pretrained": str(tmp_path / "base"), "peft": str(out)}
    else:
        net = make_net("llama", width_space("global"))
        config = dict(net.space.sample(3), **({"mlp": 1.0, "heads": 4} if fmt == "merged" else {"mlp": 0.5, "heads": 2}))
        out = (export_merged if fmt == "merged" else export_pruned)(net, config, tmp_path / fmt)
        model_args = {"pretrained": str(out)}
    lm = huggingface.HFLM(**model_args, device="cpu", batch_size=1, dtype="float32")
    ids = inputs(4)
    torch.testing.assert_close(logits(lm.model.eval(), ids), net_logits(net, config, ids),
                               atol=ATOL_PRUNED if fmt == "pruned" else ATOL_PEFT, rtol=0)


# ----------------------------------------------------------------------------------- pruned
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_pruned_uniform_widths_load_with_the_stock_loader(family, tmp_path):
    net = make_net(family, width_space("global"))
    config = dict(net.space.sample(3), mlp=0.5, heads=2)
    out = export_pruned(net, config, tmp_path / "pruned")
    layout = json.loads((out / PRUNED_FILE).read_text())
    assert layout["stock"] and not layout["linears"]
    saved = json.loads((out / "config.json").read_text())
    sizes = [saved[k] for k in ("intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim")]
    assert sizes == [64, 2, 1, 16]
    ids = inputs(3)
    expected = net_logits(net, config, ids)
    for loaded in (AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager"), load_pruned(out)):
        torch.testing.assert_close(logits(loaded.eval(), ids), expected, atol=ATOL_PRUNED, rtol=0)
        assert n_params(loaded) < n_params(tiny_model(family))


@pytest.mark.parametrize("family, tied", [("llama", False), ("qwen2", False), ("mistral", False), ("llama", True)])
def test_pruned_per_layer_widths_load_with_load_pruned_and_need_remote_code(family, tied, tmp_path):
    net = make_net(family, width_space("layer"), seed=5, tie_word_embeddings=tied)
    ids = inputs(4)
    for seed in range(2):
        config = net.space.sample(seed)
        config.update({"mlp.0": 1.0, "mlp.1": 0.5, "heads.2": 2, "heads.3": 4})  # sizes differ between layers
        with pytest.warns(LoraSearchWarning, match="query heads differ per block.*not in vLLM"):
            out = export_pruned(net, config, tmp_path / f"pruned{seed}")
        layout = json.loads((out / PRUNED_FILE).read_text())
        assert not layout["stock"] and layout["layout"] == "decilm" and not layout["linears"]
        assert not layout["vllm_reads_it"]
        loaded = load_pruned(out, attn_implementation="eager" if seed else None)
        torch.testing.assert_close(logits(loaded, ids), net_logits(net, config, ids), atol=ATOL_PRUNED, rtol=0)
        small = loaded.get_submodule("model.layers.1.mlp.up_proj")
        assert (small.out_features, small.in_features) == (64, 64)
        assert n_params(loaded) < n_params(tiny_model(family, tie_word_embeddings=tied))
        if tied:
            assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
        with pytest.raises(ValueError, match="trust_remote_code"):  # per-layer sizes need the folder's code
            AutoModelForCausalLM.from_pretrained(out)


def test_pruned_refuses_a_mode_a_space(tmp_path):
    net = make_net("llama", rank_space())
    with pytest.raises(ExportError, match="Mode A only.*fix: use --format merged or peft"):
        export_pruned(net, net.space.max(), tmp_path / "p")


def test_existing_output_folder_is_refused(tmp_path):
    net = make_net("llama", width_space("global"))
    (tmp_path / "taken").mkdir()
    for export in (export_config, export_peft, export_merged, export_pruned):
        with pytest.raises(ExportError, match="already exists; fix: choose another --out"):
            export(net, net.space.max(), tmp_path / "taken")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_subnet_json_holds_config_objectives_and_provenance(tmp_path):
    net = make_net("llama", width_space("layer"))
    config = net.space.heuristic()
    out = export_config(net, config, tmp_path / "c", {"run": "runs/x", "adapter": None}, objectives={"accuracy": 0.5})
    doc = json.loads((out / SUBNET_FILE).read_text())
    assert doc["config"] == config and doc["objectives"] == {"accuracy": 0.5}
    assert doc["provenance"]["run"] == "runs/x" and "exported" in doc["provenance"]
    assert doc["groups"]["mlp"] == {"kind": "width", "values": [0.75] * 4}
    assert doc["modules"]["model.layers.0.mlp.up_proj"] == {"rank": 4, "in": 64, "out": 96}
    assert SearchSpace.from_dict(doc["space"]).with_num_layers(4).encode(doc["config"]) is not None


# ---------------------------------------------------------------------------------- picking
SPACE = SearchSpace.from_dict({
    "name": "t", "adapter": {"rank": 8}, "num_layers": 2,
    "groups": {"attn": {"modules": ["q_proj"], "rank": [8, 4, 2]}},
})
ROWS = [  # eval_id, attn.0, attn.1, accuracy, macs, source
    (0, 8, 8, 0.80, 100, "max"),
    (1, 2, 2, 0.50, 40, "min"),
    (2, 4, 4, 0.75, 60, "heuristic"),
    (3, 8, 4, 0.79, 62, "nsga2"),  # the knee
    (4, 4, 2, 0.60, 50, "nsga2"),
    (5, 2, 4, 0.55, 60, "nsga2"),  # dominated by 2
]


def results(pareto: bool = True) -> pd.DataFrame:
    table = pd.DataFrame([
        {"eval_id": i, "config": json.dumps({"attn.0": a, "attn.1": b}), "genes": "[]",
         "accuracy": acc, "accuracy_stderr": 0.01, "macs": macs, "feasible": True, "source": src}
        for i, a, b, acc, macs, src in ROWS
    ])
    if pareto:
        table["is_pareto"] = table["eval_id"] != 5
    return table


@pytest.mark.parametrize("pareto", [True, False])
def test_pick_knee(pareto):
    row, config = pick_config(results(pareto), "knee", SPACE)
    assert int(row["eval_id"]) == 3 and config == {"attn.0": 8, "attn.1": 4}


def test_knee_of_a_two_objective_front_is_farthest_from_the_extremes_line():
    points = [[0.0, 1.0], [0.1, 0.3], [0.5, 0.15], [1.0, 0.0]]
    assert knee_index(points) == 1
    assert knee_index([[3.0, 4.0]]) == 0


@pytest.mark.parametrize(
    "pick, eval_id",
    [("max-accuracy-under-macs 61", 2), ("max-accuracy-under-macs=0.061K", 2), ("max-accuracy-under-macs 1e9", 0),
     ("heuristic", 2), ("max", 0), ("min", 1), ("row 4", 4), ("  row   5 ", 5)],
)
def test_pick_kinds(pick, eval_id):
    row, config = pick_config(results(), pick, SPACE)
    assert int(row["eval_id"]) == eval_id
    assert config == json.loads(results().loc[eval_id, "config"])


def test_pick_reference_not_evaluated_comes_from_the_space():
    table = results()
    table = table[table["source"] != "heuristic"]
    row, config = pick_config(table, "heuristic", SPACE)
    assert row is None and config == SPACE.heuristic()
    with pytest.raises(ExportError, match="no evaluation has source 'heuristic'"):
        pick_config(table, "heuristic", None)


@pytest.mark.parametrize(
    "pick, message",
    [
        ("max-accuracy-under-macs 30",
         r"no evaluation has macs <= 30; the smallest is 40 \(eval_id 1\); closest: --pick 'max-accuracy-under-macs 40'"),
        ("row 9", r"no evaluation has eval_id 9 \(ids 0..5\); closest: --pick 'row 5'"),
        ("kne", r"unknown; did you mean 'knee'\?"),
        ("max-accuracy-under-params 5", r"no 'params' column"),
        ("max-accuracy-under-macs lots", r"'lots' is not a number"),
    ],
)
def test_pick_errors_name_the_closest_option(pick, message):
    with pytest.raises(ExportError, match=message):
        pick_config(results(), pick, SPACE)


def test_pick_rejects_a_config_of_another_space():
    other = SearchSpace.from_dict({"name": "o", "adapter": {"rank": 16}, "num_layers": 2,
                                   "groups": {"attn": {"modules": ["q_proj"], "rank": [16, 4]}}})
    with pytest.raises(ExportError, match="does not fit space 'o'"):
        pick_config(results(), "max", other)


# ------------------------------------------------------------------------------ run folders
def write_run(tmp_path, space_file, model="tiny-llama"):
    run = tmp_path / "run"
    run.mkdir()
    results().to_csv(run / "results.csv", index=False)
    document = {"run": {"model": model, "adapter": None, "space": str(space_file)},
                "bounds": [{"name": "accuracy", "direction": "max", "best": 1.0, "worst": 0.0},
                           {"name": "macs", "direction": "min", "best": 0.0, "worst": 110.0}]}
    (run / "run.yaml").write_text(yaml.safe_dump(document))
    return run


def test_export_run_writes_config_without_a_model(tmp_path):
    unexpanded = SearchSpace.from_dict({k: v for k, v in SPACE.to_dict().items() if k != "num_layers"})
    space_file = unexpanded.save(tmp_path / "s.yaml")
    run = write_run(tmp_path, space_file, model=None)
    out = export_run(run, "knee", "config")
    assert out == run / "exports" / "config-eval3"
    doc = json.loads((out / SUBNET_FILE).read_text())
    assert doc["objectives"] == {"accuracy": 0.79, "accuracy_stderr": 0.01, "macs": 62.0}
    assert doc["provenance"]["eval_id"] == 3 and doc["provenance"]["source"] == "nsga2"
    with pytest.raises(ExportError, match="already exists"):
        export_run(run, "knee", "config")


def test_export_run_peft_from_a_tiny_model(tmp_path):
    space = SearchSpace.from_dict({"name": "t", "adapter": {"rank": 8},
                                   "groups": {"attn": {"modules": ["self_attn.q_proj"], "rank": [8, 4, 2]}}})
    run = write_run(tmp_path, space.save(tmp_path / "s.yaml"))
    config = json.dumps({f"attn.{i}": 4 for i in range(4)})
    results().assign(config=[config] * len(ROWS)).to_csv(run / "results.csv", index=False)
    out = export_run(run, "row 2", "peft", tmp_path / "p")
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4
    with pytest.raises(ExportError, match="Mode A only"):
        export_run(run, "row 2", "pruned", tmp_path / "q")
    with pytest.raises(ExportError, match="--format 'merge': unknown; did you mean 'merged'"):
        export_run(run, "row 2", "merge")


def test_run_directory_without_results(tmp_path):
    with pytest.raises(ExportError, match="not a folder"):
        load_results(tmp_path / "nope")
    (tmp_path / "run").mkdir()
    with pytest.raises(ExportError, match="results.csv: missing, the run has no results yet"):
        load_results(tmp_path / "run")
    (tmp_path / "run" / "results.csv").write_text("")
    with pytest.raises(ExportError, match="holds no evaluations"):
        load_results(tmp_path / "run")


def test_export_of_a_run_rebuilds_its_network_with_every_recorded_setting(tmp_path):
    """The network of `export RUN_DIR` comes from the one builder, so a recorded dtype is kept."""
    from helpers import TINY_SPACE
    from safetensors import safe_open

    from lorasearch.runs import NetworkSettings, SearchRun, TaskSettings
    from lorasearch.search import SearchSettings

    plan = SearchRun(NetworkSettings(model="tiny-llama", space=str(TINY_SPACE), dtype="bf16"), TaskSettings(limit=8),
                     SearchSettings(budget=4, population=4, seed=0))
    _, net = plan.run(tmp_path / "run")
    assert next(net.model.parameters()).dtype == torch.bfloat16
    out = export_run(tmp_path / "run", "max", "merged")
    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        dtypes = {weights.get_tensor(key).dtype for key in weights.keys()}
    assert dtypes == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text()).get("dtype", "bfloat16") == "bfloat16"
