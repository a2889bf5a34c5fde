"""In-place distillation and the sampler defaults: the step's gradient is the stated loss, the
teacher gets no gradient from the KL term, and gradient accumulation keeps one teacher per micro-batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import TINY_SPACE, assert_good_error

from lorasearch import LoraSearchError, SearchSpace, SuperNetwork
from lorasearch.io import read_jsonl
from lorasearch.models.loading import tiny_model
from lorasearch.train.sampling import make_sampler, resolve_sampler
from lorasearch.train.trainer import (
    IGNORE_INDEX,
    NLSTrainer,
    TrainArgs,
    collate,
    distillation_loss,
    micro_batch_indices,
    response_logits,
)

MODE_A = {"name": "a", "adapter": {"rank": 8, "alpha": 16}, "per_layer": "model.layers.{i}",
          "groups": {"attn": {"modules": ["self_attn.q_proj", "self_attn.v_proj"], "rank": [8, 4]}}}


def examples(n: int = 24, seed: int = 0) -> list[dict]:
    """Equal-length prompt/response pairs (4 response tokens each, no padding)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        prompt = rng.integers(3, 250, size=10).tolist()
        out.append({"input_ids": prompt + prompt[:4], "labels": [IGNORE_INDEX] * 10 + prompt[:4]})
    return out


def network(seed: int = 0) -> SuperNetwork:
    net = SuperNetwork(tiny_model("llama"), TINY_SPACE)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-zero B, so subnets differ from the max and the KL term is not zero
        for p in net.adapter_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return net


class Recorder:
    """Stands in for the optimizer and scheduler of one step: keeps the gradients it would apply."""

    def __init__(self, net: SuperNetwork) -> None:
        self.net, self.grads = net, None

    def step(self) -> None:
        if self.grads is None:
            self.grads = [p.grad.detach().clone() for p in self.net.adapter_parameters()]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.net.adapter_parameters():
            p.grad = None

    def get_last_lr(self) -> list[float]:
        return [0.0]


def step_gradients(tmp_path, name: str, **kw) -> tuple[list[torch.Tensor], NLSTrainer]:
    args = TrainArgs(**{"steps": 1, "batch_size": 4, "max_grad_norm": 0.0, "sampler": "sandwich", "sandwich_k": 1, **kw})
    t = NLSTrainer(network(), examples(), args, tmp_path / name)
    t.prepare()
    t.net.train_adapters()
    recorder = Recorder(t.net)
    t._one_step(recorder, recorder)
    return recorder.grads, t


def test_distillation_loss_is_the_kl_from_the_teacher():
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 11, generator=gen), torch.randn(6, 11, generator=gen)
    p = teacher.softmax(-1)
    expected = (p * (p.log() - student.log_softmax(-1))).sum(-1).mean()
    torch.testing.assert_close(distillation_loss(student, teacher), expected)
    assert distillation_loss(teacher, teacher).abs() < 1e-6


def test_a_distilled_step_has_the_gradient_of_the_stated_loss(tmp_path):
    w = 0.3
    grads, t = step_gradients(tmp_path, "run", distill=True, distill_weight=w)
    net = network()
    net.train_adapters()
    space = net.space
    configs = make_sampler("sandwich", space, 1).step_configs(np.random.default_rng([0, 0]))
    batch = collate([examples()[i] for i in micro_batch_indices(24, 4, 0, 0)], 0)
    with net.activated(space.max()):
        teacher = response_logits(net.model, batch)[0].detach()
    total = 0.0
    for config in configs:
        with net.activated(config):
            logits, targets = response_logits(net.model, batch)
        task = F.cross_entropy(logits, targets)
        loss = task if config == space.max() else (1 - w) * task + w * distillation_loss(logits, teacher)
        total = total + loss / len(configs)
    total.backward()
    expected = [p.grad for p in net.adapter_parameters()]
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    log = list(read_jsonl(tmp_path / "run" / "train_log.jsonl"))[0]
    assert log["kl"][0] == 0.0 and all(k > 0 for k in log["kl"][1:])  # the max is the teacher


def test_weight_zero_is_the_plain_sandwich_step(tmp_path):
    plain, _ = step_gradients(tmp_path, "plain")
    zero, _ = step_gradients(tmp_path, "zero", distill=True, distill_weight=0.0)
    for a, b in zip(plain, zero):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)


def test_gradient_accumulation_keeps_one_teacher_per_micro_batch(tmp_path):
    # two micro-batches of 2 are the first batch of 4 (equal lengths: the means agree)
    whole, _ = step_gradients(tmp_path, "whole", distill=True)
    split, _ = step_gradients(tmp_path, "split", distill=True, batch_size=2, grad_accum=2)
    for a, b in zip(whole, split):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_random_sampler_distils_with_an_extra_teacher_forward(tmp_path):
    args = TrainArgs(steps=3, batch_size=4, sampler="random", distill=True, warmup_steps=0)
    t = NLSTrainer(network(), examples(), args, tmp_path / "run")
    t.prepare()
    t.train(progress=False)
    log = list(read_jsonl(tmp_path / "run" / "train_log.jsonl"))
    assert all(len(r["kl"]) == 1 and r["kl"][0] > 0 for r in log)


def test_distilling_the_fixed_sampler_is_refused(tmp_path):
    with pytest.raises(LoraSearchError) as exc:
        NLSTrainer(network(), examples(), TrainArgs(sampler="fixed", distill=True), tmp_path / "x")
    assert_good_error(exc, "distill", "fixed")
    with pytest.raises(LoraSearchError) as exc:
        NLSTrainer(network(), examples(), TrainArgs(distill_weight=1.5), tmp_path / "x")
    assert_good_error(exc, "distill_weight")


def test_auto_sampler_is_sandwich_for_mode_b_and_random_for_mode_a(tmp_path):
    mode_b = SearchSpace.load(TINY_SPACE)
    mode_a = SearchSpace.from_dict(MODE_A)
    assert resolve_sampler("auto", mode_b) == "sandwich" and resolve_sampler("auto", mode_a) == "random"
    assert resolve_sampler("fixed", mode_b) == "fixed"
    t = NLSTrainer(network(), examples(), TrainArgs(steps=1, batch_size=4), tmp_path / "b")
    t.prepare()
    assert yaml.safe_load((tmp_path / "b" / "train_run.yaml").read_text())["args"]["sampler"] == "sandwich"
    a = NLSTrainer(SuperNetwork(tiny_model("llama"), mode_a), examples(), TrainArgs(steps=1), tmp_path / "a")
    assert a.args.sampler == "random"
