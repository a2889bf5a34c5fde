"""The commands: each parses its options into plain settings, calls the Python API and prints.

Options shared by several commands come from the settings dataclasses (`settings_options`), so
they are declared once, with their help text, and reach every command alike.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import LoraSearchError
from ..runs import (
    BackendSettings,
    NetworkSettings,
    PrintLines,
    QuantizeSettings,
    SearchSettings,
    SparsifySettings,
    TaskSettings,
    TrainArgs,
)
from .app import app, console, space_app
from .invocation import INVOCATION, options_given, resumable, with_flag
from .options import settings_options, with_threads
from .printing import pick_lines, print_configs, print_search_summary, print_space

MODEL_FIELDS = ("model", "gguf_file", "device", "dtype", "trust_remote_code")
SHORT = {"model": "-m"}

Out = Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder.")]
ModelConfig = Annotated[Optional[Path], typer.Option(
    help="A Hugging Face config.json instead of --model: the architecture on the meta device, without weights "
         "or tokenizer (plan a 7B search before downloading it; see search_spaces/models/).")]
SubnetConfig = Annotated[str, typer.Option("--config", help="The subnet: max, min, heuristic, or a JSON file with a config.")]
SeqLen = Annotated[int, typer.Option("--seq-len", help="Tokens per sequence the MAC count models.")]
Deployment = Annotated[str, typer.Option(help="What the MACs model: unmerged (adapters beside the base) or merged.")]
AnyBase = Annotated[bool, typer.Option("--force", help=(
    "Use an adapter trained on another base model than --model (its adapter_config.json names it); "
    "without --force that is refused."))]


def deprecated(old: str, new: str) -> None:
    """One line on stderr for an option spelling kept for one release."""
    console.print(f"[yellow]warning:[/yellow] {old} is deprecated; use {new}", highlight=False)


# ------------------------------------------------------------------------------------ spaces
def with_model_config(network: NetworkSettings, model_config: Path | None) -> NetworkSettings:
    """``--model-config FILE`` stands for the model: its architecture on the meta device."""
    if model_config is None:
        return network
    if not model_config.is_file():
        raise LoraSearchError(f"--model-config {model_config}: no such file; fix: pass a config.json (see search_spaces/models/)")
    return dataclasses.replace(network, model=str(model_config), gguf_file=None)


@space_app.command("show")
@with_threads
@settings_options(NetworkSettings, "network", only=("model", "adapter") + MODEL_FIELDS[1:], defaults={"model": None},
                  short=SHORT, helps={"model": "Check the space against this model and show parameter counts."})
def space_show(
    network: NetworkSettings,
    file: Annotated[Path, typer.Argument(help="Space file (.yaml or .json).")],
    model_config: ModelConfig = None,
    num_layers: Annotated[Optional[int], typer.Option(help="Expand a per-layer space over N layers (without --model).")] = None,
) -> None:
    """Print a space's groups, choices and size, and its max/min/heuristic configs.

    With --model (or --model-config) the space is checked against the model, and each config's
    parameters are shown.
    """
    from ..runs import load_space

    network = with_model_config(network, model_config)
    space, net = load_space(file, network, num_layers)
    print_space(space, file)
    if space.per_layer is not None and space.num_layers is None:
        console.print("size and configs need the layer count: pass --model or --num-layers")
        return
    print_configs(space, net)


@space_app.command("import")
@with_threads
def space_import(
    file: Annotated[Path, typer.Argument(help="SQFT elastic_adapter_config.json or LoNAS/Shears NNCF config JSON.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the space here (.yaml or .json).")] = None,
    name: Annotated[Optional[str], typer.Option(help="Name of the new space (default: the file's stem).")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="LoRA alpha of the adapter (the reference files do not store it).")] = None,
) -> None:
    """Convert a reference implementation's space file into lorasearch's format."""
    from ..runs import import_space_file

    space = import_space_file(file, out, name=name, alpha=alpha)
    if out is None:
        console.out(space.dumps(), end="", highlight=False)
        return
    console.print(f"wrote {out} ({len(space.groups)} groups)")


# ----------------------------------------------------------------------------------- the job
@app.command()
@with_threads
def quickstart(
    model: Annotated[str, typer.Option("--model", "-m", help="The model (default: SmolLM2-135M if installed).")] = "default",
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("runs/quickstart"),
    device: Annotated[str, typer.Option(help="auto (CUDA when present, else the CPU), cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, fp32, bf16 or fp16 (the base's dtype).")] = "auto",
) -> None:
    """Run the main job on the embedded default model: space -> super-network -> subnet configs."""
    from ..runs.quickstart import run_quickstart

    run_quickstart(model=model, out=out, console=console, device=device, dtype=dtype)


# ----------------------------------------------------------------------------- one subnet
@app.command("eval")
@with_threads
@settings_options(NetworkSettings, "network", skip=("seed",), short=SHORT)
@settings_options(TaskSettings, "task")
def eval_command(
    network: NetworkSettings,
    task: TaskSettings,
    config: SubnetConfig = "max",
    seq_len: SeqLen = 128,
    force: AnyBase = False,
) -> None:
    """Score one subnet and print its accuracy, MACs and parameters."""
    from ..runs import score_subnet

    scored = score_subnet(network, task, config, seq_len, any_base=force)
    result, params = scored.result, scored.params
    se = f" ± {result.stderr:.3f}" if result.stderr is not None else ""
    console.print(f"{result.metric}: {result.score:.4f}{se} on {result.n} items ({result.seconds:.1f} s)")
    for deployment, gmacs in scored.gmacs.items():
        console.print(f"MACs ({deployment}, {seq_len} tokens): {gmacs:.4f} GMACs")
    console.print(f"parameters: {params.total:,} total, {params.trainable:,} trainable, {params.base:,} base")
    if scored.effective_gmacs is not None:
        console.print(f"sparse base: {params.nonzero:,} non-zero base parameters "
                      f"({1 - params.nonzero / params.base:.1%} zeros); effective MACs (merged): {scored.effective_gmacs:.4f} GMACs")


@app.command("cost")
@with_threads
@settings_options(NetworkSettings, "network", skip=("seed",), short=SHORT)
def cost_command(
    network: NetworkSettings,
    model_config: ModelConfig = None,
    config: SubnetConfig = "max",
    seq_len: SeqLen = 128,
    deployment: Deployment = "unmerged",
    counter: Annotated[str, typer.Option(help="closed (closed form) or fvcore (trace the subnet).")] = "closed",
    backend: Annotated[Optional[str], typer.Option(hidden=True, help="Deprecated spelling of --counter.")] = None,
    csv: Annotated[Optional[Path], typer.Option(help="Also write the breakdown as CSV.")] = None,
    force: AnyBase = False,
) -> None:
    """Print the per-module MACs (unmerged and merged) and parameters of one subnet."""
    from ..runs import cost_breakdown

    if backend is not None:
        deprecated("cost --backend", "--counter")
        counter = backend
    report = cost_breakdown(with_model_config(network, model_config), config, seq_len, deployment, counter,
                            any_base=force)
    if csv:
        report.table.to_csv(csv, index=False)
    print(report.table.to_string(index=False, max_rows=80))
    params = report.params
    console.print("; ".join(report.descriptions))
    console.print(f"parameters: {params.total:,} total, {params.trainable:,} adapter, {params.base:,} base"
                  + ("" if params.nonzero is None else f", {params.nonzero:,} non-zero base"))


# ---------------------------------------------------------------------------------- training
@app.command("train")
@with_threads
@settings_options(NetworkSettings, "network", skip=("seed",), short=SHORT,
                  helps={"adapter": "Continue from this PEFT super-adapter (default: fresh adapters)."})
@settings_options(TrainArgs, "args")
def train_command(
    network: NetworkSettings,
    args: TrainArgs,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder for the super-adapter, logs and checkpoints.")],
    task: Annotated[list[Path], typer.Option(help="Task file(s); repeat for a mix. Default: the synthetic task.")] = [],  # noqa: B006
    max_records: Annotated[Optional[int], typer.Option(help="Seeded subset per task file.")] = None,
    val_size: Annotated[float, typer.Option(help="Held-out share (or count, if >= 1) written to validation.jsonl.")] = 0.1,
    target: Annotated[str, typer.Option(help="text (correct option's text) or label (the reference's 'answer2').")] = "text",
    max_length: Annotated[int, typer.Option(help="Tokens per example (longer ones are truncated).")] = 256,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace whatever --out holds.")] = False,
    force: Annotated[bool, typer.Option(help=(
        "With --resume: continue even though the model, the task records or the starting adapter changed since "
        "the run began (the adapter then trains on both; train_run.yaml records it). Also: start from an --adapter "
        "trained on another base model."))] = False,
) -> None:
    """Train an elastic super-adapter with NLS (Shears/SQFT; LoNAS for Mode B spaces)."""
    from ..runs import prepare_training

    network = dataclasses.replace(network, seed=args.seed)  # one --seed seeds the adapters and the run
    again = with_flag([a for a in INVOCATION if a != "--overwrite"], "--resume")
    with resumable(out / "train_run.yaml", again):
        trainer = prepare_training(network, [str(t) for t in task], args, out, target=target, max_length=max_length,
                                   val_size=val_size, max_records=max_records, resume=resume, overwrite=overwrite,
                                   force=force, log=console.print)
        result = trainer.train(progress=True)
    console.print(f"trained {result.steps} steps in {result.seconds:.0f} s; last loss {result.final_loss:.4f}")
    console.print(f"super-adapter: {result.adapter_dir} (stock PEFT loads it at the max config)")


RECOVERY_SKIPS = ("sampler", "sandwich_k", "reorder", "reorder_samples", "reorder_seq_len")


@app.command("recover")
@with_threads
@settings_options(TrainArgs, "args", skip=RECOVERY_SKIPS, defaults={"steps": 100},
                  helps={"steps": "Optimizer steps of recovery (each trains the picked subnet once).",
                         "distill": "Distil from the max subnet of the super-adapter as recovery found it (one more "
                                    "forward per micro-batch).",
                         "weight_decay": "Must stay 0: the adapter outside the subnet is left as it was.",
                         "seed": "Seeds the data order and dropout (the records and their split are the training run's)."})
def recover_command(
    args: TrainArgs,
    run_dir: Annotated[Path, typer.Argument(help="A search's run directory.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the recovered adapter, its log and the export.")],
    pick: Annotated[str, typer.Option(help="knee | heuristic | max | min | 'row N' | 'max-accuracy-under-macs X'.")] = "knee",
    format: Annotated[Optional[str], typer.Option("--format", "-f", help=(
        "Export of the recovered subnet: pruned (default for Mode B), peft (default for Mode A), merged or config."))] = None,
    task: Annotated[list[Path], typer.Option(help=(
        "Training task file(s); default: those of the run that trained the adapter (its train_run.yaml).") )] = [],  # noqa: B006
    max_records: Annotated[Optional[int], typer.Option(help="Seeded subset per task file (default: the training run's).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Override the run's model.")] = None,
    adapter: Annotated[Optional[Path], typer.Option(help="Override the run's adapter.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the recovery in --out from its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace whatever --out holds.")] = False,
    evaluate: Annotated[bool, typer.Option(help=(
        "Score the subnet on the search's validation items before and after (two evaluations)."))] = True,
) -> None:
    """Fine-tune the adapter of one subnet of a search (only its part), then export it."""
    from ..runs import prepare_recovery

    recovery = prepare_recovery(run_dir, pick, args, out, tasks=[str(t) for t in task], max_records=max_records,
                                fmt=format, model=model, adapter=adapter, resume=resume, overwrite=overwrite,
                                evaluate=evaluate, log=console.print)
    result = recovery.run(progress=True)
    console.print(f"recovered {result.steps} steps in {result.seconds:.0f} s; subnet loss {result.first_loss:.4f} "
                  f"-> {result.final_loss:.4f}")
    if line := result.validation_line():
        console.print(line)
    console.print(f"adapter: {result.adapter_dir}; subnet: {result.out_dir / 'subnet.json'}"
                  + (f"; export: {result.export_dir}" if result.export_dir else ""))


# ------------------------------------------------------------------------------ compression
@app.command("sparsify")
@with_threads
@settings_options(NetworkSettings, "network", only=MODEL_FIELDS, short=SHORT)
@settings_options(SparsifySettings, "settings")
def sparsify_command(
    network: NetworkSettings,
    settings: SparsifySettings,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the sparse base (from_pretrained loads it).")],
    seq_len: Annotated[Optional[int], typer.Option(hidden=True, help="Deprecated spelling of --calibration-seq-len.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(hidden=True, help="Deprecated spelling of --calibration-batch.")] = None,
) -> None:
    """Prune a base model (Wanda or magnitude; unstructured or N:M) and save it with a per-layer report."""
    from ..runs import sparsify_base

    if seq_len is not None:
        deprecated("sparsify --seq-len", "--calibration-seq-len")
        settings = dataclasses.replace(settings, calibration_seq_len=seq_len)
    if batch_size is not None:
        deprecated("sparsify --batch-size", "--calibration-batch")
        settings = dataclasses.replace(settings, calibration_batch=batch_size)
    report = sparsify_base(network, settings, out, log=console.print)
    print(report.to_string(index=False, max_rows=40))
    console.print(f"wrote {out} ({report['sparsity'].iloc[-1]:.1%} of the decoder linears' weights are zero)")


@app.command("quantize")
@with_threads
@settings_options(NetworkSettings, "network", only=MODEL_FIELDS, short=SHORT)
@settings_options(QuantizeSettings, "settings")
def quantize_command(
    network: NetworkSettings,
    settings: QuantizeSettings,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the quantized base.")],
) -> None:
    """Quantize a base's decoder linears group-wise to INT and save a compressed-tensors checkpoint.

    --method rtn (the default) rounds to nearest; --method gptq runs llm-compressor's GPTQ layer by layer
    on --calibration texts. The folder loads in stock transformers (with compressed-tensors) and vLLM. A
    sparse base stays sparse. Round-to-nearest keeps the weights from before quantization beside the codes:
    QA-SparsePEFT (--adapter-mode qa) trains against them (the paper's equation 3).
    """
    from ..runs import quantize_base

    sparsity = quantize_base(network, out, settings=settings, log=console.print)
    console.print(f"wrote {out} (INT{settings.bits} {settings.method}, group size {settings.group_size}, "
                  f"{sparsity:.1%} zeros in the decoder linears)")


# ------------------------------------------------------------------------------------ search
@app.command("search")
@with_threads
@settings_options(NetworkSettings, "network", skip=("seed",), short=SHORT)
@settings_options(TaskSettings, "task", names={"seed": "subset_seed"}, helps={
    "task": "Validation task file; default: the synthetic task.",
    "seed": "Seeds the validation subset and its item order, apart from --seed (the strategy's), so runs of "
            "several strategy seeds score the same items."})
@settings_options(SearchSettings, "settings")
def search_command(
    network: NetworkSettings,
    task: TaskSettings,
    settings: SearchSettings,
    out: Out = None,
    objectives: Annotated[str, typer.Option(
        help="Comma-separated: accuracy, macs, macs_merged, macs_unmerged, macs_effective, params, latency.")] = "accuracy,macs",
    constraint: Annotated[list[str], typer.Option(help="e.g. macs<=2.5e8 (repeatable).")] = [],  # noqa: B006
    seq_len: SeqLen = 128,
    deployment: Deployment = "unmerged",
    cost_reference: Annotated[str, typer.Option(help=(
        "analytic (MACs in closed form from the shapes) or fvcore (one fvcore trace of the full model adds what "
        "only fvcore counts; a module it counts otherwise is a warning)."))] = "analytic",
    run_file: Annotated[Optional[Path], typer.Option(help="Start a new run from a run.yaml (with --out).")] = None,
    config: Annotated[Optional[Path], typer.Option(hidden=True, help="Deprecated spelling of --run-file.")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this directory.")] = None,
    backend: Annotated[str, typer.Option(help="Where configs are evaluated: local, processes or ray.")] = "local",
    workers: Annotated[Optional[int], typer.Option(help="Parallel workers (default: one per GPU, else per CPU).")] = None,
    ray_address: Annotated[Optional[str], typer.Option(help="A Ray cluster (host:port or auto); default: a local Ray.")] = None,
    storage: Annotated[Optional[str], typer.Option(help=(
        "optuna storage shared with other search processes (tpe, optuna-nsga2): sqlite:///study.db, postgresql://..."
    ))] = None,
    force: Annotated[bool, typer.Option(help=(
        "With --resume: continue even though the adapter, model, task records or evaluator changed since the run "
        "began (the front then mixes evaluations of both; run.yaml records it). A changed space is always refused. "
        "Also: search an --adapter trained on another base model than --model."
    ))] = False,
) -> None:
    """Search a super-adapter's subnets for the Pareto front of accuracy and cost."""
    from ..runs import RESUME_OPTIONS, SearchRun, resumed_run, run_from_file

    where = BackendSettings(backend, workers, ray_address)
    where.check()
    if config is not None:
        deprecated("search --config", "--run-file")
        run_file = run_file or config
    if resume is not None:
        values = {**dataclasses.asdict(network), **dataclasses.asdict(task), **dataclasses.asdict(settings),
                  "objectives": [o.strip() for o in objectives.split(",") if o.strip()], "constraint": list(constraint),
                  "seq_len": seq_len, "deployment": deployment, "cost_reference": cost_reference, "run_file": run_file,
                  "out": str(out) if out is not None else None, "subset_seed": task.seed}
        given = {name: values.get(name) for name in options_given(INVOCATION) if name not in RESUME_OPTIONS}
        plan, out = resumed_run(resume, given), resume
    elif run_file is not None:
        plan = run_from_file(run_file)
    else:
        plan = SearchRun(
            network=network,
            task=task,  # --subset-seed seeds the items, --seed the strategy
            settings=settings,
            objectives=[o.strip() for o in objectives.split(",") if o.strip()],
            constraints=list(constraint), seq_len=seq_len, deployment=deployment, cost_reference=cost_reference,
        )
    if storage is not None:
        plan.storage = storage  # a resume with another storage than run.yaml's is refused
    if out is None:
        raise LoraSearchError("--out: missing; fix: name a run directory, e.g. --out runs/search1")
    if force and resume is None and plan.network.adapter is None:
        raise LoraSearchError("--force: only means something with --resume or an --adapter; fix: drop it, or pass "
                              "--resume RUN_DIR")
    # Without a terminal (a job, a pipe), a line per evaluation as well as per generation.
    progress = None if sys.stderr.isatty() else (lambda line: print(line, file=sys.stderr, flush=True))
    with resumable(out / "run.yaml", ["search", "--resume", str(out)]):
        result, _ = plan.run(out, resume=resume is not None, callback=PrintLines(console.print, progress), backend=where,
                             force=force)
    print_search_summary(result)


# ------------------------------------------------------------------------------- read side
@app.command("plot")
@with_threads
def plot_command(
    run_dirs: Annotated[list[Path], typer.Argument(help="One run directory, or several to compare.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder for the figures (default: RUN_DIR/plots).")] = None,
) -> None:
    """Draw the Pareto front, the search progression and the hypervolume (PNG and SVG)."""
    from ..runs import plot_runs

    for path in plot_runs(run_dirs, out):
        console.print(f"wrote {path}")


@app.command("report")
@with_threads
def report_command(
    run_dir: Annotated[Path, typer.Argument(help="A search's run directory.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Markdown file (default: RUN_DIR/report.md).")] = None,
) -> None:
    """Write a markdown (and HTML) report of a search: the front, relative figures, settings, plots."""
    from ..runs import report_run

    console.print(f"wrote {report_run(run_dir, out)}")


@app.command("pick")
@with_threads
def pick_command(
    run_dir: Annotated[Path, typer.Argument(help="A search run with --surrogate --surrogate-model decomposed.")],
    macs_at_most: Annotated[str, typer.Option(help="The budget, e.g. 1.5e10 or 15G.")],
    cost: Annotated[Optional[str], typer.Option(help="The cost the budget is on (default: the run's MACs).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the predicted pick as a subnet.json.")] = None,
) -> None:
    """The best subnet under a MAC budget from the run's decomposed surrogate: no new evaluation, the
    prediction marked beside what the run measured."""
    from ..runs import pick_under_budget, write_pick

    pick = pick_under_budget(run_dir, macs_at_most, cost)
    for line in pick_lines(pick):
        console.print(line, highlight=False)
    if out is not None and pick.predicted is not None:
        console.print(f"wrote {write_pick(pick, run_dir, out)}")


@app.command("export")
@with_threads
def export_command(
    run_dir: Annotated[Path, typer.Argument(help="A search's run directory.")],
    pick: Annotated[str, typer.Option(help="knee | heuristic | max | min | 'row N' | 'max-accuracy-under-macs X'.")] = "knee",
    format: Annotated[str, typer.Option("--format", "-f", help="config (subnet.json) | peft | merged | pruned.")] = "config",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output (default: RUN_DIR/exports/FORMAT-evalN).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Override the run's model.")] = None,
    adapter: Annotated[Optional[Path], typer.Option(help="Override the run's adapter.")] = None,
    space: Annotated[Optional[Path], typer.Option(help="Override the run's space file.")] = None,
    force: AnyBase = False,
    device: Annotated[Optional[str], typer.Option(
        help="Override the run's device (cpu, cuda, cuda:N); drops its device map.")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="Override the run's dtype (fp32, bf16, fp16, auto).")] = None,
) -> None:
    """Export a subnet of a search: its config, a stock-PEFT sub-adapter, a merged or a pruned model."""
    from ..runs import export_run

    path = export_run(run_dir, pick, format, out, model=model, adapter=str(adapter) if adapter else None,
                      space=str(space) if space else None, force=force, log=console.print, device=device, dtype=dtype)
    console.print(f"wrote {path}")
