"""Recovery of a searched subnet on a tiny model: the subnet's loss goes down, everything outside its
part of the adapter stays bit for bit, the export reproduces the recovered network, and the teacher
of distillation is the max subnet as recovery found it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import assert_good_error, run_cli
from transformers import AutoModelForCausalLM

from lorasearch.errors import LoraSearchError
from lorasearch.export.exporters import load_pruned
from lorasearch.runs import (
    NetworkSettings,
    SearchRun,
    SearchSettings,
    TaskSettings,
    TrainArgs,
    build_evaluator,
    build_network,
    prepare_recovery,
    prepare_training,
    read_recovery,
)
from lorasearch.space import SearchSpace
from lorasearch.train.recovery import FrozenTeacher
from lorasearch.train.trainer import collate, response_loss

SPACE = {
    "name": "recover", "adapter": {"rank": 8, "alpha": 16},
    "groups": {"attn": {"modules": ["self_attn.q_proj", "self_attn.v_proj"], "rank": [8, 4]},
               "mlp_rank": {"modules": ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"], "rank": [8, 4]},
               "mlp": {"width": [1.0, 0.5], "channels": "mlp", "share": "global"},
               "depth": {"depth": [4, 3, 2]}},
}


def small_args(**kw) -> TrainArgs:
    return TrainArgs(**{"steps": 6, "batch_size": 4, "lr": 3e-3, "warmup_steps": 0, "checkpoint_every": 50,
                        "reorder_samples": 4, "reorder_seq_len": 32, **kw})


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A tiny Mode B super-adapter (widths and depth) and a short search of it."""
    tmp = tmp_path_factory.mktemp("recovery")
    space = SearchSpace.from_dict(SPACE).save(tmp / "space.yaml")
    trainer = prepare_training(NetworkSettings(model="tiny-llama", space=str(space)), [], small_args(), tmp / "nls",
                               log=lambda line: None)
    trainer.train(progress=False)
    plan = SearchRun(NetworkSettings(model="tiny-llama", adapter=str(tmp / "nls" / "adapter")),
                     TaskSettings(task=str(tmp / "nls" / "validation.jsonl"), limit=8),
                     SearchSettings(budget=6, population=4, seed=0), objectives=["accuracy", "macs"])
    plan.run(tmp / "search")
    return tmp


def subnet_loss(net, config, examples) -> float:
    batch = collate(examples, 0)
    with torch.no_grad(), net.activated(config):
        return float(response_loss(net.model, batch))


def test_recovery_lowers_the_subnets_loss_and_leaves_the_rest_bit_for_bit(searched, tmp_path):
    recovery = prepare_recovery(searched / "search", "min", small_args(steps=12), tmp_path / "rec",
                                log=lambda line: None)
    net, config = recovery.net, recovery.config
    assert config == net.space.min() and net.skipped_blocks(config)
    examples = recovery.trainer.examples[:32]
    before_loss = subnet_loss(net, config, examples)
    base = {n: p.detach().clone() for n, p in net.model.named_parameters() if "lora_" not in n}
    adapters = {n: (m.lora_A.weight.detach().clone(), m.lora_B.weight.detach().clone())
                for n, m in net.elastic.items() if m.lora_A is not None}
    with net.activated(config):
        active = {n: (m.active_rank, m.active_in, m.active_out) for n, m in net.elastic.items()}
    skipped = tuple(b + "." for b in net.skipped_blocks(config))
    result = recovery.run(progress=False)

    assert subnet_loss(net, config, examples) < before_loss
    for name, p in net.model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, base[name]), name
    changed = 0
    for name, (a0, b0) in adapters.items():
        m, (r, i, o) = net.elastic[name], active[name]
        a, b = m.lora_A.weight.detach(), m.lora_B.weight.detach()
        outside_a, outside_b = torch.ones_like(a, dtype=torch.bool), torch.ones_like(b, dtype=torch.bool)
        if not name.startswith(skipped):  # a skipped block's adapter is outside the subnet altogether
            outside_a[:r, :i] = False
            outside_b[:o, :r] = False
            changed += int(not torch.equal(a[:r, :i], a0[:r, :i]))
        assert torch.equal(a[outside_a], a0[outside_a]) and torch.equal(b[outside_b], b0[outside_b]), name
    assert changed > 0

    # The saved adapter rebuilds the recovered network, and the export reproduces its subnet.
    rebuilt = build_network(NetworkSettings(model="tiny-llama", adapter=str(result.adapter_dir)))
    ids = torch.randint(3, 250, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), net.activated(config):
        expected = net.model(ids).logits
    with torch.no_grad(), rebuilt.activated(config):
        torch.testing.assert_close(rebuilt.model(ids).logits, expected, atol=1e-5, rtol=0)
    for loaded in (load_pruned(result.export_dir), AutoModelForCausalLM.from_pretrained(result.export_dir)):
        with torch.no_grad():
            torch.testing.assert_close(loaded(ids).logits, expected, atol=1e-4, rtol=0)
    assert loaded.config.num_hidden_layers == 4 - len(skipped)
    summary = read_recovery(tmp_path / "rec")
    assert summary["pick"] == "min" and summary["steps"] == 12 and summary["config"] == config
    # Scored before and after on the search's own items: before as the search measured it, after as a
    # fresh evaluator on the rebuilt network measures it, the difference paired over the items.
    validation, items = summary["validation"], TaskSettings(task=str(searched / "nls" / "validation.jsonl"), limit=8)
    table = pd.read_csv(searched / "search" / "results.csv")
    searched_row = table[table["config"].map(json.loads) == config]
    assert validation["before"] == pytest.approx(float(searched_row["accuracy"].iloc[0]))
    after = build_evaluator(rebuilt, items)(config)
    assert validation["after"] == pytest.approx(after.score) and validation["items"] == 8
    d = np.asarray(after.item_scores) - np.asarray(result.before.item_scores)
    assert validation["difference"] == pytest.approx(d.mean())
    assert validation["stderr"] == pytest.approx(d.std(ddof=1) / np.sqrt(8))
    assert result.validation_line().startswith(f"validation accuracy {validation['before']:.3f} -> ")
    assert json.loads((tmp_path / "rec" / "subnet.json").read_text())["config"] == config
    assert yaml.safe_load((tmp_path / "rec" / "train_run.yaml").read_text())["args"]["sampler"] == "subnet"


def test_the_teacher_is_the_max_subnet_as_recovery_found_it(searched, tmp_path):
    recovery = prepare_recovery(searched / "search", "knee", small_args(steps=3, distill=True), tmp_path / "rec",
                                log=lambda line: None)
    assert isinstance(recovery.trainer.teacher, FrozenTeacher)
    original = build_network(NetworkSettings(model="tiny-llama", adapter=str(searched / "nls" / "adapter")))
    batch = collate(recovery.trainer.examples[:4], 0)
    recovery.run(progress=False)
    with torch.no_grad(), original.activated(original.space.max()):
        from lorasearch.train.trainer import response_logits

        expected = response_logits(original.model, batch)[0]
    torch.testing.assert_close(recovery.trainer.teacher(batch), expected, atol=1e-5, rtol=0)
    log = [json.loads(line) for line in (tmp_path / "rec" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and all(r["kl"][0] > 0 for r in log)  # the subnet is distilled, even at step 1


def test_the_cli_recovers_a_pick_and_writes_the_export(searched, tmp_path, capsys):
    run_cli("recover", searched / "search", "--pick", "max-accuracy-under-macs 1e12", "--steps", "2",
            "--batch-size", "4", "--out", tmp_path / "cli", "--format", "config", "--threads", "1")
    out = capsys.readouterr().out
    assert "recovered 2 steps" in out and "validation accuracy " in out and "items the search picked on" in out
    summary = read_recovery(tmp_path / "cli")
    assert summary["export"] is None and (tmp_path / "cli" / "subnet.json").is_file()
    run_cli("recover", searched / "search", "--pick", "min", "--steps", "1", "--batch-size", "4", "--no-evaluate",
            "--out", tmp_path / "quiet", "--format", "config", "--threads", "1")
    assert "validation" not in capsys.readouterr().out and read_recovery(tmp_path / "quiet")["validation"] is None


def test_weight_decay_and_an_adapter_without_training_data_are_refused(searched, tmp_path):
    with pytest.raises(LoraSearchError) as exc:
        prepare_recovery(searched / "search", "knee", small_args(weight_decay=0.1), tmp_path / "a")
    assert_good_error(exc, "--weight-decay 0.1")
    bare = build_network(NetworkSettings(model="tiny-llama", adapter=str(searched / "nls" / "adapter")))
    folder = bare.save_adapter(tmp_path / "elsewhere" / "adapter")
    with pytest.raises(LoraSearchError) as exc:
        prepare_recovery(searched / "search", "knee", small_args(), tmp_path / "b", adapter=folder)
    assert_good_error(exc, "train_run.yaml", "--task")


def test_plots_and_the_report_of_a_depth_search(searched, tmp_path):
    from lorasearch.runs import plot_runs, report_run

    written = plot_runs([searched / "search"], tmp_path / "plots")
    assert written and all(p.is_file() for p in written)
    report = report_run(searched / "search", tmp_path / "report.md").read_text()
    assert "depth " in report  # the front's configs name the blocks kept
