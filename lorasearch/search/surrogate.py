"""A surrogate that screens offspring: propose many, evaluate the ones a cheap predictor ranks best.

Each expensive objective (accuracy, latency) gets a ridge regression on the gene vector (each gene's
choice index scaled to [0, 1], so 0 is the largest choice), fitted by scikit-learn's `RidgeCV` on
the full evaluations so far, its regularisation chosen by efficient leave-one-out. The cheap
objectives (closed-form MACs, parameters) are measured exactly. A strategy that can propose more
offspring than it keeps (NSGA-II, random) proposes ``oversample x population``; `screen` keeps the
``population`` of them that pymoo's non-dominated sorting ranks best on predicted-and-exact
objectives, crowding distance breaking ties within a front, so the kept ones spread along it.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from ..space import SearchSpace

ALPHAS = np.logspace(-3, 3, 13)


class Surrogate:
    """Ridge regressions of the expensive objectives on gene vectors; times its own fitting."""

    def __init__(self, space: SearchSpace) -> None:
        self.upper = np.maximum(space.bounds()[1], 1).astype(float)
        self.models: dict[str, object] = {}
        self.seconds = 0.0
        self.fits = 0

    def features(self, genes: Sequence[Sequence[int]]) -> np.ndarray:
        return np.asarray(genes, dtype=float) / self.upper

    def fit(self, genes: Sequence[Sequence[int]], targets: dict[str, Sequence[float]]) -> None:
        """Fit one model per objective on the evaluated ``genes``."""
        from sklearn.linear_model import RidgeCV

        start = time.perf_counter()
        X = self.features(genes)
        self.models = {name: RidgeCV(alphas=ALPHAS).fit(X, np.asarray(y, dtype=float)) for name, y in targets.items()}
        self.seconds += time.perf_counter() - start
        self.fits += 1

    def predict(self, genes: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        """The predicted value of every fitted objective for each gene vector."""
        start = time.perf_counter()
        X = self.features(genes)
        predicted = {name: model.predict(X) for name, model in self.models.items()}
        self.seconds += time.perf_counter() - start
        return predicted


def screen(F: np.ndarray, keep: int) -> list[int]:
    """Indices of the ``keep`` rows of ``F`` (minimisation, one row per candidate) that rank best:
    whole non-dominated fronts first, then the most crowded-out points of the front that overflows."""
    from pymoo.operators.survival.rank_and_crowding.metrics import calc_crowding_distance
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    F = np.asarray(F, dtype=float)
    if len(F) <= keep:
        return list(range(len(F)))
    chosen: list[int] = []
    for front in NonDominatedSorting().do(F):
        front = list(front)
        if len(chosen) + len(front) <= keep:
            chosen += front
            continue
        crowding = calc_crowding_distance(F[front])
        order = np.argsort(-crowding, kind="stable")
        chosen += [front[i] for i in order[: keep - len(chosen)]]
        break
    return sorted(chosen)
