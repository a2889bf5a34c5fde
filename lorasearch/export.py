"""Export a chosen subnet: its config, a stock-PEFT sub-adapter, a merged model, or a pruned model.

Four formats, each written into a new folder (built in a temporary folder beside it, then renamed,
so a crash leaves no half-written export; an existing folder is refused):

* ``config``: ``subnet.json``: the choice per group and per gene, the resolved module sizes, the
  objectives measured in the search, and where it came from (run, space, adapter, model).
* ``peft``: a LoRA sub-adapter that *unpatched* ``PeftModel.from_pretrained`` loads. Each module
  keeps ``lora_A[:r']`` and ``lora_B[:, :r']``; ``rank_pattern``/``alpha_pattern`` carry one
  fully qualified, regex-escaped key per module with ``alpha' = s * r'`` (rsLoRA: ``s * sqrt(r')``),
  ``s`` being the training scale ``alpha / r_max``, so PEFT's ``alpha' / r'`` equals ``s``.
  ``target_modules`` lists the kept modules by full name, so modules at rank 0 are absent.
  Mode B widths cannot be expressed by PEFT: a config that shrinks a width is refused.
* ``merged``: the active adapters folded into the base weights, saved with ``save_pretrained``
  (and the tokenizer); ``AutoModelForCausalLM.from_pretrained`` loads it. Full widths only.
* ``pruned`` (Mode B): a physically smaller model: MLP intermediate channels and attention heads
  removed, adapters merged. When every layer keeps the same sizes, ``config.json`` is a stock
  config (smaller ``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads``, with an
  explicit ``head_dim``) and ``AutoModelForCausalLM.from_pretrained`` loads it. When sizes differ per
  layer, no stock config class can express them: ``lorasearch_pruned.json`` lists every linear
  layer whose shape differs from ``config.json``, and `load_pruned` rebuilds the model (it loads
  both kinds of folder). Every ``pruned`` folder holds ``lorasearch_pruned.json``.

Picking a row of a search's ``results.csv`` (`pick_config`):

* ``knee``: the Pareto-front point with the smallest sum of objectives normalised to [0, 1] over the
  front (0 = best). With two objectives the front's extremes normalise to (0, 1) and (1, 0), so this
  is the point farthest from the line joining the extremes, on the side of the ideal point: the
  usual knee. Ties go to the point nearest the ideal point, then to the lowest eval_id.
* ``max-accuracy-under-macs X``: the most accurate evaluation with ``macs <= X`` (``X`` may carry a
  K/M/G/T suffix); ``max-SCORE-under-COST X`` works for any two columns.
* ``heuristic``, ``max``, ``min``: the row evaluated as that reference config (else the config
  itself, from the space, with no measured objectives).
* ``row N``: the evaluation with ``eval_id`` N.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import difflib
import errno
import json
import math
import os
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import yaml
from torch import nn

from .elastic import ElasticLoRALinear
from .errors import LoraSearchError
from .io import atomic_write_json
from .peft_format import AdapterModule, write_adapter
from .results import ObjectiveSpec, pareto_mask
from .space import Config, SearchSpace

FORMATS = ("config", "peft", "merged", "pruned")
SUBNET_FILE = "subnet.json"
PRUNED_FILE = "lorasearch_pruned.json"
RESULTS_FILE = "results.csv"
PICKS = ("knee", "max-accuracy-under-macs X", "heuristic", "max", "min", "row N")
# Directions of the registered objectives (lorasearch.search.objectives), for tables without run.yaml.
KNOWN_DIRECTIONS = {
    "accuracy": "max", "macs": "min", "macs_merged": "min", "macs_unmerged": "min", "params": "min", "latency": "min",
    "macs_effective": "min",
}
_META_COLUMNS = {
    "eval_id", "config", "genes", "generation", "source", "seconds", "is_pareto", "feasible", "constraints",
}
_UNDER = re.compile(r"^max-(?P<score>\w+)-under-(?P<cost>\w+)[\s=:]+(?P<bound>\S+)$")
_ROW = re.compile(r"^row[\s=:]*(?P<id>-?\d+)$")
_SUFFIX = {"k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_LAYER_KEY = re.compile(r"^[^.]+\.(\d+)(?:\.|$)")


class ExportError(LoraSearchError):
    """A subnet cannot be picked or exported as asked."""


# ------------------------------------------------------------------------------ run directory
def load_results(run_dir: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a search's ``results.csv`` and ``run.yaml`` (empty dict when absent)."""
    run_dir = Path(run_dir)
    file = run_dir / RESULTS_FILE
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: not a folder; fix: point at a search's run directory (lorasearch search --out)")
    if not file.is_file():
        raise ExportError(
            f"{file}: missing, the run has no results yet; fix: let `lorasearch search` finish a generation first"
        )
    try:
        table = pd.read_csv(file)
    except pd.errors.EmptyDataError:
        table = pd.DataFrame()
    if table.empty or "config" not in table:
        raise ExportError(f"{file}: holds no evaluations; fix: let `lorasearch search` finish a generation first")
    run_file = run_dir / "run.yaml"
    document = yaml.safe_load(run_file.read_text()) if run_file.is_file() else {}
    return table, document or {}


def objective_specs(table: pd.DataFrame, document: Mapping[str, Any] | None = None) -> list[ObjectiveSpec]:
    """The run's objectives: from run.yaml's stored bounds, else the known names found in the table."""
    stored = (document or {}).get("bounds")
    if stored:
        return [ObjectiveSpec(**s) for s in stored]
    return [ObjectiveSpec(n, d, 0.0, 1.0) for n, d in KNOWN_DIRECTIONS.items() if n in table]


# ------------------------------------------------------------------------------------ picking
def pick_config(
    table: pd.DataFrame,
    pick: str,
    space: SearchSpace | None = None,
    specs: Sequence[ObjectiveSpec] | None = None,
) -> tuple[pd.Series | None, Config]:
    """Choose one subnet from a results table; see the module docstring for the picks.

    Args:
        table: a search's results (``results.csv``: eval_id, config, objective columns, source, ...).
        pick: ``knee``, ``max-accuracy-under-macs X``, ``heuristic``, ``max``, ``min`` or ``row N``.
        space: the search space; validates the picked config and supplies reference configs that
            were not evaluated (the row is then None).
        specs: the objectives and their directions (default: the registered names found in the table).

    Returns:
        The picked row (None for an unevaluated reference config) and its config.
    """
    pick = " ".join(str(pick).split())
    if table.empty:
        raise ExportError("the results table is empty; fix: run a search first")
    specs = list(specs) if specs is not None else objective_specs(table)
    if pick == "knee":
        row = _pick_knee(table, specs)
    elif pick in ("heuristic", "max", "min"):
        return _pick_reference(table, pick, space)
    elif (m := _ROW.match(pick)) is not None:
        row = _pick_row(table, int(m["id"]))
    elif (m := _UNDER.match(pick)) is not None:
        row = _pick_under(table, m["score"], m["cost"], _parse_number(m["bound"], pick))
    else:
        close = difflib.get_close_matches(pick, PICKS, n=1, cutoff=0.3)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ExportError(f"--pick {pick!r}: unknown; {hint}fix: use one of {', '.join(PICKS)}")
    return row, _row_config(row, space)


def knee_index(points: np.ndarray) -> int:
    """Index of the knee of a front of minimisation points (one row per point); see the module docstring."""
    points = np.asarray(points, dtype=float)
    lo, hi = points.min(axis=0), points.max(axis=0)
    z = (points - lo) / np.where(hi > lo, hi - lo, 1.0)
    order = np.lexsort((np.arange(len(z)), np.linalg.norm(z, axis=1), np.round(z.sum(axis=1), 12)))
    return int(order[0])


def _feasible(table: pd.DataFrame) -> pd.DataFrame:
    if "feasible" not in table:
        return table
    return table[_as_bool(table["feasible"])]


def _as_bool(column: pd.Series) -> pd.Series:
    return column.map(lambda v: str(v).strip().lower() in ("true", "1", "1.0"))


def _minimisation(table: pd.DataFrame, specs: Sequence[ObjectiveSpec]) -> np.ndarray:
    return np.column_stack([table[s.name].to_numpy(float) * (-1.0 if s.direction == "max" else 1.0) for s in specs])


def _pick_knee(table: pd.DataFrame, specs: Sequence[ObjectiveSpec]) -> pd.Series:
    missing = [s.name for s in specs if s.name not in table]
    if len(specs) < 2 or missing:
        have = [c for c in table.columns if c not in _META_COLUMNS]
        raise ExportError(
            f"--pick knee: needs two or more objective columns (missing {missing or 'objectives'}; the table has "
            f"{', '.join(have) or 'none'}); fix: use --pick 'row N', or point at the run's folder with its run.yaml"
        )
    rows = _feasible(table).dropna(subset=[s.name for s in specs])
    if rows.empty:
        raise ExportError("--pick knee: no feasible evaluation; fix: relax the constraints, or use --pick 'row N'")
    if "is_pareto" in rows:
        front = rows[_as_bool(rows["is_pareto"])]
    else:
        front = rows[pareto_mask(_minimisation(rows, specs))]
    front = (front if len(front) else rows).sort_values("eval_id")
    return front.iloc[knee_index(_minimisation(front, specs))]


def _pick_reference(table: pd.DataFrame, which: str, space: SearchSpace | None) -> tuple[pd.Series | None, Config]:
    if "source" in table:
        rows = table[table["source"] == which]
        if len(rows):
            row = rows.sort_values("eval_id").iloc[0]
            return row, _row_config(row, space)
    if space is None:
        sources = sorted(set(table["source"])) if "source" in table else []
        raise ExportError(
            f"--pick {which}: no evaluation has source {which!r} (sources: {', '.join(map(str, sources)) or 'none'}); "
            "fix: use --pick knee or 'row N', or give the space so the config can be built from it"
        )
    config = getattr(space, which)()
    wanted = space.canonical(config)
    for _, row in table.sort_values("eval_id").iterrows():
        if _same_config(row, space, wanted):
            return row, config
    return None, config


def _same_config(row: pd.Series, space: SearchSpace, wanted: tuple) -> bool:
    try:
        return space.canonical(_parse_config(row)) == wanted
    except LoraSearchError:
        return False


def _pick_row(table: pd.DataFrame, eval_id: int) -> pd.Series:
    ids = table["eval_id"].astype(int)
    rows = table[ids == eval_id]
    if rows.empty:
        closest = int(ids.iloc[int(np.argmin(np.abs(ids.to_numpy() - eval_id)))])
        raise ExportError(
            f"--pick 'row {eval_id}': no evaluation has eval_id {eval_id} (ids {ids.min()}..{ids.max()}); "
            f"closest: --pick 'row {closest}'"
        )
    return rows.iloc[0]


def _pick_under(table: pd.DataFrame, score: str, cost: str, bound: float) -> pd.Series:
    pick = f"max-{score}-under-{cost} {bound:g}"
    for name in (score, cost):
        if name not in table:
            have = [c for c in table.columns if c not in _META_COLUMNS]
            raise ExportError(
                f"--pick {pick!r}: the results have no {name!r} column; fix: use one of {', '.join(have)}"
            )
    rows = _feasible(table).dropna(subset=[score, cost])
    if rows.empty:
        raise ExportError(
            f"--pick {pick!r}: no feasible evaluation has both {score} and {cost}; fix: use --pick 'row N'"
        )
    under = rows[rows[cost] <= bound]
    if under.empty:
        smallest = rows.sort_values([cost, "eval_id"]).iloc[0]
        raise ExportError(
            f"--pick {pick!r}: no evaluation has {cost} <= {bound:g}; the smallest is {smallest[cost]:.6g} "
            f"(eval_id {int(smallest['eval_id'])}); closest: --pick 'max-{score}-under-{cost} {smallest[cost]:.6g}'"
        )
    best = under.sort_values([score, cost, "eval_id"], ascending=[False, True, True])
    return best.iloc[0]


def _parse_number(text: str, pick: str) -> float:
    text = text.strip()
    scale = _SUFFIX.get(text[-1:].lower(), 1.0)
    try:
        return float(text[:-1] if scale != 1.0 else text) * scale
    except ValueError:
        raise ExportError(
            f"--pick {pick!r}: {text!r} is not a number; fix: e.g. max-accuracy-under-macs 2.5e8 (or 250M)"
        ) from None


def _parse_config(row: pd.Series) -> Config:
    raw = row["config"]
    return dict(json.loads(raw)) if isinstance(raw, str) else dict(raw)


def _row_config(row: pd.Series, space: SearchSpace | None) -> Config:
    config = _parse_config(row)
    if space is not None:
        try:
            space.encode(config)
        except LoraSearchError as exc:
            raise ExportError(f"eval_id {int(row['eval_id'])}: its config does not fit space {space.name!r} ({exc}); "
                              "fix: export with the space the search used") from None
    return config


def row_objectives(row: pd.Series | None, specs: Sequence[ObjectiveSpec] | None = None) -> dict[str, float]:
    """The measured objectives of a results row (with their ``_stderr`` columns), as plain floats."""
    if row is None:
        return {}
    if specs:
        names = [s.name for s in specs]
    else:
        names = [c for c in row.index if c not in _META_COLUMNS and not c.endswith("_stderr")]
    out = {}
    for name in names:
        for column in (name, f"{name}_stderr"):
            if column in row.index and pd.notna(row[column]) and _is_number(row[column]):
                out[column] = float(row[column])
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


# --------------------------------------------------------------------------------- subnet.json
def subnet_document(
    space: SearchSpace,
    config: Mapping[str, Any],
    *,
    net: Any = None,
    objectives: Mapping[str, float] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What ``subnet.json`` holds: the config, the choice per group, sizes, objectives, provenance."""
    genes = space.encode(config)
    groups = {
        g.name: {"kind": g.kind, "values": [config[x.key] for x in space.genes if x.group == g.name]}
        for g in space.groups
    }
    document: dict[str, Any] = {
        "format": "lorasearch-subnet",
        "version": 1,
        "space_name": space.name,
        "mode": space.mode,
        "config": {key: config[key] for key in space.keys},
        "genes": [int(g) for g in genes],
        "groups": groups,
        "objectives": dict(objectives or {}),
        "provenance": {**_stamp(), **dict(provenance or {})},
        "space": space.to_dict(),
    }
    if net is not None:
        document["modules"] = module_sizes(net, config)
    return document


def module_sizes(net: Any, config: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """``module -> {rank, in, out}`` of every elastic module under ``config``."""
    with net.activated(config):
        return {n: {"rank": m.active_rank, "in": m.active_in, "out": m.active_out} for n, m in net.elastic.items()}


def _stamp() -> dict[str, Any]:
    from . import __version__

    return {"exported": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "lorasearch": __version__}


def export_config(
    net_or_space: Any,
    config: Mapping[str, Any],
    out: str | Path,
    provenance: Mapping[str, Any] | None = None,
    *,
    objectives: Mapping[str, float] | None = None,
) -> Path:
    """Write ``out/subnet.json`` for ``config`` (a `SuperNetwork` adds the resolved module sizes)."""
    _refuse_existing(out)
    net, space = _net_and_space(net_or_space)
    document = subnet_document(space, config, net=net, objectives=objectives, provenance=provenance)
    with _staged(out) as tmp:
        atomic_write_json(tmp / SUBNET_FILE, document)
    return Path(out)


def _net_and_space(net_or_space: Any) -> tuple[Any, SearchSpace]:
    if isinstance(net_or_space, SearchSpace):
        return None, net_or_space
    return net_or_space, net_or_space.space


# ---------------------------------------------------------------------------------------- peft
def export_peft(
    net: Any,
    config: Mapping[str, Any],
    out: str | Path,
    provenance: Mapping[str, Any] | None = None,
    *,
    objectives: Mapping[str, float] | None = None,
) -> Path:
    """Write the sub-adapter of ``config`` as a PEFT folder that stock ``PeftModel.from_pretrained`` loads.

    Raises `ExportError` when ``config`` shrinks a width (PEFT cannot express it: use ``pruned``) or
    leaves no module with a rank above 0.
    """
    _refuse_existing(out)
    with net.activated(config):
        _refuse_shrunk(net, "peft", "--format pruned (a physically smaller model) or a config at full width")
        modules = sub_adapter(net)
    if not modules:
        raise ExportError("--format peft: every adapter of this config has rank 0, so there is nothing to save; "
                          "fix: use --format merged (the base model) or pick another subnet")
    elastic = list(net.elastic.values())
    with _staged(out) as tmp:
        write_adapter(
            tmp, modules, base_model=net.model_spec,
            use_rslora=any(m.use_rslora for m in elastic), dropout=_dropout(elastic),
        )
        _write_subnet(tmp, net, config, objectives, provenance)
    return Path(out)


def sub_adapter(net: Any) -> dict[str, AdapterModule]:
    """The active sub-adapter: sliced tensors with ``alpha' = s * r'`` (rsLoRA: ``s * sqrt(r')``); rank 0 dropped."""
    modules = {}
    for name, m in net.elastic.items():
        r = m.active_rank
        if m.lora_A is None or r == 0:
            continue
        alpha = m.scaling * (math.sqrt(r) if m.use_rslora else r)
        modules[name] = AdapterModule(m.lora_A.weight[:r].detach(), m.lora_B.weight[:, :r].detach(), alpha)
    return modules


def _dropout(modules: Sequence[ElasticLoRALinear]) -> float:
    return next((m.lora_dropout.p for m in modules if isinstance(m.lora_dropout, nn.Dropout)), 0.0)


def _refuse_shrunk(net: Any, fmt: str, fix: str) -> None:
    shrunk = [(n, m) for n, m in net.elastic.items() if m.active_in < m.in_features or m.active_out < m.out_features]
    if shrunk:
        name, m = shrunk[0]
        raise ExportError(
            f"--format {fmt}: the config shrinks the widths of {len(shrunk)} modules (e.g. {name}: "
            f"{m.active_out}x{m.active_in} of {m.out_features}x{m.in_features}), which {fmt} cannot express; "
            f"fix: use {fix}"
        )


# ------------------------------------------------------------------------------ merged, pruned
def export_merged(
    net: Any,
    config: Mapping[str, Any],
    out: str | Path,
    provenance: Mapping[str, Any] | None = None,
    *,
    objectives: Mapping[str, float] | None = None,
) -> Path:
    """Fold the active adapters into a copy of the base weights and ``save_pretrained`` it (with the tokenizer).

    Raises `ExportError` when ``config`` shrinks a width: use `export_pruned` for that.
    """
    _refuse_existing(out)
    with net.activated(config):
        _refuse_shrunk(net, "merged", "--format pruned, which removes the dropped channels and heads")
        _check_compression(net)
        model = merged_copy(net)
    with _staged(out) as tmp:
        _save_model(tmp, model, net.tokenizer)
        _write_compression(tmp, net, model)
        _write_subnet(tmp, net, config, objectives, provenance)
    return Path(out)


def export_pruned(
    net: Any,
    config: Mapping[str, Any],
    out: str | Path,
    provenance: Mapping[str, Any] | None = None,
    *,
    objectives: Mapping[str, float] | None = None,
) -> Path:
    """Save the physically smaller model of a Mode B ``config`` (adapters merged); load it with `load_pruned`.

    With the same sizes in every layer the folder also loads with ``AutoModelForCausalLM.from_pretrained``.
    Raises `ExportError` for a space without elastic widths or heads (Mode A).
    """
    _require_mode_b(net.space)
    _refuse_existing(out)
    with net.activated(config):
        model = merged_copy(net)
    linears = _fit_stock_config(model)
    layout = {
        "format": "lorasearch-pruned",
        "version": 1,
        "stock": not linears,
        "loader": "lorasearch.load_pruned" if linears else "transformers.AutoModelForCausalLM.from_pretrained",
        "linears": linears,
    }
    with _staged(out) as tmp:
        _save_model(tmp, model, net.tokenizer)
        atomic_write_json(tmp / PRUNED_FILE, layout)
        _write_subnet(tmp, net, config, objectives, provenance)
    return Path(out)


def _check_compression(net: Any) -> None:
    """Sparse or quantized bases: refuse a merge that would lose the INT grid or hit a changed mask."""
    from .compress.network import check_mergeable

    check_mergeable(net)


def _write_compression(folder: Path, net: Any, model: nn.Module) -> None:
    """The INT codes (QA-SparsePEFT) and the sparsity report (SparsePEFT) beside a merged model."""
    from .compress.network import write_compression_files

    write_compression_files(folder, net, model)


def _require_mode_b(space: SearchSpace) -> None:
    if space.mode != "B":
        raise ExportError(
            f"--format pruned: space {space.name!r} is Mode A only (ranks), so nothing can be removed from the "
            "base model; fix: use --format merged or peft, or a space with width/heads groups"
        )


def merged_copy(net: Any) -> nn.Module:
    """A copy of the model whose elastic layers are plain ``nn.Linear`` of the active sizes, adapters merged."""
    plain = {id(m): _plain_linear(m) for m in net.elastic.values()}
    # Seeding deepcopy's memo makes the copy use the new linears in place of the elastic
    # wrappers, so the wrapped base weights are never copied a second time.
    model = copy.deepcopy(net.model, memo=plain).eval()
    _forget_dequantized_gguf(model)
    return model


def _forget_dequantized_gguf(model: nn.Module) -> None:
    """Detach the GGUF quantizer of a model whose weights were de-quantised on load.

    transformers refuses to ``save_pretrained`` a model loaded from GGUF, even when every weight is
    a plain float tensor; such a model saves as an ordinary checkpoint once the quantizer is gone.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if quantizer is None or str(getattr(method, "value", method)) != "gguf":
        return
    if not all(type(p) is nn.Parameter and p.is_floating_point() for p in model.parameters()):
        return  # weights kept in GGUF blocks: leave the refusal to transformers
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")


@torch.no_grad()
def _plain_linear(m: ElasticLoRALinear) -> nn.Linear:
    o, i = m.active_out, m.active_in
    base = m.base_layer
    weight = m.merged_weight()  # SparsePEFT / QA-SparsePEFT modules keep the mask and the INT grid
    layer = torch.nn.utils.skip_init(
        nn.Linear, i, o, bias=base.bias is not None, device=weight.device, dtype=weight.dtype
    )
    layer.weight.copy_(weight)
    if base.bias is not None:
        layer.bias.copy_(base.bias[:o])
    return layer.requires_grad_(False)


def _fit_stock_config(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Set the model's config to its most common per-layer sizes; return the linears it cannot express."""
    config = model.config
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    intermediate = _mode(m.out_features for n, m in linears.items() if n.endswith("mlp.up_proj"))
    heads = _mode(m.out_features // head_dim for n, m in linears.items() if n.endswith("self_attn.q_proj"))
    kv_heads = _mode(m.out_features // head_dim for n, m in linears.items() if n.endswith("self_attn.k_proj"))
    sizes = {"intermediate_size": intermediate, "num_attention_heads": heads, "num_key_value_heads": kv_heads}
    for key, value in sizes.items():
        if value is not None:
            setattr(config, key, value)
    config.head_dim = head_dim
    return _unexpressed_linears(model, linears)


def _mode(values: Iterator[int]) -> int | None:
    counts = Counter(values)
    return max(counts, key=lambda v: (counts[v], v)) if counts else None


def _unexpressed_linears(model: nn.Module, linears: Mapping[str, nn.Linear]) -> dict[str, dict[str, Any]]:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        reference = AutoModelForCausalLM.from_config(copy.deepcopy(model.config))
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    actual = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    odd = {}
    for key in sorted(set(expected) | set(actual)):
        if expected.get(key) == actual.get(key):
            continue
        module = key.rsplit(".", 1)[0]
        if module not in linears or key not in expected or key not in actual:
            raise ExportError(
                f"--format pruned: {key} has shape {actual.get(key)} but the config gives {expected.get(key)}; "
                "only linear layers can be pruned"
            )
        layer = linears[module]
        odd[module] = {"in": layer.in_features, "out": layer.out_features, "bias": layer.bias is not None}
    return odd


def load_pruned(
    path: str | Path, *, dtype: torch.dtype | None = None, attn_implementation: str | None = None
) -> nn.Module:
    """Load a model written by `export_pruned` (or any ``save_pretrained`` folder).

    Without per-layer sizes (or without ``lorasearch_pruned.json``) this is
    ``AutoModelForCausalLM.from_pretrained``; otherwise the stock architecture is built from
    ``config.json``, the linears listed in ``lorasearch_pruned.json`` are replaced by smaller ones,
    and the saved weights are loaded strictly.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    layout_file = path / PRUNED_FILE
    layout = json.loads(layout_file.read_text()) if layout_file.is_file() else {}
    kwargs: dict[str, Any] = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if not layout.get("linears"):
        return AutoModelForCausalLM.from_pretrained(path, **({"dtype": dtype} if dtype else {}), **kwargs).eval()
    config = AutoConfig.from_pretrained(path)
    state = _read_weights(path)
    with _no_init():
        model = AutoModelForCausalLM.from_config(config, **kwargs)
    model.to(dtype or next(iter(state.values())).dtype)
    for name, shape in layout["linears"].items():
        model.set_submodule(name, _empty_linear(shape, model))
    _load_strict(model, state, path)
    return model.eval()


def _empty_linear(shape: Mapping[str, Any], model: nn.Module) -> nn.Linear:
    ref = next(model.parameters())
    return torch.nn.utils.skip_init(nn.Linear, int(shape["in"]), int(shape["out"]), bias=bool(shape["bias"]),
                                    device=ref.device, dtype=ref.dtype)


def _no_init() -> contextlib.AbstractContextManager:
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers < 5
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    files = ["model.safetensors"]
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    state: dict[str, torch.Tensor] = {}
    for name in files:
        if not (path / name).is_file():
            raise ExportError(f"{path / name}: missing; fix: re-export the pruned model")
        state.update(load_file(str(path / name)))
    return state


def _load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ExportError(f"{path}: unexpected tensor {result.unexpected_keys[0]}; fix: re-export the pruned model")
    model.tie_weights()
    tensors = model.state_dict()
    loaded = {t.data_ptr() for k, t in tensors.items() if k not in result.missing_keys}
    untied = [k for k in result.missing_keys if tensors[k].data_ptr() not in loaded]
    if untied:
        raise ExportError(f"{path}: tensor {untied[0]} is missing; fix: re-export the pruned model")


def _save_model(folder: Path, model: nn.Module, tokenizer: Any) -> None:
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def _write_subnet(folder: Path, net: Any, config: Mapping[str, Any], objectives, provenance) -> None:
    document = subnet_document(net.space, config, net=net, objectives=objectives, provenance=provenance)
    atomic_write_json(folder / SUBNET_FILE, document)


# --------------------------------------------------------------------------------- staging
@contextlib.contextmanager
def _staged(out: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; rename it to ``out`` when the block succeeds."""
    out = Path(out)
    _refuse_existing(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as exc:
        raise ExportError(f"{out}: cannot create ({_reason(exc)}); fix: choose another --out") from None
    try:
        yield tmp
        if out.exists():
            raise ExportError(f"{out}: appeared while exporting; fix: choose another --out or delete it")
        os.rename(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(f"{out}: cannot write ({_reason(exc)}); fix: choose another --out or free space") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _refuse_existing(out: str | Path) -> None:
    if Path(out).exists():
        raise ExportError(f"{out}: already exists; fix: choose another --out or delete it")


def _reason(exc: OSError) -> str:
    return "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))


# ------------------------------------------------------------------------------ from a run
EXPORTERS = {"config": export_config, "peft": export_peft, "merged": export_merged, "pruned": export_pruned}


def export_run(
    run_dir: str | Path,
    pick: str,
    fmt: str,
    out: str | Path | None = None,
    *,
    net: Any = None,
    model: str | None = None,
    adapter: str | Path | None = None,
    space: SearchSpace | str | Path | None = None,
) -> Path:
    """Pick a subnet from a search's run directory and export it; the whole of ``lorasearch export``.

    ``model``, ``adapter`` and ``space`` override the run's ``run.yaml`` entries; ``net`` skips
    loading altogether. ``out`` defaults to ``RUN_DIR/exports/FORMAT-evalN``.
    """
    if fmt not in FORMATS:
        close = difflib.get_close_matches(fmt, FORMATS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ExportError(f"--format {fmt!r}: unknown; {hint}fix: use one of {', '.join(FORMATS)}")
    if out is not None:
        _refuse_existing(out)  # before loading a model
    run_dir = Path(run_dir)
    table, document = load_results(run_dir)
    recorded = dict(document.get("run") or {})
    run = {**(recorded.get("network") or {}), **recorded}  # lorasearch search records them under run.network
    run.update({k: v for k, v in (("model", model), ("adapter", adapter), ("space", space)) if v is not None})
    if fmt == "pruned" and net is None and (early := _space_of(run, run_dir, table)) is not None:
        _require_mode_b(early)  # before loading the model
    if net is None and fmt != "config":
        net = _network(run, run_dir)
    the_space = net.space if net is not None else _space_of(run, run_dir, table)
    if the_space is None:
        raise ExportError(f"{run_dir / 'run.yaml'}: run.space is not recorded; fix: pass --space")
    specs = objective_specs(table, document)
    row, config = pick_config(table, pick, the_space, specs)
    provenance = _provenance(run_dir, run, row, pick, net)
    out = Path(out) if out is not None else run_dir / "exports" / f"{fmt}-{_label(row, pick)}"
    target = net if net is not None else the_space
    return EXPORTERS[fmt](target, config, out, provenance, objectives=row_objectives(row, specs))


def _resolve(value: Any, run_dir: Path) -> Any:
    if not isinstance(value, (str, Path)):
        return value
    path = Path(value)
    if path.is_absolute() or path.exists() or not (run_dir / path).exists():
        return value
    return str(run_dir / path)


def _load_space(entry: Any, run_dir: Path) -> SearchSpace | None:
    if entry is None:
        return None
    if isinstance(entry, SearchSpace):
        return entry
    if isinstance(entry, Mapping):
        return SearchSpace.from_dict(entry, source=f"{run_dir / 'run.yaml'}: run.space")
    return SearchSpace.load(_resolve(entry, run_dir))


def _space_of(run: Mapping[str, Any], run_dir: Path, table: pd.DataFrame) -> SearchSpace | None:
    """The run's space, expanded over the layers its configs name (no model needed)."""
    space = _load_space(run.get("space"), run_dir)
    if space is None and run.get("adapter"):
        from .supernet import SPACE_FILE_NAME

        beside = Path(_resolve(run["adapter"], run_dir)) / SPACE_FILE_NAME  # the adapter's own space
        space = SearchSpace.load(beside) if beside.is_file() else None
    if space is None or space.per_layer is None or space.num_layers is not None:
        return space
    layers = [int(m.group(1)) for key in _parse_config(table.iloc[0]) if (m := _LAYER_KEY.match(key))]
    return space.with_num_layers(max(layers) + 1) if layers else space


def _network(run: Mapping[str, Any], run_dir: Path) -> Any:
    from .supernet import SPACE_FILE_NAME, SuperNetwork

    if not run.get("model"):
        raise ExportError(f"{run_dir / 'run.yaml'}: run.model is not recorded; fix: pass --model")
    adapter = _resolve(run.get("adapter"), run_dir)
    space = _load_space(run.get("space"), run_dir)
    if space is None and adapter is not None and (Path(adapter) / SPACE_FILE_NAME).is_file():
        space = SearchSpace.load(Path(adapter) / SPACE_FILE_NAME)
    if space is None:
        raise ExportError(f"{run_dir / 'run.yaml'}: run.space is not recorded; fix: pass --space")
    kwargs = {"gguf_file": run["gguf_file"]} if run.get("gguf_file") else {}
    kwargs["trust_remote_code"] = bool(run.get("trust_remote_code", False))
    compressed = _compressed_network(run, run_dir, space, adapter, kwargs)
    if compressed is not None:
        return compressed
    return SuperNetwork.from_pretrained(str(_resolve(run["model"], run_dir)), space, adapter, seed=int(run.get("seed", 0)), **kwargs)


def _compressed_network(run: Mapping[str, Any], run_dir: Path, space: SearchSpace, adapter: Any, kwargs: dict) -> Any:
    """A sparse/QA adapter or a quantized base: the network as `lorasearch.compress` builds it, else None."""
    from .compress.network import build_compressed_network, needs_compressed_build
    from .session import NetworkSettings

    settings = NetworkSettings(model=str(_resolve(run["model"], run_dir)), adapter=str(adapter) if adapter else None,
                               seed=int(run.get("seed", 0)), adapter_mode=run.get("adapter_mode"))
    if not needs_compressed_build(settings):
        return None
    return build_compressed_network(settings, space, {"gguf_file": None, **kwargs})


def _provenance(run_dir: Path, run: Mapping[str, Any], row: pd.Series | None, pick: str, net: Any) -> dict[str, Any]:
    return {
        "run": str(run_dir),
        "pick": pick,
        "eval_id": int(row["eval_id"]) if row is not None else None,
        "source": str(row["source"]) if row is not None and "source" in row.index else None,
        "model": getattr(net, "model_spec", None) or run.get("model"),
        "adapter": str(run["adapter"]) if run.get("adapter") else None,
        "space": _describe_space(run.get("space")),
    }


def _describe_space(entry: Any) -> str | None:
    if entry is None or isinstance(entry, (str, Path)):
        return None if entry is None else str(entry)
    return entry.name if isinstance(entry, SearchSpace) else str(dict(entry).get("name"))


def _label(row: pd.Series | None, pick: str) -> str:
    return f"eval{int(row['eval_id'])}" if row is not None else re.sub(r"[^A-Za-z0-9_.-]+", "-", pick)
