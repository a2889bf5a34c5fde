"""Is the front real? Paired comparisons of configs scored on the same validation items.

Every config of a search is scored on the same seeded items, so two configs compare best item by
item: the standard error of their difference is ``sd(d) / sqrt(n)`` over the per-item differences
``d``, often several times smaller than the unpaired one (their scores go up and down together).
When the per-item scores were not logged (older runs), the unpaired test of
`lorasearch.results.table.within_noise` is used.

Three checks:

* `distinct_steps`: the front points that stand apart: from the least accurate up, each kept point
  is more than ``Z`` standard errors above the last one kept, so these are the steps along the front
  that the items resolve (neighbouring points in between may be noise);
* `neighbour_notes`: neighbouring front points whose accuracies are within ``Z`` standard errors;
* `extremes_warning`: the max and min configs within ``Z`` standard errors of each other (or the min
  ahead): then the space's whole range of subnets is indistinguishable on these items, and any
  front or ratio drawn from them is noise; more items (``--limit``) are the fix.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .table import within_noise

Z = 2.0


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of ``a - b`` over items scored on both (the shorter prefix)."""
    n = min(len(a), len(b))
    if n == 0:
        return float("nan"), float("nan")
    d = np.asarray(a[:n], dtype=float) - np.asarray(b[:n], dtype=float)
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return float(d.mean()), se


def difference(a: pd.Series, b: pd.Series, items: Mapping[int, Sequence[float]], name: str = "accuracy") -> tuple[float, float, str]:
    """``a - b`` in ``name``, its standard error, and ``paired`` or ``unpaired``."""
    ia, ib = items.get(int(a["eval_id"])), items.get(int(b["eval_id"]))
    if ia and ib:
        mean, se = paired_difference(ia, ib)
        return mean, se, "paired"
    stderr = f"{name}_stderr"
    se = math.hypot(float(a.get(stderr, float("nan"))), float(b.get(stderr, float("nan"))))
    return float(a[name]) - float(b[name]), se, "unpaired"


def distinct_steps(front: pd.DataFrame, items: Mapping[int, Sequence[float]], name: str = "accuracy") -> list[int]:
    """The eval_ids of front points each more than ``Z`` standard errors above the last one kept,
    from the least accurate up (the first is always kept; empty for an empty front)."""
    if front.empty or name not in front:
        return []
    ordered = front.sort_values(name).reset_index(drop=True)
    kept = [ordered.iloc[0]]
    for i in range(1, len(ordered)):
        gap, se, _ = difference(ordered.iloc[i], kept[-1], items, name)
        if se == se and gap > Z * se:
            kept.append(ordered.iloc[i])
    return [int(row["eval_id"]) for row in kept]


def neighbour_notes(front: pd.DataFrame, items: Mapping[int, Sequence[float]], name: str = "accuracy") -> list[str]:
    """Lines naming neighbouring front points whose ``name`` differ by less than ``Z`` standard errors."""
    if front.empty or name not in front:
        return []
    ordered = front.sort_values(name).reset_index(drop=True)
    notes = []
    for i in range(1, len(ordered)):
        low, high = ordered.iloc[i - 1], ordered.iloc[i]
        gap, se, kind = difference(high, low, items, name)
        if kind == "unpaired" and f"{name}_stderr" in ordered:
            if within_noise(high[name], high[f"{name}_stderr"], low[name], low[f"{name}_stderr"], Z):
                notes.append(f"evaluations {int(low['eval_id'])} and {int(high['eval_id'])}: {name} {low[name]:.3f} vs "
                             f"{high[name]:.3f} is within {Z:g} standard errors ({low[f'{name}_stderr']:.3f}, "
                             f"{high[f'{name}_stderr']:.3f})")
        elif se == se and gap < Z * se:
            notes.append(f"evaluations {int(low['eval_id'])} and {int(high['eval_id'])}: {name} {low[name]:.3f} vs "
                         f"{high[name]:.3f}, a difference of {gap:+.3f} ± {se:.3f} (paired), within {Z:g} standard errors")
    return notes


def extremes_warning(reference: Mapping[str, pd.Series], items: Mapping[int, Sequence[float]],
                     name: str = "accuracy") -> str | None:
    """A warning when the max config does not beat the min config by ``Z`` standard errors, else None."""
    top, bottom = reference.get("max"), reference.get("min")
    if top is None or bottom is None or name not in top:
        return None
    gap, se, kind = difference(top, bottom, items, name)
    if se != se or gap >= Z * se:
        return None
    compared = f"exceeds the min config's by {gap:.3f}" if gap >= 0 else f"is below the min config's by {-gap:.3f}"
    return (f"the front is within noise: the max config's {name} {compared} ± {se:.3f} "
            f"({kind}), less than {Z:g} standard errors above it, so these {_items(top, name)} items cannot tell the subnets "
            f"apart and the ratios below are not real; fix: score more items (--limit) or train longer")


def _items(row: pd.Series, name: str) -> str:
    n = row.get(f"{name}_items")
    return str(int(n)) if n is not None and n == n else "validation"
