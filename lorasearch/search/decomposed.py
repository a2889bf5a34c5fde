"""A decomposed surrogate: single-gene deviations of the max config, an additive model, and the best
predicted subnet under any cost budget without a new evaluation.

The model (after NVIDIA's Puzzle, which scores each single-layer variant once on a few samples):

* **probes.** From the max config (every gene at its largest choice), each gene is moved to each of
  its other choices, one gene at a time, and the config is scored on the first ``items`` validation
  items: ``sum(len(choices) - 1)`` probes in all, plus the max config itself. A probe uses the
  objective's continuous per-item score when it has one (``Objective.proxy``, e.g. the
  log-probability of the correct option), else its item-wise score (``Objective.partial``);
* **an additive model.** The effect of gene g at choice j is the paired mean difference between the
  probe and the max config over those items, and a config's score is
  ``S(c) = S(max) + sum_g effect[g, c_g]`` (first order: no interactions);
* **a calibration** maps S to the measured objective: a least-squares line ``a + b S`` over the
  configs evaluated in full, refitted as they come (a monotone map, so it changes no ranking);
* **costs.** The cheap objectives (closed-form MACs, parameters) of every probe are measured exactly,
  which gives each gene's cost delta; the additive cost is exact when the costs of the genes add
  up (merged MACs do: each gene sizes its own modules), and `additive_cost_error` says by how much
  they do not on the min config;
* **the best subnet under a budget** (`best_under`) is a multiple-choice knapsack over the genes:
  the choice per gene that maximises the predicted score with the summed cost at most the budget,
  solved exactly by dynamic programming on costs rounded up to ``COST_BINS`` steps of the budget
  (so the rounding never admits an over-budget config).

Whether to trust it: the rank correlation (Spearman) between S and the measured objective over
configs evaluated in full that took no part in fitting the effects (every one but the max config and
the probes), `held_out_rho`. The engine screens offspring with it only while that correlation is at
least ``min_rho`` over ``MIN_CHECKS`` or more configs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import LoraSearchError
from ..io import parse_json, read_text
from ..space import SearchSpace
from .rundir import SURROGATE_FILE

COST_BINS = 2000
MIN_CHECKS = 8


def probe_genes(space: SearchSpace) -> list[tuple[int, ...]]:
    """The max config's gene vector, then every single-gene deviation from it, in gene order."""
    base = [0] * len(space.genes)
    probes = [tuple(base)]
    for g, gene in enumerate(space.genes):
        for j in range(1, len(gene.choices)):
            probes.append(tuple(base[:g] + [j] + base[g + 1:]))
    return probes


@dataclass
class DecomposedModel:
    """Additive effects of every gene's choices on one objective, with exact per-gene cost deltas.

    Attributes:
        objective: the modelled objective (e.g. ``accuracy``); ``direction`` its direction.
        items: items each probe was scored on; ``proxy`` whether the scores were a continuous proxy.
        base: the max config's mean score on those items.
        effects: ``effects[g][j]``, the change of the mean score when gene g takes choice j (0 at j = 0).
        costs: per cheap objective, ``{"base": cost of the max config, "deltas": [[...] per gene]}``.
        calibration: ``(a, b)`` of ``measured ~ a + b S`` (None until two configs are measured).
        checks: ``[[S, measured], ...]`` of held-out configs evaluated in full.
    """

    objective: str
    direction: str
    items: int
    proxy: bool
    base: float
    effects: list[list[float]]
    costs: dict[str, dict[str, Any]] = field(default_factory=dict)
    calibration: tuple[float, float] | None = None
    checks: list[list[float]] = field(default_factory=list)
    min_rho: float = 0.5
    additive_cost_error: dict[str, float] = field(default_factory=dict)

    # ------------------------------------------------------------------------- building
    @classmethod
    def fit(cls, space: SearchSpace, objective: str, direction: str, scores: Mapping[tuple[int, ...], Sequence[float]],
            costs: Mapping[tuple[int, ...], Mapping[str, float]], *, proxy: bool, min_rho: float = 0.5) -> "DecomposedModel":
        """The model from the probes' item scores (``scores[genes]``, the max config's included) and
        their exact cheap costs (``costs[genes][name]``)."""
        probes = probe_genes(space)
        missing = [p for p in probes if p not in scores]
        if missing:
            raise LoraSearchError(f"decomposed surrogate: {len(missing)} probes were not scored")
        base_key = probes[0]
        base_items = np.asarray(scores[base_key], dtype=float)
        k = len(base_items)
        effects = [[0.0] * len(gene.choices) for gene in space.genes]
        deltas = {name: [[0.0] * len(gene.choices) for gene in space.genes] for name in costs.get(base_key, {})}
        for key in probes[1:]:
            g = next(i for i, v in enumerate(key) if v)
            effects[g][key[g]] = float(np.mean(np.asarray(scores[key][:k], dtype=float) - base_items))
            for name in deltas:
                deltas[name][g][key[g]] = float(costs[key][name]) - float(costs[base_key][name])
        cost_table = {name: {"base": float(costs[base_key][name]), "deltas": d} for name, d in deltas.items()}
        return cls(objective, direction, k, proxy, float(base_items.mean()), effects, cost_table, min_rho=min_rho)

    # ---------------------------------------------------------------------- predicting
    def score(self, genes: Sequence[int] | np.ndarray) -> float:
        """The additive score S of one gene vector (in the probes' units)."""
        return self.base + float(sum(self.effects[g][int(j)] for g, j in enumerate(genes)))

    def scores(self, genes: Sequence[Sequence[int]]) -> np.ndarray:
        return np.array([self.score(g) for g in genes], dtype=float)

    def predict(self, genes: Sequence[Sequence[int]]) -> np.ndarray:
        """The calibrated prediction of the objective (S itself before there is a calibration)."""
        s = self.scores(genes)
        if self.calibration is None:
            return s
        a, b = self.calibration
        return a + b * s

    def cost(self, genes: Sequence[int], name: str) -> float:
        """The additive cost of a gene vector: the max config's plus each gene's delta."""
        table = self.costs[name]
        return table["base"] + float(sum(table["deltas"][g][int(j)] for g, j in enumerate(genes)))

    # --------------------------------------------------------------------- calibration
    def calibrate(self, genes: Sequence[Sequence[int]], measured: Sequence[float], held_out: Sequence[bool]) -> None:
        """Refit ``measured ~ a + b S`` on configs evaluated in full, and keep the held-out ones' pairs
        for the rank correlation (``held_out[i]``: config i took no part in fitting the effects)."""
        s = self.scores(genes)
        y = np.asarray(measured, dtype=float)
        if len(s) >= 2 and np.ptp(s) > 0:
            b, a = np.polyfit(s, y, 1)
            self.calibration = (float(a), float(b))
        self.checks = [[float(si), float(yi)] for si, yi, h in zip(s, y, held_out) if h]

    def held_out_rho(self) -> float:
        """Spearman's rank correlation of S with the measured objective over the held-out configs
        (NaN with fewer than three, or when either side is constant). S and the objective share units
        and direction, so a useful model has a positive correlation whatever the direction."""
        if len(self.checks) < 3:
            return float("nan")
        s, y = np.asarray(self.checks, dtype=float).T
        if np.ptp(s) == 0 or np.ptp(y) == 0:
            return float("nan")
        from scipy.stats import spearmanr

        return float(spearmanr(s, y).statistic)

    def trusted(self) -> bool:
        """Whether the held-out rank correlation clears ``min_rho`` over ``MIN_CHECKS`` configs or more."""
        rho = self.held_out_rho()
        return len(self.checks) >= MIN_CHECKS and rho == rho and rho >= self.min_rho

    # ----------------------------------------------------------------- best under budget
    def best_under(self, cost: str, at_most: float) -> tuple[int, ...] | None:
        """The gene vector of the best predicted score whose additive ``cost`` is at most ``at_most``
        (None when even the cheapest choices cost more). A multiple-choice knapsack, solved exactly on
        costs rounded up to ``COST_BINS`` steps of the budget above the cheapest config."""
        if cost not in self.costs:
            raise LoraSearchError(f"decomposed surrogate: no cost {cost!r}; fix: use one of {', '.join(self.costs)}")
        deltas = [np.asarray(d, dtype=float) for d in self.costs[cost]["deltas"]]
        floor = self.costs[cost]["base"] + sum(float(d.min()) for d in deltas)
        capacity = at_most - floor
        if capacity < -1e-9 * max(abs(at_most), 1.0):
            return None
        step = max(capacity, 0.0) / COST_BINS if capacity > 0 else 1.0
        sign = 1.0 if self.direction == "max" else -1.0
        best = np.zeros(COST_BINS + 1)  # best[w]: the most value with rounded weight <= w
        choices = np.zeros((len(deltas), COST_BINS + 1), dtype=np.int16)
        for g, d in enumerate(deltas):
            weights = np.ceil((d - d.min()) / step - 1e-9).astype(int) if capacity > 0 else np.where(d > d.min(), COST_BINS + 1, 0)
            values = sign * np.asarray(self.effects[g], dtype=float)
            new = np.full(COST_BINS + 1, -np.inf)
            for j, (w, v) in enumerate(zip(weights, values)):
                if w > COST_BINS:
                    continue
                shifted = np.full(COST_BINS + 1, -np.inf)
                shifted[w:] = best[: COST_BINS + 1 - w] + v
                better = shifted > new
                new[better], choices[g, better] = shifted[better], j
            best = new
        w = int(np.argmax(best))
        if not np.isfinite(best[w]):
            return None
        genes = [0] * len(deltas)
        for g in range(len(deltas) - 1, -1, -1):
            j = int(choices[g, w])
            genes[g] = j
            d = deltas[g]
            w -= int(np.ceil((d[j] - d.min()) / step - 1e-9)) if capacity > 0 else 0
        return self._upgraded(genes, deltas, sign, at_most - self.costs[cost]["base"])

    def _upgraded(self, genes: list[int], deltas: Sequence[np.ndarray], sign: float, room: float) -> tuple[int, ...]:
        """The knapsack's answer with each gene moved to a better-scoring choice wherever the exact (not
        rounded) costs still fit: what the rounding up of costs left on the table."""
        spent = sum(float(d[j]) for d, j in zip(deltas, genes))
        for g, d in enumerate(deltas):
            values = sign * np.asarray(self.effects[g], dtype=float)
            for j in np.argsort(-values, kind="stable"):
                if values[j] <= values[genes[g]]:
                    break
                if spent - d[genes[g]] + d[j] <= room + 1e-12 * max(abs(room), 1.0):
                    spent, genes[g] = spent - d[genes[g]] + d[j], int(j)
                    break
        return tuple(genes)

    def front(self, cost: str, budgets: Sequence[float]) -> list[tuple[int, ...]]:
        """The best predicted config under each budget, without repeats (those over budget left out)."""
        found: list[tuple[int, ...]] = []
        for budget in budgets:
            genes = self.best_under(cost, budget)
            if genes is not None and genes not in found:
                found.append(genes)
        return found

    # ------------------------------------------------------------------------ storing
    def to_dict(self) -> dict[str, Any]:
        rho = self.held_out_rho()
        return {
            "objective": self.objective, "direction": self.direction, "items": self.items, "proxy": self.proxy,
            "base": self.base, "effects": self.effects, "costs": self.costs,
            "calibration": list(self.calibration) if self.calibration else None,
            "checks": self.checks, "min_rho": self.min_rho, "held_out_rho": None if rho != rho else rho,
            "trusted": self.trusted(), "additive_cost_error": self.additive_cost_error,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = SURROGATE_FILE) -> "DecomposedModel":
        try:
            calibration = data.get("calibration")
            return cls(str(data["objective"]), str(data["direction"]), int(data["items"]), bool(data["proxy"]),
                       float(data["base"]), [list(map(float, e)) for e in data["effects"]], dict(data.get("costs") or {}),
                       tuple(calibration) if calibration else None, [list(c) for c in data.get("checks") or []],
                       float(data.get("min_rho", 0.5)), dict(data.get("additive_cost_error") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise LoraSearchError(f"{source}: malformed decomposed surrogate ({exc}); fix: --resume the search "
                                  "to rewrite it") from None

    @classmethod
    def load(cls, folder: str | Path) -> "DecomposedModel":
        """The model a search with ``--surrogate-model decomposed`` stored in its run directory."""
        path = Path(folder) / SURROGATE_FILE
        if not path.is_file():
            raise LoraSearchError(f"{path}: missing; fix: search with --surrogate --surrogate-model decomposed "
                                  "(the run's probes and additive model are stored there)")
        data = parse_json(read_text(path, what="surrogate file"), str(path))
        if not isinstance(data, Mapping):
            raise LoraSearchError(f"{path}: not a JSON object; fix: --resume the search to rewrite it")
        return cls.from_dict(data, str(path))


def spread_budgets(low: float, high: float, n: int) -> list[float]:
    """``n`` budgets evenly inside ``(low, high)`` (the ends are the min and max configs themselves)."""
    if n <= 0 or not math.isfinite(low) or not math.isfinite(high) or high <= low:
        return []
    return [low + (high - low) * (i + 1) / (n + 1) for i in range(n)]
