"""A small version of the paper's Table 2 (Shears / SQFT) on SmolLM2-135M and a commonsense mix.

Rows: untuned; plain LoRA (dense); 50 % Wanda + plain LoRA; Shears (50 % Wanda + NLS, heuristic
subnet); SQFT + SparsePEFT (merged, sparse); SQFT INT4 + adapter (sparse INT4 base, adapter
unmerged); SQFT + QA-SparsePEFT (merged INT4, sparse). The INT4 base is round-to-nearest; the
``-gptq`` rows repeat the INT4 rows on a GPTQ base (llm-compressor's GPTQ, calibrated on the same
texts as Wanda), and ``int4-base`` / ``int4-base-gptq`` score the two untuned INT4 bases: each GPTQ
row carries its paired difference to the RTN row on the same items. Training mixes the train splits
of the tasks, accuracy is the text-mode multiple-choice accuracy on a seeded subset of each test split.

    .venv/bin/python benchmarks/bench_compress.py --quick      # minutes on 2 CPUs: few steps, small subsets
    .venv/bin/python benchmarks/bench_compress.py              # the full variant (hours on CPU; use a GPU)
    .venv/bin/python benchmarks/bench_compress.py --rows qa --name compress_qa_after \
        --before benchmarks/results/compress_qa_before.json     # some rows only, paired against another run

``--rows`` runs some rows only (keys: untuned, lora, wanda-lora, shears, sparsepeft, int4-adapter,
qa, int4-base, int4-base-gptq, int4-adapter-gptq, qa-gptq). Every row keeps its per-item scores, so ``--before FILE`` adds the paired difference to the
same rows of an earlier run on the same items (same options, e.g. an older lorasearch on
``PYTHONPATH``). Writes ``benchmarks/results/<name>.{json,md}`` (default name ``compress``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, ROOT, environment, environment_markdown, write_results  # noqa: E402

from lorasearch.compress import quantize_model, save_quantized, save_sparse, sparsify  # noqa: E402
from lorasearch.compress.gptq import gptq_quantize_model  # noqa: E402
from lorasearch.compress.sparsity import sparsity_report  # noqa: E402
from lorasearch.data import load_records, subset  # noqa: E402
from lorasearch.evaluate.evaluators import MultipleChoiceEvaluator  # noqa: E402
from lorasearch.models.calibration import calibration_tokens  # noqa: E402
from lorasearch.export.exporters import export_merged  # noqa: E402
from lorasearch.models.loading import load_model  # noqa: E402
from lorasearch.results import binomial_stderr  # noqa: E402
from lorasearch.results.noise import paired_difference  # noqa: E402
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
ROWS = {"untuned": "untuned", "lora": "LoRA (dense)", "wanda-lora": "50% Wanda + LoRA",
        "shears": "Shears (Wanda + NLS, heuristic)", "sparsepeft": "SQFT + SparsePEFT (merged)",
        "int4-adapter": "SQFT INT4 + adapter", "qa": "SQFT + QA-SparsePEFT (merged INT4)",
        "int4-base": "SQFT INT4 base (RTN), untuned", "int4-base-gptq": "SQFT INT4 base (GPTQ), untuned",
        "int4-adapter-gptq": "SQFT INT4 (GPTQ) + adapter", "qa-gptq": "SQFT + QA-SparsePEFT (merged INT4, GPTQ base)"}
RTN_OF = {"int4-base-gptq": "int4-base", "int4-adapter-gptq": "int4-adapter", "qa-gptq": "qa"}  # paired rows


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
    p.add_argument("--rows", default=",".join(ROWS), help=f"rows to run, of {','.join(ROWS)}")
    p.add_argument("--name", default="compress", help="results file name under benchmarks/results/")
    p.add_argument("--before", type=Path, help="an earlier results JSON to pair the same rows with")
    p.add_argument("--model", default="default", help="the base (tiny-llama with --space search_spaces/tiny-llama.yaml "
                   "checks the script in seconds; the figures are SmolLM2's)")
    p.add_argument("--space", type=Path, default=SPACE, help="space file the rows train")
    a = p.parse_args()
    quick = {"steps": 12, "train_per_task": 60, "test_per_task": 25, "calibration_samples": 16}
    full = {"steps": 300, "train_per_task": 1000, "test_per_task": 300, "calibration_samples": 128}
    for k, v in (quick if a.quick else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.tasks = a.tasks.split(",")
    a.rows = a.rows.split(",")
    unknown = set(a.rows) - set(ROWS)
    if unknown:
        p.error(f"--rows: unknown {sorted(unknown)}; use {','.join(ROWS)}")
    return a


def train(settings: NetworkSettings, records, args, sampler: str, out: Path):
    net = build_network(settings)
    examples = encode_records(net.tokenizer, records, "text", 160)
    targs = TrainArgs(steps=args.steps, batch_size=4, lr=1e-3, warmup_steps=2, sampler=sampler,
                      checkpoint_every=10**6)  # the device is the network's (build_network: auto)
    trainer = NLSTrainer(net, examples, targs, out)
    trainer.prepare(overwrite=True)
    trainer.train(progress=False)
    return net


def accuracy(net, tests, config) -> tuple[float, list[float]]:
    """Pooled text-mode accuracy over every test item, and the per-item scores (tasks in order)."""
    items: list[float] = []
    for records in tests.values():
        result = MultipleChoiceEvaluator(net, records, mode="text", limit=len(records), progress=False)(config)
        items += list(result.item_scores)
    return sum(items) / len(items), items


def qa_base(net) -> str | None:
    """Which base a QA-SparsePEFT network trained against (None for other modes; lorasearch before
    issue 25 recorded nothing: it always used the de-quantised base)."""
    if getattr(net, "adapter_mode", None) != "qa":
        return None
    return (getattr(net, "adapter_metadata", None) or {}).get("qa_base", "dequantized (not recorded)")


def merged_net(net, config, folder: Path, mode: str, space_settings):
    """Export merged, reload the merged folder as a fresh network (rank 0 effect: adapters are in the weights)."""
    export_merged(net, config, folder)
    again = build_network(NetworkSettings(model=str(folder), space=space_settings.space, adapter_mode="dense"))
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
    loaded = load_model(args.model)
    sparsify(loaded.model, loaded.tokenizer, method="wanda", ratio=0.5, records=train_records,
             n_samples=args.calibration_samples, seq_len=256)
    save_sparse(loaded.model, loaded.tokenizer, work / "sparse", sparsity_report(loaded.model))
    quantize_model(loaded.model, 4, args.group_size)
    save_quantized(loaded.model, loaded.tokenizer, work / "sparse-int4")
    if any(key in RTN_OF for key in args.rows):  # GPTQ on the same sparse base, calibrated on Wanda's texts
        sparse_model = load_model(str(work / "sparse"))
        tokens = calibration_tokens(sparse_model.tokenizer, train_records, args.calibration_samples, 256)
        start = time.time()
        gptq_quantize_model(sparse_model.model, tokens, 4, args.group_size)
        print(f"GPTQ: {time.time() - start:.0f} s", flush=True)
        save_quantized(sparse_model.model, sparse_model.tokenizer, work / "sparse-int4-gptq", {"method": "gptq"})
    prep = time.time() - t0

    space = str(args.space)
    dense = NetworkSettings(model=args.model, space=space)
    sparse = NetworkSettings(model=str(work / "sparse"), space=space)
    int4 = NetworkSettings(model=str(work / "sparse-int4"), space=space)
    int4_gptq = NetworkSettings(model=str(work / "sparse-int4-gptq"), space=space)
    rows = []

    def row(name, net, config, sparsity, precision, seconds, base_used=None):
        acc, items = accuracy(net, tests, config)
        rows.append({"method": name, "accuracy": acc, "stderr": binomial_stderr(acc, len(items)), "sparsity": sparsity,
                     "precision": precision, "seconds": seconds, "qa_base": base_used, "item_scores": items})
        print({k: v for k, v in rows[-1].items() if k != "item_scores"}, flush=True)

    if "untuned" in args.rows:
        base = build_network(dense)
        row("untuned", base, base.space.max(), 0.0, "FP32", 0)
    for key, settings in (("int4-base", int4), ("int4-base-gptq", int4_gptq)):
        if key in args.rows:  # fresh adapters add nothing: the INT4 base alone
            base = build_network(settings)
            row(ROWS[key], base, base.space.max(), float(sparsity_report(base.model)["sparsity"].iloc[-1]), "INT4", 0)
    plans = [
        ("lora", dense, "dense", "fixed", "max", False, "FP32 + FP32"),
        ("wanda-lora", sparse, "dense", "fixed", "max", False, "FP32 + FP32"),
        ("shears", sparse, "dense", "random", "heuristic", False, "FP32 + FP32"),
        ("sparsepeft", sparse, "sparse", "random", "heuristic", True, "FP32"),
        ("int4-adapter", int4, "dense", "random", "heuristic", False, "INT4 + FP32"),
        ("qa", int4, "qa", "random", "heuristic", True, "INT4"),
        ("int4-adapter-gptq", int4_gptq, "dense", "random", "heuristic", False, "INT4 + FP32"),
        ("qa-gptq", int4_gptq, "qa", "random", "heuristic", True, "INT4"),
    ]
    for key, settings, mode, sampler, pick, merge, precision in plans:
        if key not in args.rows:
            continue
        name = ROWS[key]
        start = time.time()
        torch.manual_seed(0)  # each row starts alike, whichever rows run before it
        s = NetworkSettings(**{**settings.__dict__, "adapter_mode": mode})
        net = train(s, train_records, args, sampler, work / name.split()[0].lower() / key)
        config = getattr(net.space, pick)()
        base_used = qa_base(net)
        if merge:
            net = merged_net(net, config, work / f"merged-{key}", mode, s)
        model_sparsity = float(sparsity_report(net.model)["sparsity"].iloc[-1])
        row(name, net, config, model_sparsity, precision, time.time() - start, base_used)
    lora = next((r["accuracy"] for r in rows if r["method"] == "50% Wanda + LoRA"), None)
    before = {r["method"]: r for r in json.loads(args.before.read_text())["rows"]} if args.before else {}
    by_method = {r["method"]: r for r in rows}
    for r in rows:
        r["relative_to_wanda_lora"] = r["accuracy"] / lora * 100 if lora else None
        r["paper_accuracy"], r["paper_relative"] = PAPER.get(r["method"], (None, None))
        rtn_key = next((RTN_OF[k] for k, name in ROWS.items() if name == r["method"] and k in RTN_OF), None)
        rtn = by_method.get(ROWS[rtn_key]) if rtn_key else None
        if rtn is not None:  # GPTQ minus RTN on the same items
            r["vs_rtn"] = paired_difference(r["item_scores"], rtn["item_scores"])
        earlier = before.get(r["method"])
        if earlier is not None and earlier.get("item_scores"):
            if len(earlier["item_scores"]) != len(r["item_scores"]):
                raise SystemExit(f"--before {args.before}: {r['method']} has {len(earlier['item_scores'])} items, "
                                 f"this run {len(r['item_scores'])}; fix: run both with the same options")
            r["before_accuracy"] = earlier["accuracy"]
            r["vs_before"] = paired_difference(r["item_scores"], earlier["item_scores"])
    env = environment()
    n_test = sum(len(v) for v in tests.values())
    lines = [f"# Table 2, small: sparse and INT4 bases on SmolLM2-135M ({'quick variant' if args.quick else f'{args.steps} steps, {args.test_per_task} test items per task'})", "",
             environment_markdown(env),
             f"- tasks: {', '.join(args.tasks)}; training: {len(train_records)} records, {args.steps} steps of batch 4; "
             f"test: {n_test} items (text-mode multiple choice); Wanda: {args.calibration_samples} x 256 tokens from the "
             f"training mix; INT4 group size {args.group_size}; space {args.space.name}; prep {prep:.0f} s", "",
             "| method | accuracy ± s.e. | relative (vs 50% Wanda + LoRA) | paper acc. | paper relative | sparsity | precision (base + adapter / base) | QA base | GPTQ - RTN (paired) | before | vs before (paired) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rel = f"{r['relative_to_wanda_lora']:.1f}%" if r["relative_to_wanda_lora"] else "-"
        pa = f"{r['paper_accuracy']}" if r["paper_accuracy"] is not None else "-"
        pr = f"{r['paper_relative']}%" if r["paper_relative"] is not None else "-"
        was = f"{r['before_accuracy']:.3f}" if "before_accuracy" in r else "-"
        vs = "{:+.3f} ± {:.3f}".format(*r["vs_before"]) if "vs_before" in r else "-"
        vs_rtn = "{:+.3f} ± {:.3f}".format(*r["vs_rtn"]) if "vs_rtn" in r else "-"
        lines.append(f"| {r['method']} | {r['accuracy']:.3f} ± {r['stderr']:.3f} | {rel} | {pa} | {pr} | {r['sparsity']:.1%} "
                     f"| {r['precision']} | {r['qa_base'] or '-'} | {vs_rtn} | {was} | {vs} |")
    if any("vs_rtn" in r for r in rows):
        lines += ["", "'GPTQ - RTN' pairs each GPTQ row with its round-to-nearest row of this run (same items): the mean "
                  "per-item difference ± its paired standard error."]
    if args.before:
        lines += ["", f"'before' and 'vs before' pair each row with the same row of `{args.before}` (same items): the mean "
                  "per-item difference (this run minus that one) ± its paired standard error."]
    write_results(args.name, {"environment": env, "args": vars(args), "rows": rows}, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
