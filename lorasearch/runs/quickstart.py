"""The README's main job on the embedded default model, end to end, in a few CPU minutes.

1. load the embedded default (SmolLM2-135M when installed, else tiny-llama) and its shipped Mode B
   space (MLP widths and attention heads, so that the subnets' costs span a real range);
2. train a super-adapter briefly with NLS (one random subnet per step) on the synthetic task the
   project generates;
3. search its subnets with NSGA-II on a held-out slice large enough to tell the max and min configs
   apart (option-text accuracy against merged MACs, what a pruned model costs);
4. draw the Pareto plot and write the report;
5. export the knee subnet (`lorasearch.results.pick`: an interior point of the front whenever there is
   one) as ``subnet.json`` and as the physically pruned model, and say what was found and how to
   load it.

The run records the model by its name (``default``) and its paths relative to the run folders, so the
quickstart's folder can be moved as a whole.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from ..errors import LoraSearchError, SpaceError
from ..export.exporters import export_config, export_peft, export_pruned
from ..models.loading import DEFAULT_MODEL, resolved_model_spec, smollm2_gguf
from ..report.document import write_report
from ..report.figures import plot_run
from ..results.pick import gmacs_text, pick_config, pick_summary, row_objectives
from ..search.callbacks import PrintLines
from ..search.engine import SearchSettings
from ..train.trainer import TrainArgs
from .searching import SearchRun
from .settings import NetworkSettings, TaskSettings, recorded_path
from .training import prepare_training

SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"
MARKER = ".lorasearch-quickstart"


@dataclass(frozen=True)
class QuickstartPlan:
    """How much work the quickstart does for a model."""

    space: str
    steps: int
    lr: float
    budget: int
    population: int
    records: int
    """Synthetic task items: ``validation`` of them are held out and scored per subnet, the rest train."""
    validation: int


# 24 configs on 160 held-out items: the max and min configs still differ by far more than 2 paired standard
# errors, and the search takes about half of what 32 configs on 250 items took (see benchmarks/RESULTS.md).
SMALL = QuickstartPlan("smollm2-135m-lonas.yaml", steps=60, lr=1e-3, budget=24, population=8, records=560, validation=160)
TINY = QuickstartPlan("tiny-llama.yaml", steps=60, lr=3e-3, budget=30, population=10, records=400, validation=120)


def shipped_space(name: str) -> Path:
    """Path of a space file shipped in the repository's ``search_spaces/`` folder."""
    path = SPACES_DIR / name
    if not path.is_file():
        raise SpaceError(f"{path}: shipped space not found; fix: run from a clone of the repository")
    return path


def _claim(out: Path) -> None:
    """Reuse ``out`` only if an earlier quickstart made it."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise LoraSearchError(f"{out}: exists and was not made by the quickstart; fix: pass another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by lorasearch quickstart; rerunning replaces this folder\n")


def run_quickstart(model: str = DEFAULT_MODEL, out: Path = Path("runs/quickstart"), console: Console | None = None, *,
                   device: str = "auto", dtype: str = "auto") -> Path:
    """Run the main job into ``out`` and return it; ``device`` and ``dtype`` place the model (as
    ``--device`` and ``--dtype`` of every command)."""
    console = console or Console(soft_wrap=True)
    gguf = smollm2_gguf()
    plan = SMALL if gguf is not None and resolved_model_spec(model) == str(gguf) else TINY
    out = Path(out)
    network = NetworkSettings(model=model, space=str(shipped_space(plan.space)), device=device, dtype=dtype)
    network.check()  # a bad device or dtype: one line before the folder is touched
    _claim(out)
    console.rule("1. super-network")
    args = TrainArgs(steps=plan.steps, batch_size=8, lr=plan.lr, warmup_steps=5, sampler="random", checkpoint_every=plan.steps)
    console.rule("2. NLS training on the synthetic task")
    trainer = prepare_training(network, [], args, out / "train", target="text", max_length=64, val_size=plan.validation,
                               synthetic_records=plan.records, log=console.print)
    trained = trainer.train(progress=True)
    console.print(f"super-adapter: {trained.adapter_dir} ({trained.steps} steps, {trained.seconds:.0f} s)")

    console.rule("3. NSGA-II search")
    search = SearchRun(
        network=NetworkSettings(model=model, adapter=str(trained.adapter_dir), device=device, dtype=dtype),
        task=TaskSettings(task=str(out / "train" / "validation.jsonl"), evaluator="text", limit=plan.validation),
        settings=SearchSettings(strategy="nsga2", budget=plan.budget, population=plan.population),
        deployment="merged",  # what the pruned model of a Mode B subnet costs
    )
    result, net = search.run(out / "search", callback=PrintLines(console.print), built=trainer.net)  # the trained network, not loaded again

    console.rule("4. plots and report")
    for path in plot_run(out / "search"):
        console.print(f"wrote {path}")
    report = write_report(out / "search")
    console.print(f"wrote {report}")

    console.rule("5. export")
    row, config = pick_config(result.table, "knee", net.space)
    objectives = row_objectives(row, result.specs)
    # A Mode B subnet with narrower layers is no PEFT adapter: it becomes a physically smaller model.
    fmt, export = ("pruned", export_pruned) if net.space.mode == "B" else ("peft", export_peft)
    for name, write in (("config", export_config), (fmt, export)):
        folder = out / "exports" / name
        provenance = {"run": recorded_path(str(out / "search"), folder), "pick": "knee", "eval_id": int(row["eval_id"]),
                      "model": model}
        exported = write(net, config, folder, provenance, objectives=objectives)
    _say_what_was_found(console, result, row, exported, fmt, model, report)
    return out


def _say_what_was_found(console: Console, result, row, exported: Path, fmt: str, spec: str, report: Path) -> None:
    """The last lines: the front, whether it is real, the knee subnet and how to load it."""
    front = result.pareto.sort_values("macs")
    n_items = int(front["accuracy_items"].max()) if "accuracy_items" in front else 0
    console.rule("found")
    console.print(
        f"{len(front)} Pareto subnets from {gmacs_text(front['macs'].min())} to {gmacs_text(front['macs'].max())} GMACs "
        f"(merged, 128 tokens), accuracy {front['accuracy'].min():.3f} to {front['accuracy'].max():.3f} "
        f"on {n_items} held-out items", highlight=False)
    warning = result.noise_warning()
    if warning:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    else:
        steps = result.distinct_steps()
        console.print(f"the max config beats the min config by more than 2 paired standard errors; {len(steps)} front "
                      f"points stand apart (each more than 2 standard errors above the last): evaluations "
                      f"{', '.join(map(str, steps))}", highlight=False)
    top = result.reference("max")
    cheaper = f", {top['macs'] / row['macs']:.2f}x fewer MACs than the max config" if top is not None and row["macs"] < top["macs"] else ""
    knee = pick_summary(row, "knee", result.specs).removeprefix("--pick knee: ")
    console.print(f"knee subnet: {knee}{cheaper}; exported to {exported}", highlight=False)
    if fmt == "pruned":
        console.print(f"load it:  from lorasearch import load_pruned; model = load_pruned({str(exported)!r})", highlight=False)
    else:
        console.print(f"load it:  from lorasearch import load_model; from peft import PeftModel; "
                      f"model = PeftModel.from_pretrained(load_model({spec!r}).model, {str(exported)!r})", highlight=False)
    console.print(f"the whole front: {report.with_suffix('.html')}; another subnet: lorasearch export "
                  f"{result.out_dir} --pick 'row N' --format {fmt}", highlight=False)
