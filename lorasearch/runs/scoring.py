"""One subnet scored from settings: its accuracy, MACs and parameters (``lorasearch eval``), and
its per-module cost breakdown (``lorasearch cost``)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..cost import CostModel, ParameterCounts, fvcore_macs
from ..errors import LoraSearchError
from ..evaluate.evaluators import EvalResult
from .settings import NetworkSettings, TaskSettings, build_evaluator, build_network, resolve_config

DEPLOYMENTS = ("unmerged", "merged")
COUNTERS = ("closed", "fvcore")


@dataclass
class SubnetScore:
    """What ``lorasearch eval`` reports of one subnet."""

    result: EvalResult
    gmacs: dict[str, float]
    """GMACs per deployment (``unmerged``, ``merged``) at ``seq_len`` tokens."""
    seq_len: int
    params: ParameterCounts
    effective_gmacs: float | None
    """Merged GMACs of the non-zero base weights, for a base with at least 1 % zeros (else None)."""


def score_subnet(network: NetworkSettings, task: TaskSettings, config: str = "max", seq_len: int = 128, *,
                 any_base: bool = False) -> SubnetScore:
    """Score the subnet ``config`` (max, min, heuristic or a JSON file) of the network the settings build
    (``any_base``: accept an adapter trained on another base, see `build_network`)."""
    net = build_network(network, any_base=any_base)
    chosen = resolve_config(net.space, config)
    result = build_evaluator(net, task)(chosen)
    cost = CostModel(net, seq_len=seq_len, reference="analytic")
    params = cost.parameters(chosen, nonzero=True)
    sparse = params.nonzero is not None and params.nonzero < 0.99 * params.base  # a padding row's zeros are no sparsity
    return SubnetScore(
        result=result,
        gmacs={d: cost.gmacs(chosen, d) for d in DEPLOYMENTS},
        seq_len=seq_len,
        params=params,
        effective_gmacs=cost.effective_macs(chosen, "merged") / 1e9 if sparse else None,
    )


@dataclass
class CostReport:
    """What ``lorasearch cost`` reports of one subnet: the per-module table and the totals."""

    table: pd.DataFrame
    descriptions: list[str]
    params: ParameterCounts


def cost_breakdown(network: NetworkSettings, config: str = "max", seq_len: int = 128, deployment: str = "unmerged",
                   counter: str = "closed", *, any_base: bool = False) -> CostReport:
    """Per-module MACs (unmerged and merged) of one subnet, with fvcore's count beside when ``counter="fvcore"``."""
    if counter not in COUNTERS:
        raise LoraSearchError(f"--counter: unknown {counter!r}; fix: use closed or fvcore")
    net = build_network(network, with_tokenizer=False, any_base=any_base)
    chosen = resolve_config(net.space, config)
    cost = CostModel(net, seq_len=seq_len, deployment=deployment, reference="analytic")
    if counter == "fvcore" and cost.on_meta:
        raise LoraSearchError("--counter fvcore: a model from --model-config has no weights to trace; fix: use --counter closed")
    table = cost.breakdown(chosen, "unmerged").rename(columns={"macs": "macs_unmerged"}).drop(columns="deployment")
    table.insert(3, "macs_merged", cost.breakdown(chosen, "merged")["macs"])
    if counter == "fvcore":
        total, by_module = fvcore_macs(net, chosen, seq_len, deployment=deployment)
        table[f"fvcore_macs_{deployment}"] = [by_module.get(m, 0) if m != "total" else total for m in table["module"]]
    return CostReport(table, [cost.describe(chosen, d) for d in DEPLOYMENTS], cost.parameters(chosen))
