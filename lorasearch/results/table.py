"""Search results: the table of every evaluation, its Pareto set, hypervolume and noise.

Objectives carry a direction (``max`` or ``min``). Internally everything is turned into
minimisation and normalised by fixed bounds stored with the run, so hypervolumes of different
runs over the same bounds compare: each objective maps ``best -> 0`` and ``worst -> 1``, and the
hypervolume is taken against the reference point ``(1, ..., 1)``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

# The registered objectives and which way is better: the one list that builders, pickers and
# readers of a bare results table consult.
DIRECTIONS_OF = {
    "accuracy": "max",
    "macs": "min",
    "macs_merged": "min",
    "macs_unmerged": "min",
    "params": "min",
    "latency": "min",
    "macs_effective": "min",
}


@dataclass(frozen=True)
class ObjectiveSpec:
    """How one objective is read from the results: name, direction and normalisation bounds.

    ``best`` and ``worst`` bound the normalisation (``best -> 0``, ``worst -> 1``); ``worst`` is
    the hypervolume reference coordinate. Points worse than ``worst`` add no hypervolume.
    """

    name: str
    direction: str  # "max" or "min"
    best: float
    worst: float
    unit: str = ""

    def normalise(self, values: np.ndarray) -> np.ndarray:
        return (np.asarray(values, dtype=float) - self.best) / (self.worst - self.best)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def shared_specs(spec_lists: Sequence[Sequence[ObjectiveSpec]]) -> list[ObjectiveSpec]:
    """One set of bounds for runs compared with one another: per objective (of the first run's), the
    most optimistic ``best`` and the most pessimistic ``worst`` of any run, so every run's front lies
    inside and the hypervolumes share one reference point."""
    if not spec_lists:
        return []
    shared = []
    for spec in spec_lists[0]:
        same = [s for specs in spec_lists for s in specs if s.name == spec.name]
        pick_best, pick_worst = (max, min) if spec.direction == "max" else (min, max)
        shared.append(ObjectiveSpec(spec.name, spec.direction, pick_best(s.best for s in same),
                                    pick_worst(s.worst for s in same), spec.unit))
    return shared


def to_minimisation(table: pd.DataFrame, specs: Sequence[ObjectiveSpec]) -> np.ndarray:
    """An (n, k) array of normalised objectives, smaller is better, from a results table."""
    if table.empty:
        return np.empty((0, len(specs)))
    return np.column_stack([s.normalise(table[s.name].to_numpy(dtype=float)) for s in specs])


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """True for the non-dominated rows of a minimisation problem (duplicates are all kept)."""
    points = np.asarray(points, dtype=float)
    n = len(points)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        if not mask[i]:
            continue
        dominated = np.all(points <= points[i], axis=1) & np.any(points < points[i], axis=1)
        if dominated.any():
            mask[i] = False
    return mask


def hypervolume(points: np.ndarray) -> float:
    """Hypervolume of normalised minimisation points against the reference point (1, ..., 1)."""
    points = np.asarray(points, dtype=float)
    if points.size == 0:
        return 0.0
    inside = points[np.all(points < 1.0, axis=1)]
    if len(inside) == 0:
        return 0.0
    if inside.shape[1] == 2:
        return _hypervolume_2d(inside)
    from pymoo.indicators.hv import HV

    return float(HV(ref_point=np.ones(inside.shape[1]))(inside))


def _hypervolume_2d(points: np.ndarray) -> float:
    front = points[pareto_mask(points)]
    front = front[np.argsort(front[:, 0])]
    area, previous_y = 0.0, 1.0
    for x, y in front:
        if y < previous_y:
            area += (1.0 - x) * (previous_y - y)
            previous_y = y
    return float(area)


def hypervolume_curve(table: pd.DataFrame, specs: Sequence[ObjectiveSpec], by: str = "eval_id") -> pd.DataFrame:
    """Hypervolume of everything evaluated up to each value of ``by`` (``eval_id`` or ``generation``),
    with the evaluations and the validation items run through the model (``item_forwards``, a
    decomposed surrogate's probes included) so far.

    Infeasible and early-stopped evaluations count as evaluations but add no volume. Only the
    running front is kept, so a run of thousands of evaluations takes milliseconds.
    """
    if table.empty:
        return pd.DataFrame({by: [], "evaluations": [], "item_forwards": [], "hypervolume": []})
    ordered = table.sort_values("eval_id")
    points = to_minimisation(ordered, specs)
    feasible = eligible(ordered)
    front = np.empty((0, len(specs)))
    current, running = 0.0, []
    for p, ok in zip(points, feasible):
        if ok and not np.any(np.all(front <= p, axis=1)):  # a weakly dominated point adds nothing
            front = np.vstack([front[~np.all(p <= front, axis=1)], p])
            current = hypervolume(front)
        running.append(current)
    forwards = spent_forwards(ordered).cumsum()
    curve = pd.DataFrame({by: ordered[by].to_numpy(), "evaluations": np.arange(1, len(ordered) + 1),
                          "item_forwards": forwards.astype(int), "hypervolume": running})
    return curve.groupby(by, as_index=False).last()


def spent_forwards(table: pd.DataFrame) -> np.ndarray:
    """Items each row's evaluation ran through the model, with the surrogate probes logged before it."""
    spent = np.zeros(len(table))
    for column in ("item_forwards", "probe_forwards"):
        if column in table:
            spent = spent + table[column].fillna(0).to_numpy(dtype=float)
    return spent


def binomial_stderr(accuracy: float, n: int) -> float:
    """Standard error of an accuracy measured on ``n`` independent items."""
    if n <= 0:
        return float("nan")
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / n)


def within_noise(a: float, se_a: float, b: float, se_b: float, z: float = 2.0) -> bool:
    """Whether two accuracies differ by less than ``z`` standard errors of their difference."""
    if any(math.isnan(v) for v in (se_a, se_b)):
        return False
    return abs(a - b) < z * math.hypot(se_a, se_b)


def results_table(records: Iterable[Mapping[str, Any]], specs: Sequence[ObjectiveSpec]) -> pd.DataFrame:
    """The table of every evaluation, with ``is_pareto`` over the objectives in ``specs``."""
    rows = []
    for r in records:
        if "eval_id" not in r:
            continue  # a raced evaluation's chunk, not an evaluation
        row = {k: v for k, v in r.items() if k not in ("config", "genes", "objectives", "item_scores")}
        row.update(r.get("objectives", {}))
        row["config"] = json.dumps(r["config"], sort_keys=False)
        row["genes"] = json.dumps(list(r["genes"]))
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table = table.sort_values("eval_id").reset_index(drop=True)
    candidates = eligible(table)
    mask = np.zeros(len(table), dtype=bool)
    if candidates.any():
        mask[candidates] = pareto_mask(to_minimisation(table[candidates], specs))
    table["is_pareto"] = mask
    return table


def eligible(table: pd.DataFrame) -> np.ndarray:
    """Rows that may be Pareto points: feasible, and scored in full (not stopped early by racing)."""
    ok = table["feasible"].to_numpy(dtype=bool) if "feasible" in table else np.ones(len(table), dtype=bool)
    if "partial" in table:
        ok = ok & ~table["partial"].fillna(False).to_numpy(dtype=bool)
    return ok


def noise_notes(front: pd.DataFrame, accuracy: str = "accuracy") -> list[str]:
    """Lines naming neighbouring front points whose accuracies are within noise of each other."""
    stderr = f"{accuracy}_stderr"
    if front.empty or accuracy not in front or stderr not in front:
        return []
    ordered = front.sort_values(accuracy).reset_index(drop=True)
    notes = []
    for i in range(1, len(ordered)):
        a, b = ordered.iloc[i - 1], ordered.iloc[i]
        if within_noise(a[accuracy], a[stderr], b[accuracy], b[stderr]):
            notes.append(
                f"evaluations {int(a['eval_id'])} and {int(b['eval_id'])}: accuracy {a[accuracy]:.3f} vs "
                f"{b[accuracy]:.3f} is within 2 standard errors ({a[stderr]:.3f}, {b[stderr]:.3f})"
            )
    return notes
