"""bf16 against fp32: the same subnet scored on the same items with the base in each dtype.

The base model is loaded twice through the one builder, ``--dtype fp32`` and ``--dtype bf16``
(adapters in fp32 over both); the same sub-network scores the same seeded items with option-text
scoring (fp32 log-softmax over the logits in both). Reported: each accuracy, the paired difference
with its standard error (same items), the share of items where the two pick the same option, and
seconds per item. The target: the difference is under one paired standard error.

    python benchmarks/bench_precision.py --adapter ../lorasearch-runs/ablation/today-150/adapter --items 300
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from common import DATA, environment, environment_markdown, write_results

from lorasearch.data import load_records
from lorasearch.evaluate.evaluators import MultipleChoiceEvaluator
from lorasearch.runs import NetworkSettings, build_network
from lorasearch.runs.settings import resolve_config


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--adapter", default=None, help="a super-adapter folder (default: the plain base model)")
    p.add_argument("--space", default=None)
    p.add_argument("--config", default="heuristic", help="max, min, heuristic or a JSON config")
    p.add_argument("--task", default=str(DATA / "ARC-Easy" / "test.json"))
    p.add_argument("--items", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def score(args: argparse.Namespace, dtype: str, records) -> tuple[object, float, str]:
    net = build_network(NetworkSettings(model=args.model, adapter=args.adapter, space=args.space, dtype=dtype, device="cpu"))
    config = resolve_config(net.space, args.config)
    evaluator = MultipleChoiceEvaluator(net, records, mode="text", limit=args.items, seed=0, progress=False)
    start = time.perf_counter()
    result = evaluator(config)
    return result, time.perf_counter() - start, str(next(net.model.parameters()).dtype)


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    records = load_records(args.task)
    fp32, fp32_s, fp32_dtype = score(args, "fp32", records)
    bf16, bf16_s, bf16_dtype = score(args, "bf16", records)
    a, b = np.array(fp32.item_scores), np.array(bf16.item_scores)
    diff = b - a
    paired_se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else float("nan")
    same = float(np.mean(np.array(fp32.predictions) == np.array(bf16.predictions)))
    n = len(a)
    data = {
        "model": args.model, "adapter": args.adapter, "config": args.config, "task": args.task, "items": n,
        "fp32": {"accuracy": fp32.score, "stderr": fp32.stderr, "seconds_per_item": fp32_s / n, "dtype": fp32_dtype},
        "bf16": {"accuracy": bf16.score, "stderr": bf16.stderr, "seconds_per_item": bf16_s / n, "dtype": bf16_dtype},
        "difference": float(diff.mean()), "paired_stderr": paired_se, "same_prediction": same,
        "within_one_paired_stderr": bool(abs(diff.mean()) <= paired_se) if paired_se == paired_se else bool(diff.mean() == 0),
    }
    env = environment()
    md = (
        "# bf16 against fp32 on the CPU\n\n" + environment_markdown(env)
        + f"\nModel {args.model}, adapter {args.adapter or 'none (plain base)'}, the {args.config} subnet, "
        f"{n} seeded items of {args.task}, option-text scoring.\n\n"
        "| base dtype | accuracy | s per item |\n|---|---:|---:|\n"
        f"| fp32 | {fp32.score:.4f} ± {fp32.stderr:.4f} | {fp32_s / n:.3f} |\n"
        f"| bf16 | {bf16.score:.4f} ± {bf16.stderr:.4f} | {bf16_s / n:.3f} |\n\n"
        f"Paired difference (bf16 - fp32): **{diff.mean():+.4f} ± {paired_se:.4f}**; the same option is picked on "
        f"{same:.1%} of the items. Within one paired standard error: {data['within_one_paired_stderr']}.\n"
    )
    write_results("precision", {"environment": env, **data}, md)
    print(md)


if __name__ == "__main__":
    main()
