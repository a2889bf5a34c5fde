"""Pruned exports against stock loaders: transformers (with the folder's own modeling code), lm-eval's
``hf`` model, and masked stock models as the oracle where lorasearch's super-network cannot prune."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from lorasearch import SearchSpace, SuperNetwork
from lorasearch.errors import ExportError, LoraSearchWarning
from lorasearch.export.decilm.configuration_decilm import DeciLMConfig, ffn_mult_to_intermediate_size
from lorasearch.export.decilm.modeling_decilm import DeciLMForCausalLM
from lorasearch.export.exporters import PRUNED_FILE, export_pruned, load_pruned
from lorasearch.export.pruned import README_FILE, write_pruned_model
from lorasearch.models.loading import BOS_ID, EOS_ID, PAD_ID, byte_tokenizer, tiny_model

ATOL = 1e-5  # fp32
HIDDEN, WIDTH, HEADS, HEAD_DIM = 64, 128, 4, 16  # the tiny models' shape (lorasearch.models.loading.tiny_config)


def space(share: str = "layer") -> SearchSpace:
    return SearchSpace.from_dict({
        "name": f"b-{share}", "adapter": {"rank": 8, "alpha": 16},
        "groups": {
            "attn": {"modules": ["self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj"], "rank": [8, 4]},
            "mlp_rank": {"modules": ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"], "rank": [8, 4, 0]},
            "mlp": {"width": [1.0, 0.75, 0.5], "channels": "mlp", "share": share},
            "heads": {"heads": [4, 2], "share": share},
        },
    })


def make_net(family: str, seed: int = 0, share: str = "layer", **model_kw) -> SuperNetwork:
    net = SuperNetwork(tiny_model(family, **model_kw), space(share), tokenizer=byte_tokenizer(),
                       model_spec=f"tiny-{family}")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.adapter_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return net


def per_layer(net: SuperNetwork, widths, heads, seed: int = 0) -> dict:
    config = net.space.sample(seed)
    config.update({f"mlp.{i}": w for i, w in enumerate(widths)})
    config.update({f"heads.{i}": h for i, h in enumerate(heads)})
    return config


def ids_of(seed: int = 0, batch: int = 2, length: int = 12) -> torch.Tensor:
    return torch.randint(3, 250, (batch, length), generator=torch.Generator().manual_seed(seed))


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids, use_cache=False).logits


def net_logits(net: SuperNetwork, config, ids, dropped=()) -> torch.Tensor:
    """The super-network's sub-network, with the blocks ``dropped`` deleted from the stock layer list."""
    with net.activated(config):
        layers = net.model.model.layers
        net.model.model.layers = nn.ModuleList([b for i, b in enumerate(layers) if i not in dropped])
        try:
            return logits(net.model, ids)
        finally:
            net.model.model.layers = layers


def stock_load(folder: Path) -> nn.Module:
    return AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()


def export_quietly(net, config, out, **kw) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("error", LoraSearchWarning)  # a per-layer subnet that fits vLLM says nothing
        return export_pruned(net, config, out, **kw)


def greedy_loop(model: nn.Module, ids: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding by recomputing the whole sequence each step: no cache, no generate. After the
    end-of-sequence token it writes padding, as ``generate`` does."""
    done = torch.zeros(ids.shape[0], dtype=torch.bool)
    for _ in range(steps):
        nxt = logits(model, ids)[:, -1].argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, PAD_ID), nxt)
        done |= nxt == EOS_ID
        ids = torch.cat([ids, nxt[:, None]], dim=1)
    return ids


# ------------------------------------------------------------------ per-layer widths, vLLM layout
@pytest.mark.parametrize("family, tied", [("llama", False), ("mistral", False), ("qwen2", False), ("llama", True)])
def test_per_layer_widths_load_in_stock_transformers(family, tied, tmp_path):
    net = make_net(family, seed=5, tie_word_embeddings=tied)
    config = per_layer(net, [1.0, 0.5, 0.75, 0.5], [2, 2, 2, 2])
    out = export_quietly(net, config, tmp_path / "p")

    layout = json.loads((out / PRUNED_FILE).read_text())
    assert (layout["layout"], layout["stock"], layout["vllm_reads_it"]) == ("decilm", False, True)
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_type"] == "nemotron-nas" and saved["architectures"] == ["DeciLMForCausalLM"]
    assert saved["num_attention_heads"] == 2 and saved["head_dim"] == HEAD_DIM
    for file in (f.split(".")[0] + ".py" for f in saved["auto_map"].values()):
        assert (out / file).is_file(), file
    blocks = saved["block_configs"]
    assert [b["ffn"]["intermediate_size"] for b in blocks] == [128, 64, 96, 64]
    for b in blocks:
        assert "ffn_mult" not in b["ffn"]  # vLLM prefers ffn_mult when present
        assert "num_attention_heads" not in b["attention"]  # vLLM keeps query heads global
        assert b["attention"] == {"no_op": False, "replace_with_linear": False, "n_heads_in_group": 2}
        assert b["ffn"]["no_op"] is False and b["ffn"]["replace_with_linear"] is False
    # Qwen2 has q/k/v biases and no o_proj bias; vLLM reads qkv_bias for the first, attention_bias for the second.
    assert (saved["qkv_bias"], saved["attention_bias"]) == ((True, False) if family == "qwen2" else (False, False))
    assert "vLLM: `vllm serve" in (out / README_FILE).read_text()

    ids = ids_of(3)
    expected = net_logits(net, config, ids)
    stock, ours = stock_load(out), load_pruned(out)
    assert type(stock).__module__.startswith("transformers_modules")  # the folder's own code, not lorasearch's
    torch.testing.assert_close(logits(stock, ids), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(logits(ours, ids), logits(stock, ids), atol=ATOL, rtol=0)
    assert sum(p.numel() for p in stock.parameters()) < sum(p.numel() for p in tiny_model(family).parameters())
    if tied:
        assert stock.lm_head.weight is stock.model.embed_tokens.weight
        assert ours.lm_head.weight is ours.model.embed_tokens.weight


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_generate_with_the_kv_cache_equals_a_loop_without_it(family, tmp_path):
    net = make_net(family, seed=2)
    out = export_quietly(net, per_layer(net, [0.5, 1.0, 0.5, 0.75], [4, 4, 4, 4]), tmp_path / "p")
    model = stock_load(out)
    a, b = ids_of(1, batch=1, length=9), ids_of(2, batch=1, length=5)
    expected_a, expected_b = greedy_loop(model, a, 6), greedy_loop(model, b, 6)
    with torch.inference_mode():
        cached = model.generate(a, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = model.generate(a, max_new_tokens=6, do_sample=False, use_cache=False)
        # a left-padded batch: the padding mask and the positions must leave each row as it was alone
        batch = torch.cat([a, torch.cat([torch.zeros(1, 4, dtype=torch.long), b], dim=1)])
        mask = torch.ones_like(batch)
        mask[1, :4] = 0
        padded = model.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(cached, expected_a) and torch.equal(uncached, expected_a)
    assert torch.equal(padded[0], expected_a[0]) and torch.equal(padded[1, 4:], expected_b[0])
    assert torch.equal(load_pruned(out).generate(a, max_new_tokens=6, do_sample=False), expected_a)


# ----------------------------------------------------------------------- per-layer query heads
def test_per_layer_query_heads_say_so_and_still_load(tmp_path):
    net = make_net("llama", seed=3)
    config = per_layer(net, [1.0, 0.75, 0.5, 1.0], [4, 2, 4, 2])
    with pytest.warns(LoraSearchWarning, match="query heads differ per block.*not in vLLM"):
        out = export_pruned(net, config, tmp_path / "p")
    saved = json.loads((out / "config.json").read_text())
    assert saved["architectures"] == ["LoraSearchDeciLMForCausalLM"]
    assert [b["attention"]["num_attention_heads"] for b in saved["block_configs"]] == [4, 2, 4, 2]
    assert [b["attention"]["n_heads_in_group"] for b in saved["block_configs"]] == [2, 2, 2, 2]
    assert "vLLM: not supported" in (out / README_FILE).read_text()
    assert json.loads((out / PRUNED_FILE).read_text())["vllm_reads_it"] is False
    ids = ids_of(4)
    stock = stock_load(out)
    torch.testing.assert_close(logits(stock, ids), net_logits(net, config, ids), atol=ATOL, rtol=0)
    assert stock.model.layers[1].self_attn.q_proj.out_features == 2 * HEAD_DIM
    a = ids_of(5, batch=1)
    assert torch.equal(stock.generate(a, max_new_tokens=5, do_sample=False), greedy_loop(stock, a, 5))


# ------------------------------------------------------------------------------------ depth
def test_a_subnet_uniform_apart_from_depth_is_a_stock_model_with_fewer_blocks(tmp_path):
    net = make_net("llama", seed=4, share="global")
    config = dict(net.space.sample(1), mlp=0.75, heads=2)
    out = export_quietly(net, config, tmp_path / "p", dropped_blocks=[1])
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_type"] == "llama" and saved["num_hidden_layers"] == 3 and "auto_map" not in saved
    ids = ids_of(6)
    stock = AutoModelForCausalLM.from_pretrained(out).eval()  # no remote code
    torch.testing.assert_close(logits(stock, ids), net_logits(net, config, ids, dropped=(1,)), atol=ATOL, rtol=0)
    assert json.loads((out / PRUNED_FILE).read_text())["dropped_blocks"] == [1]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_per_layer_blocks_left_out_are_renumbered(family, tmp_path):
    net = make_net(family, seed=6)
    config = per_layer(net, [1.0, 0.5, 0.75, 0.75], [4, 4, 4, 4])
    out = export_quietly(net, config, tmp_path / "p", dropped_blocks=[0, 2])
    saved = json.loads((out / "config.json").read_text())
    assert saved["num_hidden_layers"] == 2
    assert [b["ffn"]["intermediate_size"] for b in saved["block_configs"]] == [64, 96]
    ids = ids_of(7)
    torch.testing.assert_close(logits(stock_load(out), ids), net_logits(net, config, ids, dropped=(0, 2)),
                               atol=ATOL, rtol=0)


def test_leaving_out_every_block_is_refused(tmp_path):
    net = make_net("llama")
    with pytest.raises(ExportError, match="cannot leave out blocks .*fix: indices in 0..3, at least one block kept"):
        export_pruned(net, net.space.max(), tmp_path / "p", dropped_blocks=range(4))
    assert not (tmp_path / "p").exists()


# -------------------------------------------------------------------------------------- Phi-3
def prune_phi3(model: nn.Module, widths, kv_heads) -> tuple[nn.Module, nn.Module]:
    """A Phi-3 physically pruned by hand (first channels and heads kept), and the oracle: the full model
    whose dropped MLP channels and heads have zero columns in down_proj and o_proj."""
    import copy

    small, masked = copy.deepcopy(model), copy.deepcopy(model)
    per_kv = HEADS // model.config.num_key_value_heads
    for i, (width, kv) in enumerate(zip(widths, kv_heads)):
        heads = kv * per_kv
        attn, mlp = small.model.layers[i].self_attn, small.model.layers[i].mlp
        q_rows, kv_rows, full_kv = heads * HEAD_DIM, kv * HEAD_DIM, model.config.num_key_value_heads * HEAD_DIM
        w = attn.qkv_proj.weight
        rows = torch.cat([w[:q_rows], w[HEADS * HEAD_DIM:HEADS * HEAD_DIM + kv_rows],
                          w[HEADS * HEAD_DIM + full_kv:HEADS * HEAD_DIM + full_kv + kv_rows]])
        attn.qkv_proj = linear_of(rows)
        attn.o_proj = linear_of(attn.o_proj.weight[:, :q_rows])
        gu = mlp.gate_up_proj.weight
        mlp.gate_up_proj = linear_of(torch.cat([gu[:width], gu[WIDTH:WIDTH + width]]))
        mlp.down_proj = linear_of(mlp.down_proj.weight[:, :width])
        with torch.no_grad():
            masked.model.layers[i].self_attn.o_proj.weight[:, q_rows:] = 0
            masked.model.layers[i].mlp.down_proj.weight[:, width:] = 0
    return small, masked


def linear_of(weight: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    layer.weight = nn.Parameter(weight.detach().clone())
    return layer


@pytest.mark.parametrize("rotary", [1.0, 0.5])
def test_phi3_per_layer_is_written_with_split_projections(rotary, tmp_path):
    """lorasearch's binding refuses widths and heads on Phi-3's fused projections, so the subnet is
    pruned by hand here; the oracle is the stock Phi-3 with the dropped channels' weights zeroed."""
    rope = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": rotary}
    base = tiny_model("phi3", seed=1, rope_parameters=rope)
    small, masked = prune_phi3(base, widths=[128, 64, 96, 32], kv_heads=[2, 1, 1, 2])
    plan = write_pruned_model(tmp_path / "p", small, byte_tokenizer())
    assert plan.layout == "decilm" and not plan.vllm_reads_it  # per-block query heads: 4, 2, 2, 4
    from safetensors import safe_open

    with safe_open(str(tmp_path / "p" / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert "model.layers.1.self_attn.q_proj.weight" in names and "model.layers.1.mlp.gate_proj.weight" in names
    assert not any("qkv_proj" in n or "gate_up_proj" in n for n in names)
    ids = ids_of(8)
    expected = logits(masked, ids)
    torch.testing.assert_close(logits(stock_load(tmp_path / "p"), ids), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(logits(load_pruned(tmp_path / "p"), ids), expected, atol=ATOL, rtol=0)


def test_phi3_with_the_same_shape_in_every_block_and_a_block_left_out_stays_a_stock_phi3(tmp_path):
    small, masked = prune_phi3(tiny_model("phi3", seed=2), widths=[64] * 4, kv_heads=[1] * 4)
    assert write_pruned_model(tmp_path / "p", small, dropped_blocks=[2]).layout == "stock"
    saved = json.loads((tmp_path / "p" / "config.json").read_text())
    assert (saved["model_type"], saved["intermediate_size"], saved["num_attention_heads"]) == ("phi3", 64, 2)
    assert saved["num_hidden_layers"] == 3
    del masked.model.layers[2]
    masked.config.num_hidden_layers = 3
    ids = ids_of(9)
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "p").eval(), ids),
                               logits(masked, ids), atol=ATOL, rtol=0)


# ------------------------------------------------------------- the layout's no-op parts, ffn_mult
def test_ffn_mult_follows_decilms_rule():
    # 2 * 5.25 * 8192 / 3 = 28672 = 112 * 256; 2 * 1.3125 * 256 / 3 = 224, rounded up to 256
    assert ffn_mult_to_intermediate_size(5.25, 8192) == 28672
    assert ffn_mult_to_intermediate_size(1.3125, 256) == 256


def test_no_op_attention_and_ffn_equal_a_stock_block_with_zero_outputs():
    """Blocks with attention or FFN left out (as the DeciLM layout allows): the oracle is the stock
    Llama with those parts' output projections zeroed. Block 0 has no attention, so the cache slots
    must skip it."""
    stock = tiny_model("llama", seed=3)
    blocks = [{"attention": {"n_heads_in_group": 2}, "ffn": {"intermediate_size": WIDTH}} for _ in range(4)]
    blocks[0]["attention"] = {"no_op": True}
    blocks[2]["ffn"] = {"no_op": True}
    config = DeciLMConfig(vocab_size=stock.config.vocab_size, hidden_size=HIDDEN, num_hidden_layers=4,
                          num_attention_heads=HEADS, head_dim=HEAD_DIM, rms_norm_eps=stock.config.rms_norm_eps,
                          max_position_embeddings=512, block_configs=blocks)
    config._attn_implementation = "eager"
    model = DeciLMForCausalLM(config).eval()
    state = {k: v for k, v in stock.state_dict().items()
             if not k.startswith(("model.layers.0.self_attn", "model.layers.0.input_layernorm",
                                  "model.layers.2.mlp", "model.layers.2.post_attention_layernorm"))}
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        stock.model.layers[0].self_attn.o_proj.weight.zero_()
        stock.model.layers[2].mlp.down_proj.weight.zero_()
    ids = ids_of(10)
    torch.testing.assert_close(logits(model, ids), logits(stock, ids), atol=ATOL, rtol=0)
    a = ids_of(11, batch=1)
    assert torch.equal(model.generate(a, max_new_tokens=5, do_sample=False), greedy_loop(stock, a, 5))


def test_replace_with_linear_is_refused_in_one_line():
    blocks = [{"attention": {"replace_with_linear": True}, "ffn": {"intermediate_size": 8}}]
    with pytest.raises(ValueError, match=r"block_configs\[0\].attention.replace_with_linear is true.*fix:"):
        DeciLMConfig(num_hidden_layers=1, block_configs=blocks)


# ------------------------------------------------------------------------- what stock tools cannot read
def test_a_rope_that_changes_with_length_falls_back_to_load_pruned(tmp_path):
    rope = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    net = make_net("llama", seed=7, rope_parameters=rope)
    config = per_layer(net, [1.0, 0.5, 0.5, 0.75], [4, 4, 4, 4])
    with pytest.warns(LoraSearchWarning, match="RoPE type 'dynamic'.*load_pruned only"):
        out = export_pruned(net, config, tmp_path / "p")
    layout = json.loads((out / PRUNED_FILE).read_text())
    assert layout["layout"] == "linears" and layout["linears"]["model.layers.0.mlp.up_proj"]["out"] == 128
    ids = ids_of(12)
    torch.testing.assert_close(logits(load_pruned(out), ids), net_logits(net, config, ids), atol=ATOL, rtol=0)


# ------------------------------------------------------------------------------- load_pruned
def test_load_pruned_runs_lorasearchs_own_code_never_the_folders(tmp_path):
    net = make_net("llama", seed=8)
    config = per_layer(net, [0.5, 1.0, 0.75, 0.5], [4, 4, 4, 4])
    out = export_quietly(net, config, tmp_path / "p")
    with open(out / "modeling_decilm.py", "a") as f:
        f.write("\nraise RuntimeError('the folder's code ran')\n")
    ids = ids_of(13)
    torch.testing.assert_close(logits(load_pruned(out), ids), net_logits(net, config, ids), atol=ATOL, rtol=0)


def test_load_pruned_casts_and_places_every_tensor(tmp_path):
    net = make_net("qwen2", seed=9, tie_word_embeddings=True)
    config = per_layer(net, [0.5, 1.0, 0.75, 0.5], [4, 4, 4, 4])
    out = export_quietly(net, config, tmp_path / "p")
    half = load_pruned(out, dtype="bf16", device="cpu", attn_implementation="eager")
    tensors = list(half.parameters())
    assert all(t.dtype == torch.bfloat16 and t.device.type == "cpu" for t in tensors)
    assert half.lm_head.weight is half.model.embed_tokens.weight
    ids = ids_of(14)
    full = logits(load_pruned(out), ids)
    assert (logits(half, ids).float() - full).abs().max() < 0.1 < full.abs().max()


def test_load_pruned_names_the_broken_file(tmp_path):
    net = make_net("llama", seed=10)
    out = export_quietly(net, per_layer(net, [0.5, 1.0, 1.0, 1.0], [4] * 4), tmp_path / "p")
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ExportError, match=r"model.safetensors: ends inside tensor .*fix: re-export"):
        load_pruned(out)
    with pytest.raises(ExportError, match=r"config.json: missing; fix:"):
        load_pruned(tmp_path)


# ------------------------------------------------------------------ without lorasearch: lm-eval
WITHOUT_LORASEARCH = r"""
import importlib.abc, json, sys
class NoLorasearch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "lorasearch" or name.startswith("lorasearch."):
            raise ImportError("lorasearch is not installed here")
sys.meta_path.insert(0, NoLorasearch())
import torch
from transformers import AutoModelForCausalLM
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
folder, ids_file, out_file = sys.argv[1:]
ids = torch.load(ids_file)
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
with torch.inference_mode():
    logits = model(ids, use_cache=False).logits
lm = HFLM(pretrained=folder, trust_remote_code=True, device="cpu", batch_size=2, dtype="float32")
requests = [Instance("loglikelihood", {}, ("The cat sat on", " the mat"), 0),
            Instance("loglikelihood", {}, ("Two plus two is", " four"), 1)]
scores = lm.loglikelihood(requests)
torch.save({"logits": logits, "loglikelihood": [s[0] for s in scores],
            "lorasearch_loaded": any(m.startswith("lorasearch") for m in sys.modules)}, out_file)
"""


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_the_folder_loads_in_lm_eval_on_a_machine_without_lorasearch(family, tmp_path):
    pytest.importorskip("lm_eval")
    net = make_net(family, seed=11)
    config = per_layer(net, [1.0, 0.5, 0.75, 0.5], [4, 2, 4, 4])  # per-layer query heads: remote code only
    with pytest.warns(LoraSearchWarning):
        out = export_pruned(net, config, tmp_path / "p")
    ids = ids_of(15)
    torch.save(ids, tmp_path / "ids.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"),
               HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", WITHOUT_LORASEARCH, str(out), str(tmp_path / "ids.pt"),
                           str(tmp_path / "result.pt")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = torch.load(tmp_path / "result.pt")
    assert not result["lorasearch_loaded"]
    ours = load_pruned(out)
    torch.testing.assert_close(result["logits"], logits(ours, ids), atol=ATOL, rtol=0)
    torch.testing.assert_close(result["logits"], net_logits(net, config, ids), atol=ATOL, rtol=0)
    tokenizer = byte_tokenizer()
    for (context, continuation), score in zip([("The cat sat on", " the mat"), ("Two plus two is", " four")],
                                              result["loglikelihood"]):
        # lm-eval encodes context + continuation whole (the tokenizer's own special tokens: a BOS here)
        # and scores the tokens past the encoded context
        whole, ctx = tokenizer(context + continuation)["input_ids"], tokenizer(context)["input_ids"]
        assert whole[0] == BOS_ID
        cont, full = whole[len(ctx):], torch.tensor([whole])
        logprobs = torch.log_softmax(logits(ours, full)[0, len(ctx) - 1:-1], dim=-1)
        expected = float(logprobs[torch.arange(len(cont)), torch.tensor(cont)].sum())
        assert score == pytest.approx(expected, abs=1e-4)
