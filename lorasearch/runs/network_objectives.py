"""The registered objectives of a search, built from a super-network, an evaluator and a cost model.

* ``accuracy`` (max): the evaluator's score, with its binomial standard error;
* ``macs`` (min): MACs per sequence, in the deployment the cost model was built for;
* ``macs_merged`` / ``macs_unmerged`` (min): MACs in that deployment regardless;
* ``params`` (min): total parameters of the subnet (unmerged: base plus active adapters);
* ``latency`` (min): measured median seconds per forward of the merged subnet;
* ``macs_effective`` (min): MACs of the non-zero base weights only (sparse bases; equals ``macs`` when dense).

Their directions are `lorasearch.results.table.DIRECTIONS_OF`; users add their own objectives
by name (any callable ``config -> float``) through ``extra``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..cost import CostModel, measure_latency
from ..errors import LoraSearchError
from ..evaluate.evaluators import Evaluator
from ..network.supernet import SuperNetwork
from ..results.table import DIRECTIONS_OF
from ..search.objectives import Constraint, Objective, parse_constraint
from ..space import Config


@dataclass
class ObjectiveContext:
    """What the registered objectives are built from (any of them may be None if unused)."""

    net: SuperNetwork | None = None
    evaluator: Evaluator | None = None
    cost: CostModel | None = None
    latency_seq_len: int = 128
    latency_runs: int = 10
    extra: dict[str, Objective] = field(default_factory=dict)

    def need_cost(self, name: str) -> CostModel:
        """The cost model, or a one-line error naming the objective that needs it."""
        if self.cost is None:
            raise LoraSearchError(f"objective {name}: no cost model; fix: build the search with a model")
        return self.cost


def _macs(ctx: ObjectiveContext, name: str, deployment: str | None = None) -> Objective:
    cost = ctx.need_cost(name)
    if deployment is not None and deployment != cost.deployment:
        cost = CostModel(ctx.net, seq_len=cost.seq_len, deployment=deployment, reference="analytic")
    return Objective(name, DIRECTIONS_OF[name], cost.macs, unit=f"MACs ({cost.deployment})")


def _accuracy(ctx: ObjectiveContext) -> Objective:
    """The evaluator's score; item-wise evaluators also score prefixes of their items (racing)."""
    ev = ctx.evaluator
    if ev is None:
        raise LoraSearchError("objective accuracy: no evaluator; fix: pass --task (or use the synthetic task)")
    itemwise = getattr(ev, "itemwise", False)
    return Objective("accuracy", DIRECTIONS_OF["accuracy"], ev, unit="", expensive=True,
                     partial=ev.score_items if itemwise else None, n_items=getattr(ev, "n_items", None),
                     restore=ev.restore_items if itemwise else None)


def _params(ctx: ObjectiveContext) -> Objective:
    cost = ctx.need_cost("params")
    return Objective("params", DIRECTIONS_OF["params"], lambda c: cost.parameters(c, nonzero=False).total, unit="params")


def _macs_effective(ctx: ObjectiveContext) -> Objective:
    cost = ctx.need_cost("macs_effective")
    label = f"MACs ({cost.deployment}, non-zero base weights)"
    return Objective("macs_effective", DIRECTIONS_OF["macs_effective"], cost.effective_macs, unit=label)


def _latency(ctx: ObjectiveContext) -> Objective:
    def measure(config: Config) -> float:
        return measure_latency(ctx.net, config, ctx.latency_seq_len, n=ctx.latency_runs)

    return Objective("latency", DIRECTIONS_OF["latency"], measure, unit="s", expensive=True)


BUILDERS: dict[str, Callable[[ObjectiveContext], Objective]] = {
    "accuracy": _accuracy,
    "macs": lambda ctx: _macs(ctx, "macs"),
    "macs_merged": lambda ctx: _macs(ctx, "macs_merged", "merged"),
    "macs_unmerged": lambda ctx: _macs(ctx, "macs_unmerged", "unmerged"),
    "params": _params,
    "latency": _latency,
    "macs_effective": _macs_effective,
}
REGISTERED = tuple(BUILDERS)
assert set(BUILDERS) == set(DIRECTIONS_OF), "every registered objective has a builder and a direction"


def build_objective(name: str, ctx: ObjectiveContext) -> Objective:
    """One objective by name: a user-registered one from ``ctx.extra`` or a registered one."""
    if name in ctx.extra:
        return ctx.extra[name]
    if name not in BUILDERS:
        known = ", ".join(list(ctx.extra) + list(BUILDERS))
        raise LoraSearchError(f"objectives: unknown objective {name!r}; fix: use some of {known}")
    return BUILDERS[name](ctx)


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


def network_objectives(
    net: SuperNetwork,
    evaluator: Evaluator | None,
    objectives: Sequence[str] = ("accuracy", "macs"),
    constraints: Sequence[str | Constraint] = (),
    *,
    seq_len: int = 128,
    deployment: str = "unmerged",
    cost_reference: str = "analytic",
    extra_objectives: dict[str, Objective] | None = None,
) -> tuple[list[Objective], list[Objective], list[Constraint]]:
    """The objectives, the extra constraint metrics and the parsed constraints of a search.

    The driver and every parallel worker build them with this one function, so they measure alike.
    """
    cost = CostModel(net, seq_len=seq_len, deployment=deployment, reference=cost_reference)
    ctx = ObjectiveContext(net=net, evaluator=evaluator, cost=cost, latency_seq_len=seq_len, extra=dict(extra_objectives or {}))
    parsed = [c if isinstance(c, Constraint) else parse_constraint(c) for c in constraints]
    chosen = standard_objectives(list(objectives), ctx)
    return chosen, constraint_metrics(parsed, chosen, ctx), parsed
