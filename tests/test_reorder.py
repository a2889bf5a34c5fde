"""Importance reordering of Mode B channels and heads: the function is unchanged, prefixes keep the
important units, and the recorded permutation travels with the adapter through loading and export."""

from __future__ import annotations

import pytest
import torch
from helpers import DEVICES, MODE_B, TINY_SPACE, assert_good_error, cli_error, run_cli
from peft import PeftModel
from transformers import AutoModelForCausalLM

from lorasearch import LoraSearchError, SearchSpace, SuperNetwork
from lorasearch.compress.quant import quantize_model, save_quantized
from lorasearch.data import synthetic_task
from lorasearch.errors import AdapterError
from lorasearch.export.exporters import export_merged, export_peft, export_pruned, load_pruned
from lorasearch.models.loading import byte_tokenizer, tiny_model
from lorasearch.network.binding import linear_modules
from lorasearch.network.permutation import PERMUTATION_FILE, ChannelPermutation, permute_modules
from lorasearch.runs import NetworkSettings, build_network, prepare_training
from lorasearch.runs.training import REORDER_FILE
from lorasearch.train.reorder import importance_permutation, network_unit_sets, reorder_network, unit_scores, unit_sets
from lorasearch.train.trainer import NLSTrainer, TrainArgs

FAMILIES = ["llama", "mistral", "qwen2", "phi3"]
SEPARATE = ["llama", "mistral", "qwen2"]  # Mode B binds separate projections only
ATOL = 1e-5


def ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 250, (2, 14), generator=torch.Generator().manual_seed(seed))


def logits(model, x) -> torch.Tensor:
    with torch.inference_mode():
        return model(x).logits


def net_logits(net: SuperNetwork, config, x) -> torch.Tensor:
    with net.activated(config):
        return logits(net.model, x)


def mode_b_net(family: str = "llama", space=None, seed: int = 0) -> SuperNetwork:
    """A Mode B network with random (non-zero) adapters, so reordering must move them with the base."""
    net = SuperNetwork(tiny_model(family), space or SearchSpace.from_dict(MODE_B), tokenizer=byte_tokenizer(),
                       model_spec=f"tiny-{family}")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.adapter_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return net


def records():
    return synthetic_task(200, seed=0)


def configs(net: SuperNetwork) -> list[dict]:
    return [net.space.max(), net.space.heuristic(), net.space.min(), net.space.sample(3)]


# --------------------------------------------------------------------------- the permutation itself
@pytest.mark.parametrize("family", FAMILIES)
def test_reordering_every_layer_leaves_the_logits_unchanged(family):
    model = tiny_model(family)
    x = ids()
    before = logits(model, x)
    sets = unit_sets(model)
    assert {s.kind for s in sets} == {"mlp", "heads"} and len(sets) == 2 * 4
    tokens = torch.randint(3, 250, (4, 32), generator=torch.Generator().manual_seed(1))
    permutation = importance_permutation(sets, unit_scores(model, sets, tokens, batch_size=2))
    moved = [k for k, v in permutation.indices.items() if not torch.equal(v, torch.arange(len(v)))]
    assert moved, "random weights should not already be in importance order"
    permute_modules(linear_modules(model), permutation)
    torch.testing.assert_close(logits(model, x), before, atol=ATOL, rtol=0)
    # scored again, every set is now in descending order
    for score in unit_scores(model, sets, tokens, batch_size=2):
        assert torch.all(score[:-1] >= score[1:] - 1e-9 * score.max())


def test_phi3_fused_projections_move_as_whole_heads_and_channels():
    model = tiny_model("phi3")
    mlp, heads = unit_sets(model)[:2]
    assert [p.module.rsplit(".", 1)[1] for p in mlp.parts] == ["gate_up_proj", "down_proj"]
    qkv = heads.parts[0]
    assert qkv.module.endswith("qkv_proj") and len(qkv.segments) == 3  # q, k and v rows, each group-wise
    order = torch.tensor([1, 0])
    index = qkv.index(order)
    hd = model.config.hidden_size // model.config.num_attention_heads
    q_rows = 4 * hd
    # group 1's two query heads come first, then group 0's; k and v swap their single heads
    assert torch.equal(index[: 2 * hd], torch.arange(2 * hd, 4 * hd))
    assert torch.equal(index[q_rows: q_rows + hd], torch.arange(q_rows + hd, q_rows + 2 * hd))


def test_scores_are_the_output_energy_of_each_unit():
    model = tiny_model("llama")
    sets = unit_sets(model)
    tokens = torch.randint(3, 250, (2, 16), generator=torch.Generator().manual_seed(2))
    scores = unit_scores(model, sets, tokens, batch_size=2)
    # layer 0: the output of down_proj without channel j, against the full output
    captured = {}
    down = model.model.layers[0].mlp.down_proj

    def keep_input(module, args, output):
        captured["x"] = args[0].detach()

    handle = down.register_forward_hook(keep_input)
    with torch.no_grad():
        model(tokens)
    handle.remove()
    x = captured["x"].reshape(-1, down.in_features).double()
    w = down.weight.double()
    for j in (0, 5, 77):
        dropped = x.clone()
        dropped[:, j] = 0
        energy = ((x @ w.T - dropped @ w.T) ** 2).sum()
        torch.testing.assert_close(scores[0][j], energy, rtol=1e-4, atol=1e-8)


# ------------------------------------------------------------------------------ the super-network
@pytest.mark.parametrize("device", DEVICES)
def test_reordering_on_a_device_keeps_the_function_and_saves_a_permutation_the_cpu_reads(device, tmp_path):
    net = mode_b_net("llama")
    net.model.to(device)
    x = ids().to(device)
    before = net_logits(net, net.space.max(), x)
    result = reorder_network(net, records(), samples=4, seq_len=32)
    torch.testing.assert_close(net_logits(net, net.space.max(), x), before, atol=1e-4, rtol=0)
    folder = net.save_adapter(tmp_path / "adapter")  # written in the base's original order, read on the CPU
    reloaded = build_network(NetworkSettings(model="tiny-llama", adapter=str(folder), device="cpu"))
    assert reloaded.permutation is not None and set(reloaded.permutation.indices) == set(result.permutation.indices)
    for config in configs(net):
        torch.testing.assert_close(net_logits(reloaded, config, x.cpu()), net_logits(net, config, x).cpu(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", SEPARATE)
def test_reordered_network_keeps_the_max_config_and_puts_importance_first(family):
    net = mode_b_net(family)
    x = ids()
    before = net_logits(net, net.space.max(), x)
    result = reorder_network(net, records(), samples=4, seq_len=32)
    assert net.permutation is result.permutation
    torch.testing.assert_close(net_logits(net, net.space.max(), x), before, atol=ATOL, rtol=0)
    shares = result.summary()["prefix_score_share"]
    assert set(shares) == {"mlp", "heads"}
    for kind in shares.values():
        for share in kind.values():
            assert share["after"] >= share["before"] - 1e-12
    assert shares["mlp"]["64/128"]["after"] > shares["mlp"]["64/128"]["before"]


def test_only_the_genes_of_the_space_are_reordered(tmp_path):
    space = SearchSpace.from_dict({"name": "w", "adapter": {"rank": 4, "alpha": 8}, "per_layer": "model.layers.{i}",
                                   "groups": {"mlp": {"width": [1.0, 0.5], "channels": "mlp", "layers": [1, 2]}}})
    net = SuperNetwork(tiny_model("llama"), space, tokenizer=byte_tokenizer())
    sets = network_unit_sets(net)
    assert [(s.kind, s.layer, s.keep) for s in sets] == [("mlp", 1, (128, 64)), ("mlp", 2, (128, 64))]
    mode_a = SuperNetwork(tiny_model("llama"), SearchSpace.from_dict({
        "name": "a", "adapter": {"rank": 4}, "groups": {"q": {"modules": ["q_proj"], "rank": [4, 2]}}}))
    assert network_unit_sets(mode_a) == []
    assert reorder_network(mode_a, records()) is None


def test_too_little_calibration_text_is_one_line_naming_the_option():
    net = mode_b_net()
    with pytest.raises(LoraSearchError) as exc:
        reorder_network(net, records()[:3], samples=64, seq_len=256)
    assert_good_error(exc, "--reorder-samples")


# ------------------------------------------------------------------------- saving and loading
@pytest.mark.parametrize("family", SEPARATE)
def test_a_saved_reordered_adapter_reloads_every_subnet(family, tmp_path):
    space = SearchSpace.load(TINY_SPACE)
    net = mode_b_net(family, space)
    reorder_network(net, records(), samples=4, seq_len=32)
    folder = net.save_adapter(tmp_path / "adapter")
    assert (folder / PERMUTATION_FILE).is_file()
    reloaded = SuperNetwork(tiny_model(family), folder / "lorasearch_space.yaml", adapter=folder)
    assert reloaded.permutation is not None
    assert reloaded.fingerprint() == net.fingerprint()
    x = ids(1)
    for config in configs(net):
        torch.testing.assert_close(net_logits(reloaded, config, x), net_logits(net, config, x), atol=0, rtol=0)


def test_stock_peft_loads_the_super_adapter_on_the_unpermuted_base(tmp_path):
    net = mode_b_net("llama", SearchSpace.load(TINY_SPACE))
    reorder_network(net, records(), samples=4, seq_len=32)
    folder = net.save_adapter(tmp_path / "adapter")
    x = ids(2)
    peft = PeftModel.from_pretrained(tiny_model("llama"), folder).eval()
    torch.testing.assert_close(logits(peft, x), net_logits(net, net.space.max(), x), atol=ATOL, rtol=0)


def test_the_fingerprint_tells_a_reordered_network_apart():
    a, b = mode_b_net(), mode_b_net()
    assert a.fingerprint() == b.fingerprint()
    reorder_network(b, records(), samples=4, seq_len=32)
    assert a.fingerprint() != b.fingerprint()


def test_a_permutation_for_another_base_is_refused(tmp_path):
    net = mode_b_net()
    reorder_network(net, records(), samples=4, seq_len=32)
    folder = net.save_adapter(tmp_path / "adapter")
    bad = dict(net.permutation.indices)
    key = next(k for k in bad if k[1] == "in")
    bad[key] = torch.zeros_like(bad[key])
    ChannelPermutation(bad).save(folder / PERMUTATION_FILE)
    with pytest.raises(AdapterError) as exc:
        SuperNetwork(tiny_model("llama"), SearchSpace.from_dict(MODE_B), adapter=folder)
    assert_good_error(exc, PERMUTATION_FILE, key[0], "not a permutation")
    (folder / PERMUTATION_FILE).write_bytes(b"not safetensors")
    with pytest.raises(AdapterError) as exc:
        SuperNetwork(tiny_model("llama"), SearchSpace.from_dict(MODE_B), adapter=folder)
    assert_good_error(exc, PERMUTATION_FILE)


def test_build_network_refuses_a_reordered_adapter_on_a_quantized_base(tmp_path):
    model = tiny_model("llama")
    quantize_model(model, 4, 32)
    save_quantized(model, byte_tokenizer(), tmp_path / "q")
    net = mode_b_net()
    reorder_network(net, records(), samples=4, seq_len=32)
    folder = net.save_adapter(tmp_path / "adapter")
    with pytest.raises(LoraSearchError) as exc:
        build_network(NetworkSettings(model=str(tmp_path / "q"), adapter=str(folder)))
    assert_good_error(exc, PERMUTATION_FILE, "quantized")


# ------------------------------------------------------------------------------ export round trip
@pytest.fixture(scope="module")
def reordered_run(tmp_path_factory):
    """A reordered Mode B super-adapter of tiny-llama, saved and rebuilt by the one builder."""
    tmp = tmp_path_factory.mktemp("reordered")
    net = mode_b_net("llama", SearchSpace.load(TINY_SPACE), seed=4)
    reorder_network(net, records(), samples=4, seq_len=32)
    folder = net.save_adapter(tmp / "adapter")
    rebuilt = build_network(NetworkSettings(model="tiny-llama", adapter=str(folder)))
    return net, rebuilt, tmp


def test_pruned_exports_of_a_reordered_run_reproduce_the_subnets(reordered_run):
    net, rebuilt, tmp = reordered_run
    x = ids(3)
    per_layer = dict(net.space.heuristic())
    per_layer["mlp.0"], per_layer["heads.3"] = 0.5, 2
    for n, config in enumerate([net.space.heuristic(), net.space.min(), per_layer]):
        folder = export_pruned(rebuilt, config, tmp / f"pruned-{n}")
        torch.testing.assert_close(logits(load_pruned(folder), x), net_logits(net, config, x), atol=1e-4, rtol=0)


def test_merged_and_peft_exports_of_a_reordered_run_reproduce_the_full_width_subnet(reordered_run):
    net, rebuilt, tmp = reordered_run
    x = ids(4)
    config = dict(net.space.max())
    config.update({k: net.space.min()[k] for k in config if k.startswith(("attn.", "up."))})  # lower ranks, full widths
    expected = net_logits(net, config, x)
    merged = export_merged(rebuilt, config, tmp / "merged")
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(merged), x), expected, atol=1e-4, rtol=0)
    peft_folder = export_peft(rebuilt, config, tmp / "peft")
    assert not (peft_folder / PERMUTATION_FILE).exists()
    peft = PeftModel.from_pretrained(tiny_model("llama"), peft_folder).eval()  # the unpermuted base
    torch.testing.assert_close(logits(peft, x), expected, atol=ATOL, rtol=0)


# --------------------------------------------------------------------------------- training runs
def train_args(**kw) -> TrainArgs:
    return TrainArgs(**{"steps": 4, "batch_size": 4, "checkpoint_every": 2, "warmup_steps": 1,
                        "reorder_samples": 4, "reorder_seq_len": 32, **kw})


def test_training_reorders_mode_b_by_default_and_not_mode_a(tmp_path):
    b = prepare_training(NetworkSettings(model="tiny-llama", space=str(TINY_SPACE)), [], train_args(), tmp_path / "b",
                         log=lambda line: None)
    assert b.args.reorder is True and b.net.permutation is not None
    assert (tmp_path / "b" / REORDER_FILE).is_file() and (tmp_path / "b" / "reorder.json").is_file()
    space_a = tmp_path / "a.yaml"
    space_a.write_text("name: a\nadapter: {rank: 4}\ngroups:\n  q: {modules: [q_proj], rank: [4, 2]}\n")
    a = prepare_training(NetworkSettings(model="tiny-llama", space=str(space_a)), [], train_args(), tmp_path / "a",
                         log=lambda line: None)
    assert a.args.reorder is False and a.net.permutation is None
    with pytest.raises(LoraSearchError) as exc:
        prepare_training(NetworkSettings(model="tiny-llama", space=str(space_a)), [], train_args(reorder=True),
                         tmp_path / "a2", log=lambda line: None)
    assert_good_error(exc, "--reorder", "Mode A")


def test_a_resumed_reordered_run_ends_where_an_uninterrupted_one_does(tmp_path, monkeypatch):
    settings = NetworkSettings(model="tiny-llama", space=str(TINY_SPACE))
    full = prepare_training(settings, [], train_args(), tmp_path / "full", log=lambda line: None)
    full.train(progress=False)
    killed = prepare_training(settings, [], train_args(), tmp_path / "killed", log=lambda line: None)
    original = NLSTrainer._one_step

    def dies_at_step_3(self, *a):
        if self.step == 2:
            raise KeyboardInterrupt
        return original(self, *a)

    monkeypatch.setattr(NLSTrainer, "_one_step", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        killed.train(progress=False)
    monkeypatch.setattr(NLSTrainer, "_one_step", original)
    # the permutation comes back from the run folder, not from scoring again
    monkeypatch.setattr("lorasearch.runs.training.reorder_network", lambda *a, **k: pytest.fail("scored again"))
    resumed = prepare_training(settings, [], train_args(), tmp_path / "killed", resume=True, log=lambda line: None)
    assert resumed.step == 2
    resumed.train(progress=False)
    x = ids(5)
    reloaded = [SuperNetwork(tiny_model("llama"), TINY_SPACE, adapter=tmp_path / run / "adapter") for run in ("full", "killed")]
    for config in configs(full.net):
        torch.testing.assert_close(net_logits(reloaded[1], config, x), net_logits(reloaded[0], config, x), atol=0, rtol=0)


def test_cli_train_takes_reorder_and_distill_flags(tmp_path, capsys):
    out = tmp_path / "run"
    run_cli("train", "--model", "tiny-llama", "--space", TINY_SPACE, "--steps", 2, "--batch-size", 4,
            "--no-reorder", "--distill", "--distill-weight", 0.3, "--out", out)
    text = (out / "train_run.yaml").read_text()
    assert "reorder: false" in text and "distill: true" in text and "sampler: sandwich" in text
    assert not (out / "adapter" / PERMUTATION_FILE).exists()
    space_a = tmp_path / "a.yaml"
    space_a.write_text("name: a\nadapter: {rank: 4}\ngroups:\n  q: {modules: [q_proj], rank: [4, 2]}\n")
    err = cli_error(capsys, "train", "--model", "tiny-llama", "--space", space_a, "--steps", 1, "--reorder",
                    "--out", tmp_path / "a", last_line=True)
    assert "--reorder" in err and "fix" in err
