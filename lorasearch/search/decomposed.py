"""A decomposed surrogate: single-gene deviations of the max config, an additive model, and the best
predicted subnet under any cost budget without a new evaluation.

The model (after NVIDIA's Puzzle, which scores each single-layer variant once on a few samples):

* **probes.** From the max config (every gene at its largest choice), each gene is moved to each of
  its other choices, one gene at a time, and the config is scored on the first ``items`` validation
  items: ``sum(len(choices) - 1)`` deviations, plus the max config itself. A probe uses the
  objective's continuous per-item score when it has one (``Objective.proxy``, e.g. the
  log-probability of the correct option), else its item-wise score (``Objective.partial``). The
  engine leaves out deviations that change no cost (adapter ranks under merged MACs): they could
  only be chosen for their accuracy, so they keep the max config's (effect 0) and cost nothing;
* **an additive model.** The effect of gene g at choice j is the paired mean difference between the
  probe and the max config over those items, shrunk towards the mean effect of the same group's same
  choice in the other layers as far as its own noise warrants (`pooled`: a few items make each
  effect noisy, and a knapsack over noisy effects picks the lucky ones), and a config's score is
  ``S(c) = S(max) + sum_g effect[g, c_g]`` (first order: no interactions);
* **a calibration** maps S to the measured objective: a least-squares line ``a + b S`` over the
  configs evaluated in full, refitted as they come (a monotone map, so it changes no ranking);
* **costs.** The cheap objectives (closed-form MACs, parameters) of every probe are measured exactly,
  which gives each gene's cost delta; the additive cost is exact when the costs of the genes add
  up (merged MACs do: each gene sizes its own modules), and `additive_cost_error` says by how much
  they do not on the min config;
* **the best subnet under a budget** (`best_under`) is a multiple-choice knapsack over the genes:
  the choice per gene that maximises the predicted score with the summed cost at most the budget,
  solved exactly by dynamic programming over the Pareto set of partial (cost, score) sums.

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
from .objectives import Objective
from .rundir import SURROGATE_FILE

MAX_PARETO = 50_000
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
        checks: ``[[S, measured], ...]`` of held-out configs evaluated in full, S as predicted before
            the config was measured.
        prior, variances: the probes' (pooled) effects and their variances, what `update` starts from.
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
    choices: dict[str, list[Any]] = field(default_factory=dict)
    """Each gene's key and choices, in gene order (a pick is a config without the space file)."""
    prior: list[list[float]] = field(default_factory=list)
    variances: list[list[float]] = field(default_factory=list)

    # ------------------------------------------------------------------------- building
    @classmethod
    def fit(cls, space: SearchSpace, objective: str, direction: str, scores: Mapping[tuple[int, ...], Sequence[float]],
            costs: Mapping[tuple[int, ...], Mapping[str, float]], *, proxy: bool, min_rho: float = 0.5) -> "DecomposedModel":
        """The model from the probes' item scores (``scores[genes]``, the max config's included) and
        their exact cheap costs (``costs[genes][name]``, for every deviation). A deviation without
        scores (one that changes no cost, left unprobed) keeps the max config's score: effect 0."""
        probes = probe_genes(space)
        missing = [p for p in probes if p not in costs]
        if probes[0] not in scores or missing:
            raise LoraSearchError(f"decomposed surrogate: the max config or {len(missing)} deviations' costs are missing")
        base_key = probes[0]
        base_items = np.asarray(scores[base_key], dtype=float)
        k = len(base_items)
        raw: dict[tuple[int, int], tuple[float, float]] = {}  # (gene, choice) -> (mean difference, its variance)
        deltas = {name: [[0.0] * len(gene.choices) for gene in space.genes] for name in costs.get(base_key, {})}
        for key in probes[1:]:
            g = next(i for i, v in enumerate(key) if v)
            if key in scores:
                d = np.asarray(scores[key][:k], dtype=float) - base_items
                raw[g, key[g]] = float(d.mean()), float(d.var(ddof=1) / k) if k > 1 else 0.0
            for name in deltas:
                deltas[name][g][key[g]] = float(costs[key][name]) - float(costs[base_key][name])
        effects = [[0.0] * len(gene.choices) for gene in space.genes]
        variances = [[0.0] * len(gene.choices) for gene in space.genes]
        for (g, j), (value, variance) in pooled(space, raw).items():
            effects[g][j], variances[g][j] = value, variance
        cost_table = {name: {"base": float(costs[base_key][name]), "deltas": d} for name, d in deltas.items()}
        return cls(objective, direction, k, proxy, float(base_items.mean()), effects, cost_table, min_rho=min_rho,
                   choices={gene.key: list(gene.choices) for gene in space.genes},
                   prior=[list(e) for e in effects], variances=variances)

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

    def config(self, genes: Sequence[int]) -> dict[str, Any]:
        """The config of a gene vector (gene key -> choice)."""
        return {key: options[int(j)] for (key, options), j in zip(self.choices.items(), genes)}

    def cost(self, genes: Sequence[int], name: str) -> float:
        """The additive cost of a gene vector: the max config's plus each gene's delta."""
        table = self.costs[name]
        return table["base"] + float(sum(table["deltas"][g][int(j)] for g, j in enumerate(genes)))

    # ------------------------------------------------------------- learning from evaluations
    def update(self, genes: Sequence[Sequence[int]], measured: Sequence[float], stderr: Sequence[float],
               predicted: Sequence[float | None], *, learn: bool = True) -> None:
        """Take in the configs evaluated in full so far: refit the calibration ``measured ~ a + b S``;
        with ``learn``, update the effects by Bayesian linear regression (the probes' effects and
        variances as the prior, each measurement with its own standard error, LINAS-style); and keep
        ``(predicted, measured)`` of the held-out configs (``predicted[i]``: S before config i was
        measured; None for one that took part in fitting the probes, the max config) for the rank
        correlation."""
        y = np.asarray(measured, dtype=float)
        self._calibrate(genes, y)
        if learn and self.calibration is not None and self.calibration[1] > 0 and len(y) >= 2:
            self._learn(genes, y, np.asarray(stderr, dtype=float))
            self._calibrate(genes, y)
        self.checks = [[float(p), float(m)] for p, m in zip(predicted, y) if p is not None]

    def _calibrate(self, genes: Sequence[Sequence[int]], y: np.ndarray) -> None:
        s = self.scores(genes)
        if len(s) >= 2 and np.ptp(s) > 0:
            b, a = np.polyfit(s, y, 1)
            self.calibration = (float(a), float(b))

    def _learn(self, genes: Sequence[Sequence[int]], y: np.ndarray, stderr: np.ndarray) -> None:
        """Posterior mean of the effects: ``prior + V X' (X V X' + S)^-1 (z - X prior)``, where z is each
        measurement in the probes' units (``(y - a) / b - base``) and S its variance."""
        a, b = self.calibration
        free = [(g, j) for g, row in enumerate(self.variances) for j, v in enumerate(row) if v > 0]
        if not free:
            return
        column = {gj: i for i, gj in enumerate(free)}
        X = np.zeros((len(genes), len(free)))
        for row, g_vec in enumerate(genes):
            for g, j in enumerate(g_vec):
                if (g, int(j)) in column:
                    X[row, column[g, int(j)]] = 1.0
        prior = np.array([self.prior[g][j] for g, j in free])
        V = np.array([self.variances[g][j] for g, j in free])
        fixed = np.array([sum(self.prior[g][int(j)] for g, j in enumerate(g_vec) if (g, int(j)) not in column)
                          for g_vec in genes])
        z = (y - a) / b - self.base - fixed
        noise = np.maximum(np.nan_to_num(stderr, nan=0.0), 1e-6) ** 2 / b**2
        gain = np.linalg.solve((X * V) @ X.T + np.diag(noise), z - X @ prior)
        posterior = prior + V * (X.T @ gain)
        self.effects = [list(row) for row in self.prior]
        for (g, j), value in zip(free, posterior):
            self.effects[g][j] = float(value)

    def check_costs(self, space: SearchSpace, cheap: Sequence[Objective]) -> None:
        """Record how far the additive costs miss the min config's exact ones (0 when the costs add up)."""
        config = space.min()
        genes = space.encode(config)
        for o in cheap:
            exact = o.measure(config).value
            self.additive_cost_error[o.name] = abs(self.cost(genes, o.name) - exact) / max(abs(exact), 1e-12)

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
        (None when even the cheapest choices cost more): a multiple-choice knapsack, solved by dynamic
        programming over the Pareto set of (cost, score) of the genes so far. Exact, since the costs
        are not rounded; only if that set outgrows ``MAX_PARETO`` points is it thinned to the best
        point per cost bin (a per-layer space's genes share their cost steps, so it stays small)."""
        if cost not in self.costs:
            raise LoraSearchError(f"decomposed surrogate: no cost {cost!r}; fix: use one of {', '.join(self.costs)}")
        deltas = [np.asarray(d, dtype=float) for d in self.costs[cost]["deltas"]]
        room = at_most - self.costs[cost]["base"]
        tolerance = 1e-9 * max(abs(at_most), 1.0)
        sign = 1.0 if self.direction == "max" else -1.0
        floor = np.cumsum([d.min() for d in deltas][::-1])[::-1].tolist() + [0.0]  # the cheapest rest from gene g on
        costs, values = np.zeros(1), np.zeros(1)
        steps: list[tuple[np.ndarray, np.ndarray]] = []
        for g, d in enumerate(deltas):
            n = len(d)
            c = (costs[:, None] + d[None, :]).ravel()
            v = (values[:, None] + sign * np.asarray(self.effects[g], dtype=float)[None, :]).ravel()
            alive = np.flatnonzero(c + floor[g + 1] <= room + tolerance)  # the rest can still fit
            if alive.size == 0:
                return None
            kept = alive[_pareto(c[alive], v[alive])]
            if kept.size > MAX_PARETO:
                kept = kept[_thinned(c[kept], v[kept], MAX_PARETO)]
            steps.append((kept // n, kept % n))
            costs, values = c[kept], v[kept]
        index = int(np.argmax(values))
        genes = [0] * len(deltas)
        for g in range(len(deltas) - 1, -1, -1):
            previous, choice = steps[g]
            genes[g] = int(choice[index])
            index = int(previous[index])
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
            "trusted": self.trusted(), "additive_cost_error": self.additive_cost_error, "choices": self.choices,
            "prior": self.prior, "variances": self.variances,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = SURROGATE_FILE) -> "DecomposedModel":
        try:
            calibration = data.get("calibration")
            return cls(str(data["objective"]), str(data["direction"]), int(data["items"]), bool(data["proxy"]),
                       float(data["base"]), [list(map(float, e)) for e in data["effects"]], dict(data.get("costs") or {}),
                       tuple(calibration) if calibration else None, [list(c) for c in data.get("checks") or []],
                       float(data.get("min_rho", 0.5)), dict(data.get("additive_cost_error") or {}),
                       dict(data.get("choices") or {}), [list(map(float, e)) for e in data.get("prior") or []],
                       [list(map(float, e)) for e in data.get("variances") or []])
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


def deviation_costs(space: SearchSpace, cheap: Sequence[Objective]) -> dict[tuple[int, ...], dict[str, float]]:
    """The exact cheap costs (closed-form MACs, parameters) of the max config and of every deviation."""
    return {key: {o.name: o.measure(space.decode(key)).value for o in cheap} for key in probe_genes(space)}


def worth_probing(costs: Mapping[tuple[int, ...], Mapping[str, float]]) -> list[tuple[int, ...]]:
    """The max config and the deviations that change some cost (the others cost nothing to leave at the max)."""
    keys = list(costs)
    return [key for key in keys if key == keys[0] or costs[key] != costs[keys[0]]]


def seed_genes(model: DecomposedModel, cost: str, low: float, high: float, slots: int,
               exclude: Sequence[tuple[int, ...]] = ()) -> list[tuple[int, ...]]:
    """``slots`` configs of the model's predicted front, evenly spread over the costs between ``low``
    and ``high`` (the min and max configs'), none of ``exclude`` (the reference configs)."""
    if slots <= 0:
        return []
    seeds: list[tuple[int, ...]] = []
    for budgets in (slots, 2 * slots, 4 * slots):  # more budgets when neighbouring ones share their best
        seeds = [g for g in model.front(cost, spread_budgets(low, high, budgets)) if g not in exclude]
        if len(seeds) >= slots:
            break
    if len(seeds) > slots:
        seeds = [seeds[i] for i in np.linspace(0, len(seeds) - 1, slots).round().astype(int)]
    return seeds


def pooled(space: SearchSpace, raw: Mapping[tuple[int, int], tuple[float, float]]
           ) -> dict[tuple[int, int], tuple[float, float]]:
    """Each probe's effect shrunk towards the mean of its group's same choice over the layers
    (empirical Bayes), with its variance: ``m + w (e - m)``, ``w = tau^2 / (tau^2 + v)``, where ``v``
    is the probe's own sampling variance (its paired item differences) and ``tau^2`` the spread of the
    layers' true effects (the effects' variance less their mean sampling variance, at least 0); the
    variance is ``w v`` plus what the mean itself leaves uncertain. A probe measured precisely keeps
    its own value; a noisy one leans on the other layers'."""
    families: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for g, j in raw:
        families.setdefault((space.genes[g].group, j), []).append((g, j))
    out = {}
    for members in families.values():
        values = np.array([raw[m][0] for m in members])
        noise = np.array([raw[m][1] for m in members])
        if len(members) < 3:
            out.update({m: (float(v), float(n)) for m, v, n in zip(members, values, noise)})
            continue
        mean = float(values.mean())
        spread = max(float(values.var(ddof=1)) - float(noise.mean()), 0.0)
        weights = np.where(spread + noise > 0, spread / np.maximum(spread + noise, 1e-300), 1.0)
        mean_variance = float(noise.mean()) / len(members)
        out.update({m: (float(mean + w * (v - mean)), float(w * n + (1 - w) ** 2 * mean_variance))
                    for m, v, n, w in zip(members, values, noise, weights)})
    return out


def spread_budgets(low: float, high: float, n: int) -> list[float]:
    """``n`` budgets evenly inside ``(low, high)`` (the ends are the min and max configs themselves)."""
    if n <= 0 or not math.isfinite(low) or not math.isfinite(high) or high <= low:
        return []
    return [low + (high - low) * (i + 1) / (n + 1) for i in range(n)]


def _pareto(costs: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Indices of the (cost, value) points no other point beats (no more cost and more value)."""
    order = np.lexsort((-values, costs))
    best_before = np.maximum.accumulate(np.concatenate([[-np.inf], values[order][:-1]]))
    return np.sort(order[values[order] > best_before])


def _thinned(costs: np.ndarray, values: np.ndarray, most: int) -> np.ndarray:
    """Indices of at most ``most`` points: the best value in each of ``most`` equal cost bins."""
    bins = np.minimum(((costs - costs.min()) / max(np.ptp(costs), 1e-300) * most).astype(int), most - 1)
    order = np.lexsort((-values, bins))
    first = np.concatenate([[True], bins[order][1:] != bins[order][:-1]])
    return np.sort(order[first])
