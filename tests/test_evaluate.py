"""Evaluators on tiny models: known answers, batch-size independence, cache, determinism, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import MODE_B

from lorasearch import SearchSpace, SuperNetwork
from lorasearch.data import DataError, Record, encode_for_training, synthetic_task
from lorasearch.evaluate.evaluators import (
    EvalError,
    EvalResult,
    Evaluator,
    ExactMatchEvaluator,
    LossEvaluator,
    MultipleChoiceEvaluator,
    binomial_stderr,
    extract_number,
)
from lorasearch.models.loading import byte_tokenizer, tiny_model

SPACE = {
    "name": "tiny",
    "adapter": {"rank": 8, "alpha": 16},
    "groups": {"attn": {"modules": ["self_attn.q_proj", "self_attn.v_proj"], "rank": [8, 4, 2]}},
}


def byte_id(char: str) -> int:
    """The byte tokenizer's id of a one-byte character."""
    return 3 + ord(char)




@pytest.fixture
def net() -> SuperNetwork:
    """A tiny Llama with non-zero adapters, so that configs differ."""
    net = SuperNetwork(tiny_model("llama"), SearchSpace.from_dict(SPACE), tokenizer=byte_tokenizer())
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.adapter_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return net


def favour(net: SuperNetwork, chars: str, strength: float = 50.0):
    """Add ``strength`` to the logits of the given characters' tokens (returns the hook handle)."""
    bias = torch.zeros(net.model.config.vocab_size)
    bias[[byte_id(c) for c in chars]] = strength
    return net.model.lm_head.register_forward_hook(lambda _m, _i, out: out + bias)


def count_forwards(net: SuperNetwork) -> list[int]:
    calls = [0]
    net.model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def mc(question: str, options: list[str], answer: int, index: int = 0) -> Record:
    shown = " ".join(f"Answer{i}: {o}" for i, o in enumerate(options, start=1))
    labels = "/".join(f"answer{i}" for i in range(1, len(options) + 1))
    instruction = f"Please choose the correct answer to the question: {question}\n\n{shown}\n\nAnswer format: {labels}"
    return Record(instruction, "", f"the correct answer is answer{answer}", f"answer{answer}", "mc.json", index)


def mixed_records() -> list[Record]:
    """Questions of different lengths and option counts, so padding matters."""
    return [
        mc("Q" * (3 + 7 * i) + "?", ["ab", "cde", "f" * (1 + i % 4), "gh"][: 2 + i % 3], 1 + i % 2, i) for i in range(9)
    ]


# ------------------------------------------------------------------------------------- known answers
@pytest.mark.parametrize("batch_size", [1, 4])
def test_label_mode_known_answers(net, batch_size):
    favour(net, "1")
    always_first = [mc(f"Question {i}?", ["x", "y", "z", "w"], 1, i) for i in range(6)]
    never_first = [mc(f"Question {i}?", ["x", "y", "z", "w"], 2 + i % 3, i) for i in range(6)]
    config = net.space.max()
    right = MultipleChoiceEvaluator(net, always_first, mode="label", batch_size=batch_size)(config)
    wrong = MultipleChoiceEvaluator(net, never_first, mode="label", batch_size=batch_size)(config)
    assert (right.score, wrong.score) == (1.0, 0.0)
    assert right.n == 6 and set(right.predictions) == {"answer1"}
    assert right.stderr == 0.0


def test_label_mode_true_false(net):
    favour(net, "f")  # "... is true" and "... is false" differ at their first byte
    records = [
        Record(
            f"Please answer the following question with true or false, question: q{i}?\n\nAnswer format: true/false",
            "",
            f"the correct answer is {a}",
            a,
            "boolq.json",
            i,
        )
        for i, a in enumerate(["false", "true", "false", "false"])
    ]
    result = MultipleChoiceEvaluator(net, records, mode="label")(net.space.max())
    assert result.score == 0.75 and result.predictions == ("false",) * 4
    assert result.stderr == pytest.approx(binomial_stderr(0.75, 4))


@pytest.mark.parametrize("normalization", ["char", "token", "none"])
def test_text_mode_known_answers(net, normalization):
    favour(net, "z", strength=30.0)
    options = ["abc", "zzz", "dbe", "cab"]
    right = [mc(f"Which one {i}?", options, 2, i) for i in range(5)]
    wrong = [mc(f"Which one {i}?", options, 1 + 2 * (i % 2), i) for i in range(5)]
    config = net.space.min()
    kw = {"mode": "text", "normalization": normalization, "batch_size": 3}
    assert MultipleChoiceEvaluator(net, right, **kw)(config).score == 1.0
    assert MultipleChoiceEvaluator(net, wrong, **kw)(config).score == 0.0


def test_exact_match_known_answers(net):
    favour(net, "7")  # greedy decoding then writes "777"
    make = lambda answer, i: Record(f"Compute item {i}.", "", f"The answer is {answer}.", answer, "math.json", i)  # noqa: E731
    right = [make("777", i) for i in range(3)]
    wrong = [make("778", i) for i in range(3)] + [make("777.5", 3)]
    config = net.space.max()
    result = ExactMatchEvaluator(net, right, max_new_tokens=3, batch_size=2)(config)
    assert result.score == 1.0 and result.predictions == (777.0,) * 3
    assert ExactMatchEvaluator(net, wrong, max_new_tokens=3, batch_size=2)(config).score == 0.0


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("He needs 24 * 24 = 576 tiles. The answer is 576.", 576.0),
        ("The answer is 12. Then 99 more.", 12.0),
        ("so the answer is: $1,234.50 in total", 1234.5),
        ("The answer is -3", -3.0),
        ("no answer phrase, but 3 then 41.", 41.0),
        ("nothing numeric here", None),
    ],
)
def test_extract_number(text, number):
    assert extract_number(text) == number


def test_binomial_stderr():
    assert binomial_stderr(0.5, 100) == pytest.approx(0.05)
    assert binomial_stderr(1.0, 10) == 0.0


# --------------------------------------------------------------------------- batch-size independence
@pytest.mark.parametrize("mode", ["label", "text"])
def test_scores_do_not_depend_on_batch_size(net, mode):
    records, config = mixed_records(), net.space.heuristic()
    per_size = []
    for batch_size in (1, 3, 8):
        ev = MultipleChoiceEvaluator(net, records, mode=mode, batch_size=batch_size)
        with net.activated(config):
            per_size.append(ev.option_scores())
        assert ev(config).predictions == MultipleChoiceEvaluator(net, records, mode=mode)(config).predictions
    for scores in per_size[1:]:
        for a, b in zip(per_size[0], scores):
            torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-5, rtol=0)


def test_padding_matches_an_unpadded_forward(net):
    """The label score of one question equals a plain forward on its own tokens."""
    records = mixed_records()
    ev = MultipleChoiceEvaluator(net, records, mode="label", batch_size=9)
    with torch.inference_mode():
        scores = ev.option_scores()
        for item, got in zip(ev.items, scores):
            logits = net.model(torch.tensor([item.context])).logits[0, -1]
            expected = torch.log_softmax(logits, -1)[item.candidates]
            torch.testing.assert_close(torch.tensor(got), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("model_type", "space", "pick"), [
    ("llama", SPACE, "heuristic"), ("qwen2", SPACE, "heuristic"), ("llama", MODE_B, "min"),
])
def test_text_scores_match_one_unpadded_forward_per_option(model_type, space, pick):
    """Scoring options from the cached context equals a plain forward on context + option (Mode B too)."""
    net = SuperNetwork(tiny_model(model_type), SearchSpace.from_dict(space), tokenizer=byte_tokenizer())
    with torch.no_grad():
        for p in net.adapter_parameters():
            p.normal_(0, 0.2, generator=torch.Generator().manual_seed(1))
    ev = MultipleChoiceEvaluator(net, mixed_records(), mode="text", normalization="none", batch_size=4)
    with net.activated(getattr(net.space, pick)()), torch.inference_mode():
        scores = ev.option_scores()
        for item, got in zip(ev.items, scores):
            expected = []
            for cont in item.continuations:
                logits = net.model(torch.tensor([item.context + cont])).logits[0]
                logprobs = torch.log_softmax(logits[len(item.context) - 1 : -1], -1)
                expected.append(logprobs.gather(-1, torch.tensor(cont)[:, None]).sum())
            torch.testing.assert_close(torch.tensor(got), torch.stack(expected), atol=1e-4, rtol=0)


def test_generation_does_not_depend_on_batch_size(net):
    records = [Record("x" * (2 + 5 * i), "", "The answer is 1.", "1", "m.json", i) for i in range(5)]
    texts = []
    for batch_size in (1, 5):
        ev = ExactMatchEvaluator(net, records, batch_size=batch_size, max_new_tokens=6)
        with net.activated(net.space.max()):
            texts.append(ev.generations())
    assert texts[0] == texts[1]


def test_loss_matches_the_model_and_does_not_depend_on_batch_size(net):
    records = mixed_records()
    results = [LossEvaluator(net, records, batch_size=b)(net.space.max()) for b in (1, 4)]
    assert results[0].score == pytest.approx(results[1].score, abs=1e-5)
    # reference: the model's own mean loss, token-weighted over every record
    tok = net.tokenizer
    total = tokens = 0
    with torch.inference_mode():
        for rec in records:
            enc = encode_for_training(tok, rec, 512)
            n = sum(label != -100 for label in enc["labels"][1:])
            out = net.model(torch.tensor([enc["input_ids"]]), labels=torch.tensor([enc["labels"]]))
            total, tokens = total + out.loss.item() * n, tokens + n
    assert -results[0].score == pytest.approx(total / tokens, abs=1e-4)
    assert results[0].metric == "neg_loss" and results[0].extra["tokens"] == tokens


def test_loss_on_plain_texts_and_perplexity(net):
    texts = ["hello world", "a somewhat longer line of text"]
    result = LossEvaluator(net, texts, metric="neg_perplexity")(net.space.max())
    assert result.score == pytest.approx(-result.extra["perplexity"])
    assert result.extra["tokens"] == sum(len(t) for t in texts)  # one byte per token, BOS not predicted


# ------------------------------------------------------------------------------ cache, determinism
def test_cache_skips_the_model(net):
    calls = count_forwards(net)
    ev = MultipleChoiceEvaluator(net, mixed_records(), batch_size=4)
    first = ev(net.space.max())
    used = calls[0]
    assert used > 0
    assert ev(dict(reversed(list(net.space.max().items())))) is first  # same config, other key order
    assert calls[0] == used
    other = ev(net.space.min())
    assert calls[0] > used and len(ev.cache) == 2 and other is not first


def test_configs_change_scores_and_activation_is_restored(net):
    net.activate(net.space.min())
    net.model.train()
    ev = LossEvaluator(net, mixed_records())
    big, small = ev(net.space.max()), ev(net.space.min())
    assert big.score != small.score
    assert net.active_config == net.space.min() and net.model.training


def test_deterministic_across_instances(net):
    records = synthetic_task(12, seed=5)
    for mode in ("label", "text"):
        a = MultipleChoiceEvaluator(net, records, mode=mode, limit=8, seed=1)(net.space.max())
        b = MultipleChoiceEvaluator(net, records, mode=mode, limit=8, seed=1)(net.space.max())
        assert a == b and a.predictions == b.predictions


def test_result_shape(net):
    ev = MultipleChoiceEvaluator(net, synthetic_task(6), mode="text")
    assert isinstance(ev, Evaluator)
    result = ev(net.space.max())
    assert isinstance(result, EvalResult) and result.seconds > 0 and result.n == 6
    assert set(result.to_dict()) == {"score", "n", "stderr", "seconds", "metric", "extra"}
    json.dumps(result.to_dict())


# ------------------------------------------------------------------------------------------ errors
def test_answers_that_do_not_fit_their_options(net, tmp_path):
    bad = [mc("Q?", ["a", "b"], 1, 0).to_dict(), dict(mc("Q?", ["a", "b"], 1, 1).to_dict(), answer="answer3")]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"bad\.json: record 1: answer 'answer3' is not one of the options"):
        MultipleChoiceEvaluator(net, tmp_path / "bad.json")


def test_empty_subset_and_empty_file(net, tmp_path):
    with pytest.raises(DataError, match="empty"):
        MultipleChoiceEvaluator(net, synthetic_task(4), limit=0)
    with pytest.raises(DataError, match="no records"):
        MultipleChoiceEvaluator(net, [])
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(DataError, match=r"empty\.json: no records"):
        ExactMatchEvaluator(net, tmp_path / "empty.json")


def test_exact_match_needs_numeric_answers(net):
    with pytest.raises(DataError, match=r"record 0: answer 'A' is not a number"):
        ExactMatchEvaluator(net, [Record("Pick", "", "", "A", "aqua.json", 0)])


def test_bad_options(net):
    with pytest.raises(EvalError, match="mode"):
        MultipleChoiceEvaluator(net, synthetic_task(2), mode="letters")
    with pytest.raises(EvalError, match="normalization"):
        MultipleChoiceEvaluator(net, synthetic_task(2), mode="text", normalization="bytes")
    with pytest.raises(EvalError, match="metric"):
        LossEvaluator(net, synthetic_task(2), metric="accuracy")


# ------------------------------------------------------------------------------ item prefixes, token budget
@pytest.mark.parametrize("mode", ["label", "text"])
def test_a_prefix_of_the_items_is_the_start_of_the_full_score_and_is_not_scored_twice(net, mode):
    records = synthetic_task(12, seed=3)
    ev = MultipleChoiceEvaluator(net, records, mode=mode, limit=12, batch_size=4)
    config = net.space.min()
    part = ev.score_items(config, 5)
    assert part.n == 5 and part.scored == 5 and len(part.item_scores) == 5
    full = ev.score_items(config)
    assert full.scored == 7  # the first five came from the item cache
    assert full.item_scores[:5] == part.item_scores
    assert ev.score_items(config, 5).scored == 0
    fresh = MultipleChoiceEvaluator(net, records, mode=mode, limit=12, batch_size=4)(config)
    assert fresh.item_scores == full.item_scores and fresh.score == full.score
    assert full.score == pytest.approx(sum(full.item_scores) / 12)


def test_restored_items_are_not_scored_again(net):
    records = synthetic_task(10, seed=4)
    first = MultipleChoiceEvaluator(net, records, mode="text", limit=10)
    done = first.score_items(net.space.max(), 6)
    again = MultipleChoiceEvaluator(net, records, mode="text", limit=10)
    again.restore_items(net.space.max(), done.item_scores)
    ran, score = [], again._score
    again._score = lambda indices: ran.append(list(indices)) or score(indices)
    full = again(net.space.max())
    assert ran == [[6, 7, 8, 9]]  # only the items the earlier process had not scored
    assert full.item_scores == first(net.space.max()).item_scores
    assert full.scored == 10  # the evaluation's cost, as had it never been interrupted


@pytest.mark.parametrize("mode", ["label", "text"])
def test_token_budget_batches_respect_the_budget_and_change_no_score(net, mode):
    records = mixed_records()
    by_count = MultipleChoiceEvaluator(net, records, mode=mode, batch_size=8)
    by_tokens = MultipleChoiceEvaluator(net, records, mode=mode, batch_size=None, max_batch_tokens=120)
    batches = list(by_tokens._batches(range(len(records)), by_tokens._item_cost))
    assert sorted(i for b in batches for i in b) == list(range(len(records)))
    assert len(batches) > 1
    assert all(len(b) == 1 or len(b) * by_tokens._item_cost(b[0]) <= 120 for b in batches)
    with net.activated(net.space.max()), torch.inference_mode():
        expected, got = by_count.option_scores(), by_tokens.option_scores()
    for a, b in zip(expected, got):
        np.testing.assert_allclose(a, b, atol=1e-5)
