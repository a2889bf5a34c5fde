"""The search loop: ask a strategy for a batch, evaluate what is new, log it, tell the strategy.

No config is evaluated twice in a run: every finished evaluation is cached by its gene tuple and
appended to ``evaluations.jsonl`` at once. A resumed run replays the strategy from its seed and
serves the logged evaluations from the cache, so it repeats no evaluation, loses no finished
one, and ends with the front an uninterrupted run would have found. The run directory is locked
(`lorasearch.io.FolderLock`) from the engine's start to the end of `SearchEngine.run`, so a second
process on the same directory is refused instead of repeating the same evaluations.

Two ways to spend less on a search, on every strategy where they make sense:

* racing (`lorasearch.search.racing`): a candidate is scored chunk by chunk on nested prefixes of
  the validation items and stops once a front point of no higher cost beats it with confidence;
  the chunks scored are logged as they finish, so a resume scores no item twice;
* a surrogate (`lorasearch.search.surrogate`): NSGA-II and random search propose several times
  the population, and only those a ridge model of the expensive objectives ranks best are scored.

Every evaluation records the validation items it ran through the model (``item_forwards``), the
search's real cost.
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
from ..results.run import SearchResult, item_scores_of
from ..results.table import ObjectiveSpec, hypervolume_curve, results_table, to_minimisation
from ..space import SearchSpace, space_fingerprint
from .backends import EvaluationBackend, LocalBackend
from .bounds import derive_specs, needs_references
from .objectives import ITEM_FORWARDS, ITEM_SCORES, PARTIAL, RECORD_KEYS, Constraint, Measurement, Objective
from .racing import DEFAULT_CHUNKS, FrontPoint, RacePlan, raced_objective, stops_for
from .rundir import CHUNK, RunDirectory
from .strategies import STRATEGIES, StrategySettings, make_strategy
from .surrogate import Surrogate, screen

MAX_IDLE_BATCHES = 50  # batches in a row that bring no new config end the search


@dataclass
class SearchSettings(StrategySettings):
    """A search's settings: the strategy, the evaluation budget and the strategy's options."""

    strategy: str = "nsga2"
    """nsga2, random, tpe, optuna-nsga2 or exhaustive."""
    budget: int = 100
    """Distinct configs evaluated (cached repeats are free)."""
    racing: bool = False
    """Score each candidate chunk by chunk and stop it once a front point of no higher cost beats it
    by more than --race-z paired standard errors (the max, min and heuristic configs always run in full)."""
    race_chunks: str = "0.25,0.5,1"
    """Racing: the chunks, as shares (or counts) of the validation items, comma-separated."""
    race_z: float = 2.0
    """Racing: paired standard errors by which a front point must beat a candidate to stop it."""
    surrogate: bool = False
    """Propose --surrogate-oversample times the population (NSGA-II, random) and evaluate only those a
    ridge model of the expensive objectives, with the exact costs, ranks best."""
    surrogate_oversample: int = 5
    """Surrogate: candidates proposed per config evaluated."""

    def check(self) -> None:
        if self.strategy not in STRATEGIES:
            raise LoraSearchError(f"strategy: unknown {self.strategy!r}; fix: use one of {', '.join(STRATEGIES)}")
        if self.population < 2:
            raise LoraSearchError(f"population: {self.population} is too small; fix: use at least 2")
        if self.budget < self.population:
            raise LoraSearchError(
                f"budget: {self.budget} is below the population {self.population}; fix: raise --budget or lower --population"
            )
        self.chunks()
        if self.race_z <= 0:
            raise LoraSearchError(f"--race-z {self.race_z}: must be positive; fix: e.g. 2")
        if self.surrogate and self.strategy not in ("nsga2", "random"):
            raise LoraSearchError(f"--surrogate: the {self.strategy} strategy proposes one config at a time; "
                                  "fix: use --strategy nsga2 or random with it")
        if self.surrogate_oversample < 2:
            raise LoraSearchError(f"--surrogate-oversample {self.surrogate_oversample}: must be 2 or more; fix: e.g. 5")

    def chunks(self) -> tuple[float, ...]:
        """The racing chunks, parsed and checked."""
        try:
            values = tuple(float(v) for v in str(self.race_chunks).split(",") if v.strip())
        except ValueError:
            values = ()
        if not values or any(v <= 0 for v in values):
            raise LoraSearchError(f"--race-chunks {self.race_chunks!r}: not positive numbers; fix: e.g. 0.25,0.5,1")
        return values or DEFAULT_CHUNKS


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
        progress: Callable[[str], None] | None = None,
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
        self.progress = progress
        self.rundir = RunDirectory(out_dir) if out_dir is not None else None
        self.records: list[dict[str, Any]] = []
        self.cache: dict[tuple[int, ...], dict[str, Any]] = {}
        self._replay: set[tuple[int, ...]] = set()
        self.run_info = dict(run_info or {})
        self.raced = raced_objective(self.objectives) if settings.racing else None
        self.surrogate = Surrogate(space) if settings.surrogate else None
        self.specs: list[ObjectiveSpec] | None = None
        self.fingerprints = {"space": space_fingerprint(space), **dict(fingerprints or {})}
        self.lock = FolderLock(out_dir).acquire() if out_dir is not None else None
        self.start_time = time.perf_counter()
        try:
            self._start(self.run_info, resume, force, shared=bool(optuna_storage))
            self.evaluated = 0  # distinct configs evaluated in this run, logged ones included
            self.strategy = self._strategy(optuna_storage, out_dir)
        except BaseException:
            self.close()
            raise

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

    def _start(self, run_info: dict[str, Any], resume: bool, force: bool, shared: bool) -> None:
        """Claim the run directory, take the logged evaluations and chunks, fix the bounds if they can be."""
        document = self._run_document(run_info)
        previous: list[dict[str, Any]] = []
        if self.rundir is not None:
            previous = self.rundir.start(document, resume=resume, force=force)
            stored = self.rundir.read_run().get("bounds") if resume else None
            if stored:
                self.specs = [ObjectiveSpec(**s) for s in stored]
        for record in previous:
            if record.get("type") == CHUNK:
                self._restore_chunk(record)
            else:
                self.cache[tuple(record["genes"])] = record
        self._replay = {tuple(r["genes"]) for r in previous if r.get("type") != CHUNK}
        if self.specs is None and (shared or not needs_references(self.objectives)):
            self._fix_bounds()  # a shared study's processes must agree on its bounds before they start

    def _fix_bounds(self) -> None:
        """Derive the bounds (from the max and min configs' measurements when logged) and store them."""
        measured = {}
        for label in ("max", "min"):
            key = tuple(int(g) for g in self.space.encode(getattr(self.space, label)()))
            if key in self.cache:
                measured[label] = self.cache[key]["objectives"]
        self.specs = derive_specs(self.objectives, self.space, measured)
        if self.rundir is not None:
            self.rundir.update_run({"bounds": [s.to_dict() for s in self.specs]})

    def _restore_chunk(self, record: Mapping[str, Any]) -> None:
        """Items of an unfinished raced evaluation, scored before a crash: not to be scored again."""
        objective = next((o for o in self.objectives if o.name == record["objective"]), None)
        if objective is not None and objective.restore is not None:
            objective.restore(self.space.decode(record["genes"]), record["items"])

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
            proposals = self._ask()
            if not proposals:
                break
            before = self.evaluated
            complete = self._evaluate(proposals, generation)
            idle = idle + 1 if self.evaluated == before else 0
            if not complete:
                break
            if self.specs is None:
                self._fix_bounds()  # the first batch held the max and min configs
            genes = [g for g, _ in proposals]
            self.strategy.tell(genes, self._F(genes), self._G(genes))
            self._report(generation)
            generation += 1

    def _ask(self) -> list[tuple[np.ndarray, str]]:
        """The strategy's next batch; with a surrogate, the best-predicted of several times as many."""
        full = self._full_records()
        if self.surrogate is None or self.specs is None or len(full) < self.settings.population:
            return self.strategy.ask()
        candidates = self.strategy.ask_many(self.settings.surrogate_oversample * self.settings.population)
        if len(candidates) <= self.settings.population:
            return candidates
        kept = screen(self._predicted_F([g for g, _ in candidates], full), self.settings.population)
        self.strategy.keep(kept)
        return [candidates[i] for i in kept]

    def _predicted_F(self, genes: Sequence[np.ndarray], full: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Normalised minimisation objectives of candidates: predicted where expensive, else measured."""
        expensive = [o.name for o in self.objectives if o.expensive]
        self.surrogate.fit([r["genes"] for r in full], {n: [r["objectives"][n] for r in full] for n in expensive})
        predicted = self.surrogate.predict(genes)
        # What this run has evaluated so far (a resumed run's cache also holds what comes later).
        evaluated = {tuple(r["genes"]): r["objectives"] for r in self.records}
        rows = []
        for i, g in enumerate(genes):
            key = tuple(int(v) for v in g)
            known = evaluated.get(key)
            row = {}
            for o in self.objectives:
                if known is not None:
                    row[o.name] = known[o.name]
                elif o.expensive:
                    row[o.name] = float(predicted[o.name][i])
                else:
                    row[o.name] = o.measure(self.space.decode(key)).value
            rows.append(row)
        return to_minimisation(pd.DataFrame(rows), self.specs)

    def _full_records(self) -> list[Mapping[str, Any]]:
        return [r for r in self.records if not r.get(PARTIAL)]

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
        races = self._race_plans(todo)
        # Backends written before racing take only the configs: pass plans only when racing.
        extra = {} if races is None else {"races": races, "on_chunk": self._chunk_logger(todo)}
        for index, values, seconds in self.backend.evaluate(configs, **extra):
            key, source = todo[index]
            self._record(ids[key], key, configs[index], values, seconds, generation, source)
        return len(new) <= room

    def _race_plans(self, todo: Sequence[tuple[tuple[int, ...], str]]) -> list[RacePlan | None] | None:
        """A plan per new config when racing (None for the max, min and heuristic configs, which run in full)."""
        if self.raced is None:
            return None
        front = tuple(self._front_points())
        plan = RacePlan(self.raced.name, stops_for(self.raced.n_items, self.settings.chunks()), self.settings.race_z,
                        {o.name: o.direction for o in self.objectives}, front)
        return [None if _is_reference(source) or not front else plan for _, source in todo]

    def _front_points(self) -> list[FrontPoint]:
        """The current front's points (full, feasible evaluations) with their item scores."""
        full = [r for r in self._full_records() if r.get(ITEM_SCORES, {}).get(self.raced.name)]
        if not full or self.specs is None:
            return []
        table = results_table(full, self.specs)
        ids = set(table.loc[table["is_pareto"], "eval_id"].astype(int))
        return [FrontPoint(int(r["eval_id"]), {o.name: r["objectives"][o.name] for o in self.objectives},
                           tuple(r[ITEM_SCORES][self.raced.name])) for r in full if int(r["eval_id"]) in ids]

    def _chunk_logger(self, todo: Sequence[tuple[tuple[int, ...], str]]) -> Callable[[int, int, Measurement], None] | None:
        """Append each finished chunk of a raced evaluation to the log (a resume continues after it)."""
        if self.raced is None or self.rundir is None:
            return None

        def log_chunk(index: int, k: int, m: Measurement) -> None:
            self.rundir.append({"type": CHUNK, "genes": list(todo[index][0]), "objective": self.raced.name,
                                "items": [int(v) if float(v).is_integer() else float(v) for v in m.items]})

        return log_chunk

    def _next_id(self) -> int:
        """The eval id of the next distinct config: the count so far (the largest id + 1 in a shared study)."""
        if getattr(self.strategy, "shared", False):
            return max((r["eval_id"] for r in self.cache.values()), default=-1) + 1
        return self.evaluated

    def _record(self, eval_id, key, config, values, seconds, generation, source) -> None:
        values = dict(values)
        lifted = {k: values.pop(k) for k in RECORD_KEYS if k in values}
        violations = {str(c): c.violation(values[c.metric]) for c in self.constraints}
        record = {
            "eval_id": eval_id,
            "genes": list(key),
            "config": config,
            "objectives": values,
            "constraints": violations,
            "feasible": all(v <= 0 for v in violations.values()),
            "generation": generation,
            "source": source,
            "seconds": round(seconds, 6),
            ITEM_FORWARDS: int(lifted.get(ITEM_FORWARDS, 0)),
            PARTIAL: bool(lifted.get(PARTIAL, False)),
            **{k: v for k, v in lifted.items() if k not in (ITEM_FORWARDS, PARTIAL)},
        }
        self.cache[key] = record
        self.records.append(record)
        self.evaluated += 1
        if self.rundir is not None:
            self.rundir.append(record)
        self._progress(record)

    def _progress(self, record: Mapping[str, Any]) -> None:
        """One line per finished evaluation: to progress.log, and to ``progress`` when given."""
        if self.rundir is None and self.progress is None:
            return
        values = record["objectives"]
        parts = []
        for o in self.objectives:
            value, stderr, items = values[o.name], values.get(f"{o.name}_stderr"), values.get(f"{o.name}_items")
            text = f"{o.name} {value / 1e9:.4g} GMACs" if o.unit.startswith("MACs") else f"{o.name} {value:.4g}"
            text += f" ± {stderr:.3f}" if stderr is not None else ""
            text += f" ({items} items)" if items is not None else ""
            parts.append(text)
        stopped = f", stopped early (beaten by evaluation {record.get('dominated_by')})" if record.get(PARTIAL) else ""
        # numbered by eval_id, as results.csv, the summary, the report and --pick 'row N' number them
        line = (f"evaluation {record['eval_id']} [{self.evaluated}/{self.settings.budget}]: {', '.join(parts)}{stopped}; "
                f"{record['seconds']:.1f} s, {time.perf_counter() - self.start_time:.0f} s in all")
        if self.rundir is not None:
            self.rundir.progress(line)
        if self.progress is not None:
            self.progress(line)

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
        forwards = int(table[ITEM_FORWARDS].sum()) if ITEM_FORWARDS in table else 0
        items = f" | items {forwards:,}" if forwards else ""
        stopped = int(table[PARTIAL].sum()) if PARTIAL in table else 0
        raced = f" ({stopped} stopped early)" if self.raced is not None else ""
        self.log(
            f"gen {generation:>3} | evals {self.evaluated}/{self.settings.budget}{raced} | front {len(front)} | "
            f"HV {hv:.4f}{best}{items} | {time.perf_counter() - self.start_time:.1f} s"
        )
        if self.rundir is not None:
            self.rundir.write_tables(table, hypervolume_curve(table, self.specs, by="generation"))

    def _finish(self) -> SearchResult:
        if self.specs is None:
            self._fix_bounds()  # a search that ended before a whole batch
        table = self.table()
        if self.rundir is not None:
            self.rundir.write_tables(table, hypervolume_curve(table, self.specs, by="generation"))
        document = self._run_document(self.run_info)
        timings = {"seconds": time.perf_counter() - self.start_time}
        if self.surrogate is not None:
            timings.update(surrogate_seconds=self.surrogate.seconds, surrogate_fits=self.surrogate.fits)
        return SearchResult(table=table, specs=self.specs, settings=document["search"], info=document["run"],
                            path=self.rundir.path if self.rundir else None, timings=timings,
                            item_scores=item_scores_of(self.records))


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
        progress: called with one line per finished evaluation (a run directory's progress.log gets
            them anyway).
        optuna_storage: a study shared with other search processes (tpe, optuna-nsga2).
        fingerprints: hashes of what the results depend on (``{"adapter": ..., "task": ...}``),
            stored in run.yaml; a resume whose fingerprints differ is refused.
        force: resume even when a fingerprint other than the space's differs (recorded in run.yaml).
    """
    return SearchEngine(space, objectives, settings or SearchSettings(), **kwargs).run()


def _is_reference(source: str) -> bool:
    return any(label in str(source).split("+") for label in ("max", "min", "heuristic"))
