"""A search read back: the one reader of a run directory, and the in-memory result of a search.

A run directory (written by `lorasearch.search.rundir.RunDirectory`)::

    run.yaml            the settings (run, search), the fingerprints, the fixed objective bounds
    evaluations.jsonl   append-only, one line per finished evaluation (the resume source)
    results.csv         every evaluation: config, genes, objectives, generation, source, is_pareto
    pareto.csv          the non-dominated feasible evaluations
    hypervolume.csv     hypervolume per generation over the fixed bounds

`load_run` reads it into a `SearchResult`, the same object a search returns in memory, so plots,
reports, picking and exports take either. ``results.csv`` is read when it is complete, else the
table is rebuilt from ``evaluations.jsonl`` (a run killed between generations logged more than it
tabled). A torn last line of the log (a write cut short by a crash) is left out with the same
one-line warning a resume gives (`lorasearch.io.read_jsonl`); the file is not changed here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from ..errors import LoraSearchError
from ..io import read_document, read_jsonl
from .noise import distinct_steps, extremes_warning, neighbour_notes
from .table import ObjectiveSpec, hypervolume_curve, results_table, spent_forwards

RUN_FILE = "run.yaml"
LOG_FILE = "evaluations.jsonl"
TABLE_FILE = "results.csv"
PARETO_FILE = "pareto.csv"
HYPERVOLUME_FILE = "hypervolume.csv"
REFERENCE_SOURCES = ("max", "heuristic", "min")
FIX_RUN_DIR = "fix: pass the --out folder of a lorasearch search"


@dataclass
class SearchResult:
    """Every evaluation of a search, with what is needed to read it: objectives, bounds, settings.

    Attributes:
        table: one row per evaluation (`lorasearch.results.results_table`'s columns).
        specs: the objectives with their fixed normalisation bounds, in search order.
        settings: the ``search`` section of run.yaml (strategy, budget, population, seed,
            objectives, constraints, ...).
        info: the ``run`` section of run.yaml (network, task, deployment, seq_len, ...).
        path: the run directory, when there is one.
        name: a label for legends (the folder's name, or the strategy for in-memory results).
    """

    table: pd.DataFrame
    specs: list[ObjectiveSpec]
    settings: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    name: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    """In memory only: the search's wall seconds, and the surrogate's fitting seconds when it had one."""
    item_scores: dict[int, dict[str, list[float]]] = field(default_factory=dict, repr=False)
    fingerprints: dict[str, Any] = field(default_factory=dict, repr=False)
    """The ``fingerprints`` section of run.yaml: what the results depend on (`lorasearch.fingerprints`)."""
    """Per eval_id, each item-wise objective's per-item scores (what paired comparisons use)."""

    def __post_init__(self) -> None:
        if not self.name:
            self.name = self.path.resolve().name if self.path is not None else str(self.settings.get("strategy", "search"))

    @property
    def out_dir(self) -> Path | None:
        """The run directory (None for a search kept in memory)."""
        return self.path

    def beside(self, name: str) -> Path:
        """``RUN_DIR/name``: where outputs of the run go by default (plots, the report)."""
        if self.path is None:
            raise LoraSearchError(f"{self.name}: an in-memory result has no run directory; fix: pass out=PATH")
        return self.path / name

    @property
    def strategy(self) -> str:
        """The search strategy (nsga2, random, tpe, ...), or "" when unknown."""
        return str(self.settings.get("strategy", ""))

    @property
    def constraints(self) -> list[str]:
        """The constraints, as written (``macs<=2.5e8``)."""
        return [str(c) for c in self.settings.get("constraints", [])]

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

    @property
    def item_forwards(self) -> int:
        """Validation items the search ran through the model, surrogate probes included (0 when the table
        does not say)."""
        return int(spent_forwards(self.table).sum())

    @property
    def hypervolume(self) -> pd.DataFrame:
        """Hypervolume per generation over the fixed bounds (what ``hypervolume.csv`` holds)."""
        return hypervolume_curve(self.table, self.specs, by="generation")

    def hypervolume_by_evaluation(self, specs: Sequence[ObjectiveSpec] | None = None) -> pd.DataFrame:
        """Hypervolume after each evaluation; ``specs`` overrides the run's bounds, so runs
        compared in one figure share a reference point."""
        return running_hypervolume(self.table, list(specs or self.specs))

    def spec(self, name: str) -> ObjectiveSpec:
        """The objective called ``name``; a `LoraSearchError` names the ones there are."""
        for s in self.specs:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self.specs)
        raise LoraSearchError(f"{self.name}: no objective {name!r}; fix: use one of {known}")

    def reference(self, source: str) -> pd.Series | None:
        """The row of the ``max``, ``min`` or ``heuristic`` config, when it was evaluated."""
        labels = self.table["source"].astype(str).str.split("+")
        rows = self.table[labels.apply(lambda names: source in names)]
        return rows.iloc[0] if len(rows) else None

    @property
    def references(self) -> dict[str, pd.Series]:
        """The evaluated reference configs by source: max, heuristic, min (those present)."""
        found = {source: self.reference(source) for source in REFERENCE_SOURCES}
        return {source: row for source, row in found.items() if row is not None}

    def items_of(self, name: str = "accuracy") -> dict[int, list[float]]:
        """Per eval_id, the per-item scores of ``name`` (empty for runs that did not log them)."""
        return {eval_id: scores[name] for eval_id, scores in self.item_scores.items() if name in scores}

    def noise_notes(self, name: str = "accuracy") -> list[str]:
        """Neighbouring front points whose scores are within noise of each other (paired when the
        per-item scores were logged)."""
        return neighbour_notes(self.pareto, self.items_of(name), name)

    def distinct_steps(self, name: str = "accuracy") -> list[int]:
        """The front points that the items tell apart: eval_ids, each more than 2 standard errors
        above the last one kept, from the least accurate up."""
        return distinct_steps(self.pareto, self.items_of(name), name)

    def noise_warning(self, name: str = "accuracy") -> str | None:
        """A warning when the max and min configs are within noise of each other, else None."""
        return extremes_warning(self.references, self.items_of(name), name)


RunData = SearchResult  # the name plots and reports used before the two were one


def running_hypervolume(table: pd.DataFrame, specs: Sequence[ObjectiveSpec]) -> pd.DataFrame:
    """Hypervolume of the first k evaluations for every k, in eval_id order."""
    return hypervolume_curve(table, specs, by="eval_id")


# ------------------------------------------------------------------------------ reading
def read_run_document(path: str | Path, error: type[LoraSearchError] = LoraSearchError) -> dict[str, Any]:
    """A ``run.yaml`` as a mapping, with one-line errors (missing, undecodable, malformed, not a mapping)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: missing; {FIX_RUN_DIR} (or a run.yaml it wrote)")
    document = read_document(path, error, "run file")
    if not isinstance(document, Mapping):
        raise error(f"{path}: not a mapping of run/search/bounds; fix: restore the file the search wrote")
    return dict(document)


def load_run(
    run_dir: str | Path, *, need_run_file: bool = True, error: type[LoraSearchError] = LoraSearchError
) -> SearchResult:
    """Read a run directory written by ``lorasearch search --out RUN_DIR``.

    Args:
        run_dir: the folder.
        need_run_file: refuse a folder without ``run.yaml`` and its bounds (plots and reports need
            them); with False, a bare ``results.csv`` is read, and ``specs`` is empty when no bounds
            are stored (`lorasearch.results.pick.registered_specs` then names the objectives).
        error: the error type raised, one line naming the file, what is missing and the fix.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise error(f"{path}: no such run directory; {FIX_RUN_DIR} (this path is not a folder)")
    if (path / RUN_FILE).is_file():
        document = read_run_document(path / RUN_FILE, error)
    elif need_run_file:
        raise error(f"{path}: not a search run directory ({RUN_FILE} is missing); {FIX_RUN_DIR}")
    else:
        document = {}
    stored = _stored_specs(document, path / RUN_FILE, error)
    if stored is None and need_run_file:
        raise error(
            f"{path / RUN_FILE}: bounds: missing (the search stopped before its first evaluation); "
            "fix: run or --resume the search"
        )
    # a torn last line is left out, with a warning; raced chunks are no evaluations
    records = [r for r in read_jsonl(path / LOG_FILE, error=error) if "eval_id" in r]
    table = _read_table(path, records, stored or [], error)
    return SearchResult(
        table=table,
        specs=stored or [],
        settings=dict(document.get("search") or {}),
        info=dict(document.get("run") or {}),
        path=path,
        item_scores=item_scores_of(records),
        fingerprints=dict(document.get("fingerprints") or {}),
    )


def item_scores_of(records: Sequence[Mapping[str, Any]]) -> dict[int, dict[str, list[float]]]:
    """Per eval_id, the logged per-item scores of each item-wise objective."""
    return {int(r["eval_id"]): dict(r["item_scores"]) for r in records if r.get("item_scores")}


def from_result(result: SearchResult, name: str | None = None) -> SearchResult:
    """The result of a search, renamed for legends when ``name`` is given (plots take it as is)."""
    if result.table.empty:
        raise LoraSearchError(f"{name or result.name}: the search result holds no evaluation; fix: run a search with a budget")
    return replace(result, name=name) if name else result


def as_run(run: SearchResult | str | Path) -> SearchResult:
    """Accept a `SearchResult` or a run directory's path."""
    if isinstance(run, (str, Path)):
        return load_run(run)
    return from_result(run)


def _stored_specs(document: Mapping[str, Any], run_file: Path, error: type[LoraSearchError]) -> list[ObjectiveSpec] | None:
    bounds = document.get("bounds")
    if not bounds:
        return None
    try:
        return [ObjectiveSpec(**b) for b in bounds]
    except TypeError as exc:
        raise error(f"{run_file}: bounds: malformed ({exc}); fix: restore the file the search wrote") from None


def _read_table(path: Path, records: Sequence[Mapping[str, Any]], specs: Sequence[ObjectiveSpec],
                error: type[LoraSearchError]) -> pd.DataFrame:
    """results.csv when it is complete, else the table rebuilt from evaluations.jsonl's ``records``."""
    csv = path / TABLE_FILE
    table = _read_csv(csv) if csv.is_file() else pd.DataFrame()
    if records and len(table) != len(records) and specs:
        table = results_table(records, specs)
    if table.empty or "config" not in table:
        problem = "holds no evaluations" if csv.is_file() else "missing, the run has no results yet"
        raise error(
            f"{path}: no results ({TABLE_FILE} and {LOG_FILE} hold no evaluation); {csv}: {problem}; "
            f"fix: let `lorasearch search --out {path}` finish a generation, or --resume it"
        )
    missing = [s.name for s in specs if s.name not in table]
    if missing:
        raise error(f"{csv}: objective column {missing[0]!r} is missing; fix: delete it to rebuild it from {LOG_FILE}")
    return table.sort_values("eval_id").reset_index(drop=True)


def _read_csv(csv: Path) -> pd.DataFrame:
    """The table, or an empty one when the file is empty or torn (the log rebuilds it)."""
    try:
        return pd.read_csv(csv)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        return pd.DataFrame()
