"""The ``lorasearch`` command: a thin layer that parses arguments, calls the Python API and prints.

Errors in the input are printed as one line (``error: FILE: FIELD: problem; fix: ...``), never as
a traceback; set ``LORASEARCH_DEBUG=1`` to see tracebacks of unexpected failures.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import LoraSearchError
from .space import SearchSpace

app = typer.Typer(
    name="lorasearch",
    help="Multi-objective architecture search over elastic LoRA super-networks of LLMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
space_app = typer.Typer(help="Inspect and convert search-space files.", no_args_is_help=True)
app.add_typer(space_app, name="space")
console = Console()

MODEL_HELP = "Model: a Hugging Face name or folder, a .gguf file, 'default' (SmolLM2-135M if installed) or tiny-llama."


@space_app.command("show")
def space_show(
    file: Path = typer.Argument(..., help="Space file (.yaml or .json)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    gguf_file: Optional[str] = typer.Option(None, help="GGUF file inside the --model folder."),
    adapter: Optional[Path] = typer.Option(None, help="PEFT LoRA super-adapter folder to load and check."),
    num_layers: Optional[int] = typer.Option(None, help="Expand a per-layer space over N layers (without --model)."),
    trust_remote_code: bool = typer.Option(False, help="Allow model code from the model's repository."),
) -> None:
    """Print a space's groups, choices and size, and its max/min/heuristic configs.

    With --model the space is checked against the model, and each config's parameters are shown.
    """
    space = SearchSpace.load(file)
    net = None
    if model is not None:
        from .supernet import SuperNetwork

        net = SuperNetwork.from_pretrained(model, space, adapter, gguf_file=gguf_file, trust_remote_code=trust_remote_code)
        space = net.space
    elif num_layers is not None:
        space = space.with_num_layers(num_layers)
    _print_space(space, file)
    if space.per_layer is not None and space.num_layers is None:
        console.print("size and configs need the layer count: pass --model or --num-layers")
        return
    _print_configs(space, net)


@space_app.command("import")
def space_import(
    file: Path = typer.Argument(..., help="SQFT elastic_adapter_config.json or LoNAS/Shears NNCF config JSON."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the space here (.yaml or .json)."),
    name: Optional[str] = typer.Option(None, help="Name of the new space (default: the file's stem)."),
    alpha: Optional[float] = typer.Option(None, help="LoRA alpha of the adapter (the reference files do not store it)."),
) -> None:
    """Convert a reference implementation's space file into lorasearch's format."""
    from .formats import import_space

    space = import_space(file, name=name, alpha=alpha)
    if out is None:
        sys.stdout.write(space.dumps())
        return
    if out.exists():
        raise LoraSearchError(f"{out}: already exists; fix: choose another --out or delete it")
    space.save(out)
    console.print(f"wrote {out} ({len(space.groups)} groups)")


@app.command()
def quickstart(
    model: str = typer.Option("default", "--model", "-m", help=MODEL_HELP),
    out: Path = typer.Option(Path("runs/quickstart"), "--out", "-o", help="Output folder."),
) -> None:
    """Run the main job on the embedded default model: space -> super-network -> subnet configs."""
    from .quickstart import run_quickstart

    run_quickstart(model=model, out=out, console=console)


def _network(model, space, adapter, gguf_file, trust_remote_code, seed=0, adapter_mode=None):
    from .session import NetworkSettings

    return NetworkSettings(model=model, space=str(space) if space else None, adapter=str(adapter) if adapter else None,
                           gguf_file=gguf_file, trust_remote_code=trust_remote_code, seed=seed, adapter_mode=adapter_mode)


ADAPTER_MODE_HELP = ("dense (plain LoRA), sparse (SparsePEFT: delta masked by the base's zeros) or qa (QA-SparsePEFT on "
                     "a quantized base); default: the adapter folder's saved mode, else dense.")


@app.command("eval")
def eval_command(
    model: str = typer.Option("default", "--model", "-m", help=MODEL_HELP),
    space: Optional[Path] = typer.Option(None, help="Space file (default: the adapter's own)."),
    adapter: Optional[Path] = typer.Option(None, help="PEFT LoRA super-adapter folder."),
    config: Optional[str] = typer.Option("max", help="max, min, heuristic, or a JSON file with a config."),
    task: Optional[Path] = typer.Option(None, help="Task file; default: the synthetic task."),
    evaluator: str = typer.Option("auto", help="auto, text, label, exact or loss."),
    limit: Optional[int] = typer.Option(200, help="Items in the seeded subset."),
    seed: int = typer.Option(0),
    batch_size: int = typer.Option(8),
    seq_len: int = typer.Option(128, help="Tokens per sequence for the MAC count."),
    gguf_file: Optional[str] = typer.Option(None),
    trust_remote_code: bool = typer.Option(False),
    adapter_mode: Optional[str] = typer.Option(None, help=ADAPTER_MODE_HELP),
) -> None:
    """Score one subnet and print its accuracy, MACs and parameters."""
    from .cost import CostModel
    from .session import TaskSettings, build_evaluator, build_network, resolve_config

    net = build_network(_network(model, space, adapter, gguf_file, trust_remote_code, adapter_mode=adapter_mode))
    chosen = resolve_config(net.space, config)
    evaluate = build_evaluator(net, TaskSettings(str(task) if task else None, evaluator, limit, seed, batch_size))
    result = evaluate(chosen)
    cost = CostModel(net, seq_len=seq_len, reference="analytic")
    params = cost.parameters(chosen, nonzero=True)
    se = f" ± {result.stderr:.3f}" if result.stderr is not None else ""
    console.print(f"{result.metric}: {result.score:.4f}{se} on {result.n} items ({result.seconds:.1f} s)")
    for deployment in ("unmerged", "merged"):
        console.print(f"MACs ({deployment}, {seq_len} tokens): {cost.gmacs(chosen, deployment):.4f} G")
    console.print(f"parameters: {params.total:,} total, {params.trainable:,} trainable, {params.base:,} base")
    if params.nonzero is not None and params.nonzero < params.base:
        effective = cost.effective_macs(chosen, "merged") / 1e9
        console.print(f"sparse base: {params.nonzero:,} non-zero base parameters "
                      f"({1 - params.nonzero / params.base:.1%} zeros); effective MACs (merged): {effective:.4f} G")


@app.command("cost")
def cost_command(
    model: str = typer.Option("default", "--model", "-m", help=MODEL_HELP),
    space: Optional[Path] = typer.Option(None, help="Space file (default: the adapter's own)."),
    adapter: Optional[Path] = typer.Option(None, help="PEFT LoRA super-adapter folder."),
    config: Optional[str] = typer.Option("max", help="max, min, heuristic, or a JSON file with a config."),
    seq_len: int = typer.Option(128, help="Tokens per sequence."),
    deployment: str = typer.Option("unmerged", help="unmerged (adapters beside the base) or merged."),
    backend: str = typer.Option("closed", help="closed (closed form) or fvcore (trace the subnet)."),
    csv: Optional[Path] = typer.Option(None, help="Also write the breakdown as CSV."),
    gguf_file: Optional[str] = typer.Option(None),
    trust_remote_code: bool = typer.Option(False),
) -> None:
    """Print the per-module MAC and parameter breakdown of one subnet."""
    from .cost import CostModel, fvcore_macs
    from .session import build_network, resolve_config

    if backend not in ("closed", "fvcore"):
        raise LoraSearchError(f"--backend: unknown {backend!r}; fix: use closed or fvcore")
    net = build_network(_network(model, space, adapter, gguf_file, trust_remote_code))
    chosen = resolve_config(net.space, config)
    cost = CostModel(net, seq_len=seq_len, deployment=deployment, reference="analytic")
    table = cost.breakdown(chosen)
    if backend == "fvcore":
        total, by_module = fvcore_macs(net, chosen, seq_len, deployment=deployment)
        table["fvcore_macs"] = [by_module.get(m, 0) if m != "total" else total for m in table["module"]]
    if csv:
        table.to_csv(csv, index=False)
    print(table.to_string(index=False, max_rows=80))
    console.print(cost.describe(chosen))


@app.command("train")
def train_command(
    out: Path = typer.Option(..., "--out", "-o", help="Run folder for the super-adapter, logs and checkpoints."),
    model: str = typer.Option("default", "--model", "-m", help=MODEL_HELP),
    space: Optional[Path] = typer.Option(None, help="Space file (default: the adapter's own)."),
    adapter: Optional[Path] = typer.Option(None, help="Continue from this PEFT super-adapter (default: fresh adapters)."),
    task: list[Path] = typer.Option([], help="Task file(s); repeat for a mix. Default: the synthetic task."),
    max_records: Optional[int] = typer.Option(None, help="Seeded subset per task file."),
    val_size: float = typer.Option(0.1, help="Held-out share (or count, if >= 1) written to validation.jsonl."),
    target: str = typer.Option("text", help="text (correct option's text) or label (the reference's 'answer2')."),
    max_length: int = typer.Option(256, help="Tokens per example (longer ones are truncated)."),
    steps: int = typer.Option(250),
    batch_size: int = typer.Option(8),
    grad_accum: int = typer.Option(1),
    lr: float = typer.Option(3e-4),
    schedule: str = typer.Option("cosine", help="cosine, linear or constant."),
    warmup_steps: int = typer.Option(10),
    sampler: str = typer.Option("random", help="random (NLS), sandwich, or fixed (plain LoRA at the max)."),
    sandwich_k: int = typer.Option(2),
    dtype: str = typer.Option("fp32", help="fp32 or bf16."),
    seed: int = typer.Option(0),
    checkpoint_every: int = typer.Option(50),
    gradient_checkpointing: bool = typer.Option(False),
    device: str = typer.Option("auto", help="auto (cuda when present), cpu or cuda."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its last checkpoint."),
    overwrite: bool = typer.Option(False, help="Replace whatever --out holds."),
    gguf_file: Optional[str] = typer.Option(None),
    trust_remote_code: bool = typer.Option(False),
    adapter_mode: Optional[str] = typer.Option(None, help=ADAPTER_MODE_HELP),
) -> None:
    """Train an elastic super-adapter with NLS (Shears/SQFT; LoNAS for Mode B spaces)."""
    from .training_run import prepare_training

    from .train import TrainArgs

    args = TrainArgs(steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr, schedule=schedule,
                     warmup_steps=warmup_steps, sampler=sampler, sandwich_k=sandwich_k, dtype=dtype, seed=seed,
                     checkpoint_every=checkpoint_every, gradient_checkpointing=gradient_checkpointing, device=device)
    network = _network(model, space, adapter, gguf_file, trust_remote_code, seed, adapter_mode)
    trainer = prepare_training(network, [str(t) for t in task], args, out, target=target, max_length=max_length,
                               val_size=val_size, max_records=max_records, resume=resume, overwrite=overwrite, log=console.print)
    result = trainer.train(progress=True)
    console.print(f"trained {result.steps} steps in {result.seconds:.0f} s; last loss {result.final_loss:.4f}")
    console.print(f"super-adapter: {result.adapter_dir} (stock PEFT loads it at the max config)")


@app.command("sparsify")
def sparsify_command(
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the sparse base (from_pretrained loads it)."),
    model: str = typer.Option("default", "--model", "-m", help=MODEL_HELP),
    method: str = typer.Option("wanda", help="wanda (|W| * ||X_j||, per output row) or magnitude (|W|, per layer)."),
    ratio: float = typer.Option(0.5, help="Share of weights to zero, in [0, 1) (N:M patterns fix it at N/M)."),
    pattern: str = typer.Option("unstructured", help="unstructured, 2:4 or 4:8."),
    calibration: Optional[Path] = typer.Option(None, help="Task file whose texts calibrate Wanda."),
    samples: int = typer.Option(128, help="Calibration windows (the reference uses 128)."),
    seq_len: int = typer.Option(512, help="Tokens per calibration window."),
    batch_size: int = typer.Option(8),
    gguf_file: Optional[str] = typer.Option(None),
    trust_remote_code: bool = typer.Option(False),
) -> None:
    """Prune a base model (Wanda or magnitude; unstructured or N:M) and save it with a per-layer report."""
    from .compress.sparsity import save_sparse, sparsify
    from .data import load_records
    from .models import load_model

    if out.exists():
        raise LoraSearchError(f"{out}: already exists; fix: choose another --out or delete it")
    if method == "wanda" and calibration is None:
        raise LoraSearchError("--calibration: missing; Wanda needs calibration texts; fix: pass a task file, or --method magnitude")
    records = load_records(calibration) if calibration is not None else None
    loaded = load_model(model, gguf_file=gguf_file, trust_remote_code=trust_remote_code)
    report = sparsify(loaded.model, loaded.tokenizer, method=method, ratio=ratio, pattern=pattern, records=records,
                      n_samples=samples, seq_len=seq_len, batch_size=batch_size)
    provenance = {"model": loaded.spec, "calibration": str(calibration) if calibration else None}
    save_sparse(loaded.model, loaded.tokenizer, out, report, provenance)
    print(report.to_string(index=False, max_rows=40))
    console.print(f"wrote {out} ({report['sparsity'].iloc[-1]:.1%} of the decoder linears' weights are zero)")


@app.command("quantize")
def quantize_command(
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the quantized base."),
    model: str = typer.Option("default", "--model", "-m", help=MODEL_HELP + " A sparse base stays sparse."),
    bits: int = typer.Option(4, help="Bits per weight (asymmetric, integer zero point)."),
    group_size: int = typer.Option(128, help="Inputs per quantization group; must divide every input size."),
    gguf_file: Optional[str] = typer.Option(None),
    trust_remote_code: bool = typer.Option(False),
) -> None:
    """Quantize a base's decoder linears group-wise to INT (round-to-nearest) and save codes, scales, zeros."""
    import shutil

    from .compress.quant import quantize_model, save_quantized
    from .compress.sparsity import SPARSITY_FILE, sparsity_report
    from .models import load_model

    if out.exists():
        raise LoraSearchError(f"{out}: already exists; fix: choose another --out or delete it")
    loaded = load_model(model, gguf_file=gguf_file, trust_remote_code=trust_remote_code)
    quantize_model(loaded.model, bits, group_size)
    save_quantized(loaded.model, loaded.tokenizer, out, {"model": loaded.spec})
    if (Path(model) / SPARSITY_FILE).is_file():
        shutil.copy(Path(model) / SPARSITY_FILE, out / SPARSITY_FILE)
    sparsity = sparsity_report(loaded.model)["sparsity"].iloc[-1]
    console.print(f"wrote {out} (INT{bits}, group size {group_size}, {sparsity:.1%} zeros in the decoder linears)")


@app.command("search")
def search_command(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory."),
    model: str = typer.Option("default", "--model", "-m", help=MODEL_HELP),
    space: Optional[Path] = typer.Option(None, help="Space file (default: the adapter's own)."),
    adapter: Optional[Path] = typer.Option(None, help="PEFT LoRA super-adapter folder."),
    task: Optional[Path] = typer.Option(None, help="Validation task file; default: the synthetic task."),
    evaluator: str = typer.Option("auto", help="auto, text, label, exact or loss."),
    limit: Optional[int] = typer.Option(200, help="Items in the seeded validation subset."),
    objectives: str = typer.Option("accuracy,macs", help="Comma-separated: accuracy, macs, macs_merged, macs_unmerged, macs_effective, params, latency."),
    constraint: list[str] = typer.Option([], help="e.g. macs<=2.5e8 (repeatable)."),
    strategy: str = typer.Option("nsga2", help="nsga2, random, tpe, optuna-nsga2 or exhaustive."),
    budget: int = typer.Option(100, help="Distinct configs to evaluate."),
    population: int = typer.Option(10),
    seed: int = typer.Option(0),
    seq_len: int = typer.Option(128, help="Tokens per sequence for the MAC objective."),
    deployment: str = typer.Option("unmerged", help="What the macs objective models: unmerged or merged."),
    batch_size: int = typer.Option(8),
    config: Optional[Path] = typer.Option(None, "--config", help="Start a new run from a run.yaml (with --out)."),
    resume: Optional[Path] = typer.Option(None, help="Continue the run in this directory."),
    backend: str = typer.Option("local", help="Where configs are evaluated: local, processes or ray."),
    workers: Optional[int] = typer.Option(None, help="Parallel workers (default: one per GPU, else per CPU)."),
    ray_address: Optional[str] = typer.Option(None, help="A Ray cluster (host:port or auto); default: a local Ray."),
    storage: Optional[str] = typer.Option(
        None, help="optuna storage shared with other search processes (tpe, optuna-nsga2): sqlite:///study.db, postgresql://..."
    ),
    gguf_file: Optional[str] = typer.Option(None),
    trust_remote_code: bool = typer.Option(False),
) -> None:
    """Search a super-adapter's subnets for the Pareto front of accuracy and cost."""
    from .search.backends import BackendSettings
    from .search.engine import SearchSettings
    from .search_run import SearchRun, run_from_file

    where = BackendSettings(backend, workers, ray_address)
    where.check()
    if resume is not None:
        plan, out = run_from_file(resume / "run.yaml"), resume
    elif config is not None:
        plan = run_from_file(config)
    else:
        from .session import TaskSettings

        plan = SearchRun(
            network=_network(model, space, adapter, gguf_file, trust_remote_code),
            task=TaskSettings(str(task) if task else None, evaluator, limit, seed, batch_size),
            settings=SearchSettings(strategy=strategy, budget=budget, population=population, seed=seed),
            objectives=[o.strip() for o in objectives.split(",") if o.strip()],
            constraints=list(constraint), seq_len=seq_len, deployment=deployment,
        )
    if storage is not None:
        plan.storage = storage  # a resume with another storage than run.yaml's is refused
    if out is None:
        raise LoraSearchError("--out: missing; fix: name a run directory, e.g. --out runs/search1")
    result, net = plan.run(out, resume=resume is not None, log=console.print, backend=where)
    _print_search_summary(result, net.space)


@app.command("plot")
def plot_command(
    run_dirs: list[Path] = typer.Argument(..., help="One run directory, or several to compare."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the figures (default: RUN_DIR/plots)."),
) -> None:
    """Draw the Pareto front, the search progression and the hypervolume (PNG and SVG)."""
    from .plot import comparison_figure, plot_run, save_figure

    if len(run_dirs) == 1:
        written = plot_run(run_dirs[0], out)
    else:
        folder = out or Path("comparison")
        written = save_figure(comparison_figure([str(d) for d in run_dirs]), folder / "comparison")
    for path in written:
        console.print(f"wrote {path}")


@app.command("report")
def report_command(
    run_dir: Path = typer.Argument(..., help="A search's run directory."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Markdown file (default: RUN_DIR/report.md)."),
) -> None:
    """Write a markdown (and HTML) report of a search: the front, relative figures, settings, plots."""
    from .report import write_report

    console.print(f"wrote {write_report(run_dir, out)}")


@app.command("export")
def export_command(
    run_dir: Path = typer.Argument(..., help="A search's run directory."),
    pick: str = typer.Option("knee", help="knee | heuristic | max | min | 'row N' | 'max-accuracy-under-macs X'."),
    format: str = typer.Option("config", "--format", "-f", help="config (subnet.json) | peft | merged | pruned."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output (default: RUN_DIR/exports/FORMAT-evalN)."),
    model: Optional[str] = typer.Option(None, help="Override the run's model."),
    adapter: Optional[Path] = typer.Option(None, help="Override the run's adapter."),
    space: Optional[Path] = typer.Option(None, help="Override the run's space file."),
) -> None:
    """Export a subnet of a search: its config, a stock-PEFT sub-adapter, a merged or a pruned model."""
    from .export import export_run

    path = export_run(run_dir, pick, format, out, model=model, adapter=str(adapter) if adapter else None,
                      space=str(space) if space else None)
    console.print(f"wrote {path}")


# --------------------------------------------------------------------------- printing
def _print_space(space: SearchSpace, file: Path) -> None:
    console.print(f"[bold]{escape(space.name)}[/bold] (Mode {space.mode}) from {escape(str(file))}")
    if space.description:
        console.print(escape(space.description))
    a = space.adapter
    if a.rank:
        console.print(f"adapter: rank {a.rank}, alpha {a.effective_alpha:g} (scale {a.effective_alpha / a.rank:g} for every sub-rank)")
    if space.per_layer:
        layers = f" x {space.num_layers} layers" if space.num_layers else ""
        console.print(f"per layer: {space.per_layer}{layers}")
    table = Table(show_edge=False)
    for col in ("group", "kind", "modules", "choices", "share", "genes"):
        table.add_column(col)
    genes = {}
    if space.per_layer is None or space.num_layers is not None:
        for g in space.genes:
            genes[g.group] = genes.get(g.group, 0) + 1
    for g in space.groups:
        table.add_row(g.name, g.kind, _modules_text(g), " ".join(map(str, g.choices)), g.share, str(genes.get(g.name, "?")))
    console.print(table)
    if space.per_layer is None or space.num_layers is not None:
        size = space.size()
        console.print(f"size: {size:.3e} configs over {len(space.genes)} genes" if size > 10**6 else f"size: {size} configs")


def _modules_text(group) -> str:
    if group.kind == "rank":
        return ", ".join(group.modules)
    if group.kind == "heads":
        return f"{group.attention}.{{q,k,v,o}}_proj"
    if group.channels:
        return f"{group.channels} channels"
    return ", ".join([f"{m} (out)" for m in group.channels_out] + [f"{m} (in)" for m in group.channels_in])


def _print_configs(space: SearchSpace, net: Any) -> None:
    from .search_run import group_summary

    table = Table(show_edge=False)
    table.add_column("config")
    table.add_column("choices per group")
    if net is not None:
        from .cost import parameter_counts

        table.add_column("trainable params", justify="right")
        table.add_column("total params", justify="right")
    for label, config in (("max", space.max()), ("heuristic", space.heuristic()), ("min", space.min())):
        row = [label, group_summary(space, config)]
        if net is not None:
            counts = parameter_counts(net, config)
            row += [f"{counts.trainable:,}", f"{counts.total:,}"]
        table.add_row(*row)
    console.print(table)


def _print_search_summary(result, space: SearchSpace) -> None:
    from .search_run import summary_table

    console.print(f"\n[bold]Pareto front[/bold] ({len(result.pareto)} of {len(result.table)} evaluations)")
    print(summary_table(result, space).to_string(index=False))
    for label in ("max", "heuristic", "min"):
        row = result.reference(label)
        if row is not None:
            values = ", ".join(f"{s.name} {row[s.name]:.4g}" for s in result.specs)
            console.print(f"{label:>9}: {values}")
    for line in result.noise_notes():
        console.print(f"noise: {line}")
    if result.out_dir is not None:
        console.print(f"run directory: {result.out_dir}")


# ------------------------------------------------------------------------------ entry
def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app and turn input errors into one line and an exit code."""
    debug = bool(os.environ.get("LORASEARCH_DEBUG"))
    try:
        app(args=argv, prog_name="lorasearch", standalone_mode=False)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except LoraSearchError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001 - the CLI never shows a bare traceback
        if debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"internal error: {type(exc).__name__}: {first} (set LORASEARCH_DEBUG=1 for the traceback)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
