"""Importers of the reference implementation's search-space files (LoNAS, Shears, SQFT).

Two formats exist:

* SQFT's ``elastic_adapter_config.json`` (:mod:`.sqft`): a list of ``{target, search_space}``;
  SQFT's legacy code could hold the same list under an ``SQFT`` key.
* NNCF configs with ``bootstrapNAS.training.elasticity.width`` (:mod:`.nncf`), as shipped by LoNAS
  and Shears; SQFT's legacy NNCF configs hold the same tree under an ``SQFT`` key.

Both declare one gene per reference group and layer. Each importer turns every reference group into
a :class:`Unit`; :func:`build_space` merges the units that agree across layers into one group of a
:class:`~lorasearch.space.SearchSpace`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..errors import SpaceError
from ..space import CHANNEL_PRESETS, SearchSpace

__all__ = ["Unit", "build_space", "check_choices", "import_space", "read_reference_json"]

_FORMATS_HINT = (
    "give SQFT's elastic_adapter_config.json (a list of {target, search_space}) or an NNCF config "
    "with bootstrapNAS.training.elasticity.width"
)


# ------------------------------------------------------------------------------ entry point
def import_space(path: str | Path, *, name: str | None = None, alpha: float | None = None) -> SearchSpace:
    """Read a reference space file (SQFT or NNCF JSON), detecting its format from the content.

    Args:
        path: the reference file.
        name: the space name (default: the file's stem).
        alpha: the LoRA alpha; the files do not record it, so the default is twice the trained rank
            (Shears and SQFT train with r=32, alpha=64).
    """
    # Imported here: both importers import Unit and build_space from this package.
    from . import nncf, sqft

    path = Path(path)
    data = read_reference_json(path)
    source, name = str(path), name or path.stem
    if isinstance(data, list) or (isinstance(data, Mapping) and isinstance(data.get("SQFT"), list)):
        return sqft.space_from_sqft(data, source=source, name=name, alpha=alpha)
    if isinstance(data, Mapping) and any(isinstance(data.get(k), Mapping) for k in nncf.ROOTS):
        return nncf.space_from_nncf(data, source=source, name=name, alpha=alpha)
    if isinstance(data, Mapping) and "SQFT" in data:
        raise SpaceError(
            f"{source}: SQFT: must be a list of {{target, search_space}} entries or an NNCF tree; fix: {_FORMATS_HINT}"
        )
    what = "a mapping without bootstrapNAS or SQFT" if isinstance(data, Mapping) else f"a JSON {type(data).__name__}"
    raise SpaceError(f"{source}: the file holds {what}, not a reference search space; fix: {_FORMATS_HINT}")


# ------------------------------------------------------------------------------ reading
def read_reference_json(path: str | Path) -> Any:
    """Parse a reference JSON file, allowing the ``//`` comments and trailing commas of jstyleson."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpaceError(f"{path}: cannot read the file ({exc.strerror}); fix: check the path") from None
    try:
        return json.loads(_strip_jsonc(text))
    except json.JSONDecodeError as exc:
        raise SpaceError(f"{path}: line {exc.lineno}: malformed JSON ({exc.msg}); fix the syntax") from None


def _strip_jsonc(text: str) -> str:
    """Drop comments and trailing commas outside strings, keeping line numbers."""
    out: list[str] = []
    i, n, in_string = 0, len(text), False
    while i < n:
        c = text[i]
        if in_string:
            step = 2 if c == "\\" else 1  # an escape pair never ends the string
            out.append(text[i : i + step])
            in_string = c != '"'
            i += step
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append("\n" * text.count("\n", i, end))
            i = end
        else:
            if c in "}]":
                _drop_trailing_comma(out)
            in_string = c == '"'
            out.append(c)
            i += 1
    return "".join(out)


def _drop_trailing_comma(out: list[str]) -> None:
    k = len(out) - 1
    while k >= 0 and out[k].isspace():
        k -= 1
    if k >= 0 and out[k] == ",":
        out[k] = " "


def check_choices(raw: Any, *, source: str, field: str, minimum: int) -> tuple[int, ...]:
    """Check a reference choice list: integers >= ``minimum``, strictly descending."""
    example = "[32, 24, 16]" if minimum == 0 else "[11008, 8256, 5504]"
    if not isinstance(raw, list) or not raw:
        raise SpaceError(f"{source}: {field}: must be a non-empty list, largest first; fix: e.g. {example}")
    for v in raw:
        if v == -1:
            raise SpaceError(
                f"{source}: {field}: -1 is a placeholder the reference fills from its command line; "
                f"fix: write the choices, largest first, e.g. {example}"
            )
        if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
            raise SpaceError(f"{source}: {field}: value {v!r} is not an integer >= {minimum}; fix: e.g. {example}")
    if any(b >= a for a, b in zip(raw, raw[1:])):
        raise SpaceError(
            f"{source}: {field}: {raw} is not strictly descending; fix: write it largest first, "
            f"without repeats: {sorted(set(raw), reverse=True)}"
        )
    return tuple(raw)


# ------------------------------------------------------------------------------ units -> space
@dataclass(frozen=True)
class Unit:
    """One reference group: a kind of choice, its modules within a layer, and the layers it spans.

    ``layers`` is ``None`` for a template written once for every layer. ``share`` is ``layer`` (one
    gene per layer), ``module`` (one gene per module and layer) or ``global`` (one gene across
    ``layers``). For ``width`` units ``modules`` are the modules whose output channels are cut,
    ``channels_in`` the modules that read them, and ``adapters`` the modules whose LoRA output
    follows the cut. ``where`` names the reference field, for messages.
    """

    kind: str
    modules: tuple[str, ...]
    choices: tuple[int, ...]
    layers: frozenset[int] | None
    where: str
    share: str = "layer"
    channels_in: tuple[str, ...] = ()
    adapters: tuple[str, ...] = ()


def build_space(
    units: Iterable[Unit],
    *,
    per_layer: str,
    name: str,
    source: str,
    description: str,
    alpha: float | None,
) -> SearchSpace:
    """Merge units that agree on everything but the layer into groups and build the space.

    An explicit layer index pins ``num_layers`` to the highest index + 1 (the reference files list
    layers of one model); a group over all those layers omits ``layers``.
    """
    units = list(units)
    _check_overlaps(units, source)
    rank = _trained_rank(units, source)
    merged = _merge(units)
    explicit = [i for u in units if u.layers is not None for i in u.layers]
    num_layers = max(explicit) + 1 if explicit else None
    every = frozenset(range(num_layers or 0))
    groups: dict[str, dict[str, Any]] = {}
    for unit in merged:
        groups[_unique(_base_name(unit), groups)] = _group_dict(unit, every)
    if alpha is None and rank is not None:
        alpha = 2 * rank
        description += (
            f" alpha = 2 x rank = {alpha} (the file does not record alpha; Shears and SQFT use r=32, alpha=64)."
        )
    elif alpha is not None:
        description += f" alpha = {alpha} (given)."
    data: dict[str, Any] = {"name": name, "description": description.strip(), "per_layer": per_layer}
    adapter = {k: v for k, v in (("rank", rank), ("alpha", alpha)) if v is not None}
    targets = _fixed_targets(units)
    if targets:
        adapter["targets"] = targets
    if adapter:
        data["adapter"] = adapter
    if num_layers is not None:
        data["num_layers"] = num_layers
    data["groups"] = groups
    return SearchSpace.from_dict(data, source=source)


def _check_overlaps(units: list[Unit], source: str) -> None:
    seen: dict[tuple[str, str], list[Unit]] = {}
    for unit in units:
        for module in unit.modules:
            for other in seen.setdefault((unit.kind, module), []):
                if other.layers is None or unit.layers is None or other.layers & unit.layers:
                    layer = "every layer" if unit.layers is None or other.layers is None else (
                        f"layer {min(other.layers & unit.layers)}"
                    )
                    raise SpaceError(
                        f"{source}: {unit.where}: {module} of {layer} is already in {other.where}; "
                        f"fix: give each module of a layer one {unit.kind} group"
                    )
            seen[(unit.kind, module)].append(unit)


def _trained_rank(units: list[Unit], source: str) -> int | None:
    firsts = {u.choices[0]: u.where for u in units if u.kind == "rank"}
    if len(firsts) > 1:
        (a, wa), (b, wb) = sorted(firsts.items(), reverse=True)[:2]
        raise SpaceError(
            f"{source}: {wb}: rank choices start at {b} but {wa} starts at {a}; lorasearch trains one "
            f"adapter rank; fix: start every rank list with the trained rank {a}"
        )
    return next(iter(firsts), None)


def _merge(units: list[Unit]) -> list[Unit]:
    merged: dict[Any, Unit] = {}
    for n, unit in enumerate(units):
        if unit.share == "global":
            merged[n] = unit
            continue
        key = (unit.kind, unit.share, frozenset(unit.modules), unit.choices, frozenset(unit.channels_in))
        old = merged.get(key)
        if old is None:
            merged[key] = unit
        else:
            layers = None if old.layers is None or unit.layers is None else old.layers | unit.layers
            merged[key] = replace(old, layers=layers)
    return list(merged.values())


def _fixed_targets(units: list[Unit]) -> list[str]:
    """Modules whose adapter output follows a width group but whose rank is in no rank group."""
    ranked = {m for u in units if u.kind == "rank" for m in u.modules}
    return list(dict.fromkeys(m for u in units for m in u.adapters if m not in ranked))


def _group_dict(unit: Unit, every: frozenset[int]) -> dict[str, Any]:
    group: dict[str, Any] = {}
    if unit.kind == "rank":
        group["modules"] = list(unit.modules)
        group["rank"] = list(unit.choices)
    else:
        group["width"] = list(unit.choices)
        group["channels"] = _channels(unit)
    if unit.share != "layer":
        group["share"] = unit.share
    if unit.layers is not None and unit.layers != every:
        group["layers"] = sorted(unit.layers)
    return group


def _channels(unit: Unit) -> str | dict[str, list[str]]:
    for preset, dims in CHANNEL_PRESETS.items():
        if set(dims["out"]) == set(unit.modules) and set(dims["in"]) == set(unit.channels_in):
            return preset
    return {"out": list(unit.modules), "in": list(unit.channels_in)}


def _base_name(unit: Unit) -> str:
    """``attn`` for q/k/v (plus the other leaves), the joined leaves otherwise; widths: the parent."""
    if unit.kind == "width":
        channels = _channels(unit)
        parents = {m.rpartition(".")[0] for m in unit.modules}
        name = channels if isinstance(channels, str) else (parents.pop() if len(parents) == 1 else "") or "width"
    else:
        leaves = [m.rpartition(".")[2].removesuffix("_proj") for m in unit.modules]
        if {"q", "k", "v"} <= set(leaves):
            leaves = ["attn"] + [leaf for leaf in leaves if leaf not in {"q", "k", "v"}]
        name = "_".join(dict.fromkeys(leaves))
    name = re.sub(r"[^A-Za-z0-9_-]", "_", name)
    return name if re.match(r"[A-Za-z_]", name) else f"g_{name}"


def _unique(name: str, taken: Mapping[str, Any]) -> str:
    candidate, k = name, 2
    while candidate in taken:
        candidate, k = f"{name}_{k}", k + 1
    return candidate
