"""Reading and writing LoRA adapters in PEFT's folder format.

A folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` whose keys look like
``base_model.model.<module>.lora_A.weight``. Pickle-based ``adapter_model.bin`` files are read
only through ``torch.load(weights_only=True)``, with a warning.

Every tensor is accounted for: LoRA pairs of linear layers, and the whole weights of the modules
that ``modules_to_save`` names (a trained ``lm_head`` or ``embed_tokens``, saved as
``base_model.model.<module>.<parameter>``), which replace the base's. Anything else
(``lora_embedding_*``, DoRA magnitudes, a ``lora_B`` bias, trainable tokens, ...) and the config
fields that change what PEFT computes in ways lorasearch does not reproduce are refused in one line
naming the key. ``target_modules``, ``exclude_modules``, ``layers_to_transform`` and
``layers_pattern`` only decide which modules got adapters: the tensors themselves say that here.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file

from ..errors import AdapterError, LoraSearchWarning
from ..io import atomic_write_json, parse_json, read_text

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"
PREFIX = "base_model.model."
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<part>lora_[AB])(?:\.[^.]+)?\.weight$")
# A modules_to_save tensor: PEFT saves ``<module>.<parameter>``; older files kept ``modules_to_save.<adapter>``.
_SAVED_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+?)(?:\.modules_to_save\.[^.]+)?\.(?P<param>[^.]+)$")
# LoraConfig fields whose non-default values change the computation in ways lorasearch does not reproduce.
UNSUPPORTED_FIELDS = {
    "use_dora": "DoRA magnitudes", "fan_in_fan_out": "transposed (Conv1D) weights", "lora_bias": "a bias on lora_B",
    "layer_replication": "replicated decoder layers", "use_qalora": "QA-LoRA input pooling",
    "target_parameters": "LoRA on nn.Parameter targets", "trainable_token_indices": "trainable token rows",
    "alora_invocation_tokens": "activated LoRA", "kasa_config": "KaSA singular values",
    "monteclora_config": "MonteCLoRA sampling", "use_bdlora": "block-diagonal LoRA", "arrow_config": "Arrow routing",
    "megatron_config": "Megatron parallel layers",
}
# init_lora_weights values that leave the base as it was (the others rewrite its weights: PiSSA, OLoRA, ...).
PLAIN_INITS = (True, False, None, "gaussian", "eva", "orthogonal")


@dataclass(frozen=True)
class AdapterModule:
    """One module's LoRA tensors: ``A`` is (r, in), ``B`` is (out, r); ``alpha`` is its alpha."""

    A: torch.Tensor
    B: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])


@dataclass(frozen=True)
class AdapterFolder:
    """A PEFT LoRA adapter read from disk: its config and its tensors per module name."""

    path: Path
    config: dict[str, Any]
    modules: dict[str, AdapterModule]
    weights_file: Path
    saved: dict[str, torch.Tensor] = field(default_factory=dict)
    """``modules_to_save`` weights by full parameter name (``lm_head.weight``): they replace the base's."""

    @property
    def use_rslora(self) -> bool:
        return bool(self.config.get("use_rslora", False))

    @property
    def dropout(self) -> float:
        return float(self.config.get("lora_dropout", 0.0) or 0.0)


def pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    """PEFT's rule for ``rank_pattern``/``alpha_pattern``: the first key matching the name's end."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_adapter(path: str | Path) -> AdapterFolder:
    """Read a PEFT LoRA folder; raise `AdapterError` naming the file and the fix when it is unusable."""
    path = Path(path)
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        raise AdapterError(f"{config_file}: missing; fix: point --adapter at a PEFT LoRA folder")
    config = parse_json(read_text(config_file, AdapterError, "adapter config"), str(config_file), AdapterError)
    if not isinstance(config, dict):
        raise AdapterError(f"{config_file}: a JSON {type(config).__name__}, not an object; fix: re-save the adapter")
    _check_config(config, config_file)
    weights_file, tensors = _read_tensors(path)
    saved = _saved_tensors(tensors, config)
    modules = _group_tensors({k: v for k, v in tensors.items() if k not in saved}, config, weights_file)
    _check_ranks(modules, config, config_file)
    return AdapterFolder(path, config, modules, weights_file, {saved[k]: tensors[k] for k in saved})


def _check_config(config: dict[str, Any], file: Path) -> None:
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterError(f"{file}: peft_type: {config.get('peft_type')!r} is not LORA; fix: use a LoRA adapter")
    for key, what in UNSUPPORTED_FIELDS.items():
        if config.get(key) not in (None, False, {}, []):
            raise AdapterError(f"{file}: {key}: {config[key]!r} ({what}) is not supported by lorasearch; "
                               f"fix: use a plain LoRA adapter (leave {key} unset)")
    init = config.get("init_lora_weights", True)
    if init not in PLAIN_INITS:
        raise AdapterError(f"{file}: init_lora_weights: {init!r} rewrote the base's weights, so the adapter only fits "
                           "that rewritten base; fix: save it as a plain LoRA (PEFT's path_initial_model_for_weight_conversion)")
    if config.get("bias", "none") != "none":
        raise AdapterError(f"{file}: bias: {config['bias']!r} is not supported; fix: train with bias='none'")
    if not isinstance(config.get("r", 8), int) or config.get("r", 8) < 1:
        raise AdapterError(f"{file}: r: {config.get('r')!r} is not a positive integer; fix: set r to the adapter's rank")


def _read_tensors(path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    safe, pickled = path / WEIGHTS_NAME, path / PICKLE_NAME
    if safe.is_file():
        try:
            return safe, load_file(str(safe))
        except Exception as exc:  # safetensors raises several types for corrupt files
            raise AdapterError(f"{safe}: unreadable safetensors file ({_first_line(exc)}); fix: re-save the adapter") from None
    if pickled.is_file():
        warnings.warn(LoraSearchWarning(f"{pickled}: pickle-based weights; loading with torch.load(weights_only=True)"),
                      stacklevel=3)
        try:
            return pickled, torch.load(pickled, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise AdapterError(f"{pickled}: refused or unreadable ({_first_line(exc)}); fix: convert it to safetensors") from None
    raise AdapterError(f"{path}: no {WEIGHTS_NAME} (or {PICKLE_NAME}); fix: point --adapter at a PEFT LoRA folder")


def _saved_tensors(tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, str]:
    """File key -> full parameter name of every tensor of a module that ``modules_to_save`` names."""
    names = config.get("modules_to_save") or []
    if isinstance(names, str):
        names = [names]
    found = {}
    for key in tensors:
        m = _SAVED_KEY.match(key)
        if _KEY.match(key) or m is None or "lora_" in key:
            continue
        if any(re.fullmatch(rf"(.*\.)?{re.escape(str(n))}", m["module"]) for n in names):
            found[key] = f"{m['module']}.{m['param']}"
    return found


def _group_tensors(tensors: dict[str, torch.Tensor], config: dict[str, Any], file: Path) -> dict[str, AdapterModule]:
    parts: dict[str, dict[str, torch.Tensor]] = {}
    if not any(_KEY.match(key) for key in tensors):
        raise AdapterError(f"{file}: holds no lora_A/lora_B tensors; fix: check that this is a LoRA adapter")
    unknown = sorted((k for k in tensors if not _KEY.match(k)), key=lambda k: "lora_" not in k)  # LoRA-like first
    if unknown:
        raise AdapterError(
            f"{file}: tensor {unknown[0]} is neither a lora_A/lora_B weight of a linear layer nor a weight of a module "
            "in modules_to_save, so lorasearch cannot represent it; fix: use a plain LoRA adapter on linear layers"
        )
    for key, tensor in tensors.items():
        m = _KEY.match(key)
        parts.setdefault(m["module"], {})[m["part"]] = tensor
    alpha, alpha_pattern = float(config.get("lora_alpha", 8)), config.get("alpha_pattern") or {}
    modules = {}
    for name, pair in parts.items():
        if set(pair) != {"lora_A", "lora_B"}:
            missing = ({"lora_A", "lora_B"} - set(pair)).pop()
            raise AdapterError(f"{file}: {PREFIX}{name}.{missing}.weight is missing; fix: re-save the adapter")
        a, b = pair["lora_A"], pair["lora_B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise AdapterError(
                f"{file}: {PREFIX}{name}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not form a "
                "rank-r pair (r, in) and (out, r); fix: re-save the adapter"
            )
        modules[name] = AdapterModule(a, b, float(pattern_value(alpha_pattern, name, alpha)))
    return modules


def _check_ranks(modules: Mapping[str, AdapterModule], config: Mapping[str, Any], file: Path) -> None:
    """Refuse a config whose ``r`` (or ``rank_pattern``) disagrees with the tensors, as stock PEFT does:
    the scale ``alpha / r`` would be computed from a rank the tensors do not have."""
    r, patterns = config.get("r", 8), config.get("rank_pattern") or {}
    if not isinstance(patterns, Mapping):
        raise AdapterError(f"{file}: rank_pattern: must be an object of module pattern -> rank; fix: re-save the adapter")
    for name, module in modules.items():
        declared = pattern_value(patterns, name, r)
        if declared != module.rank:
            key = "rank_pattern" if declared != r else "r"
            raise AdapterError(
                f"{file}: {key} says rank {declared} for {name}, but its lora_A/lora_B tensors have rank {module.rank}; "
                f"fix: set {key} to {module.rank} (or re-save the adapter)"
            )


def write_adapter(
    path: str | Path,
    modules: Mapping[str, AdapterModule],
    *,
    base_model: str | None,
    use_rslora: bool = False,
    dropout: float = 0.0,
    saved: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write a PEFT LoRA folder that stock ``PeftModel.from_pretrained`` loads.

    ``r`` and ``lora_alpha`` are the most common rank and alpha; every module that differs gets a
    fully qualified, regex-escaped key in ``rank_pattern``/``alpha_pattern`` that matches only it.
    ``saved`` (full parameter name -> tensor) are whole module weights, written as PEFT writes
    ``modules_to_save`` (which lists their modules by full name).
    """
    saved = dict(saved or {})
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    ranks = [m.rank for m in modules.values()]
    alphas = [m.alpha for m in modules.values()]
    r, alpha = max(set(ranks), key=ranks.count), max(set(alphas), key=alphas.count)
    rank_pattern = {_exact(n): m.rank for n, m in modules.items() if m.rank != r}
    alpha_pattern = {_exact(n): m.alpha for n, m in modules.items() if m.alpha != alpha}
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name(base_model),
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "use_rslora": use_rslora,
        "bias": "none",
        "fan_in_fan_out": False,
        # Full names: leaf names (q_proj) would also give PEFT's fresh no-op adapters to modules not saved.
        "target_modules": sorted(modules),
        "exclude_modules": None,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": sorted({name.rpartition(".")[0] for name in saved}) or None,
    }
    tensors = {f"{PREFIX}{name}": t.detach().contiguous().cpu() for name, t in saved.items()}
    for name, m in modules.items():
        tensors[f"{PREFIX}{name}.lora_A.weight"] = m.A.detach().contiguous().cpu()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = m.B.detach().contiguous().cpu()
    tmp = path / f".{WEIGHTS_NAME}.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(path / WEIGHTS_NAME)
    atomic_write_json(path / CONFIG_NAME, config)
    return path


def base_model_name(spec: str | None) -> str | None:
    """``base_model_name_or_path`` for a model spec: a local folder or file as an absolute path (PEFT's
    ``AutoPeftModelForCausalLM`` then finds it from any working directory), a name (a hub name,
    ``default``, ``tiny-llama``) as it is."""
    if spec and Path(spec).exists():
        return str(Path(spec).resolve())
    return spec


def _exact(module: str) -> str:
    """A pattern key that PEFT's ``(.*\\.)?(key)$`` match accepts for this module name only."""
    return re.escape(module)


def _first_line(exc: Exception) -> str:
    """The first line of an exception's text, without terminal colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__
