"""Command-line options derived once from the settings dataclasses (whittle/LitGPT style).

`settings_options(NetworkSettings, "network")` on a command adds one ``--option`` per field of the
dataclass, with the field's docstring as its help text, and hands the command one instance built
by keyword. A field added to a settings class therefore reaches every command that takes it, with
its help, and no command can drop or reorder it.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import typing
from typing import Annotated, Any, Callable, Mapping, Optional, Sequence, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])


def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass (the string right after each field), by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def option_name(field: str) -> str:
    """``gguf_file`` -> ``--gguf-file``."""
    return "--" + field.replace("_", "-")


def settings_options(
    cls: type,
    param: str,
    *,
    only: Sequence[str] | None = None,
    skip: Sequence[str] = (),
    defaults: Mapping[str, Any] | None = None,
    short: Mapping[str, str] | None = None,
    helps: Mapping[str, str] | None = None,
    names: Mapping[str, str] | None = None,
) -> Callable[[F], F]:
    """Expose the fields of the settings dataclass ``cls`` as options of the decorated command.

    Args:
        cls: a dataclass whose fields carry attribute docstrings.
        param: the command's parameter that receives the ``cls`` instance.
        only, skip: which fields become options (default: all); the others keep their defaults.
        defaults: command-specific defaults (e.g. no model unless one is given).
        short: short flags, e.g. ``{"model": "-m"}``.
        helps: command-specific help texts that replace the docstrings.
        names: command-specific option names, e.g. ``{"seed": "subset_seed"}`` for ``--subset-seed``
            where another settings class already has a ``--seed``.
    """
    hints = typing.get_type_hints(cls)
    docs = {**field_docs(cls), **dict(helps or {})}
    chosen = [f for f in dataclasses.fields(cls) if (only is None or f.name in only) and f.name not in skip]
    defaults, short, names = dict(defaults or {}), dict(short or {}), dict(names or {})

    def decorate(command: F) -> F:
        signature = inspect.signature(command, eval_str=True)
        if param not in signature.parameters:
            raise TypeError(f"{command.__name__} has no parameter {param!r} for {cls.__name__}")
        added = []
        for f in chosen:
            name = names.get(f.name, f.name)
            flags = [option_name(name)] + ([short[f.name]] if f.name in short else [])
            if hints[f.name] == Optional[bool]:  # typer makes --x/--no-x only for plain bools
                flags[0] = f"{option_name(name)}/--no-{name.replace('_', '-')}"
            annotation = Annotated[_cli_type(hints[f.name]), typer.Option(*flags, help=docs.get(f.name, ""))]
            default = defaults.get(f.name, f.default)
            added.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                           annotation=annotation))
        kept = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in signature.parameters.values() if p.name != param]
        fields_by_option = {names.get(f.name, f.name): f.name for f in chosen}

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            kwargs[param] = cls(**{field: kwargs.pop(option) for option, field in fields_by_option.items()})
            return command(**kwargs)

        parameters = added + kept  # the outermost decorator's options first, the command's own last
        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper  # type: ignore[return-value]

    return decorate


def _cli_type(hint: Any) -> Any:
    """``str | None`` as typer spells it (``Optional[str]``)."""
    args = typing.get_args(hint)
    if type(None) in args and len(args) == 2:
        return Optional[next(a for a in args if a is not type(None))]
    return hint


def available_cores() -> int:
    """The CPU cores this process may use (its affinity mask, which containers and taskset narrow)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def with_threads(command: F) -> F:
    """Add ``--threads N`` to a command: torch's CPU threads for the command (default: the cores this
    process may use). Side by side runs each set it, so that two do not fight over the same cores."""
    signature = inspect.signature(command, eval_str=True)
    option = inspect.Parameter(
        "threads", inspect.Parameter.KEYWORD_ONLY, default=None,
        annotation=Annotated[Optional[int], typer.Option("--threads", help=(
            "torch CPU threads (default: the cores this process may use; give each of several runs side by side its share)"
        ))],
    )

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        threads = kwargs.pop("threads")
        if threads is not None and threads < 1:
            raise typer.BadParameter(f"{threads}: use 1 or more", param_hint="'--threads'")
        import torch

        before = torch.get_num_threads()
        # default: torch's own (OMP_NUM_THREADS, else the physical cores) within this process's cores
        torch.set_num_threads(threads or min(before, available_cores()))
        try:
            return command(**kwargs)
        finally:
            torch.set_num_threads(before)  # in-process callers (tests, notebooks) keep their own setting

    parameters = [*signature.parameters.values(), option]
    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper  # type: ignore[return-value]
