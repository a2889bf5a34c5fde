"""Fingerprints: short hashes of what a run's results depend on, so a resume notices a change.

A search's ``run.yaml`` and a training run's ``train_run.yaml`` store them under ``fingerprints``;
a resume compares them (see `changed_fingerprint`) and refuses to mix results of two different
things unless forced.

* the model: its name; for a local folder, the content of its small files (``config.json``, the
  tokenizer's files, ...) with the names and sizes of its large files (weights are not read:
  hashing gigabytes on every start would cost more than it saves; a weight file rewritten in
  place at the same size is not noticed); for a single file (``.gguf``), its size and first MiB;
* the records: a hash of the task records the run uses;
* the adapter and the space: `lorasearch.SuperNetwork.fingerprint` and
  `lorasearch.space.space_fingerprint`;
* the evaluator: its kind and the settings that change a score (its class's ``fingerprint_fields``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

SMALL_FILE = 1 << 20  # files under 1 MiB are hashed whole; larger ones by name and size
HEAD_BYTES = 1 << 20  # of a single model file (a GGUF header holds its metadata)
LABELS = {
    "space": "the search space",
    "adapter": "the adapter's tensors",
    "model": "the base model",
    "task": "the task's records",
    "evaluator": "the evaluator's settings",
}


def digest(obj: Any) -> str:
    """A 16-hex-digit hash of a JSON-able value (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_fingerprint(spec: str, gguf_file: str | None = None) -> str:
    """The model's identity, cheaply: see the module docstring."""
    path = Path(spec)
    if gguf_file:
        path = path / gguf_file
    if path.is_file():
        with open(path, "rb") as f:
            head = hashlib.sha256(f.read(HEAD_BYTES)).hexdigest()
        return digest({"file": path.name, "size": path.stat().st_size, "head": head})
    if path.is_dir():
        entries = []
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            size = file.stat().st_size
            name = str(file.relative_to(path))
            if size < SMALL_FILE:
                entries.append([name, hashlib.sha256(file.read_bytes()).hexdigest()])
            else:
                entries.append([name, size])
        return digest({"folder": entries})
    return digest({"name": spec, "gguf_file": gguf_file})


def records_fingerprint(records: Iterable[Any]) -> str:
    """A hash of task records (anything with ``to_dict()``, dataclasses or mappings), in order."""
    return digest([_record_fields(r) for r in records])


def _record_fields(record: Any) -> dict[str, Any]:
    if hasattr(record, "to_dict"):
        return record.to_dict()
    if dataclasses.is_dataclass(record):
        return dataclasses.asdict(record)
    return dict(record)


def evaluator_fingerprint(evaluator: Any) -> str | None:
    """A hash of an evaluator's kind and of the settings that change its scores (None for no evaluator).

    The settings are the attributes the evaluator's class lists in ``fingerprint_fields``.
    """
    if evaluator is None:
        return None
    settings: dict[str, Any] = {"kind": type(evaluator).__name__}
    fields = getattr(evaluator, "fingerprint_fields", ())
    settings.update({k: getattr(evaluator, k) for k in fields if hasattr(evaluator, k)})
    records = getattr(evaluator, "records", None)
    if records is not None:
        settings["records"] = records_fingerprint(records)
    return digest(settings)


def changed_fingerprint(stored: Mapping[str, Any], current: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first fingerprint both hold that differs, as ``(name, "<what> changed since ... (...)")``, or None."""
    for name, now in current.items():
        before = stored.get(name)
        if before is not None and now is not None and before != now:
            return name, f"{LABELS.get(name, name)} changed since the run started (fingerprint {before} there, {now} now)"
    return None
