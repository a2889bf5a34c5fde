"""lm-evaluation-harness as an evaluator, run for real and offline on tasks built from small local
JSON files, on a tiny model: agreement with our own option-text evaluator, the seeded subset, the
item cache, several tasks, the CLI, resume after a kill, and the one-line errors."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import TINY_SPACE, cli_error, kill_at_lines, randomize_adapters, run_cli

from lorasearch import SearchSpace, SuperNetwork, TaskSettings, build_evaluator
from lorasearch.data import parse_choices, subset, synthetic_task
from lorasearch.errors import LoraSearchError
from lorasearch.evaluate.evaluators import EvalError, MultipleChoiceEvaluator
from lorasearch.evaluate.harness import LMEvalEvaluator, parse_lm_eval, write_task
from lorasearch.models.loading import byte_tokenizer, tiny_model
from lorasearch.search import Objective
from lorasearch.search.objectives import measure_all

pytest.importorskip("lm_eval")  # the README's test command installs it (the lmeval extra)

OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
SPACE = {
    "name": "tiny",
    "adapter": {"rank": 8, "alpha": 16},
    "groups": {"attn": {"modules": ["self_attn.q_proj", "self_attn.v_proj"], "rank": [8, 4, 2]}},
}
# A task YAML as a user writes one: Jinja templates over the JSON fields, lm-eval's default
# target delimiter (a space) between the prompt and each option.
USER_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No network: the Hugging Face libraries read these flags at import, so set them there too."""
    import datasets.config
    import huggingface_hub.constants

    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)


@pytest.fixture
def net() -> SuperNetwork:
    """A tiny Llama with non-zero adapters, so that configs differ."""
    net = SuperNetwork(tiny_model("llama"), SearchSpace.from_dict(SPACE), tokenizer=byte_tokenizer())
    return randomize_adapters(net, seed=0, scale=0.2)


def user_task(folder, records, name="mine"):
    """A JSON lines file of the records' questions, options and answers, and a user-style YAML."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for record in records:
        choices = parse_choices(record)
        rows.append({"question": choices.question, "choices": list(choices.texts), "answer": choices.answer})
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = folder / f"{name}.yaml"
    path.write_text(USER_YAML.format(name=name, data=data))
    return path


def argmax(values):
    return max(range(len(values)), key=values.__getitem__)


RECORDS = synthetic_task(40, seed=1)


# ------------------------------------------------------------------------------------ agreement
def test_acc_is_our_unnormalised_text_mode_on_a_task_yaml_given_by_path(net, tmp_path):
    """acc picks the largest summed log-likelihood, as our normalization "none" does: same items
    (the seeded subset), same predictions, same score; results filed under the YAML's task: name."""
    path = user_task(tmp_path / "tasks", RECORDS)
    ours = MultipleChoiceEvaluator(net, RECORDS, mode="text", normalization="none", limit=16, seed=3)
    ev = LMEvalEvaluator(net, str(path), metric="acc", limit=16, seed=3)
    assert ev.task_names == ["mine"]
    assert [item.doc for item in ev.records] == subset(list(range(40)), 16, 3)
    for config in (net.space.max(), net.space.min()):
        theirs, mine = ev(config), ours(config)
        with net.activated(config):
            sums = ours.option_scores()  # summed log-likelihoods (no normalisation)
        assert list(theirs.predictions) == [argmax(s) for s in sums]
        assert theirs.item_scores == mine.item_scores and theirs.score == pytest.approx(mine.score)
        assert theirs.extra["per_task"] == {"mine": pytest.approx(mine.score)} and theirs.n == 16
    assert ev(net.space.max()).predictions != ev(net.space.min()).predictions  # the configs really differ


def test_acc_norm_is_our_per_character_normalisation_when_options_carry_their_space(net, tmp_path):
    """acc_norm divides by the option's characters without the target delimiter: with write_task's
    options (" text", empty delimiter) that is exactly our normalization "char"; with a user YAML's
    default delimiter it is the summed log-likelihood over len(text), one character less than ours."""
    config = net.space.heuristic()
    ours = MultipleChoiceEvaluator(net, RECORDS, mode="text", normalization="char", limit=16, seed=5)
    ev = LMEvalEvaluator(net, str(write_task(RECORDS, tmp_path / "w", "syn")), metric="acc_norm", limit=16, seed=5)
    theirs, mine = ev(config), ours(config)
    with net.activated(config):
        per_char = ours.option_scores()
        raw = MultipleChoiceEvaluator(net, RECORDS, mode="text", normalization="none", limit=16, seed=5).option_scores()
    assert list(theirs.predictions) == [argmax(s) for s in per_char]
    assert theirs.item_scores == mine.item_scores and theirs.score == pytest.approx(mine.score)

    user = LMEvalEvaluator(net, str(user_task(tmp_path / "u", RECORDS)), metric="acc_norm", limit=16, seed=5)
    texts = [parse_choices(r).texts for r in subset(RECORDS, 16, 5)]
    expected = [argmax([lp / len(t) for lp, t in zip(sums, ts)]) for sums, ts in zip(raw, texts)]
    assert list(user(config).predictions) == expected


# ------------------------------------------------------------------------------ the protocol
def test_a_prefix_is_the_start_of_the_full_score_and_nothing_is_run_twice(net, tmp_path, monkeypatch):
    path = write_task(RECORDS, tmp_path, "syn")
    ev = LMEvalEvaluator(net, str(path), limit=12, seed=2)
    runs = []
    inner = ev._evaluate
    monkeypatch.setattr(ev, "_evaluate", lambda samples: (runs.append(dict(samples)), inner(samples))[1])
    config = net.space.min()
    part = ev.score_items(config, 5)
    assert part.n == 5 and part.scored == 5 and len(runs) == 1 and len(runs[0]["syn"]) == 5
    full = ev.score_items(config)
    assert full.scored == 7 and len(runs[1]["syn"]) == 7 and full.item_scores[:5] == part.item_scores
    assert ev(config) is full and ev.score_items(config, 3).scored == 0 and len(runs) == 2
    fresh = LMEvalEvaluator(net, str(path), limit=12, seed=2)(config)
    assert fresh.item_scores == full.item_scores and fresh.score == full.score
    assert full.score == pytest.approx(sum(full.item_scores) / 12) and ev.itemwise

    restored = LMEvalEvaluator(net, str(path), limit=12, seed=2)
    restored.restore_items(config, part.item_scores)
    ran, run_restored = [], restored._evaluate
    monkeypatch.setattr(restored, "_evaluate", lambda samples: (ran.append(dict(samples)), run_restored(samples))[1])
    again = restored.score_items(config)
    assert len(ran) == 1 and len(ran[0]["syn"]) == 7  # lm-eval ran the 7 items not restored
    assert again.scored == 12  # the evaluation's cost counts the restored items, as had it never crashed


def test_several_tasks_give_their_mean_and_keep_each_score(net, tmp_path):
    folder = tmp_path / "tasks"
    write_task(RECORDS[:20], folder, "first")
    write_task(synthetic_task(30, seed=7), folder, "second")
    config = net.space.max()
    ev = build_evaluator(net, TaskSettings(evaluator="lm-eval:first,second", lm_eval_include=str(folder), limit=8, seed=1))
    assert isinstance(ev, LMEvalEvaluator) and ev.n_items == 16 and not ev.itemwise
    assert [item.task for item in ev.records[:4]] == ["first", "second", "first", "second"]  # a prefix covers both
    result = ev(config)
    one = {name: LMEvalEvaluator(net, name, include=folder, limit=8, seed=1)(config).score for name in ("first", "second")}
    assert result.extra["per_task"] == pytest.approx(one)
    assert result.score == pytest.approx((one["first"] + one["second"]) / 2)
    row = measure_all([Objective("accuracy", "max", ev)], config)
    assert row["accuracy"] == result.score and row["accuracy_first"] == pytest.approx(one["first"])
    assert row["accuracy_second"] == pytest.approx(one["second"]) and "accuracy_stderr" in row


def test_few_shot_items_are_always_scored_together(net, tmp_path):
    """With few-shot examples an item's context depends on the documents run with it, so every
    call scores the whole subset: a prefix then equals the full run's start."""
    path = write_task(RECORDS, tmp_path, "syn")
    ev = LMEvalEvaluator(net, str(path), limit=10, seed=4, num_fewshot=2)
    assert not ev.chunked
    config = net.space.min()
    part = ev.score_items(config, 4)
    assert part.scored == 10 and ev.score_items(config, 4).scored == 0
    full = ev(config)
    assert full.n == 10 and full.item_scores[:4] == part.item_scores
    assert LMEvalEvaluator(net, str(path), limit=10, seed=4, num_fewshot=2)(config).item_scores == full.item_scores
    assert LMEvalEvaluator(net, str(path), limit=10, seed=4).chunked


def test_an_evaluation_leaves_the_global_random_generators_alone(net, tmp_path):
    """lm-eval reseeds them by default; a seeded search strategy drawing from them would then
    propose other configs after a resume (which skips the logged evaluations)."""
    ev = LMEvalEvaluator(net, str(write_task(RECORDS, tmp_path, "syn")), limit=4)
    random.seed(11), np.random.seed(11), torch.manual_seed(11)
    ev(net.space.max())
    after = (random.random(), np.random.random(), torch.rand(1).item())
    random.seed(11), np.random.seed(11), torch.manual_seed(11)
    assert after == (random.random(), np.random.random(), torch.rand(1).item())


# ------------------------------------------------------------------------------------ errors
def test_missing_lm_eval_says_how_to_install(net, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(EvalError, match=r"pip install 'lorasearch\[lmeval\]'"):
        LMEvalEvaluator(net, "arc_easy")


def test_bad_lm_eval_settings_are_one_line_errors(net, tmp_path):
    path = write_task(RECORDS, tmp_path, "syn")
    cases = [
        (lambda: parse_lm_eval("lm-eval:"), "names no task"),
        (lambda: LMEvalEvaluator(net, str(path), metric="bleu"), "no metric 'bleu'; fix: --metric one of acc, acc_norm"),
        (lambda: LMEvalEvaluator(net, str(path), metric="acc,strict"), "no filter 'strict'"),
        (lambda: LMEvalEvaluator(net, str(tmp_path / "none.yaml")), "no such file"),
        (lambda: LMEvalEvaluator(net, "syn", include=tmp_path / "nowhere"), "not a folder"),
        (lambda: LMEvalEvaluator(net, str(path), limit=0), "the subset would be empty"),
        (lambda: build_evaluator(net, TaskSettings(evaluator=f"lm-eval:{path}", task="x.json")), "--task x.json: not used"),
        (lambda: build_evaluator(net, TaskSettings(evaluator="text", num_fewshot=1)), "--num-fewshot: only for"),
        (lambda: build_evaluator(net, TaskSettings(evaluator="text", metric="acc")), "--metric acc: only for"),
        (lambda: build_evaluator(net, TaskSettings(evaluator="lm_eval:x")), "lm-eval:TASK"),
    ]
    for call, expected in cases:
        with pytest.raises(LoraSearchError) as exc:
            call()
        message = str(exc.value)
        assert expected in message and "\n" not in message and "fix" in message, message

    broken = tmp_path / "broken.yaml"
    broken.write_text(USER_YAML.format(name="broken", data=tmp_path / "missing.jsonl"))
    with pytest.raises(EvalError, match=r"lm-eval task .*broken.yaml: a data file or dataset is missing .*fix: check"):
        LMEvalEvaluator(net, str(broken))


def test_a_failed_download_is_a_one_line_error(net, tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager

    try:  # the Hub's HTTP client: httpx2 here (huggingface_hub 2.4), httpx in older releases
        import httpx2 as client
    except ImportError:
        client = pytest.importorskip("httpx")

    def no_network(self, specs):
        raise client.ConnectError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(TaskManager, "load", no_network)
    with pytest.raises(EvalError) as exc:
        LMEvalEvaluator(net, str(write_task(RECORDS, tmp_path, "syn")))
    message = str(exc.value)
    assert "could not be fetched from the Hugging Face Hub (ConnectError: [Errno -3]" in message
    assert "\n" not in message and "fix: check the network" in message


@pytest.mark.parametrize("reachable", [False, True])
def test_tasks_load_from_the_local_cache_only_when_the_hub_cannot_be_reached(net, tmp_path, monkeypatch, reachable):
    """Without a network, a hub task fails at once (offline mode) instead of retrying for a minute."""
    import datasets.config
    import huggingface_hub.constants
    from lm_eval.tasks import TaskManager

    import lorasearch.evaluate.harness as harness

    for module, name in ((huggingface_hub.constants, "HF_HUB_OFFLINE"), (datasets.config, "HF_HUB_OFFLINE"),
                         (datasets.config, "HF_DATASETS_OFFLINE")):
        monkeypatch.setattr(module, name, False)  # as in a shell without the offline variables
    monkeypatch.setattr(harness, "use_local_files_only", lambda: not reachable)
    seen = []
    real = TaskManager.load

    def load(self, specs):
        seen.append((huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE))
        return real(self, specs)

    monkeypatch.setattr(TaskManager, "load", load)
    LMEvalEvaluator(net, str(write_task(RECORDS, tmp_path, "syn")))
    assert seen and all(flags == (not reachable, not reachable) for flags in seen)
    assert (huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE) == (False, False)


@pytest.mark.slow
def test_a_hub_task_offline_and_an_unknown_name_are_one_line_errors(net):
    """Both need lm-eval's own task index (seconds to build)."""
    with pytest.raises(EvalError, match=r"arc_easy: its dataset is not available offline .*fix: run it once") as exc:
        LMEvalEvaluator(net, "arc_easy")
    assert "\n" not in str(exc.value)
    with pytest.raises(EvalError, match=r"'arc_easyy': not a registered task.*did you mean arc_easy"):
        LMEvalEvaluator(net, "arc_easyy")


# --------------------------------------------------------------------------------------- CLI
def test_eval_command_scores_a_task_yaml(tmp_path, capsys):
    path = write_task(RECORDS, tmp_path, "syn")
    run_cli("eval", "--model", "tiny-llama", "--space", TINY_SPACE, "--evaluator", f"lm-eval:{path}",
            "--limit", 6, "--metric", "acc_norm", "--config", "min")
    out = capsys.readouterr().out
    assert "acc_norm: " in out and "on 6 items" in out
    err = cli_error(capsys, "eval", "--model", "tiny-llama", "--space", TINY_SPACE, "--evaluator", f"lm-eval:{path}",
                    "--metric", "exact", last_line=True)
    assert "no metric 'exact'" in err


SEARCH = ["search", "--model", "tiny-llama", "--space", str(TINY_SPACE), "--evaluator", "lm-eval:first,second",
          "--limit", "6", "--budget", "6", "--population", "3", "--seed", "2"]


@pytest.mark.slow
def test_a_search_with_lm_eval_resumes_after_kill_9_without_running_lm_eval_again(tmp_path, monkeypatch):
    folder = tmp_path / "tasks"
    write_task(RECORDS[:24], folder, "first")
    write_task(synthetic_task(24, seed=9), folder, "second")
    args = SEARCH + ["--lm-eval-include", str(folder)]
    run_cli(*args, "--out", tmp_path / "reference")
    reference = pd.read_csv(tmp_path / "reference" / "results.csv")
    assert {"accuracy_first", "accuracy_second"} <= set(reference.columns)
    assert np.allclose(reference["accuracy"], (reference["accuracy_first"] + reference["accuracy_second"]) / 2)

    out = tmp_path / "killed"
    env = {**os.environ, **OFFLINE, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    script = textwrap.dedent(f"""
        import time
        import torch; torch.set_num_threads(1)
        from lorasearch.cli import main
        from lorasearch.evaluate.harness import LMEvalEvaluator
        inner = LMEvalEvaluator._evaluate  # slowed down, so that the kill lands between evaluations
        LMEvalEvaluator._evaluate = lambda self, samples: (time.sleep(0.5), inner(self, samples))[1]
        main({args + ["--out", str(out)]!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "evaluations.jsonl"
    kill_at_lines(proc, log, 2, timeout=300)
    done_before = len(log.read_text().splitlines())
    assert 2 <= done_before < 6

    runs = []
    inner = LMEvalEvaluator._evaluate
    monkeypatch.setattr(LMEvalEvaluator, "_evaluate", lambda self, samples: (runs.append(samples), inner(self, samples))[1])
    run_cli("search", "--resume", out)
    assert len(runs) == 6 - done_before  # the logged configs are served from the log
    resumed = pd.read_csv(out / "results.csv")
    cols = ["eval_id", "genes", "accuracy", "accuracy_first", "accuracy_second", "macs", "generation", "source", "is_pareto"]
    pd.testing.assert_frame_equal(resumed[cols], reference[cols])


GENERATE_YAML = """\
task: sums
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}} ="
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 2
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def test_a_generation_task_scores_exact_match_on_the_generated_text(net, tmp_path):
    """The favoured characters make the tiny model answer "77", the right answer of every other item."""
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i} + {i}", "answer": "77" if i % 2 else "5"}) + "\n"
                            for i in range(8)))
    path = tmp_path / "sums.yaml"
    path.write_text(GENERATE_YAML.format(data=data))
    bias = torch.zeros(net.model.config.vocab_size)
    bias[3 + ord("7")] = 50.0  # the byte tokenizer's id of "7"
    hook = net.model.lm_head.register_forward_hook(lambda _m, _i, out: out + bias)
    try:
        result = LMEvalEvaluator(net, str(path), metric="exact_match", limit=8)(net.space.max())
    finally:
        hook.remove()
    assert set(result.predictions) == {"77"}  # two generated tokens
    assert result.item_scores == (0.0, 1.0) * 4 and result.score == 0.5 and result.metric == "exact_match"


def test_parallel_workers_get_absolute_task_paths(tmp_path, monkeypatch):
    from lorasearch.runs.settings import NetworkSettings, absolute_paths

    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "mine.yaml").write_text("task: mine\n")
    monkeypatch.chdir(tmp_path)
    _, task = absolute_paths(NetworkSettings(), TaskSettings(evaluator="lm-eval:tasks/mine.yaml,arc_easy",
                                                             lm_eval_include="tasks"))
    assert task.evaluator == f"lm-eval:{tmp_path / 'tasks' / 'mine.yaml'},arc_easy"
    assert task.lm_eval_include == str(tmp_path / "tasks")
