"""The search engine on cheap synthetic objectives: strategies, cache, run directory, resume."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import yaml
import pytest
from helpers import Surrogate, kill_at_lines, make_space, objectives

from lorasearch import LoraSearchError, SearchSpace
from lorasearch.results import hypervolume, pareto_mask, to_minimisation
from lorasearch.search import Objective, PrintLines, SearchCallback, SearchSettings, parse_constraint, run_search
from lorasearch.search.strategies import STRATEGIES


def front_values(table: pd.DataFrame) -> set[tuple[float, float]]:
    front = table[table["is_pareto"]]
    return {(round(a, 9), round(m, 9)) for a, m in zip(front["accuracy"], front["macs"])}


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "exhaustive"])
def test_every_strategy_fills_the_budget_with_distinct_configs(strategy):
    space = make_space()
    s = Surrogate(space)
    result = run_search(space, objectives(s), SearchSettings(strategy=strategy, budget=30, population=6, seed=2))
    table = result.table
    assert len(table) == 30 == s.calls  # every evaluation ran once: the cache serves repeats
    assert table["genes"].nunique() == 30
    assert {"max", "min", "heuristic"} <= set(table["source"])
    assert table["is_pareto"].any()
    assert list(result.hypervolume["hypervolume"]) == sorted(result.hypervolume["hypervolume"])


def test_nsga2_proposes_only_integral_genes(monkeypatch):
    from lorasearch.search import strategies

    asked = []
    original = strategies.NSGA2Strategy.ask

    def spy(self):
        proposals = original(self)
        asked.append(self._pop.get("X"))
        return proposals

    monkeypatch.setattr(strategies.NSGA2Strategy, "ask", spy)
    space = make_space()
    run_search(space, objectives(Surrogate(space)), SearchSettings(budget=60, population=8))
    X = np.vstack(asked)
    assert len(asked) >= 7
    np.testing.assert_array_equal(X, np.round(X))
    assert X.min() >= 0 and (X <= space.bounds()[1]).all()


class LayeredSurrogate(Surrogate):
    """Ranks buy more accuracy than widths and cost fewer MACs: a front of 16 of 729 configs,
    small enough for a population of 30 to hold."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__(space)
        self.weights = np.array([1.0 if g.group == "attn" else 0.6 for g in space.genes])
        self.costs = np.array([0.3 if g.group == "attn" else 1.0 for g in space.genes])

    def macs(self, config) -> float:
        keep = 1 - self.space.encode(config) / self.upper
        return float(np.dot(self.costs, 0.5 + keep))


@pytest.mark.parametrize("seed", [0, 1])
def test_nsga2_finds_the_true_front_of_an_enumerable_space(seed):
    space = make_space(layers=3)  # 729 configs
    truth = run_search(space, objectives(LayeredSurrogate(space)),
                       SearchSettings(strategy="exhaustive", budget=space.size(), population=64))
    assert len(truth.table) == space.size() and len(front_values(truth.table)) == 16
    found = run_search(space, objectives(LayeredSurrogate(space)), SearchSettings(budget=300, population=30, seed=seed))
    assert front_values(found.table) == front_values(truth.table)


def test_same_seed_same_results_and_other_seed_differs():
    space = make_space()
    runs = [run_search(space, objectives(Surrogate(space)), SearchSettings(budget=40, population=8, seed=seed))
            for seed in (5, 5, 6)]
    cols = ["genes", "accuracy", "macs", "generation", "source"]
    pd.testing.assert_frame_equal(runs[0].table[cols], runs[1].table[cols])
    assert not runs[0].table[cols].equals(runs[2].table[cols])


def test_constraints_keep_infeasible_points_off_the_front():
    space = make_space()
    s = Surrogate(space)
    limit = s.macs(space.heuristic())
    result = run_search(space, objectives(s), SearchSettings(budget=40, population=8),
                        constraints=[parse_constraint(f"macs<={limit}")])
    table = result.table
    assert (~table["feasible"]).any() and table["feasible"].any()
    assert (table.loc[table["is_pareto"], "macs"] <= limit).all()
    assert (table.loc[~table["feasible"], "macs"] > limit).all()


def test_a_user_registered_objective_takes_part():
    space = make_space()
    s = Surrogate(space)
    ranks = Objective("rank_sum", "min", lambda c: sum(v for k, v in c.items() if k.startswith("attn")))
    result = run_search(space, [*objectives(s), ranks], SearchSettings(budget=24, population=6))
    assert "rank_sum" in result.table and result.table["rank_sum"].min() == 16 * 4


def test_hypervolume_matches_a_brute_force_grid():
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 1.2, size=(12, 2))
    grid = np.stack(np.meshgrid(np.linspace(0, 1, 401), np.linspace(0, 1, 401)), -1).reshape(-1, 2)
    dominated = np.zeros(len(grid), dtype=bool)
    for p in points:
        dominated |= np.all(grid >= p, axis=1)
    assert hypervolume(points) == pytest.approx(dominated.mean(), abs=0.01)
    from pymoo.indicators.hv import HV

    inside = points[np.all(points < 1, axis=1)]
    assert hypervolume(points) == pytest.approx(HV(ref_point=np.ones(2))(inside), rel=1e-9)


def test_pareto_mask_against_pairwise_definition():
    points = np.random.default_rng(1).integers(0, 5, size=(40, 2)).astype(float)
    mask = pareto_mask(points)
    for i, p in enumerate(points):
        dominated = any(np.all(q <= p) and np.any(q < p) for q in points)
        assert mask[i] == (not dominated)


def test_run_directory_holds_the_tables_and_fixed_bounds(tmp_path):
    space = make_space()
    s = Surrogate(space)
    result = run_search(space, objectives(s), SearchSettings(budget=20, population=5), out_dir=tmp_path / "run",
                        run_info={"task": "synthetic"})
    run = tmp_path / "run"
    for name in ("run.yaml", "evaluations.jsonl", "results.csv", "pareto.csv", "hypervolume.csv"):
        assert (run / name).is_file(), name
    lines = (run / "evaluations.jsonl").read_text().splitlines()
    assert len(lines) == 20 and json.loads(lines[0])["source"] == "max"
    table = pd.read_csv(run / "results.csv")
    assert {"config", "genes", "accuracy", "macs", "generation", "source", "seconds", "is_pareto"} <= set(table.columns)
    assert len(pd.read_csv(run / "pareto.csv")) == int(table["is_pareto"].sum())
    import yaml

    stored = yaml.safe_load((run / "run.yaml").read_text())
    macs_bound = next(b for b in stored["bounds"] if b["name"] == "macs")
    # the stated rule (lorasearch.search.bounds): from the min config's cost to the max config's plus 10 % of the range
    low, high = s.macs(space.min()), s.macs(space.max())
    assert macs_bound["best"] == pytest.approx(low) and macs_bound["worst"] == pytest.approx(high + 0.1 * (high - low))
    assert stored["run"] == {"task": "synthetic"} and stored["search"]["budget"] == 20
    assert result.hypervolume["hypervolume"].iloc[-1] == pytest.approx(
        hypervolume(to_minimisation(result.table, result.specs)))


def test_bad_settings_are_refused(tmp_path):
    space = make_space()
    objs = objectives(Surrogate(space))
    with pytest.raises(LoraSearchError, match="strategy: unknown 'annealing'"):
        run_search(space, objs, SearchSettings(strategy="annealing"))
    with pytest.raises(LoraSearchError, match="budget: 5 is below the population 10"):
        run_search(space, objs, SearchSettings(budget=5, population=10))
    with pytest.raises(LoraSearchError, match="constraint"):
        parse_constraint("macs < lots")
    with pytest.raises(LoraSearchError, match="exhaustive"):
        big = make_space(layers=12)
        run_search(big, objectives(Surrogate(big)), SearchSettings(strategy="exhaustive"))


def test_resume_against_a_changed_run_is_refused(tmp_path):
    space = make_space()
    run_search(space, objectives(Surrogate(space)), SearchSettings(budget=10, population=5), out_dir=tmp_path / "r")
    with pytest.raises(LoraSearchError, match=r"search.population: 5 there, 4 now"):
        run_search(space, objectives(Surrogate(space)), SearchSettings(budget=10, population=4),
                   out_dir=tmp_path / "r", resume=True)
    with pytest.raises(LoraSearchError, match=r"--budget 8 is below the run's budget 10; fix"):
        run_search(space, objectives(Surrogate(space)), SearchSettings(budget=8, population=5),
                   out_dir=tmp_path / "r", resume=True)
    with pytest.raises(LoraSearchError, match="already holds a search"):
        run_search(space, objectives(Surrogate(space)), SearchSettings(budget=10, population=5), out_dir=tmp_path / "r")


def test_a_resume_with_a_larger_budget_extends_the_run_to_what_a_longer_run_finds(tmp_path):
    space = make_space()
    first = run_search(space, objectives(Surrogate(space)), SearchSettings(budget=13, population=5),
                       out_dir=tmp_path / "r")
    assert len(first.table) == 13
    extended = run_search(space, objectives(Surrogate(space)), SearchSettings(budget=31, population=5),
                          out_dir=tmp_path / "r", resume=True)
    longer = run_search(space, objectives(Surrogate(space)), SearchSettings(budget=31, population=5))
    cols = ["eval_id", "genes", "accuracy", "macs", "generation", "is_pareto"]
    pd.testing.assert_frame_equal(extended.table[cols], longer.table[cols])
    assert yaml.safe_load((tmp_path / "r" / "run.yaml").read_text())["search"]["budget"] == 31
    again = run_search(space, objectives(Surrogate(space)), SearchSettings(budget=31, population=5),
                       out_dir=tmp_path / "r", resume=True)  # the stored budget is now 31
    assert len(again.table) == 31


def test_unwritable_or_full_output_gives_one_clear_line(tmp_path, monkeypatch):
    space = make_space()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(LoraSearchError, match=r"cannot write .*fix: choose another --out"):
        run_search(space, objectives(Surrogate(space)), SearchSettings(budget=10, population=5), out_dir=blocker / "run")

    from lorasearch.search import rundir

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir, "append_jsonl", full)
    with pytest.raises(LoraSearchError, match="the disk is full"):
        run_search(space, objectives(Surrogate(space)), SearchSettings(budget=10, population=5), out_dir=tmp_path / "r")


SLOW_SEARCH = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from helpers import Surrogate, make_space, objectives
    from lorasearch.search import SearchSettings, run_search
    space = make_space()
    s = Surrogate(space)
    slow = objectives(s)
    inner = slow[0].fn
    slow[0].fn = lambda c: (time.sleep(0.05), inner(c))[1]
    run_search(space, slow, SearchSettings(budget=40, population=8, seed=3), out_dir={out!r}, resume={resume})
""")


@pytest.mark.slow
def test_resume_after_kill_9_repeats_nothing_and_ends_on_the_same_front(tmp_path):
    space = make_space()
    settings = SearchSettings(budget=40, population=8, seed=3)
    reference = run_search(space, objectives(Surrogate(space)), settings)

    out = tmp_path / "killed"
    script = SLOW_SEARCH.format(tests=os.path.dirname(__file__), out=str(out), resume=False)
    proc = subprocess.Popen([sys.executable, "-c", script])
    log = out / "evaluations.jsonl"
    kill_at_lines(proc, log, 13)
    done_before = len(log.read_text().splitlines())
    assert 13 <= done_before < 40

    s = Surrogate(space)
    resumed = run_search(space, objectives(s), settings, out_dir=out, resume=True)
    assert s.calls == 40 - done_before  # nothing finished is repeated
    genes = [json.loads(line)["genes"] for line in log.read_text().splitlines()]
    assert len(genes) == 40 == len({tuple(g) for g in genes})
    cols = ["eval_id", "genes", "accuracy", "macs", "generation", "source", "is_pareto"]
    pd.testing.assert_frame_equal(resumed.table[cols], reference.table[cols])


class Recorder(SearchCallback):
    def __init__(self) -> None:
        self.messages: list[str] = []
        self.records: list[dict] = []

    def on_message(self, line: str) -> None:
        self.messages.append(line)

    def on_evaluation(self, record, line: str) -> None:
        assert line.startswith(f"evaluation {record['eval_id']} [")
        self.records.append(dict(record))


def test_a_callback_hears_every_evaluation_and_generation_and_the_default_is_silent(tmp_path, capsys):
    space = make_space()
    settings = SearchSettings(budget=12, population=4, seed=1)
    heard = Recorder()
    result = run_search(space, objectives(Surrogate(space)), settings, out_dir=tmp_path / "r", callback=heard)
    assert [r["eval_id"] for r in heard.records] == list(result.table["eval_id"])
    assert [r["objectives"]["accuracy"] for r in heard.records] == list(result.table["accuracy"])
    generations = [m for m in heard.messages if m.startswith("gen ")]
    assert len(generations) == result.table["generation"].nunique()
    logged = (tmp_path / "r" / "progress.log").read_text().splitlines()
    assert len(logged) == 12 and all(line.endswith("in all") for line in logged)

    run_search(space, objectives(Surrogate(space)), settings)
    assert capsys.readouterr().out == ""
    printed: list[str] = []
    run_search(space, objectives(Surrogate(space)), settings, callback=PrintLines(printed.append, printed.append))
    assert sum(line.startswith("gen ") for line in printed) == len(generations)
    assert sum(line.startswith("evaluation ") for line in printed) == 12
