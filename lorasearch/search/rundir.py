"""The run directory: a search that survives crashes.

::

    run.yaml            everything needed to reproduce the run (a resume must match it)
    evaluations.jsonl   append-only, one flushed line per finished evaluation (the resume source), and
                        with racing one per finished chunk of an unfinished one (``"type": "chunk"``)
    results.csv         every evaluation: config, genes, objectives, generation, source, seconds, is_pareto
    pareto.csv          the non-dominated evaluations
    hypervolume.csv     hypervolume per generation, over the fixed bounds stored in run.yaml
    progress.log        one line per evaluation as it finishes ("evaluation k of N: ...")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd
import yaml

from ..errors import LoraSearchError
from ..io import append_jsonl, atomic_write_text, first_difference, os_reason, read_jsonl
from ..results.run import HYPERVOLUME_FILE, LOG_FILE, PARETO_FILE, RUN_FILE, TABLE_FILE, read_run_document

COMPARED_SECTIONS = ("run", "search")
PROGRESS_FILE = "progress.log"
CHUNK = "chunk"  # a log line of items scored so far by a raced evaluation (not an evaluation)


class RunDirectory:
    """Reads and writes one search's folder; every write is atomic or a flushed append."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    def read_run(self) -> dict[str, Any]:
        """The stored run.yaml (for ``--resume RUN_DIR``)."""
        if not self.run_file.is_file():
            raise LoraSearchError(f"{self.run_file}: missing; fix: point --resume at a search's run directory")
        return read_run_document(self.run_file)

    def start(self, run: Mapping[str, Any], *, resume: bool) -> list[dict[str, Any]]:
        """Claim the folder for ``run``; on resume, check it matches and return the finished evaluations."""
        if resume:
            stored = self.read_run()
            _refuse_changes(stored, run, self.run_file)
            return list(read_jsonl(self.path / LOG_FILE))
        if self.run_file.exists() or (self.path / LOG_FILE).exists():
            raise LoraSearchError(f"{self.path}: already holds a search; fix: pass --resume to continue it, or another --out")
        self._guard(lambda: self.path.mkdir(parents=True, exist_ok=True))
        self._guard(lambda: atomic_write_text(self.run_file, yaml.safe_dump(dict(run), sort_keys=False)))
        return []

    def update_run(self, run: Mapping[str, Any]) -> None:
        """Rewrite run.yaml (e.g. to store derived bounds), atomically."""
        self._guard(lambda: atomic_write_text(self.run_file, yaml.safe_dump(dict(run), sort_keys=False)))

    def progress(self, line: str) -> None:
        """Append one line to ``progress.log`` (what a run without a terminal can be followed by)."""
        def write() -> None:
            with open(self.path / PROGRESS_FILE, "a", encoding="utf-8") as f:
                f.write(line.rstrip("\n") + "\n")
                f.flush()

        self._guard(write)

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one finished evaluation, flushed to disk before returning."""
        self._guard(lambda: append_jsonl(self.path / LOG_FILE, dict(record)))

    def write_tables(self, table: pd.DataFrame, hypervolume: pd.DataFrame) -> None:
        """Write results.csv, pareto.csv and hypervolume.csv atomically."""
        for name, frame in (
            (TABLE_FILE, table),
            (PARETO_FILE, table[table["is_pareto"]] if "is_pareto" in table else table),
            (HYPERVOLUME_FILE, hypervolume),
        ):
            self._guard(lambda f=frame, n=name: atomic_write_text(self.path / n, f.to_csv(index=False)))

    def _guard(self, action: Callable[[], Any]) -> None:
        try:
            action()
        except OSError as exc:
            raise LoraSearchError(f"{self.path}: cannot write ({os_reason(exc)}); fix: choose another --out or free space") from None


def _refuse_changes(stored: Mapping[str, Any], current: Mapping[str, Any], file: Path) -> None:
    for section in COMPARED_SECTIONS:
        a, b = stored.get(section), current.get(section)
        if a != b:
            raise LoraSearchError(
                f"{file}: the run changed ({first_difference(a, b, section)}); "
                "fix: resume with the same settings or start a new --out"
            )
