"""Evaluation backends: how a batch of configs gets its objective values.

A backend takes the configs of one batch and yields ``(index, values, seconds)`` as each
evaluation finishes, in any order, so the engine logs every finished evaluation at once.
The ``local`` backend evaluates in this process, one config after another.
"""

from __future__ import annotations

import time
from typing import Any, Iterator, Protocol, Sequence

from ..space import Config
from .objectives import Objective, measure_all


class EvaluationBackend(Protocol):
    """Evaluates batches of configs; yields ``(index in batch, {metric: value}, seconds)``."""

    def evaluate(self, configs: Sequence[Config]) -> Iterator[tuple[int, dict[str, float], float]]: ...


class LocalBackend:
    """Evaluate in this process, in order."""

    def __init__(self, objectives: Sequence[Objective]) -> None:
        self.objectives = list(objectives)

    def evaluate(self, configs: Sequence[Config]) -> Iterator[tuple[int, dict[str, Any], float]]:
        for index, config in enumerate(configs):
            start = time.perf_counter()
            values = measure_all(self.objectives, config)
            yield index, values, time.perf_counter() - start
