"""Evaluation backends: how a batch of configs gets its objective values.

A backend takes the configs of one batch (a strategy's whole population) and yields
``(index, values, seconds)`` as each evaluation finishes, in any order, so the engine logs every
finished evaluation at once. Every strategy goes through this one interface.

* ``local`` (the default): in this process, one config after another;
* ``processes``: worker processes on this machine, one per GPU when there are GPUs
  (`lorasearch.search.processes`);
* ``ray``: Ray actors on a cluster or a local Ray (`lorasearch.search.ray_backend`).

The parallel backends build their workers from a picklable *recipe* (see
`lorasearch.search.workers`) and hold them until `close()`; use them as context managers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Sequence

from ..errors import LoraSearchError
from ..space import Config
from .objectives import Objective
from .racing import evaluate_config
from .workers import Recipe

BACKENDS = ("local", "processes", "ray")


class EvaluationBackend(Protocol):
    """Evaluates batches of configs; yields ``(index in batch, {metric: value}, seconds)``.

    ``races`` holds a `lorasearch.search.racing.RacePlan` (or None) per config; ``on_chunk(index,
    k, measurement)`` is told each finished chunk of a raced config, where the backend can.
    """

    def evaluate(self, configs: Sequence[Config], races: Sequence[Any] | None = None,
                 on_chunk: Any = None) -> Iterator[tuple[int, dict[str, Any], float]]: ...


class LocalBackend:
    """Evaluate in this process, in order."""

    workers = 1

    def __init__(self, objectives: Sequence[Objective]) -> None:
        self.objectives = list(objectives)

    def evaluate(self, configs: Sequence[Config], races: Sequence[Any] | None = None,
                 on_chunk: Any = None) -> Iterator[tuple[int, dict[str, Any], float]]:
        races = list(races) if races is not None else [None] * len(configs)
        for index, (config, race) in enumerate(zip(configs, races)):
            start = time.perf_counter()
            chunk = (lambda k, m, i=index: on_chunk(i, k, m)) if on_chunk is not None else None
            values = evaluate_config(self.objectives, config, race, chunk)
            yield index, values, time.perf_counter() - start

    def close(self) -> None:
        """Nothing to stop."""

    def __enter__(self) -> "LocalBackend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass
class BackendSettings:
    """Where evaluations run. None of this changes results, so run.yaml does not store it."""

    kind: str = "local"
    """local, processes or ray."""
    workers: int | None = None
    """Parallel workers (default: one per GPU, else one per CPU)."""
    ray_address: str | None = None
    """A running Ray cluster (``host:port``, ``auto``); None starts a local Ray."""
    threads: int | None = None
    """Torch threads per worker (default: the CPUs divided among the workers)."""

    def check(self) -> None:
        if self.kind not in BACKENDS:
            raise LoraSearchError(f"--backend: unknown {self.kind!r}; fix: use one of {', '.join(BACKENDS)}")
        if self.workers is not None and self.workers < 1:
            raise LoraSearchError(f"--workers {self.workers}: must be 1 or more; fix: e.g. --workers 2")
        if self.threads is not None and self.threads < 1:
            raise LoraSearchError(f"--threads {self.threads}: must be 1 or more; fix: e.g. --threads 1")
        if self.kind == "local" and self.workers not in (None, 1):
            raise LoraSearchError(f"--workers {self.workers}: the local backend has one; fix: add --backend processes or ray")
        if self.ray_address and self.kind != "ray":
            raise LoraSearchError("--ray-address: only the ray backend uses it; fix: add --backend ray")
        if self.kind == "ray":  # fail before the model loads: Ray missing, or the cluster unreachable
            from .ray_backend import check_reachable, import_ray

            import_ray()
            if self.ray_address:
                check_reachable(self.ray_address)


def make_backend(settings: BackendSettings, *, objectives: Sequence[Objective] = (), recipe: Recipe | None = None,
                 fingerprint: str | None = None):
    """The backend the settings name: ``local`` measures ``objectives`` here; the others build
    their workers from ``recipe`` and refuse workers whose fingerprint differs from ``fingerprint``."""
    settings.check()
    if settings.kind == "local":
        return LocalBackend(objectives)
    if recipe is None:
        raise LoraSearchError(f"--backend {settings.kind}: needs a worker recipe; fix: search through SearchRun")
    if settings.kind == "processes":
        from .processes import ProcessBackend

        return ProcessBackend(recipe, settings.workers, expected_fingerprint=fingerprint, threads=settings.threads)
    from .ray_backend import RayBackend

    return RayBackend(recipe, settings.workers, address=settings.ray_address, expected_fingerprint=fingerprint,
                      threads=settings.threads)
