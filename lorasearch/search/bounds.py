"""The fixed normalisation bounds of a search, and with them the hypervolume's reference point.

Every objective maps ``best -> 0`` and ``worst -> 1`` (`lorasearch.results.ObjectiveSpec`), and the
hypervolume is taken against ``(1, ..., 1)``, the worst corner. The rule, for objectives without
bounds of their own:

* a cost (``min``): from the min config's cost (nothing in the space is cheaper) to the max
  config's cost plus ``MARGIN`` of that range;
* a score (``max``): from the lower of the max and min configs' scores minus ``MARGIN`` of their
  spread to the higher plus ``MARGIN`` (a spread of at least ``MIN_SPREAD``); before those two are
  measured (a study shared with other processes fixes its bounds up front), ``(1, 0)``.

So the reference point sits just beyond the space's own extremes: the volume measures how well the
front covers the range the space spans, not how far it lies from zero. (The earlier rule, ``(0,
1.1 x max)`` for costs and ``(1, 0)`` for scores, put a Mode A front spanning 18.2-18.4 GMACs
against a reference at 20.5, so its hypervolume measured little but the best accuracy.)
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..errors import LoraSearchError
from ..results.table import ObjectiveSpec
from ..space import SearchSpace
from .objectives import Objective

MARGIN = 0.1
MIN_SPREAD = 0.01


def derive_specs(
    objectives: Sequence[Objective],
    space: SearchSpace,
    measured: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[ObjectiveSpec]:
    """The bounds of every objective (see the module docstring).

    ``measured`` maps ``max`` and ``min`` to those configs' measured values, where known; costs
    not given there are measured here (costs are cheap: closed-form MACs, parameters).
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
            a, b = (float(measured[which][o.name]) for which in ("max", "min"))
            spread = max(abs(a - b), MIN_SPREAD)
            best, worst = max(a, b) + MARGIN * spread, min(a, b) - MARGIN * spread
        else:
            best, worst = 1.0, 0.0
        if best == worst:
            raise LoraSearchError(f"objective {o.name}: best and worst bounds are equal ({best}); fix: set bounds")
        specs.append(ObjectiveSpec(o.name, o.direction, float(best), float(worst), o.unit))
    return specs


def needs_references(objectives: Sequence[Objective]) -> bool:
    """Whether some bound waits for the max and min configs' measured scores."""
    return any(o.bounds is None and o.direction == "max" for o in objectives)


def _value(o: Objective, space: SearchSpace, which: str, measured: Mapping[str, Mapping[str, Any]]) -> float:
    if o.name in measured.get(which, {}):
        return float(measured[which][o.name])
    return o.measure(getattr(space, which)()).value
