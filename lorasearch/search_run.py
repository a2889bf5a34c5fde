"""A search run from plain settings, as ``run.yaml`` stores it: build, search, resume, summarise."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import yaml

from .errors import LoraSearchError
from .search.api import network_objectives, search_network
from .search.backends import BackendSettings, make_backend
from .search.engine import SearchResult, SearchSettings
from .search.shared_study import check_shareable
from .search.workers import WorkerSetup, supernet_fingerprint
from .session import NetworkSettings, TaskSettings, build_evaluator, build_network, settings_dict, space_fingerprint
from .space import SearchSpace


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
        import torch

        net = build_network(self.network)
        evaluator = build_evaluator(net, self.task)
        chosen, metrics, _ = network_objectives(net, evaluator, self.objectives, self.constraints,
                                                seq_len=self.seq_len, deployment=self.deployment)
        if torch.cuda.is_available():
            net.model.to("cuda")
        return WorkerSetup(chosen + metrics, supernet_fingerprint(net))


@dataclass
class SearchRun:
    """Everything that defines a search over a super-network."""

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
        """The workers' recipe, with file paths made absolute (workers may start elsewhere)."""
        net = self.network
        network = replace(net, model=_absolute(net.model), space=_absolute(net.space), adapter=_absolute(net.adapter))
        task = replace(self.task, task=_absolute(self.task.task))
        return NetworkRecipe(network, task, list(self.objectives), list(self.constraints),
                             self.seq_len, self.deployment)

    def run(self, out: str | Path, *, resume: bool = False, log: Callable[[str], None] | None = print,
            backend: BackendSettings | None = None):
        """Build the network and evaluator, then search into ``out``; returns (result, network).

        ``backend`` says where evaluations run (default: here); it never changes the results.
        """
        backend = backend or BackendSettings()
        backend.check()
        self.settings.check()
        if self.storage:
            check_shareable(self.settings.strategy)
        net = build_network(self.network)
        evaluator = build_evaluator(net, self.task)
        run_info = {
            "network": settings_dict(self.network),
            "space_fingerprint": space_fingerprint(net.space),
            "task": settings_dict(self.task),
        }
        if self.storage:
            run_info["storage"] = self.storage
        with contextlib.ExitStack() as stack:
            workers = None
            if backend.kind != "local":  # the local backend is the engine's default
                parallel = make_backend(backend, recipe=self.recipe(), fingerprint=supernet_fingerprint(net))
                workers = stack.enter_context(parallel)
            result = search_network(
                net, evaluator, objectives=self.objectives, constraints=self.constraints, settings=self.settings,
                seq_len=self.seq_len, deployment=self.deployment, out_dir=out, run_info=run_info, resume=resume,
                log=log, backend=workers, optuna_storage=self.storage,
            )
        return result, net


def _absolute(path: str | None) -> str | None:
    """``path`` made absolute when it names an existing file or folder (model names stay as they are)."""
    return str(Path(path).resolve()) if path and Path(path).exists() else path


def run_from_file(path: str | Path) -> SearchRun:
    """Read a run.yaml (a run directory's, or one written by hand in the same shape)."""
    path = Path(path)
    if not path.is_file():
        raise LoraSearchError(f"{path}: not found; fix: point at a run directory's run.yaml")
    data = yaml.safe_load(path.read_text()) or {}
    run, search = data.get("run") or {}, data.get("search") or {}
    try:
        settings = SearchSettings(**{f.name: search[f.name] for f in fields(SearchSettings) if f.name in search})
        return SearchRun(
            network=NetworkSettings(**run.get("network", {})),
            task=TaskSettings(**run.get("task", {})),
            settings=settings,
            objectives=list(search.get("objectives", ["accuracy", "macs"])),
            constraints=list(search.get("constraints", [])),
            seq_len=int(run.get("seq_len", 128)),
            deployment=str(run.get("deployment", "unmerged")),
            storage=run.get("storage"),
        )
    except TypeError as exc:
        raise LoraSearchError(f"{path}: unexpected field ({exc}); fix: compare with a run.yaml that lorasearch wrote") from None


def group_summary(space: SearchSpace, config: dict[str, Any]) -> str:
    """One short text per config: each group's value, or its distinct values when they vary."""
    parts = []
    for group in space.groups:
        values = [config[g.key] for g in space.genes if g.group == group.name]
        distinct = sorted(set(values), key=values.index)
        parts.append(f"{group.name} {'/'.join(map(str, distinct))}")
    return " · ".join(parts)


def summary_table(result: SearchResult, space: SearchSpace) -> pd.DataFrame:
    """The front as a printable table: eval id, objectives (± standard error), config summary."""
    front = result.pareto.sort_values(result.specs[-1].name)
    rows = []
    for _, row in front.iterrows():
        entry: dict[str, Any] = {"eval": int(row["eval_id"])}
        for spec in result.specs:
            value = row[spec.name]
            if spec.unit.startswith("MACs"):
                entry[f"G{spec.name}"] = f"{value / 1e9:.4f}"
            elif f"{spec.name}_stderr" in row and pd.notna(row[f"{spec.name}_stderr"]):
                entry[spec.name] = f"{value:.4f} ± {row[f'{spec.name}_stderr']:.4f}"
            else:
                entry[spec.name] = f"{value:.4g}"
        entry["source"] = row["source"]
        entry["config"] = group_summary(space, json.loads(row["config"]))
        rows.append(entry)
    return pd.DataFrame(rows)
