"""The worker side of a parallel search: what each worker builds once, and how many workers fit.

A worker gets a *recipe*: any picklable callable that takes no arguments and returns a
`WorkerSetup` (the objectives to measure and the fingerprint of the super-network they measure).
`lorasearch.runs.searching.NetworkRecipe` rebuilds a search's super-network and evaluator from its
plain settings; tests pass a top-level function. The worker calls the recipe once, keeps what it
built, and then evaluates configs one at a time (`lorasearch.search.racing.evaluate_config`).

The fingerprint (`lorasearch.SuperNetwork.fingerprint`: the adapter tensors and the space) lets
the driver refuse workers that loaded another adapter or space than it did (a stale file on one
node of a cluster, say); here it is an opaque string.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import LoraSearchError
from ..space import Config
from .objectives import Objective
from .racing import RacePlan, evaluate_config


@dataclass
class WorkerSetup:
    """What a recipe builds: the objectives (and constraint metrics) and the network's fingerprint."""

    objectives: list[Objective]
    fingerprint: str | None = None
    """The fingerprint of the network the objectives measure; None skips the check."""


Recipe = Callable[[], WorkerSetup]


def check_fingerprint(worker: str, found: str | None, expected: str | None) -> None:
    """Refuse a worker whose super-network differs from the driver's."""
    if expected is not None and found is not None and found != expected:
        raise LoraSearchError(
            f"{worker}: its super-network (fingerprint {found}) differs from the driver's ({expected}); "
            "fix: give every worker the same model, --adapter and --space files"
        )


class Worker:
    """Builds the objectives once from a recipe, then evaluates configs with them."""

    def __init__(self, recipe: Recipe, threads: int | None = None) -> None:
        if threads:
            import torch

            torch.set_num_threads(threads)
        setup = recipe()
        if not isinstance(setup, WorkerSetup):
            raise LoraSearchError(f"worker recipe {recipe!r}: returned {type(setup).__name__}; fix: return a WorkerSetup")
        self.objectives = setup.objectives
        self.fingerprint = setup.fingerprint

    def evaluate(self, config: Config, race: RacePlan | None = None) -> tuple[dict[str, Any], float]:
        """``({metric: value}, seconds)`` of one config, raced when a plan is given."""
        start = time.perf_counter()
        values = evaluate_config(self.objectives, config, race)
        return values, time.perf_counter() - start


@dataclass(frozen=True)
class WorkerPlan:
    """How many workers to start and what each takes."""

    count: int
    gpus: int
    """GPUs per worker: 1 where GPUs are present, else 0."""
    threads: int
    """Torch threads per worker: the CPUs divided among the workers."""


def plan_workers(requested: int | None, gpus: int, cpus: int, where: str = "this machine",
                 threads: int | None = None) -> WorkerPlan:
    """One worker per GPU when there are GPUs (never more), else one per CPU unless told otherwise;
    each gets ``threads`` torch threads, by default its share of the CPUs."""
    if requested is not None and requested < 1:
        raise LoraSearchError(f"--workers {requested}: must be 1 or more; fix: e.g. --workers 2")
    if gpus > 0:
        count = requested or gpus
        if count > gpus:
            raise LoraSearchError(
                f"--workers {count}: each worker takes a GPU but {where} has {gpus}; "
                f"fix: use --workers {gpus} or fewer, or hide the GPUs (CUDA_VISIBLE_DEVICES=) to run CPU workers"
            )
        return WorkerPlan(count, 1, threads or max(1, cpus // count))
    count = requested or max(1, cpus)
    return WorkerPlan(count, 0, threads or max(1, cpus // count))


def visible_gpus() -> list[str]:
    """The GPU ids this process may use (as ``CUDA_VISIBLE_DEVICES`` names them)."""
    try:
        import torch

        count = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - a broken CUDA install means no GPUs
        count = 0
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        ids = [d.strip() for d in listed.split(",") if d.strip()]
        return ids[:count]
    return [str(i) for i in range(count)]


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (remote tracebacks stripped)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
