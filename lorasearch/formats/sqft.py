"""SQFT's ``elastic_adapter_config.json``: one ``{target, search_space}`` entry per shared rank.

SQFT writes one entry per decoder layer whose targets are that layer's lora_A weights
(``share_rank_within_layer=True``), or one entry per module (``False``)::

    [{"target": ["base_model.model.model.layers.0.self_attn.q_proj.lora_A", ...],
      "search_space": [32, 24, 16]}, ...]

Its legacy code could hold the same list under an ``SQFT`` key (``"algorithm": "nls"``).

Per-layer entries become ``share: layer`` groups. The one-module entries of a layer that have the same
choices become one ``share: module`` group: one gene per module and layer, as SQFT samples them.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, Mapping

from ..errors import SpaceError
from ..space import SearchSpace
from . import Unit, build_space, check_choices
from .nncf import targets_note

_PEFT_PREFIX = "base_model.model."
_LORA_SUFFIX = re.compile(r"\.lora_[AB](\..*)?$")
_EXAMPLE = "base_model.model.model.layers.0.self_attn.q_proj.lora_A"


def space_from_sqft(data: Any, *, source: str, name: str, alpha: float | None = None) -> SearchSpace:
    """Build a space from the parsed JSON of an ``elastic_adapter_config.json``."""
    entries, prefix = _entries(data, source)
    per_layer, units = None, []
    for k, entry in enumerate(entries):
        entry_layer, unit = _entry_unit(entry, source, f"{prefix}[{k}]")
        if per_layer not in (None, entry_layer):
            raise SpaceError(
                f"{source}: {prefix}[{k}].target: layers live under {entry_layer} here but under {per_layer} "
                f"before; fix: one file describes one model"
            )
        per_layer = entry_layer
        units.append(unit)
    modules = [m for unit in units for m in unit.modules]
    description = (
        f"Imported from SQFT elastic_adapter_config.json ({len(entries)} entries: the training command's "
        f"--nls_target_modules).{targets_note(modules)}"
    )
    return build_space(
        _share_modules(units), per_layer=per_layer, name=name, source=source, description=description, alpha=alpha
    )


def parse_target(target: str) -> tuple[str, int, str]:
    """Split a target weight name into (per_layer template, layer index, module within the layer).

    ``base_model.model.model.layers.3.self_attn.q_proj.lora_A`` gives
    ``("model.layers.{i}", 3, "self_attn.q_proj")``.
    """
    parts = _LORA_SUFFIX.sub("", target.removeprefix(_PEFT_PREFIX)).split(".")
    for i in range(1, len(parts) - 1):
        if parts[i].isdigit():
            return ".".join(parts[:i]) + ".{i}", int(parts[i]), ".".join(parts[i + 1 :])
    raise ValueError("no layer index between the model path and the module")


def _entries(data: Any, source: str) -> tuple[list, str]:
    prefix = ""
    if isinstance(data, Mapping) and "SQFT" in data:
        algorithm = data.get("algorithm", "nls")
        if algorithm != "nls":
            raise SpaceError(f"{source}: algorithm: {algorithm!r} is not SQFT's 'nls'; fix: import an NLS config")
        data, prefix = data["SQFT"], "SQFT"
    if not isinstance(data, list) or not data:
        raise SpaceError(
            f"{source}: {prefix or 'the file'}: must be a non-empty list of {{target, search_space}} entries; "
            f'fix: e.g. [{{"target": ["{_EXAMPLE}"], "search_space": [32, 24, 16]}}]'
        )
    return data, prefix


def _entry_unit(entry: Any, source: str, field: str) -> tuple[str, Unit]:
    if not isinstance(entry, Mapping):
        raise SpaceError(f"{source}: {field}: must be a mapping with target and search_space; fix: see SQFT's output")
    if "search_space" not in entry:
        raise SpaceError(f"{source}: {field}.search_space: missing; fix: give the rank choices, e.g. [32, 24, 16]")
    choices = check_choices(entry["search_space"], source=source, field=f"{field}.search_space", minimum=0)
    targets = entry.get("target")
    targets = [targets] if isinstance(targets, str) else targets
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise SpaceError(
            f'{source}: {field}.target: must be a non-empty list of weight names; fix: e.g. ["{_EXAMPLE}"]'
        )
    parsed = [_parse(t, source, f"{field}.target[{n}]") for n, t in enumerate(targets)]
    templates = {p[0] for p in parsed}
    if len(templates) > 1:
        raise SpaceError(f"{source}: {field}.target: names lie under {sorted(templates)}; fix: one model per file")
    layers, modules = _layers_and_modules(parsed, source, field)
    share = "global" if len(layers) > 1 else "layer"
    return templates.pop(), Unit("rank", modules, choices, frozenset(layers), field, share=share)


def _parse(target: str, source: str, field: str) -> tuple[str, int, str]:
    try:
        return parse_target(target)
    except ValueError as exc:
        raise SpaceError(
            f"{source}: {field}: cannot parse {target!r} ({exc}); fix: use names like {_EXAMPLE}"
        ) from None


def _layers_and_modules(
    parsed: list[tuple[str, int, str]], source: str, field: str
) -> tuple[list[int], tuple[str, ...]]:
    """The entry's layers and its modules, which must be the same in every layer it spans."""
    per_layer: dict[int, tuple[str, ...]] = {}
    for _, layer, module in parsed:
        per_layer[layer] = tuple(dict.fromkeys(per_layer.get(layer, ()) + (module,)))
    shapes = set(map(frozenset, per_layer.values()))
    if len(shapes) > 1:
        raise SpaceError(
            f"{source}: {field}.target: one rank shared by different modules in different layers cannot be "
            "expressed; fix: give each layer its own entry"
        )
    return sorted(per_layer), next(iter(per_layer.values()))


def _share_modules(units: list[Unit]) -> list[Unit]:
    """Fold a layer's one-module entries with equal choices into one ``share: module`` unit."""
    buckets: dict[Any, list[Unit]] = {}
    for n, unit in enumerate(units):
        single = unit.share == "layer" and len(unit.modules) == 1
        buckets.setdefault((unit.layers, unit.choices) if single else n, []).append(unit)
    out = []
    for bucket in buckets.values():
        modules = tuple(m for u in bucket for m in u.modules)
        if len(bucket) == 1 or len(set(modules)) < len(modules):  # duplicates: left for the overlap check
            out.extend(bucket)
        else:
            where = ", ".join(u.where for u in bucket)
            out.append(replace(bucket[0], modules=modules, share="module", where=where))
    return out
