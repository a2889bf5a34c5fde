"""Objectives and constraints of a search: what is measured per config, and which way is better.

An `Objective` is a named callable ``config -> value`` (or ``Measurement`` with a standard
error) with a direction. `standard_objectives` builds the registered ones from a super-network,
an evaluator and a cost model:

* ``accuracy`` (max): the evaluator's score, with its binomial standard error;
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
from typing import Any, Callable, Sequence

from ..errors import LoraSearchError
from ..space import Config

DIRECTIONS = ("max", "min")


@dataclass(frozen=True)
class Measurement:
    """A measured value with its standard error (NaN when not applicable)."""

    value: float
    stderr: float = float("nan")


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
        value = self.fn(config)
        if isinstance(value, Measurement):
            return value
        stderr = getattr(value, "stderr", None)
        score = getattr(value, "score", value)
        return Measurement(float(score), float(stderr) if stderr is not None else float("nan"))


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


@dataclass
class ObjectiveContext:
    """What the registered objectives are built from (any of them may be None if unused)."""

    net: Any = None
    evaluator: Any = None
    cost: Any = None
    latency_seq_len: int = 128
    latency_runs: int = 10
    extra: dict[str, Objective] = field(default_factory=dict)


def _cost_macs(ctx: ObjectiveContext, deployment: str | None) -> Callable[[Config], float]:
    if ctx.cost is None:
        raise LoraSearchError("objective macs: no cost model; fix: build the search with a model")
    if deployment is None or deployment == ctx.cost.deployment:
        return ctx.cost.macs
    from ..cost import CostModel

    other = CostModel(ctx.net, seq_len=ctx.cost.seq_len, deployment=deployment, reference="analytic")
    return other.macs


def _builders() -> dict[str, Callable[[ObjectiveContext], Objective]]:
    def accuracy(ctx):
        if ctx.evaluator is None:
            raise LoraSearchError("objective accuracy: no evaluator; fix: pass --task (or use the synthetic task)")
        return Objective("accuracy", "max", ctx.evaluator, unit="", bounds=(1.0, 0.0), expensive=True)

    def macs(ctx, name="macs", deployment=None):
        label = deployment or (ctx.cost.deployment if ctx.cost is not None else "")
        return Objective(name, "min", _cost_macs(ctx, deployment), unit=f"MACs ({label})")

    def params(ctx):
        if ctx.cost is None:
            raise LoraSearchError("objective params: no cost model; fix: build the search with a model")
        return Objective("params", "min", lambda c: ctx.cost.parameters(c, nonzero=False).total, unit="params")

    def macs_effective(ctx):
        if ctx.cost is None:
            raise LoraSearchError("objective macs_effective: no cost model; fix: build the search with a model")
        label = f"MACs ({ctx.cost.deployment}, non-zero base weights)"
        return Objective("macs_effective", "min", ctx.cost.effective_macs, unit=label)

    def latency(ctx):
        from ..cost import measure_latency

        fn = lambda c: measure_latency(ctx.net, c, ctx.latency_seq_len, n=ctx.latency_runs)  # noqa: E731
        return Objective("latency", "min", fn, unit="s", expensive=True)

    return {
        "accuracy": accuracy,
        "macs": macs,
        "macs_merged": lambda ctx: macs(ctx, "macs_merged", "merged"),
        "macs_unmerged": lambda ctx: macs(ctx, "macs_unmerged", "unmerged"),
        "params": params,
        "latency": latency,
        "macs_effective": macs_effective,
    }


REGISTERED = tuple(_builders())


def build_objective(name: str, ctx: ObjectiveContext) -> Objective:
    """One objective by name: a user-registered one from ``ctx.extra`` or a registered one."""
    if name in ctx.extra:
        return ctx.extra[name]
    builders = _builders()
    if name not in builders:
        known = ", ".join(list(ctx.extra) + list(builders))
        raise LoraSearchError(f"objectives: unknown objective {name!r}; fix: use some of {known}")
    return builders[name](ctx)


def standard_objectives(names: Sequence[str], ctx: ObjectiveContext) -> list[Objective]:
    """Build the objectives of a search by name (at least two, each once)."""
    if len(names) < 2:
        raise LoraSearchError("objectives: a multi-objective search needs at least two; fix: e.g. accuracy,macs")
    if len(set(names)) != len(names):
        raise LoraSearchError("objectives: an objective is listed twice; fix: name each once")
    return [build_objective(name, ctx) for name in names]


def constraint_metrics(constraints: Sequence[Constraint], objectives: Sequence[Objective], ctx: ObjectiveContext) -> list[Objective]:
    """Metrics to measure for constraints whose metric is not already an objective."""
    have = {o.name for o in objectives}
    return [build_objective(m, ctx) for m in dict.fromkeys(c.metric for c in constraints) if m not in have]


def measure_all(objectives: Sequence[Objective], config: Config) -> dict[str, float]:
    """Measure every objective of a config into a flat dict (``name`` and ``name_stderr``)."""
    values: dict[str, float] = {}
    for objective in objectives:
        m = objective.measure(config)
        values[objective.name] = m.value
        if m.stderr == m.stderr:  # not NaN
            values[f"{objective.name}_stderr"] = m.stderr
    return values
