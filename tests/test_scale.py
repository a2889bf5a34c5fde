"""The users' scale: devices and dtypes through the one builder, fp32 adapters over a bf16 base
against PEFT's own, and planning a 7B search from its config on the meta device."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import MODE_A_MODULES, SHEARS_SPACE, SPACES_DIR, TINY_SPACE, mode_a_space, randomize_adapters, run_cli
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open

from lorasearch import SuperNetwork
from lorasearch.cost import CostModel
from lorasearch.errors import ModelError
from lorasearch.export.exporters import export_peft
from lorasearch.models.loading import load_model, resolve_device, resolve_dtype, tiny_model
from lorasearch.runs import NetworkSettings, SearchRun, TaskSettings, build_network, export_run, run_from_file
from lorasearch.search import SearchSettings

MODELS = SPACES_DIR / "models"
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
BF16_ATOL = 2e-2  # logits of a tiny random model in bf16 (about 8 bits of mantissa)


def bf16_logits(model, ids):
    with torch.inference_mode():
        return model(ids.to(next(model.parameters()).device)).logits.float().cpu()


# ---------------------------------------------------------------------------- dtypes and devices
def test_auto_means_the_checkpoints_dtype_on_a_gpu_and_fp32_on_the_cpu():
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) is None  # from_pretrained(dtype="auto")
    assert resolve_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ModelError, match="--dtype 'int3': unknown; fix: use one of auto, fp32, bf16, fp16"):
        resolve_dtype("int3", torch.device("cpu"))
    with pytest.raises(ModelError, match="--device 'tpu': unknown"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_asking_for_a_gpu_where_there_is_none_is_one_line(capsys):
    with pytest.raises(ModelError, match="--device cuda: no GPU is visible; fix: use --device cpu or auto"):
        resolve_device("cuda")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", list(MODE_A_MODULES))
def test_fp32_adapters_over_a_bf16_base_equal_peft_lora_over_the_same_base(family, device, tmp_path):
    base = tiny_model(family).to(device=device, dtype=torch.bfloat16)
    net = SuperNetwork(base, mode_a_space(family))
    assert {m.adapter_dtype for m in net.elastic.values() if m.lora_A is not None} == {torch.float32}
    randomize_adapters(net)
    targets = sorted({m.rsplit(".", 1)[-1] for mods in MODE_A_MODULES[family].values() for m in mods})
    peft_model = get_peft_model(tiny_model(family).to(device=device, dtype=torch.bfloat16),
                                LoraConfig(r=8, lora_alpha=16, target_modules=targets)).eval()
    with torch.no_grad():
        for name, m in net.adapter_modules().items():
            layer = peft_model.base_model.model.get_submodule(name)
            assert layer.lora_A["default"].weight.dtype == torch.float32  # PEFT's own default
            layer.lora_A["default"].weight.copy_(m.A)
            layer.lora_B["default"].weight.copy_(m.B)
    ids = torch.randint(3, 250, (2, 12), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(bf16_logits(net.model, ids), bf16_logits(peft_model, ids), atol=BF16_ATOL, rtol=0)

    config = net.space.sample(1)
    folder = export_peft(net, config, tmp_path / "sub")
    loaded = PeftModel.from_pretrained(tiny_model(family).to(device=device, dtype=torch.bfloat16), folder).eval()
    with net.activated(config):
        expected = bf16_logits(net.model, ids)
    torch.testing.assert_close(bf16_logits(loaded, ids), expected, atol=BF16_ATOL, rtol=0)


def test_a_flag_keeps_the_adapters_in_the_base_dtype():
    net = build_network(NetworkSettings(model="tiny-llama", space=str(TINY_SPACE), dtype="bf16", adapter_dtype="base"))
    assert {m.adapter_dtype for m in net.elastic.values() if m.lora_A is not None} == {torch.bfloat16}


def test_a_seed_gives_the_same_fresh_adapters_whatever_the_dtype():
    fp32 = build_network(NetworkSettings(model="tiny-llama", space=str(TINY_SPACE), dtype="fp32"))
    bf16 = build_network(NetworkSettings(model="tiny-llama", space=str(TINY_SPACE), dtype="bf16"))
    for a, b in zip(fp32.adapter_parameters(), bf16.adapter_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_a_bf16_run_resumes_and_exports_with_its_dtype_and_device(device, tmp_path):
    plan = SearchRun(NetworkSettings(model="tiny-llama", space=str(TINY_SPACE), dtype="bf16", device=device),
                     TaskSettings(limit=8), SearchSettings(budget=4, population=4, seed=0))
    plan.run(tmp_path / "run")
    resumed = run_from_file(tmp_path / "run" / "run.yaml")
    assert (resumed.network.dtype, resumed.network.device) == ("bf16", device)
    _, net = resumed.run(tmp_path / "run", resume=True)
    base = net.elastic["model.layers.0.self_attn.q_proj"]
    assert base.base_layer.weight.dtype == torch.bfloat16 and base.adapter_dtype == torch.float32
    assert net.device.type == device
    out = export_run(tmp_path / "run", "max", "merged")
    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.bfloat16}


# ------------------------------------------------------------------------------------ plain base
def test_eval_without_space_or_adapter_scores_the_plain_base_model(capsys):
    run_cli("eval", "--model", "tiny-llama", "--limit", "8")
    out = capsys.readouterr().out
    assert "accuracy:" in out and "on 8 items" in out and "0 trainable" in out


def test_cost_and_space_show_take_a_model_folder_without_a_tokenizer(tmp_path, capsys):
    tiny_model("llama").save_pretrained(tmp_path / "bare")  # weights and config, no tokenizer files
    run_cli("cost", "--model", tmp_path / "bare", "--space", TINY_SPACE, "--config", "min", "--seq-len", "8")
    run_cli("space", "show", TINY_SPACE, "--model", tmp_path / "bare")
    out = capsys.readouterr().out
    assert "GMACs (unmerged adapters, 8 tokens)" in out and "heuristic" in out


# ---------------------------------------------------------------------------------- 7B planning
def two_layer_copy(config_file, tmp_path):
    """The same architecture cut to two layers, materialised in fp32 on the CPU."""
    data = json.loads(config_file.read_text())
    data["num_hidden_layers"] = 2
    small = tmp_path / "two-layers.json"
    small.write_text(json.dumps(data))
    meta = load_model(str(small)).model
    return meta.to_empty(device="cpu").float(), data


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama-2-7b", "mistral-7b"])
def test_meta_device_figures_equal_the_closed_form_of_a_materialised_copy_scaled_by_layers(name, tmp_path):
    config_file = MODELS / f"{name}.json"
    full = build_network(NetworkSettings(model=str(config_file), space=str(SHEARS_SPACE)), with_tokenizer=False)
    assert next(full.model.parameters()).device.type == "meta"
    layers = full.model.config.num_hidden_layers
    model, _ = two_layer_copy(config_file, tmp_path)
    small = SuperNetwork(model, SHEARS_SPACE)
    seq = 16
    full_cost = CostModel(full, seq_len=seq, reference="analytic")
    small_cost = CostModel(small, seq_len=seq, reference="fvcore")  # checked against an fvcore trace of real weights
    for which in ("max", "heuristic", "min"):
        big_config, small_config = getattr(full.space, which)(), getattr(small.space, which)()
        for deployment in ("unmerged", "merged"):
            rows = small_cost.breakdown(small_config, deployment)
            rows = rows[rows["kind"] != "total"]
            in_layers = rows["module"].str.startswith("model.layers.")
            per_layer = rows[in_layers]["macs"].sum() / 2
            expected = rows[~in_layers]["macs"].sum() + layers * per_layer
            assert full_cost.macs(big_config, deployment) == expected
        small_params, big_params = small_cost.parameters(small_config), full_cost.parameters(big_config)
        outside = sum(p.numel() for n, p in small.model.named_parameters() if not n.startswith("model.layers.")
                      and "lora_" not in n)
        assert big_params.base == outside + layers * (small_params.base - outside) / 2
        assert big_params.trainable == layers * small_params.trainable / 2
        assert big_params.nonzero is None  # no weights to count


def test_the_shipped_7b_configs_have_their_published_sizes():
    counts = {name: sum(p.numel() for p in load_model(str(MODELS / f"{name}.json")).model.parameters())
              for name in ("llama-2-7b", "mistral-7b")}
    assert counts == {"llama-2-7b": 6_738_415_616, "mistral-7b": 7_241_732_096}


def test_evaluation_batches_by_tokens_on_a_gpu_and_by_count_on_the_cpu():
    from lorasearch.runs.settings import GPU_BATCH_TOKENS, batching

    assert batching(TaskSettings(), torch.device("cpu")) == {"batch_size": 8, "max_batch_tokens": None}
    assert batching(TaskSettings(), torch.device("cuda")) == {"batch_size": None, "max_batch_tokens": GPU_BATCH_TOKENS}
    big = load_model("tiny-llama").model  # a tiny model on a large free memory: the cap
    assert batching(TaskSettings(), torch.device("cuda"), big, free_bytes=2**34)["max_batch_tokens"] == GPU_BATCH_TOKENS
    given = TaskSettings(batch_size=4, max_batch_tokens=512)
    assert batching(given, torch.device("cuda")) == {"batch_size": 4, "max_batch_tokens": 512}
