"""The typer applications and the console the commands print to."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console

from ..runs import __version__

app = typer.Typer(
    name="lorasearch",
    help="Multi-objective architecture search over elastic LoRA super-networks of LLMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
space_app = typer.Typer(help="Inspect and convert search-space files.", no_args_is_help=True)
app.add_typer(space_app, name="space")
# soft_wrap: a line longer than the terminal (or, without one, than 80 columns) is printed whole, so a
# command or path in a log or a pipe is never cut in two.
console = Console(soft_wrap=True)


def _print_version(value: bool) -> None:
    if value:
        console.print(f"lorasearch {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[Optional[bool], typer.Option(
        "--version", callback=_print_version, is_eager=True, help="Print the version and exit.")] = None,
) -> None:
    """Multi-objective architecture search over elastic LoRA super-networks of LLMs."""
