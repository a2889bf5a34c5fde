"""The typer applications and the console the commands print to."""

from __future__ import annotations

import typer
from rich.console import Console

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
