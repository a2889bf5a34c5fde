"""The command line as given, and what Ctrl-C (SIGINT) and SIGTERM on a long command print.

`main` records the arguments (`INVOCATION`) and installs `sigterm_raises` for the whole command, so
SIGTERM unwinds a run as Ctrl-C does (locks released, nothing half-written left unnoticed) instead of
killing it on the spot; `resumable` wraps the long part of ``search`` and ``train`` and turns either
signal into `Interrupted`, whose message names the command that continues the run; `options_given`
tells which options the user named (what ``search --resume`` compares with the run).
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import threading
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import Interrupted, Terminated

INVOCATION: list[str] = []
"""The arguments of the running ``lorasearch`` command (set by `lorasearch.cli.main`)."""
SIGINT_EXIT, SIGTERM_EXIT = 130, 143  # 128 + the signal's number, as shells report a killed command


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` in the main thread (elsewhere: left as it is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def command_line(args: Sequence[str]) -> str:
    """``lorasearch ARGS`` as a shell would take it back."""
    return shlex.join(["lorasearch", *map(str, args)])


@contextlib.contextmanager
def resumable(saved: Path, resume: Sequence[str]) -> Iterator[None]:
    """Turn Ctrl-C or SIGTERM inside the block into `Interrupted`: exit 130 or 143 and one line with
    ``lorasearch RESUME`` when ``saved`` (the run's settings file) exists, else with the command as given."""
    try:
        yield
    except (KeyboardInterrupt, Terminated) as exc:
        terminated = isinstance(exc, Terminated)
        what = "terminated (SIGTERM)" if terminated else "interrupted"
        code = SIGTERM_EXIT if terminated else SIGINT_EXIT
        if saved.is_file():
            message = f"{what}; every finished step is kept; resume with: {command_line(resume)}"
        else:
            message = f"{what} before the run was saved; start it again with: {command_line(INVOCATION)}"
        raise Interrupted(message, code) from None


SHORT_OPTIONS = {"-m": "model", "-o": "out", "-f": "format"}


def options_given(args: Sequence[str]) -> list[str]:
    """The options named on a command line, as field names (``--no-racing`` -> ``racing``, ``-m`` -> ``model``)."""
    names = []
    for arg in args:
        if arg in SHORT_OPTIONS:
            names.append(SHORT_OPTIONS[arg])
        elif arg.startswith("--") and len(arg) > 2:
            name = arg[2:].split("=", 1)[0]
            names.append(name.removeprefix("no-").replace("-", "_"))
    return list(dict.fromkeys(names))


def with_flag(args: Sequence[str], flag: str) -> list[str]:
    """``args`` with ``flag`` added unless it is there already."""
    return list(args) if flag in args else [*args, flag]
