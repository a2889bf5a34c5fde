"""The fixed normalisation bounds of a search, and with them the hypervolume's reference point.

Every objective maps ``best -> 0`` and ``worst -> 1`` (`lorasearch.results.ObjectiveSpec`), and the
hypervolume is taken against ``(1, ..., 1)``, the worst corner. The rule, for objectives without
bounds of their own:

* a cost (``min``): from the min config's cost (nothing in the space is cheaper) to the max
  config's cost plus ``MARGIN`` of that range;
* a score (``max``): from the lower of the max and min configs' scores to the higher, each end
  widened by the larger of ``Z`` of that measurement's standard error and ``MARGIN`` of the spread
  (a spread of at least ``MIN_SPREAD``); before those two are measured (a study shared with other
  processes fixes its bounds up front), ``(1, 0)``.

So the reference point sits just beyond the space's own extremes: the volume measures how well the
front covers the range the space spans, not how far it lies from zero. The standard errors keep
the score axis from collapsing on a narrow front: when the max and min configs score within an item
or two of each other (a Mode A front, or too few items), a 10 % margin of their spread is a fraction
of an item, and one lucky subnet would dwarf the rest; two standard errors each side is the range
the measurements cannot tell apart, whatever the spread. (The earlier rules: ``(0, 1.1 x max)``
for costs and ``(1, 0)`` for scores put a Mode A front spanning 18.2-18.4 GMACs against a
reference at 20.5; a margin of 10 % of the spread alone let a front of one or two items' spread
define the axis.)

The bounds are derived once, stored in the run's ``run.yaml`` and never change; runs compared with
one another share one set (`lorasearch.results.table.shared_specs`, or ``bounds_from`` another run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import LoraSearchError
from ..results.run import RUN_FILE, read_run_document
from ..results.table import ObjectiveSpec
from ..space import SearchSpace
from .objectives import Objective

MARGIN = 0.1
MIN_SPREAD = 0.01
Z = 2.0  # standard errors each end of a score's range is widened by


def derive_specs(
    objectives: Sequence[Objective],
    space: SearchSpace,
    measured: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[ObjectiveSpec]:
    """The bounds of every objective (see the module docstring).

    ``measured`` maps ``max`` and ``min`` to those configs' measured values (and their
    ``<name>_stderr``), where known; costs not given there are measured here (costs are cheap:
    closed-form MACs, parameters).
    """
    measured = measured or {}
    specs = []
    for o in objectives:
        if o.bounds is not None:
            best, worst = o.bounds
        elif o.direction == "min":
            low, high = (_value(o, space, which, measured) for which in ("min", "max"))
            low, high = min(low, high), max(low, high)
            best, worst = low, high + MARGIN * (high - low) if high > low else high * (1 + MARGIN) + MIN_SPREAD
        elif all(o.name in measured.get(which, {}) for which in ("max", "min")):
            best, worst = _score_bounds(*(measured[which] for which in ("max", "min")), o.name)
        else:
            best, worst = 1.0, 0.0
        if best == worst:
            raise LoraSearchError(f"objective {o.name}: best and worst bounds are equal ({best}); fix: set bounds")
        specs.append(ObjectiveSpec(o.name, o.direction, float(best), float(worst), o.unit))
    return specs


def _score_bounds(first: Mapping[str, Any], second: Mapping[str, Any], name: str) -> tuple[float, float]:
    """(best, worst) of a score from two measurements: their range, each end widened (module docstring)."""
    (high, se_high), (low, se_low) = sorted(((float(m[name]), _stderr(m, name)) for m in (first, second)), reverse=True)
    margin = MARGIN * max(high - low, MIN_SPREAD)
    return high + max(margin, Z * se_high), low - max(margin, Z * se_low)


def _stderr(measured: Mapping[str, Any], name: str) -> float:
    value = measured.get(f"{name}_stderr")
    try:
        value = float(value)
    except (TypeError, ValueError):
        return 0.0
    return value if value == value else 0.0


def borrowed_specs(run_dir: str | Path, objectives: Sequence[Objective]) -> list[ObjectiveSpec]:
    """The bounds stored in another run's ``run.yaml``, for the same objectives (``bounds_from``)."""
    path = Path(run_dir) / RUN_FILE
    stored = read_run_document(path).get("bounds") or []
    by_name = {b.get("name"): b for b in stored if isinstance(b, Mapping)}
    specs = []
    for o in objectives:
        b = by_name.get(o.name)
        if b is None or b.get("direction") != o.direction:
            raise LoraSearchError(f"--bounds-from {run_dir}: {path} has no {o.direction} bounds for {o.name!r}; "
                                  "fix: take the bounds of a run with the same objectives")
        specs.append(ObjectiveSpec(o.name, o.direction, float(b["best"]), float(b["worst"]), o.unit))
    return specs


def needs_references(objectives: Sequence[Objective]) -> bool:
    """Whether some bound waits for the max and min configs' measured scores."""
    return any(o.bounds is None and o.direction == "max" for o in objectives)


def _value(o: Objective, space: SearchSpace, which: str, measured: Mapping[str, Mapping[str, Any]]) -> float:
    if o.name in measured.get(which, {}):
        return float(measured[which][o.name])
    return o.measure(getattr(space, which)()).value
