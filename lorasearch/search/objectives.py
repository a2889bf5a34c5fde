"""Objectives and constraints of a search: what is measured per config, and which way is better.

An `Objective` is a named callable ``config -> value`` (or ``Measurement`` with a standard
error) with a direction; nothing here knows about models. The registered names, built from a
super-network, an evaluator and a cost model by `lorasearch.runs.network_objectives`, are
(`lorasearch.results.table.DIRECTIONS_OF`):

* ``accuracy`` (max): the evaluator's score, with its binomial standard error (and, from an
  lm-eval evaluator, each task's score as a column ``accuracy_TASK``);
* ``macs`` (min): MACs per sequence, in the deployment the cost model was built for;
* ``macs_merged`` / ``macs_unmerged`` (min): MACs in that deployment regardless;
* ``params`` (min): total parameters of the subnet (unmerged: base plus active adapters);
* ``latency`` (min): measured median seconds per forward of the merged subnet;
* ``macs_effective`` (min): MACs of the non-zero base weights only (sparse bases; equals ``macs`` when dense).

A `Constraint` such as ``macs<=2.5e8`` becomes a pymoo inequality constraint (and an optuna
``constraints_func``); the metric it names is measured even when it is not an objective.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..errors import LoraSearchError
from ..space import Config

DIRECTIONS = ("max", "min")


# Keys of a measured values dict that belong to the evaluation record, not to the objective columns.
ITEM_SCORES, ITEM_FORWARDS, PARTIAL, DOMINATED_BY = "item_scores", "item_forwards", "partial", "dominated_by"
RECORD_KEYS = (ITEM_SCORES, ITEM_FORWARDS, PARTIAL, DOMINATED_BY)
PROBE_FORWARDS = "probe_forwards"  # items a decomposed surrogate's probes scored before this evaluation


@dataclass(frozen=True)
class Measurement:
    """A measured value with its standard error (NaN when not applicable).

    Item-wise scores (accuracies) also carry ``n``, the items the value is the mean of, ``items``,
    the per-item scores in their fixed order, and ``scored``, the items this measurement ran
    through the model (its cost in item forwards).
    """

    value: float
    stderr: float = float("nan")
    n: int | None = None
    items: tuple[float, ...] = ()
    scored: int = 0
    parts: Mapping[str, float] = field(default_factory=dict)
    """Named components of the value (an evaluation's per-task scores), recorded beside it as
    columns ``{objective}_{part}``."""


def as_measurement(value: Any) -> Measurement:
    """A float, a `Measurement`, or a result with ``score`` (and ``stderr``, ``n``, ``item_scores``,
    ``scored``, per-task scores in ``extra["per_task"]``, as `lorasearch.evaluate.EvalResult` has)
    as a `Measurement`."""
    if isinstance(value, Measurement):
        return value
    stderr = getattr(value, "stderr", None)
    parts = (getattr(value, "extra", None) or {}).get("per_task") or {}
    return Measurement(
        float(getattr(value, "score", value)),
        float(stderr) if stderr is not None else float("nan"),
        getattr(value, "n", None),
        tuple(getattr(value, "item_scores", ()) or ()),
        int(getattr(value, "scored", 0) or 0),
        {str(k): float(v) for k, v in parts.items()},
    )


@dataclass
class Objective:
    """One objective: ``fn(config)`` returns a float or a `Measurement`.

    Attributes:
        name: column name in the results.
        direction: ``max`` or ``min``.
        fn: the measurement.
        unit: for labels (``MACs``, ``params``, ``s``).
        bounds: ``(best, worst)`` for hypervolume normalisation; derived when omitted.
        expensive: whether one call costs real time (a surrogate predicts these; the others are
            measured exactly when offspring are screened).
        partial: ``partial(config, k)``, the score on the first ``k`` items of a fixed order, where
            the score is a mean over items (what racing needs); None when it is not.
        n_items: the items a full measurement scores (with ``partial``).
        restore: ``restore(config, item_scores)`` takes scores logged before a crash as scored.
        proxy: ``proxy(config, k)``, a continuous per-item score on the first ``k`` items that moves
            with this objective (the log-probability of the correct option for an accuracy); the
            decomposed surrogate probes with it when given, else with ``partial``.
    """

    name: str
    direction: str
    fn: Callable[[Config], Any]
    unit: str = ""
    bounds: tuple[float, float] | None = None
    expensive: bool = False
    partial: Callable[[Config, int], Any] | None = None
    n_items: int | None = None
    restore: Callable[[Config, Sequence[float]], None] | None = None
    proxy: Callable[[Config, int], Any] | None = None

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise LoraSearchError(f"objective {self.name}: direction {self.direction!r}; fix: use max or min")

    def measure(self, config: Config) -> Measurement:
        return as_measurement(self.fn(config))

    def measure_prefix(self, config: Config, k: int) -> Measurement:
        """The measurement on the first ``k`` items (needs ``partial``)."""
        if self.partial is None:
            raise LoraSearchError(f"objective {self.name}: no item-wise score to measure a prefix of")
        return as_measurement(self.partial(config, k))


@dataclass(frozen=True)
class Constraint:
    """``metric <= bound`` or ``metric >= bound``; pymoo's form is ``g(x) <= 0``."""

    metric: str
    op: str
    bound: float

    def violation(self, value: float) -> float:
        return value - self.bound if self.op == "<=" else self.bound - value

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.bound:g}"


_CONSTRAINT = re.compile(r"^\s*([A-Za-z_][\w]*)\s*(<=|>=)\s*([-+0-9.eE]+)\s*$")


def parse_constraint(text: str) -> Constraint:
    """Parse ``name<=value`` or ``name>=value`` (e.g. ``macs<=2.5e8``)."""
    m = _CONSTRAINT.match(text)
    if not m:
        raise LoraSearchError(f"constraint {text!r}: cannot parse; fix: write e.g. macs<=2.5e8 or accuracy>=0.4")
    try:
        return Constraint(m.group(1), m.group(2), float(m.group(3)))
    except ValueError:
        raise LoraSearchError(f"constraint {text!r}: {m.group(3)!r} is not a number; fix: e.g. 'macs<=1.5e10'") from None


def measure_all(objectives: Sequence[Objective], config: Config) -> dict[str, Any]:
    """Measure every objective of a config into a flat dict: ``name`` and ``name_stderr`` per
    objective, ``name_items`` for item-wise scores, and the record keys (`RECORD_KEYS`): the per-item
    scores and the item forwards spent (racing adds ``partial`` and ``dominated_by``)."""
    values: dict[str, Any] = {ITEM_FORWARDS: 0}
    for objective in objectives:
        put_measurement(values, objective.name, objective.measure(config))
    return values


def put_measurement(values: dict[str, Any], name: str, m: Measurement) -> None:
    """Write one measurement into a values dict (see `measure_all`)."""
    values[name] = m.value
    if m.stderr == m.stderr:  # not NaN
        values[f"{name}_stderr"] = m.stderr
    if m.n is not None:
        values[f"{name}_items"] = m.n
    for part, value in m.parts.items():
        values[f"{name}_{part}"] = value
    if m.items:
        values.setdefault(ITEM_SCORES, {})[name] = [int(v) if float(v).is_integer() else float(v) for v in m.items]
    values[ITEM_FORWARDS] = values.get(ITEM_FORWARDS, 0) + m.scored
