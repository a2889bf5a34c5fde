"""Export a chosen subnet: its config, a stock-PEFT sub-adapter, a merged model, or a pruned model.

Four formats, each written into a new folder (built in a temporary folder beside it, then renamed,
so a crash leaves no half-written export; an existing folder is refused):

* ``config``: ``subnet.json``: the choice per group and per gene, the resolved module sizes, the
  objectives measured in the search, and where it came from (run, space, adapter, model).
* ``peft``: a LoRA sub-adapter that *unpatched* ``PeftModel.from_pretrained`` loads. Each module
  keeps ``lora_A[:r']`` and ``lora_B[:, :r']``; ``rank_pattern``/``alpha_pattern`` carry one
  fully qualified, regex-escaped key per module with ``alpha' = s * r'`` (rsLoRA: ``s * sqrt(r')``),
  ``s`` being the training scale ``alpha / r_max``, so PEFT's ``alpha' / r'`` equals ``s``.
  ``target_modules`` lists the kept modules by full name, so modules at rank 0 are absent.
  Mode B widths cannot be expressed by PEFT: a config that shrinks a width is refused. A reordered
  network (`lorasearch.train.reorder`) writes its sub-adapter in the base's original channel order
  (``lora_B`` rows and ``lora_A`` columns inverse-permuted), so it applies to the unpermuted base.
  SparsePEFT and QA-SparsePEFT adapters are refused (stock PEFT would apply their delta without the
  mask and off the INT grid): their subnet exports as ``merged``. The ``modules_to_save`` weights of
  a loaded adapter are written as PEFT writes them (every other format has them in the model).
* ``merged``: the active adapters folded into the base weights, saved with ``save_pretrained``
  (and the tokenizer); ``AutoModelForCausalLM.from_pretrained`` loads it. Full widths only.
  ``subnet.json`` records the share of zero decoder weights before and after merging: SparsePEFT and
  QA-SparsePEFT keep a sparse base's zeros, dense adapters fill them (with a warning). A
  reordered network's merged (and pruned) model keeps the reordered channels: the same function,
  the weights' rows and columns in importance order.
* ``pruned`` (Mode B): a physically smaller model: MLP intermediate channels and attention heads
  removed, and the decoder blocks the config skips (or ``dropped_blocks`` names) left out, the others
  renumbered, adapters merged. When every block keeps
  the same sizes, ``config.json`` is a stock config (smaller ``intermediate_size``,
  ``num_attention_heads``, ``num_key_value_heads``, with an explicit ``head_dim``) and
  ``AutoModelForCausalLM.from_pretrained`` loads it. When sizes differ per block, ``config.json``
  follows the DeciLM / Nemotron-NAS ``block_configs`` layout that vLLM reads, with the modeling code
  in the folder (``from_pretrained(path, trust_remote_code=True)``); per-block query heads are a
  lorasearch addition that vLLM cannot read. What neither can express loads with `load_pruned`
  only (`lorasearch.export.pruned` has the rules). Every ``pruned`` folder holds
  ``lorasearch_pruned.json`` and a ``README.md`` with the line that loads it in each tool.

Picking the subnet of a search is `lorasearch.results.pick.pick_config`; exporting from a run directory
is `lorasearch.runs.export_run`.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import nn

from ..compress.adapter_modes import check_mergeable, check_peft_exportable, merge_sparsity, save_merged_model
from ..errors import ExportError, LoraSearchWarning
from ..io import atomic_write_json, refuse_existing, staged
from ..models.loading import forget_dequantized_gguf
from ..network.depth import drop_skipped_blocks
from ..network.elastic import ElasticLoRALinear
from ..network.peft_format import AdapterModule, write_adapter
from ..network.permutation import unpermute_adapter
from ..network.supernet import SuperNetwork
from ..space import SearchSpace
from ..version import __version__
from .pruned import PRUNED_FILE, decoder_layers, load_pruned, write_pruned_model

FORMATS = ("config", "peft", "merged", "pruned")
Provenance = Optional[Mapping[str, Any]]  # where the subnet came from: run, pick, eval_id, model, ...
Objectives = Optional[Mapping[str, float]]  # what the search measured for it
SUBNET_FILE = "subnet.json"

__all__ = [
    "EXPORTERS", "FORMATS", "PRUNED_FILE", "SUBNET_FILE", "ExportError", "export_config", "export_merged",
    "export_peft", "export_pruned", "load_pruned", "merged_copy", "module_sizes", "sub_adapter", "subnet_document",
]


# --------------------------------------------------------------------------------- subnet.json
def subnet_document(
    space: SearchSpace,
    config: Mapping[str, Any],
    *,
    net: SuperNetwork | None = None,
    objectives: Mapping[str, float] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What ``subnet.json`` holds: the config, the choice per group, sizes, objectives, provenance."""
    genes = space.encode(config)
    groups = {
        g.name: {"kind": g.kind, "values": [config[x.key] for x in space.genes if x.group == g.name]}
        for g in space.groups
    }
    document: dict[str, Any] = {
        "format": "lorasearch-subnet",
        "version": 1,
        "space_name": space.name,
        "mode": space.mode,
        "config": {key: config[key] for key in space.keys},
        "genes": [int(g) for g in genes],
        "groups": groups,
        "objectives": dict(objectives or {}),
        "provenance": {**_stamp(), **dict(provenance or {})},
        "space": space.to_dict(),
    }
    if net is not None:
        document["modules"] = module_sizes(net, config)
        if net.blocks:
            skipped = set(net.skipped_blocks(config))
            document["blocks"] = {"kept": [b for b in net.blocks if b not in skipped],
                                  "skipped": [b for b in net.blocks if b in skipped]}
    return document


def module_sizes(net: SuperNetwork, config: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """``module -> {rank, in, out}`` of every elastic module under ``config``."""
    with net.activated(config):
        return {n: {"rank": m.active_rank, "in": m.active_in, "out": m.active_out} for n, m in net.elastic.items()}


def _stamp() -> dict[str, Any]:
    return {"exported": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "lorasearch": __version__}


def _write_export(
    out: str | Path,
    net_or_space: SuperNetwork | SearchSpace,
    config: Mapping[str, Any],
    provenance: Provenance,
    objectives: Objectives,
    write: Callable[[Path], None] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """What every format shares: a staged folder, the format's own files (``write``), subnet.json
    (with the format's ``extra`` fields)."""
    net = None if isinstance(net_or_space, SearchSpace) else net_or_space
    space = net_or_space if net is None else net.space
    document = {**subnet_document(space, config, net=net, objectives=objectives, provenance=provenance), **dict(extra or {})}
    with staged(out, ExportError) as tmp:
        if write is not None:
            write(tmp)
        atomic_write_json(tmp / SUBNET_FILE, document)
    return Path(out)


def export_config(net_or_space: SuperNetwork | SearchSpace, config: Mapping[str, Any], out: str | Path,
                  provenance: Provenance = None, *, objectives: Objectives = None) -> Path:
    """Write ``out/subnet.json`` for ``config`` (a `SuperNetwork` adds the resolved module sizes)."""
    refuse_existing(out, ExportError)
    return _write_export(out, net_or_space, config, provenance, objectives)


# ---------------------------------------------------------------------------------------- peft
def export_peft(net: SuperNetwork, config: Mapping[str, Any], out: str | Path,
                provenance: Provenance = None, *, objectives: Objectives = None) -> Path:
    """Write the sub-adapter of ``config`` as a PEFT folder that stock ``PeftModel.from_pretrained`` loads.

    Raises `ExportError` when ``config`` shrinks a width (PEFT cannot express it: use ``pruned``),
    leaves no module with a rank above 0, or has SparsePEFT / QA-SparsePEFT adapters (their masked,
    quantized delta is no plain LoRA: use ``merged``). The tensors are in the base's original channel
    order, also for a reordered network, so the folder applies to the unpermuted base model; the
    ``modules_to_save`` weights of a loaded adapter are written beside them.
    """
    refuse_existing(out, ExportError)
    with net.activated(config):
        _refuse_shrunk(net, "peft", "--format pruned (a physically smaller model) or a config at full width")
        check_peft_exportable(net)
        modules = sub_adapter(net)
    if net.permutation is not None:
        modules = unpermute_adapter(modules, net.permutation)
    if not modules:
        raise ExportError("--format peft: every adapter of this config has rank 0, so there is nothing to save; "
                          "fix: use --format merged (the base model) or pick another subnet")
    elastic = list(net.elastic.values())

    def write(folder: Path) -> None:
        write_adapter(folder, modules, base_model=net.model_spec, use_rslora=any(m.use_rslora for m in elastic),
                      dropout=_dropout(elastic), saved=net.saved_tensors())

    return _write_export(out, net, config, provenance, objectives, write)


def sub_adapter(net: SuperNetwork) -> dict[str, AdapterModule]:
    """The active sub-adapter: sliced tensors with ``alpha' = s * r'`` (rsLoRA: ``s * sqrt(r')``); rank 0 dropped."""
    modules = {}
    for name, m in net.elastic.items():
        r = m.active_rank
        if m.lora_A is None or r == 0:
            continue
        alpha = m.scaling * (math.sqrt(r) if m.use_rslora else r)
        modules[name] = AdapterModule(m.lora_A.weight[:r].detach(), m.lora_B.weight[:, :r].detach(), alpha)
    return modules


def _dropout(modules: Sequence[ElasticLoRALinear]) -> float:
    return next((m.lora_dropout.p for m in modules if isinstance(m.lora_dropout, nn.Dropout)), 0.0)


def _refuse_shrunk(net: SuperNetwork, fmt: str, fix: str) -> None:
    skipped = net.skipped_blocks()
    if skipped:
        raise ExportError(f"--format {fmt}: the config skips {len(skipped)} decoder blocks (e.g. {skipped[0]}), which "
                          f"{fmt} cannot express; fix: use {fix}")
    shrunk = [(n, m) for n, m in net.elastic.items() if m.active_in < m.in_features or m.active_out < m.out_features]
    if shrunk:
        name, m = shrunk[0]
        raise ExportError(
            f"--format {fmt}: the config shrinks the widths of {len(shrunk)} modules (e.g. {name}: "
            f"{m.active_out}x{m.active_in} of {m.out_features}x{m.in_features}), which {fmt} cannot express; "
            f"fix: use {fix}"
        )


# ------------------------------------------------------------------------------ merged, pruned
def export_merged(net: SuperNetwork, config: Mapping[str, Any], out: str | Path,
                  provenance: Provenance = None, *, objectives: Objectives = None) -> Path:
    """Fold the active adapters into a copy of the base weights and ``save_pretrained`` it (with the tokenizer).

    Sparse and quantized bases keep their zeros and INT grid with SparsePEFT / QA-SparsePEFT
    adapters (a QA-SparsePEFT merge is written as a compressed-tensors INT4 checkpoint on the base's
    grid); dense adapters fill a sparse base's zeros,
    with a `LoraSearchWarning`. ``subnet.json`` records the share of zero decoder weights before and
    after merging (``sparsity``). Raises `ExportError` when ``config`` shrinks a width: use
    `export_pruned` for that.
    """
    refuse_existing(out, ExportError)
    with net.activated(config):
        _refuse_shrunk(net, "merged", "--format pruned, which removes the dropped channels and heads")
        check_mergeable(net)
        model = merged_copy(net)
        sparsity = merge_sparsity(net, model)

    def write(folder: Path) -> None:
        save_merged_model(folder, net, model, net.tokenizer)

    return _write_export(out, net, config, provenance, objectives, write, {"sparsity": sparsity})


def export_pruned(net: SuperNetwork, config: Mapping[str, Any], out: str | Path,
                  provenance: Provenance = None, *, objectives: Objectives = None,
                  dropped_blocks: Sequence[int] = ()) -> Path:
    """Save the physically smaller model of a Mode B ``config`` (adapters merged).

    The folder loads with ``AutoModelForCausalLM.from_pretrained`` when every block keeps the same
    sizes, with ``trust_remote_code=True`` (the DeciLM layout, modeling code in the folder) when
    they differ, and with `load_pruned` in every case (`lorasearch.export.pruned`). The decoder
    blocks the config skips (elastic depth) and those ``dropped_blocks`` names (positions in the full
    model) are left out and the others renumbered; ``lorasearch_pruned.json`` lists them. When the folder is not one that
    stock tools (or vLLM) read, a `LoraSearchWarning` says why in one line, as the folder's README does.
    Raises `ExportError` for a space without elastic widths or heads (Mode A).
    """
    require_mode_b(net.space)
    refuse_existing(out, ExportError)
    with net.activated(config):
        model = merged_copy(net)
        skipped = skipped_block_indices(net)
    plans = []

    def write(folder: Path) -> None:
        plans.append(write_pruned_model(folder, model, net.tokenizer, dropped_blocks=dropped_blocks,
                                        already_dropped=skipped))

    path = _write_export(out, net, config, provenance, objectives, write)
    if plans and plans[0].note:
        warnings.warn(LoraSearchWarning(f"--format pruned: {path}: {plans[0].note}"), stacklevel=2)
    return path


def skipped_block_indices(net: SuperNetwork) -> list[int]:
    """The positions, in the full model, of the decoder blocks the active config skips."""
    position = {id(block): i for i, block in enumerate(decoder_layers(net.model))}
    return sorted(position[id(net.blocks[name])] for name in net.skipped_blocks())


def require_mode_b(space: SearchSpace) -> None:
    """Refuse a pruned export of a rank-only (Mode A) space: nothing could be removed."""
    if space.mode != "B":
        raise ExportError(
            f"--format pruned: space {space.name!r} is Mode A only (ranks), so nothing can be removed from the "
            "base model; fix: use --format merged or peft, or a space with width/heads groups"
        )


def merged_copy(net: SuperNetwork, device: torch.device | str = "cpu") -> nn.Module:
    """A copy of the model on ``device`` (the CPU by default) whose elastic layers are plain ``nn.Linear``
    of the active sizes, adapters merged, without the decoder blocks the active config skips (the
    others numbered 0..k-1).

    The copy is built layer by layer: each merged weight is computed where its layer lives and moved
    to ``device`` at once, and every other tensor is copied straight to ``device``, so the model's own
    device (a GPU) holds at most one layer's merged weight beside the model, never a second copy of
    it. Raises `ExportError` for a model whose weights are not all here (offloaded by accelerate).
    """
    device = torch.device(device)
    absent = [n for n, m in net.elastic.items() if m.base_layer.weight.device.type == "meta"]
    if absent:
        raise ExportError(f"{absent[0]}: the base weights are offloaded (--device-map) or absent, so they cannot be "
                          "merged; fix: export with --device cpu (the run's device map is then dropped)")
    skipped = {id(m) for name in net.skipped_blocks() for m in net.blocks[name].modules()}
    memo: dict[int, Any] = {id(m): _plain_linear(m, device) for m in net.elastic.values() if id(m) not in skipped}
    inside = {id(t) for m in net.elastic.values() for t in (*m.parameters(), *m.buffers())}
    for tensor in (*net.model.parameters(), *net.model.buffers()):
        if id(tensor) not in inside and id(tensor) not in memo:
            memo[id(tensor)] = _copy_to(tensor, device)
    # Seeding deepcopy's memo makes the copy take these tensors and the new linears in place of the
    # originals and the elastic wrappers, so nothing of the model is copied on its own device (the
    # elastic layers of skipped blocks are copied as they are and dropped right after).
    model = copy.deepcopy(net.model, memo=memo).eval()
    drop_skipped_blocks(model)
    forget_dequantized_gguf(model)
    return model


def _copy_to(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    copied = tensor.detach().to(device, copy=True)
    return nn.Parameter(copied, requires_grad=False) if isinstance(tensor, nn.Parameter) else copied


@torch.no_grad()
def _plain_linear(m: ElasticLoRALinear, device: torch.device) -> nn.Linear:
    o, i = m.active_out, m.active_in
    base = m.base_layer
    weight = m.merged_weight()  # SparsePEFT / QA-SparsePEFT modules keep the mask and the INT grid
    layer = torch.nn.utils.skip_init(nn.Linear, i, o, bias=base.bias is not None, device=device, dtype=weight.dtype)
    layer.weight.copy_(weight)
    if base.bias is not None:
        layer.bias.copy_(base.bias[:o])
    return layer.requires_grad_(False)


EXPORTERS = {"config": export_config, "peft": export_peft, "merged": export_merged, "pruned": export_pruned}
