"""The search loop: ask a strategy for a batch, evaluate what is new, log it, tell the strategy.

No config is evaluated twice in a run: every finished evaluation is cached by its gene tuple and
appended to ``evaluations.jsonl`` at once. A resumed run replays the strategy from its seed and
serves the logged evaluations from the cache, so it repeats no evaluation, loses no finished
one, and ends with the front an uninterrupted run would have found. The run directory is locked
(`lorasearch.io.FolderLock`) from the engine's start to the end of `SearchEngine.run`, so a second
process on the same directory is refused instead of repeating the same evaluations.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import LoraSearchError
from ..io import FolderLock
from ..results.run import SearchResult
from ..results.table import ObjectiveSpec, hypervolume_curve, results_table, to_minimisation
from ..space import SearchSpace, space_fingerprint
from .backends import EvaluationBackend, LocalBackend
from .objectives import Constraint, Objective
from .rundir import RunDirectory
from .strategies import STRATEGIES, StrategySettings, make_strategy

MAX_IDLE_BATCHES = 50  # batches in a row that bring no new config end the search


@dataclass
class SearchSettings(StrategySettings):
    """A search's settings: the strategy, the evaluation budget and the strategy's options."""

    strategy: str = "nsga2"
    """nsga2, random, tpe, optuna-nsga2 or exhaustive."""
    budget: int = 100
    """Distinct configs evaluated (cached repeats are free)."""

    def check(self) -> None:
        if self.strategy not in STRATEGIES:
            raise LoraSearchError(f"strategy: unknown {self.strategy!r}; fix: use one of {', '.join(STRATEGIES)}")
        if self.population < 2:
            raise LoraSearchError(f"population: {self.population} is too small; fix: use at least 2")
        if self.budget < self.population:
            raise LoraSearchError(
                f"budget: {self.budget} is below the population {self.population}; fix: raise --budget or lower --population"
            )


def derive_specs(objectives: Sequence[Objective], space: SearchSpace) -> list[ObjectiveSpec]:
    """Normalisation bounds per objective: given ones, else ``(0, 1.1 x max config)`` for costs
    and ``(1, 0)`` for scores. They are computed once and stored with the run."""
    specs = []
    for o in objectives:
        if o.bounds is not None:
            best, worst = o.bounds
        elif o.direction == "min":
            best, worst = 0.0, 1.1 * o.measure(space.max()).value
        else:
            best, worst = 1.0, 0.0
        if best == worst:
            raise LoraSearchError(f"objective {o.name}: best and worst bounds are equal ({best}); fix: set bounds")
        specs.append(ObjectiveSpec(o.name, o.direction, float(best), float(worst), o.unit))
    return specs


class SearchEngine:
    """Runs one search; see `run_search` for the arguments."""

    def __init__(
        self,
        space: SearchSpace,
        objectives: Sequence[Objective],
        settings: SearchSettings,
        *,
        constraints: Sequence[Constraint] = (),
        metrics: Sequence[Objective] = (),
        out_dir: str | Path | None = None,
        run_info: Mapping[str, Any] | None = None,
        resume: bool = False,
        backend: EvaluationBackend | None = None,
        log: Callable[[str], None] | None = print,
        optuna_storage: str | None = None,
        fingerprints: Mapping[str, str | None] | None = None,
        force: bool = False,
    ) -> None:
        settings.check()
        self.space, self.objectives, self.settings = space, list(objectives), settings
        self.constraints = list(constraints)
        measured = {o.name for o in list(objectives) + list(metrics)}
        for c in self.constraints:
            if c.metric not in measured:
                raise LoraSearchError(f"constraint {c}: {c.metric!r} is not measured; fix: add it to the objectives or metrics")
        self.backend = backend or LocalBackend(list(objectives) + list(metrics))
        self.log = log or (lambda line: None)
        self.rundir = RunDirectory(out_dir) if out_dir is not None else None
        self.records: list[dict[str, Any]] = []
        self.cache: dict[tuple[int, ...], dict[str, Any]] = {}
        self._replay: set[tuple[int, ...]] = set()
        self.run_info = dict(run_info or {})
        self.fingerprints = {"space": space_fingerprint(space), **dict(fingerprints or {})}
        self.lock = FolderLock(out_dir).acquire() if out_dir is not None else None
        try:
            self.specs = self._start(self.run_info, resume, force)
            self.evaluated = 0  # distinct configs evaluated in this run, logged ones included
            self.strategy = self._strategy(optuna_storage, out_dir)
        except BaseException:
            self.close()
            raise
        self.start_time = time.perf_counter()

    def close(self) -> None:
        """Release the run directory (`run` does so when it ends)."""
        if self.lock is not None:
            self.lock.release()

    def _strategy(self, storage: str | None, out_dir: str | Path | None):
        n_obj, n_constr = len(self.objectives), len(self.constraints)
        if not storage:
            return make_strategy(self.settings.strategy, self.space, n_obj, n_constr, self.settings)
        from .shared_study import owner_name, shared_strategy, study_signature

        # A shared study's sampler does not replay: the run keeps every logged evaluation as it is.
        self.records, self.evaluated = [self.cache[key] for key in self._replay], len(self._replay)
        self._replay = set()
        return shared_strategy(
            self.settings.strategy, self.space, n_obj, n_constr, self.settings, storage=storage,
            budget=self.settings.budget, owner=owner_name(out_dir),
            signature=study_signature(self.specs, self.constraints, self.space), logged=self._logged,
        )

    def _logged(self, key: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray | None] | None:
        """The F and G rows of a logged config (for a shared study's unfinished trials), or None."""
        if key not in self.cache:
            return None
        G = self._G([np.array(key)])
        return self._F([np.array(key)])[0], (G[0] if G is not None else None)

    # -------------------------------------------------------------------------- setup
    def _run_document(self, run_info: dict[str, Any]) -> dict[str, Any]:
        search = {k: v for k, v in asdict(self.settings).items()}
        search["objectives"] = [o.name for o in self.objectives]
        search["constraints"] = [str(c) for c in self.constraints]
        return {"run": run_info, "search": search, "fingerprints": self.fingerprints}

    def _start(self, run_info: dict[str, Any], resume: bool, force: bool) -> list[ObjectiveSpec]:
        document = self._run_document(run_info)
        if self.rundir is None:
            return derive_specs(self.objectives, self.space)
        previous = self.rundir.start(document, resume=resume, force=force)
        stored = self.rundir.read_run().get("bounds") if resume else None
        specs = [ObjectiveSpec(**s) for s in stored] if stored else derive_specs(self.objectives, self.space)
        if not stored:
            self.rundir.update_run({"bounds": [s.to_dict() for s in specs]})
        for record in previous:
            self.cache[tuple(record["genes"])] = record
        self._replay = {tuple(r["genes"]) for r in previous}
        return specs

    # --------------------------------------------------------------------------- loop
    def run(self) -> SearchResult:
        """Search until the budget is spent or the strategy has nothing left to propose."""
        try:
            self._loop()
            return self._finish()
        finally:
            self.close()

    def _loop(self) -> None:
        generation, idle = 0, 0
        while self.evaluated < self.settings.budget and idle < MAX_IDLE_BATCHES:
            proposals = self.strategy.ask()
            if not proposals:
                break
            before = self.evaluated
            complete = self._evaluate(proposals, generation)
            idle = idle + 1 if self.evaluated == before else 0
            if not complete:
                break
            genes = [g for g, _ in proposals]
            self.strategy.tell(genes, self._F(genes), self._G(genes))
            self._report(generation)
            generation += 1

    def _evaluate(self, proposals: Sequence[tuple[np.ndarray, str]], generation: int) -> bool:
        """Evaluate the batch's new configs (up to the budget); False when the budget cut it short.

        Eval ids follow the batch's order, not the order evaluations finish in, so a parallel
        backend (and a resume after a crash in the middle of a batch) numbers them as a local run.
        """
        new, seen, order, replayed = [], set(), [], set()
        first_id = self._next_id()
        for genes, source in proposals:
            key = tuple(int(g) for g in genes)
            if key in seen:
                continue
            seen.add(key)
            if key in self._replay:  # finished before a crash: count it, do not repeat it
                self._replay.discard(key)
                self.records.append(self.cache[key])
                self.evaluated += 1
                replayed.add(key)
                order.append(key)
            elif key not in self.cache:
                new.append((key, source))
                order.append(key)
        room = self.settings.budget - self.evaluated
        todo = new[:max(room, 0)]
        counted = replayed | {key for key, _ in todo}
        ids = {key: first_id + i for i, key in enumerate(k for k in order if k in counted)}
        configs = [self.space.decode(key) for key, _ in todo]
        for index, values, seconds in self.backend.evaluate(configs):
            key, source = todo[index]
            self._record(ids[key], key, configs[index], values, seconds, generation, source)
        return len(new) <= room

    def _next_id(self) -> int:
        """The eval id of the next distinct config: the count so far (the largest id + 1 in a shared study)."""
        if getattr(self.strategy, "shared", False):
            return max((r["eval_id"] for r in self.cache.values()), default=-1) + 1
        return self.evaluated

    def _record(self, eval_id, key, config, values, seconds, generation, source) -> None:
        violations = {str(c): c.violation(values[c.metric]) for c in self.constraints}
        record = {
            "eval_id": eval_id,
            "genes": list(key),
            "config": config,
            "objectives": dict(values),
            "constraints": violations,
            "feasible": all(v <= 0 for v in violations.values()),
            "generation": generation,
            "source": source,
            "seconds": round(seconds, 6),
        }
        self.cache[key] = record
        self.records.append(record)
        self.evaluated += 1
        if self.rundir is not None:
            self.rundir.append(record)

    def _F(self, genes: Sequence[np.ndarray]) -> np.ndarray:
        rows = [self.cache[tuple(int(v) for v in g)]["objectives"] for g in genes]
        return to_minimisation(pd.DataFrame(rows), self.specs)

    def _G(self, genes: Sequence[np.ndarray]) -> np.ndarray | None:
        if not self.constraints:
            return None
        return np.array([[self.cache[tuple(int(v) for v in g)]["constraints"][str(c)] for c in self.constraints] for g in genes])

    # ------------------------------------------------------------------------ results
    def table(self) -> pd.DataFrame:
        return results_table(self.records, self.specs)

    def _report(self, generation: int) -> None:
        table = self.table()
        front = table[table["is_pareto"]] if len(table) else table
        hv = hypervolume_curve(table, self.specs, by="generation")["hypervolume"].iloc[-1] if len(table) else 0.0
        score = next((s.name for s in self.specs if s.direction == "max"), None)
        best = f" | best {score} {front[score].max():.4f}" if score and len(front) else ""
        self.log(
            f"gen {generation:>3} | evals {self.evaluated}/{self.settings.budget} | front {len(front)} | "
            f"HV {hv:.4f}{best} | {time.perf_counter() - self.start_time:.1f} s"
        )
        if self.rundir is not None:
            self.rundir.write_tables(table, hypervolume_curve(table, self.specs, by="generation"))

    def _finish(self) -> SearchResult:
        table = self.table()
        if self.rundir is not None:
            self.rundir.write_tables(table, hypervolume_curve(table, self.specs, by="generation"))
        document = self._run_document(self.run_info)
        return SearchResult(table=table, specs=self.specs, settings=document["search"], info=document["run"],
                            path=self.rundir.path if self.rundir else None)


def run_search(
    space: SearchSpace,
    objectives: Sequence[Objective],
    settings: SearchSettings | None = None,
    **kwargs: Any,
) -> SearchResult:
    """Search ``space`` for the Pareto front of ``objectives``.

    Args:
        space: the search space (bound to a model, or with ``num_layers`` set).
        objectives: two or more `Objective`s.
        settings: strategy, budget, population, seed and operator settings.
        constraints: `Constraint`s (pymoo inequality constraints; infeasible points never make the front).
        metrics: extra measured columns, e.g. the metric of a constraint that is not an objective.
        out_dir: the run directory (see `lorasearch.search.rundir`); None keeps everything in memory.
        run_info: what reproduces the run (model, adapter, space, task ...), stored in run.yaml.
        resume: continue the run in ``out_dir``; refused when run.yaml differs.
        backend: how batches of configs are evaluated (default: in this process).
        log: called with one line per generation (default ``print``; None for silence).
        optuna_storage: a study shared with other search processes (tpe, optuna-nsga2).
        fingerprints: hashes of what the results depend on (``{"adapter": ..., "task": ...}``),
            stored in run.yaml; a resume whose fingerprints differ is refused.
        force: resume even when a fingerprint other than the space's differs (recorded in run.yaml).
    """
    return SearchEngine(space, objectives, settings or SearchSettings(), **kwargs).run()
