"""A finished (or interrupted) search, read back for plots and reports.

`load_run` reads a run directory (see `lorasearch.search.rundir`): ``run.yaml`` for the settings
and the fixed objective bounds, ``results.csv`` for the evaluations, or ``evaluations.jsonl`` when
the table is missing or stale (a run killed between generations has logged more than it tabled).
`from_result` wraps an in-memory `SearchResult`, so the same plots work in a notebook.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import pandas as pd
import yaml

from .errors import LoraSearchError
from .io import read_jsonl
from .results import ObjectiveSpec, hypervolume_curve, results_table

if TYPE_CHECKING:
    from .search.engine import SearchResult

RUN_FILE = "run.yaml"
LOG_FILE = "evaluations.jsonl"
TABLE_FILE = "results.csv"
REFERENCE_SOURCES = ("max", "heuristic", "min")


@dataclass
class RunData:
    """Everything a plot or a report needs from one search.

    Attributes:
        name: a label for legends (the folder's name, or the strategy for in-memory results).
        table: one row per evaluation (`lorasearch.results.results_table`'s columns).
        specs: the objectives with their fixed normalisation bounds, in search order.
        settings: the ``search`` section of run.yaml (strategy, budget, population, seed, ...).
        info: the ``run`` section of run.yaml (model, task, deployment, seq_len, ...).
        path: the run directory, when there is one.
    """

    name: str
    table: pd.DataFrame
    specs: list[ObjectiveSpec]
    settings: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def strategy(self) -> str:
        """The search strategy (nsga2, random, tpe, ...), or "" when unknown."""
        return str(self.settings.get("strategy", ""))

    @property
    def pareto(self) -> pd.DataFrame:
        """The non-dominated feasible evaluations over all objectives."""
        return self.table[self.table["is_pareto"].astype(bool)]

    @property
    def feasible(self) -> pd.DataFrame:
        """The evaluations that meet every constraint (all of them when there are none)."""
        if "feasible" not in self.table:
            return self.table
        return self.table[self.table["feasible"].astype(bool)]

    def spec(self, name: str) -> ObjectiveSpec:
        """The objective called ``name``; a `LoraSearchError` names the ones there are."""
        for s in self.specs:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self.specs)
        raise LoraSearchError(f"{self.name}: no objective {name!r}; fix: use one of {known}")

    def reference(self, source: str) -> pd.Series | None:
        """The row of the ``max``, ``min`` or ``heuristic`` config, when it was evaluated."""
        rows = self.table[self.table["source"].astype(str).str.split("+").apply(lambda labels: source in labels)]
        return rows.iloc[0] if len(rows) else None

    @property
    def references(self) -> dict[str, pd.Series]:
        """The evaluated reference configs by source: max, heuristic, min (those present)."""
        found = {source: self.reference(source) for source in REFERENCE_SOURCES}
        return {source: row for source, row in found.items() if row is not None}

    def hypervolume_by_evaluation(self, specs: Sequence[ObjectiveSpec] | None = None) -> pd.DataFrame:
        """Hypervolume after each evaluation; equal to ``hypervolume_curve(table, specs, "eval_id")``.

        ``specs`` overrides the run's bounds, so runs compared in one figure share a reference point.
        """
        return running_hypervolume(self.table, list(specs or self.specs))


def running_hypervolume(table: pd.DataFrame, specs: Sequence[ObjectiveSpec]) -> pd.DataFrame:
    """Hypervolume of the first k evaluations for every k, in eval_id order."""
    return hypervolume_curve(table, specs, by="eval_id")


# ------------------------------------------------------------------------------ loading
def load_run(run_dir: str | Path) -> RunData:
    """Read a run directory written by ``lorasearch search --out RUN_DIR``.

    Raises a one-line `LoraSearchError` (the path, what is missing, the fix) when the folder
    holds no search or no finished evaluation yet.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise LoraSearchError(f"{path}: no such run directory; fix: pass the --out folder of a lorasearch search")
    document = _read_run_file(path)
    specs = _read_specs(document, path / RUN_FILE)
    table = _read_table(path, specs)
    return RunData(
        name=path.resolve().name,
        table=table,
        specs=specs,
        settings=dict(document.get("search") or {}),
        info=dict(document.get("run") or {}),
        path=path,
    )


def from_result(result: "SearchResult", name: str | None = None) -> RunData:
    """Wrap an in-memory `SearchResult` (from `run_search`) for plots and reports."""
    settings = asdict(result.settings)
    settings["objectives"] = [s.name for s in result.specs]
    settings["constraints"] = [str(c) for c in result.constraints]
    if result.table.empty:
        raise LoraSearchError(f"{name or settings['strategy']}: the search result holds no evaluation; fix: run a search with a budget")
    return RunData(
        name=name or (result.out_dir.name if result.out_dir else settings["strategy"]),
        table=result.table,
        specs=list(result.specs),
        settings=settings,
        path=result.out_dir,
    )


def as_run(run: "RunData | SearchResult | str | Path") -> RunData:
    """Accept a `RunData`, a `SearchResult` or a run directory's path."""
    if isinstance(run, RunData):
        return run
    if isinstance(run, (str, Path)):
        return load_run(run)
    return from_result(run)


def _read_run_file(path: Path) -> dict[str, Any]:
    run_file = path / RUN_FILE
    if not run_file.is_file():
        raise LoraSearchError(
            f"{path}: not a search run directory ({RUN_FILE} is missing); "
            "fix: pass the --out folder of a lorasearch search"
        )
    try:
        document = yaml.safe_load(run_file.read_text())
    except yaml.YAMLError as exc:
        raise LoraSearchError(f"{run_file}: malformed YAML ({str(exc).splitlines()[0]}); fix the file") from None
    if not isinstance(document, Mapping):
        raise LoraSearchError(f"{run_file}: not a mapping of run/search/bounds; fix: restore the file the search wrote")
    return dict(document)


def _read_specs(document: Mapping[str, Any], run_file: Path) -> list[ObjectiveSpec]:
    bounds = document.get("bounds")
    if not bounds:
        raise LoraSearchError(
            f"{run_file}: bounds: missing (the search stopped before its first evaluation); "
            "fix: run or --resume the search"
        )
    try:
        return [ObjectiveSpec(**b) for b in bounds]
    except TypeError as exc:
        raise LoraSearchError(f"{run_file}: bounds: malformed ({exc}); fix: restore the file the search wrote") from None


def _read_table(path: Path, specs: Sequence[ObjectiveSpec]) -> pd.DataFrame:
    """results.csv when it is complete, else the table rebuilt from evaluations.jsonl."""
    records = list(read_jsonl(path / LOG_FILE))
    csv = path / TABLE_FILE
    table = pd.read_csv(csv) if csv.is_file() and csv.stat().st_size else pd.DataFrame()
    if records and len(table) != len(records):
        table = results_table(records, specs)
    if table.empty:
        raise LoraSearchError(
            f"{path}: no results ({TABLE_FILE} and {LOG_FILE} hold no evaluation); "
            f"fix: run the search (lorasearch search --out {path}) or --resume it"
        )
    missing = [s.name for s in specs if s.name not in table]
    if missing:
        raise LoraSearchError(f"{csv}: objective column {missing[0]!r} is missing; fix: delete it to rebuild it from {LOG_FILE}")
    return table.sort_values("eval_id").reset_index(drop=True)
