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
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import torch
from torch import nn

from ..compress.adapter_modes import resolve_mode
from ..compress.masked import apply_adapter_mode
from ..compress.quant import attach_grids, is_quantized_folder
from ..data import Record, load_records, synthetic_task
from ..errors import AdapterError, LoraSearchError
from ..evaluate import registry
from ..evaluate.evaluators import Evaluator
from ..evaluate.harness import LM_EVAL_PREFIX, LMEvalEvaluator, parse_lm_eval
from ..io import parse_json, read_text
from ..models.anatomy import bytes_per_token
from ..models.loading import load_model, load_shapes, resolve_device, resolve_dtype
from ..network.permutation import PERMUTATION_FILE
from ..network.supernet import SPACE_FILE_NAME, SuperNetwork
from ..space import Config, SearchSpace

ADAPTER_DTYPES = ("fp32", "base")
GPU_BATCH_TOKENS = 32768  # the most tokens per evaluation batch on a GPU
MEMORY_SHARE = 0.8  # of the free device memory an evaluation batch may fill
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
    device: str = "auto"
    """auto (CUDA when present, else the CPU), cpu, cuda or cuda:N."""
    dtype: str | None = "auto"
    """The base's dtype: auto (the checkpoint's own on a GPU, fp32 on the CPU), fp32, bf16 or fp16 (GGUF
    files are de-quantised to it)."""
    adapter_dtype: str = "fp32"
    """fp32 (adapters in full precision over a bf16/fp16 base, as PEFT does) or base (the base's dtype)."""
    device_map: str | None = None
    """auto: spread a model larger than one GPU over the GPUs and the CPU (accelerate); the search then
    runs with the local backend."""
    trust_remote_code: bool = False
    """Allow model code from the model's repository."""
    seed: int = 0
    """Seeds fresh adapters."""
    adapter_mode: str | None = None
    """dense (plain LoRA), sparse (SparsePEFT: delta masked by the base's zeros) or qa (QA-SparsePEFT on a
    quantized base); default: the adapter folder's saved mode, else dense."""

    def load_options(self) -> dict[str, Any]:
        """What `lorasearch.models.load_model` takes from these settings."""
        return {"gguf_file": self.gguf_file, "dtype": self.dtype or "auto", "device": self.device,
                "device_map": self.device_map, "trust_remote_code": self.trust_remote_code}

    def check(self, *, device: bool = True) -> None:
        """One-line errors for values that cannot work, before anything loads; ``device=False`` leaves
        out whether the device is present (a driver that builds shapes only runs nothing on it)."""
        if self.adapter_dtype not in ADAPTER_DTYPES:
            raise LoraSearchError(f"--adapter-dtype {self.adapter_dtype!r}: unknown; fix: use fp32 or base")
        if self.device_map not in (None, "auto"):
            raise LoraSearchError(f"--device-map {self.device_map!r}: unknown; fix: use auto, or leave it out")
        resolve_dtype(self.dtype, resolve_device(self.device) if device else torch.device("cpu"))


@dataclass
class TaskSettings:
    """Which data the evaluator scores, and how."""

    task: str | None = None
    """Task file (LLM-Adapters JSON, JSONL or a datasets folder); default: the synthetic task."""
    evaluator: str = "auto"
    """auto, text (option text), label (option label), exact (math exact match), loss, or lm-eval:TASK[,TASK...]
    (lm-evaluation-harness task names or task YAML paths; several give their mean)."""
    limit: int | None = 200
    """Items in the seeded subset scored per config (per task with lm-eval)."""
    seed: int = 0
    """Seeds the subset."""
    batch_size: int | None = None
    """Most sequences per forward pass (default: 8 on the CPU, no limit on a GPU: the token budget decides)."""
    max_batch_tokens: int | None = None
    """Most tokens per forward pass, padding and per-option context copies included (default on a GPU:
    min(32768, 0.8 * free memory / bytes per token), the key/value cache, one layer's activations and
    the fp32 logits of a token; no limit on the CPU)."""
    max_new_tokens: int = 256
    """Exact match only: generation limit."""
    metric: str | None = None
    """lm-eval: acc (default), acc_norm, exact_match, ... (a filter after a comma: exact_match,strict-match);
    loss: neg_loss (default) or neg_perplexity."""
    num_fewshot: int | None = None
    """lm-eval only: few-shot examples per item (default: the task's own, else 0)."""
    lm_eval_include: str | None = None
    """lm-eval only: a folder of task YAMLs added to lm-eval's task index."""


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


# ------------------------------------------------------------------------------- recorded paths
PATH_FIELDS = ("model", "space", "adapter", "task", "lm_eval_include")
"""The settings fields that may name a file or folder."""
RECORDED_IN = "recorded_in"
"""A run file's note of the folder its relative paths were recorded from (where the run then lay)."""


def recorded_path(value: Any, folder: str | Path) -> Any:
    """A path as a run file records it: relative to ``folder`` (the run's own) when it names an existing
    file or folder, so that a run moved together with its inputs still finds them; else as it is
    (model names such as ``default`` or a hub name)."""
    if not isinstance(value, str) or not value or not Path(value).exists():
        return value
    return os.path.relpath(Path(value).resolve(), Path(folder).resolve())


def recorded_settings(settings: Any, folder: str | Path) -> dict[str, Any]:
    """`settings_dict` with every path field recorded relative to ``folder`` (`recorded_path`)."""
    return {k: recorded_path(v, folder) if k in PATH_FIELDS else v for k, v in settings_dict(settings).items()}


def located_path(value: Any, folder: str | Path, recorded_in: str | Path | None = None) -> Any:
    """A path read from a run file in ``folder``, as a path from here: relative to the run folder, else to
    where the run was recorded (a run moved without its inputs), else as written. Files of earlier
    versions (no ``recorded_in``) recorded paths as the command line gave them: those are tried from
    here first."""
    if not isinstance(value, str) or not value or Path(value).is_absolute():
        return value
    bases = [folder, recorded_in] if recorded_in else [Path.cwd(), folder]
    for base in bases:
        if base is not None and (Path(base) / value).exists():
            return value if base == Path.cwd() else os.path.normpath(Path(base) / value)
    return value


def kept_as_recorded(current: Mapping[str, Any], stored: Mapping[str, Any] | None, folder: str | Path,
                     recorded_in: str | Path | None = None) -> dict[str, Any]:
    """``current`` (a settings mapping about to be recorded) with each path field that names the same
    file or folder as ``stored``'s spelled as ``stored`` spells it, so that a resume of a run recorded
    by an earlier version, or from elsewhere, compares equal."""
    kept = dict(current)
    for key in PATH_FIELDS:
        old, new = (stored or {}).get(key), kept.get(key)
        if isinstance(old, str) and isinstance(new, str) and old != new:
            there, here = located_path(old, folder, recorded_in), located_path(new, folder, folder)
            if Path(there).exists() and Path(here).exists() and Path(there).resolve() == Path(here).resolve():
                kept[key] = old
    return kept


def located_settings(data: Mapping[str, Any] | None, folder: str | Path,
                     recorded_in: str | Path | None = None) -> dict[str, Any]:
    """A run file's settings mapping with its path fields located from here (`located_path`)."""
    return {k: located_path(v, folder, recorded_in) if k in PATH_FIELDS else v for k, v in dict(data or {}).items()}


def absolute_paths(network: NetworkSettings, task: TaskSettings) -> tuple[NetworkSettings, TaskSettings]:
    """The settings with file paths made absolute (parallel workers may start elsewhere)."""
    return (
        dataclasses.replace(network, model=_absolute(network.model), space=_absolute(network.space),
                            adapter=_absolute(network.adapter)),
        dataclasses.replace(task, task=_absolute(task.task), evaluator=_absolute_lm_eval(task.evaluator),
                            lm_eval_include=_absolute(task.lm_eval_include)),
    )


def _absolute(path: str | None) -> str | None:
    """``path`` made absolute when it names an existing file or folder (model names stay as they are)."""
    return str(Path(path).resolve()) if path and Path(path).exists() else path


def _absolute_lm_eval(evaluator: str) -> str:
    """``lm-eval:TASKS`` with its task YAML paths made absolute; other evaluators as they are."""
    specs = parse_lm_eval(evaluator)
    return evaluator if specs is None else LM_EVAL_PREFIX + ",".join(_absolute(s) or s for s in specs)


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


def build_network(settings: NetworkSettings, space: SearchSpace | None = None, *,
                  with_tokenizer: bool = True, any_base: bool = False, shapes_only: bool = False) -> SuperNetwork:
    """Load the model and wrap it as the settings say: the one builder of a `SuperNetwork`.

    The model lands on the settings' device in their dtype (adapters in fp32 over a low-precision
    base unless ``adapter_dtype="base"``); a quantized base gets its INT grids back; the channel
    permutation of a reordered adapter (``lorasearch_permutation.safetensors``) is applied to the
    freshly loaded base and the adapter together (in `SuperNetwork`), before the adapter modules
    take the adapter mode (dense, SparsePEFT or QA-SparsePEFT: asked for, else the one saved beside
    the adapter), so masks are taken from the reordered base. QA-SparsePEFT gets the weights from
    before quantization where the quantized folder keeps them (``adapter_metadata["qa_base"]`` says
    which base it uses). ``space`` overrides the settings'
    space (e.g. one stored in a run file); without a space or an adapter, the network is the plain
    base model (no elastic modules). ``with_tokenizer=False`` skips the tokenizer (counting costs
    needs none). An adapter trained on another base than ``settings.model`` is refused, naming both,
    unless ``any_base`` (``--force``; see `SuperNetwork`). ``shapes_only=True`` builds the base on the
    meta device from its config alone (no weight is read; `lorasearch.models.load_shapes`) with the
    adapter's tensors on the CPU: the space, the costs in closed form, the tokenizer and the
    fingerprint of the network the settings describe, what a parallel search's driver needs; masks
    and grids of an adapter mode need weights and are left to the workers.
    """
    settings.check(device=not shapes_only)
    if space is None:
        space = resolve_space(settings) if settings.space or settings.adapter else plain_space()
    if shapes_only:
        return _shapes_network(settings, space, with_tokenizer, any_base)
    mode, saved = resolve_mode(settings.adapter_mode, settings.adapter)
    quantized = is_quantized_folder(settings.model)
    if quantized and settings.adapter and (Path(settings.adapter) / PERMUTATION_FILE).is_file():
        raise LoraSearchError(
            f"{Path(settings.adapter) / PERMUTATION_FILE}: a reordered adapter cannot run on the quantized base "
            f"{settings.model} (its INT grid follows the original channel order); fix: use the unquantized base"
        )
    loaded = load_model(settings.model, **settings.load_options(), with_tokenizer=with_tokenizer)
    if quantized:
        attach_grids(loaded.model, settings.model, float_base=mode == "qa")  # QA quantizes W^p + L^p
    net = SuperNetwork(loaded.model, space, settings.adapter, tokenizer=loaded.tokenizer, model_spec=loaded.spec,
                       seed=settings.seed, adapters_in_base_dtype=settings.adapter_dtype == "base", any_base=any_base)
    return apply_adapter_mode(net, mode, saved)


def _shapes_network(settings: NetworkSettings, space: SearchSpace, with_tokenizer: bool, any_base: bool) -> SuperNetwork:
    """The network of ``settings`` with its base on the meta device and real adapters on the CPU."""
    loaded = load_shapes(settings.model, **settings.load_options(), with_tokenizer=with_tokenizer)
    net = SuperNetwork(loaded.model, space, settings.adapter, tokenizer=loaded.tokenizer, model_spec=loaded.spec,
                       seed=settings.seed, adapters_in_base_dtype=settings.adapter_dtype == "base", any_base=any_base,
                       adapter_device="cpu")
    net.adapter_mode = resolve_mode(settings.adapter_mode, settings.adapter)[0]
    return net


def plain_space() -> SearchSpace:
    """The space of the plain base model: no group, one config (``{}``), nothing elastic."""
    return SearchSpace(name="base model", groups=(), description="the base model without adapters")


def load_task(settings: TaskSettings) -> list[Record]:
    """The task's records (the synthetic task when no file is given)."""
    if settings.task is None:
        return synthetic_task(max(settings.limit or 200, 200), seed=settings.seed)
    return load_records(settings.task)


def evaluator_kind(settings: TaskSettings, records: Sequence[Record] | None = None) -> str:
    """The evaluator the settings name: ``lm-eval`` for ``lm-eval:TASKS``, and ``auto`` resolved on
    ``records`` (multiple choice scores option texts; numeric answers use exact match)."""
    return registry.evaluator_kind(settings.evaluator, records)


def build_evaluator(net: SuperNetwork, settings: TaskSettings, records: Sequence[Record] | None = None) -> Evaluator:
    """The evaluator the settings ask for, on a seeded subset of the task."""
    _check_options(settings)
    if parse_lm_eval(settings.evaluator) is not None:
        return build_lm_eval(net, settings)
    records = list(records) if records is not None else load_task(settings)
    kind = evaluator_kind(settings, records)
    options = {
        "text": {"mode": "text"},
        "label": {"mode": "label"},
        "exact": {"max_new_tokens": settings.max_new_tokens},
        "loss": {"metric": settings.metric or "neg_loss"},
    }[kind]
    common = {"limit": settings.limit, "seed": settings.seed, **batching(settings, net.device, net.model)}
    return registry.EVALUATORS[kind](net, records, **options, **common)


def build_lm_eval(net: SuperNetwork, settings: TaskSettings) -> LMEvalEvaluator:
    """The lm-eval evaluator of ``--evaluator lm-eval:TASKS`` (``--task`` is not used by it)."""
    if settings.task is not None:
        raise LoraSearchError(f"--task {settings.task}: not used by --evaluator {settings.evaluator}; fix: drop --task "
                              "(name lm-eval task YAMLs in lm-eval:PATH instead)")
    return LMEvalEvaluator(net, parse_lm_eval(settings.evaluator), metric=settings.metric or "acc",
                           limit=settings.limit, seed=settings.seed, num_fewshot=settings.num_fewshot,
                           include=settings.lm_eval_include, batch_size=settings.batch_size or 8)


def _check_options(settings: TaskSettings) -> None:
    """Options of one evaluator given to another: a one-line error rather than silence."""
    lm_eval = parse_lm_eval(settings.evaluator) is not None
    if not lm_eval:
        for name in ("num_fewshot", "lm_eval_include"):
            if getattr(settings, name) is not None:
                raise LoraSearchError(f"--{name.replace('_', '-')}: only for --evaluator lm-eval:TASK; fix: drop it")
    if settings.metric is not None and not lm_eval and settings.evaluator != "loss":
        raise LoraSearchError(f"--metric {settings.metric}: only for --evaluator lm-eval:TASK or loss; fix: drop it")


def batching(settings: TaskSettings, device: torch.device, model: nn.Module | None = None, *,
             free_bytes: int | None = None) -> dict[str, int | None]:
    """The evaluator's batch limits: as given, else 8 sequences on the CPU (where bigger batches gain
    nothing) and a token budget on a GPU (`gpu_batch_tokens`)."""
    if settings.batch_size is not None or settings.max_batch_tokens is not None:
        return {"batch_size": settings.batch_size, "max_batch_tokens": settings.max_batch_tokens}
    if device.type != "cuda":
        return {"batch_size": 8, "max_batch_tokens": None}
    return {"batch_size": None, "max_batch_tokens": gpu_batch_tokens(device, model, free_bytes)}


def gpu_batch_tokens(device: torch.device, model: nn.Module | None, free_bytes: int | None = None) -> int:
    """Tokens per evaluation batch on a GPU, padding and per-option context copies included:

    ``min(32768, floor(0.8 * free_bytes / bytes_per_token))``

    ``free_bytes`` is the device's free memory once the model is loaded (``torch.cuda.mem_get_info``),
    ``bytes_per_token`` the key/value cache, one layer's activations and the fp32 logits of a token
    (`lorasearch.models.anatomy.bytes_per_token`); a fifth of the free memory is left to the
    allocator's fragmentation. 32,768 tokens keep a large GPU busy. ``--max-batch-tokens`` (or
    ``--batch-size``) overrides it.
    """
    if model is None:
        return GPU_BATCH_TOKENS
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    return max(1, min(GPU_BATCH_TOKENS, int(MEMORY_SHARE * free_bytes) // bytes_per_token(model)))


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
