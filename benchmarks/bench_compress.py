"""A small version of the paper's Table 2 (Shears / SQFT) on SmolLM2-135M and a commonsense mix.

Rows: untuned; plain LoRA (dense); 50 % Wanda + plain LoRA; Shears (50 % Wanda + NLS, heuristic
subnet); SQFT + SparsePEFT (merged, sparse); SQFT INT4 + adapter (sparse INT4 base, adapter
unmerged); SQFT + QA-SparsePEFT (merged INT4, sparse). Training mixes the train splits of the tasks,
accuracy is the text-mode multiple-choice accuracy on a seeded subset of each test split.

    .venv/bin/python benchmarks/bench_compress.py --quick      # minutes on 2 CPUs: few steps, small subsets
    .venv/bin/python benchmarks/bench_compress.py              # the full variant (hours on CPU; use a GPU)

Writes ``benchmarks/results/compress.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, ROOT, environment, environment_markdown, write_results  # noqa: E402

from lorasearch.compress import quantize_model, save_quantized, save_sparse, sparsify  # noqa: E402
from lorasearch.compress.sparsity import sparsity_report  # noqa: E402
from lorasearch.data import load_records, subset  # noqa: E402
from lorasearch.evaluate.evaluators import MultipleChoiceEvaluator  # noqa: E402
from lorasearch.export.exporters import export_merged  # noqa: E402
from lorasearch.models.loading import load_model  # noqa: E402
from lorasearch.results import binomial_stderr  # noqa: E402
from lorasearch.runs import NetworkSettings, build_network  # noqa: E402
from lorasearch.train.targets import encode_records  # noqa: E402
from lorasearch.train.trainer import NLSTrainer, TrainArgs  # noqa: E402

SPACE = ROOT / "search_spaces" / "smollm2-135m.yaml"
TASKS = ("ARC-Easy", "openbookqa", "boolq")  # the commonsense tasks with a train split here
PAPER = {  # Table 2 (Mistral-7B-v0.3, GSM8K): accuracy, relative to LoRA
    "untuned": (36.0, None), "LoRA (dense)": (None, None), "50% Wanda + LoRA": (44.1, 100.0),
    "Shears (Wanda + NLS, heuristic)": (45.1, 102.3), "SQFT + SparsePEFT (merged)": (50.1, 113.6),
    "SQFT INT4 + adapter": (44.5, 100.9), "SQFT + QA-SparsePEFT (merged INT4)": (44.0, 99.8),
}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="few steps, small subsets")
    p.add_argument("--steps", type=int)
    p.add_argument("--train-per-task", type=int)
    p.add_argument("--test-per-task", type=int)
    p.add_argument("--calibration-samples", type=int)
    p.add_argument("--group-size", type=int, default=64, help="SmolLM2's 576 inputs are not a multiple of 128")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--threads", type=int, help="torch CPU threads (1 keeps runs beside other jobs stable)")
    a = p.parse_args()
    quick = {"steps": 12, "train_per_task": 60, "test_per_task": 25, "calibration_samples": 16}
    full = {"steps": 300, "train_per_task": 1000, "test_per_task": 300, "calibration_samples": 128}
    for k, v in (quick if a.quick else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.tasks = a.tasks.split(",")
    return a


def train(settings: NetworkSettings, records, args, sampler: str, out: Path):
    net = build_network(settings)
    examples = encode_records(net.tokenizer, records, "text", 160)
    targs = TrainArgs(steps=args.steps, batch_size=4, lr=1e-3, warmup_steps=2, sampler=sampler,
                      checkpoint_every=10**6, device="cpu")
    trainer = NLSTrainer(net, examples, targs, out)
    trainer.prepare(overwrite=True)
    trainer.train(progress=False)
    return net


def accuracy(net, tests, config) -> tuple[float, int]:
    """Pooled text-mode accuracy over every test item, and the number of items."""
    scores, n = 0.0, 0
    for records in tests.values():
        result = MultipleChoiceEvaluator(net, records, mode="text", limit=len(records), progress=False)(config)
        scores += result.score * result.n
        n += result.n
    return scores / n, n


def merged_net(net, config, folder: Path, mode: str, space_settings):
    """Export merged, reload the merged folder as a fresh network (rank 0 effect: adapters are in the weights)."""
    export_merged(net, config, folder)
    again = build_network(NetworkSettings(model=str(folder), space=str(SPACE), adapter_mode="dense"))
    return again


def main() -> None:
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train_records, tests = [], {}
    for task in args.tasks:
        train_records += subset(load_records(DATA / task / "train.json"), args.train_per_task, 0)
        tests[task] = subset(load_records(DATA / task / "test.json"), args.test_per_task, 0)
    work = Path(tempfile.mkdtemp(prefix="bench_compress_"))
    t0 = time.time()
    loaded = load_model("default")
    sparsify(loaded.model, loaded.tokenizer, method="wanda", ratio=0.5, records=train_records,
             n_samples=args.calibration_samples, seq_len=256)
    save_sparse(loaded.model, loaded.tokenizer, work / "sparse", sparsity_report(loaded.model))
    quantize_model(loaded.model, 4, args.group_size)
    save_quantized(loaded.model, loaded.tokenizer, work / "sparse-int4")
    prep = time.time() - t0

    dense = NetworkSettings(model="default", space=str(SPACE))
    sparse = NetworkSettings(model=str(work / "sparse"), space=str(SPACE))
    int4 = NetworkSettings(model=str(work / "sparse-int4"), space=str(SPACE))
    rows = []

    def row(name, net, config, sparsity, precision, seconds):
        acc, n = accuracy(net, tests, config)
        rows.append({"method": name, "accuracy": acc, "stderr": binomial_stderr(acc, n), "sparsity": sparsity, "precision": precision, "seconds": seconds})
        print(rows[-1], flush=True)

    start = time.time()
    base = build_network(dense)
    row("untuned", base, base.space.max(), 0.0, "FP32", 0)
    plans = [
        ("LoRA (dense)", dense, "dense", "fixed", "max", False, "FP32 + FP32"),
        ("50% Wanda + LoRA", sparse, "dense", "fixed", "max", False, "FP32 + FP32"),
        ("Shears (Wanda + NLS, heuristic)", sparse, "dense", "random", "heuristic", False, "FP32 + FP32"),
        ("SQFT + SparsePEFT (merged)", sparse, "sparse", "random", "heuristic", True, "FP32"),
        ("SQFT INT4 + adapter", int4, "dense", "random", "heuristic", False, "INT4 + FP32"),
        ("SQFT + QA-SparsePEFT (merged INT4)", int4, "qa", "random", "heuristic", True, "INT4"),
    ]
    for name, settings, mode, sampler, pick, merge, precision in plans:
        start = time.time()
        s = NetworkSettings(**{**settings.__dict__, "adapter_mode": mode})
        net = train(s, train_records, args, sampler, work / name.split()[0].lower() / str(len(rows)))
        config = getattr(net.space, pick)()
        if merge:
            net = merged_net(net, config, work / f"merged-{len(rows)}", mode, s)
        model_sparsity = float(sparsity_report(net.model)["sparsity"].iloc[-1])
        row(name, net, config, model_sparsity, precision, time.time() - start)
    lora = next(r["accuracy"] for r in rows if r["method"] == "50% Wanda + LoRA")
    for r in rows:
        r["relative_to_wanda_lora"] = r["accuracy"] / lora * 100 if lora else None
        r["paper_accuracy"], r["paper_relative"] = PAPER[r["method"]]
    env = environment()
    n_test = sum(len(v) for v in tests.values())
    lines = [f"# Table 2, small: sparse and INT4 bases on SmolLM2-135M ({'quick variant' if args.quick else f'{args.steps} steps, {args.test_per_task} test items per task'})", "",
             environment_markdown(env),
             f"- tasks: {', '.join(args.tasks)}; training: {len(train_records)} records, {args.steps} steps of batch 4; "
             f"test: {n_test} items (text-mode multiple choice); Wanda: {args.calibration_samples} x 256 tokens from the "
             f"training mix; INT4 group size {args.group_size}; space {SPACE.name}; prep {prep:.0f} s", "",
             "| method | accuracy ± s.e. | relative (vs 50% Wanda + LoRA) | paper acc. | paper relative | sparsity | precision (base + adapter / base) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        rel = f"{r['relative_to_wanda_lora']:.1f}%" if r["relative_to_wanda_lora"] else "-"
        pa = f"{r['paper_accuracy']}" if r["paper_accuracy"] is not None else "-"
        pr = f"{r['paper_relative']}%" if r["paper_relative"] is not None else "-"
        lines.append(f"| {r['method']} | {r['accuracy']:.3f} ± {r['stderr']:.3f} | {rel} | {pa} | {pr} | {r['sparsity']:.1%} | {r['precision']} |")
    write_results("compress", {"environment": env, "args": vars(args), "rows": rows}, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
