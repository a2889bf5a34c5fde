"""Racing: score a candidate chunk by chunk on nested item subsets, and stop it once a cheaper front
point is better with stated confidence.

The validation items are in a fixed, seeded order, and an item-wise score (an accuracy) on the
first k items is the prefix of the score on the first n, so a candidate scored on 30 items and
promoted to 60 loses nothing. After each chunk but the last (an interim look) the candidate is
compared, on the same items, with every point of the current front that costs no more on every
other objective (its rivals). The test, with its error rate stated:

* **an exact paired test per rival.** Over the first k items, b items favour the rival and c the
  candidate (``d_i = rival_i - candidate_i`` positive or negative; ties carry no information). If
  the two are equally good, b is Binomial(b + c, 1/2) given the b + c discordant items, so the
  one-sided p-value is ``P(X >= b)`` (the sign test; for 0/1 items, McNemar's exact test);
* **a minimum of discordant items** (``min_discordant``): a rival with fewer has p = 1, so no
  stop rests on a handful of items;
* **a correction over rivals and looks.** The error ``alpha`` is spent in equal parts on the L
  interim looks (alpha spending, Bonferroni over looks), and at each look Holm's procedure runs over
  the m rivals; its first step, ``min p <= alpha / (L m)``, decides whether any rival rejects.

So a candidate exactly as good as each of its rivals is stopped with probability at most
``alpha`` over the whole race, whatever the rivals' correlation (a union bound over L x m tests;
`tests/test_search_cost.py` simulates it with 1 and 5 rivals). The price is power: a stop needs
strong evidence, so racing saves items only on candidates clearly worse than a cheaper point.

A stopped candidate keeps its partial score (the mean over the items it was scored on, with their
count in ``<objective>_items``), is marked ``partial`` and names the front point that dominated it
(the rival with the smallest p-value); it is never a Pareto point. The strategy is told the partial
mean: a front point of no higher cost beats it with confidence, so in objective space it is
dominated either way, and the strategy ranks it as such.

The front is the one at the start of the batch, whatever the backend, so a search raced on
parallel workers ends with the same table as one raced here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import LoraSearchError
from ..space import Config
from .objectives import DOMINATED_BY, ITEM_FORWARDS, PARTIAL, Measurement, Objective, measure_all, put_measurement

DEFAULT_CHUNKS = (0.25, 0.5, 1.0)
DEFAULT_ALPHA = 0.05
DEFAULT_MIN_DISCORDANT = 8


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
    alpha: float
    """The chance of stopping a candidate as good as its rivals, over every look and rival."""
    min_discordant: int
    """Discordant items a rival needs before its test can stop the candidate."""
    directions: dict[str, str]
    """Every objective's direction, the raced one included."""
    front: tuple[FrontPoint, ...]

    @property
    def looks(self) -> int:
        """Interim looks: every stop but the last (after it the evaluation is complete)."""
        return len(self.stops) - 1


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
    """Measure the other objectives exactly, then the raced one chunk by chunk until a rival stops
    it or every item is scored. ``on_chunk(k, measurement)`` is told each chunk as it finishes (the
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
        winner = None if k == plan.stops[-1] else stopping_rival(rivals, m.items[:k], plan)
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


def stopping_rival(rivals: Sequence[FrontPoint], ours: Sequence[float], plan: RacePlan) -> FrontPoint | None:
    """The rival that stops the candidate at this look (the smallest p-value, when it clears
    ``alpha / (looks x rivals)``), or None. ``ours`` are the candidate's first k item scores."""
    if not rivals:
        return None
    sign = 1.0 if plan.directions[plan.objective] == "max" else -1.0
    k = len(ours)
    mine = np.asarray(ours, dtype=float)
    p = [sign_test_p(sign * (np.asarray(r.items[:k], dtype=float) - mine), plan.min_discordant) for r in rivals]
    best = int(np.argmin(p))
    return rivals[best] if p[best] <= plan.alpha / (max(plan.looks, 1) * len(rivals)) else None


def sign_test_p(d: np.ndarray, min_discordant: int = 1) -> float:
    """One-sided exact p-value that the paired differences ``d`` (positive: the rival is better) favour
    the rival: ``P(X >= b)`` for X ~ Binomial(b + c, 1/2), b and c the positive and negative counts.
    1.0 when fewer than ``min_discordant`` differences are non-zero."""
    from scipy.stats import binom

    d = np.asarray(d, dtype=float)
    b, c = int((d > 0).sum()), int((d < 0).sum())
    if b + c < max(min_discordant, 1):
        return 1.0
    return float(binom.sf(b - 1, b + c, 0.5))
