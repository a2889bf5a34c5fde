"""Picking one subnet from a search's results table.

* ``knee``: the compromise of the Pareto front. Each objective is normalised to [0, 1] over the front
  (0 = the front's best value); the *ends* are the points best in some objective (with accuracy and
  MACs: the most accurate and the cheapest), every other point is *interior*. The knee is the
  interior point with the smallest sum of normalised objectives; with accuracy and MACs, the one
  whose share of the front's accuracy range kept minus its share of the front's MAC range spent is
  largest. With two objectives the ends sit at (0, 1) and (1, 0), so this is the interior point
  farthest on the ideal side of the line joining the ends (a front that bulges), or, when every
  interior point lies beyond that line (a front that sags), the one nearest to it. Why: the rule is
  free of units, needs no noise model, works for any number of objectives, and hands back an end
  only when the front has no interior point (one or two points). A rule over all points would not:
  each end sums to exactly 1, so on a sagging front an end would win. Ties go to the point nearest
  the ideal point, then to the lowest eval_id.
* ``max-accuracy-under-macs X``: the most accurate evaluation with ``macs <= X`` (``X`` may carry a
  K/M/G/T suffix); ``max-SCORE-under-COST X`` works for any two columns.
* ``heuristic``, ``max``, ``min``: the row evaluated as that reference config (else the config
  itself, from the space, with no measured objectives).
* ``row N``: the evaluation with ``eval_id`` N.

Objective directions come from the run's stored bounds, or for a bare table from the registered
objectives (`lorasearch.results.table.DIRECTIONS_OF`).
"""

from __future__ import annotations

import difflib
import json
import re
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..errors import ExportError, LoraSearchError
from ..space import Config, SearchSpace
from .table import DIRECTIONS_OF, ObjectiveSpec, pareto_mask

PICKS = ("knee", "max-accuracy-under-macs X", "heuristic", "max", "min", "row N")
META_COLUMNS = frozenset({
    "eval_id", "config", "genes", "generation", "source", "seconds", "is_pareto", "feasible", "constraints",
})
_UNDER = re.compile(r"^max-(?P<score>\w+)-under-(?P<cost>\w+)[\s=:]+(?P<bound>\S+)$")
_ROW = re.compile(r"^row[\s=:]*(?P<id>-?\d+)$")
_SUFFIX = {"k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def registered_specs(table: pd.DataFrame) -> list[ObjectiveSpec]:
    """The registered objectives found among a table's columns, with placeholder bounds (0, 1)."""
    return [ObjectiveSpec(name, direction, 0.0, 1.0) for name, direction in DIRECTIONS_OF.items() if name in table]


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
    specs = list(specs) if specs is not None else registered_specs(table)
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
    spread = hi > lo
    z = (points - lo) / np.where(spread, hi - lo, 1.0)
    interior = ~np.any((z == 0) & spread, axis=1)  # best in no objective that varies over the front
    candidates = np.flatnonzero(interior) if interior.any() else np.arange(len(z))
    order = np.lexsort((candidates, np.linalg.norm(z[candidates], axis=1), np.round(z[candidates].sum(axis=1), 12)))
    return int(candidates[order[0]])


def objective_text(name: str, value: float) -> str:
    """One measured objective in words: ``14.56 GMACs`` (``macs_merged``: ``GMACs (merged)``), else ``name value``."""
    if name.startswith("macs"):
        kind = name.removeprefix("macs").lstrip("_")
        return f"{gmacs_text(value)} GMACs" + (f" ({kind})" if kind else "")
    if name == "params":
        return f"{value / 1e6:.2f} M parameters"
    return f"{name} {value:.3f}" if abs(value) < 10 else f"{name} {value:.4g}"


def gmacs_text(macs: float) -> str:
    """MACs in GMACs with two decimals (``11.00``), or three significant digits below 1 G (``0.0176``)."""
    g = macs / 1e9
    return f"{g:.2f}" if abs(g) >= 1 else f"{g:.3g}"


def pick_summary(row: pd.Series | None, pick: str, specs: Sequence[ObjectiveSpec] = ()) -> str:
    """One line on what a pick chose: the evaluation, its objectives, and in words when it is the max,
    min or heuristic config (for a knee at an end: that the front has no point between its ends)."""
    pick = " ".join(str(pick).split())
    if row is None:
        return f"--pick {pick}: the {pick} config of the space (not evaluated by the search)"
    label = reference_label(row)
    what = f"evaluation {int(row['eval_id'])}" + (f", the {label} config" if label else "")
    if pick == "knee" and label in ("max", "min"):
        what += " (the front has no point between its ends, so the knee is one of them)"
    measured = [objective_text(s.name, float(row[s.name])) for s in specs if s.name in row.index and pd.notna(row[s.name])]
    return f"--pick {pick}: {what}" + (f": {', '.join(measured)}" if measured else "")


def reference_label(row: pd.Series | None) -> str | None:
    """``max``, ``min`` or ``heuristic`` when the row is that reference config (first label found), else None."""
    if row is None or "source" not in row.index:
        return None
    labels = str(row["source"]).split("+")
    return next((label for label in ("max", "min", "heuristic") if label in labels), None)


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
        have = [c for c in table.columns if c not in META_COLUMNS]
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
        return space.canonical(config_of(row)) == wanted
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
            have = [c for c in table.columns if c not in META_COLUMNS]
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


def config_of(row: pd.Series) -> Config:
    """The config of a results row (stored as JSON text in results.csv)."""
    raw = row["config"]
    return dict(json.loads(raw)) if isinstance(raw, str) else dict(raw)


def _row_config(row: pd.Series, space: SearchSpace | None) -> Config:
    config = config_of(row)
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
        names = [c for c in row.index if c not in META_COLUMNS and not c.endswith("_stderr")]
    out = {}
    for name in names:
        for column in (name, f"{name}_stderr"):
            if column in row.index and pd.notna(row[column]) and _is_number(row[column]):
                out[column] = float(row[column])
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
