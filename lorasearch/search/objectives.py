"""Objectives and constraints of a search: what is measured per config, and which way is better.

An `Objective` is a named callable ``config -> value`` (or ``Measurement`` with a standard
error) with a direction; nothing here knows about models. The registered names, built from a
super-network, an evaluator and a cost model by `lorasearch.runs.objectives`, are (`DIRECTIONS_OF`):

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
class Measurement:
    """A measured value with its standard error (NaN when not applicable)."""

    value: float
    stderr: float = float("nan")
    parts: Mapping[str, float] = field(default_factory=dict)
    """Named components of the value (an evaluation's per-task scores), recorded beside it as
    columns ``{objective}_{part}``."""


@dataclass
class Objective:
    """One objective: ``fn(config)`` returns a float or a `Measurement`.

    Attributes:
        name: column name in the results.
        direction: ``max`` or ``min``.
        fn: the measurement.
        unit: for labels (``MACs``, ``params``, ``s``).
        bounds: ``(best, worst)`` for hypervolume normalisation; derived when omitted.
        expensive: whether one call costs real time (only informs progress output).
    """

    name: str
    direction: str
    fn: Callable[[Config], Any]
    unit: str = ""
    bounds: tuple[float, float] | None = None
    expensive: bool = False

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise LoraSearchError(f"objective {self.name}: direction {self.direction!r}; fix: use max or min")

    def measure(self, config: Config) -> Measurement:
        """``fn(config)`` as a `Measurement`: a float, a Measurement, or an evaluation result (its
        ``score``, ``stderr`` and the per-task scores in ``extra["per_task"]``)."""
        value = self.fn(config)
        if isinstance(value, Measurement):
            return value
        stderr = getattr(value, "stderr", None)
        score = getattr(value, "score", value)
        parts = (getattr(value, "extra", None) or {}).get("per_task") or {}
        return Measurement(float(score), float(stderr) if stderr is not None else float("nan"),
                           {str(k): float(v) for k, v in parts.items()})


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
        raise LoraSearchError(f"constraint {text!r}: {m.group(3)!r} is not a number") from None


def measure_all(objectives: Sequence[Objective], config: Config) -> dict[str, float]:
    """Measure every objective of a config into a flat dict (``name``, ``name_stderr`` and
    ``name_PART`` for each of its parts)."""
    values: dict[str, float] = {}
    for objective in objectives:
        m = objective.measure(config)
        values[objective.name] = m.value
        if m.stderr == m.stderr:  # not NaN
            values[f"{objective.name}_stderr"] = m.stderr
        for part, value in m.parts.items():
            values[f"{objective.name}_{part}"] = value
    return values
