"""The GPU check, ready to run: one command, about 10 minutes on one large GPU.

On a GPU (``--device cuda``, the default where one is visible):

1. a random Llama-2-7B-shaped model in bf16, built on the GPU from ``search_spaces/models/llama-2-7b.json``
   (no download), the Shears space over it (rank 32 on q/k/v, up, down);
2. an NLS training step (random sub-network) against a stock PEFT LoRA step on the same base, same
   targets and rank (fp32 adapters over the bf16 base in both), batch 8 x 256 tokens: seconds per
   step and the ratio;
3. evaluating the heuristic sub-network inside the super-network against the same subnet merged
   into a plain model: forward tokens per second of each and the ratio;
4. evaluations per hour for a 200-item validation subset (option-text scoring of the synthetic
   task, batched by the default GPU token budget), and peak GPU memory;
5. on a random 1.1B Llama (TinyLlama's shape) saved with a tokenizer, the GPU path step by step: a
   few training steps through the trainer (``--dtype auto``: bf16 where the GPU supports it, after
   its preflight), Wanda ``sparsify`` and INT4 ``quantize`` layer by layer on the GPU, a
   QA-SparsePEFT training step on the result, importance reordering of a Mode B space (the logits
   before and after), and the ``latency`` objective of the max, heuristic and min subnets;
6. a short search end to end through the command line with ``--device cuda``: ``train`` (a few NLS
   steps), ``search`` (budget 8), ``export`` (merged; pruned for the tiny Mode B space), and, where
   there are two GPUs, the same search with ``--backend processes --workers 2``, each worker pinned
   to one GPU;
7. the test suite's CUDA-parametrised tests (``pytest -k cuda``).

``--device cpu --tiny`` runs the same steps on tiny models in seconds (the two-process search on two
CPU workers); the test suite runs it that way, so the script cannot rot. Results go to
``benchmarks/results/gpu.{json,md}`` (``--out`` elsewhere).

    python benchmarks/bench_gpu.py                       # on the GPU machine
    python benchmarks/bench_gpu.py --device cpu --tiny   # anywhere, in seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from common import ROOT, environment, environment_markdown, write_results
from peft import LoraConfig, get_peft_model

from lorasearch import SearchSpace, SuperNetwork
from lorasearch.cost import measure_latency
from lorasearch.data import synthetic_task
from lorasearch.evaluate.evaluators import MultipleChoiceEvaluator
from lorasearch.export.exporters import merged_copy
from lorasearch.models.loading import byte_tokenizer, config_from_file, load_model, resolve_device, tiny_config
from lorasearch.runs import NetworkSettings, SparsifySettings, build_network, prepare_training, quantize_base, sparsify_base
from lorasearch.runs.settings import TaskSettings, batching
from lorasearch.train.reorder import reorder_network
from lorasearch.train.trainer import TrainArgs, base_dtype, response_loss

SHEARS = ROOT / "search_spaces" / "llama-shears.yaml"
LLAMA_7B = ROOT / "search_spaces" / "models" / "llama-2-7b.json"
TINY_SPACE = ROOT / "search_spaces" / "tiny-llama.yaml"
# Mode B over the 1.1B Llama (32 query heads, 4 key/value heads: head counts in whole groups of 8).
MODE_B_1B = {
    "name": "llama-1b-mode-b", "adapter": {"rank": 16, "alpha": 32}, "per_layer": "model.layers.{i}",
    "groups": {"qkv": {"modules": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], "rank": [16, 8]},
               "mlp": {"width": [1.0, 0.75, 0.5], "channels": "mlp"}, "heads": {"heads": [32, 24, 16]}},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto, cuda or cpu")
    p.add_argument("--tiny", action="store_true", help="tiny models: every step in seconds (what the test suite runs)")
    p.add_argument("--rounds", type=int, default=None, help="timed repetitions of each kind (default 10, tiny 2)")
    p.add_argument("--items", type=int, default=200, help="validation items per evaluation")
    p.add_argument("--skip-pytest", action="store_true", help="do not run the CUDA-parametrised tests")
    p.add_argument("--out", type=Path, default=None, help="write the results here instead of benchmarks/results")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (2 if args.tiny else 10)
    return args


# ----------------------------------------------------------------------------------- models
def random_base(device: torch.device, tiny: bool) -> torch.nn.Module:
    """A random model: Llama-2-7B's shape in bf16 built on the device, or a tiny Llama in fp32."""
    if tiny:
        return load_model("tiny-llama", device=device, dtype="fp32", with_tokenizer=False).model
    from transformers import AutoModelForCausalLM

    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config_from_file(LLAMA_7B), dtype=torch.bfloat16)
    return model.eval()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


# ------------------------------------------------------------------------------- training step
def training_steps(device: torch.device, tiny: bool, rounds: int) -> dict:
    """Seconds per optimizer step of NLS (a random sub-network per step) and of stock PEFT LoRA."""
    space = TINY_SPACE if tiny else SHEARS
    net = SuperNetwork(random_base(device, tiny), space)
    adapter = net.space.adapter
    targets = sorted({n.rsplit(".", 1)[-1] for n, m in net.elastic.items() if m.lora_A is not None})
    peft_model = get_peft_model(random_base(device, tiny), LoraConfig(r=adapter.rank, lora_alpha=adapter.effective_alpha,
                                                                      target_modules=targets, lora_dropout=0.0))
    batch_size, seq = (4, 32) if tiny else (8, 256)
    ids = torch.randint(3, 250 if tiny else 32000, (batch_size, seq), device=device,
                        generator=torch.Generator(device=device).manual_seed(1))
    labels = ids.clone()
    labels[:, : seq // 2] = -100  # the prompt half carries no loss, as in training
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    net.train_adapters()
    net.model.train()
    peft_model.train()
    nls_opt = torch.optim.AdamW(net.adapter_parameters(), lr=1e-4)
    peft_opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    rng = torch.Generator().manual_seed(2)

    def nls_step():
        net.activate(net.space.sample(int(torch.randint(0, 2**31, (1,), generator=rng))))
        response_loss(net.model, batch).backward()
        nls_opt.step()
        nls_opt.zero_grad(set_to_none=True)

    def peft_step():
        response_loss(peft_model, batch).backward()
        peft_opt.step()
        peft_opt.zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {"nls": [], "peft": []}
    for n in range(rounds + 1):  # the first round warms up and is dropped
        for name, fn in (("nls", nls_step), ("peft", peft_step)):
            seconds = timed(fn, device)
            if n:
                times[name].append(seconds)
    medians = {k: statistics.median(v) for k, v in times.items()}
    adapter_dtype = next(m.adapter_dtype for m in net.elastic.values() if m.lora_A is not None)
    return {"seconds_per_step": medians, "ratio_nls_over_peft": medians["nls"] / medians["peft"],
            "tokens_per_step": batch_size * seq, "adapter_dtype": str(adapter_dtype)}


# ------------------------------------------------------------------------------------ evaluation
def evaluation(device: torch.device, tiny: bool, rounds: int, items: int) -> dict:
    """The elastic heuristic subnet against the same subnet merged; evaluations per hour; peak memory."""
    space = TINY_SPACE if tiny else SHEARS
    net = SuperNetwork(random_base(device, tiny), space, tokenizer=byte_tokenizer())
    with torch.no_grad():
        for p in net.adapter_parameters():
            p.normal_(0.0, 0.02)
    heuristic = net.space.heuristic()
    with net.activated(heuristic):
        plain = merged_copy(net, device)  # beside the super-network, on the GPU
    batch_size, seq = (4, 32) if tiny else (16, 512)
    ids = torch.randint(3, 250, (batch_size, seq), device=device, generator=torch.Generator(device=device).manual_seed(3))
    tokens: dict[str, list[float]] = {"elastic": [], "merged": []}
    with torch.inference_mode():
        for n in range(rounds + 1):
            for name, model in (("elastic", net.model), ("merged", plain)):
                with net.activated(heuristic):
                    seconds = timed(lambda m=model: m(input_ids=ids, logits_to_keep=1), device)
                if n:
                    tokens[name].append(batch_size * seq / seconds)
    per_second = {k: statistics.median(v) for k, v in tokens.items()}
    del plain
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    limits = batching(TaskSettings(), device, net.model)
    evaluator = MultipleChoiceEvaluator(net, synthetic_task(items, seed=0), mode="text", limit=items, progress=False,
                                        **limits)
    seconds = timed(lambda: evaluator(heuristic), device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "tokens_per_second": per_second,
        "ratio_elastic_over_merged_time": per_second["merged"] / per_second["elastic"],
        "evaluation_seconds": seconds,
        "items": items,
        "evaluations_per_hour": 3600 / seconds,
        "batching": limits,
        "peak_gpu_memory_gib": peak,
    }


# ------------------------------------------------------------------------------- the 1.1B model
def save_random_model(work: Path, tiny: bool) -> tuple[Path, Path]:
    """A random model saved with a tokenizer (tiny-llama, or a 1.1B Llama in bf16), and its space."""
    folder = work / "model"
    if tiny:
        model = load_model("tiny-llama", with_tokenizer=False).model
        space = TINY_SPACE
    else:  # a 1.1B Llama (TinyLlama's shape): large enough to use the GPU, quick to save and load
        from transformers import AutoModelForCausalLM

        config = tiny_config("llama", hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                             num_attention_heads=32, num_key_value_heads=4)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        space = SHEARS
    model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder, space


# ------------------------------------------------------------------------------ the GPU path
def gpu_path(device: torch.device, tiny: bool, work: Path, folder: Path, space: Path) -> dict:
    """Training steps, sparsify, quantize, a QA-SparsePEFT step, reordering and latency on ``device``."""
    records = synthetic_task(160, seed=0)
    task = work / "task.jsonl"
    task.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
    where = {"device": str(device)}
    preflights: list[str] = []

    def log(line: str) -> None:
        if line.startswith("preflight: "):
            preflights.append(line)

    results: dict = {}

    args = TrainArgs(steps=3, batch_size=8, warmup_steps=1, checkpoint_every=3, reorder=False)
    trainer = prepare_training(NetworkSettings(model=str(folder), space=str(space), **where), [str(task)], args,
                               work / "steps", max_length=128, log=log)
    done = trainer.train(progress=False)
    results["training"] = {"steps": done.steps, "seconds_per_step": done.seconds / done.steps, "loss": done.final_loss,
                           "dtype": str(base_dtype(trainer.net)).removeprefix("torch."),
                           "loss_scaling": trainer.scaler is not None}

    calibration = SparsifySettings(method="wanda", ratio=0.5, calibration=str(task), samples=8 if tiny else 32,
                                   calibration_seq_len=32 if tiny else 256, calibration_batch=4 if tiny else 8)
    start = time.perf_counter()
    report = sparsify_base(NetworkSettings(model=str(folder), **where), calibration, work / "sparse", log=log)
    results["sparsify"] = {"seconds": time.perf_counter() - start, "sparsity": float(report["sparsity"].iloc[-1])}
    start = time.perf_counter()
    zeros = quantize_base(NetworkSettings(model=str(work / "sparse"), **where), work / "int4", 4, 32 if tiny else 128,
                          log=log)
    results["quantize"] = {"seconds": time.perf_counter() - start, "zeros": zeros}

    qa = prepare_training(NetworkSettings(model=str(work / "int4"), space=str(space), adapter_mode="qa", **where),
                          [str(task)], TrainArgs(steps=1, batch_size=4, warmup_steps=0, checkpoint_every=1),
                          work / "qa", max_length=128, log=log)
    done = qa.train(progress=False)
    results["qa_step"] = {"seconds": done.seconds, "loss": done.final_loss, "finite": bool(done.final_loss == done.final_loss)}

    mode_b = TINY_SPACE if tiny else SearchSpace.from_dict(MODE_B_1B)
    net = build_network(NetworkSettings(model=str(folder), **where), space=mode_b if isinstance(mode_b, SearchSpace)
                        else SearchSpace.load(mode_b))
    ids = torch.randint(3, 250, (2, 32), generator=torch.Generator().manual_seed(4)).to(device)
    with torch.inference_mode():
        before = net.model(ids).logits.float()
    start = time.perf_counter()
    reorder_network(net, records, samples=8 if tiny else 32, seq_len=32 if tiny else 128, batch_size=8)
    seconds = time.perf_counter() - start
    with torch.inference_mode():
        after = net.model(ids).logits.float()
    results["reorder"] = {"seconds": seconds, "max_logit_change": float((after - before).abs().max())}

    seq = 16 if tiny else 512
    latency = {name: measure_latency(net, getattr(net.space, name)(), seq, n=3 if tiny else 10, warmup=1 if tiny else 3)
               for name in ("max", "heuristic", "min")}
    results["latency"] = {"seq_len": seq, "seconds": latency, "speedup_min_over_max": latency["max"] / latency["min"]}
    results["preflight"] = preflights
    return results


# ------------------------------------------------------------------------------------ end to end
def end_to_end(device: torch.device, tiny: bool, work: Path, folder: Path, space: Path) -> dict:
    """train, search and export through the CLI on the saved random model; a two-process search where
    there are two GPUs (on two CPU workers with --tiny on the CPU)."""
    cli = [sys.executable, "-m", "lorasearch.cli"]
    common = ["--model", str(folder), "--device", str(device)] + ([] if tiny else ["--dtype", "bf16"])
    search = ["search", *common, "--adapter", str(work / "train" / "adapter"), "--task",
              str(work / "train" / "validation.jsonl"), "--limit", "20", "--budget", "8", "--population", "4"]
    steps = [
        ("train", cli + ["train", *common, "--space", str(space), "--steps", "5", "--batch-size", "8",
                         "--out", str(work / "train"), "--checkpoint-every", "5"]),
        ("search", cli + [*search, "--out", str(work / "search")]),
        ("export", cli + ["export", str(work / "search"), "--pick", "knee", "--format", "pruned" if tiny else "merged"]),
    ]
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    two = gpus >= 2 or device.type == "cpu"
    if two:
        steps.append(("two_processes", cli + [*search, "--backend", "processes", "--workers", "2",
                                               "--out", str(work / "search-2")]))
    seconds = {}
    for name, command in steps:
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds[name] = time.perf_counter() - start
        if done.returncode:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    results = {"seconds": seconds, "evaluations": len((work / "search" / "evaluations.jsonl").read_text().splitlines())}
    if two:
        local, parallel = (pd.read_csv(work / run / "results.csv") for run in ("search", "search-2"))
        results["two_processes"] = {
            "workers": "2 GPUs, one each" if gpus >= 2 else "2 CPU workers",
            "evaluations": len(parallel),
            "same_configs_as_local": bool((local["genes"] == parallel["genes"]).all()) if "genes" in local else None,
            "largest_accuracy_difference": float((local["accuracy"] - parallel["accuracy"]).abs().max()),
        }
    else:
        results["two_processes"] = {"skipped": f"{gpus} GPU: needs two"}
    return results


def cuda_tests() -> dict:
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda",
                           str(ROOT / "tests")], capture_output=True, text=True, cwd=ROOT)
    return {"returncode": done.returncode, "summary": done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""}


# ------------------------------------------------------------------------------------- report
def path_model(results: dict) -> str:
    return "tiny-llama" if results["model"] == "tiny-llama" else "1.1B Llama"


def markdown(results: dict, env: dict) -> str:
    train, evaluate = results["training"], results["evaluation"]
    peak = evaluate["peak_gpu_memory_gib"]
    lines = [
        f"# GPU check ({results['model']} on {results['device']})", "", environment_markdown(env),
        "| figure | value |", "|---|---:|",
        f"| NLS step (random subnet), s | {train['seconds_per_step']['nls']:.4f} |",
        f"| PEFT LoRA step, s | {train['seconds_per_step']['peft']:.4f} |",
        f"| NLS / PEFT step time | **{train['ratio_nls_over_peft']:.3f}x** |",
        f"| elastic heuristic subnet, tokens/s | {evaluate['tokens_per_second']['elastic']:,.0f} |",
        f"| the same subnet merged, tokens/s | {evaluate['tokens_per_second']['merged']:,.0f} |",
        f"| elastic / merged forward time | **{evaluate['ratio_elastic_over_merged_time']:.3f}x** |",
        f"| one evaluation of {evaluate['items']} items, s | {evaluate['evaluation_seconds']:.2f} |",
        f"| evaluations per hour | **{evaluate['evaluations_per_hour']:,.0f}** |",
        f"| peak GPU memory, GiB | {peak:.1f} |" if peak is not None else "| peak GPU memory | (no GPU) |",
    ]
    path = results["gpu_path"]
    steps, latency = path["training"], path["latency"]["seconds"]
    lines += [
        f"| trainer steps ({path_model(results)}, --dtype auto: {steps['dtype']}"
        f"{', loss scaling' if steps['loss_scaling'] else ''}), s per step | {steps['seconds_per_step']:.3f} |",
        f"| Wanda sparsify (layer by layer on the device), s | {path['sparsify']['seconds']:.1f} "
        f"({path['sparsify']['sparsity']:.1%} zeros) |",
        f"| INT4 quantize, s | {path['quantize']['seconds']:.1f} |",
        f"| QA-SparsePEFT training step, s | {path['qa_step']['seconds']:.2f} (loss {path['qa_step']['loss']:.3f}) |",
        f"| importance reordering, s (largest logit change) | {path['reorder']['seconds']:.1f} "
        f"({path['reorder']['max_logit_change']:.1e}) |",
        f"| latency objective, ms per {path['latency']['seq_len']} tokens: max / heuristic / min | "
        f"{1e3 * latency['max']:.1f} / {1e3 * latency['heuristic']:.1f} / {1e3 * latency['min']:.1f} |",
    ]
    e2e = results["end_to_end"]
    lines.append(f"| train / search / export through the CLI, s | {e2e['seconds']['train']:.0f} / "
                 f"{e2e['seconds']['search']:.0f} / {e2e['seconds']['export']:.0f} ({e2e['evaluations']} evaluations) |")
    two = e2e["two_processes"]
    if "skipped" in two:
        lines.append(f"| two-process search | skipped ({two['skipped']}) |")
    else:
        lines.append(f"| two-process search ({two['workers']}), s | {e2e['seconds']['two_processes']:.0f} "
                     f"({two['evaluations']} evaluations; largest accuracy difference from the local run "
                     f"{two['largest_accuracy_difference']:.1e}) |")
    if results.get("cuda_tests"):
        lines.append(f"| CUDA-parametrised tests | {results['cuda_tests']['summary']} |")
    lines += ["", f"Adapters in {train['adapter_dtype']} over the {results['dtype']} base in both training steps; "
              f"{train['tokens_per_step']} tokens per step. Evaluation batching: {evaluate['batching']}.", "",
              "Preflight lines:", "", *[f"- `{line}`" for line in path["preflight"]]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    results = {"device": str(device), "model": "tiny-llama" if args.tiny else "Llama-2-7B shape (random)",
               "dtype": "fp32" if args.tiny else "bf16"}
    results["training"] = training_steps(device, args.tiny, args.rounds)
    results["evaluation"] = evaluation(device, args.tiny, args.rounds, min(args.items, 40) if args.tiny else args.items)
    with tempfile.TemporaryDirectory() as work:
        folder, space = save_random_model(Path(work), args.tiny)
        results["gpu_path"] = gpu_path(device, args.tiny, Path(work), folder, space)
        results["end_to_end"] = end_to_end(device, args.tiny, Path(work), folder, space)
    if device.type == "cuda" and not args.skip_pytest:
        results["cuda_tests"] = cuda_tests()
    env = environment()
    name = "gpu" if not args.tiny else "gpu_tiny"
    paths = write_results(name, {"environment": env, **results}, markdown(results, env), folder=args.out)
    print(markdown(results, env))
    print("wrote", *paths)
    return results


if __name__ == "__main__":
    main()
