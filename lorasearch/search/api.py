"""`search_network`: the one-call search over a super-network that the CLI and notebooks share."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..cost import CostModel
from .engine import SearchResult, SearchSettings, run_search
from .objectives import Constraint, Objective, ObjectiveContext, constraint_metrics, parse_constraint, standard_objectives


def network_objectives(
    net: Any,
    evaluator: Any,
    objectives: Sequence[str] = ("accuracy", "macs"),
    constraints: Sequence[str | Constraint] = (),
    *,
    seq_len: int = 128,
    deployment: str = "unmerged",
    cost_reference: str = "fvcore",
    extra_objectives: Mapping[str, Objective] | None = None,
) -> tuple[list[Objective], list[Objective], list[Constraint]]:
    """The objectives, the extra constraint metrics and the parsed constraints of a search.

    The driver and every parallel worker build them with this one function, so they measure alike.
    """
    cost = CostModel(net, seq_len=seq_len, deployment=deployment, reference=cost_reference)
    ctx = ObjectiveContext(net=net, evaluator=evaluator, cost=cost, latency_seq_len=seq_len, extra=dict(extra_objectives or {}))
    parsed = [c if isinstance(c, Constraint) else parse_constraint(c) for c in constraints]
    chosen = standard_objectives(list(objectives), ctx)
    return chosen, constraint_metrics(parsed, chosen, ctx), parsed


def search_network(
    net: Any,
    evaluator: Any,
    *,
    objectives: Sequence[str] = ("accuracy", "macs"),
    constraints: Sequence[str | Constraint] = (),
    settings: SearchSettings | None = None,
    seq_len: int = 128,
    deployment: str = "unmerged",
    cost_reference: str = "fvcore",
    extra_objectives: Mapping[str, Objective] | None = None,
    out_dir: str | Path | None = None,
    run_info: Mapping[str, Any] | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = print,
    backend: Any = None,
    **engine_kw: Any,
) -> SearchResult:
    """Search a `SuperNetwork`'s space on accuracy (from ``evaluator``) and cost objectives.

    Args:
        net: the super-network (its space is the search space).
        evaluator: ``config -> EvalResult`` (e.g. `lorasearch.evaluate.MultipleChoiceEvaluator`).
        objectives: names from `lorasearch.search.objectives` (accuracy, macs, macs_merged,
            macs_unmerged, params, latency) or from ``extra_objectives``.
        constraints: e.g. ``"macs<=2.5e8"``; the metric is measured even if it is no objective.
        settings: strategy, budget, population, seed, operators.
        seq_len, deployment: what the MAC objective models (tokens per sequence; merged or unmerged).
        cost_reference: ``fvcore`` (one trace checks the closed form) or ``analytic``.
        extra_objectives: user objectives by name (any callable ``config -> float``).
        out_dir, run_info, resume, log: see `lorasearch.search.run_search`.
        backend: an `EvaluationBackend` (default: evaluate here); ``ProcessBackend`` and
            ``RayBackend`` evaluate on workers that rebuild the network from a recipe
            (`lorasearch.search_run.NetworkRecipe`).
        engine_kw: e.g. ``optuna_storage`` (a study shared with other processes).
    """
    chosen, metrics, parsed = network_objectives(
        net, evaluator, objectives, constraints, seq_len=seq_len, deployment=deployment,
        cost_reference=cost_reference, extra_objectives=extra_objectives,
    )
    info = {"seq_len": seq_len, "deployment": deployment, **dict(run_info or {})}
    return run_search(
        net.space, chosen, settings or SearchSettings(), constraints=parsed, metrics=metrics,
        out_dir=out_dir, run_info=info, resume=resume, log=log, backend=backend, **engine_kw,
    )
