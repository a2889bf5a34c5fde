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
    table = Table(show_edge=False)
    table.add_column("config")
    table.add_column("choices per group")
    if net is not None:
        from .cost import parameter_counts

        table.add_column("trainable params", justify="right")
        table.add_column("total params", justify="right")
    for label, config in (("max", space.max()), ("heuristic", space.heuristic()), ("min", space.min())):
        row = [label, summarize_config(space, config)]
        if net is not None:
            counts = parameter_counts(net, config)
            row += [f"{counts.trainable:,}", f"{counts.total:,}"]
        table.add_row(*row)
    console.print(table)


def summarize_config(space: SearchSpace, config: dict[str, Any]) -> str:
    """One short line per config: each group's value, or its distinct values when they vary."""
    parts = []
    for group in space.groups:
        values = [config[g.key] for g in space.genes if g.group == group.name]
        distinct = sorted(set(values), key=values.index)
        parts.append(f"{group.name} {distinct[0]}" if len(distinct) == 1 else f"{group.name} {'/'.join(map(str, distinct))}")
    return " · ".join(parts)


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
