"""Search strategies on cheap synthetic objectives at equal evaluation budgets.

The space is a realistic 30-layer Shears space (q/k/v, up and down ranks [32, 24, 16] per layer,
90 genes, as search_spaces/smollm2-135m.yaml has for SmolLM2-135M at rank 32). The objectives:

* accuracy: a seeded analytic surrogate: every gene adds a layer- and group-dependent gain that
  saturates with rank, plus a small seeded pairwise interaction between neighbouring layers;
* MACs: the unmerged adapter MACs of SmolLM2-135M's module shapes at 128 tokens plus the base.

For NSGA-II, random search, optuna's TPE and optuna's NSGA-II, over 5 seeds: hypervolume against
evaluations, and the search machinery's own time per evaluation (objectives cost ~nothing here,
so the wall time is all machinery: asks, tells, caching, the flushed run log).

    python benchmarks/bench_search_synthetic.py             # budget 300, population 20, 5 seeds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import numpy as np
from common import environment, environment_markdown, write_results

from lorasearch.results import hypervolume_curve
from lorasearch.search import Objective, SearchSettings, run_search
from lorasearch.space import SearchSpace

STRATEGIES = ("nsga2", "random", "tpe", "optuna-nsga2")
# SmolLM2-135M: hidden 576, MLP 1536, 3 KV heads of 64 -> (d_in, d_out) of each adapted module
SHAPES = {"attn": [(576, 576), (576, 192), (576, 192)], "up": [(576, 1536)], "down": [(1536, 576)]}
TOKENS = 128
BASE_MACS = 18.1e9


def space() -> SearchSpace:
    groups = {name: {"modules": [f"m{k}" for k in range(len(shapes))], "rank": [32, 24, 16]} for name, shapes in SHAPES.items()}
    return SearchSpace.from_dict({"name": "synthetic-30", "adapter": {"rank": 32}, "num_layers": 30, "groups": groups})


class Surrogate:
    """Seeded analytic accuracy and closed-form MACs over gene vectors."""

    def __init__(self, space: SearchSpace, seed: int = 0) -> None:
        rng = np.random.default_rng(1000 + seed)
        self.space = space
        n = len(space.genes)
        self.gain = rng.gamma(2.0, 1.0, n) / n * 0.25
        self.pair = rng.normal(0, 0.002, n)
        self.cost = np.array([sum(i + o for i, o in SHAPES[g.group]) * TOKENS for g in space.genes], dtype=float)

    def accuracy(self, config) -> float:
        rank = np.array([config[k] for k in self.space.keys], dtype=float) / 32
        keep = np.sqrt(rank - 0.4)  # saturating gain of rank
        return float(0.35 + self.gain @ keep + self.pair @ (keep * np.roll(keep, 1)))

    def macs(self, config) -> float:
        rank = np.array([config[k] for k in self.space.keys], dtype=float)
        return float(BASE_MACS + self.cost @ rank)


def one_run(strategy: str, seed: int, args, out_dir=None) -> dict:
    s = space()
    surrogate = Surrogate(s)  # one fixed problem; the seed varies the search
    # Bounds span the min and max configs, so the hypervolume measures the front between them.
    acc_bounds = (surrogate.accuracy(s.max()), surrogate.accuracy(s.min()))
    macs_bounds = (surrogate.macs(s.min()), surrogate.macs(s.max()))
    objectives = [Objective("accuracy", "max", surrogate.accuracy, bounds=acc_bounds),
                  Objective("macs", "min", surrogate.macs, bounds=macs_bounds)]
    settings = SearchSettings(strategy=strategy, budget=args.budget, population=args.population, seed=seed)
    start = time.perf_counter()
    result = run_search(s, objectives, settings, out_dir=out_dir)
    seconds = time.perf_counter() - start
    hv = hypervolume_curve(result.table, result.specs, by="eval_id")
    at = {n: float(hv.loc[hv["evaluations"] <= n, "hypervolume"].max()) for n in args.checkpoints}
    return {"seconds": seconds, "evaluations": len(result.table), "hv_at": at, "front": int(result.table["is_pareto"].sum())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=int, default=300)
    p.add_argument("--population", type=int, default=20)
    p.add_argument("--seeds", type=int, default=5)
    args = p.parse_args()
    args.checkpoints = sorted({n for n in (20, 50, 100, 150, 200, 300, 500) if n < args.budget} | {args.budget})
    runs: dict[str, list[dict]] = {s: [] for s in STRATEGIES}
    for seed in range(args.seeds):
        for strategy in STRATEGIES:
            with tempfile.TemporaryDirectory() as tmp:  # with the flushed run log, as real runs write it
                runs[strategy].append(one_run(strategy, seed, args, out_dir=f"{tmp}/run"))
            r = runs[strategy][-1]
            print(f"seed {seed} {strategy:>13}: HV {r['hv_at'][args.budget]:.4f}, {r['seconds']:.1f} s", flush=True)
    summary = {}
    for strategy, rs in runs.items():
        summary[strategy] = {
            "hv_mean": {n: statistics.mean(r["hv_at"][n] for r in rs) for n in args.checkpoints},
            "hv_sd": {n: statistics.pstdev(r["hv_at"][n] for r in rs) for n in args.checkpoints},
            "ms_per_evaluation": statistics.median(1000 * r["seconds"] / r["evaluations"] for r in rs),
        }
    data = {"environment": environment(), "settings": {k: v for k, v in vars(args).items()}, "summary": summary, "runs": runs}
    write_results("search_synthetic", data, markdown(data))
    print(markdown(data))
    return 0


def markdown(d: dict) -> str:
    checkpoints = d["settings"]["checkpoints"]
    lines = ["# Search strategies on a synthetic 30-layer space (90 genes)", "", environment_markdown(d["environment"]),
             f"Settings: {d['settings']}", "",
             "Hypervolume after n evaluations, mean ± sd over seeds, normalised so that the max config's accuracy and the min config's MACs are the ideal point and the min config's accuracy and the max config's MACs the reference point (the max and min configs alone give 0):", "",
             "| strategy | " + " | ".join(f"n={n}" for n in checkpoints) + " | machinery ms/eval |",
             "|---|" + "---:|" * (len(checkpoints) + 1)]
    for strategy, s in d["summary"].items():
        cells = [f"{s['hv_mean'][n]:.4f} ± {s['hv_sd'][n]:.4f}" for n in checkpoints]
        lines.append(f"| {strategy} | " + " | ".join(cells) + f" | {s['ms_per_evaluation']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
