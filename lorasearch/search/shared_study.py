"""optuna's distributed mode: several search processes share one study through optuna's storage.

Each ``lorasearch search --strategy tpe --storage URL`` process asks optuna for a population of
trials, evaluates its share and tells the results; every process's sampler sees every process's
trials. The storage is an SQLite file on one machine (``sqlite:///study.db``) or an RDB server
(``postgresql://user:password@host/db``), as optuna documents.

Two processes may be handed the same config, and neither knows the other's budget, so each
trial is settled against the study before it is evaluated. optuna numbers trials atomically, in
the order they are created; the rule, which every process applies to the same data, is:

* the *first claim* of a config is its lowest-numbered trial that has not failed; a WAITING
  (enqueued) trial claims its fixed params, a RUNNING one its params once all are set (a process
  waits the few milliseconds until the lower-numbered trials have theirs);
* a first claim is evaluated when fewer than ``budget`` distinct configs were claimed before it,
  and fails as ``over budget`` otherwise;
* any other trial of the config evaluates nothing: it takes the first claim's values once they
  are told (waiting if another process still runs it).

So no config is evaluated twice, and the processes together stop at the budget. Each process's
run directory logs the configs it evaluated; the study holds them all. A process that crashes
leaves RUNNING trials behind; resuming it (``--resume``) tells them the values its run directory
logged, or fails them, so the study stays exact and other processes stop waiting.
"""

from __future__ import annotations

import hashlib
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import LoraSearchError
from ..space import SearchSpace, space_fingerprint
from .strategies import OptunaStrategy, Proposal, StrategySettings

Logged = Callable[[tuple[int, ...]], "tuple[np.ndarray, np.ndarray | None] | None"]
"""The F and G rows of a config this run directory logged, or None."""
OWNER = "lorasearch_owner"
SIGNATURE = "lorasearch_signature"
SKIPPED = "lorasearch_skipped"
STUDY_NAME = "lorasearch"
PARAMS_WAIT_S = 120.0  # a lower-numbered trial still without params after this is taken as abandoned
VALUES_WAIT_S = 6 * 3600.0  # the longest wait for another process's evaluation of a shared config
POLL_S = 0.05
MAX_EMPTY_ROUNDS = 200
OPEN_ATTEMPTS = 5  # asks in a row that give this process nothing to evaluate


def open_storage(url: str) -> Any:
    """optuna storage for ``url``; SQLite gets a generous lock timeout for concurrent writers."""
    import optuna

    if "://" not in url:
        raise LoraSearchError(f"--storage {url}: not a database URL; fix: e.g. sqlite:///study.db or postgresql://host/db")
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(OPEN_ATTEMPTS):
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine)
            if url.startswith("sqlite"):
                _serialise_sqlite(storage.engine)
            return storage
        except Exception as exc:  # noqa: BLE001 - bad URL, missing driver, unreachable server
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            racing = type(exc).__name__ in ("OperationalError", "IntegrityError")
            if racing and attempt + 1 < OPEN_ATTEMPTS:
                time.sleep(0.2 * (attempt + 1))  # another process is creating the tables: open them next time
                continue
            raise LoraSearchError(f"--storage {url}: cannot open it ({first}); fix: check the URL and the database driver") from None


def _serialise_sqlite(engine: Any) -> None:
    """Make every SQLite transaction take the write lock at BEGIN (SQLAlchemy's pysqlite recipe), in WAL mode.

    optuna pops an enqueued trial by reading it and then marking it RUNNING; SQLite ignores
    ``SELECT ... FOR UPDATE``, so two processes could both pop the same trial without this.
    """
    from sqlalchemy import event

    def connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # pysqlite emits no BEGIN of its own
        # Write-ahead logging: commits without a sync each, readers beside the one writer.
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    def begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    event.listen(engine, "connect", connect)
    event.listen(engine, "begin", begin)
    engine.dispose()  # pooled connections predate the listeners


def owner_name(out_dir: str | Path | None) -> str:
    """This process's tag on its trials: host and run directory (stable across a resume)."""
    where = str(Path(out_dir).resolve()) if out_dir is not None else f"memory-{time.time_ns()}"
    return f"{socket.gethostname()}:{where}"


class SharedOptunaStrategy(OptunaStrategy):
    """An `OptunaStrategy` on a study shared with other processes (see the module docstring).

    ``ask()`` returns only the proposals this process should evaluate, and an empty list once the
    study holds ``budget`` distinct configs.
    """

    shared = True

    def __init__(self, space: SearchSpace, n_obj: int, n_constr: int, settings: StrategySettings, kind: str, *,
                 storage: str, budget: int, owner: str, signature: str, logged: Logged = lambda key: None,
                 study_name: str = STUDY_NAME) -> None:
        # Each process samples with its own seed, or two processes would propose the same configs.
        seed = settings.seed + int(hashlib.sha256(owner.encode()).hexdigest()[:6], 16)
        super().__init__(space, n_obj, n_constr, replace(settings, seed=seed), kind,
                         storage=open_storage(storage), study_name=study_name)
        self.budget, self.owner = budget, owner
        self.keys = [g.key for g in space.genes]
        self._check_signature(signature)
        self._settle_own_running(logged)
        self._held: list[tuple[Any, int]] = []  # (my trial, number of the foreign first claim)

    # ------------------------------------------------------------------- the study
    def _check_signature(self, signature: str) -> None:
        found = self.study.user_attrs.get(SIGNATURE)
        if found is None:
            self.study.set_user_attr(SIGNATURE, signature)
        elif found != signature:
            raise LoraSearchError(
                f"--storage: study {self.study.study_name!r} holds another search (objectives, bounds or space differ); "
                "fix: use a fresh storage, or the same settings as the processes already in it"
            )

    def _settle_own_running(self, logged: Logged) -> None:
        """Tell the trials a crashed earlier run of this process left RUNNING: the values its run
        directory logged for them, or a failure where it logged none."""
        import optuna

        for trial in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if trial.user_attrs.get(OWNER) != self.owner:
                continue
            key = self._claimed_key(trial)
            values = logged(key) if key is not None else None
            if values is None:
                self.study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
                continue
            F, G = values
            live = optuna.trial.Trial(self.study, trial._trial_id)
            if G is not None:
                live.set_user_attr("constraints", [float(v) for v in G])
            self.study.tell(live, [float(v) for v in F])

    def _claimed_key(self, trial: Any) -> tuple[int, ...] | None:
        params = trial.params if len(trial.params) == len(self.keys) else trial.system_attrs.get("fixed_params", {})
        if len(params) != len(self.keys) or any(k not in params for k in self.keys):
            return None
        return tuple(int(params[k]) for k in self.keys)

    def _claims(self, upto: int) -> list[tuple[Any, tuple[int, ...]]]:
        """(trial, config) of every live trial numbered ``<= upto``, once all have their params."""
        import optuna

        dead = (optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED)
        deadline = time.monotonic() + PARAMS_WAIT_S
        while True:
            trials = [t for t in self.study.get_trials(deepcopy=False) if t.number <= upto and t.state not in dead]
            keyed = [(t, self._claimed_key(t)) for t in trials]
            if all(k is not None for _, k in keyed) or time.monotonic() > deadline:
                return sorted(((t, k) for t, k in keyed if k is not None), key=lambda tk: tk[0].number)
            time.sleep(POLL_S)

    def _settle(self, mine: Sequence[Any]) -> dict[int, tuple[str, Any]]:
        """Per trial number of ``mine``: ("evaluate", None), ("copy", first claim), ("wait", its number)
        or ("over", None)."""
        first: dict[tuple[int, ...], Any] = {}
        rank: dict[int, int] = {}
        for trial, key in self._claims(max(t.number for t in mine)):
            if key not in first:
                first[key] = trial
                rank[trial.number] = len(first)
        decisions = {}
        for trial in mine:
            head = first[tuple(int(trial.params[k]) for k in self.keys)]
            if rank[head.number] > self.budget:
                decisions[trial.number] = ("over", None)
            elif head.number == trial.number or head.user_attrs.get(OWNER) == self.owner:
                decisions[trial.number] = ("evaluate", None)  # the engine's cache serves my own repeats
            elif head.state.is_finished():
                decisions[trial.number] = ("copy", head)
            else:
                decisions[trial.number] = ("wait", head.number)
        return decisions

    # ------------------------------------------------------------------ ask / tell
    def ask(self) -> list[Proposal]:
        for _ in range(MAX_EMPTY_ROUNDS):
            proposals = super().ask()
            for trial in self._trials:
                trial.set_user_attr(OWNER, self.owner)
            decisions = self._settle(self._trials)
            keep = [i for i, t in enumerate(self._trials) if decisions[t.number][0] == "evaluate"]
            over = False
            for trial in self._trials:
                action, detail = decisions[trial.number]
                if action == "over":
                    self._skip(trial, "over budget")
                    over = True
                elif action == "copy":
                    self._copy(trial, detail)
                elif action == "wait":
                    self._held.append((trial, detail))
            self._trials = [self._trials[i] for i in keep]
            if keep:
                return [proposals[i] for i in keep]
            self._resolve_held()
            if over:
                return []
        return []

    def tell(self, genes: Sequence[np.ndarray], F: np.ndarray, G: np.ndarray | None) -> None:
        super().tell(genes, F, G)
        self._resolve_held()

    def _resolve_held(self) -> None:
        """Give each held trial the values of the other process's trial of its config, once told."""
        deadline = time.monotonic() + VALUES_WAIT_S
        while self._held:
            done = {t.number: t for t in self.study.get_trials(deepcopy=False) if t.state.is_finished()}
            waiting = []
            for trial, number in self._held:
                if number in done:
                    self._copy(trial, done[number])
                elif time.monotonic() > deadline:
                    self._skip(trial, f"trial {number} never finished")
                else:
                    waiting.append((trial, number))
            self._held = waiting
            if waiting:
                time.sleep(POLL_S * 4)

    def _copy(self, trial: Any, head: Any) -> None:
        import optuna

        if head.state != optuna.trial.TrialState.COMPLETE:
            self._skip(trial, f"trial {head.number} failed")
            return
        if "constraints" in head.user_attrs:
            trial.set_user_attr("constraints", head.user_attrs["constraints"])
        trial.set_user_attr(SKIPPED, f"same config as trial {head.number}")
        self.study.tell(trial, list(head.values))

    def _skip(self, trial: Any, why: str) -> None:
        import optuna

        trial.set_user_attr(SKIPPED, why)
        self.study.tell(trial, state=optuna.trial.TrialState.FAIL)


def study_signature(specs: Sequence[Any], constraints: Sequence[Any], space: SearchSpace) -> str:
    """What processes sharing a study must agree on: objectives, their bounds, constraints, the space."""
    text = repr(([s.to_dict() for s in specs], [str(c) for c in constraints], space_fingerprint(space)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_shareable(strategy: str) -> None:
    """Only optuna's strategies can share a study."""
    if strategy not in ("tpe", "optuna-nsga2"):
        raise LoraSearchError(f"--storage: the {strategy} strategy cannot share a study; fix: use --strategy tpe or optuna-nsga2")


def shared_strategy(name: str, space: SearchSpace, n_obj: int, n_constr: int, settings: StrategySettings, *,
                    storage: str, budget: int, owner: str, signature: str, logged: Logged) -> SharedOptunaStrategy:
    """The shared-study strategy for ``tpe`` or ``optuna-nsga2``."""
    check_shareable(name)
    kind = "tpe" if name == "tpe" else "nsga2"
    return SharedOptunaStrategy(space, n_obj, n_constr, settings, kind, storage=storage, budget=budget, owner=owner,
                                signature=signature, logged=logged)
