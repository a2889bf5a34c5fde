"""Sparse and INT4 bases, SparsePEFT and QA-SparsePEFT on tiny models: the invariants the issue asks for."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from helpers import DEVICES, HAS_COMPRESSED_TENSORS

from lorasearch import SearchSpace, SuperNetwork
from lorasearch.compress import CompressError, QALoRALinear, SparseLoRALinear, apply_adapter_mode, sparsify
from lorasearch.compress.quant import (
    PREQUANT_FILE,
    QUANT_FILE,
    load_quantized,
    pack_int4,
    quantize_model,
    quantize_weight,
    save_quantized,
    unpack_int4,
)
from lorasearch.compress.sparsity import SPARSITY_FILE, prune_mask, save_sparse, sparsity_report
from lorasearch.cost import CostModel
from lorasearch.data import synthetic_task
from lorasearch.errors import ExportError, LoraSearchError, LoraSearchWarning
from lorasearch.export.exporters import export_merged, export_peft
from lorasearch.models.anatomy import decoder_linears
from lorasearch.models.calibration import calibration_tokens
from lorasearch.models.loading import byte_tokenizer, tiny_model
from lorasearch.network.elastic import ElasticLoRALinear
from lorasearch.runs import NetworkSettings, build_network
from lorasearch.runs.compressing import quantize_base

ATTN = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
MLP = ["mlp.up_proj", "mlp.down_proj"]


def space() -> SearchSpace:
    return SearchSpace.from_dict({
        "name": "t", "adapter": {"rank": 8, "alpha": 16}, "per_layer": "model.layers.{i}",
        "groups": {"attn": {"modules": ATTN, "rank": [8, 4]}, "mlp": {"modules": MLP, "rank": [8, 6, 4]}},
    })


def sparse_model(ratio: float = 0.5, method: str = "wanda", pattern: str = "unstructured"):
    model = tiny_model("llama")
    report = sparsify(model, byte_tokenizer(), method=method, ratio=ratio, pattern=pattern,
                      records=synthetic_task(60), n_samples=8, seq_len=32)
    return model, report


def train_adapters(net: SuperNetwork, steps: int = 3) -> None:
    """Random non-zero adapters (a few SGD steps would do the same; this is quicker and exact)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.adapter_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def inputs() -> torch.Tensor:
    return torch.randint(3, 250, (2, 12), generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------------ Wanda
def test_wanda_zeros_half_of_every_row_and_reports_per_layer():
    model, report = sparse_model(0.5)
    for name, layer in decoder_linears(model).items():
        zeros_per_row = (layer.weight == 0).sum(1)
        assert torch.all(zeros_per_row == layer.in_features // 2), name
    assert report.iloc[-1]["module"] == "total" and report.iloc[-1]["sparsity"] == pytest.approx(0.5)
    assert model.lm_head.weight.count_nonzero() == model.lm_head.weight.numel()


def test_wanda_score_uses_input_norms():
    # a column with huge activations survives even with small weights
    score = torch.tensor([[1.0, 2.0, 3.0, 0.1]]) * torch.tensor([1.0, 1.0, 1.0, 100.0])
    assert prune_mask(score, 0.5, None).tolist() == [[True, True, False, False]]


def test_wanda_prunes_sequentially_layer_after_layer():
    """Layer 1's statistics come from the pruned layer 0's outputs: pruning all at once from dense
    activations gives a different result."""
    seq, _ = sparse_model(0.5)
    dense = tiny_model("llama")
    from lorasearch.compress.sparsity import _InputNorms
    from lorasearch.models.anatomy import block_linears, decoder_layers
    from lorasearch.models.calibration import capture_layer_inputs, run_layer, with_hidden

    tokens = calibration_tokens(byte_tokenizer(), synthetic_task(60), 8, 32)
    captured = capture_layer_inputs(dense, tokens, 8)
    layers = decoder_layers(dense)
    for args, kwargs in captured:  # dense layer 0 output feeds layer 1
        pass
    hidden = [with_hidden(a, k, run_layer(layers[0], a, k)) for a, k in captured]
    lin = block_linears(layers[1])
    norms = _InputNorms(lin)
    for a, k in hidden:
        run_layer(layers[1], a, k)
    norms.remove()
    w = lin["self_attn.q_proj"].weight
    oneshot = prune_mask(w.abs().double() * norms.sums["self_attn.q_proj"].sqrt()[None], 0.5, None)
    sequential = seq.model.layers[1].self_attn.q_proj.weight == 0
    assert not torch.equal(oneshot, sequential)


@pytest.mark.parametrize("pattern,m", [("2:4", 4), ("4:8", 8)])
def test_n_m_patterns(pattern, m):
    model, report = sparse_model(0.0, pattern=pattern)
    n = int(pattern.split(":")[0])
    for layer in decoder_linears(model).values():
        groups = (layer.weight == 0).reshape(layer.out_features, -1, m).sum(-1)
        assert torch.all(groups == n)
    assert report.iloc[-1]["sparsity"] == pytest.approx(0.5)


def test_magnitude_prunes_smallest_weights_per_layer():
    model, report = sparse_model(0.3, method="magnitude")
    layer = model.model.layers[0].mlp.up_proj.weight
    kept, gone = layer[layer != 0].abs().min(), tiny_model("llama").model.layers[0].mlp.up_proj.weight
    assert report.iloc[-1]["sparsity"] == pytest.approx(0.3, abs=1e-3)
    assert gone[layer == 0].abs().max() <= kept


@pytest.mark.parametrize("kwargs,match", [
    ({"ratio": 1.0}, r"\[0, 1\)"),
    ({"ratio": -0.1}, r"\[0, 1\)"),
    ({"pattern": "3:5"}, "not a multiple of 5"),
    ({"pattern": "bogus"}, "unknown"),
    ({"n_samples": 500, "seq_len": 512}, "calibration set too small"),
    ({"method": "random"}, "unknown"),
])
def test_bad_sparsify_input(kwargs, match):
    args = {"method": "wanda", "ratio": 0.5, "pattern": "unstructured", "records": synthetic_task(20), "n_samples": 4, "seq_len": 16}
    args.update(kwargs)
    with pytest.raises(CompressError, match=match):
        sparsify(tiny_model("llama"), byte_tokenizer(), **args)


def test_saved_sparse_base_loads_with_from_pretrained(tmp_path):
    model, report = sparse_model(0.5)
    save_sparse(model, byte_tokenizer(), tmp_path / "sparse", report)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "sparse")
    for name, layer in decoder_linears(model).items():
        assert torch.equal(loaded.get_submodule(name).weight, layer.weight)
    doc = json.loads((tmp_path / "sparse" / SPARSITY_FILE).read_text())
    assert doc["method"] == "wanda" and doc["sparsity"] == pytest.approx(0.5) and len(doc["layers"]) == 4 * 7


# ------------------------------------------------------------------------------ quantization
def test_int4_grid_is_asymmetric_groupwise_and_keeps_zeros():
    w = torch.randn(6, 64)
    w[w.abs() < 0.5] = 0
    grid, codes = quantize_weight(w, 4, 32)
    assert grid.scales.shape == (6, 2) and codes.max() <= 15 and codes.dtype == torch.uint8
    deq = grid.dequantize(codes)
    assert torch.equal(deq == 0, w == 0)  # zeros map to the zero point and back to exactly 0
    assert (deq - w).abs().max() <= grid.scales.max() / 2 + 1e-6
    assert torch.equal(unpack_int4(pack_int4(codes)), codes)


def test_group_size_must_divide_inputs():
    with pytest.raises(CompressError, match="not a multiple of 48"):
        quantize_model(tiny_model("llama"), 4, 48)
    with pytest.raises(CompressError, match="--group-size 128"):
        quantize_model(tiny_model("llama"), 4, 128)  # tiny inputs are 64 and 128


def test_quantized_folder_round_trips(tmp_path):
    model, _ = sparse_model(0.5)
    quantize_model(model, 4, 32)
    save_quantized(model, byte_tokenizer(), tmp_path / "q")
    assert json.loads((tmp_path / "q" / QUANT_FILE).read_text())["group_size"] == 32
    loaded = load_quantized(tmp_path / "q")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "q") if HAS_COMPRESSED_TENSORS else None
    for name, layer in decoder_linears(model).items():
        assert torch.equal(loaded.model.get_submodule(name).weight, layer.weight)
        assert plain is None or torch.equal(plain.get_submodule(name).weight, layer.weight)
        assert loaded.model.get_submodule(name).quant_grid.group_size == 32
        assert torch.equal(layer.weight == 0, loaded.model.get_submodule(name).weight == 0)


@pytest.mark.parametrize("device", DEVICES)
def test_layer_by_layer_work_on_a_device_keeps_the_model_in_cpu_memory_and_gives_the_cpus_result(device):
    """Wanda and the INT4 grid computed block by block on ``device`` (a GPU), the model staying in CPU memory."""
    model, cpu_model = tiny_model("llama"), None
    sparsify(model, byte_tokenizer(), method="wanda", ratio=0.5, records=synthetic_task(60), n_samples=8, seq_len=32,
             device=torch.device(device))
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    cpu_model, _ = sparse_model(0.5)
    for name, layer in decoder_linears(model).items():
        assert torch.all((layer.weight == 0).sum(1) == layer.in_features // 2), name
        same = (layer.weight == 0) == (decoder_linears(cpu_model)[name].weight == 0)
        assert same.float().mean() > 0.99, name  # a near-tie of two scores may fall the other way on a GPU
    reference = copy.deepcopy(model)
    quantize_model(model, 4, 32, device=torch.device(device))
    quantize_model(reference, 4, 32)
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    for name, layer in decoder_linears(model).items():
        assert torch.equal(layer.weight, decoder_linears(reference)[name].weight), name  # round-to-nearest is exact


@pytest.mark.parametrize("device", DEVICES)
def test_qa_sparsepeft_trains_and_merges_on_a_device(device, tmp_path):
    net = sparse_net("qa", quant=True)
    net.model.to(device)
    config, x = net.space.heuristic(), inputs().to(device)
    net.train_adapters()
    with net.activated(config):
        net.model(input_ids=x).logits.square().mean().backward()
        with torch.no_grad():
            unmerged = net.model(input_ids=x).logits.cpu()
    grads = [p.grad for p in net.adapter_parameters()]
    assert all(g is not None and g.device.type == device for g in grads) and sum(g.abs().sum() for g in grads) > 0
    export_merged(net, config, tmp_path / "m")
    loaded = load_quantized(tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(input_ids=x.cpu()).logits, unmerged, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------- SparsePEFT
def sparse_net(mode: str = "sparse", quant: bool = False) -> SuperNetwork:
    model, _ = sparse_model(0.5)
    if quant:
        quantize_model(model, 4, 32)
    net = SuperNetwork(model, space(), tokenizer=byte_tokenizer())
    apply_adapter_mode(net, mode)
    train_adapters(net)
    return net


def test_sparsepeft_merge_keeps_the_base_zero_pattern_and_the_outputs(tmp_path):
    net = sparse_net("sparse")
    assert all(isinstance(m, SparseLoRALinear) for m in net.elastic.values())
    config = net.space.heuristic()
    x = inputs()
    with net.activated(config), torch.no_grad():
        unmerged = net.model(input_ids=x).logits
    base = {n: m.base_layer.weight.clone() for n, m in net.elastic.items()}
    export_merged(net, config, tmp_path / "m")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    for name, w in base.items():
        mw = merged.get_submodule(name).weight
        assert torch.equal(mw == 0, w == 0), name
        assert not torch.equal(mw, w), name  # the adapter did change the non-zeros
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=x).logits, unmerged, atol=1e-4, rtol=1e-4)
    assert json.loads((tmp_path / "m" / SPARSITY_FILE).read_text())["sparsity"] == pytest.approx(0.5)


def test_sparsepeft_fused_forward_equals_reference_two_linear_form():
    net = sparse_net("sparse")
    m = net.elastic["model.layers.0.mlp.up_proj"]
    m.set_active(4)
    x = torch.randn(3, 5, 64)
    reference = torch.nn.functional.linear(x, m.base_layer.weight) + torch.nn.functional.linear(
        x, (m.lora_B.weight[:, :4] @ m.lora_A.weight[:4]) * m.scaling * m.mask)
    torch.testing.assert_close(m(x), reference, atol=1e-5, rtol=1e-5)


def test_sparsepeft_gradients_reach_the_adapters_only_through_the_mask():
    net = sparse_net("sparse")
    net.train_adapters()
    m = net.elastic["model.layers.0.self_attn.q_proj"]
    loss = net.model(input_ids=inputs()).logits.square().mean()
    loss.backward()
    assert m.lora_A.weight.grad is not None and m.lora_A.weight.grad.abs().sum() > 0
    assert m.base_layer.weight.grad is None


def test_merging_into_a_base_whose_mask_changed_is_refused(tmp_path):
    net = sparse_net("sparse")
    with torch.no_grad():
        net.elastic["model.layers.1.mlp.up_proj"].base_layer.weight[0, :] = 0.0
    with pytest.raises(CompressError, match="mask changed"):
        export_merged(net, net.space.max(), tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_sparse_adapter_refuses_another_sparse_base(tmp_path):
    net = sparse_net("sparse")
    adapter = net.save_adapter(tmp_path / "adapter")
    other = tiny_model("llama")
    sparsify(other, method="magnitude", ratio=0.5)
    with pytest.raises(CompressError, match="trained on a base with"):
        from lorasearch.compress.adapter_modes import resolve_mode

        mode, saved = resolve_mode(None, adapter)
        apply_adapter_mode(SuperNetwork(other, space(), adapter), mode, saved)


def test_network_settings_carry_the_mode_through_save_and_load(tmp_path):
    model, report = sparse_model(0.5)
    save_sparse(model, byte_tokenizer(), tmp_path / "base", report)
    space().save(tmp_path / "space.yaml")
    net = build_network(NetworkSettings(model=str(tmp_path / "base"), space=str(tmp_path / "space.yaml"), adapter_mode="sparse"))
    train_adapters(net)
    net.save_adapter(tmp_path / "adapter")
    again = build_network(NetworkSettings(model=str(tmp_path / "base"), adapter=str(tmp_path / "adapter")))
    assert again.adapter_mode == "sparse"
    assert isinstance(again.elastic["model.layers.0.mlp.up_proj"], SparseLoRALinear)


# ---------------------------------------------------------------------------- QA-SparsePEFT
def test_qa_sparsepeft_merge_lies_on_the_grid_and_keeps_zeros(tmp_path):
    net = sparse_net("qa", quant=True)
    assert all(isinstance(m, QALoRALinear) for m in net.elastic.values())
    config = net.space.heuristic()
    x = inputs()
    with net.activated(config), torch.no_grad():
        unmerged = net.model(input_ids=x).logits
    base = {n: m.base_layer.weight.clone() for n, m in net.elastic.items()}
    export_merged(net, config, tmp_path / "m")
    loaded = load_quantized(tmp_path / "m")
    for name, m in net.elastic.items():
        mw = loaded.model.get_submodule(name).weight
        grid = m.grid
        assert torch.equal(grid.dequantize(grid.quantize(mw)), mw), name  # every weight on its group's grid
        assert torch.all(mw[base[name] == 0] == 0), name  # the base's zeros hold
        # equation 3 may round a tiny non-zero W + L^p to the zero point: never fewer zeros, rarely more
        assert (mw == 0).sum() - (base[name] == 0).sum() <= mw.numel() * 0.05, name
    changed = sum(not torch.equal(loaded.model.get_submodule(n).weight, w) for n, w in base.items())
    assert changed > 0
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(input_ids=x).logits, unmerged, atol=1e-4, rtol=1e-4)


def test_qa_fake_quant_has_straight_through_gradient():
    net = sparse_net("qa", quant=True)
    net.train_adapters()
    net.model(input_ids=inputs()).logits.square().mean().backward()
    grads = [p.grad for p in net.adapter_parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_qa_needs_a_quantized_base():
    with pytest.raises(CompressError, match="not quantized"):
        sparse_net("qa", quant=False)


def test_plain_adapter_on_int4_base_cannot_be_merged(tmp_path):
    net = sparse_net("dense", quant=True)
    with pytest.raises(CompressError, match="INT4 base and a plain adapter"):
        export_merged(net, net.space.max(), tmp_path / "m")


# ------------------------------------------------------------------------------------- cost
def test_cost_names_dense_and_effective_macs():
    net = sparse_net("sparse")
    cost = CostModel(net, seq_len=16, reference="analytic")
    config = net.space.heuristic()
    dense, effective = cost.macs(config), cost.effective_macs(config)
    linear_macs = 16 * sum(m.in_features * m.out_features for m in decoder_linears(net.model).values()
                           if type(m) is torch.nn.Linear)  # elastic bases and the plain decoder linears
    assert dense - effective == linear_macs // 2
    assert cost.parameters(config).nonzero < cost.parameters(config).base
    dense_net = SuperNetwork(tiny_model("llama"), space())
    dense_cost = CostModel(dense_net, seq_len=16, reference="analytic")
    assert dense_cost.effective_macs(config) == dense_cost.macs(config)


def test_macs_effective_objective_is_registered():
    from lorasearch.runs.network_objectives import ObjectiveContext, build_objective

    net = sparse_net("sparse")
    cost = CostModel(net, seq_len=8, reference="analytic")
    objective = build_objective("macs_effective", ObjectiveContext(net=net, cost=cost))
    assert objective.direction == "min" and objective.measure(net.space.max()).value == cost.effective_macs(net.space.max())


# ------------------------------------------------- QA-SparsePEFT on W^p: equations 3 and 4 by hand
def qa_layer(float_base: bool = True, dropout: float = 0.0, seed: int = 0):
    """A 4x64 sparse INT4 linear (group 32) as QA-SparsePEFT: ``W^p``, its grid and codes, and a rank-4
    adapter with B = I and scale 1, so that ``L = A`` exactly; ``L`` is 0.4 steps on every entry."""
    gen = torch.Generator().manual_seed(seed)
    wp = torch.randn(4, 64, generator=gen)
    wp[torch.rand(4, 64, generator=gen) < 0.5] = 0.0
    grid, codes = quantize_weight(wp, 4, 32)
    layer = torch.nn.Linear(64, 4, bias=False)
    with torch.no_grad():
        layer.weight.copy_(grid.dequantize(codes))
    layer.quant_grid = grid
    if float_base:
        layer.prequant_weight = wp.clone()
    module = ElasticLoRALinear(layer, rank=4, alpha=4, dropout=dropout)  # scale alpha / r = 1
    steps = grid.scales.repeat_interleave(32, dim=1)
    signs = torch.where(torch.rand(4, 64, generator=gen) < 0.5, -1.0, 1.0)
    lora = 0.4 * steps * signs
    with torch.no_grad():
        module.lora_B.weight.copy_(torch.eye(4))
        module.lora_A.weight.copy_(lora)
    QALoRALinear.convert(module)
    return module, wp, grid, codes, lora


def equation_3(w, lora, mask, grid):
    """clamp(round((W + L * M) / s) + z, 0, 2^n - 1), written out per element."""
    s = grid.scales.repeat_interleave(grid.group_size, dim=1)
    z = grid.zeros.float().repeat_interleave(grid.group_size, dim=1)
    return torch.clamp(torch.round((w + lora * mask) / s) + z, 0, 2**grid.bits - 1), s, z


def test_qa_quantizes_the_float_weights_plus_adapter_as_equation_3():
    module, wp, grid, codes, lora = qa_layer()
    assert module.qa_base == "float" and torch.equal(module.mask, wp != 0)
    want, s, z = equation_3(wp, lora, wp != 0, grid)
    got = module.merged_codes()
    assert torch.equal(got.float(), want)
    flipped = int((got != codes).sum())
    assert flipped > 20, flipped  # entries of 0.4 steps move codes of W^p near a rounding edge
    assert torch.equal(want != codes.float(), got != codes)  # exactly the codes equation 3 flips
    assert torch.all(got[wp == 0] == grid.zeros.repeat_interleave(32, dim=1)[wp == 0])  # zeros stay zeros
    # equation 4: the merged weight is s (q - z)
    assert torch.equal(module.merged_weight(), s * (want - z))
    x = torch.randn(3, 64)
    torch.testing.assert_close(module(x), x @ (s * (want - z)).T, atol=1e-6, rtol=1e-6)


def test_qa_without_a_float_base_is_the_dequantised_fallback_where_small_entries_change_nothing():
    module, wp, grid, codes, lora = qa_layer(float_base=False)
    assert module.qa_base == "dequantized"
    deq = grid.dequantize(codes)
    want, _, _ = equation_3(deq, lora, deq != 0, grid)
    assert torch.equal(want, codes.float())  # |L| < s / 2 on s (q - z): round() lands on q again
    assert torch.equal(module.merged_codes(), codes)


def test_straight_through_gradient_is_exactly_the_upstream_gradient():
    _, _, grid, _, _ = qa_layer()
    w = (torch.randn(4, 64) * 3).requires_grad_()  # some entries fall outside the grid and are clamped
    assert (grid.quantize(w.detach()) == 0).any() and (grid.quantize(w.detach()) == 15).any()
    upstream = torch.randn(4, 64)
    out = grid.fake_quantize(w)
    assert torch.equal(out.detach(), grid.dequantize(grid.quantize(w.detach())))  # the value is exactly on the grid
    out.backward(upstream)
    assert torch.equal(w.grad, upstream)


def test_qa_adapter_gradient_is_the_weight_gradient_through_the_mask():
    module, wp, grid, _, _ = qa_layer()
    module.lora_A.weight.requires_grad_(True)
    x, upstream = torch.randn(5, 64), torch.randn(5, 4)
    module(x).backward(upstream)
    leaf = module.merged_weight().clone().requires_grad_()  # the weight the forward used, as a leaf
    torch.nn.functional.linear(x, leaf).backward(upstream)
    # L = s B A with B = I and s = 1: dLoss/dA = (dLoss/dW ⊙ M), the STE passing dLoss/dW through unchanged
    torch.testing.assert_close(module.lora_A.weight.grad, leaf.grad * (wp != 0), atol=0, rtol=0)


def test_qa_applies_adapter_dropout_like_sparsepeft():
    module, wp, grid, codes, lora = qa_layer(dropout=0.5)
    want, s, z = equation_3(wp, lora, wp != 0, grid)
    quantized, base = s * (want - z), grid.dequantize(codes)
    x = torch.randn(6, 64)
    module.train()
    torch.manual_seed(3)
    y = module(x)
    torch.manual_seed(3)
    dropped = torch.nn.functional.dropout(x, 0.5, training=True)
    torch.testing.assert_close(y, x @ base.T + dropped @ (quantized - base).T, atol=1e-5, rtol=1e-5)
    module.eval()
    torch.testing.assert_close(module(x), x @ quantized.T, atol=1e-6, rtol=1e-6)


def test_quantize_keeps_the_float_weights_and_qa_trains_on_them(tmp_path):
    model, _ = sparse_model(0.5)
    before = {n: m.weight.detach().clone() for n, m in decoder_linears(model).items()}
    save_sparse(model, byte_tokenizer(), tmp_path / "sparse", sparsity_report(model))
    space().save(tmp_path / "space.yaml")
    quantize_base(NetworkSettings(model=str(tmp_path / "sparse")), tmp_path / "q", group_size=32)
    assert json.loads((tmp_path / "q" / QUANT_FILE).read_text())["float_base"] == PREQUANT_FILE
    stored = load_file(str(tmp_path / "q" / PREQUANT_FILE))
    assert set(stored) == set(before) and all(torch.equal(stored[n], w) for n, w in before.items())
    settings = NetworkSettings(model=str(tmp_path / "q"), space=str(tmp_path / "space.yaml"), adapter_mode="qa")
    net = build_network(settings)
    assert net.adapter_metadata["qa_base"] == "float"
    q0 = net.elastic["model.layers.0.self_attn.q_proj"]
    assert torch.equal(q0.float_weight, before["model.layers.0.self_attn.q_proj"])
    assert not any(hasattr(m, "prequant_weight") for m in net.model.modules())  # nothing else holds a copy
    train_adapters(net)
    net.save_adapter(tmp_path / "adapter")
    again = build_network(NetworkSettings(model=str(tmp_path / "q"), adapter=str(tmp_path / "adapter")))
    assert again.adapter_mode == "qa" and again.adapter_metadata["qa_base"] == "float"
    assert again.fingerprint() == net.fingerprint()
    dense = build_network(NetworkSettings(model=str(tmp_path / "q"), space=str(tmp_path / "space.yaml")))
    assert not any(hasattr(m, "prequant_weight") for m in dense.model.modules())  # W^p only loads for QA
    # the float base gone, the adapter trained on it is refused; a fresh QA run falls back with a warning
    (tmp_path / "q" / PREQUANT_FILE).unlink()
    with pytest.raises(CompressError, match="trained against the weights from before quantization"):
        build_network(NetworkSettings(model=str(tmp_path / "q"), adapter=str(tmp_path / "adapter")))
    with pytest.warns(LoraSearchWarning, match="de-quantised base"):
        fallback = build_network(settings)
    assert fallback.adapter_metadata["qa_base"] == "dequantized" and fallback.fingerprint() != net.fingerprint()


def test_float_weights_that_do_not_round_to_the_codes_are_refused(tmp_path):
    model, _ = sparse_model(0.5)
    quantize_model(model, 4, 32)
    save_quantized(model, byte_tokenizer(), tmp_path / "q")
    stored = load_file(str(tmp_path / "q" / PREQUANT_FILE))
    stored["model.layers.1.mlp.up_proj"] = stored["model.layers.1.mlp.up_proj"] * 2
    save_file(stored, str(tmp_path / "q" / PREQUANT_FILE))
    with pytest.raises(CompressError) as exc:
        load_quantized(tmp_path / "q", float_base=True)
    assert "model.layers.1.mlp.up_proj" in str(exc.value) and "fix" in str(exc.value) and "\n" not in str(exc.value)


# ------------------------------------------------------------------ exports that keep what was searched
@pytest.mark.parametrize("mode", ["sparse", "qa"])
def test_peft_export_of_masked_adapters_is_refused_naming_merged(mode, tmp_path):
    net = sparse_net(mode, quant=mode == "qa")
    with pytest.raises(ExportError) as exc:
        export_peft(net, net.space.heuristic(), tmp_path / "peft")
    message = str(exc.value)
    assert "\n" not in message and "--format peft" in message and "fix: use --format merged" in message
    assert not (tmp_path / "peft").exists()


def test_peft_export_of_a_dense_adapter_on_a_sparse_base_is_what_stock_peft_computes(tmp_path):
    net = sparse_net("dense")
    config = net.space.heuristic()
    export_peft(net, config, tmp_path / "peft")
    base, _ = sparse_model(0.5)  # the same seeded model and calibration: the same sparse base
    stock = PeftModel.from_pretrained(base, tmp_path / "peft").eval()
    x = inputs()
    with net.activated(config), torch.no_grad():
        torch.testing.assert_close(stock(input_ids=x).logits, net.model(input_ids=x).logits, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------- one builder
def test_from_pretrained_gives_build_networks_network_or_refuses_in_one_line(tmp_path):
    model, report = sparse_model(0.5)
    save_sparse(model, byte_tokenizer(), tmp_path / "sparse", report)
    quantize_base(NetworkSettings(model=str(tmp_path / "sparse")), tmp_path / "q", group_size=32)
    space().save(tmp_path / "space.yaml")
    x = inputs()
    for mode, base in (("dense", "sparse"), ("sparse", "sparse"), ("qa", "q")):
        built = build_network(NetworkSettings(model=str(tmp_path / base), space=str(tmp_path / "space.yaml"),
                                              adapter_mode=mode))
        train_adapters(built)
        adapter = built.save_adapter(tmp_path / f"adapter-{mode}")
        if mode == "dense":  # a plain adapter on a sparse base: the same network through both doors
            other = SuperNetwork.from_pretrained(str(tmp_path / base), tmp_path / "space.yaml", adapter)
            again = build_network(NetworkSettings(model=str(tmp_path / base), adapter=str(adapter)))
            assert other.fingerprint() == again.fingerprint()
            with torch.no_grad():
                torch.testing.assert_close(other.model(input_ids=x).logits, again.model(input_ids=x).logits, atol=0, rtol=0)
            continue
        with pytest.raises(LoraSearchError) as exc:
            SuperNetwork.from_pretrained(str(tmp_path / base), tmp_path / "space.yaml", adapter)
        message = str(exc.value)
        assert "\n" not in message and "lorasearch_adapter_mode.json" in message and f"a {mode} adapter" in message
        assert "fix: use lorasearch.build_network(lorasearch.NetworkSettings(" in message
        again = build_network(NetworkSettings(model=str(tmp_path / base), adapter=str(adapter)))
        assert again.adapter_mode == mode and again.fingerprint() == built.fingerprint()
        with torch.no_grad():
            torch.testing.assert_close(again.model(input_ids=x).logits, built.model(input_ids=x).logits, atol=0, rtol=0)
    with pytest.raises(LoraSearchError) as exc:  # an INT4 base with fresh adapters would lose its grid
        SuperNetwork.from_pretrained(str(tmp_path / "q"), tmp_path / "space.yaml")
    assert "lorasearch_quant.json: an INT-quantized base" in str(exc.value) and "build_network" in str(exc.value)


def zero_share(model) -> float:
    weights = [m.weight for m in decoder_linears(model).values()]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def test_merging_a_dense_adapter_into_a_sparse_base_warns_and_records_the_sparsity(tmp_path):
    import warnings

    dense = sparse_net("dense")
    with pytest.warns(LoraSearchWarning, match="fill the sparse base's zeros"):
        export_merged(dense, dense.space.max(), tmp_path / "dense")
    recorded = json.loads((tmp_path / "dense" / "subnet.json").read_text())["sparsity"]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "dense")
    assert recorded["base"] == pytest.approx(zero_share(sparse_model(0.5)[0]))
    assert recorded["merged"] == pytest.approx(zero_share(merged)) and recorded["merged"] < recorded["base"] - 0.2
    sparse = sparse_net("sparse")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SparsePEFT keeps the zeros: nothing to warn about
        export_merged(sparse, sparse.space.max(), tmp_path / "sparse")
    recorded = json.loads((tmp_path / "sparse" / "subnet.json").read_text())["sparsity"]
    assert recorded["merged"] == recorded["base"] == pytest.approx(zero_share(AutoModelForCausalLM.from_pretrained(tmp_path / "sparse")))
