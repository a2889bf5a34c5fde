"""NLS training on tiny models: what trains, what is sampled, what is saved, and exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from lorasearch import LoraSearchError, SuperNetwork
from lorasearch.io import read_jsonl
from lorasearch.models.loading import tiny_model
from lorasearch.space import SearchSpace
from lorasearch.train.sampling import make_sampler
from lorasearch.train.trainer import IGNORE_INDEX, NLSTrainer, TrainArgs, collate, micro_batch_indices, response_loss

SPACE = "search_spaces/tiny-llama.yaml"


def examples(n: int = 24, seed: int = 0) -> list[dict]:
    """Prompt/response pairs where the response repeats the prompt's first tokens (learnable)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        prompt = rng.integers(3, 250, size=10).tolist()
        response = prompt[:4]
        out.append({"input_ids": prompt + response, "labels": [IGNORE_INDEX] * 10 + response})
    return out


def trainer(tmp_path, name="run", **kw) -> NLSTrainer:
    args = TrainArgs(**{"steps": 6, "batch_size": 4, "checkpoint_every": 2, "warmup_steps": 1, **kw})
    net = SuperNetwork(tiny_model("llama"), SPACE)
    return NLSTrainer(net, examples(), args, tmp_path / name)


def adapter_tensors(t: NLSTrainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in t.net.model.named_parameters() if ".lora_" in n}


def test_only_adapters_change_and_loss_drops(tmp_path):
    t = trainer(tmp_path, steps=30, lr=3e-3, sampler="fixed")
    base_before = {n: p.detach().clone() for n, p in t.net.model.named_parameters() if ".lora_" not in n}
    t.prepare()
    t.train(progress=False)
    for n, p in t.net.model.named_parameters():
        if ".lora_" not in n:
            assert torch.equal(p, base_before[n]), n
    log = list(read_jsonl(tmp_path / "run" / "train_log.jsonl"))
    assert len(log) == 30
    assert np.mean([r["loss"] for r in log[-5:]]) < np.mean([r["loss"] for r in log[:5]])


def test_without_a_terminal_training_writes_progress_lines(tmp_path, capsys, monkeypatch):
    from lorasearch.train.trainer import _Bar

    monkeypatch.setattr(_Bar, "LINE_EVERY", 0.0)
    t = trainer(tmp_path, steps=3)
    t.prepare()
    t.train(progress=True)  # pytest's stderr is no terminal
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train: step")]
    assert [line.split(",")[0] for line in lines] == ["train: step 1 of 3", "train: step 2 of 3", "train: step 3 of 3"]
    assert "s per step" in lines[-1]


def test_outputs_load_in_stock_peft_and_in_a_super_network(tmp_path):
    t = trainer(tmp_path, lr=1e-2)
    t.prepare()
    result = t.train(progress=False)
    out = tmp_path / "run"
    for name in ("train_run.yaml", "space.yaml", "nls_stats.json", "heuristics.json", "adapter/adapter_config.json"):
        assert (out / name).is_file(), name
    ids = torch.randint(3, 250, (2, 9))
    with torch.inference_mode():
        expected = t.net.model(ids).logits
        peft = PeftModel.from_pretrained(tiny_model("llama"), result.adapter_dir).eval()
        reloaded = SuperNetwork(tiny_model("llama"), out / "space.yaml", adapter=result.adapter_dir)
        # Mode B widths are not a PEFT notion: compare with the widths at their maximum.
        torch.testing.assert_close(peft(ids).logits, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(reloaded.model(ids).logits, expected, atol=0, rtol=0)
    heuristics = json.loads((out / "heuristics.json").read_text())
    assert heuristics["midpoint"] == t.net.space.heuristic()
    assert len(heuristics["min_loss"]) == 5
    assert heuristics["most_frequent"] == t.stats.most_frequent()


def test_one_config_per_step_is_logged_and_counted(tmp_path):
    t = trainer(tmp_path, steps=5, sampler="sandwich", sandwich_k=1)
    t.prepare()
    t.train(progress=False)
    log = list(read_jsonl(tmp_path / "run" / "train_log.jsonl"))
    space = t.net.space
    assert [len(r["genes"]) for r in log] == [3] * 5  # max, min, one random
    assert all(space.decode(r["genes"][0]) == space.max() and space.decode(r["genes"][1]) == space.min() for r in log)
    counts = t.stats.counts
    assert all(sum(c) == 15 for c in counts.values())
    # max and min are drawn equally often, so ties go to the larger choice unless a random draw broke them
    assert all(v in g.choices for g, v in zip(space.genes, t.stats.most_frequent().values()))
    assert sum(n for _, n in t.stats.losses.values()) == 15


def test_resume_after_interruption_ends_in_the_uninterrupted_state(tmp_path, monkeypatch):
    full = trainer(tmp_path, "full", steps=7, checkpoint_every=3)
    full.prepare()
    full.train(progress=False)

    killed = trainer(tmp_path, "killed", steps=7, checkpoint_every=3)
    killed.prepare()
    original = NLSTrainer._one_step

    def dies_at_step_5(self, *a):
        if self.step == 4:
            original(self, *a)  # step 5 runs and is logged, but no checkpoint covers it
            raise KeyboardInterrupt
        return original(self, *a)

    monkeypatch.setattr(NLSTrainer, "_one_step", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        killed.train(progress=False)
    monkeypatch.setattr(NLSTrainer, "_one_step", original)

    resumed = trainer(tmp_path, "killed", steps=7, checkpoint_every=3)
    resumed.prepare(resume=True)
    assert resumed.step == 3
    resumed.train(progress=False)
    a, b = adapter_tensors(full), adapter_tensors(resumed)
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(a[n], b[n], atol=0, rtol=0)
    log_full = list(read_jsonl(tmp_path / "full" / "train_log.jsonl"))
    log_resumed = list(read_jsonl(tmp_path / "killed" / "train_log.jsonl"))
    assert log_full == log_resumed
    assert full.stats.to_dict() == resumed.stats.to_dict()
    saved_full = load_file(str(tmp_path / "full" / "adapter" / "adapter_model.safetensors"))
    saved_resumed = load_file(str(tmp_path / "killed" / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(saved_full[k], saved_resumed[k]) for k in saved_full)


def test_output_folder_of_another_run_is_refused(tmp_path):
    first = trainer(tmp_path, steps=2)
    first.prepare()
    first.train(progress=False)
    with pytest.raises(LoraSearchError, match="different run.*args.lr"):
        trainer(tmp_path, steps=2, lr=1e-3).prepare()
    with pytest.raises(LoraSearchError, match="--resume"):
        trainer(tmp_path, steps=2).prepare()
    trainer(tmp_path, steps=2, lr=1e-3).prepare(overwrite=True)


def test_bad_settings_and_empty_data_fail_before_training(tmp_path):
    net = SuperNetwork(tiny_model("llama"), SPACE)
    with pytest.raises(LoraSearchError, match="empty"):
        NLSTrainer(net, [], TrainArgs(), tmp_path / "x")
    with pytest.raises(LoraSearchError, match="schedule"):
        NLSTrainer(net, examples(), TrainArgs(schedule="step"), tmp_path / "x")
    with pytest.raises(LoraSearchError, match="sampler"):
        NLSTrainer(net, examples(), TrainArgs(sampler="greedy"), tmp_path / "x")


def test_samplers_draw_valid_configs():
    space = SearchSpace.load(SPACE).with_num_layers(4)
    rng = np.random.default_rng(0)
    assert make_sampler("fixed", space).step_configs(rng) == [space.max()]
    drawn = make_sampler("random", space).step_configs(rng)
    assert len(drawn) == 1 and space.canonical(drawn[0])
    sandwich = make_sampler("sandwich", space, 3).step_configs(rng)
    assert sandwich[:2] == [space.max(), space.min()] and len(sandwich) == 5


def test_micro_batches_cover_each_epoch_once():
    seen = [i for m in range(6) for i in micro_batch_indices(24, 4, seed=1, index=m)]
    assert sorted(seen) == list(range(24))
    assert micro_batch_indices(24, 4, 1, 7) == micro_batch_indices(24, 4, 1, 7)


def test_response_loss_ignores_prompt_tokens():
    model = tiny_model("llama")
    batch = collate(examples(3), pad_id=0)
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    torch.testing.assert_close(response_loss(model, batch), full, atol=1e-5, rtol=1e-5)
