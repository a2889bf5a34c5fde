"""The decomposed surrogate: probes of single-gene deviations, an additive model checked against
hand-built additive scores and brute force, and a search that seeds, screens and resumes with it."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from helpers import ItemScores, make_space

from lorasearch.search import Objective, SearchSettings, run_search
from lorasearch.search.decomposed import DecomposedModel, probe_genes
from lorasearch.space import SearchSpace

COLUMNS = ["eval_id", "genes", "accuracy", "macs", "generation", "source", "is_pareto", "item_forwards"]


def additive_truth(space, seed=0):
    """A hand-built additive score and cost: a[g][j] per gene and choice (0 at the max), and MACs."""
    rng = np.random.default_rng(seed)
    a = [np.concatenate([[0.0], -np.sort(rng.uniform(0, 0.05, len(g.choices) - 1))]) for g in space.genes]
    c = [np.concatenate([[0.0], -np.sort(rng.uniform(1, 10, len(g.choices) - 1))]) for g in space.genes]
    score = lambda genes: 0.7 + sum(a[g][j] for g, j in enumerate(genes))  # noqa: E731
    cost = lambda genes: 100.0 + sum(c[g][j] for g, j in enumerate(genes))  # noqa: E731
    return score, cost


def fitted(space, score, cost, items=6):
    offsets = np.linspace(-0.2, 0.2, items)  # per-item offsets, the same for every config (paired)
    probes = probe_genes(space)
    return DecomposedModel.fit(space, "accuracy", "max", {k: list(score(k) + offsets) for k in probes},
                               {k: {"macs": cost(k)} for k in probes}, proxy=True)


def test_the_probes_are_every_single_gene_deviation_of_the_max_config():
    space = make_space()
    probes = probe_genes(space)
    assert probes[0] == (0,) * len(space.genes)
    assert len(probes) == 1 + sum(len(g.choices) - 1 for g in space.genes) == len(set(probes))
    assert all(sum(v != 0 for v in p) == 1 for p in probes[1:])


def test_an_additive_score_is_recovered_exactly_and_calibrated():
    space = make_space()
    score, cost = additive_truth(space)
    model = fitted(space, score, cost)
    rng = np.random.default_rng(1)
    configs = [tuple(int(rng.integers(len(g.choices))) for g in space.genes) for _ in range(30)]
    np.testing.assert_allclose(model.scores(configs), [score(c) for c in configs], atol=1e-12)
    np.testing.assert_allclose([model.cost(c, "macs") for c in configs], [cost(c) for c in configs])
    measured = [3.0 + 2.0 * score(c) for c in configs]  # any increasing line maps the score to the objective
    before = list(model.scores(configs))
    model.update(configs, measured, [0.01] * len(configs), before)
    np.testing.assert_allclose(model.predict(configs), measured, atol=1e-9)  # nothing left to learn
    assert model.held_out_rho() == pytest.approx(1.0) and model.trusted()
    model.update(configs, [-m for m in measured], [0.01] * len(configs), before, learn=False)  # calibration alone
    assert model.held_out_rho() == pytest.approx(-1.0) and not model.trusted()
    model.update(configs[:5], measured[:5], [0.01] * 5, before[:5])
    assert not model.trusted()  # too few held-out configs to trust
    model.update(configs, measured, [0.01] * len(configs), [None] * len(configs))
    assert model.checks == []  # configs that fitted the probes are no held-out check


def test_learning_from_evaluations_is_the_bayesian_posterior():
    """Two genes of two choices, one probe each (noisy), then measurements: the updated effects equal
    the conjugate-Gaussian posterior written out by hand (prior N(e0, v), y = a + b (base + X e) + noise)."""
    space = SearchSpace.from_dict({"name": "two", "adapter": {"rank": 8}, "num_layers": 1, "per_layer": None,
                                   "groups": {"x": {"modules": ["q"], "rank": [8, 4]}, "y": {"modules": ["v"], "rank": [8, 4]}}})
    probes = probe_genes(space)
    scores = {probes[0]: [0.5, 0.7, 0.6], probes[1]: [0.4, 0.55, 0.5], probes[2]: [0.45, 0.7, 0.5]}
    model = DecomposedModel.fit(space, "accuracy", "max", scores, {p: {"macs": 1.0 + sum(p)} for p in probes}, proxy=True)
    e0 = np.array([model.prior[0][1], model.prior[1][1]])
    v = np.array([model.variances[0][1], model.variances[1][1]])
    np.testing.assert_allclose(e0, [np.mean([-0.1, -0.15, -0.1]), np.mean([-0.05, 0.0, -0.1])])
    np.testing.assert_allclose(v, [np.var([-0.1, -0.15, -0.1], ddof=1) / 3, np.var([-0.05, 0.0, -0.1], ddof=1) / 3])
    genes = [(0, 0), (1, 1), (1, 0), (0, 1)]
    y, se = np.array([0.62, 0.35, 0.49, 0.55]), np.array([0.04, 0.05, 0.045, 0.05])
    X = np.array(genes, dtype=float)
    b, a = np.polyfit(model.base + X @ e0, y, 1)  # the calibration on the probes' effects comes first
    noise = np.diag(se**2 / b**2)
    z = (y - a) / b - model.base
    precision = np.diag(1 / v) + X.T @ np.linalg.inv(noise) @ X
    expected = np.linalg.solve(precision, np.diag(1 / v) @ e0 + X.T @ np.linalg.inv(noise) @ z)
    model.update(genes, y, se, [None] * 4)
    np.testing.assert_allclose([model.effects[0][1], model.effects[1][1]], expected, rtol=1e-9)
    assert model.prior[0][1] == e0[0]  # the prior is kept: the next update starts from it again


def decomposed(**extra):
    return SearchSettings(**{"budget": 40, "population": 8, "seed": 3, "surrogate": True,
                             "surrogate_model": "decomposed", "surrogate_items": 8, **extra})


def test_a_decomposed_search_probes_once_seeds_screens_and_charges_every_item(tmp_path):
    scores = ItemScores(make_space(), n_items=60)
    result = run_search(scores.space, scores.objectives(proxy=True), decomposed(), out_dir=tmp_path / "run")
    log = [json.loads(line) for line in (tmp_path / "run" / "evaluations.jsonl").read_text().splitlines()]
    probes = [r for r in log if r.get("type") == "probe"]
    assert len(probes) == len(probe_genes(scores.space)) and all(r["forwards"] == 8 for r in probes)
    table = result.table
    # the references first (the front's ends while probing), the probes charged to the next evaluation
    assert set(table.loc[:2, "source"]) == {"max", "min", "heuristic"} and table.loc[:2, "probe_forwards"].isna().all()
    assert table["probe_forwards"].fillna(0).sum() == 8 * len(probes) == table.loc[3, "probe_forwards"]
    assert result.item_forwards == scores.forwards  # every item scored, probes included, is charged
    assert result.hypervolume["item_forwards"].iloc[-1] == scores.forwards
    first = table[table["generation"] == 0]
    assert (first["source"] == "surrogate").sum() == 8 - 3  # the references, then the predicted front
    stored = json.loads((tmp_path / "run" / "surrogate.json").read_text())
    assert stored["trusted"] and stored["held_out_rho"] > 0.5 and result.timings["surrogate_screened"] >= 1
    assert stored["additive_cost_error"]["macs"] < 1e-9  # the helpers' MACs add up over genes
    # the seeds are the model's best under evenly spaced budgets: nothing predicted better costs less
    model = DecomposedModel.load(tmp_path / "run")
    model.effects = model.prior  # the seeds came before anything was learnt from evaluations
    for genes in first.loc[first["source"] == "surrogate", "genes"].map(json.loads):
        better = model.best_under("macs", model.cost(genes, "macs"))
        assert model.score(better) <= model.score(genes) + 1e-12


def test_an_untrustworthy_surrogate_seeds_but_never_screens():
    scores = ItemScores(make_space(), n_items=60)
    scores.proxy_noise = 5.0  # probes of pure noise: no rank correlation to speak of
    result = run_search(scores.space, scores.objectives(proxy=True), decomposed(surrogate_min_rho=0.9))
    assert result.timings["surrogate_checks"] >= 8 and result.timings["surrogate_screened"] == 0


def test_without_a_proxy_it_probes_the_item_scores():
    scores = ItemScores(make_space(), n_items=60)
    result = run_search(scores.space, scores.objectives(), decomposed(budget=16))
    assert scores.proxy_calls == 0 and result.item_forwards == scores.forwards


@pytest.mark.parametrize("learn, crash_in", [(False, "probes"), (True, "probes"), (True, "evaluations")])
def test_a_decomposed_search_resumes_without_probing_twice(tmp_path, learn, crash_in):
    space = make_space()
    reference_scores = ItemScores(space, n_items=60)
    reference = run_search(space, reference_scores.objectives(proxy=True), decomposed(surrogate_learn=learn),
                           out_dir=tmp_path / "reference")

    class Crash(Exception):
        pass

    crashing = ItemScores(space, n_items=60)
    objectives = crashing.objectives(proxy=True)
    proxy, score = objectives[0].proxy, objectives[0].fn
    calls = {"evaluations": 0}

    def crashing_proxy(config, stop):
        if crash_in == "probes" and crashing.proxy_calls == 10:
            raise Crash
        return proxy(config, stop)

    def crashing_score(config, stop=None):
        calls["evaluations"] += 1
        if crash_in == "evaluations" and calls["evaluations"] == 25:  # in the third generation
            raise Crash
        return score(config, stop)

    objectives[0].proxy, objectives[0].fn, objectives[0].partial = crashing_proxy, crashing_score, crashing_score
    with pytest.raises(Crash):
        run_search(space, objectives, decomposed(surrogate_learn=learn), out_dir=tmp_path / "run")
    resumed_scores = ItemScores(space, n_items=60)
    resumed = run_search(space, resumed_scores.objectives(proxy=True), decomposed(surrogate_learn=learn),
                         out_dir=tmp_path / "run", resume=True)
    cols = COLUMNS + ["probe_forwards"]
    pd.testing.assert_frame_equal(resumed.table[cols], reference.table[cols])
    assert crashing.proxy_calls + resumed_scores.proxy_calls == reference_scores.proxy_calls  # no probe twice
    stored, expected = (json.loads((tmp_path / d / "surrogate.json").read_text()) for d in ("run", "reference"))
    for field in ("effects", "checks", "calibration"):  # the model learnt the same from the same records
        assert np.allclose(np.asarray(stored[field], dtype=float), np.asarray(expected[field], dtype=float))


def test_pick_answers_any_budget_from_the_stored_model_marking_predicted_and_measured(tmp_path, capsys):
    from helpers import cli_error, run_cli

    from lorasearch.runs import pick_under_budget

    scores = ItemScores(make_space(layers=3), n_items=60)
    result = run_search(scores.space, scores.objectives(proxy=True), decomposed(budget=24), out_dir=tmp_path / "run")
    forwards = scores.forwards
    model = DecomposedModel.load(tmp_path / "run")
    every = list(itertools.product(*(range(len(g.choices)) for g in scores.space.genes)))
    macs = {c: scores.truth.macs(scores.space.decode(c)) for c in every}
    for budget in np.linspace(min(macs.values()), max(macs.values()), 7):
        pick = pick_under_budget(tmp_path / "run", budget)
        affordable = [c for c in every if macs[c] <= budget]
        assert tuple(pick.predicted["genes"]) in affordable
        assert model.score(pick.predicted["genes"]) == pytest.approx(max(model.score(c) for c in affordable))
        assert pick.predicted["cost"] == pytest.approx(macs[tuple(pick.predicted["genes"])])
        table = result.table[(result.table["macs"] <= budget) & ~result.table["partial"]]
        if len(table):
            assert pick.measured["measured"] == pytest.approx(table["accuracy"].max())
    assert scores.forwards == forwards  # no item was scored to answer
    middle = float(np.median(list(macs.values())))
    run_cli("pick", tmp_path / "run", "--macs-at-most", f"{middle}", "--out", tmp_path / "subnet.json")
    out = capsys.readouterr().out
    assert "held-out rank correlation" in out and " predicted, " in out and " measured (evaluation " in out
    written = json.loads((tmp_path / "subnet.json").read_text())
    assert scores.truth.macs(written["config"]) <= middle and "accuracy_predicted" in written
    err = cli_error(capsys, "pick", tmp_path / "nowhere", "--macs-at-most", "1G")
    assert "surrogate.json: missing" in err and "fix:" in err


def test_deviations_that_change_no_cost_are_not_probed():
    scores = ItemScores(make_space(), n_items=60)
    accuracy, macs = scores.objectives(proxy=True)
    attn = [i for i, g in enumerate(scores.space.genes) if g.group == "attn"]

    def mlp_macs(config):  # as merged MACs ignore adapter ranks: only the MLP widths cost
        genes = scores.space.encode(config)
        return float(sum(10 - genes[i] for i in range(len(genes)) if i not in attn))

    result = run_search(scores.space, [accuracy, Objective("macs", "min", mlp_macs)], decomposed(budget=16))
    probed = {tuple(g) for g in scores.proxied}
    deviations = probe_genes(scores.space)
    assert probed == {d for d in deviations if not any(d[i] for i in attn)}
    assert result.table["probe_forwards"].fillna(0).sum() == 8 * len(probed)


def test_the_report_counts_the_probes_in_the_items_scored(tmp_path):
    from lorasearch.report.document import report_markdown

    scores = ItemScores(make_space(), n_items=60)
    result = run_search(scores.space, scores.objectives(proxy=True), decomposed(budget=16), out_dir=tmp_path / "run")
    probes = 8 * len(probe_genes(scores.space))
    assert f"{scores.forwards:,} validation items scored ({probes:,} by the decomposed surrogate's probes)" \
        in report_markdown(result)
