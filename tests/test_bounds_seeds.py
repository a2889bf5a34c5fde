"""Hypervolume bounds that do not collapse on a narrow front, shared by compared runs; a subset seed
apart from the strategy's seed; run files of earlier versions still resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from helpers import TINY_SPACE, ItemScores, make_space, run_cli

from lorasearch import LoraSearchError
from lorasearch.results import ObjectiveSpec, hypervolume, shared_specs, to_minimisation
from lorasearch.search import Objective, SearchSettings, run_search
from lorasearch.search.bounds import derive_specs


def test_score_bounds_are_widened_by_two_standard_errors_of_each_end():
    space = make_space()
    accuracy, macs = Objective("accuracy", "max", lambda c: 0.5), Objective("macs", "min", lambda c: 1.0)
    measured = {"max": {"accuracy": 0.55, "accuracy_stderr": 0.045, "macs": 10.0},
                "min": {"accuracy": 0.53, "accuracy_stderr": 0.044, "macs": 4.0}}
    spec = derive_specs([accuracy, macs], space, measured)[0]
    # a front one or two items wide: the ends move out by 2 SE (not by 10 % of a 0.02 spread)
    assert spec.best == pytest.approx(0.55 + 2 * 0.045) and spec.worst == pytest.approx(0.53 - 2 * 0.044)
    wide = {"max": {"accuracy": 0.9, "accuracy_stderr": 0.01}, "min": {"accuracy": 0.1, "accuracy_stderr": 0.01}}
    spec = derive_specs([accuracy, macs], space, {**measured, **{k: {**measured[k], **wide[k]} for k in wide}})[0]
    assert spec.best == pytest.approx(0.9 + 0.08) and spec.worst == pytest.approx(0.1 - 0.08)  # 10 % of 0.8 > 2 SE
    no_stderr = {k: {n: v for n, v in m.items() if not n.endswith("_stderr")} for k, m in measured.items()}
    spec = derive_specs([accuracy, macs], space, no_stderr)[0]
    assert spec.best == pytest.approx(0.55 + 0.002) and spec.worst == pytest.approx(0.53 - 0.002)


def test_a_search_stores_its_widened_bounds_and_another_can_borrow_them(tmp_path):
    scores = ItemScores(make_space(), n_items=60)
    objectives = scores.objectives()
    objectives[0].bounds = None  # derived from the max and min configs' measurements
    first = run_search(scores.space, objectives, SearchSettings(budget=16, population=8, seed=1),
                       out_dir=tmp_path / "a")
    stored = yaml.safe_load((tmp_path / "a" / "run.yaml").read_text())["bounds"]
    top, bottom = first.reference("max"), first.reference("min")
    high, low = max(top, bottom, key=lambda r: r["accuracy"]), min(top, bottom, key=lambda r: r["accuracy"])
    spread = 0.1 * max(high["accuracy"] - low["accuracy"], 0.01)
    assert stored[0]["best"] == pytest.approx(high["accuracy"] + max(spread, 2 * high["accuracy_stderr"]))
    assert stored[0]["worst"] == pytest.approx(low["accuracy"] - max(spread, 2 * low["accuracy_stderr"]))
    other = ItemScores(make_space(), n_items=60, seed=4)  # other items: other measured extremes
    objectives = other.objectives()
    objectives[0].bounds = None
    second = run_search(other.space, objectives, SearchSettings(budget=16, population=8, seed=2,
                                                                bounds_from=str(tmp_path / "a")),
                        out_dir=tmp_path / "b")
    assert yaml.safe_load((tmp_path / "b" / "run.yaml").read_text())["bounds"] == stored
    assert [s.to_dict() for s in second.specs] == stored
    with pytest.raises(LoraSearchError, match="--bounds-from .* no max bounds for 'score'"):
        run_search(other.space, [Objective("score", "max", lambda c: 0.5), objectives[1]],
                   SearchSettings(budget=8, population=4, bounds_from=str(tmp_path / "a")))


def test_compared_runs_share_the_widest_bounds():
    a = [ObjectiveSpec("accuracy", "max", 0.8, 0.3), ObjectiveSpec("macs", "min", 10.0, 20.0)]
    b = [ObjectiveSpec("accuracy", "max", 0.7, 0.2), ObjectiveSpec("macs", "min", 12.0, 22.0)]
    shared = shared_specs([a, b])
    assert [(s.best, s.worst) for s in shared] == [(0.8, 0.2), (10.0, 22.0)]
    import pandas as pd

    table = pd.DataFrame([[0.75, 11.0], [0.5, 15.0]], columns=["accuracy", "macs"])
    inside = to_minimisation(table, shared)  # by hand: (0.05 / 0.6, 1 / 12) and (0.3 / 0.6, 5 / 12)
    np.testing.assert_allclose(inside, [[0.05 / 0.6, 1 / 12], [0.3 / 0.6, 5 / 12]])
    assert hypervolume(inside) == pytest.approx((1 - 0.05 / 0.6) * (1 - 1 / 12))  # the first dominates the second


SEARCH = ["search", "--model", "tiny-llama", "--space", TINY_SPACE, "--limit", "8", "--budget", "8",
          "--population", "4"]


def test_strategy_seeds_score_the_same_items_and_the_subset_has_its_own_seed(tmp_path):
    for name, extra in (("s1", ["--seed", "1"]), ("s2", ["--seed", "2"]), ("subset", ["--seed", "1", "--subset-seed", "5"])):
        run_cli(*SEARCH, *extra, "--out", tmp_path / name)
    documents = {n: yaml.safe_load((tmp_path / n / "run.yaml").read_text()) for n in ("s1", "s2", "subset")}
    assert documents["s1"]["run"]["task"]["seed"] == documents["s2"]["run"]["task"]["seed"] == 0
    assert documents["subset"]["run"]["task"]["seed"] == 5 and documents["subset"]["search"]["seed"] == 1
    first = [json.loads(line) for line in (tmp_path / "s1" / "evaluations.jsonl").read_text().splitlines()]
    second = [json.loads(line) for line in (tmp_path / "s2" / "evaluations.jsonl").read_text().splitlines()]
    # the reference configs come first in both: on the same items they score item for item the same
    for a, b in zip(first[:2], second[:2]):
        assert a["genes"] == b["genes"] and a["item_scores"] == b["item_scores"]
    assert documents["s1"]["fingerprints"]["evaluator"] == documents["s2"]["fingerprints"]["evaluator"]


def test_a_run_file_of_an_earlier_version_still_resumes(tmp_path):
    out = tmp_path / "run"
    run_cli(*SEARCH, "--seed", "3", "--subset-seed", "3", "--racing", "--out", out)  # as one --seed 3 did
    document = yaml.safe_load((out / "run.yaml").read_text())
    search = document["search"]
    for added in ("race_alpha", "race_min_discordant", "surrogate_model", "surrogate_items", "surrogate_min_rho",
                  "surrogate_seeds", "bounds_from"):
        del search[added]
    search["race_z"] = 2.0  # the retired racing rule's setting
    (out / "run.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    lines = (out / "evaluations.jsonl").read_text().splitlines()
    run_cli("search", "--resume", out)  # neither refused as changed nor as an unknown field
    assert (out / "evaluations.jsonl").read_text().splitlines() == lines  # nothing evaluated again
