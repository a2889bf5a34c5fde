"""A search over a super-network: the one-call `search_network`, `SearchRun`, a search from the
plain settings ``run.yaml`` stores (build, search, resume), and `pick_under_budget`, the best
subnet under a cost budget from a run's decomposed surrogate, with no new evaluation."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..errors import LoraSearchError
from ..evaluate.evaluators import Evaluator
from ..fingerprints import evaluator_fingerprint, model_fingerprint, records_fingerprint
from ..io import FolderLock
from ..network.supernet import SuperNetwork
from ..results.pick import config_of, parse_amount
from ..results.run import SearchResult, load_run, read_run_document
from ..search.backends import BackendSettings, EvaluationBackend, make_backend
from ..search.decomposed import DecomposedModel
from ..search.engine import RETIRED_SETTINGS, SearchSettings, run_search
from ..search.objectives import Constraint, Objective
from ..search.shared_study import check_shareable
from ..search.workers import WorkerSetup
from .network_objectives import network_objectives
from .settings import (
    NetworkSettings,
    TaskSettings,
    absolute_paths,
    build_evaluator,
    build_network,
    load_task,
    settings_dict,
    settings_from_dict,
)


def search_network(
    net: SuperNetwork,
    evaluator: Evaluator | None,
    *,
    objectives: Sequence[str] = ("accuracy", "macs"),
    constraints: Sequence[str | Constraint] = (),
    settings: SearchSettings | None = None,
    seq_len: int = 128,
    deployment: str = "unmerged",
    cost_reference: str = "fvcore",
    extra_objectives: Mapping[str, Objective] | None = None,
    out_dir: str | Path | None = None,
    run_info: Mapping[str, Any] | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = print,
    backend: EvaluationBackend | None = None,
    **engine_kw: Any,
) -> SearchResult:
    """Search a `SuperNetwork`'s space on accuracy (from ``evaluator``) and cost objectives.

    Args:
        net: the super-network (its space is the search space).
        evaluator: ``config -> EvalResult`` (e.g. `lorasearch.evaluate.MultipleChoiceEvaluator`).
        objectives: registered names (accuracy, macs, macs_merged, macs_unmerged, params, latency,
            macs_effective; see `lorasearch.runs.network_objectives`) or names from ``extra_objectives``.
        constraints: e.g. ``"macs<=2.5e8"``; the metric is measured even if it is no objective.
        settings: strategy, budget, population, seed, operators.
        seq_len, deployment: what the MAC objective models (tokens per sequence; merged or unmerged).
        cost_reference: ``fvcore`` (one trace checks the closed form) or ``analytic``.
        extra_objectives: user objectives by name (any callable ``config -> float``).
        out_dir, run_info, resume, log: see `lorasearch.search.run_search`.
        backend: an `EvaluationBackend` (default: evaluate here); ``ProcessBackend`` and
            ``RayBackend`` evaluate on workers that rebuild the network from a `NetworkRecipe`.
        engine_kw: e.g. ``optuna_storage`` (a study shared with other processes).
    """
    chosen, metrics, parsed = network_objectives(
        net, evaluator, objectives, constraints, seq_len=seq_len, deployment=deployment,
        cost_reference=cost_reference, extra_objectives=dict(extra_objectives or {}),
    )
    info = {"seq_len": seq_len, "deployment": deployment, **dict(run_info or {})}
    return run_search(
        net.space, chosen, settings or SearchSettings(), constraints=parsed, metrics=metrics,
        out_dir=out_dir, run_info=info, resume=resume, log=log, backend=backend, **engine_kw,
    )


@dataclass
class NetworkRecipe:
    """What a parallel worker needs to rebuild a search's objectives: picklable plain settings.

    Calling it builds the super-network and the evaluator as the driver did, moves the model to
    the worker's GPU when it has one, and returns the objectives with the network's fingerprint.
    """

    network: NetworkSettings
    task: TaskSettings
    objectives: list[str]
    constraints: list[str]
    seq_len: int = 128
    deployment: str = "unmerged"

    def __call__(self) -> WorkerSetup:
        net = build_network(self.network)
        evaluator = build_evaluator(net, self.task)
        chosen, metrics, _ = network_objectives(net, evaluator, self.objectives, self.constraints,
                                                seq_len=self.seq_len, deployment=self.deployment)
        return WorkerSetup(chosen + metrics, net.fingerprint())


@dataclass
class SearchRun:
    """Everything that defines a search over a super-network (what ``run.yaml`` stores)."""

    network: NetworkSettings
    task: TaskSettings
    settings: SearchSettings
    objectives: list[str] = field(default_factory=lambda: ["accuracy", "macs"])
    constraints: list[str] = field(default_factory=list)
    seq_len: int = 128
    deployment: str = "unmerged"
    storage: str | None = None
    """An optuna storage URL shared with other search processes (tpe and optuna-nsga2 only)."""

    def recipe(self) -> NetworkRecipe:
        """The workers' recipe, with file paths made absolute (workers may start elsewhere) and the
        device left to each worker: the one GPU it sees, else the CPU (unless the run says cpu)."""
        network, task = absolute_paths(self.network, self.task)
        network = replace(network, device="cpu" if network.device == "cpu" else "auto")
        return NetworkRecipe(network, task, list(self.objectives), list(self.constraints),
                             self.seq_len, self.deployment)

    def run_info(self) -> dict[str, Any]:
        """The ``run`` section of run.yaml: the settings a resume must find unchanged."""
        info = {"network": settings_dict(self.network), "task": settings_dict(self.task)}
        if self.storage:
            info["storage"] = self.storage
        return info

    def fingerprints(self, network: str, evaluator: Evaluator, records: Sequence[Any]) -> dict[str, str | None]:
        """What the results depend on (see `lorasearch.fingerprints`); a resume must find it unchanged.

        ``network`` is `SuperNetwork.fingerprint` (the space and every adapter tensor).
        """
        return {
            "adapter": network,
            "model": model_fingerprint(self.network.model, self.network.gguf_file),
            "task": records_fingerprint(records),
            "evaluator": evaluator_fingerprint(evaluator),
        }

    def run(self, out: str | Path, *, resume: bool = False, log: Callable[[str], None] | None = print,
            backend: BackendSettings | None = None, progress: Callable[[str], None] | None = None,
            force: bool = False) -> tuple[SearchResult, SuperNetwork]:
        """Build the network and evaluator, then search into ``out``; returns (result, network).

        ``backend`` says where evaluations run (default: here); it never changes the results.
        ``log`` gets a line per generation, ``progress`` one per evaluation (``out/progress.log``
        gets them too). ``out`` is locked from before the model loads to the end (a second process
        is refused). ``force`` resumes even when the adapter, model, task or evaluator changed since
        the run began.
        """
        backend = backend or BackendSettings()
        backend.check()
        self.settings.check()
        if self.network.device_map and backend.kind != "local":
            raise LoraSearchError(f"--backend {backend.kind}: a model spread with --device-map takes every GPU; "
                                  "fix: search with the local backend")
        if self.storage:
            check_shareable(self.settings.strategy)
        with FolderLock(out):
            return self._run(out, resume, log, backend, progress, force)

    def _run(self, out: str | Path, resume: bool, log: Callable[[str], None] | None, backend: BackendSettings,
             progress: Callable[[str], None] | None, force: bool) -> tuple[SearchResult, SuperNetwork]:
        net = build_network(self.network)
        records = load_task(self.task)
        evaluator = build_evaluator(net, self.task, records)
        fingerprint = net.fingerprint()
        with contextlib.ExitStack() as stack:
            workers = None
            if backend.kind != "local":  # the local backend is the engine's default
                parallel = make_backend(backend, recipe=self.recipe(), fingerprint=fingerprint)
                workers = stack.enter_context(parallel)
            result = search_network(
                net, evaluator, objectives=self.objectives, constraints=self.constraints, settings=self.settings,
                seq_len=self.seq_len, deployment=self.deployment, out_dir=out, run_info=self.run_info(),
                resume=resume, log=log, backend=workers, optuna_storage=self.storage, progress=progress,
                fingerprints=self.fingerprints(fingerprint, evaluator, records), force=force,
            )
        return result, net


def run_from_file(path: str | Path) -> SearchRun:
    """Read a run.yaml (a run directory's, or one written by hand in the same shape)."""
    path = Path(path)
    document = read_run_document(path)
    run, search = document.get("run") or {}, dict(document.get("search") or {})
    for retired in RETIRED_SETTINGS:  # settings of earlier versions that no longer exist
        search.pop(retired, None)
    objectives = list(search.pop("objectives", ["accuracy", "macs"]))
    constraints = list(search.pop("constraints", []))
    if not isinstance(run, Mapping):
        raise LoraSearchError(f"{path}: run: must be a mapping; fix: compare with a run.yaml that lorasearch wrote")
    return SearchRun(
        network=settings_from_dict(NetworkSettings, run.get("network"), f"{path}: run.network"),
        task=settings_from_dict(TaskSettings, run.get("task"), f"{path}: run.task"),
        settings=settings_from_dict(SearchSettings, search, f"{path}: search"),
        objectives=objectives,
        constraints=constraints,
        seq_len=int(run.get("seq_len", 128)),
        deployment=str(run.get("deployment", "unmerged")),
        storage=run.get("storage"),
    )


# ------------------------------------------------------------------------ picking by surrogate
@dataclass
class BudgetPick:
    """The best subnet under a cost budget: the surrogate's prediction beside the run's measurements.

    ``predicted`` and ``measured`` each hold ``config``, ``genes``, ``cost``, ``predicted`` (the
    surrogate's value of the objective) and, where the config was evaluated in the run,
    ``measured``, ``stderr`` and ``eval_id``. ``measured`` is None when nothing evaluated fits.
    """

    objective: str
    cost: str
    at_most: float
    predicted: dict[str, Any] | None
    measured: dict[str, Any] | None
    rho: float
    checks: int
    trusted: bool
    additive_cost_error: float


def pick_under_budget(run_dir: str | Path, at_most: str | float, cost: str | None = None) -> BudgetPick:
    """The best predicted subnet of a decomposed-surrogate run under ``cost <= at_most`` (a number or
    ``15G``), found by the run's additive model alone (no item is scored), and the best subnet the
    run measured under the same budget."""
    model = DecomposedModel.load(run_dir)
    run = load_run(run_dir)
    costs = list(model.costs)
    cost = cost or next((c for c in costs if c.startswith("macs")), costs[0] if costs else "macs")
    bound = float(at_most) if isinstance(at_most, (int, float)) else parse_amount(at_most, f"--{cost.replace('_', '-')}-at-most")
    genes = model.best_under(cost, bound)
    measured = _measured_by_genes(run, model.objective)
    predicted = None if genes is None else _described(model, genes, cost, measured.get(genes))
    best = _best_measured(run, model, cost, bound)
    rho = model.held_out_rho()
    return BudgetPick(model.objective, cost, bound, predicted, best, rho, len(model.checks), model.trusted(),
                      float(model.additive_cost_error.get(cost, 0.0)))


def _measured_by_genes(run: SearchResult, objective: str) -> dict[tuple[int, ...], Mapping[str, Any]]:
    table = run.table
    full = table if "partial" not in table else table[~table["partial"].fillna(False).astype(bool)]
    return {tuple(json.loads(g)) if isinstance(g, str) else tuple(g): row for g, (_, row) in zip(full["genes"], full.iterrows())}


def _described(model: DecomposedModel, genes: Sequence[int], cost: str, row: Mapping[str, Any] | None) -> dict[str, Any]:
    out = {"genes": list(genes), "cost": model.cost(genes, cost), "predicted": float(model.predict([genes])[0])}
    if row is not None:
        stderr = row.get(f"{model.objective}_stderr")
        out.update(measured=float(row[model.objective]), eval_id=int(row["eval_id"]), config=config_of(row),
                   stderr=None if stderr is None or stderr != stderr else float(stderr))
    return out


def _best_measured(run: SearchResult, model: DecomposedModel, cost: str, bound: float) -> dict[str, Any] | None:
    rows = [(genes, row) for genes, row in _measured_by_genes(run, model.objective).items()
            if cost in row and float(row[cost]) <= bound and bool(row.get("feasible", True))]
    if not rows:
        return None
    sign = 1.0 if model.direction == "max" else -1.0
    genes, row = max(rows, key=lambda gr: (sign * float(gr[1][model.objective]), -float(gr[1][cost])))
    described = _described(model, genes, cost, row)
    described["cost"] = float(row[cost])
    return described


def write_pick(pick: BudgetPick, run_dir: str | Path, out: str | Path) -> Path:
    """The predicted pick as a ``subnet.json`` (``lorasearch eval --config FILE`` scores it), marked predicted."""
    from ..io import atomic_write_json

    genes = pick.predicted["genes"]
    config = pick.predicted.get("config") or DecomposedModel.load(run_dir).config(genes)
    document = {"config": config, "genes": genes, pick.cost: pick.predicted["cost"],
                f"{pick.objective}_predicted": pick.predicted["predicted"],
                **({f"{pick.objective}_measured": pick.predicted["measured"]} if "measured" in pick.predicted else {}),
                "source": f"lorasearch pick {run_dir} --{pick.cost.replace('_', '-')}-at-most {pick.at_most:g}"}
    path = Path(out)
    atomic_write_json(path, document)
    return path
