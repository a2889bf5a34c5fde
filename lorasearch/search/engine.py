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
* a surrogate: NSGA-II and random search propose several times the population, and only those
  the surrogate (with the exact costs) ranks best are scored. Two models:
  a ridge regression of the expensive objectives refitted on the full evaluations
  (`lorasearch.search.surrogate`), or the decomposed model (`lorasearch.search.decomposed`): every
  single-gene deviation of the max config probed on a few items before the first generation, an
  additive model of the item-wise objective that seeds the first population with its predicted
  front and screens offspring only while its rank correlation on held-out configs clears a bar.
  The probes are logged as they finish (``"type": "probe"``), so a resume probes nothing twice.

Every evaluation records the validation items it ran through the model (``item_forwards``), the
search's real cost; the first evaluation after the probes also records theirs (``probe_forwards``).
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
from .callbacks import SearchCallback
from .bounds import borrowed_specs, derive_specs, needs_references
from .decomposed import DecomposedModel, deviation_costs, seed_genes, worth_probing
from .objectives import (
    ITEM_FORWARDS,
    ITEM_SCORES,
    PARTIAL,
    PROBE_FORWARDS,
    RECORD_KEYS,
    Constraint,
    Measurement,
    Objective,
    as_measurement,
)
from .racing import (
    DEFAULT_ALPHA,
    DEFAULT_CHUNKS,
    DEFAULT_MIN_DISCORDANT,
    FrontPoint,
    RacePlan,
    raced_objective,
    stops_for,
)
from .rundir import CHUNK, PROBE, RunDirectory
from .strategies import STRATEGIES, StrategySettings, make_strategy, reference_genes
from .surrogate import Surrogate, screen

MAX_IDLE_BATCHES = 50  # batches in a row that bring no new config end the search
SURROGATE_MODELS = ("ridge", "decomposed")
RETIRED_SETTINGS = ("race_z",)  # in run files of earlier versions; read and ignored


@dataclass
class SearchSettings(StrategySettings):
    """A search's settings: the strategy, the evaluation budget and the strategy's options."""

    strategy: str = "nsga2"
    """nsga2, random, tpe, optuna-nsga2 or exhaustive."""
    budget: int = 100
    """Distinct configs evaluated (cached repeats are free)."""
    racing: bool = False
    """Score each candidate chunk by chunk and stop it once a front point of no higher cost is better by an
    exact paired sign test, corrected over rivals and looks (the max, min and heuristic configs run in full)."""
    race_chunks: str = "0.25,0.5,1"
    """Racing: the chunks, as shares (or counts) of the validation items, comma-separated."""
    race_alpha: float = DEFAULT_ALPHA
    """Racing: the chance of stopping a candidate as good as its rivals, over every look and rival."""
    race_min_discordant: int = DEFAULT_MIN_DISCORDANT
    """Racing: items on which a rival and the candidate disagree before that rival can stop it."""
    surrogate: bool = False
    """Propose --surrogate-oversample times the population (NSGA-II, random) and evaluate only those the
    surrogate (--surrogate-model), with the exact costs, ranks best."""
    surrogate_model: str = "ridge"
    """ridge (refitted on the full evaluations) or decomposed (each single-gene deviation of the max config
    scored on --surrogate-items items, an additive model; it seeds the first population, and screens while
    its rank correlation on held-out configs is at least --surrogate-min-rho)."""
    surrogate_oversample: int = 5
    """Surrogate: candidates proposed per config evaluated."""
    surrogate_items: int = 8
    """Decomposed surrogate: validation items each single-gene deviation is scored on."""
    surrogate_min_rho: float = 0.5
    """Decomposed surrogate: screen offspring only while its rank correlation with the measured score on
    held-out configs is at least this (over 8 configs or more)."""
    surrogate_seeds: bool = True
    """Decomposed surrogate: fill the first population, after the max, min and heuristic configs, with
    its predicted front at evenly spaced costs."""
    surrogate_learn: bool = False
    """Decomposed surrogate: after every generation, also update its effects from the configs evaluated in
    full (Bayesian linear regression, the probes as the prior; LINAS-style)."""
    bounds_from: str | None = None
    """A run directory whose stored hypervolume bounds this run takes, so the two compare over one
    reference point (default: derived from this run's max and min configs)."""

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
        if not 0 < self.race_alpha < 1:
            raise LoraSearchError(f"--race-alpha {self.race_alpha}: must be between 0 and 1; fix: e.g. 0.05")
        if self.race_min_discordant < 1:
            raise LoraSearchError(f"--race-min-discordant {self.race_min_discordant}: must be 1 or more; fix: e.g. 8")
        if self.surrogate and self.strategy not in ("nsga2", "random"):
            raise LoraSearchError(f"--surrogate: the {self.strategy} strategy proposes one config at a time; "
                                  "fix: use --strategy nsga2 or random with it")
        if self.surrogate_model not in SURROGATE_MODELS:
            raise LoraSearchError(f"--surrogate-model {self.surrogate_model!r}: unknown; fix: use ridge or decomposed")
        if self.surrogate_oversample < 2:
            raise LoraSearchError(f"--surrogate-oversample {self.surrogate_oversample}: must be 2 or more; fix: e.g. 5")
        if self.surrogate_items < 1:
            raise LoraSearchError(f"--surrogate-items {self.surrogate_items}: must be 1 or more; fix: e.g. 8")
        if not -1 <= self.surrogate_min_rho <= 1:
            raise LoraSearchError(f"--surrogate-min-rho {self.surrogate_min_rho}: a correlation is in [-1, 1]; fix: e.g. 0.5")

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
        callback: SearchCallback | None = None,
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
        self.callback = callback or SearchCallback()
        self.rundir = RunDirectory(out_dir) if out_dir is not None else None
        self.records: list[dict[str, Any]] = []
        self.cache: dict[tuple[int, ...], dict[str, Any]] = {}
        self._replay: set[tuple[int, ...]] = set()
        self.run_info = dict(run_info or {})
        self.raced = raced_objective(self.objectives) if settings.racing else None
        decomposed = settings.surrogate and settings.surrogate_model == "decomposed"
        self.surrogate = Surrogate(space) if settings.surrogate and not decomposed else None
        self.modelled = _modelled_objective(self.objectives) if decomposed else None
        self.decomposed: DecomposedModel | None = None
        self.probes: dict[tuple[int, ...], dict[str, Any]] = {}  # logged probes, by genes
        self._probe_pending = 0  # probe forwards not yet recorded on an evaluation
        self._predicted: dict[tuple[int, ...], float] = {}  # S of a config before it was measured
        self.screened = 0  # batches a surrogate screened
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
        if self.specs is None and self.settings.bounds_from:
            self.specs = borrowed_specs(self.settings.bounds_from, self.objectives)
            if self.rundir is not None:
                self.rundir.update_run({"bounds": [s.to_dict() for s in self.specs]})
        for record in previous:
            if record.get("type") == CHUNK:
                self._restore_chunk(record)
            elif record.get("type") == PROBE:
                self.probes[tuple(record["genes"])] = record
            else:
                self.cache[tuple(record["genes"])] = record
        self._replay = {tuple(r["genes"]) for r in previous if r.get("type") not in (CHUNK, PROBE)}
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
        if self.modelled is not None:
            # the reference configs first, so the front has its ends while the probes run
            self._evaluate(reference_genes(self.space), generation)
            if self.specs is None:
                self._fix_bounds()
            self._build_decomposed()
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
            self._update_decomposed()
            self._report(generation)
            generation += 1

    def _ask(self) -> list[tuple[np.ndarray, str]]:
        """The strategy's next batch; with a surrogate, the best-predicted of several times as many."""
        if not self._screening():
            return self.strategy.ask()
        candidates = self.strategy.ask_many(self.settings.surrogate_oversample * self.settings.population)
        if len(candidates) <= self.settings.population:
            return candidates
        kept = screen(self._predicted_F([g for g, _ in candidates]), self.settings.population)
        self.strategy.keep(kept)
        self.screened += 1
        return [candidates[i] for i in kept]

    def _screening(self) -> bool:
        """Whether this batch is screened: a ridge surrogate once a population is evaluated in full, the
        decomposed one while its held-out rank correlation clears the bar."""
        if self.specs is None:
            return False
        if self.decomposed is not None:
            return self.decomposed.trusted()
        return self.surrogate is not None and len(self._full_records()) >= self.settings.population

    def _predict(self, genes: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """The surrogate's prediction of each expensive objective for the candidates."""
        if self.decomposed is not None:
            return {self.modelled.name: self.decomposed.predict(genes)}
        full = self._full_records()
        expensive = [o.name for o in self.objectives if o.expensive]
        self.surrogate.fit([r["genes"] for r in full], {n: [r["objectives"][n] for r in full] for n in expensive})
        return self.surrogate.predict(genes)

    def _predicted_F(self, genes: Sequence[np.ndarray]) -> np.ndarray:
        """Normalised minimisation objectives of candidates: predicted where expensive, else measured."""
        predicted = self._predict(genes)
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

    # ---------------------------------------------------------------- decomposed surrogate
    def _build_decomposed(self) -> None:
        """Probe every single-gene deviation of the max config that changes a cost (logged ones are not
        probed again), fit the additive model, store it, and seed the first population with its
        predicted front."""
        start = time.perf_counter()
        objective, k = self.modelled, min(self.settings.surrogate_items, self.modelled.n_items)
        cheap = [o for o in self.objectives if not o.expensive]
        costs = deviation_costs(self.space, cheap)
        probes = worth_probing(costs)
        for i, key in enumerate(todo := [key for key in probes if key not in self.probes]):
            m = as_measurement((objective.proxy or objective.partial)(self.space.decode(key), k))
            self.probes[key] = {"type": PROBE, "genes": list(key), "objective": objective.name,
                                "items": list(m.items[:k]), "forwards": int(m.scored)}
            if self.rundir is not None:
                self.rundir.append(self.probes[key])
            if (i + 1) % 20 == 0:
                self.callback.on_progress(f"surrogate probes: {len(probes) - len(todo) + i + 1} of {len(probes)}")
        self.decomposed = DecomposedModel.fit(
            self.space, objective.name, objective.direction, {key: self.probes[key]["items"] for key in probes},
            costs, proxy=objective.proxy is not None, min_rho=self.settings.surrogate_min_rho)
        self.decomposed.check_costs(self.space, cheap)
        references = [tuple(int(v) for v in g) for g, _ in reference_genes(self.space)]
        self._note_predictions([key for key in references if key not in self.probes])  # measured before the model
        spent = sum(int(self.probes[key]["forwards"]) for key in probes)
        self._probe_pending = spent - sum(int(r.get(PROBE_FORWARDS, 0)) for r in self.cache.values())
        if self.settings.surrogate_seeds and cheap:
            low, high = sorted(cheap[0].measure(getattr(self.space, which)()).value for which in ("min", "max"))
            seeds = seed_genes(self.decomposed, cheap[0].name, low, high, self.settings.population - len(references),
                               exclude=references)
            self.strategy = make_strategy(self.settings.strategy, self.space, len(self.objectives),
                                          len(self.constraints), self.settings,
                                          initial=[(np.asarray(g), "surrogate") for g in seeds])
        self._save_decomposed()
        self._fit_seconds = time.perf_counter() - start
        self.callback.on_message(f"surrogate: {len(probes) - 1} probes of {len(costs) - 1} single-gene deviations (those that "
                 f"change a cost) on {k} items, {spent:,} item forwards, {'proxy' if objective.proxy else 'item'} scores")

    def _update_decomposed(self) -> None:
        """Update the decomposed model from the full evaluations so far (calibration, and with
        --surrogate-learn its effects) and store it."""
        if self.decomposed is None:
            return
        name = self.modelled.name
        full = [r for r in self._full_records() if name in r["objectives"]]
        keys = [tuple(r["genes"]) for r in full]
        self.decomposed.update(keys, [r["objectives"][name] for r in full],
                               [r["objectives"].get(f"{name}_stderr", float("nan")) for r in full],
                               [None if key in self.probes else self._predicted[key] for key in keys],
                               learn=self.settings.surrogate_learn)
        self._save_decomposed()

    def _note_predictions(self, keys: Sequence[tuple[int, ...]]) -> None:
        """S of each config as the model stands before it is measured (the held-out check compares it
        with the measurement). Evaluations replayed on resume pass here at the same model state."""
        if self.decomposed is not None:
            for key in keys:
                self._predicted.setdefault(key, self.decomposed.score(key))

    def _save_decomposed(self) -> None:
        if self.rundir is not None:
            self.rundir.save_surrogate(self.decomposed.to_dict())

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
        self._note_predictions([k for k in order if k in counted])
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
        plan = RacePlan(self.raced.name, stops_for(self.raced.n_items, self.settings.chunks()), self.settings.race_alpha,
                        self.settings.race_min_discordant, {o.name: o.direction for o in self.objectives}, front)
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
        if self._probe_pending:
            record[PROBE_FORWARDS], self._probe_pending = self._probe_pending, 0
        self.cache[key] = record
        self.records.append(record)
        self.evaluated += 1
        if self.rundir is not None:
            self.rundir.append(record)
        self._progress(record)

    def _progress(self, record: Mapping[str, Any]) -> None:
        """One line per finished evaluation: to progress.log and to the callback."""
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
        self.callback.on_evaluation(record, line)

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
        if PROBE_FORWARDS in table:
            forwards += int(table[PROBE_FORWARDS].fillna(0).sum())
        items = f" | items {forwards:,}" if forwards else ""
        stopped = int(table[PARTIAL].sum()) if PARTIAL in table else 0
        raced = f" ({stopped} stopped early)" if self.raced is not None else ""
        self.callback.on_message(
            f"gen {generation:>3} | evals {self.evaluated}/{self.settings.budget}{raced} | front {len(front)} | "
            f"HV {hv:.4f}{best}{items}{self._surrogate_note()} | {time.perf_counter() - self.start_time:.1f} s"
        )
        if self.rundir is not None:
            self.rundir.write_tables(table, hypervolume_curve(table, self.specs, by="generation"))

    def _surrogate_note(self) -> str:
        if self.decomposed is None:
            return ""
        rho = self.decomposed.held_out_rho()
        state = "screening" if self.decomposed.trusted() else "not screening"
        return f" | surrogate rho {rho:.2f} on {len(self.decomposed.checks)} ({state})" if rho == rho else ""

    def _finish(self) -> SearchResult:
        if self.specs is None:
            self._fix_bounds()  # a search that ended before a whole batch
        table = self.table()
        if self.rundir is not None:
            self.rundir.write_tables(table, hypervolume_curve(table, self.specs, by="generation"))
        document = self._run_document(self.run_info)
        timings = {"seconds": time.perf_counter() - self.start_time}
        if self.surrogate is not None or self.decomposed is not None:
            timings.update(surrogate_screened=self.screened)
        if self.surrogate is not None:
            timings.update(surrogate_seconds=self.surrogate.seconds, surrogate_fits=self.surrogate.fits)
        if self.decomposed is not None:
            rho = self.decomposed.held_out_rho()
            timings.update(surrogate_seconds=getattr(self, "_fit_seconds", 0.0), surrogate_rho=rho,
                           surrogate_checks=len(self.decomposed.checks))
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
        callback: a `SearchCallback` told of each generation, evaluation and step of long work
            (default: silent; `PrintLines` prints; a run directory's progress.log gets every
            evaluation's line anyway).
        optuna_storage: a study shared with other search processes (tpe, optuna-nsga2).
        fingerprints: hashes of what the results depend on (``{"adapter": ..., "task": ...}``),
            stored in run.yaml; a resume whose fingerprints differ is refused.
        force: resume even when a fingerprint other than the space's differs (recorded in run.yaml).
    """
    return SearchEngine(space, objectives, settings or SearchSettings(), **kwargs).run()


def _modelled_objective(objectives: Sequence[Objective]) -> Objective:
    """The one expensive objective a decomposed surrogate models: it must score items."""
    expensive = [o for o in objectives if o.expensive]
    if len(expensive) != 1 or (expensive[0].partial is None and expensive[0].proxy is None) or not expensive[0].n_items:
        raise LoraSearchError(
            "--surrogate-model decomposed: it models one expensive objective with item-wise scores (accuracy), "
            f"found {', '.join(o.name for o in expensive) or 'none'}; fix: use --surrogate-model ridge"
        )
    if all(o.expensive for o in objectives):
        raise LoraSearchError("--surrogate-model decomposed: no cheap objective (MACs, params) to spread its seeds "
                              "over; fix: add one, or use --surrogate-model ridge")
    return expensive[0]


def _is_reference(source: str) -> bool:
    return any(label in str(source).split("+") for label in ("max", "min", "heuristic"))
