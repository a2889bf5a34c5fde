"""SparsePEFT forward+backward: our fused masked path against the reference's dense-delta path.

Reference (SQFT's PEFT patch): ``F.linear(x, W) + F.linear(dropout(x), (B @ A) * s * M)``: two
``T x in x out`` matmuls per layer. Ours (`SparseLoRALinear` without dropout): one linear with the
fused weight ``W + (s * B @ A) * M``. Plain dense LoRA (``x A^T B^T``) is timed for context.
Shapes are SmolLM2-135M's MLP (576 <-> 1536) and attention (576 x 576), rank 32, 50 % mask.

    .venv/bin/python benchmarks/bench_sparse_forward.py [--tokens 1024] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, environment_markdown, write_results  # noqa: E402

SHAPES = {"up_proj 576->1536": (576, 1536), "down_proj 1536->576": (1536, 576), "q_proj 576->576": (576, 576)}


def reference(x, W, A, B, M, s):
    return F.linear(x, W) + F.linear(x, (B @ A) * s * M)


def fused(x, W, A, B, M, s):
    return F.linear(x, W + (B @ A) * s * M)


def lora(x, W, A, B, M, s):
    return F.linear(x, W) + F.linear(F.linear(x, A), B) * s


def timed(fn, args, repeats: int) -> float:
    times = []
    for step in range(repeats + 3):
        start = time.perf_counter()
        fn(*args).square().mean().backward()
        if step >= 3:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    a = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for label, (i, o) in SHAPES.items():
        W = torch.randn(o, i) * (torch.rand(o, i) > 0.5)
        M = W != 0
        A = torch.randn(a.rank, i, requires_grad=True)
        B = torch.randn(o, a.rank, requires_grad=True)
        x = torch.randn(a.tokens, i)
        args = (x, W, A, B, M, 2.0)
        torch.testing.assert_close(fused(*args), reference(*args), atol=1e-3, rtol=1e-4)
        t = {name: timed(fn, args, a.repeats) for name, fn in (("reference", reference), ("fused", fused), ("lora", lora))}
        rows.append({"layer": label, "tokens": a.tokens, "rank": a.rank, **{f"{k}_ms": v * 1e3 for k, v in t.items()},
                     "speedup_vs_reference": t["reference"] / t["fused"]})
    env = environment()
    lines = ["# SparsePEFT forward+backward: fused masked weight vs the reference's dense masked delta", "",
             environment_markdown(env), "",
             "| layer | tokens | rank | reference (ms) | ours, fused (ms) | plain LoRA (ms) | speed-up vs reference |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['tokens']} | {r['rank']} | {r['reference_ms']:.2f} | {r['fused_ms']:.2f} | "
                     f"{r['lora_ms']:.2f} | {r['speedup_vs_reference']:.2f}x |")
    lines += ["", "Median of forward + backward (loss = mean square), fp32 CPU. Reference: `F.linear(x, W) + "
              "F.linear(x, (B@A)*s*M)` (two T x in x out matmuls); ours: `F.linear(x, W + (B@A)*s*M)` (one). "
              "With adapter dropout on, ours falls back to the reference form (the dropped input needs its own path)."]
    write_results("sparse_forward", {"environment": env, "rows": rows}, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
