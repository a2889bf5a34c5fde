"""The ``lorasearch`` command: a thin layer that parses arguments, calls the Python API and prints.

Every error a user can cause ends in one line and a non-zero exit, never a traceback:

* usage errors (an unknown option, a value of the wrong type) in the command-line library's own
  words, naming the option, with a pointer to ``--help`` (exit 2);
* bad input (a file, a field, a setting) as ``error: FILE: FIELD: problem; fix: ...`` (exit 2);
* what lorasearch handled but the user should know (`LoraSearchWarning`: a torn log line cut off,
  a pickle file read) as one ``warning: ...`` line each;
* Ctrl-C (SIGINT) exits 130 and SIGTERM 143; ``search`` and ``train`` then say in one line how to
  resume the run (`lorasearch.cli.invocation`), other commands say ``interrupted``.

Set ``LORASEARCH_DEBUG=1`` to see tracebacks of unexpected failures.
"""

from __future__ import annotations

import os
import sys
import warnings

import typer

from ..errors import Interrupted, LoraSearchError, LoraSearchWarning, Terminated
from . import commands  # noqa: F401 - registers the commands on the app
from .app import app
from .invocation import INVOCATION, SIGINT_EXIT, SIGTERM_EXIT, sigterm_raises

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app and turn every failure into one line and an exit code."""
    debug = bool(os.environ.get("LORASEARCH_DEBUG"))
    argv = list(sys.argv[1:] if argv is None else argv)
    INVOCATION[:] = argv
    with warnings.catch_warnings(), sigterm_raises():
        warnings.simplefilter("always", LoraSearchWarning)
        warnings.showwarning = _one_line_warnings(warnings.showwarning)
        _run(argv, debug)


def _one_line_warnings(show):
    """A ``showwarning`` that prints a `LoraSearchWarning` as ``warning: ...`` (others as before)."""

    def showwarning(message, category, *rest):
        if issubclass(category, LoraSearchWarning):
            print(f"warning: {message}", file=sys.stderr)
        else:
            show(message, category, *rest)

    return showwarning


def _run(argv: list[str], debug: bool) -> None:
    try:
        # Without standalone mode, typer hands back the code of an Exit (130 for Ctrl-C) instead of exiting.
        code = app(args=argv, prog_name="lorasearch", standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Interrupted as exc:
        print(exc, file=sys.stderr)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        code = SIGINT_EXIT
    except Terminated:
        print("terminated (SIGTERM)", file=sys.stderr)
        sys.exit(SIGTERM_EXIT)
    except typer.TyperException as exc:  # usage errors: typer's bundled click raises these
        _usage_error(exc)
    except LoraSearchError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except MemoryError:
        print("error: out of memory; fix: use a smaller model, --limit or --batch-size", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - the CLI never shows a bare traceback
        if debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"internal error: {type(exc).__name__}: {first} (set LORASEARCH_DEBUG=1 for the traceback)", file=sys.stderr)
        sys.exit(1)
    if isinstance(code, int) and not isinstance(code, bool) and code != 0:
        if code == SIGINT_EXIT:
            print("interrupted", file=sys.stderr)
        sys.exit(code)


def _usage_error(exc: typer.TyperException) -> None:
    """``error: <the library's message>`` and where the help is: two lines, exit 2."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # a bare `lorasearch` or group: the help is the answer
        exc.show()  # type: ignore[attr-defined]
        sys.exit(0)
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "lorasearch"
    print(f"error: {message}", file=sys.stderr)
    print(f"see: {command} --help", file=sys.stderr)
    sys.exit(getattr(exc, "exit_code", 2) or 2)


if __name__ == "__main__":
    main()
