"""The ``processes`` backend: worker processes on this machine, one per GPU when there are GPUs.

Built on the standard library's `concurrent.futures.ProcessPoolExecutor` with the ``spawn``
start method. Each worker process runs the recipe once in its initializer (loading its own
super-network, on its own GPU: ``CUDA_VISIBLE_DEVICES`` names one device per worker) and keeps it
for every config it is sent. Without GPUs the CPUs are divided among the workers
(``torch.set_num_threads``).
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Iterator, Sequence

from ..errors import LoraSearchError
from ..space import Config
from .workers import Recipe, Worker, check_fingerprint, first_line, plan_workers, visible_gpus

_worker: Worker | None = None
_problem: LoraSearchError | None = None


def _start_worker(recipe: Recipe, threads: int, devices: Any, expected: str | None) -> None:
    """Pool initializer: take a GPU (if any), build the objectives once, check the fingerprint."""
    global _worker, _problem
    device = devices.get() if devices is not None else None
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    name = f"worker process {os.getpid()}" + (f" (GPU {device})" if device is not None else "")
    try:
        _worker = Worker(recipe, threads)
        check_fingerprint(name, _worker.fingerprint, expected)
    except LoraSearchError as exc:
        _problem = LoraSearchError(str(exc))
    except Exception as exc:  # noqa: BLE001 - reported with the first evaluation, as one line
        _problem = LoraSearchError(f"{name}: cannot build its super-network ({type(exc).__name__}: {first_line(exc)})")


def _evaluate(config: Config, race: Any = None) -> tuple[dict[str, Any], float]:
    if _problem is not None:
        raise _problem
    assert _worker is not None
    return _worker.evaluate(config, race)


class ProcessBackend:
    """Evaluate on ``workers`` processes of this machine (default: one per GPU, else one per CPU).

    Args:
        recipe: picklable, called once per worker to build its `WorkerSetup`.
        workers: how many processes; with GPUs at most one per visible GPU.
        expected_fingerprint: the driver's network fingerprint; a worker that differs is refused.
        threads: torch threads per worker (default: this machine's CPUs divided among the workers).
    """

    def __init__(self, recipe: Recipe, workers: int | None = None, *, expected_fingerprint: str | None = None,
                 threads: int | None = None) -> None:
        gpus = visible_gpus()
        self.plan = plan_workers(workers, len(gpus), os.cpu_count() or 1, threads=threads)
        context = multiprocessing.get_context("spawn")
        devices = None
        if self.plan.gpus:
            devices = context.Queue()
            for device in gpus[: self.plan.count]:
                devices.put(device)
        self.pool = ProcessPoolExecutor(
            self.plan.count, mp_context=context, initializer=_start_worker,
            initargs=(recipe, self.plan.threads, devices, expected_fingerprint),
        )

    @property
    def workers(self) -> int:
        return self.plan.count

    def evaluate(self, configs: Sequence[Config], races: Sequence[Any] | None = None,
                 on_chunk: Any = None) -> Iterator[tuple[int, dict[str, Any], float]]:
        """Send every config (with its race plan) at once; yield each result as its worker finishes
        it. Chunks of a raced config are not reported before it ends."""
        races = list(races) if races is not None else [None] * len(configs)
        futures: dict[Future, int] = {}
        try:
            futures = {self.pool.submit(_evaluate, config, race): index
                       for index, (config, race) in enumerate(zip(configs, races))}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=futures.get):
                    values, seconds = future.result()
                    yield futures[future], values, seconds
        except BrokenProcessPool:
            raise LoraSearchError(
                "--backend processes: a worker process died (out of memory?); the evaluations finished so far are "
                "logged; fix: resume the run with --resume, with fewer --workers"
            ) from None
        finally:
            for future in futures:
                future.cancel()

    def close(self) -> None:
        """Stop the worker processes."""
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "ProcessBackend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
