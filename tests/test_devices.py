"""The GPU path, checked on the CPU: a parallel search's driver without weights, layers offloaded by
accelerate, the latency objective's timing, loss scaling in fp16, the evaluation budget, exports
and the preflight on another device. Cases that need CUDA are parametrised and skip without it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from helpers import SHEARS_SPACE, TINY_SPACE, randomize_adapters

from lorasearch import SearchSpace, SuperNetwork
from lorasearch.data import synthetic_task
from lorasearch.errors import LoraSearchError
from lorasearch.models.loading import byte_tokenizer, tiny_config, tiny_model
from lorasearch.runs import BackendSettings, NetworkSettings, SearchRun, TaskSettings, build_network
from lorasearch.search import SearchSettings
from lorasearch.train.reorder import reorder_network

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
MODE_B = {
    "name": "b", "adapter": {"rank": 8, "alpha": 16},
    "groups": {"qv": {"modules": ["self_attn.q_proj", "self_attn.v_proj"], "rank": [8, 4]},
               "mlp": {"width": [1.0, 0.5], "channels": "mlp"}, "heads": {"heads": [4, 2]}},
}


def logits(model, ids) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids).logits


# ------------------------------------------------------------------ 1. the driver of a parallel search
@pytest.fixture(scope="module")
def reordered_adapter(tmp_path_factory):
    """A Mode B super-adapter with random weights, reordered (its permutation saved beside it)."""
    net = randomize_adapters(SuperNetwork(tiny_model("llama"), SearchSpace.from_dict(MODE_B), tokenizer=byte_tokenizer(),
                                          model_spec="tiny-llama"))
    reorder_network(net, synthetic_task(40, seed=0), samples=4, seq_len=16, batch_size=4, seed=0)
    return net.save_adapter(tmp_path_factory.mktemp("adapter") / "adapter")


def test_shapes_only_holds_no_weight_yet_the_workers_adapter_and_fingerprint(reordered_adapter):
    settings = NetworkSettings(model="tiny-llama", adapter=str(reordered_adapter))
    full = build_network(settings)
    shapes = build_network(settings, shapes_only=True)
    assert shapes.permutation is not None and full.permutation is not None
    assert {p.device.type for n, p in shapes.model.named_parameters() if "lora_" not in n} == {"meta"}
    assert {p.device.type for p in shapes.adapter_parameters()} == {"cpu"}
    for a, b in zip(shapes.adapter_parameters(), full.adapter_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # reordered alike, from the same file
    assert shapes.fingerprint() == full.fingerprint()
    fresh = NetworkSettings(model="tiny-llama", space=str(TINY_SPACE), seed=3)  # seeded fresh adapters too
    assert build_network(fresh, shapes_only=True).fingerprint() == build_network(fresh).fingerprint()


def test_a_driver_builds_shapes_for_gpu_workers_on_a_machine_without_a_gpu():
    settings = NetworkSettings(model="tiny-llama", space=str(TINY_SPACE), device="cuda", dtype="bf16",
                               adapter_dtype="base")
    net = build_network(settings, shapes_only=True)  # a CPU-only Ray head, say: no GPU needed to build shapes
    assert {p.dtype for p in net.adapter_parameters()} == {torch.bfloat16}  # what the workers' bf16 base gets
    here = build_network(NetworkSettings(model="tiny-llama", space=str(TINY_SPACE), device="cpu", dtype="bf16",
                                         adapter_dtype="base"))
    assert net.fingerprint() == here.fingerprint()


def test_a_parallel_searchs_driver_builds_shapes_unless_it_needs_weights():
    plan = SearchRun(NetworkSettings(model="tiny-llama", space=str(TINY_SPACE)), TaskSettings(limit=8),
                     SearchSettings(budget=4, population=4))
    on_meta = lambda net: next(net.model.parameters()).device.type == "meta"  # noqa: E731
    assert on_meta(plan.driver_network(BackendSettings("processes")))
    assert not on_meta(plan.driver_network(BackendSettings("local")))
    plan.cost_reference = "fvcore"  # the trace needs weights
    assert not on_meta(plan.driver_network(BackendSettings("processes")))
    plan.cost_reference, plan.objectives = "analytic", ["accuracy", "macs_effective"]  # counts zeros
    assert not on_meta(plan.driver_network(BackendSettings("processes")))


def test_a_drivers_memory_stays_far_below_a_full_copy_of_a_1b_model(tmp_path):
    """A folder with a 1.1B Llama's config.json and a tokenizer, and no weights at all: the driver
    builds from it (no weight is read), and its process stays far below one fp32 copy (4.4 GB)."""
    config = tiny_config("llama", hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                         num_attention_heads=32, num_key_value_heads=4, vocab_size=32000)
    config.save_pretrained(tmp_path / "model")
    byte_tokenizer().save_pretrained(tmp_path / "model")
    script = textwrap.dedent(f"""
        import json, resource
        from lorasearch.runs import BackendSettings, NetworkSettings, SearchRun, TaskSettings
        from lorasearch.search import SearchSettings
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        plan = SearchRun(NetworkSettings(model={str(tmp_path / "model")!r}, space={str(SHEARS_SPACE)!r}),
                         TaskSettings(limit=8), SearchSettings(budget=4, population=4))
        net = plan.driver_network(BackendSettings("processes"))
        params = sum(p.numel() for n, p in net.model.named_parameters() if "lora_" not in n)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({{"params": params, "before": before, "after": after, "fingerprint": net.fingerprint()}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    full_copy = 4 * figures["params"]  # bytes of the base in fp32
    assert figures["params"] > 1.0e9
    assert figures["after"] - figures["before"] < 0.1 * full_copy  # the adapters (70 MB) and the meta graph
    assert figures["after"] < 0.35 * full_copy  # the whole process, torch and transformers included


# ---------------------------------------------------------------------- 2. layers offloaded by accelerate
def saved_tiny(tmp_path):
    folder = tmp_path / "model"
    tiny_model("llama").save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


def disk_offload_map() -> dict[str, str]:
    """The embeddings, head and first two blocks on the CPU, the last two blocks offloaded to disk."""
    where = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    return where | {f"model.layers.{i}": "cpu" if i < 2 else "disk" for i in range(4)}


def test_layers_offloaded_to_disk_compute_what_the_model_on_one_device_computes(tmp_path):
    from transformers import AutoModelForCausalLM

    folder = saved_tiny(tmp_path)
    offloaded = AutoModelForCausalLM.from_pretrained(folder, device_map=disk_offload_map(),
                                                     offload_folder=str(tmp_path / "offload"), dtype=torch.float32)
    assert any(p.device.type == "meta" for p in offloaded.parameters())  # accelerate really offloaded them
    space = SearchSpace.load(TINY_SPACE)
    net = randomize_adapters(SuperNetwork(offloaded, space))
    reference = SuperNetwork(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), space)
    with torch.no_grad():
        for a, b in zip(reference.adapter_parameters(), net.adapter_parameters()):
            a.copy_(b)
    assert {p.device.type for p in net.adapter_parameters()} == {"cpu"}  # real adapters, on the execution device
    assert net.fingerprint() == reference.fingerprint()
    ids = torch.randint(3, 250, (2, 12), generator=torch.Generator().manual_seed(0))
    for config in (net.space.max(), net.space.min(), net.space.sample(2)):
        with net.activated(config), reference.activated(config):
            got, want = logits(net.model, ids), logits(reference.model, ids)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # the offloaded weights went back to the meta device after the forward
    assert net.elastic["model.layers.3.mlp.up_proj"].base_layer.weight.device.type == "meta"
    for n in (net, reference):  # training through the offloaded blocks: the same gradients
        n.train_adapters()
        n.model.train()
        n.model(ids, labels=ids).loss.backward()
    for a, b in zip(net.adapter_parameters(), reference.adapter_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=0)


@pytest.mark.filterwarnings("ignore:.*as --force asks:UserWarning")
def test_an_offloaded_model_cannot_be_reordered_or_merged_and_says_so(tmp_path, reordered_adapter):
    from transformers import AutoModelForCausalLM

    from lorasearch.export.exporters import merged_copy

    folder = saved_tiny(tmp_path)

    def offloaded():
        return AutoModelForCausalLM.from_pretrained(folder, device_map=disk_offload_map(),
                                                    offload_folder=str(tmp_path / "offload"), dtype=torch.float32)

    with pytest.raises(LoraSearchError, match=r"offloaded \(--device-map\).*fix: load the model on one device") as info:
        SuperNetwork(offloaded(), SearchSpace.from_dict(MODE_B), reordered_adapter, any_base=True)  # saved as tiny-llama
    assert "\n" not in str(info.value)
    net = SuperNetwork(offloaded(), TINY_SPACE)
    with pytest.raises(LoraSearchError, match=r"offloaded .*fix: export with --device cpu"):
        merged_copy(net)
    from lorasearch.compress.masked import apply_adapter_mode

    with pytest.raises(LoraSearchError, match=r"^--adapter-mode sparse: .* offloaded .*fix: load the model on one device"):
        apply_adapter_mode(net, "sparse")


# --------------------------------------------------------------------------- 3. the latency objective
def test_a_timed_run_on_a_gpu_synchronises_before_and_after(monkeypatch):
    from lorasearch import cost

    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(("sync", str(device))))
    seconds = cost.timed_run(lambda: events.append(("run", None)), torch.device("cuda:1"))
    assert events == [("sync", "cuda:1"), ("run", None), ("sync", "cuda:1")] and seconds >= 0
    events.clear()
    cost.timed_run(lambda: events.append(("run", None)), torch.device("cpu"))
    assert events == [("run", None)]  # nothing to wait for on the CPU


@pytest.mark.parametrize("device", DEVICES)
def test_latency_warms_up_each_config_and_times_every_run_on_its_device(device, monkeypatch):
    from lorasearch import cost

    net = SuperNetwork(tiny_model("llama").to(device), SearchSpace.from_dict(MODE_B))
    timed, real = [], cost.timed_run
    monkeypatch.setattr(cost, "timed_run", lambda run, where: timed.append(where) or real(run, where))
    for config in (net.space.min(), net.space.max()):  # each config's shapes get their own warm-up
        assert cost.measure_latency(net, config, seq_len=8, n=3, warmup=2) > 0
    assert timed == [next(net.model.parameters()).device] * 10
    assert net.active_config == net.space.max()


# ------------------------------------------------------------------------------ 4. dtypes of training
def test_auto_trains_in_bf16_where_the_gpu_supports_it(monkeypatch):
    from lorasearch.models.loading import training_dtype

    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert training_dtype("auto", cuda) == "bf16" and training_dtype(None, cuda) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert training_dtype("auto", cuda) == "fp16"  # an older GPU: fp16 with loss scaling
    assert training_dtype("auto", torch.device("cpu")) == "fp32"
    assert training_dtype("fp16", cuda) == "fp16" and training_dtype("fp32", cuda) == "fp32"


def train_examples(n: int = 16) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        prompt = torch.randint(3, 250, (10,), generator=gen).tolist()
        out.append({"input_ids": prompt + prompt[:4], "labels": [-100] * 10 + prompt[:4]})
    return out


def nls_trainer(tmp_path, name: str, dtype=torch.float32, device="cpu", **kw):
    from lorasearch.train.trainer import NLSTrainer, TrainArgs

    net = SuperNetwork(tiny_model("llama").to(device=device, dtype=dtype), TINY_SPACE, tokenizer=byte_tokenizer())
    args = TrainArgs(steps=3, batch_size=4, checkpoint_every=3, warmup_steps=1, lr=1e-2)
    trainer = NLSTrainer(net, train_examples(), args, tmp_path / name, **kw)
    trainer.prepare()
    return trainer


def adapters(trainer) -> list[torch.Tensor]:
    return [p.detach().float().cpu().clone() for p in trainer.net.adapter_parameters()]


def test_loss_scaling_is_on_exactly_for_an_fp16_base_and_refuses_fp16_adapters():
    from lorasearch.train.trainer import loss_scaler

    def net(dtype, **kw):
        return SuperNetwork(tiny_model("llama").to(dtype=dtype), TINY_SPACE, **kw)

    assert isinstance(loss_scaler(net(torch.float16)), torch.amp.GradScaler)
    assert loss_scaler(net(torch.bfloat16)) is None and loss_scaler(net(torch.float32)) is None
    with pytest.raises(LoraSearchError, match=r"^--dtype fp16 with --adapter-dtype base: .*fix: use --adapter-dtype fp32"):
        loss_scaler(net(torch.float16, adapters_in_base_dtype=True))


def test_the_scalers_steps_equal_plain_steps_when_nothing_overflows(tmp_path):
    """In fp32 a power-of-two scale and its inverse are exact: the scaled run's adapters are the plain
    run's, bit for bit (the scaler's code path, checked on the CPU)."""
    plain = nls_trainer(tmp_path, "plain")
    scaled = nls_trainer(tmp_path, "scaled", loss_scaling=True)
    assert scaled.scaler is not None and plain.scaler is None
    plain.train(progress=False)
    scaled.train(progress=False)
    for a, b in zip(adapters(plain), adapters(scaled)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    saved = torch.load(tmp_path / "scaled" / "checkpoint" / "optimizer.pt", weights_only=True)
    assert saved["scaler"]["scale"] == scaled.scaler.get_scale()  # a resume continues with the same scale


def test_a_step_whose_scaled_gradients_overflow_is_skipped_and_the_scale_halves(tmp_path):
    trainer = nls_trainer(tmp_path, "overflow", loss_scaling=True)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)  # every gradient overflows in fp32
    before = adapters(trainer)
    trainer.args = trainer.args.__class__(**{**trainer.args.__dict__, "steps": 1})
    trainer.train(progress=False)
    for a, b in zip(before, adapters(trainer)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert trainer.scaler.get_scale() == 2.0**126


@pytest.mark.parametrize("device", DEVICES)
def test_an_fp16_base_trains_with_loss_scaling(tmp_path, device):
    trainer = nls_trainer(tmp_path, "fp16", dtype=torch.float16, device=device)
    assert trainer.scaler is not None
    before = adapters(trainer)
    result = trainer.train(progress=False)
    assert np.isfinite(result.final_loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, adapters(trainer)))


@CUDA
def test_cuda_training_run_loads_its_base_in_bf16_by_default(tmp_path):
    from lorasearch.runs import prepare_training
    from lorasearch.train.trainer import TrainArgs

    trainer = prepare_training(NetworkSettings(model="tiny-llama", space=str(TINY_SPACE), device="cuda"), [],
                               TrainArgs(steps=1, batch_size=4), tmp_path / "run", synthetic_records=40, log=lambda _: None)
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert trainer.net.elastic["model.layers.0.self_attn.q_proj"].base_layer.weight.dtype == expected
    assert (trainer.scaler is not None) == (expected == torch.float16)
    trainer.train(progress=False)


# ------------------------------------------------------------------------------ 5. the evaluation budget
LLAMA_7B = SHEARS_SPACE.parent / "models" / "llama-2-7b.json"


def test_a_tokens_bytes_follow_the_stated_formula_for_llama_2_7b():
    from lorasearch.models.anatomy import bytes_per_token
    from lorasearch.models.loading import load_model

    model = load_model(str(LLAMA_7B), dtype="fp16").model
    kv = 2 * 32 * 32 * 128  # keys and values: layers x key/value heads x head size
    activations = 6 * 4096 + 3 * 11008  # one layer's: residual, attention and MLP inputs and outputs
    assert bytes_per_token(model) == 2 * (kv + activations) + 8 * 32000 == 895_488
    assert bytes_per_token(load_model(str(LLAMA_7B), dtype="fp32").model) == 4 * (kv + activations) + 8 * 32000


def test_the_gpu_budget_is_sized_from_free_memory_and_capped():
    from lorasearch.models.loading import load_model
    from lorasearch.runs.settings import GPU_BATCH_TOKENS, batching

    model = load_model(str(LLAMA_7B), dtype="fp16").model
    cuda = torch.device("cuda")
    ten_gib = 10 * 2**30  # a 24 GB card with Llama-2-7B loaded in fp16
    expected = int(0.8 * ten_gib) // 895_488  # min(32768, floor(0.8 * free / bytes per token))
    assert expected == 9592  # against 32,768 before: about 16 GiB of keys and values alone
    assert batching(TaskSettings(), cuda, model, free_bytes=ten_gib) == {"batch_size": None, "max_batch_tokens": expected}
    assert batching(TaskSettings(), cuda, model, free_bytes=70 * 2**30)["max_batch_tokens"] == GPU_BATCH_TOKENS
    assert batching(TaskSettings(max_batch_tokens=4096), cuda, model, free_bytes=ten_gib) == {
        "batch_size": None, "max_batch_tokens": 4096}  # the documented override
    assert batching(TaskSettings(), torch.device("cpu"), model) == {"batch_size": 8, "max_batch_tokens": None}


@CUDA
def test_cuda_evaluator_gets_a_budget_that_fits_its_free_memory():
    from lorasearch.runs import build_evaluator

    net = build_network(NetworkSettings(model="tiny-llama", space=str(TINY_SPACE), device="cuda"))
    evaluator = build_evaluator(net, TaskSettings(limit=8))
    assert 1 <= evaluator.max_batch_tokens <= 32768 and evaluator.batch_size is None


@pytest.mark.parametrize("mode", ["label", "text", "loss"])
def test_scores_are_copied_from_the_device_once_per_batch(mode, monkeypatch):
    from lorasearch.evaluate.evaluators import LossEvaluator, MultipleChoiceEvaluator

    net = SuperNetwork(tiny_model("llama"), TINY_SPACE, tokenizer=byte_tokenizer())
    records = synthetic_task(12, seed=0)
    if mode == "loss":
        evaluator = LossEvaluator(net, records, batch_size=4, progress=False)
        evaluator.option_scores = lambda: evaluator._score(range(12))[0]
    else:
        evaluator = MultipleChoiceEvaluator(net, records, mode=mode, batch_size=4, progress=False)
    copies = []
    for name in ("item", "tolist"):
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            if sys._getframe(1).f_code.co_filename.endswith("evaluators.py"):
                copies.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    with net.activated(net.space.max()):
        scores = evaluator.option_scores()
    assert len(scores) == 12 and copies == ["tolist"] * 3  # 12 items in batches of 4: three copies


# ------------------------------------------------------------------- 6. exports and the quickstart elsewhere
@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A finished tiny search whose run.yaml says it ran on cuda:3 (a GPU this machine does not have)."""
    import yaml

    out = tmp_path_factory.mktemp("run") / "run"
    SearchRun(NetworkSettings(model="tiny-llama", space=str(TINY_SPACE)), TaskSettings(limit=8),
              SearchSettings(budget=4, population=4, seed=0)).run(out)
    document = yaml.safe_load((out / "run.yaml").read_text())
    document["run"]["network"]["device"] = "cuda:3"
    (out / "run.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return out


def test_a_run_recorded_on_another_gpu_exports_here_with_device_and_dtype_overrides(small_run, tmp_path, capsys):
    from helpers import cli_error, run_cli
    from safetensors import safe_open

    if torch.cuda.device_count() < 4:
        message = cli_error(capsys, "export", small_run, "--pick", "max", "--format", "merged", "--out", tmp_path / "x")
        assert "--device cuda:3" in message and "fix" in message
    run_cli("export", small_run, "--pick", "max", "--format", "merged", "--out", tmp_path / "m", "--device", "cpu",
            "--dtype", "bf16")
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.bfloat16}


@pytest.mark.parametrize("device", DEVICES)
def test_a_merged_copy_lands_on_its_own_device_layer_by_layer_with_the_same_logits(device):
    from lorasearch.export.exporters import merged_copy

    net = randomize_adapters(SuperNetwork(tiny_model("llama").to(device), SearchSpace.from_dict(MODE_B)))
    ids = torch.randint(3, 250, (2, 10), generator=torch.Generator().manual_seed(0))
    with net.activated(net.space.heuristic()):
        expected = logits(net.model, ids.to(device)).cpu()
        if device == "cuda":
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        copy = merged_copy(net)  # the CPU by default
    tensors = [*copy.parameters(), *copy.buffers()]
    assert {t.device.type for t in tensors} == {"cpu"}
    originals = {t.data_ptr() for t in (*net.model.parameters(), *net.model.buffers())}
    assert not any(t.data_ptr() in originals for t in tensors)  # a copy, sharing nothing with the model
    torch.testing.assert_close(logits(copy, ids), expected, atol=1e-5, rtol=0)
    if device == "cuda":  # at most one layer's merged weight (and its temporaries) beside the model
        largest = max(m.base_layer.weight.numel() * m.base_layer.weight.element_size() for m in net.elastic.values())
        assert torch.cuda.max_memory_allocated() - before <= 4 * largest


def test_the_quickstart_takes_a_device_and_refuses_a_missing_gpu_before_touching_its_folder(tmp_path, capsys):
    from helpers import cli_error

    if torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    message = cli_error(capsys, "quickstart", "--model", "tiny-llama", "--device", "cuda", "--out", tmp_path / "qs")
    assert message == "error: --device cuda: no GPU is visible; fix: use --device cpu or auto"
    assert not (tmp_path / "qs").exists()
    message = cli_error(capsys, "quickstart", "--model", "tiny-llama", "--dtype", "int3", "--out", tmp_path / "qs")
    assert "--dtype 'int3': unknown" in message and not (tmp_path / "qs").exists()


# --------------------------------------------------------------------------------------- 8. preflight
def test_a_training_preflight_changes_nothing_the_run_would_see(tmp_path):
    trainer = nls_trainer(tmp_path, "preflight")
    before, rng = adapters(trainer), torch.get_rng_state()
    report = trainer.preflight()
    assert report.what == "one training step of 4 x 14 tokens (max subnet)" and report.device.type == "cpu"
    assert report.line().startswith("preflight: one training step of 4 x 14 tokens (max subnet) on cpu in ")
    assert report.resident_bytes > 0 and report.peak_bytes is None
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in trainer.net.adapter_parameters())
    for a, b in zip(before, adapters(trainer)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_long_commands_report_their_preflight_before_they_start(tmp_path, capsys):
    from helpers import run_cli

    run_cli("train", "--model", "tiny-llama", "--space", TINY_SPACE, "--steps", "1", "--batch-size", "4",
            "--out", tmp_path / "train")
    run_cli("search", "--model", "tiny-llama", "--space", TINY_SPACE, "--limit", "8", "--budget", "2",
            "--population", "2", "--out", tmp_path / "search")
    run_cli("sparsify", "--model", "tiny-llama", "--method", "magnitude", "--out", tmp_path / "sparse")
    run_cli("quantize", "--model", "tiny-llama", "--group-size", "32", "--out", tmp_path / "int4")
    text = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    found = re.findall(r"preflight: (.*?) on cpu in \d+\.\d\d s; process \d+\.\d\d GiB resident", text)
    patterns = [
        r"one training step of 4 x \d+ tokens \(max subnet\)",
        r"the largest evaluation batch \(8 items, \d+ tokens, max subnet\)",  # 8 sequences per batch on the CPU
        r"one block on a batch of 1 x 128 tokens",
        r"one block on a batch of 1 x 128 tokens",
    ]
    assert len(found) == len(patterns), found
    for what, pattern in zip(found, patterns):
        assert re.fullmatch(pattern, what), what


def out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 23.6 GiB total)")


def test_a_batch_that_does_not_fit_stops_a_training_run_in_one_line_before_it_starts(tmp_path, capsys, monkeypatch):
    from helpers import cli_error

    from lorasearch.train import trainer

    monkeypatch.setattr(trainer, "response_logits", out_of_memory)
    message = cli_error(capsys, "train", "--model", "tiny-llama", "--space", TINY_SPACE, "--steps", "1",
                        "--out", tmp_path / "train", last_line=True)
    assert message.startswith("error: preflight: one training step of 8 x ")
    assert "on cpu failed (OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB" in message
    assert message.endswith("fix: lower --batch-size or --max-length, add --gradient-checkpointing, or use another "
                            "--device or --dtype")
    assert not (tmp_path / "train" / "train_run.yaml").exists()  # the folder is not claimed


def test_a_batch_that_does_not_fit_stops_a_search_in_one_line_before_the_first_evaluation(tmp_path, capsys,
                                                                                            monkeypatch):
    from helpers import cli_error

    from lorasearch.evaluate.evaluators import MultipleChoiceEvaluator

    monkeypatch.setattr(MultipleChoiceEvaluator, "run_batch", out_of_memory)
    message = cli_error(capsys, "search", "--model", "tiny-llama", "--space", TINY_SPACE, "--limit", "8",
                        "--budget", "2", "--population", "2", "--out", tmp_path / "search", last_line=True)
    assert message.startswith("error: preflight: the largest evaluation batch (8 items, ")
    assert "fix: lower --max-batch-tokens or --batch-size" in message
    assert not (tmp_path / "search" / "evaluations.jsonl").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("command", [
    ["search", "--model", "tiny-llama", "--space", TINY_SPACE, "--limit", "8", "--budget", "2", "--population", "2",
     "--out", "{tmp}/s"],
    ["sparsify", "--model", "tiny-llama", "--method", "magnitude", "--out", "{tmp}/sp"],
    ["quantize", "--model", "tiny-llama", "--out", "{tmp}/q"],
    ["quickstart", "--model", "tiny-llama", "--out", "{tmp}/qs"],
    ["eval", "--model", "tiny-llama", "--limit", "4"],
])
def test_a_gpu_asked_for_where_there_is_none_is_one_line(command, tmp_path, capsys):
    from helpers import cli_error

    args = [str(a).replace("{tmp}", str(tmp_path)) for a in command]
    assert cli_error(capsys, *args, "--device", "cuda") == "error: --device cuda: no GPU is visible; fix: use --device cpu or auto"


# ---------------------------------------------------------------------------------- 7. the cost reference
def test_the_cost_reference_is_an_option_recorded_in_run_yaml_and_old_runs_resume_with_fvcore(tmp_path, capsys):
    import yaml
    from helpers import cli_error, run_cli

    from lorasearch.runs import run_from_file

    common = ["search", "--model", "tiny-llama", "--space", TINY_SPACE, "--limit", "8", "--budget", "2",
              "--population", "2"]
    run_cli(*common, "--out", tmp_path / "analytic")
    run_cli(*common, "--cost-reference", "fvcore", "--out", tmp_path / "fvcore")
    for name in ("analytic", "fvcore"):
        document = yaml.safe_load((tmp_path / name / "run.yaml").read_text())
        assert document["run"]["cost_reference"] == name
        assert run_from_file(tmp_path / name / "run.yaml").cost_reference == name
    document = yaml.safe_load((tmp_path / "analytic" / "run.yaml").read_text())
    del document["run"]["cost_reference"]  # a run from before the option
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(document))
    assert run_from_file(tmp_path / "old.yaml").cost_reference == "fvcore"
    capsys.readouterr()  # the searches' progress lines
    message = cli_error(capsys, *common, "--cost-reference", "exact", "--out", tmp_path / "bad")
    assert message == "error: --cost-reference 'exact': unknown; fix: use analytic or fvcore"
