"""The run directory: a search that survives crashes.

::

    run.yaml            everything needed to reproduce the run, and the fingerprints of what its
                        results depend on (a resume must match both)
    evaluations.jsonl   append-only, one flushed line per finished evaluation (the resume source), and
                        with racing one per finished chunk of an unfinished one (``"type": "chunk"``)
    .lorasearch.lock    held by the process that searches here (`lorasearch.io.FolderLock`)
    results.csv         every evaluation: config, genes, objectives, generation, source, seconds, is_pareto
    pareto.csv          the non-dominated evaluations
    hypervolume.csv     hypervolume per generation, over the fixed bounds stored in run.yaml
    progress.log        one line per evaluation as it finishes ("evaluation ID [k/N]: ...", ID the eval_id)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd
import yaml

from ..errors import LoraSearchError
from ..fingerprints import changed_fingerprint
from ..io import append_jsonl, atomic_write_text, changed_setting, os_reason, read_jsonl
from ..results.run import HYPERVOLUME_FILE, LOG_FILE, PARETO_FILE, RUN_FILE, TABLE_FILE, read_run_document

COMPARED_SECTIONS = ("run", "search")
FINGERPRINTS = "fingerprints"
FORCED = "forced"  # the changes a --force resume accepted, kept for the record
UNFORCEABLE = ("space",)  # logged genes index the space's choices: another space reads them as other configs
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

    def start(self, run: Mapping[str, Any], *, resume: bool, force: bool = False) -> list[dict[str, Any]]:
        """Claim the folder for ``run``; on resume, check it matches and return the finished evaluations.

        ``run`` holds the ``run`` and ``search`` sections and, optionally, ``fingerprints``. A resume
        whose fingerprints differ from the stored ones is refused, unless ``force`` (the space never:
        the logged genes would mean other configs); a torn last line of the log is cut off.
        """
        if resume:
            raw = self.read_run()
            stored = _upgraded(raw)
            forced = _check_fingerprints(stored, run, self.run_file, force)
            stored = _extended(stored, run, self.run_file)
            _refuse_changes(stored, run, self.run_file)
            kept = dict(stored.get(FINGERPRINTS) or {})
            current = dict(run.get(FINGERPRINTS) or {})
            prints = current if forced else {**current, **{k: v for k, v in kept.items() if v is not None}}
            if forced:
                stored[FORCED] = list(stored.get(FORCED) or []) + [forced]
            if forced or prints != kept or stored is not raw:
                self._write({**stored, FINGERPRINTS: prints})
            return read_jsonl(self.path / LOG_FILE, repair=True)
        if self.run_file.exists() or (self.path / LOG_FILE).exists():
            raise LoraSearchError(f"{self.path}: already holds a search; fix: pass --resume to continue it, or another --out")
        self._guard(lambda: self.path.mkdir(parents=True, exist_ok=True))
        self._write(run)
        return []

    def update_run(self, changes: Mapping[str, Any]) -> None:
        """Replace top-level sections of run.yaml (e.g. to store derived bounds), atomically."""
        self._write({**self.read_run(), **dict(changes)})

    def _write(self, document: Mapping[str, Any]) -> None:
        self._guard(lambda: atomic_write_text(self.run_file, yaml.safe_dump(dict(document), sort_keys=False)))

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
        change = changed_setting(stored.get(section), current.get(section), section)
        if change is not None:
            raise LoraSearchError(
                f"{file}: the run changed ({change}); fix: resume with the same settings or start a new --out"
            )


def _extended(stored: dict[str, Any], current: Mapping[str, Any], file: Path) -> dict[str, Any]:
    """A resume with a larger budget extends the run: the stored budget is raised (a smaller one is refused).

    The strategy replays from its seed, so the logged evaluations are the first ones of the longer
    run and the extended run ends where a run started with the larger budget would.
    """
    old = (stored.get("search") or {}).get("budget")
    new = (current.get("search") or {}).get("budget")
    if old is None or new is None or new == old:
        return stored
    if new < old:
        raise LoraSearchError(f"{file}: --budget {new} is below the run's budget {old}; fix: drop --budget to "
                              f"finish the run, or give a larger one to extend it")
    return {**stored, "search": {**stored["search"], "budget": new}}


def _upgraded(stored: dict[str, Any]) -> dict[str, Any]:
    """A run.yaml of an earlier version kept the space's fingerprint in its run section."""
    run = stored.get("run")
    if isinstance(run, Mapping) and "space_fingerprint" in run:
        run = dict(run)
        stored = {**stored, "run": run}
        stored.setdefault(FINGERPRINTS, {"space": run.pop("space_fingerprint")})
    return stored


def _check_fingerprints(stored: Mapping[str, Any], current: Mapping[str, Any], file: Path, force: bool) -> str | None:
    """Refuse a resume whose inputs changed; with ``force``, return what changed (for the record)."""
    change = changed_fingerprint(stored.get(FINGERPRINTS) or {}, current.get(FINGERPRINTS) or {})
    if change is None:
        return None
    name, what = change
    if name in UNFORCEABLE:
        raise LoraSearchError(
            f"{file}: {what}; fix: restore it or start a new --out "
            "(the logged genes index the old space's choices, so --force cannot continue on another space)"
        )
    if not force:
        raise LoraSearchError(
            f"{file}: {what}; fix: restore it, start a new --out, "
            "or pass --force to resume anyway (the front then mixes evaluations of both)"
        )
    return f"{what}; resumed with --force"
