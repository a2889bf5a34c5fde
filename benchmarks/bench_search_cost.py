"""A cheaper search that can be trusted, side by side: racing with stated error rates and the decomposed
surrogate against plain NSGA-II, random and TPE, in item forwards (the search's real cost).

Methods (``--methods``; each at ``--budget`` evaluations, or ``--short-budget`` for those in SHORT):
plain NSGA-II, NSGA-II + racing, NSGA-II + the decomposed surrogate (probes of every single-gene
deviation of the max config on ``--surrogate-items`` items, an additive model that seeds the first
population and screens offspring while its held-out rank correlation is >= 0.5), both, random, TPE,
and the previous round's ridge surrogate (``nsga2+ridge``).

* ``--part racing``: racing's error rates by simulation with lorasearch's own `race_config`: how
  often a candidate as good as its 1 or 5 cheaper rivals is stopped (the false stops, bounded by
  alpha = 5 %), and how often one 10 points worse is (the power), at 120 items with 2 or 1 looks;
* ``--part synthetic``: bench_search_synthetic.py's 90-gene space and analytic accuracy, scored on
  120 items through a per-item model: item i is right for config c when its difficulty u_i plus a
  noise e_ci is below c's true accuracy, where e_ci is a sum of per-(gene, choice, item) terms, so
  configs that share most genes share most of their item noise, as subnets of one super-network do;
  the proxy is the item's margin (accuracy - u_i - e_ci, whose sign is the item's score);
* ``--part real``: a SmolLM2-135M Mode B super-adapter (``--adapter``), option-text accuracy on
  120 of its validation items against merged MACs; the proxy is the log-probability of the correct
  option. Item scores (and proxies) are memoised per (config, item) across methods, seeds and
  processes in ``--cache`` (a crash loses nothing); each method is charged for every item it asks
  for. Test accuracy: the front's knee and best subnets on ``--test-items`` held-out items per test
  task, paired against plain NSGA-II's.

The hypervolume's bounds follow lorasearch's rule (`lorasearch.search.bounds`: the max and min
configs' scores widened by two standard errors), the same for every method and seed (the subset
seed is fixed, so every seed scores the same items). The goal is read off as: the share of plain
NSGA-II's item forwards a method needs to reach 99 % of plain's final hypervolume (median over
seeds); how many of plain's final front points the method's front, within 25 % of plain's
forwards, fails to cover within one standard error (a point of no higher cost at most one s.e.
below); and whether its median hypervolume is at least TPE's at every equal cost.

    python benchmarks/bench_search_cost.py --part racing
    python benchmarks/bench_search_cost.py --part synthetic --seeds 5
    python benchmarks/bench_search_cost.py --part real --adapter ADAPTER --seeds 5 --short-budget 40
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import DATA, RUNS, environment, environment_markdown, write_results

from lorasearch.io import append_jsonl, read_jsonl
from lorasearch.results.pick import knee_index
from lorasearch.results.table import hypervolume_curve, to_minimisation
from lorasearch.search import Measurement, Objective, SearchSettings, run_search
from lorasearch.search.bounds import derive_specs
from lorasearch.search.decomposed import DecomposedModel, probe_genes

DECOMPOSED = {"surrogate": True, "surrogate_model": "decomposed"}
METHODS = {  # in the order they run, the comparisons the goal needs first
    "nsga2": {"strategy": "nsga2"},
    "nsga2+decomposed": {"strategy": "nsga2", **DECOMPOSED},
    "tpe": {"strategy": "tpe"},
    "nsga2+decomposed+learn": {"strategy": "nsga2", **DECOMPOSED, "surrogate_learn": True},  # effects updated in the loop
    "nsga2+decomposed+racing": {"strategy": "nsga2", "racing": True, **DECOMPOSED},
    "nsga2+racing": {"strategy": "nsga2", "racing": True},
    "random": {"strategy": "random"},
}
DEFAULT_METHODS = list(METHODS)
METHODS.update({  # named with --methods
    "nsga2+ridge": {"strategy": "nsga2", "surrogate": True},
    "nsga2+decomposed-seeds": {"strategy": "nsga2", **DECOMPOSED, "surrogate_min_rho": 1.0},  # seeds, never screens
})
SHORT = ("nsga2+decomposed", "nsga2+decomposed+racing", "nsga2+decomposed-seeds", "nsga2+decomposed+learn", "random",
         "tpe")
FRACTIONS = (0.1, 0.25, 0.35, 0.5, 1.0)  # of plain NSGA-II's item forwards
TARGETS = (0.95, 0.99)  # of plain NSGA-II's final hypervolume
GOAL_SHARE, GOAL_TARGET = 0.25, 0.99
GRID = np.linspace(0.05, 1.0, 20)  # shares of plain's forwards at which the median curves are compared
FIDELITY_ITEMS = (4, 8, 16)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("racing", "synthetic", "real"), default="synthetic")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first-seed", type=int, default=0,
                   help="run seeds first-seed .. seeds-1 (split a long real part across processes sharing --cache)")
    p.add_argument("--budget", type=int, default=100)
    p.add_argument("--short-budget", type=int, default=None,
                   help=f"budget of {', '.join(SHORT)} (default --budget): the goal is read at 25 %% of plain's forwards")
    p.add_argument("--population", type=int, default=10)
    p.add_argument("--items", type=int, default=120, help="validation items per full evaluation")
    p.add_argument("--surrogate-items", type=int, default=8, help="items per probe of the decomposed surrogate")
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    p.add_argument("--results", help="results file name (default search_cost_trusted_<part>)")
    p.add_argument("--adapter", type=Path, default=RUNS / "search-cost" / "modeb-150" / "adapter")
    p.add_argument("--cache", type=Path, default=RUNS / "search-cost" / "item_cache.jsonl")
    p.add_argument("--test-items", type=int, default=200, help="real part: test items per task")
    p.add_argument("--trials", type=int, default=4000, help="racing part: simulated races per setting")
    p.add_argument("--test-methods", nargs="*", default=None,
                   help="methods whose knee and best subnets are scored on test items (default all; none: skip)")
    p.add_argument("--no-fidelity", action="store_true", help="skip the probe-size fidelity check (split runs)")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


# --------------------------------------------------------------------------- item-wise scorers
class Memo:
    """Per (kind, config key), the item values computed so far, shared by every method, optionally on disk."""

    def __init__(self, path: Path | None = None) -> None:
        self.path, self.items = path, {}
        if path is not None:  # a line torn by a kill is cut off; its config is scored again
            for entry in read_jsonl(path, repair=True):
                self.items[(entry.get("kind", "items"), tuple(entry["key"]))] = entry["items"]

    def get(self, kind: str, key: tuple) -> list[float]:
        return self.items.get((kind, key), [])

    def put(self, kind: str, key: tuple, items: list[float]) -> None:
        if len(items) > len(self.items.get((kind, key), [])):
            self.items[(kind, key)] = list(items)
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                append_jsonl(self.path, {"kind": kind, "key": list(key), "items": list(items)})


class Charged:
    """One method's view of the item scores: it pays for every item it asks for (0/1 scores and proxies
    apart), the memo computes each only once."""

    def __init__(self, problem, memo: Memo) -> None:
        self.problem, self.memo = problem, memo
        self.seen: dict[tuple, int] = {}
        self.restored: dict[tuple, int] = {}
        self.forwards, self.compute_seconds = 0, 0.0

    def _values(self, kind: str, config, stop: int) -> tuple[list[float], int]:
        key = tuple(int(g) for g in self.problem.space.encode(config))
        items = self.memo.get(kind, key)
        if len(items) < stop:
            start = time.perf_counter()
            compute = self.problem.compute if kind == "items" else self.problem.proxy
            items = list(compute(config, stop))
            self.compute_seconds += time.perf_counter() - start
            self.memo.put(kind, key, items)
        seen = (kind, key)
        new = max(stop - self.seen.get(seen, 0), 0)
        self.seen[seen] = max(self.seen.get(seen, 0), stop)
        self.forwards += new
        return items[:stop], new + self.restored.pop(seen, 0)

    def score_items(self, config, stop: int | None = None) -> Measurement:
        stop = self.problem.n_items if stop is None else stop
        values, scored = self._values("items", config, stop)
        mean = sum(values) / stop
        return Measurement(mean, math.sqrt(max(mean * (1 - mean), 0) / stop), stop, tuple(values), scored)

    def proxy(self, config, stop: int) -> Measurement:
        values, scored = self._values("proxy", config, stop)
        return Measurement(sum(values) / stop, n=stop, items=tuple(values), scored=scored)

    def restore(self, config, values) -> None:
        seen = ("items", tuple(int(g) for g in self.problem.space.encode(config)))
        self.restored[seen] = self.restored.get(seen, 0) + max(len(values) - self.seen.get(seen, 0), 0)
        self.seen[seen] = max(self.seen.get(seen, 0), len(values))


class SyntheticItems:
    """bench_search_synthetic's accuracy, scored per item; the item noise of a config is a sum of
    per-(gene, choice, item) terms, so near configs share most of it (see the module docstring)."""

    def __init__(self, n_items: int, noise: float = 0.15) -> None:
        from bench_search_synthetic import Surrogate, space

        self.space = space()
        self.truth = Surrogate(self.space)
        self.n_items, self.noise = n_items, noise
        rng = np.random.default_rng(2024)
        self.difficulty = rng.uniform(0, 1, n_items)
        widest = max(len(g.choices) for g in self.space.genes)
        self.terms = rng.normal(0, 1, (len(self.space.genes), widest, n_items)) / math.sqrt(len(self.space.genes))

    def margin(self, config) -> np.ndarray:
        genes = self.space.encode(config)
        eps = self.noise * self.terms[np.arange(len(genes)), genes].sum(axis=0)
        return self.truth.accuracy(config) - self.difficulty - eps

    def compute(self, config, stop: int) -> list[float]:
        return [1.0 if m > 0 else 0.0 for m in self.margin(config)[:stop]]

    def proxy(self, config, stop: int) -> list[float]:
        return [float(m) for m in self.margin(config)[:stop]]

    def macs(self, config) -> float:
        return self.truth.macs(config)

    def test_accuracy(self, configs) -> list[float]:
        return [self.truth.accuracy(c) for c in configs]


class RealItems:
    """A SmolLM2 Mode B super-adapter: option-text accuracy (and its log-probability proxy), merged MACs."""

    def __init__(self, args: argparse.Namespace) -> None:
        from lorasearch.cost import CostModel
        from lorasearch.evaluate.evaluators import MultipleChoiceEvaluator
        from lorasearch.runs import NetworkSettings, build_network

        self.net = build_network(NetworkSettings(model="default", adapter=str(args.adapter), device="cpu"))
        self.space = self.net.space
        self.evaluator = MultipleChoiceEvaluator(self.net, args.adapter.parent / "validation.jsonl", mode="text",
                                                 limit=args.items, seed=0, progress=False)
        self.n_items = self.evaluator.n_items
        self.cost = CostModel(self.net, seq_len=128, deployment="merged", reference="analytic")
        self.test_items = args.test_items

    def compute(self, config, stop: int) -> list[float]:
        return list(self.evaluator.score_items(config, stop).item_scores)

    def proxy(self, config, stop: int) -> list[float]:
        return list(self.evaluator.score_proxy(config, stop).item_scores)

    def macs(self, config) -> float:
        return float(self.cost.macs(config))

    def test_accuracy(self, configs) -> list[list[float]]:
        """Per config, its item scores on the test items (ARC-E, BoolQ, OBQA test sets)."""
        from lorasearch.data import load_records
        from lorasearch.evaluate.evaluators import MultipleChoiceEvaluator

        records = []
        for task in ("ARC-Easy", "boolq", "openbookqa"):
            records += load_records(DATA / task / "test.json")[: self.test_items * 20]
        evaluator = MultipleChoiceEvaluator(self.net, records, mode="text", limit=self.test_items * 3, seed=1, progress=False)
        return [list(evaluator(c).item_scores) for c in configs]


# ----------------------------------------------------------------------------------- one method
def objectives_for(problem, charged: Charged, bounds: dict[str, tuple[float, float]] | None) -> list[Objective]:
    accuracy = Objective("accuracy", "max", charged.score_items, expensive=True, partial=charged.score_items,
                         n_items=problem.n_items, restore=charged.restore, proxy=charged.proxy,
                         bounds=bounds["accuracy"] if bounds else None)
    macs = Objective("macs", "min", problem.macs, unit="MACs (merged)", bounds=bounds["macs"] if bounds else None)
    return [accuracy, macs]


def shared_bounds(problem, memo: Memo) -> dict[str, tuple[float, float]]:
    """The bounds of every run: lorasearch's rule on the max and min configs (with their standard errors)."""
    charged = Charged(problem, memo)
    objectives = objectives_for(problem, charged, None)
    measured = {}
    for which in ("max", "min"):
        config = getattr(problem.space, which)()
        m = charged.score_items(config)
        measured[which] = {"accuracy": m.value, "accuracy_stderr": m.stderr, "macs": problem.macs(config)}
    return {s.name: (s.best, s.worst) for s in derive_specs(objectives, problem.space, measured)}


def run_method(problem, memo: Memo, bounds, method: str, seed: int, args) -> dict[str, Any]:
    charged = Charged(problem, memo)
    budget = args.short_budget if (args.short_budget and method in SHORT) else args.budget
    settings = SearchSettings(budget=budget, population=args.population, seed=seed,
                              surrogate_items=args.surrogate_items, **METHODS[method])
    start = time.perf_counter()
    result = run_search(problem.space, objectives_for(problem, charged, bounds), settings)
    seconds = time.perf_counter() - start
    curve = hypervolume_curve(result.table, result.specs, by="eval_id")
    assert result.item_forwards == charged.forwards, (result.item_forwards, charged.forwards)  # nothing unpaid
    front = result.pareto[["eval_id", "accuracy", "accuracy_stderr", "macs"]].to_dict("records")
    table = result.table[["eval_id", "accuracy", "accuracy_stderr", "macs", "partial"]]
    if isinstance(problem, SyntheticItems):  # the noise-free accuracy of every config, for the true hypervolume
        table = table.assign(true=problem.test_accuracy([json.loads(c) for c in result.table["config"]]))
    return {"result": result, "curve": curve, "forwards": charged.forwards, "seconds": seconds,
            "machinery_seconds": seconds - charged.compute_seconds, "front": front,
            "evaluations": table.assign(spent=curve["item_forwards"].to_numpy()).to_dict("records"),
            "surrogate": {k: result.timings[k] for k in ("surrogate_rho", "surrogate_checks", "surrogate_screened")
                          if k in result.timings}}


# ------------------------------------------------------------------------------------- metrics
def cost_to_reach(curve, target: float) -> float:
    """Item forwards when the hypervolume first reaches ``target`` (inf if never)."""
    reached = curve[curve["hypervolume"] >= target - 1e-12]
    return float(reached["item_forwards"].iloc[0]) if len(reached) else math.inf


def hv_at(curve, forwards: float) -> float:
    within = curve[curve["item_forwards"] <= forwards + 1e-9]
    return float(within["hypervolume"].max()) if len(within) else 0.0


def true_hv(evaluations: list[dict], spent_at_most: float, specs) -> float:
    """The hypervolume of the front picked on measured accuracy from the full evaluations within
    ``spent_at_most`` item forwards, taken at those points' true (noise-free) accuracies: what the
    front is worth, without the luck of the items that put its points there (synthetic part only)."""
    import pandas as pd

    from lorasearch.results.table import hypervolume, pareto_mask

    mine = pd.DataFrame([e for e in evaluations if e["spent"] <= spent_at_most + 1e-9 and not e["partial"]])
    if mine.empty or "true" not in mine:
        return float("nan")
    front = mine[pareto_mask(to_minimisation(mine, specs))]
    return hypervolume(to_minimisation(front.assign(accuracy=front["true"]), specs))


def uncovered(plain_front: list[dict], evaluations: list[dict], spent_at_most: float) -> int:
    """Plain's front points that no full evaluation within ``spent_at_most`` item forwards covers: none
    of no higher MACs scores at least the point's accuracy less one of its standard errors."""
    mine = [e for e in evaluations if e["spent"] <= spent_at_most + 1e-9 and not e["partial"]]
    missing = 0
    for p in plain_front:
        if not any(e["macs"] <= p["macs"] and e["accuracy"] >= p["accuracy"] - p["accuracy_stderr"] for e in mine):
            missing += 1
    return missing


def summarise(runs: dict[str, list[dict]]) -> dict:
    plain = runs["nsga2"]
    summary: dict[str, Any] = {}
    for method, rs in runs.items():
        entry: dict[str, Any] = {
            "forwards": [r["forwards"] for r in rs],
            "final_hv": [float(r["curve"]["hypervolume"].iloc[-1]) for r in rs],
            "machinery_seconds": [r["machinery_seconds"] for r in rs],
            "surrogate": [r["surrogate"] for r in rs],
        }
        for t in TARGETS:
            costs = [cost_to_reach(r["curve"], t * float(p["curve"]["hypervolume"].iloc[-1])) for r, p in zip(rs, plain)]
            entry[f"share_to_{int(t * 100)}"] = [c / p["forwards"] for c, p in zip(costs, plain)]
        for f in FRACTIONS:
            entry[f"hv_at_{int(f * 100)}pct"] = [hv_at(r["curve"], f * p["forwards"]) for r, p in zip(rs, plain)]
        entry["uncovered_at_25pct"] = [uncovered(p["front"], r["evaluations"], GOAL_SHARE * p["forwards"])
                                       for r, p in zip(rs, plain)]
        specs = rs[0]["result"].specs
        entry["true_hv_at_25pct"] = [true_hv(r["evaluations"], GOAL_SHARE * p["forwards"], specs) for r, p in zip(rs, plain)]
        entry["true_hv_final"] = [true_hv(r["evaluations"], math.inf, specs) for r in rs]
        entry["plain_front_points"] = [len(p["front"]) for p in plain]
        entry["median_curve"] = median_curve(rs, plain)
        summary[method] = entry
    if "tpe" in summary:
        for method, entry in summary.items():
            entry["vs_tpe"] = lead(entry["median_curve"], summary["tpe"]["median_curve"])
    return summary


def median_curve(rs: list[dict], plain: list[dict]) -> list[float | None]:
    """The median over seeds of the hypervolume at each share of plain's forwards in GRID (None past
    the point where some seed's run ended)."""
    out = []
    for share in GRID:
        values = [hv_at(r["curve"], share * p["forwards"]) for r, p in zip(rs, plain)
                  if r["curve"]["item_forwards"].iloc[-1] >= share * p["forwards"] - 1e-9]
        out.append(statistics.median(values) if len(values) == len(rs) else None)
    return out


def lead(mine: list[float | None], tpe: list[float | None]) -> dict:
    """Where both median curves exist: the shares at which this one is at least TPE's, and the worst gap."""
    pairs = [(s, a, b) for s, a, b in zip(GRID, mine, tpe) if a is not None and b is not None]
    if not pairs:
        return {"compared": 0}
    ahead = [bool(a >= b - 1e-12) for _, a, b in pairs]
    return {"compared": len(pairs), "ahead": sum(ahead), "every": all(ahead),
            "worst_gap": min(a - b for _, a, b in pairs), "up_to_share": float(pairs[-1][0])}


def fidelity(problem, memo: Memo, runs: dict[str, list[dict]]) -> dict:
    """The decomposed model's rank correlation with measured accuracy on every config plain NSGA-II
    evaluated in full (none took part in fitting it), for several probe sizes; the probes are charged
    to no method (they are the prefix of the larger ones, memoised)."""
    from scipy.stats import spearmanr

    charged = Charged(problem, memo)
    out = {}
    configs = {}
    for r in runs.get("nsga2", []):
        for _, row in r["result"].table.iterrows():
            if not row["partial"]:
                configs[tuple(json.loads(row["genes"]))] = float(row["accuracy"])
    deviations = probe_genes(problem.space)
    macs = {key: problem.macs(problem.space.decode(key)) for key in deviations}
    costly = [key for key in deviations if key == deviations[0] or macs[key] != macs[deviations[0]]]  # as the engine
    for k in FIDELITY_ITEMS:
        if k > problem.n_items:
            continue
        probed = {key: list(charged.proxy(problem.space.decode(key), k).items) for key in costly}
        model = DecomposedModel.fit(problem.space, "accuracy", "max", probed, {key: {} for key in deviations}, proxy=True)
        keys = [key for key in configs if key not in probed]
        rho = spearmanr(model.scores(keys), [configs[key] for key in keys]).statistic if len(keys) > 2 else float("nan")
        out[k] = {"rho": float(rho), "configs": len(keys), "probe_forwards": k * len(probed)}
    return out


def test_scores(problem, runs) -> dict:
    """Knee and best subnets' test accuracy per method and seed, with paired differences against plain NSGA-II."""
    picks = {m: [front_picks(r["result"]) for r in rs] for m, rs in runs.items()}
    configs = {json.dumps(c, sort_keys=True): c for ps in picks.values() for p in ps for c in p.values()}
    keys = list(configs)
    scores = dict(zip(keys, problem.test_accuracy([configs[k] for k in keys])))
    out = {}
    for method, ps in picks.items():
        entry = {}
        for which in ("knee", "best"):
            values, diffs = [], []
            for seed, p in enumerate(ps):
                mine = np.atleast_1d(scores[json.dumps(p[which], sort_keys=True)])
                plain = np.atleast_1d(scores[json.dumps(picks["nsga2"][seed][which], sort_keys=True)])
                values.append(float(np.mean(mine)))
                d = np.asarray(mine, dtype=float) - np.asarray(plain, dtype=float)
                se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else 0.0
                diffs.append((float(d.mean()), se))
            entry[which] = {"accuracy": values, "vs_plain": diffs}
        out[method] = entry
    return out


def front_picks(result) -> dict[str, dict]:
    """The knee and the most accurate config of a run's front."""
    front = result.pareto.sort_values("eval_id")
    knee = front.iloc[knee_index(to_minimisation(front, result.specs))]
    best = front.sort_values(["accuracy", "macs"], ascending=[False, True]).iloc[0]
    return {"knee": json.loads(knee["config"]), "best": json.loads(best["config"])}


# ------------------------------------------------------------------------------ racing by simulation
def racing_rates(args) -> dict:
    """False stops and power of racing (`lorasearch.search.racing.race_config`) by simulation."""
    from lorasearch.search.racing import DEFAULT_ALPHA, DEFAULT_MIN_DISCORDANT

    rng = np.random.default_rng(0)
    rows = []
    for chunks, looks in (((0.25, 0.5, 1.0), 2), ((0.5, 1.0), 1)):
        for rivals in (1, 5):
            for worse in (0.0, 0.05, 0.10, 0.15):
                outcomes = [one_race(rng, rivals, worse, chunks, args.items) for _ in range(args.trials)]
                rows.append({"looks": looks, "chunks": list(chunks), "rivals": rivals, "worse": worse,
                             "stopped": float(np.mean([stopped for stopped, _ in outcomes])),
                             "items_saved": 1 - sum(items for _, items in outcomes) / (args.trials * args.items)})
                print(rows[-1], flush=True)
    return {"alpha": DEFAULT_ALPHA, "min_discordant": DEFAULT_MIN_DISCORDANT, "rows": rows}


def one_race(rng, rivals: int, worse: float, chunks, n: int) -> tuple[bool, int]:
    """One candidate ``worse`` below ``rivals`` cheaper rivals of accuracy 0.6, raced on ``n`` shared items:
    (stopped, items scored)."""
    from lorasearch.search.racing import DEFAULT_ALPHA, DEFAULT_MIN_DISCORDANT, FrontPoint, RacePlan, race_config, stops_for

    difficulty = rng.uniform(0, 1, n)
    front = tuple(FrontPoint(i, {"macs": 1.0}, tuple((difficulty + rng.normal(0, 0.15, n) < 0.6) * 1.0))
                  for i in range(rivals))
    mine = (difficulty + rng.normal(0, 0.15, n) < 0.6 - worse) * 1.0
    done = [0]  # items scored so far: a longer prefix scores only the new ones

    def score(config, k):
        new, done[0] = max(k - done[0], 0), max(done[0], k)
        return Measurement(float(mine[:k].mean()), n=k, items=tuple(mine[:k]), scored=new)

    accuracy = Objective("accuracy", "max", lambda c: score(c, n), partial=score, n_items=n)
    plan = RacePlan("accuracy", stops_for(n, chunks), DEFAULT_ALPHA, DEFAULT_MIN_DISCORDANT,
                    {"accuracy": "max", "macs": "min"}, front)
    values = race_config([accuracy, Objective("macs", "min", lambda c: 1.0)], {}, plan)
    return bool(values.get("partial")), int(values["item_forwards"])


# --------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.part == "racing":
        data = {"environment": environment(), "part": "racing", "settings": {k: str(v) for k, v in vars(args).items()},
                "racing": racing_rates(args)}
        md = racing_markdown(data)
        write_results(args.results or "search_cost_trusted_racing", data, md)
        print(md)
        return data
    if args.part == "synthetic":
        problem, memo = SyntheticItems(args.items), Memo()
    else:
        problem, memo = RealItems(args), Memo(args.cache)
    methods = ["nsga2"] + [m for m in args.methods if m != "nsga2"]
    bounds = shared_bounds(problem, memo)
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    name = args.results or f"search_cost_trusted_{args.part}"
    for seed in range(args.first_seed, args.seeds):
        for method in methods:
            r = run_method(problem, memo, bounds, method, seed, args)
            runs[method].append(r)
            print(f"seed {seed} {method:>24}: HV {r['curve']['hypervolume'].iloc[-1]:.4f}, {r['forwards']:,} items, "
                  f"{r['seconds']:.0f} s {r['surrogate']}", flush=True)
            if seed + 1 < args.seeds or method != methods[-1]:  # what is done so far, in case the rest never finishes
                done = {m: rs for m, rs in runs.items() if len(rs) == len(runs["nsga2"])}  # (a rerun takes it from --cache)
                write_results(name, *report(args, bounds, done, seeds_done=seed + 1 - args.first_seed))
    tested = {m: rs for m, rs in runs.items() if args.test_methods is None or m in args.test_methods or m == "nsga2"}
    data, md = report(args, bounds, runs, fidelity=None if args.no_fidelity else fidelity(problem, memo, runs),
                      test=test_scores(problem, tested) if args.test_methods != ["none"] else None)
    write_results(name, data, md)
    print(md)
    return data


def report(args, bounds, runs, seeds_done: int | None = None, fidelity: dict | None = None,
           test: dict | None = None) -> tuple[dict, str]:
    data = {"environment": environment(), "part": args.part, "settings": {k: str(v) for k, v in vars(args).items()},
            "seeds_done": seeds_done, "bounds": bounds, "summary": summarise(runs), "fidelity": fidelity or {},
            "test": test or {}, "curves": {m: [r["curve"].to_dict("list") for r in rs] for m, rs in runs.items()}}
    return data, markdown(data)


# ------------------------------------------------------------------------------------ markdown
def med(values, digits=3) -> str:
    """Median (and every seed's value) of a list; inf reads 'never'."""
    def one(v):
        return "never" if not math.isfinite(v) else f"{v:.{digits}f}"

    if not values:
        return "-"
    ordered = sorted(values)
    mid = statistics.median(ordered) if all(math.isfinite(v) for v in ordered) else ordered[len(ordered) // 2]
    return f"**{one(mid)}** ({', '.join(one(v) for v in values)})" if len(values) > 1 else one(values[0])


def markdown(d: dict) -> str:
    s = d["summary"]
    part = "synthetic 90-gene space, per-item noise" if d["part"] == "synthetic" else "SmolLM2-135M Mode B super-adapter"
    partial = f" (partial: {d['seeds_done']} seeds so far)" if d.get("seeds_done") else ""
    lines = [f"# A cheaper search that can be trusted: {part}{partial}", "", environment_markdown(d["environment"]),
             f"Settings: {d['settings']}", "",
             f"Bounds (lorasearch's rule, from the max and min configs with two standard errors, the same for every "
             f"method): {d['bounds']}. Median over seeds in bold, then each seed.", "",
             "| method | item forwards | share of plain's to 95 % HV | to 99 % HV | HV at 10 % / 25 % / 50 % of plain's | "
             "final HV | plain front points uncovered at 25 % | median HV >= TPE's |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for method, e in s.items():
        vs = e.get("vs_tpe", {})
        ahead = (f"{vs['ahead']} of {vs['compared']} (to {vs['up_to_share']:.0%}; worst {vs['worst_gap']:+.4f})"
                 if vs.get("compared") else "-")
        hv = " / ".join(f"{statistics.median(e[f'hv_at_{p}pct']):.4f}" for p in (10, 25, 50))
        lines.append(f"| {method} | {med(e['forwards'], 0)} | {med(e['share_to_95'])} | {med(e['share_to_99'])} | {hv} | "
                     f"{med(e['final_hv'], 4)} | {med(e['uncovered_at_25pct'], 0)} of {med(e['plain_front_points'], 0)} | "
                     f"{ahead} |")
    if d["part"] == "synthetic":
        lines += ["", "The same fronts at their true (noise-free) accuracies: the hypervolume of the front picked on "
                  "validation, without the luck that put its points there (median, then each seed):", "",
                  "| method | true HV at 25 % of plain's forwards | true final HV |", "|---|---:|---:|"]
        lines += [f"| {m} | {med(e['true_hv_at_25pct'], 4)} | {med(e['true_hv_final'], 4)} |" for m, e in s.items()]
    lines += ["", "Decomposed surrogate: held-out rank correlation per seed (configs evaluated in full after it was "
              "fitted), and the batches it screened:", ""]
    for method, e in s.items():
        info = [x for x in e["surrogate"] if "surrogate_rho" in x]
        if info:
            lines.append(f"- {method}: " + "; ".join(
                f"rho {x['surrogate_rho']:.2f} on {x['surrogate_checks']}, {x['surrogate_screened']} screened" for x in info))
    if d.get("fidelity"):
        lines += ["", "Its rank correlation with measured accuracy on every config plain NSGA-II evaluated, by items "
                  "per probe: " + "; ".join(f"{k} items ({v['probe_forwards']:,} forwards): rho {v['rho']:.2f} on "
                                            f"{v['configs']}" for k, v in d["fidelity"].items())]
    if not d["test"]:
        return "\n".join(lines) + "\n"
    lines += ["", "Test accuracy of each method's knee and best subnets (mean over seeds; paired difference against "
              "plain NSGA-II's pick of the same seed, mean ± paired SE, averaged over seeds"
              + ("; the synthetic test score is the true, noise-free accuracy" if d["part"] == "synthetic" else "") + "):", "",
              "| method | knee | knee vs plain | best | best vs plain |", "|---|---:|---:|---:|---:|"]
    for method, t in d["test"].items():
        cells = []
        for which in ("knee", "best"):
            diffs = t[which]["vs_plain"]
            cells += [f"{statistics.mean(t[which]['accuracy']):.4f}",
                      f"{statistics.mean(x for x, _ in diffs):+.4f} ± {statistics.mean(y for _, y in diffs):.4f}"]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def racing_markdown(d: dict) -> str:
    r = d["racing"]
    lines = ["# Racing's error rates by simulation", "", environment_markdown(d["environment"]),
             f"alpha {r['alpha']}, at least {r['min_discordant']} discordant items, {d['settings']['items']} items, "
             f"{d['settings']['trials']} races per row; items right when difficulty + N(0, 0.15) < accuracy (0.6 for "
             "the rivals), paired across configs.", "",
             "| looks (chunks) | rivals | candidate worse by | stopped | items saved |", "|---|---:|---:|---:|---:|"]
    for row in r["rows"]:
        lines.append(f"| {row['looks']} ({', '.join(f'{c:g}' for c in row['chunks'])}) | {row['rivals']} | "
                     f"{row['worse']:.2f} | {row['stopped']:.3f} | {row['items_saved']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
