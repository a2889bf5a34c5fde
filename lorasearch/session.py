"""Building the pieces of a run from plain settings: the super-network, the task, the evaluator.

The CLI, the quickstart and ``--resume`` all go through these functions, and run files store the
settings dataclasses as plain dicts, so a run is fully described by its settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .data import Record, is_multiple_choice, load_records, synthetic_task
from .errors import LoraSearchError
from .space import SearchSpace
from .supernet import SPACE_FILE_NAME, SuperNetwork

EVALUATORS = ("auto", "text", "label", "exact", "loss")


@dataclass
class NetworkSettings:
    """Which model, space and adapter make the super-network."""

    model: str = "default"
    """A Hugging Face name or folder, a .gguf file, ``default`` or ``tiny-llama`` (etc.)."""
    space: str | None = None
    """The space file; default: the adapter folder's own space file."""
    adapter: str | None = None
    """A PEFT LoRA super-adapter folder; none builds fresh adapters."""
    gguf_file: str | None = None
    dtype: str | None = None
    trust_remote_code: bool = False
    seed: int = 0
    """Seeds fresh adapters."""
    adapter_mode: str | None = None
    """dense, sparse (SparsePEFT) or qa (QA-SparsePEFT); none: the adapter folder's saved mode, else dense."""


@dataclass
class TaskSettings:
    """Which data the evaluator scores, and how."""

    task: str | None = None
    """A task file (LLM-Adapters JSON, JSONL, or a datasets folder); none uses the synthetic task."""
    evaluator: str = "auto"
    """auto, text (option text), label (option label), exact (math exact match) or loss."""
    limit: int | None = 200
    """Size of the seeded subset scored per config."""
    seed: int = 0
    batch_size: int = 8
    max_new_tokens: int = 256
    """Exact match only: generation limit."""


def resolve_space_path(settings: NetworkSettings) -> Path:
    """The space file: given, or the one saved beside the adapter."""
    if settings.space:
        return Path(settings.space)
    if settings.adapter and (Path(settings.adapter) / SPACE_FILE_NAME).is_file():
        return Path(settings.adapter) / SPACE_FILE_NAME
    raise LoraSearchError("--space: missing; fix: pass a space file (see search_spaces/) or an adapter saved by lorasearch")


def build_network(settings: NetworkSettings) -> SuperNetwork:
    """Load the model and wrap it as the settings say."""
    load = {"gguf_file": settings.gguf_file, "dtype": settings.dtype, "trust_remote_code": settings.trust_remote_code}
    from .compress.network import build_compressed_network, needs_compressed_build

    if needs_compressed_build(settings):
        return build_compressed_network(settings, resolve_space_path(settings), load)
    return SuperNetwork.from_pretrained(
        settings.model, resolve_space_path(settings), settings.adapter, seed=settings.seed, **load
    )


def load_task(settings: TaskSettings) -> list[Record]:
    """The task's records (the synthetic task when no file is given)."""
    if settings.task is None:
        return synthetic_task(max(settings.limit or 200, 200), seed=settings.seed)
    return load_records(settings.task)


def evaluator_kind(settings: TaskSettings, records: Sequence[Record]) -> str:
    """``auto`` resolved: multiple choice scores option texts; numeric answers use exact match."""
    if settings.evaluator not in EVALUATORS:
        raise LoraSearchError(f"--evaluator: unknown {settings.evaluator!r}; fix: use one of {', '.join(EVALUATORS)}")
    if settings.evaluator != "auto":
        return settings.evaluator
    if is_multiple_choice(records[0]):
        return "text"
    try:
        float(records[0].answer.replace(",", ""))
        return "exact"
    except ValueError:
        return "loss"


def build_evaluator(net: SuperNetwork, settings: TaskSettings, records: Sequence[Record] | None = None):
    """The evaluator the settings ask for, on a seeded subset of the task."""
    from .evaluate import ExactMatchEvaluator, LossEvaluator, MultipleChoiceEvaluator

    records = list(records) if records is not None else load_task(settings)
    kind = evaluator_kind(settings, records)
    common = {"limit": settings.limit, "seed": settings.seed, "batch_size": settings.batch_size}
    if kind in ("text", "label"):
        return MultipleChoiceEvaluator(net, records, mode=kind, **common)
    if kind == "exact":
        return ExactMatchEvaluator(net, records, max_new_tokens=settings.max_new_tokens, **common)
    return LossEvaluator(net, records, **common)


def resolve_config(space: SearchSpace, choice: str | None) -> dict[str, Any]:
    """``max``, ``min``, ``heuristic``, or a JSON file holding a config (or a subnet.json)."""
    if choice in (None, "max"):
        return space.max()
    if choice == "min":
        return space.min()
    if choice == "heuristic":
        return space.heuristic()
    path = Path(choice)
    if not path.is_file():
        raise LoraSearchError(f"--config: {choice!r} is not max, min, heuristic or a JSON file; fix: pick one of those")
    data = json.loads(path.read_text())
    config = data.get("config", data) if isinstance(data, Mapping) else None
    if not isinstance(config, Mapping):
        raise LoraSearchError(f"{path}: expected a JSON object of gene key -> value (or a subnet.json)")
    space.encode(config)
    return dict(config)


def settings_dict(obj: Any) -> dict[str, Any]:
    """A settings dataclass as a plain dict (what run files store)."""
    return dataclasses.asdict(obj)


def space_fingerprint(space: SearchSpace) -> str:
    """A short hash of a space's content, so a run notices an edited space file."""
    return hashlib.sha256(json.dumps(space.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
