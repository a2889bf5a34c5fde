"""Physically pruned Mode B models: the folder's layout, writing it, and loading it back.

`write_pruned_model` picks one of three layouts from the shapes the model's blocks have:

* ``stock``: every block keeps the same sizes. ``config.json`` is the base's own config class with
  the smaller ``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads`` (and an
  explicit ``head_dim``); ``AutoModelForCausalLM.from_pretrained`` loads it, and so does anything
  that reads the base family.
* ``decilm``: the sizes differ per block, in a Llama-style family the carried modeling code
  implements (Llama, Mistral, Qwen2, Phi-3; Phi-3's fused ``qkv_proj``/``gate_up_proj`` are split
  into the Llama names). ``config.json`` follows the DeciLM / Nemotron-NAS ``block_configs`` layout
  (`lorasearch.export.decilm.configuration_decilm`), the folder carries ``configuration_decilm.py``
  and ``modeling_decilm.py``, and ``auto_map`` names them, so
  ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` loads it without
  lorasearch. Where the query heads are the same in every block this is the layout vLLM's native
  ``DeciLMForCausalLM`` reads (per-block FFN width, key/value groups); per-block query heads are a
  lorasearch addition that vLLM cannot read, and the export says so.
* ``linears``: anything else (another family, a custom channel group, a RoPE that changes with the
  sequence length): the base's config with the most common sizes, and ``lorasearch_pruned.json``
  lists every linear whose shape differs; only `load_pruned` reads it.

Blocks left out (`drop_blocks`) are removed and the others renumbered before the layout is chosen,
so a subnet uniform apart from its depth is a stock model with fewer layers. Every folder holds
``lorasearch_pruned.json`` (the layout and the block shapes) and a ``README.md`` saying how to load it.

`load_pruned` builds the model on the meta device and reads the weights one tensor at a time into
it (no second copy of the checkpoint in memory), in the dtype and on the device asked for.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch
from torch import nn

from ..errors import ExportError
from ..io import atomic_write_json, atomic_write_text
from ..models.loading import resolve_device, save_model_folder, torch_dtype
from .decilm import configuration_decilm, modeling_decilm
from .decilm.configuration_decilm import STATIC_ROPE_TYPES, DeciLMConfig
from .decilm.modeling_decilm import DeciLMForCausalLM, LoraSearchDeciLMForCausalLM
from .safetensors_stream import read_tensors

PRUNED_FILE = "lorasearch_pruned.json"
README_FILE = "README.md"
DECILM_FAMILIES = ("llama", "mistral", "qwen2", "phi3")
LAYOUTS = ("stock", "decilm", "linears")


@dataclass(frozen=True)
class BlockShape:
    """What one decoder block keeps: query heads, key/value heads, MLP width."""

    heads: int
    kv_heads: int
    intermediate: int


@dataclass(frozen=True)
class PrunedLayout:
    """The layout `write_pruned_model` chose, and in one line why when it is not the best one."""

    layout: str
    blocks: tuple[BlockShape, ...] | None
    dropped_blocks: tuple[int, ...]
    linears: Mapping[str, Mapping[str, Any]]
    vllm_reads_it: bool
    note: str | None

    @property
    def loader(self) -> str:
        return {
            "stock": "transformers.AutoModelForCausalLM.from_pretrained(path)",
            "decilm": "transformers.AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)",
            "linears": "lorasearch.load_pruned(path)",
        }[self.layout]

    def document(self) -> dict[str, Any]:
        """``lorasearch_pruned.json``."""
        return {
            "format": "lorasearch-pruned",
            "version": 2,
            "layout": self.layout,
            "stock": self.layout == "stock",
            "loader": self.loader,
            "vllm_reads_it": self.vllm_reads_it,
            "note": self.note,
            "dropped_blocks": list(self.dropped_blocks),
            "blocks": [asdict(b) for b in self.blocks] if self.blocks else None,
            "linears": dict(self.linears),
        }


# ------------------------------------------------------------------------------- block shapes
def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a causal LM (``model.model.layers``)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ExportError(f"--format pruned: {type(model).__name__} has no model.layers; only decoder-only "
                          "models with a model.layers list can be pruned")
    return layers


def drop_blocks(model: nn.Module, dropped: Iterable[int]) -> tuple[int, ...]:
    """Remove the decoder blocks ``dropped`` from ``model`` in place and renumber the others.

    ``config.num_hidden_layers`` (and ``layer_types`` where the config has them) follow; so does
    every ``layer_idx`` the blocks keep for the cache. Returns the sorted indices removed.
    """
    layers = decoder_layers(model)
    gone = tuple(sorted({int(i) for i in dropped}))
    bad = [i for i in gone if not 0 <= i < len(layers)]
    if bad or len(gone) >= len(layers):
        raise ExportError(f"--format pruned: cannot leave out blocks {list(gone)} of a model with {len(layers)} "
                          f"blocks; fix: indices in 0..{len(layers) - 1}, at least one block kept")
    if not gone:
        return gone
    kept = [layer for i, layer in enumerate(layers) if i not in gone]
    for new, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new
    model.model.layers = nn.ModuleList(kept)
    config = model.config
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [t for i, t in enumerate(config.layer_types) if i not in gone]
    config.num_hidden_layers = len(kept)
    return gone


def drop_full_model_blocks(model: nn.Module, dropped: Iterable[int], already_dropped: Iterable[int]) -> tuple[int, ...]:
    """`drop_blocks` for positions in the full model when ``model`` already lacks ``already_dropped``
    of its blocks. Returns every block left out, by its position in the full model."""
    gone = sorted({int(i) for i in already_dropped})
    if not gone:
        return drop_blocks(model, dropped)
    kept = [i for i in range(len(decoder_layers(model)) + len(gone)) if i not in gone]
    wanted = {int(i) for i in dropped}
    outside = sorted(wanted - set(kept) - set(gone))
    if outside:
        raise ExportError(f"--format pruned: cannot leave out blocks {outside} of a model with {len(kept) + len(gone)} "
                          f"blocks; fix: indices in 0..{len(kept) + len(gone) - 1}")
    here = drop_blocks(model, [kept.index(i) for i in wanted if i in kept])
    return tuple(sorted({*gone, *(kept[j] for j in here)}))


def block_shapes(model: nn.Module) -> list[BlockShape] | None:
    """Each block's heads, key/value heads and MLP width, or None when a linear's shape fits no block shape."""
    head_dim = _head_dim(model.config)
    hidden = model.config.hidden_size
    shapes = []
    for layer in decoder_layers(model):
        shape = _block_shape(layer, head_dim, hidden)
        if shape is None:
            return None
        shapes.append(shape)
    return shapes


def _head_dim(config: Any) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def _linear(module: nn.Module, path: str) -> nn.Linear | None:
    try:
        found = module.get_submodule(path)
    except AttributeError:
        return None
    return found if isinstance(found, nn.Linear) else None


def _block_shape(layer: nn.Module, head_dim: int, hidden: int) -> BlockShape | None:
    o = _linear(layer, "self_attn.o_proj")
    down = _linear(layer, "mlp.down_proj")
    if o is None or down is None or o.in_features % head_dim or o.out_features != hidden or down.out_features != hidden:
        return None
    heads, width = o.in_features // head_dim, down.in_features
    q, k, v = (_linear(layer, f"self_attn.{n}_proj") for n in "qkv")
    qkv = _linear(layer, "self_attn.qkv_proj")
    if q is not None and k is not None and v is not None:
        kv_rows, fits = k.out_features, q.out_features == heads * head_dim and v.out_features == k.out_features
    elif qkv is not None:
        kv_rows = (qkv.out_features - heads * head_dim) // 2
        fits = qkv.out_features == heads * head_dim + 2 * kv_rows
    else:
        return None
    gate, up = _linear(layer, "mlp.gate_proj"), _linear(layer, "mlp.up_proj")
    gate_up = _linear(layer, "mlp.gate_up_proj")
    if gate is not None and up is not None:
        fits = fits and gate.out_features == up.out_features == width
    elif gate_up is not None:
        fits = fits and gate_up.out_features == 2 * width
    else:
        return None
    kv_heads = kv_rows // head_dim
    if not fits or kv_rows % head_dim or kv_heads < 1 or heads % kv_heads:
        return None
    return BlockShape(heads, kv_heads, width)


# ------------------------------------------------------------------------------- stock layout
def fit_stock_config(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Set the model's config to its most common per-layer sizes; return the linears it cannot express."""
    config = model.config
    head_dim = _head_dim(config)
    shapes = block_shapes(model)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if shapes:
        sizes = {
            "intermediate_size": _mode(s.intermediate for s in shapes),
            "num_attention_heads": _mode(s.heads for s in shapes),
            "num_key_value_heads": _mode(s.kv_heads for s in shapes),
        }
    else:
        sizes = {
            "intermediate_size": _mode(m.out_features for n, m in linears.items() if n.endswith("mlp.up_proj")),
            "num_attention_heads": _mode(m.out_features // head_dim for n, m in linears.items()
                                         if n.endswith("self_attn.q_proj")),
            "num_key_value_heads": _mode(m.out_features // head_dim for n, m in linears.items()
                                         if n.endswith("self_attn.k_proj")),
        }
    for key, value in sizes.items():
        if value is not None:
            setattr(config, key, value)
    config.head_dim = head_dim
    return _unexpressed_linears(model, linears)


def _mode(values: Iterator[int]) -> int | None:
    counts = Counter(values)
    return max(counts, key=lambda v: (counts[v], v)) if counts else None


def _unexpressed_linears(model: nn.Module, linears: Mapping[str, nn.Linear]) -> dict[str, dict[str, Any]]:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        reference = AutoModelForCausalLM.from_config(copy.deepcopy(model.config))
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    actual = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    odd = {}
    for key in sorted(set(expected) | set(actual)):
        if expected.get(key) == actual.get(key):
            continue
        module = key.rsplit(".", 1)[0]
        if module not in linears or key not in expected or key not in actual:
            raise ExportError(
                f"--format pruned: {key} has shape {actual.get(key)} but the config gives {expected.get(key)}; "
                "only linear layers can be pruned"
            )
        layer = linears[module]
        odd[module] = {"in": layer.in_features, "out": layer.out_features, "bias": layer.bias is not None}
    return odd


# ------------------------------------------------------------------------------ decilm layout
def decilm_problem(model: nn.Module) -> str | None:
    """Why the carried DeciLM modeling code cannot express ``model`` (None when it can)."""
    config = model.config
    family = getattr(config, "model_type", None)
    if family not in DECILM_FAMILIES:
        return f"model type {family!r} has no per-block modeling code (it has for {', '.join(DECILM_FAMILIES)})"
    rope = dict(getattr(config, "rope_parameters", None) or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in STATIC_ROPE_TYPES:
        return f"its RoPE type {rope_type!r} changes with the sequence length, which the per-block code does not do"
    types = set(getattr(config, "layer_types", None) or ["full_attention"])
    if types != {"full_attention"} and not (family == "mistral" and types <= {"full_attention", "sliding_attention"}):
        return f"its blocks mix attention types {sorted(types)}, which the per-block code does not do"
    if block_shapes(model) is None:
        return "some linear's shape is not a block's heads or MLP width (a custom channel group)"
    return None


def decilm_config(model: nn.Module, shapes: list[BlockShape]) -> DeciLMConfig:
    """The DeciLM / Nemotron-NAS config of ``model`` with the given block shapes (see the module docstring)."""
    source = model.config
    first = decoder_layers(model)[0]
    heads = {s.heads for s in shapes}
    uniform_heads = len(heads) == 1
    q = _linear(first, "self_attn.q_proj") or _linear(first, "self_attn.qkv_proj")
    o, down = _linear(first, "self_attn.o_proj"), _linear(first, "mlp.down_proj")
    blocks = []
    for s in shapes:
        attention = {"no_op": False, "replace_with_linear": False, "n_heads_in_group": s.heads // s.kv_heads}
        if not uniform_heads:
            attention["num_attention_heads"] = s.heads
        ffn = {"no_op": False, "replace_with_linear": False, "intermediate_size": s.intermediate}
        blocks.append({"attention": attention, "ffn": ffn})
    window = getattr(source, "sliding_window", None)
    if source.model_type == "qwen2" and not getattr(source, "use_sliding_window", False):
        window = None
    config = DeciLMConfig(
        vocab_size=source.vocab_size,
        hidden_size=source.hidden_size,
        num_hidden_layers=len(shapes),
        num_attention_heads=heads.pop() if uniform_heads else max(s.heads for s in shapes),
        head_dim=_head_dim(source),
        hidden_act=source.hidden_act,
        max_position_embeddings=source.max_position_embeddings,
        initializer_range=getattr(source, "initializer_range", 0.02),
        rms_norm_eps=source.rms_norm_eps,
        rope_parameters=dict(source.rope_parameters),
        attention_bias=o.bias is not None,
        qkv_bias=q.bias is not None,
        mlp_bias=down.bias is not None,
        sliding_window=window,
        block_configs=blocks,
        tie_word_embeddings=bool(getattr(source, "tie_word_embeddings", False)),
        pad_token_id=getattr(source, "pad_token_id", None),
        bos_token_id=getattr(source, "bos_token_id", None),
        eos_token_id=getattr(source, "eos_token_id", None),
    )
    model_class = DeciLMForCausalLM if uniform_heads else LoraSearchDeciLMForCausalLM
    config.architectures = [model_class.__name__]
    config.auto_map = {
        "AutoConfig": f"{Path(configuration_decilm.__file__).stem}.{DeciLMConfig.__name__}",
        "AutoModelForCausalLM": f"{Path(modeling_decilm.__file__).stem}.{model_class.__name__}",
    }
    return config


def decilm_state_dict(model: nn.Module, shapes: list[BlockShape]) -> dict[str, torch.Tensor]:
    """``model``'s tensors under the Llama names (Phi-3's fused projections split into q/k/v and gate/up)."""
    head_dim = _head_dim(model.config)
    state = dict(model.state_dict())
    for index, shape in enumerate(shapes):
        prefix = f"model.layers.{index}."
        qkv = state.pop(prefix + "self_attn.qkv_proj.weight", None)
        if qkv is not None:
            rows = [shape.heads * head_dim, shape.kv_heads * head_dim, shape.kv_heads * head_dim]
            for name, part in zip("qkv", qkv.split(rows)):
                state[f"{prefix}self_attn.{name}_proj.weight"] = part.clone()
        gate_up = state.pop(prefix + "mlp.gate_up_proj.weight", None)
        if gate_up is not None:
            gate, up = gate_up.split(shape.intermediate)
            state[prefix + "mlp.gate_proj.weight"], state[prefix + "mlp.up_proj.weight"] = gate.clone(), up.clone()
    return state


def _write_decilm(folder: Path, model: nn.Module, tokenizer: Any, shapes: list[BlockShape]) -> None:
    config = decilm_config(model, shapes)
    config._attn_implementation = "eager"
    model_class = LoraSearchDeciLMForCausalLM if "num_attention_heads" in config.block_configs[0].attention \
        else DeciLMForCausalLM
    with torch.device("meta"):
        deci = model_class(config)  # save_pretrained writes its class name into architectures
    state = decilm_state_dict(model, shapes)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    deci.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        deci.lm_head.weight = deci.model.embed_tokens.weight
    missing = [n for n, p in deci.named_parameters() if p.is_meta]
    if missing:
        raise ExportError(f"--format pruned: {missing[0]} has no tensor in the pruned model; this is a bug, "
                          "please report it with the space file")
    deci.save_pretrained(folder)
    for module in (configuration_decilm, modeling_decilm):
        shutil.copyfile(module.__file__, folder / Path(module.__file__).name)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


# ----------------------------------------------------------------------------------- writing
def plan_layout(model: nn.Module, dropped: tuple[int, ...] = ()) -> PrunedLayout:
    """Choose the layout of ``model`` (blocks already dropped); sets its config to the most common sizes."""
    shapes = block_shapes(model)
    problem = decilm_problem(model)
    linears = fit_stock_config(model)
    blocks = tuple(shapes) if shapes else None
    if not linears:
        return PrunedLayout("stock", blocks, dropped, {}, True, None)
    if problem is None:
        per_block_heads = len({s.heads for s in shapes}) > 1
        note = ("the query heads differ per block, which vLLM's DeciLM layout cannot express (it keeps them "
                "global): the folder loads in transformers with trust_remote_code=True and in lm-eval, not in vLLM"
                if per_block_heads else None)
        return PrunedLayout("decilm", blocks, dropped, {}, not per_block_heads, note)
    note = (f"the per-block sizes cannot be written in a layout that stock tools load: {problem}; "
            "the folder loads with lorasearch.load_pruned only")
    return PrunedLayout("linears", blocks, dropped, linears, False, note)


def write_pruned_model(folder: str | Path, model: nn.Module, tokenizer: Any = None, *,
                       dropped_blocks: Iterable[int] = (), already_dropped: Iterable[int] = ()) -> PrunedLayout:
    """Write a physically pruned plain model (``nn.Linear`` layers of any sizes) into ``folder``.

    ``model`` is changed in place (blocks dropped, config set); pass a copy. ``already_dropped``
    names the positions, in the full model, of blocks ``model`` no longer holds (skipped by elastic
    depth); ``dropped_blocks`` are positions in the full model too. Returns the layout chosen; its
    ``note`` says in one line why the folder is not a stock or vLLM-readable one.
    """
    folder = Path(folder)
    dropped = drop_full_model_blocks(model, dropped_blocks, already_dropped)
    plan = plan_layout(model, dropped)
    if plan.layout == "decilm":
        _write_decilm(folder, model, tokenizer, list(plan.blocks or ()))
    else:
        save_model_folder(folder, model, tokenizer)
    atomic_write_json(folder / PRUNED_FILE, plan.document())
    atomic_write_text(folder / README_FILE, folder_readme(plan))
    return plan


def folder_readme(plan: PrunedLayout) -> str:
    """The ``README.md`` of a pruned folder: what it is, and the line that loads it in each tool."""
    lines = ["# A physically pruned model exported by lorasearch", ""]
    if plan.blocks:
        widths = sorted({b.intermediate for b in plan.blocks})
        heads = sorted({(b.heads, b.kv_heads) for b in plan.blocks})
        lines += [f"{len(plan.blocks)} decoder blocks; MLP widths {widths}; (query heads, key/value heads) "
                  f"{heads}." + (f" Blocks {list(plan.dropped_blocks)} of the original model are left out and "
                                 "the others renumbered." if plan.dropped_blocks else ""), ""]
    if plan.layout == "stock":
        lines += ["Every block has the same shape, so `config.json` is the base family's own config.", "",
                  "- transformers: `AutoModelForCausalLM.from_pretrained(path)`",
                  "- vLLM: `vllm serve path` (the base family's own loader)",
                  "- lm-eval: `lm_eval --model hf --model_args pretrained=path`"]
    elif plan.layout == "decilm":
        lines += ["The blocks differ in shape. `config.json` follows the DeciLM / Nemotron-NAS `block_configs` "
                  "layout, and the modeling code is in this folder (`configuration_decilm.py`, "
                  "`modeling_decilm.py`, named by `auto_map`; they import only torch and transformers).", "",
                  "- transformers: `AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`",
                  "- lm-eval: `lm_eval --model hf --model_args pretrained=path,trust_remote_code=True`"]
        if plan.vllm_reads_it:
            lines.append("- vLLM: `vllm serve path --trust-remote-code` (its native `DeciLMForCausalLM`; "
                         "read from vLLM's source, not run by lorasearch)")
        else:
            lines.append(f"- vLLM: not supported: {plan.note}")
    else:
        lines += [f"Not loadable by stock tools: {plan.note}.", "",
                  "- lorasearch: `from lorasearch import load_pruned; model = load_pruned(path)`"]
    lines += ["", "`lorasearch_pruned.json` records the layout and each block's shape.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- loading
def load_pruned(
    path: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
) -> nn.Module:
    """Load a model written by `export_pruned` (or any ``save_pretrained`` folder of a causal LM).

    The model is built on the meta device from ``config.json`` (the DeciLM layout from lorasearch's
    own copy of the modeling code, never from the folder's; the linears listed in
    ``lorasearch_pruned.json`` replaced by smaller ones), then the weights are read one tensor at
    a time, cast to ``dtype`` (default: the checkpoint's) and moved to ``device`` (default: the
    CPU; ``auto`` is CUDA when present), so host memory holds the checkpoint's bytes once.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    dtype, device = torch_dtype(dtype), resolve_device(device or "cpu")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ExportError(f"{config_file}: missing; fix: point at a folder written by export --format pruned")
    raw = json.loads(config_file.read_text())
    layout = json.loads((path / PRUNED_FILE).read_text()) if (path / PRUNED_FILE).is_file() else {}
    if raw.get("model_type") == DeciLMConfig.model_type and "block_configs" in raw:
        config = DeciLMConfig.from_pretrained(path)
        config._attn_implementation = attn_implementation or "sdpa"
        with torch.device("meta"):
            model = DeciLMForCausalLM(config)
    else:
        config = AutoConfig.from_pretrained(path)
        kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, **kwargs)
            for name, shape in (layout.get("linears") or {}).items():
                model.set_submodule(name, nn.Linear(int(shape["in"]), int(shape["out"]), bias=bool(shape["bias"])))
    _assign_weights(model, path, dtype, device)
    _load_generation_config(model, path)
    return model.eval()


def _assign_weights(model: nn.Module, path: Path, dtype: torch.dtype | None, device: torch.device) -> None:
    """Read every tensor of the folder into ``model`` (built on meta), then tie, rebuild buffers, check."""
    for name, tensor in read_tensors(_weight_files(path)):
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        _assign(model, name, tensor.to(device), path)
    model.tie_weights()
    _rebuild_meta_buffers(model, device)
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise ExportError(f"{path}: tensor {missing[0]} is missing; fix: re-export the pruned model")


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    names = ["model.safetensors"]
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    files = [path / n for n in names]
    for file in files:
        if not file.is_file():
            raise ExportError(f"{file}: missing; fix: re-export the pruned model")
    return files


def _assign(model: nn.Module, name: str, tensor: torch.Tensor, path: Path) -> None:
    owner, _, leaf = name.rpartition(".")
    try:
        module = model.get_submodule(owner)
    except AttributeError:
        module = None
    if module is not None and leaf in module._parameters:
        current = module._parameters[leaf]
        if tuple(current.shape) != tuple(tensor.shape):
            raise ExportError(f"{path}: tensor {name} has shape {tuple(tensor.shape)} but the config gives "
                              f"{tuple(current.shape)}; fix: re-export the pruned model")
        module._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)
    elif module is not None and leaf in module._buffers:
        module._buffers[leaf] = tensor
    else:
        raise ExportError(f"{path}: unexpected tensor {name}; fix: re-export the pruned model")


def _rebuild_meta_buffers(model: nn.Module, device: torch.device) -> None:
    """Buffers computed at construction (rotary frequencies) are still on meta: build those modules again."""
    for name, module in list(model.named_modules()):
        if not any(b is not None and b.is_meta for b in module.buffers(recurse=False)):
            continue
        if not type(module).__name__.endswith("RotaryEmbedding"):
            raise ExportError(f"--format pruned: cannot rebuild the buffers of {name} ({type(module).__name__}); "
                              "fix: load the folder with transformers' from_pretrained")
        with torch.device(device):
            rebuilt = type(module)(config=model.config)
        model.set_submodule(name, rebuilt)


def _load_generation_config(model: nn.Module, path: Path) -> None:
    if (path / "generation_config.json").is_file():
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(path)


def checkpoint_bytes(path: str | Path) -> int:
    """The bytes of a folder's weight files."""
    return sum(f.stat().st_size for f in _weight_files(Path(path)))


__all__ = [
    "BlockShape", "DECILM_FAMILIES", "LAYOUTS", "PRUNED_FILE", "PrunedLayout", "README_FILE", "block_shapes",
    "checkpoint_bytes", "decilm_config", "decilm_problem", "decilm_state_dict", "drop_blocks", "fit_stock_config",
    "folder_readme", "load_pruned", "plan_layout", "write_pruned_model",
]
