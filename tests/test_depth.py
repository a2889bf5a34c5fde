"""Elastic depth on every tiny family, against stock transformers models with the blocks deleted and
against fvcore: logits (plain and cached decoding), MACs, parameters, pruned exports, block importance."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import assert_good_error
from torch import nn
from transformers import AutoModelForCausalLM

from lorasearch import SearchSpace, SuperNetwork
from lorasearch.cost import CostModel, fvcore_macs
from lorasearch.data import synthetic_task
from lorasearch.errors import AdapterError, ExportError, SpaceError
from lorasearch.export.exporters import PRUNED_FILE, export_merged, export_peft, export_pruned, load_pruned
from lorasearch.models.loading import byte_tokenizer, tiny_config, tiny_model
from lorasearch.network.depth import (
    BLOCK_IMPORTANCE_FILE,
    BlockImportance,
    default_block_order,
    drop_skipped_blocks,
    gate_block,
    set_block_kept,
)
from lorasearch.runs import NetworkSettings, build_network
from lorasearch.train.block_importance import block_scores, measure_block_importance

FAMILIES = ["llama", "mistral", "qwen2", "phi3"]
LAYERS = 4
T = 12
ATOL = 1e-5
# Phi-3 fuses q/k/v and gate/up, so its adapters sit on the fused modules (no widths or heads there).
ADAPTED = {
    "phi3": ["self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"],
    "default": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
}


def adapted(family: str) -> list[str]:
    return ADAPTED.get(family, ADAPTED["default"])


def depth_space(family: str, depth=(4, 3, 2, 1), widths: bool = True, share: str = "global") -> SearchSpace:
    groups = {"all": {"modules": adapted(family), "rank": [8, 4]}}
    if widths and family != "phi3":
        groups["mlp"] = {"width": [1.0, 0.5], "channels": "mlp", "share": "global"}
    groups["depth"] = {"depth": list(depth), "share": share}
    return SearchSpace.from_dict({"name": f"depth-{family}", "adapter": {"rank": 8, "alpha": 16}, "groups": groups})


def make_net(family: str, space: SearchSpace, seed: int = 0) -> SuperNetwork:
    net = SuperNetwork(tiny_model(family, num_hidden_layers=LAYERS), space, tokenizer=byte_tokenizer(),
                       model_spec=f"tiny-{family}")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.adapter_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return net


def ids(seed: int = 0, length: int = T) -> torch.Tensor:
    return torch.randint(3, 250, (2, length), generator=torch.Generator().manual_seed(seed))


def stock_without(family: str, net: SuperNetwork, kept: list[int]) -> nn.Module:
    """The oracle: a stock transformers model of ``len(kept)`` layers holding the base's weights of the
    kept blocks, each adapted linear merged by hand (W + alpha/r * B[:, :r] @ A[:r]) at the active
    rank; MLP width 1.0 only (the configs used here keep every channel)."""
    base = tiny_model(family, num_hidden_layers=LAYERS).state_dict()
    for name, m in net.elastic.items():
        if m.lora_A is not None and m.active_rank:
            r = m.active_rank
            delta = (m.lora_B.weight[:, :r] @ m.lora_A.weight[:r]) * (16 / 8)
            base[f"{name}.weight"] = base[f"{name}.weight"] + delta.detach()
    state = {}
    for key, value in base.items():
        if key.startswith("model.layers."):
            index, rest = key[len("model.layers."):].split(".", 1)
            if int(index) not in kept:
                continue
            key = f"model.layers.{kept.index(int(index))}.{rest}"
        state[key] = value
    config = tiny_config(family, num_hidden_layers=len(kept))
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config).float().eval()
    model.load_state_dict(state, strict=True)
    return model


def logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(tokens).logits


def full_width(net: SuperNetwork, config: dict) -> dict:
    return {k: (1.0 if k == "mlp" else v) for k, v in config.items()}


def kept_indices(net: SuperNetwork, config: dict) -> list[int]:
    skipped = set(net.skipped_blocks(config))
    return [i for i, name in enumerate(net.blocks) if name not in skipped]


# ------------------------------------------------------------------------ logits vs stock
@pytest.mark.parametrize("family", FAMILIES)
def test_a_depth_subnet_computes_what_a_stock_model_without_those_blocks_computes(family):
    net = make_net(family, depth_space(family))
    tokens = ids(1)
    for depth, rank in ((4, 8), (3, 4), (2, 8), (1, 4)):
        config = full_width(net, {k: (rank if k.startswith("all.") else v) for k, v in net.space.max().items()})
        config["depth"] = depth
        kept = kept_indices(net, config)
        assert len(kept) == depth
        with net.activated(config):
            torch.testing.assert_close(logits(net.model, tokens), logits(stock_without(family, net, kept), tokens),
                                       atol=ATOL, rtol=0)
    assert net.active_config == net.space.max()


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_decoding_with_the_first_block_skipped_matches_the_stock_model(family):
    # A cache sizes its masks from layer 0; a skipped block 0 must still report the tokens seen.
    net = make_net(family, depth_space(family, depth=(1, 0), widths=False, share="layer"))
    config = {**net.space.max(), "depth.0": 0, "depth.2": 0}
    reference = stock_without(family, net, [1, 3])
    tokens = ids(2)
    with net.activated(config), torch.inference_mode():
        full = net.model(tokens).logits
        first = net.model(tokens[:, :7], use_cache=True)
        cache = first.cache if hasattr(first, "cache") else first.past_key_values
        rest = net.model(tokens[:, 7:], **{"cache" if hasattr(first, "cache") else "past_key_values": cache}).logits
        generated = net.model.generate(tokens[:, :5], max_new_tokens=6, do_sample=False)
    torch.testing.assert_close(rest, full[:, 7:], atol=ATOL, rtol=0)
    torch.testing.assert_close(full, logits(reference, tokens), atol=ATOL, rtol=0)
    assert torch.equal(generated, reference.generate(tokens[:, :5], max_new_tokens=6, do_sample=False))


def test_a_tuple_returning_decoder_layer_skips_with_a_tuple():
    # transformers 4.x decoder layers returned (hidden, [attention weights], [cache]).
    class OldLayer(nn.Module):
        def forward(self, hidden_states, **kwargs) -> tuple[torch.Tensor, ...]:
            return (hidden_states * 2,)

    layer = OldLayer()
    gate_block(layer)
    hidden = torch.ones(1, 3, 4)
    set_block_kept(layer, False)
    out = layer(hidden, output_attentions=True, use_cache=False)
    assert isinstance(out, tuple) and out[0] is hidden and out[1] is None
    set_block_kept(layer, True)
    assert torch.equal(layer(hidden)[0], hidden * 2)


# ------------------------------------------------------------------------- costs vs fvcore
@pytest.mark.parametrize("family", FAMILIES)
def test_depth_macs_equal_fvcore_and_parameters_equal_the_stock_model(family):
    net = make_net(family, depth_space(family))
    cost = CostModel(net, T)
    configs = [net.space.min(), net.space.heuristic()] + [net.space.sample(seed) for seed in range(3)]
    for config in configs:
        total, traced = fvcore_macs(net, config, T)
        assert cost.macs(config) == total
        closed = {k: v for k, v in cost.by_module(config).items() if v}
        assert closed == {k: v for k, v in traced.items() if v}
        assert cost.macs(config, "merged") == fvcore_macs(net, config, T, deployment="merged")[0]
    for depth in (4, 2, 1):
        config = full_width(net, {**net.space.max(), "depth": depth})
        stock = stock_without(family, net, kept_indices(net, config))
        assert cost.parameters(config).base == sum(p.numel() for p in stock.parameters())


def test_a_skipped_block_costs_exactly_its_own_rows():
    net = make_net("llama", depth_space("llama"))
    cost = CostModel(net, T, reference="analytic")
    full, minus_one = net.space.max(), {**net.space.max(), "depth": 3}
    dropped = net.skipped_blocks(minus_one)[0]
    rows = cost.breakdown(full)
    inside = rows["module"].str.startswith(dropped + ".") | (rows["module"] == dropped)
    assert cost.macs(full) - cost.macs(minus_one) == int(rows.loc[inside, "macs"].sum()) > 0
    assert cost.parameters(full).total - cost.parameters(minus_one).total == int(rows.loc[inside, "params"].sum())


# --------------------------------------------------------------------------------- exports
@pytest.mark.parametrize("family", FAMILIES)
def test_a_subnet_uniform_but_for_its_depth_exports_a_stock_config_with_fewer_layers(family, tmp_path):
    net = make_net(family, depth_space(family))
    config = {**net.space.heuristic(), "depth": 2}
    out = export_pruned(net, config, tmp_path / "pruned")
    layout = json.loads((out / PRUNED_FILE).read_text())
    assert layout["stock"] and not layout["linears"]
    names = list(net.blocks)
    assert layout["dropped_blocks"] == sorted(names.index(n) for n in net.skipped_blocks(config))
    saved = json.loads((out / "config.json").read_text())
    assert saved["num_hidden_layers"] == 2
    if "layer_types" in saved:
        assert len(saved["layer_types"]) == 2
    tokens = ids(3)
    with net.activated(config):
        expected = logits(net.model, tokens)
    for loaded in (AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager"), load_pruned(out)):
        torch.testing.assert_close(logits(loaded.eval(), tokens), expected, atol=1e-4, rtol=0)
        assert [layer.self_attn.layer_idx for layer in loaded.model.layers] == [0, 1]
    subnet = json.loads((out / "subnet.json").read_text())
    assert subnet["blocks"]["skipped"] == net.skipped_blocks(config)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_per_layer_widths_and_depth_round_trip_through_load_pruned_and_stock_transformers(family, tmp_path):
    space = SearchSpace.from_dict({
        "name": "mixed", "adapter": {"rank": 8, "alpha": 16},
        "groups": {"all": {"modules": adapted(family), "rank": [8, 4]},
                   "mlp": {"width": [1.0, 0.75, 0.5], "channels": "mlp"}, "heads": {"heads": [4, 2]},
                   "depth": {"depth": [4, 3, 2]}},
    })
    net = make_net(family, space, seed=3)
    tokens = ids(4)
    for seed in range(2):
        config = {**net.space.sample(seed), "depth": 3, "mlp.0": 1.0, "mlp.1": 0.5, "mlp.2": 0.75, "mlp.3": 0.5}
        out = export_pruned(net, config, tmp_path / f"p{seed}")
        layout = json.loads((out / PRUNED_FILE).read_text())
        skipped = [list(net.blocks).index(n) for n in net.skipped_blocks(config)]
        assert layout["layout"] == "decilm" and layout["dropped_blocks"] == skipped and len(skipped) == 1
        with net.activated(config):
            expected = logits(net.model, tokens)
        stock = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
        for loaded in (load_pruned(out), stock):
            assert len(loaded.model.layers) == 3
            torch.testing.assert_close(logits(loaded, tokens), expected, atol=1e-4, rtol=0)


def test_peft_and_merged_exports_refuse_skipped_blocks(tmp_path):
    net = make_net("llama", depth_space("llama", widths=False))
    config = {**net.space.max(), "depth": 3}
    for export, fmt in ((export_peft, "peft"), (export_merged, "merged")):
        with pytest.raises(ExportError) as exc:
            export(net, config, tmp_path / fmt)
        assert_good_error(exc, f"--format {fmt}", "skips 1 decoder blocks", "model.layers.")
    export_merged(net, net.space.max(), tmp_path / "full")  # every block kept is fine


def test_drop_skipped_blocks_of_an_ungated_model_changes_nothing():
    model = tiny_model("llama", num_hidden_layers=3)
    assert drop_skipped_blocks(model) == [] and len(model.model.layers) == 3


# ------------------------------------------------------------------------------ importance
def test_block_scores_are_one_minus_the_cosine_of_each_blocks_input_and_output():
    model = tiny_model("qwen2", num_hidden_layers=LAYERS)
    tokens = ids(5, 16)
    seen: dict[int, list] = {}
    hooks = [layer.register_forward_hook(
        lambda mod, args, kwargs, out, i=i: seen.setdefault(i, []).append((kwargs.get("hidden_states", args[0] if args else None), out)),
        with_kwargs=True) for i, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        model(tokens, use_cache=False)
    for hook in hooks:
        hook.remove()
    expected = []
    for i in range(LAYERS):
        x, y = seen[i][0]
        y = y[0] if isinstance(y, tuple) else y
        cos = (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1))
        expected.append(float((1 - cos).mean()))
    assert block_scores(model, tokens, batch_size=2) == pytest.approx(expected, rel=1e-5)


def test_a_count_keeps_the_most_important_blocks_and_the_order_is_saved_with_the_adapter(tmp_path):
    net = make_net("llama", depth_space("llama"))
    assert net.binding.block_order == tuple(default_block_order(LAYERS)) == (3, 0, 1, 2)
    before = net.fingerprint()
    importance = measure_block_importance(net, synthetic_task(60, seed=0), samples=4, seq_len=32, batch_size=2)
    net.set_block_importance(importance)
    assert net.fingerprint() != before
    scores = importance.scores
    for depth in (3, 2, 1):
        kept = kept_indices(net, {**net.space.max(), "depth": depth})
        assert sorted(kept) == sorted(sorted(range(LAYERS), key=lambda i: -scores[i])[:depth])
    folder = net.save_adapter(tmp_path / "adapter")
    assert json.loads((folder / BLOCK_IMPORTANCE_FILE).read_text())["order"] == importance.order
    again = build_network(NetworkSettings(model="tiny-llama", adapter=str(folder)))
    assert again.binding.block_order == tuple(importance.order)
    assert again.skipped_blocks({**again.space.max(), "depth": 2}) == net.skipped_blocks({**net.space.max(), "depth": 2})


def test_an_importance_of_another_model_is_refused(tmp_path):
    net = make_net("llama", depth_space("llama"))
    folder = net.save_adapter(tmp_path / "adapter")
    BlockImportance((0.1, 0.2, 0.3)).save(folder / BLOCK_IMPORTANCE_FILE)
    with pytest.raises(AdapterError) as exc:
        build_network(NetworkSettings(model="tiny-llama", adapter=str(folder)))
    assert_good_error(exc, BLOCK_IMPORTANCE_FILE, "3 block scores for a model of 4 blocks")
    (folder / BLOCK_IMPORTANCE_FILE).write_text("{not json")
    with pytest.raises(AdapterError) as exc:
        build_network(NetworkSettings(model="tiny-llama", adapter=str(folder)))
    assert_good_error(exc, BLOCK_IMPORTANCE_FILE, "cannot read")


# ------------------------------------------------------------------------------ space files
@pytest.mark.parametrize("group, message", [
    ({"depth": [1, 0, 0]}, "strictly descending"),
    ({"depth": [2, 1], "share": "layer"}, "must be [1, 0]"),
    ({"depth": [4, 0]}, "keeps 0 blocks"),
    ({"depth": [1.0, 0.5], "share": "module"}, "'module' applies to rank groups only"),
])
def test_bad_depth_groups_are_one_line_errors(group, message):
    with pytest.raises(SpaceError) as exc:
        SearchSpace.from_dict({"name": "x", "groups": {"depth": group}}, source="s.yaml")
    assert message in str(exc.value) and "s.yaml" in str(exc.value) and "\n" not in str(exc.value)


def test_a_count_must_start_at_the_blocks_it_covers_and_needs_per_layer():
    with pytest.raises(SpaceError) as exc:
        SuperNetwork(tiny_model("llama"), SearchSpace.from_dict({"name": "x", "groups": {"depth": {"depth": [3, 2]}}},
                                                                source="s.yaml"))
    assert_good_error(exc, "s.yaml", "groups.depth.depth", "must be the number of blocks the group covers (4)")
    space = SearchSpace.from_dict({"name": "x", "groups": {"depth": {"depth": [2, 1], "layers": [1, 2]}}})
    net = SuperNetwork(tiny_model("llama"), space)
    assert set(net.skipped_blocks(net.space.min())) <= {"model.layers.1", "model.layers.2"}
    with pytest.raises(SpaceError) as exc:
        SearchSpace.from_dict({"name": "x", "per_layer": None, "groups": {"depth": {"depth": [2, 1]}}}, source="s.yaml")
    assert_good_error(exc, "s.yaml", "per_layer")


def test_fractions_keep_a_rounded_share_of_the_blocks():
    space = SearchSpace.from_dict({"name": "x", "groups": {"depth": {"depth": [1.0, 0.75, 0.5, 0.25]}}})
    net = SuperNetwork(tiny_model("llama"), space)
    assert [LAYERS - len(net.skipped_blocks({"depth": f})) for f in (1.0, 0.75, 0.5, 0.25)] == [4, 3, 2, 1]
    assert SearchSpace.from_dict(space.to_dict()) == space


# ------------------------------------------------------------------------- shipped spaces
@pytest.mark.parametrize("name, shape", [
    ("llama-lonas-all.yaml", {"num_hidden_layers": 4, "hidden_size": 128, "num_attention_heads": 32,
                              "num_key_value_heads": 32, "intermediate_size": 256}),
    ("smollm2-135m-lonas-all.yaml", {"num_hidden_layers": 30, "hidden_size": 288, "num_attention_heads": 9,
                                     "num_key_value_heads": 3, "intermediate_size": 96}),
])
@pytest.mark.parametrize("heads", [False, True])
def test_the_lonas_all_spaces_adapt_all_seven_matrices_with_widths_depth_and_optional_heads(name, shape, heads):
    from helpers import SPACES_DIR

    text = (SPACES_DIR / name).read_text()
    assert "  # heads:" in text  # heads are off by default, one uncommented line away
    space = SearchSpace.loads(text.replace("  # heads:", "  heads:") if heads else text, source=name)
    net = SuperNetwork(tiny_model("llama", **shape), space)
    per_layer = {n.split(".", 3)[3] for n in net.binding.rank_modules}
    assert per_layer == {f"self_attn.{m}_proj" for m in "qkvo"} | {f"mlp.{m}_proj" for m in ("gate", "up", "down")}
    assert len(net.binding.rank_modules) == 7 * shape["num_hidden_layers"]
    assert [g.kind for g in net.space.groups].count("depth") == 1 and ("heads" in net.space.keys[-1]) == heads
    kept = shape["num_hidden_layers"] - len(net.skipped_blocks(net.space.min()))
    assert kept == round(0.7 * shape["num_hidden_layers"])


# ------------------------------------------------------------------------------- training
def test_training_a_depth_space_measures_the_block_order_once_and_a_resume_reuses_it(tmp_path, monkeypatch):
    import lorasearch.runs.training as training
    from lorasearch.runs import TrainArgs, prepare_training

    space = depth_space("llama").save(tmp_path / "space.yaml")
    args = TrainArgs(steps=2, batch_size=4, checkpoint_every=1, reorder_samples=4, reorder_seq_len=32)
    lines: list[str] = []
    trainer = prepare_training(NetworkSettings(model="tiny-llama", space=str(space)), [], args, tmp_path / "run",
                               log=lines.append)
    assert any(line.startswith("block importance (1 - cos") for line in lines)
    measured = BlockImportance.load(tmp_path / "run" / "block_importance.json")
    assert trainer.net.binding.block_order == tuple(measured.order)
    trainer.train(progress=False)
    saved = BlockImportance.load(tmp_path / "run" / "adapter" / BLOCK_IMPORTANCE_FILE)
    assert saved.scores == measured.scores
    monkeypatch.setattr(training, "measure_block_importance", lambda *a, **k: pytest.fail("measured twice"))
    again = prepare_training(NetworkSettings(model="tiny-llama", space=str(space)), [], args, tmp_path / "run",
                             resume=True, log=lambda line: None)
    assert again.net.binding.block_order == tuple(measured.order)
    again.release()


def test_space_show_lists_the_blocks_each_reference_config_skips(tmp_path, capsys, monkeypatch):
    from helpers import run_cli

    from lorasearch.cli.app import console

    monkeypatch.setattr(console, "_width", 200)  # the console's width is fixed when it is created (COLUMNS then)
    space = depth_space("llama", widths=False).save(tmp_path / "space.yaml")
    run_cli("space", "show", space, "--model", "tiny-llama")
    out = capsys.readouterr().out
    assert "blocks skipped" in out and "least important dropped first" in out
    assert "0, 1, 2" in out  # the min keeps one block: the last, by the default order


def test_option_text_scores_of_a_depth_subnet_equal_those_of_its_pruned_export(tmp_path):
    # The option-text evaluator continues every option from one cached context (batch_select_indices),
    # so a skipped block's placeholder cache layer is exercised too.
    import contextlib

    from lorasearch.evaluate.evaluators import MultipleChoiceEvaluator

    class Plain:  # a stock model shaped like a one-config network
        def __init__(self, model, tokenizer):
            self.model, self.tokenizer, self.space = model, tokenizer, self

        def canonical(self, config):
            return ()

        @contextlib.contextmanager
        def activated(self, config):
            yield self

    net = make_net("qwen2", depth_space("qwen2", depth=(1, 0), widths=False, share="layer"))
    config = {**net.space.max(), "depth.0": 0, "depth.3": 0}
    records = synthetic_task(12, seed=3)
    ours = MultipleChoiceEvaluator(net, records, mode="text", limit=12, batch_size=4, progress=False)(config)
    pruned = load_pruned(export_pruned(net, config, tmp_path / "p"))
    stock = MultipleChoiceEvaluator(Plain(pruned, net.tokenizer), records, mode="text", limit=12, batch_size=4,
                                    progress=False)({})
    assert ours.predictions == stock.predictions and ours.score == stock.score
    assert ours.item_scores == pytest.approx(stock.item_scores, abs=1e-5)
