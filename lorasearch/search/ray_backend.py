"""The ``ray`` backend: Ray actors, each holding a super-network replica (``pip install lorasearch[ray]``).

Each actor runs the recipe once and keeps what it built; it takes one GPU where the cluster has
GPUs (Ray sets its ``CUDA_VISIBLE_DEVICES``), else an equal share of the CPUs. The backend
connects to a running cluster (``address``: ``host:port``, ``auto`` or ``ray://host:port``) or
starts a local one, and reuses a Ray instance this process already started (tests do that).

Every actor holds at most one config at a time. When an actor dies (its node lost, the process
killed, out of memory), its config goes back to the front of the queue for a live actor and a
replacement actor is started; results are yielded as they finish, so the engine logs every one.
A config that kills ``max_deaths`` workers ends the search with a one-line error.
"""

from __future__ import annotations

import socket
from collections import deque
from typing import Any, Iterator, Sequence

from ..errors import LoraSearchError
from ..space import Config
from .workers import Recipe, Worker, check_fingerprint, first_line, plan_workers

RAY_MISSING = "--backend ray: Ray is not installed; fix: pip install 'lorasearch[ray]'"
CONNECT_TIMEOUT_S = 5.0


def import_ray():
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise LoraSearchError(RAY_MISSING) from None
    return ray


class EvaluationActor:
    """The actor class (wrapped with ``ray.remote`` at run time): one worker, kept for the whole run."""

    def __init__(self, recipe: Recipe, threads: int) -> None:
        self.recipe, self.threads = recipe, threads
        self.worker: Worker | None = None

    def setup(self) -> tuple[str | None, str]:
        """Build the objectives; return the fingerprint and where this actor runs."""
        import os

        self.worker = Worker(self.recipe, self.threads)
        return self.worker.fingerprint, f"Ray worker {os.getpid()} on {socket.gethostname()}"

    def evaluate(self, config: Config, race: Any = None) -> tuple[dict[str, Any], float]:
        assert self.worker is not None
        return self.worker.evaluate(config, race)


def check_reachable(address: str) -> None:
    """Fail fast, in one line, when ``host:port`` does not answer."""
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and other forms: ray.init reports
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise LoraSearchError(
            f"--ray-address {address}: cannot reach it ({exc.strerror or exc}); fix: start the cluster with "
            "`ray start --head` and pass the address it prints, or leave --ray-address out to start Ray here"
        ) from None


def connect(address: str | None, num_cpus: int | None) -> bool:
    """Connect to ``address`` or start a local Ray; True when this call started or joined it."""
    ray = import_ray()
    if address:
        check_reachable(address)
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"address": address} if address else {"num_cpus": num_cpus, "include_dashboard": False}
    try:
        ray.init(log_to_driver=False, logging_level="ERROR", **options)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError ...
        where = f"--ray-address {address}" if address else "--backend ray"
        raise LoraSearchError(f"{where}: cannot connect to Ray ({first_line(exc)}); fix: check the address, "
                              "or that `ray status` works on this machine") from None
    return True


class RayBackend:
    """Evaluate on Ray actors that each hold a super-network replica.

    Args:
        recipe: picklable, called once per actor to build its `WorkerSetup`.
        workers: actors to start (default: one per GPU of the cluster, else one per CPU).
        address: a running cluster's address; None starts a local Ray (or reuses this process's).
        expected_fingerprint: the driver's network fingerprint; an actor that differs is refused.
        num_cpus: CPUs of a local Ray started here (default: all).
        threads: torch threads per actor (default: the cluster's CPUs divided among the actors).
        max_deaths: actors one config may kill before the search stops.
    """

    def __init__(self, recipe: Recipe, workers: int | None = None, *, address: str | None = None,
                 expected_fingerprint: str | None = None, num_cpus: int | None = None, threads: int | None = None,
                 max_deaths: int = 3) -> None:
        self.ray = import_ray()
        self.owns_ray = connect(address, num_cpus)
        resources = self.ray.cluster_resources()
        cpus, gpus = int(resources.get("CPU", 1)), int(resources.get("GPU", 0))
        self.plan = plan_workers(workers, gpus, cpus, where=f"the Ray cluster ({cpus} CPUs, {gpus} GPUs)", threads=threads)
        share = {"num_gpus": 1, "num_cpus": 0} if self.plan.gpus else {"num_cpus": max(1, cpus // self.plan.count)}
        self.actor_class = self.ray.remote(**share)(EvaluationActor)
        self.recipe, self.expected, self.max_deaths = recipe, expected_fingerprint, max_deaths
        self.idle: list[Any] = []
        self.starting: dict[Any, Any] = {}  # setup() ref -> actor
        self.deaths = 0
        self._all: list[Any] = []
        for _ in range(self.plan.count):
            self._start_actor()
        while self.starting:
            self._handle_ready(self._wait(list(self.starting)))

    @property
    def workers(self) -> int:
        return self.plan.count

    # ------------------------------------------------------------------------ actors
    def _start_actor(self) -> None:
        actor = self.actor_class.remote(self.recipe, self.plan.threads)
        self._all.append(actor)
        self.starting[actor.setup.remote()] = actor

    def _wait(self, refs: list[Any]) -> Any:
        done, _ = self.ray.wait(refs, num_returns=1)
        return done[0]

    def _handle_ready(self, ref: Any) -> None:
        actor = self.starting.pop(ref)
        try:
            fingerprint, name = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as exc:
            self._record_death(f"a Ray worker died while loading its super-network ({first_line(exc)})")
            self._start_actor()
            return
        except self.ray.exceptions.RayTaskError as exc:
            raise _task_error(exc, "a Ray worker cannot build its super-network") from None
        check_fingerprint(name, fingerprint, self.expected)
        self.idle.append(actor)

    def _record_death(self, what: str) -> None:
        self.deaths += 1
        if self.deaths > self.max_deaths * max(self.plan.count, 1):
            raise LoraSearchError(f"--backend ray: {what}, {self.deaths} deaths in all; fix: check the workers' memory "
                                  "and logs (`ray logs`), then resume with --resume")

    # ---------------------------------------------------------------------- batches
    def evaluate(self, configs: Sequence[Config], races: Sequence[Any] | None = None,
                 on_chunk: Any = None) -> Iterator[tuple[int, dict[str, Any], float]]:
        """Give each idle actor one config (with its race plan); yield results as they finish;
        re-queue a dead actor's config. Chunks of a raced config are not reported before it ends."""
        races = list(races) if races is not None else [None] * len(configs)
        queue, running = deque(range(len(configs))), {}
        deaths = [0] * len(configs)
        while queue or running:
            while queue and self.idle:
                actor, index = self.idle.pop(), queue.popleft()
                running[actor.evaluate.remote(configs[index], races[index])] = (actor, index)
            ref = self._wait(list(running) + list(self.starting))
            if ref in self.starting:
                self._handle_ready(ref)
                continue
            actor, index = running.pop(ref)
            try:
                values, seconds = self.ray.get(ref)
            except self.ray.exceptions.RayActorError as exc:
                deaths[index] += 1
                self._retire(actor, index, deaths[index], exc)
                queue.appendleft(index)
                continue
            except self.ray.exceptions.RayTaskError as exc:
                raise _task_error(exc, f"evaluating config {index} of the batch failed") from None
            self.idle.append(actor)
            yield index, values, seconds

    def _retire(self, actor: Any, index: int, deaths: int, exc: Exception) -> None:
        if deaths >= self.max_deaths:
            raise LoraSearchError(
                f"--backend ray: config {index} of the batch killed {deaths} workers ({first_line(exc)}); the evaluations "
                "finished so far are logged; fix: check the workers' memory and logs (`ray logs`), then --resume"
            )
        self._record_death(f"a Ray worker died ({first_line(exc)})")
        self._all.remove(actor)
        self._start_actor()

    def close(self) -> None:
        """Stop the actors (and the local Ray this backend started)."""
        for actor in self._all:
            try:
                self.ray.kill(actor)
            except Exception:  # noqa: BLE001 - already dead
                pass
        self._all, self.idle, self.starting = [], [], {}
        if self.owns_ray:
            self.ray.shutdown()

    def __enter__(self) -> "RayBackend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _task_error(exc: Exception, what: str) -> LoraSearchError:
    """A remote exception as one line: the lorasearch error itself, or its type and first line."""
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, LoraSearchError):
        return LoraSearchError(str(cause))
    return LoraSearchError(f"--backend ray: {what} ({type(cause).__name__}: {first_line(cause)})")
