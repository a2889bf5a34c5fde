"""A cheaper search, side by side: racing and a screening surrogate against plain NSGA-II, random and TPE.

Methods, all at the same budget and population, with the same seeds, in one process:
plain NSGA-II, NSGA-II + racing, NSGA-II + surrogate, NSGA-II + both, random, optuna TPE.

* ``--part synthetic``: bench_search_synthetic.py's 90-gene space and analytic accuracy, scored on
  120 validation items through a per-item noise model: item i is right for config c when its
  difficulty u_i plus a config-item noise e_ci ~ N(0, 0.15) is below c's true accuracy, so items
  are paired across configs and a partial score has the right standard error. Test accuracy is the
  true accuracy.
* ``--part real``: the SmolLM2-135M Mode B super-adapter (``--adapter``; LoNAS space, MACs move),
  option-text accuracy on 120 of its validation items against merged MACs. Item scores are
  memoised per (config, item) across methods in ``--cache`` (a config scored by one method is not
  scored again by another, and a crash loses nothing); each method is charged for every item it
  asks for, and its wall time is its item forwards times the measured seconds per item plus its
  own machinery (strategy, surrogate). Test accuracy: the front's knee and best subnets on
  ``--test-items`` held-out items per test task, paired against plain NSGA-II's.

The hypervolume's reference point follows lorasearch's rule (`lorasearch.search.bounds`), from the
max and min configs, the same for every method.

    python benchmarks/bench_search_cost.py --part synthetic --seeds 5
    python benchmarks/bench_search_cost.py --part synthetic --methods nsga2 nsga2+racing-z1 random random+racing \\
        --results search_cost_synthetic_racing          # racing at z = 1, and on random search
    python benchmarks/bench_search_cost.py --part real --adapter ../lorasearch-runs/ablation/today-150/adapter --seeds 2
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

METHODS = {
    "nsga2": {"strategy": "nsga2"},
    "nsga2+racing": {"strategy": "nsga2", "racing": True},
    "nsga2+surrogate": {"strategy": "nsga2", "surrogate": True},
    "nsga2+both": {"strategy": "nsga2", "racing": True, "surrogate": True},
    "random": {"strategy": "random"},
    "tpe": {"strategy": "tpe"},
}
DEFAULT_METHODS = list(METHODS)
METHODS.update({  # what racing does under other settings (--methods names them)
    "nsga2+racing-z1": {"strategy": "nsga2", "racing": True, "race_z": 1.0},
    "random+racing": {"strategy": "random", "racing": True},
})
FRACTIONS = (0.25, 0.35, 0.5, 1.0)  # of plain NSGA-II's item forwards
TARGETS = (0.95, 0.99)  # of plain NSGA-II's final hypervolume


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("synthetic", "real"), default="synthetic")
    p.add_argument("--seeds", type=int, default=None, help="default 5 synthetic, 2 real")
    p.add_argument("--first-seed", type=int, default=0,
                   help="run seeds first-seed .. seeds-1 (split a long real part across processes sharing --cache)")
    p.add_argument("--budget", type=int, default=100)
    p.add_argument("--population", type=int, default=10)
    p.add_argument("--items", type=int, default=120, help="validation items per full evaluation")
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    p.add_argument("--results", help="results file name (default search_cost_<part>)")
    p.add_argument("--adapter", type=Path, default=RUNS / "ablation" / "today-150" / "adapter")
    p.add_argument("--cache", type=Path, default=RUNS / "search-cost" / "item_cache.jsonl")
    p.add_argument("--test-items", type=int, default=200, help="real part: test items per task")
    p.add_argument("--seconds-per-item", type=float, default=None, help="synthetic part: the wall time model")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    args.seeds = args.seeds or (5 if args.part == "synthetic" else 2)
    return args


# --------------------------------------------------------------------------- item-wise scorers
class Memo:
    """Item scores per (config key, item), shared by every method, optionally kept on disk."""

    def __init__(self, path: Path | None = None) -> None:
        self.path, self.items = path, {}
        if path is not None:  # a line torn by a kill is cut off; its config is scored again
            for entry in read_jsonl(path, repair=True):
                self.items[tuple(entry["key"])] = entry["items"]

    def get(self, key: tuple) -> list[float]:
        return self.items.get(key, [])

    def put(self, key: tuple, items: list[float]) -> None:
        if len(items) > len(self.items.get(key, [])):
            self.items[key] = list(items)
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                append_jsonl(self.path, {"key": list(key), "items": list(items)})


class Charged:
    """One method's view of the item scores: it pays for every item it asks for, the memo computes
    each only once (``compute(config, stop)`` returns the first ``stop`` item scores)."""

    def __init__(self, space, memo: Memo, compute, n_items: int) -> None:
        self.space, self.memo, self.compute, self.n_items = space, memo, compute, n_items
        self.seen: dict[tuple, int] = {}
        self.restored: dict[tuple, int] = {}
        self.forwards, self.compute_seconds = 0, 0.0

    def score_items(self, config, stop: int | None = None) -> Measurement:
        stop = self.n_items if stop is None else stop
        key = tuple(int(g) for g in self.space.encode(config))
        items = self.memo.get(key)
        if len(items) < stop:
            start = time.perf_counter()
            items = list(self.compute(config, stop))
            self.compute_seconds += time.perf_counter() - start
            self.memo.put(key, items)
        new = max(stop - self.seen.get(key, 0), 0)
        self.seen[key] = max(self.seen.get(key, 0), stop)
        self.forwards += new
        scored = new + self.restored.pop(key, 0)
        values = items[:stop]
        mean = sum(values) / stop
        return Measurement(mean, math.sqrt(max(mean * (1 - mean), 0) / stop), stop, tuple(values), scored)

    def restore(self, config, values) -> None:
        key = tuple(int(g) for g in self.space.encode(config))
        self.restored[key] = self.restored.get(key, 0) + max(len(values) - self.seen.get(key, 0), 0)
        self.seen[key] = max(self.seen.get(key, 0), len(values))


class SyntheticItems:
    """bench_search_synthetic's accuracy, scored per item with paired difficulties and noise."""

    def __init__(self, n_items: int, noise: float = 0.15) -> None:
        from bench_search_synthetic import Surrogate, space

        self.space = space()
        self.truth = Surrogate(self.space)
        self.n_items, self.noise = n_items, noise
        self.difficulty = np.random.default_rng(2024).uniform(0, 1, n_items)

    def compute(self, config, stop: int) -> list[float]:
        key = tuple(int(g) for g in self.space.encode(config))
        p = self.truth.accuracy(config)
        eps = np.random.default_rng([*key, 11]).normal(0, self.noise, self.n_items)
        return [1.0 if u + e < p else 0.0 for u, e in zip(self.difficulty, eps)][:stop]

    def macs(self, config) -> float:
        return self.truth.macs(config)

    def test_accuracy(self, configs) -> list[float]:
        return [self.truth.accuracy(c) for c in configs]


class RealItems:
    """The SmolLM2 Mode B super-adapter: option-text accuracy and merged MACs."""

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
                         n_items=charged.n_items, restore=charged.restore,
                         bounds=bounds["accuracy"] if bounds else None)
    macs = Objective("macs", "min", problem.macs, unit="MACs (merged)", bounds=bounds["macs"] if bounds else None)
    return [accuracy, macs]


def shared_bounds(problem, memo: Memo) -> dict[str, tuple[float, float]]:
    """The reference point of every run: lorasearch's rule on the max and min configs."""
    charged = Charged(problem.space, memo, problem.compute, problem.n_items)
    objectives = objectives_for(problem, charged, None)
    measured = {w: {"accuracy": charged.score_items(getattr(problem.space, w)()).value,
                    "macs": problem.macs(getattr(problem.space, w)())} for w in ("max", "min")}
    return {s.name: (s.best, s.worst) for s in derive_specs(objectives, problem.space, measured)}


def run_method(problem, memo: Memo, bounds, method: str, seed: int, args) -> dict[str, Any]:
    charged = Charged(problem.space, memo, problem.compute, problem.n_items)
    settings = SearchSettings(budget=args.budget, population=args.population, seed=seed, **METHODS[method])
    start = time.perf_counter()
    result = run_search(problem.space, objectives_for(problem, charged, bounds), settings, log=None)
    seconds = time.perf_counter() - start
    machinery = seconds - charged.compute_seconds  # everything but computing item scores
    curve = hypervolume_curve(result.table, result.specs, by="eval_id")
    return {"result": result, "curve": curve, "forwards": charged.forwards, "machinery_seconds": machinery,
            "surrogate_seconds": result.timings.get("surrogate_seconds", 0.0), "seconds": seconds}


def front_picks(result) -> dict[str, dict]:
    """The knee and the most accurate config of a run's front."""
    front = result.pareto.sort_values("eval_id")
    knee = front.iloc[knee_index(to_minimisation(front, result.specs))]
    best = front.sort_values(["accuracy", "macs"], ascending=[False, True]).iloc[0]
    return {"knee": json.loads(knee["config"]), "best": json.loads(best["config"])}


def cost_to_reach(curve, target: float, seconds_per_item: float, machinery_per_eval: float) -> tuple[float, float]:
    """(item forwards, modelled wall seconds) when the hypervolume first reaches ``target`` (inf if never)."""
    reached = curve[curve["hypervolume"] >= target - 1e-12]
    if reached.empty:
        return math.inf, math.inf
    row = reached.iloc[0]
    return float(row["item_forwards"]), float(row["item_forwards"]) * seconds_per_item + machinery_per_eval * row["evaluations"]


def hv_at(curve, forwards: float) -> float:
    within = curve[curve["item_forwards"] <= forwards]
    return float(within["hypervolume"].max()) if len(within) else 0.0


# --------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.part == "synthetic":
        problem, memo = SyntheticItems(args.items), Memo()
    else:
        problem, memo = RealItems(args), Memo(args.cache)
    bounds = shared_bounds(problem, memo)
    runs: dict[str, list[dict]] = {m: [] for m in args.methods}
    for seed in range(args.first_seed, args.seeds):
        for method in args.methods:
            r = run_method(problem, memo, bounds, method, seed, args)
            runs[method].append(r)
            print(f"seed {seed} {method:>16}: HV {r['curve']['hypervolume'].iloc[-1]:.4f}, {r['forwards']:,} items, "
                  f"machinery {r['machinery_seconds']:.1f} s (surrogate {r['surrogate_seconds']:.2f} s)", flush=True)
    seconds_per_item = seconds_per_item_of(problem, args)
    summary = summarise(problem, runs, seconds_per_item, args)
    data = {"environment": environment(), "part": args.part, "settings": {k: str(v) for k, v in vars(args).items()},
            "bounds": bounds, "seconds_per_item": seconds_per_item, "summary": summary}
    md = markdown(data)
    write_results(args.results or f"search_cost_{args.part}", data, md)
    print(md)
    return data


def seconds_per_item_of(problem, args) -> float:
    if args.seconds_per_item is not None:
        return args.seconds_per_item
    if isinstance(problem, RealItems):
        items, seconds = 0, 0.0
        for result in problem.evaluator.cache.values():
            items, seconds = items + result.n, seconds + result.seconds
        return seconds / items if items else 0.17
    return 0.17  # SmolLM2-135M, option-text items on one CPU core (benchmarks/RESULTS.md)


def summarise(problem, runs, seconds_per_item: float, args) -> dict:
    plain = runs.get("nsga2")
    summary: dict[str, Any] = {}
    tests = test_scores(problem, runs)
    for method, rs in runs.items():
        entry = {"forwards": [r["forwards"] for r in rs], "final_hv": [float(r["curve"]["hypervolume"].iloc[-1]) for r in rs],
                 "machinery_seconds": [r["machinery_seconds"] for r in rs],
                 "surrogate_seconds": [r["surrogate_seconds"] for r in rs]}
        if plain:
            for t in TARGETS:
                costs = [cost_to_reach(r["curve"], t * float(p["curve"]["hypervolume"].iloc[-1]), seconds_per_item,
                                       r["machinery_seconds"] / max(len(r["result"].table), 1))
                         for r, p in zip(rs, plain)]
                entry[f"forwards_to_{int(t * 100)}"] = [c[0] for c in costs]
                entry[f"seconds_to_{int(t * 100)}"] = [c[1] for c in costs]
                entry[f"share_of_plain_forwards_to_{int(t * 100)}"] = [c[0] / p["forwards"] for c, p in zip(costs, plain)]
            for f in FRACTIONS:
                entry[f"hv_at_{int(f * 100)}pct"] = [hv_at(r["curve"], f * p["forwards"]) for r, p in zip(rs, plain)]
        entry["test"] = tests.get(method, {})
        summary[method] = entry
    return summary


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
                mine = scores[json.dumps(p[which], sort_keys=True)]
                plain = scores[json.dumps(picks["nsga2"][seed][which], sort_keys=True)] if "nsga2" in picks else mine
                values.append(float(np.mean(mine)))
                d = np.asarray(mine, dtype=float) - np.asarray(plain, dtype=float)
                se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else 0.0
                diffs.append((float(d.mean()), se))
            entry[which] = {"accuracy": values, "vs_plain": diffs}
        out[method] = entry
    return out


def fmt(values, digits=3) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "never"
    mean = statistics.mean(finite)
    sd = statistics.pstdev(finite) if len(finite) > 1 else 0.0
    missing = len(values) - len(finite)
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" + (f" ({missing} never)" if missing else "")


def markdown(d: dict) -> str:
    s, seconds = d["summary"], d["seconds_per_item"]
    part = "synthetic 90-gene space, per-item noise" if d["part"] == "synthetic" else "SmolLM2-135M Mode B super-adapter"
    lines = [f"# A cheaper search: {part}", "", environment_markdown(d["environment"]),
             f"Settings: {d['settings']}", "",
             f"Reference point (lorasearch's rule, from the max and min configs, the same for every method): "
             f"{d['bounds']}. Wall time = item forwards x {seconds:.3f} s per item"
             + (" (measured)" if d["part"] == "real" else " (SmolLM2's measured rate, as a model)")
             + " + each method's own machinery. Mean ± sd over seeds.", "",
             "| method | item forwards | share of plain's to 95 % HV | to 99 % HV | wall s to 95 % | HV at 25 % of plain's items | at 35 % | at 50 % | final HV | surrogate fit s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for method, e in s.items():
        lines.append(
            f"| {method} | {fmt(e['forwards'], 0)} | {fmt(e.get('share_of_plain_forwards_to_95', []))} | "
            f"{fmt(e.get('share_of_plain_forwards_to_99', []))} | {fmt(e.get('seconds_to_95', []), 0)} | "
            f"{fmt(e.get('hv_at_25pct', []), 4)} | {fmt(e.get('hv_at_35pct', []), 4)} | {fmt(e.get('hv_at_50pct', []), 4)} | "
            f"{fmt(e['final_hv'], 4)} | {fmt(e['surrogate_seconds'], 2)} |")
    lines += ["", "Test accuracy of each method's knee and best subnets (mean over seeds; paired difference against "
              "plain NSGA-II's pick of the same seed, mean ± paired SE, averaged over seeds"
              + ("; the synthetic test score is the model's true, noise-free accuracy, so its SE is 0" if d["part"] == "synthetic"
                 else f"; {d['settings'].get('test_items')} test items from each of ARC-Easy, BoolQ, OpenBookQA") + "):", "",
              "| method | knee | knee vs plain | best | best vs plain |", "|---|---:|---:|---:|---:|"]
    for method, e in s.items():
        t = e["test"]
        if not t:
            continue
        cells = []
        for which in ("knee", "best"):
            diffs = t[which]["vs_plain"]
            cells += [f"{statistics.mean(t[which]['accuracy']):.4f}",
                      f"{statistics.mean(x for x, _ in diffs):+.4f} ± {statistics.mean(y for _, y in diffs):.4f}"]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
