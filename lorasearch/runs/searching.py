"""A search over a super-network: the one-call `search_network`, `SearchRun`, a search from the
plain settings ``run.yaml`` stores (build, search, resume), and `pick_under_budget`, the best
subnet under a cost budget from a run's decomposed surrogate, with no new evaluation."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..compress.adapter_modes import resolve_mode
from ..cost import REFERENCES
from ..errors import LoraSearchError
from ..evaluate.evaluators import Evaluator
from ..fingerprints import evaluator_fingerprint, model_fingerprint, records_fingerprint
from ..io import FolderLock
from ..models.loading import model_identity, resolved_model_spec
from ..models.preflight import PreflightReport, run_preflight
from ..network.supernet import SuperNetwork
from ..results.pick import config_of, parse_amount
from ..results.run import RUN_FILE, SearchResult, load_run, read_run_document
from ..search.backends import BackendSettings, EvaluationBackend, make_backend
from ..search.callbacks import SearchCallback
from ..search.decomposed import DecomposedModel
from ..search.engine import RETIRED_SETTINGS, SearchSettings, run_search
from ..search.objectives import Constraint, Objective, parse_constraint
from ..search.shared_study import check_shareable
from ..search.workers import WorkerSetup
from .network_objectives import network_objectives
from .settings import (
    PATH_FIELDS,
    RECORDED_IN,
    NetworkSettings,
    TaskSettings,
    absolute_paths,
    build_evaluator,
    build_network,
    load_task,
    located_settings,
    recorded_settings,
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
    cost_reference: str = "analytic",
    extra_objectives: Mapping[str, Objective] | None = None,
    out_dir: str | Path | None = None,
    run_info: Mapping[str, Any] | None = None,
    resume: bool = False,
    callback: SearchCallback | None = None,
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
        cost_reference: ``analytic`` (the closed form from the shapes; the tests hold it equal to fvcore's
            count on every tiny family) or ``fvcore`` (one trace of the full model adds what only fvcore
            counts, such as ops of modules the closed form does not model; a module it counts otherwise
            is a warning).
        extra_objectives: user objectives by name (any callable ``config -> float``).
        out_dir, run_info, resume, callback: see `lorasearch.search.run_search`.
        backend: an `EvaluationBackend` (default: evaluate here); ``ProcessBackend`` and
            ``RayBackend`` evaluate on workers that rebuild the network from a `NetworkRecipe`.
        engine_kw: e.g. ``optuna_storage`` (a study shared with other processes).
    """
    chosen, metrics, parsed = network_objectives(
        net, evaluator, objectives, constraints, seq_len=seq_len, deployment=deployment,
        cost_reference=cost_reference, extra_objectives=dict(extra_objectives or {}),
    )
    info = {"seq_len": seq_len, "deployment": deployment, "cost_reference": cost_reference, **dict(run_info or {})}
    return run_search(
        net.space, chosen, settings or SearchSettings(), constraints=parsed, metrics=metrics,
        out_dir=out_dir, run_info=info, resume=resume, callback=callback, backend=backend, **engine_kw,
    )


def preflight_evaluation(net: SuperNetwork, evaluator: Evaluator) -> PreflightReport | None:
    """The evaluator's largest batch under the max subnet, once, on the network's device (a search's
    preflight); None for a network without weights (a driver's) or an evaluator that batches itself."""
    batch = evaluator.largest_batch() if hasattr(evaluator, "largest_batch") else None
    if net.device.type == "meta" or batch is None:
        return None
    what = f"the largest evaluation batch ({len(batch)} items, {evaluator.batch_tokens(batch)} tokens, max subnet)"
    return run_preflight(what, net.device, lambda: evaluator.run_batch(batch, net.space.max()),
                         "lower --max-batch-tokens or --batch-size, use a smaller --dtype, or another --device")


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
    any_base: bool = False
    cost_reference: str = "analytic"

    def __call__(self) -> WorkerSetup:
        net = build_network(self.network, any_base=self.any_base)
        evaluator = build_evaluator(net, self.task)
        preflight_evaluation(net, evaluator)  # a worker that cannot run the largest batch stops at once
        chosen, metrics, _ = network_objectives(net, evaluator, self.objectives, self.constraints,
                                                seq_len=self.seq_len, deployment=self.deployment,
                                                cost_reference=self.cost_reference)
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
    cost_reference: str = "analytic"
    """analytic (MACs in closed form from the shapes) or fvcore (one fvcore trace of the full model adds
    what only fvcore counts); run files from before this setting resume with fvcore, what they used."""
    storage: str | None = None
    """An optuna storage URL shared with other search processes (tpe and optuna-nsga2 only)."""
    recorded: dict[str, Any] | None = field(default=None, repr=False)
    """The ``run`` section of the run.yaml this run was read from, with ``folder``: its run directory (a
    resume there records the section as it is); None for a run built from settings."""

    def option_values(self, out: str | Path | None = None) -> dict[str, Any]:
        """The run's settings by the names of the ``search`` command's options (``objectives``,
        ``constraint``, ``limit``, ``model``, ``subset_seed``, ...; ``out`` when given)."""
        values = {**settings_dict(self.network), **settings_dict(self.task), **dataclasses.asdict(self.settings),
                  "objectives": list(self.objectives), "constraint": list(self.constraints),
                  "seq_len": self.seq_len, "deployment": self.deployment, "cost_reference": self.cost_reference,
                  "subset_seed": self.task.seed}  # the task's seed; "seed" is the strategy's
        if out is not None:
            values["out"] = str(out)
        return values

    def recipe(self, any_base: bool = False) -> NetworkRecipe:
        """The workers' recipe, with file paths made absolute (workers may start elsewhere) and the
        device left to each worker: the one GPU it sees, else the CPU (unless the run says cpu)."""
        network, task = absolute_paths(self.network, self.task)
        network = replace(network, device="cpu" if network.device == "cpu" else "auto")
        return NetworkRecipe(network, task, list(self.objectives), list(self.constraints),
                             self.seq_len, self.deployment, any_base, self.cost_reference)

    def driver_network(self, backend: BackendSettings, any_base: bool = False) -> SuperNetwork:
        """The network this process builds: the whole one when it evaluates (the local backend); with
        parallel workers only its shapes (the base on the meta device, the adapter on the CPU), which is
        all the driver uses (the costs in closed form, the tokenizer, the fingerprint), unless the
        search needs weights here (`driver_needs_shapes_only`)."""
        if backend.kind == "local" or not self.driver_needs_shapes_only():
            return build_network(self.network, any_base=any_base)
        return build_network(self.network, any_base=any_base, shapes_only=True)

    def driver_needs_shapes_only(self) -> bool:
        """Whether a parallel search's driver can do without the model's weights: not with
        ``--cost-reference fvcore`` (it traces the model), ``macs_effective`` (it counts zeros), a
        SparsePEFT/QA adapter mode (its masks and grids come from the weights) or, in a shared study
        (which fixes its bounds before the first batch, measuring the costs here), ``latency``."""
        metrics = set(self.objectives) | {parse_constraint(c).metric for c in self.constraints}
        weighed = {"macs_effective", "latency"} if self.storage else {"macs_effective"}
        dense = resolve_mode(self.network.adapter_mode, self.network.adapter)[0] == "dense"
        return self.cost_reference == "analytic" and dense and not metrics & weighed

    def run_info(self, out: str | Path | None = None) -> dict[str, Any]:
        """The ``run`` section of run.yaml: the settings a resume must find unchanged. With ``out`` (the
        run directory), paths are recorded relative to it, and where it lies as ``recorded_in``; a
        resume in the folder the run was read from keeps the recorded section as it is."""
        if self.recorded is not None and out is not None and _same_folder(self.recorded["folder"], out):
            info = {k: v for k, v in self.recorded.items() if k in ("network", "task", RECORDED_IN)}
        elif out is not None:
            info = {"network": recorded_settings(self.network, out), "task": recorded_settings(self.task, out),
                    RECORDED_IN: str(Path(out).resolve())}
        else:
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
            "model": model_fingerprint(resolved_model_spec(self.network.model), self.network.gguf_file),
            "task": records_fingerprint(records),
            "evaluator": evaluator_fingerprint(evaluator),
        }

    def run(self, out: str | Path, *, resume: bool = False, callback: SearchCallback | None = None,
            backend: BackendSettings | None = None, force: bool = False,
            built: SuperNetwork | None = None) -> tuple[SearchResult, SuperNetwork]:
        """Build the network and evaluator, then search into ``out``; returns (result, network), the
        network being shapes only (`driver_network`) when a parallel backend did the evaluating.

        ``backend`` says where evaluations run (default: here); it never changes the results.
        ``callback`` (a `SearchCallback`; default silent, `PrintLines` prints) hears of each
        generation and evaluation (``out/progress.log`` gets every evaluation's line too). ``out`` is
        locked from before the model loads to the end (a second process is refused). ``force`` resumes even when the adapter, model, task or evaluator changed since
        the run began, and accepts an adapter trained on another base model than the run's. ``built`` is
        the network these settings build, built already (the quickstart's freshly trained one, whose
        fingerprint equals that of its saved adapter loaded again), so the model is not loaded twice.
        Before the search, the evaluator's largest batch runs once on the device
        (`preflight_evaluation`; each worker does the same), and the callback gets its time and memory.
        """
        backend = backend or BackendSettings()
        backend.check()
        self.settings.check()
        if self.cost_reference not in REFERENCES:
            raise LoraSearchError(f"--cost-reference {self.cost_reference!r}: unknown; fix: use analytic or fvcore")
        if self.network.device_map and backend.kind != "local":
            raise LoraSearchError(f"--backend {backend.kind}: a model spread with --device-map takes every GPU; "
                                  "fix: search with the local backend")
        if self.storage:
            check_shareable(self.settings.strategy)
        with FolderLock(out):
            return self._run(out, resume, callback or SearchCallback(), backend, force, built)

    def _run(self, out: str | Path, resume: bool, callback: SearchCallback, backend: BackendSettings,
             force: bool, built: SuperNetwork | None) -> tuple[SearchResult, SuperNetwork]:
        net = built if built is not None else self.driver_network(backend, any_base=force)
        records = load_task(self.task)
        evaluator = build_evaluator(net, self.task, records)
        report = preflight_evaluation(net, evaluator)
        if report is not None:
            callback.on_message(report.line())
        fingerprint = net.fingerprint()
        with contextlib.ExitStack() as stack:
            workers = None
            if backend.kind != "local":  # the local backend is the engine's default
                parallel = make_backend(backend, recipe=self.recipe(any_base=force), fingerprint=fingerprint)
                workers = stack.enter_context(parallel)
            result = search_network(
                net, evaluator, objectives=self.objectives, constraints=self.constraints, settings=self.settings,
                seq_len=self.seq_len, deployment=self.deployment, cost_reference=self.cost_reference,
                out_dir=out, run_info=self.run_info(out),
                resume=resume, callback=callback, backend=workers, optuna_storage=self.storage,
                fingerprints=self.fingerprints(fingerprint, evaluator, records), force=force,
            )
        return result, net


def run_from_file(path: str | Path) -> SearchRun:
    """Read a run.yaml (a run directory's, or one written by hand in the same shape); its relative paths
    are found from the file's folder (`lorasearch.runs.settings.located_path`)."""
    path = Path(path)
    document = read_run_document(path)
    run, search = document.get("run") or {}, dict(document.get("search") or {})
    for retired in RETIRED_SETTINGS:  # settings of earlier versions that no longer exist
        search.pop(retired, None)
    objectives = list(search.pop("objectives", ["accuracy", "macs"]))
    constraints = list(search.pop("constraints", []))
    if not isinstance(run, Mapping):
        raise LoraSearchError(f"{path}: run: must be a mapping; fix: compare with a run.yaml that lorasearch wrote")
    folder, recorded_in = path.parent, run.get(RECORDED_IN)
    return SearchRun(
        network=settings_from_dict(NetworkSettings, located_settings(run.get("network"), folder, recorded_in),
                                   f"{path}: run.network"),
        task=settings_from_dict(TaskSettings, located_settings(run.get("task"), folder, recorded_in), f"{path}: run.task"),
        settings=settings_from_dict(SearchSettings, search, f"{path}: search"),
        objectives=objectives,
        constraints=constraints,
        seq_len=int(run.get("seq_len", 128)),
        deployment=str(run.get("deployment", "unmerged")),
        cost_reference=str(run.get("cost_reference", "fvcore")),  # what runs from before the setting used
        storage=run.get("storage"),
        recorded={**dict(run), "folder": str(folder)},
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
RESUME_OPTIONS = ("resume", "threads", "force", "backend", "workers", "ray_address", "storage")
"""Options that mean something with ``search --resume`` besides ``--budget``: how to run, not what."""


def resumed_run(run_dir: str | Path, given: Mapping[str, Any]) -> SearchRun:
    """The run in ``run_dir`` for ``search --resume``, with the options given beside ``--resume``
    (by field name: ``budget``, ``limit``, ``model``, ``objectives``, ``out``, ...).

    A larger ``budget`` extends the run (the engine refuses a smaller one); any other option that
    differs from what the run recorded is refused in one line naming it, since a resumed run keeps its
    settings. An option repeated with the recorded value is accepted.
    """
    run_dir = Path(run_dir)
    plan = run_from_file(run_dir / RUN_FILE)
    recorded = plan.option_values(run_dir)
    for name, value in given.items():
        if name == "budget":
            plan.settings.budget = int(value)
            continue
        if name not in recorded:
            raise LoraSearchError(f"--{name.replace('_', '-')}: cannot change on --resume; fix: drop it, or start a "
                                  "new run with --out")
        if not _same_value(name, recorded[name], value):
            raise LoraSearchError(
                f"--{name.replace('_', '-')} {_shown(value)}: the run in {run_dir} has {_shown(recorded[name])}, and a "
                f"resumed run keeps its settings (only --budget may grow); fix: drop --{name.replace('_', '-')}, or "
                "start a new run with another --out"
            )
    return plan


def _same_value(name: str, recorded: Any, given: Any) -> bool:
    if recorded == given:
        return True
    if name == "model":
        return model_identity(str(recorded)) == model_identity(str(given))
    if name in PATH_FIELDS + ("out",) and isinstance(recorded, str) and isinstance(given, str):
        return Path(recorded).exists() and Path(given).exists() and Path(recorded).resolve() == Path(given).resolve()
    return False


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"
    return str(value)


def _same_folder(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()
