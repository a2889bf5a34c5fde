"""Plain settings, and the one place that turns them into a super-network and an evaluator.

The CLI, the quickstart, ``--resume``, ``export`` of a run and every parallel worker build their
objects with `build_network` and `build_evaluator`; run files store the settings dataclasses as
plain dicts (`settings_dict`), and `settings_from_dict` reads them back by keyword, so a run is
fully described by its settings and a field added here reaches every command.

Each field's docstring is its documentation and the help text of the CLI option derived from it
(`lorasearch.cli.options`).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

from ..compress.masked import apply_adapter_mode
from ..compress.network import resolve_mode
from ..compress.quant import attach_grids, is_quantized_folder
from ..data import Record, is_multiple_choice, load_records, synthetic_task
from ..errors import AdapterError, LoraSearchError
from ..evaluate import Evaluator, ExactMatchEvaluator, LossEvaluator, MultipleChoiceEvaluator
from ..io import parse_json, read_text
from ..models import load_model
from ..space import Config, SearchSpace
from ..supernet import SPACE_FILE_NAME, SuperNetwork

EVALUATORS = ("auto", "text", "label", "exact", "loss")
Settings = TypeVar("Settings")


@dataclass
class NetworkSettings:
    """Which model, space and adapter make the super-network."""

    model: str = "default"
    """Model: a Hugging Face name or folder, a .gguf file, 'default' (SmolLM2-135M if installed) or tiny-llama."""
    space: str | None = None
    """Space file (default: the adapter folder's own space file)."""
    adapter: str | None = None
    """PEFT LoRA super-adapter folder (default: fresh adapters)."""
    gguf_file: str | None = None
    """GGUF file inside the --model folder."""
    dtype: str | None = None
    """Weights' dtype when loading (default: the checkpoint's)."""
    trust_remote_code: bool = False
    """Allow model code from the model's repository."""
    seed: int = 0
    """Seeds fresh adapters."""
    adapter_mode: str | None = None
    """dense (plain LoRA), sparse (SparsePEFT: delta masked by the base's zeros) or qa (QA-SparsePEFT on a
    quantized base); default: the adapter folder's saved mode, else dense."""

    def load_options(self) -> dict[str, Any]:
        """What `lorasearch.models.load_model` takes from these settings."""
        return {"gguf_file": self.gguf_file, "dtype": self.dtype, "trust_remote_code": self.trust_remote_code}


@dataclass
class TaskSettings:
    """Which data the evaluator scores, and how."""

    task: str | None = None
    """Task file (LLM-Adapters JSON, JSONL or a datasets folder); default: the synthetic task."""
    evaluator: str = "auto"
    """auto, text (option text), label (option label), exact (math exact match) or loss."""
    limit: int | None = 200
    """Items in the seeded subset scored per config."""
    seed: int = 0
    """Seeds the subset."""
    batch_size: int = 8
    """Sequences per forward pass."""
    max_new_tokens: int = 256
    """Exact match only: generation limit."""


# ------------------------------------------------------------------------------- plain data
def settings_dict(obj: Any) -> dict[str, Any]:
    """A settings dataclass as a plain dict (what run files store)."""
    return dataclasses.asdict(obj)


def settings_from_dict(cls: type[Settings], data: Mapping[str, Any] | None, source: str) -> Settings:
    """Build settings from a run file's mapping by keyword; an unknown field is a one-line error."""
    data = dict(data or {})
    known = {f.name for f in fields(cls)}
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise LoraSearchError(f"{source}: unknown field {key!r}; {hint}fix: compare with a run.yaml that lorasearch wrote")
    return cls(**data)


def absolute_paths(network: NetworkSettings, task: TaskSettings) -> tuple[NetworkSettings, TaskSettings]:
    """The settings with file paths made absolute (parallel workers may start elsewhere)."""
    return (
        dataclasses.replace(network, model=_absolute(network.model), space=_absolute(network.space),
                            adapter=_absolute(network.adapter)),
        dataclasses.replace(task, task=_absolute(task.task)),
    )


def _absolute(path: str | None) -> str | None:
    """``path`` made absolute when it names an existing file or folder (model names stay as they are)."""
    return str(Path(path).resolve()) if path and Path(path).exists() else path


# ------------------------------------------------------------------------------- building
def resolve_space(settings: NetworkSettings) -> SearchSpace:
    """The space file: given, or the one saved beside the adapter."""
    if settings.space:
        return SearchSpace.load(settings.space)
    if settings.adapter and not Path(settings.adapter).is_dir():
        raise AdapterError(f"{settings.adapter}: no such adapter folder; fix: point --adapter at a PEFT LoRA folder")
    if settings.adapter and (Path(settings.adapter) / SPACE_FILE_NAME).is_file():
        return SearchSpace.load(Path(settings.adapter) / SPACE_FILE_NAME)
    raise LoraSearchError("--space: missing; fix: pass a space file (see search_spaces/) or an adapter saved by lorasearch")


def build_network(settings: NetworkSettings, space: SearchSpace | None = None) -> SuperNetwork:
    """Load the model and wrap it as the settings say: the one builder of a `SuperNetwork`.

    A quantized base gets its INT grids back, and the adapter modules take the adapter mode
    (dense, SparsePEFT or QA-SparsePEFT: asked for, else the one saved beside the adapter).
    ``space`` overrides the settings' space (e.g. a space stored inside a run file).
    """
    space = space if space is not None else resolve_space(settings)
    mode, saved = resolve_mode(settings.adapter_mode, settings.adapter)
    loaded = load_model(settings.model, **settings.load_options())
    if is_quantized_folder(settings.model):
        attach_grids(loaded.model, settings.model)
    net = SuperNetwork(loaded.model, space, settings.adapter, tokenizer=loaded.tokenizer,
                       model_spec=loaded.spec, seed=settings.seed)
    return apply_adapter_mode(net, mode, saved)


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


def build_evaluator(net: SuperNetwork, settings: TaskSettings, records: Sequence[Record] | None = None) -> Evaluator:
    """The evaluator the settings ask for, on a seeded subset of the task."""
    records = list(records) if records is not None else load_task(settings)
    kind = evaluator_kind(settings, records)
    common = {"limit": settings.limit, "seed": settings.seed, "batch_size": settings.batch_size}
    if kind in ("text", "label"):
        return MultipleChoiceEvaluator(net, records, mode=kind, **common)
    if kind == "exact":
        return ExactMatchEvaluator(net, records, max_new_tokens=settings.max_new_tokens, **common)
    return LossEvaluator(net, records, **common)


def resolve_config(space: SearchSpace, choice: str | None) -> Config:
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
    data = parse_json(read_text(path, what="config file"), str(path))
    config = data.get("config", data) if isinstance(data, Mapping) else None
    if not isinstance(config, Mapping):
        raise LoraSearchError(f"{path}: expected a JSON object of gene key -> value (or a subnet.json)")
    space.encode(config, source=str(path))
    return dict(config)
