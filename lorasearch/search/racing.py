"""Racing: score a candidate chunk by chunk on nested item subsets, and stop once it is dominated.

The validation items are in a fixed, seeded order, and an item-wise score (an accuracy) on the
first k items is the prefix of the score on the first n, so a candidate scored on 30 items and
promoted to 60 loses nothing. After each chunk the candidate is compared, on the same items
(paired), with every point of the current front that costs no more on every other objective: it
stops when one of them is better by more than ``z`` paired standard errors,

    mean(d) > z * sd(d) / sqrt(k),   d_i = front_i - candidate_i over the first k items,

(one-sided; with 0/1 items this is the paired z-test of the discordant pairs). Otherwise it goes on
to the next chunk, and after the last it is an ordinary, full evaluation.

A stopped candidate keeps its partial score (the mean over the items it was scored on, with their
count in ``<objective>_items``), is marked ``partial`` and names the front point that dominated it;
it is never a Pareto point. The strategy is told the partial mean: the candidate was stopped
because a front point of no higher cost beats it with confidence, so in objective space it is
dominated either way, and the strategy ranks it as such.

The front is the one at the start of the batch, whatever the backend, so a search raced on
parallel workers ends with the same table as one raced here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import LoraSearchError
from ..space import Config
from .objectives import DOMINATED_BY, ITEM_FORWARDS, PARTIAL, Measurement, Objective, measure_all, put_measurement

DEFAULT_CHUNKS = (0.25, 0.5, 1.0)


@dataclass(frozen=True)
class FrontPoint:
    """A point of the front a candidate races against: its other objectives and its item scores."""

    eval_id: int
    values: dict[str, float]
    items: tuple[float, ...]


@dataclass(frozen=True)
class RacePlan:
    """How one candidate is raced (plain data, so parallel workers can take it)."""

    objective: str
    """The item-wise objective (its ``partial`` scores a prefix of the items)."""
    stops: tuple[int, ...]
    """Item counts after which the candidate is compared; the last is every item."""
    z: float
    directions: dict[str, str]
    """Every objective's direction, the raced one included."""
    front: tuple[FrontPoint, ...]


Chunk = Callable[[int, Measurement], None]


def stops_for(n_items: int, chunks: Sequence[float]) -> tuple[int, ...]:
    """Item counts of the chunks (fractions of ``n_items``, or counts when above 1), ascending, ending at ``n_items``."""
    counts = {min(n_items, max(1, round(c * n_items) if c <= 1 else int(c))) for c in chunks}
    return tuple(sorted(counts | {n_items}))


def raced_objective(objectives: Sequence[Objective]) -> Objective:
    """The objective racing scores chunk by chunk: the first one with an item-wise score."""
    for objective in objectives:
        if objective.partial is not None and objective.n_items:
            return objective
    raise LoraSearchError(
        "--racing: no objective has an item-wise score to race on; fix: use accuracy from a multiple-choice "
        "or exact-match evaluator, or search without --racing"
    )


def evaluate_config(objectives: Sequence[Objective], config: Config, race: RacePlan | None = None,
                    on_chunk: Chunk | None = None) -> dict[str, Any]:
    """Every objective of ``config``: in full, or raced when a plan is given (see `race_config`)."""
    if race is None:
        return measure_all(objectives, config)
    return race_config(objectives, config, race, on_chunk)


def race_config(objectives: Sequence[Objective], config: Config, plan: RacePlan,
                on_chunk: Chunk | None = None) -> dict[str, Any]:
    """Measure the other objectives exactly, then the raced one chunk by chunk until it is dominated
    or every item is scored. ``on_chunk(k, measurement)`` is told each chunk as it finishes (the
    engine logs it, so a crash does not score those items again)."""
    raced = next(o for o in objectives if o.name == plan.objective)
    values = measure_all([o for o in objectives if o.name != plan.objective], config)
    rivals = [f for f in plan.front if _no_worse_elsewhere(f, values, plan)]
    forwards = values[ITEM_FORWARDS]
    for k in plan.stops:
        m = raced.measure_prefix(config, k)
        forwards += m.scored
        if on_chunk is not None and k < plan.stops[-1]:
            on_chunk(k, m)
        winner = None if k == plan.stops[-1] else _dominating(rivals, m, k, plan)
        if winner is not None or k == plan.stops[-1]:
            put_measurement(values, raced.name, m)
            values[ITEM_FORWARDS] = forwards
            if winner is not None:
                values[PARTIAL], values[DOMINATED_BY] = True, winner.eval_id
            return values
    raise AssertionError("unreachable: the last stop scores every item")  # pragma: no cover


def _no_worse_elsewhere(point: FrontPoint, values: dict[str, Any], plan: RacePlan) -> bool:
    """Whether ``point`` is at least as good as the candidate on every objective but the raced one."""
    for name, direction in plan.directions.items():
        if name == plan.objective:
            continue
        theirs, ours = point.values[name], values[name]
        if (theirs > ours) if direction == "min" else (theirs < ours):
            return False
    return True


def _dominating(rivals: Sequence[FrontPoint], m: Measurement, k: int, plan: RacePlan) -> FrontPoint | None:
    """The first rival that beats the candidate on its first ``k`` items by more than z paired SEs."""
    sign = 1.0 if plan.directions[plan.objective] == "max" else -1.0
    ours = np.asarray(m.items[:k], dtype=float)
    for rival in rivals:
        d = sign * (np.asarray(rival.items[:k], dtype=float) - ours)
        if paired_beats(d, plan.z):
            return rival
    return None


def paired_beats(d: np.ndarray, z: float) -> bool:
    """Whether the paired differences ``d`` (positive: the rival is better) exceed ``z`` standard errors."""
    mean = float(d.mean())
    if mean <= 0:
        return False
    se = float(d.std(ddof=1)) / math.sqrt(len(d)) if len(d) > 1 else math.inf
    return mean > z * se
