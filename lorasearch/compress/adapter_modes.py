"""Keeping a base's compression through a super-network: the adapter mode a network is built in,
and the checks and files of a merged export of a sparse or quantized base."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import CompressError, ExportError, LoraSearchWarning
from ..io import atomic_write_json
from ..models.anatomy import decoder_linears
from ..models.loading import save_model_folder
from ..network.supernet import SuperNetwork
from .masked import QALoRALinear, SparseLoRALinear, adapter_folder_mode, check_mode
from .quant import GRID_ATTR, write_quantized_folder
from .sparsity import SPARSITY_FILE, sparsity_report

SPARSE_BASE = 0.01  # a base with at least this share of zero weights counts as sparse


def resolve_mode(mode: str | None, adapter: str | Path | None) -> tuple[str, dict[str, Any] | None]:
    """The adapter mode: the one asked for, else the adapter folder's saved one, else ``dense``."""
    saved = adapter_folder_mode(adapter)
    if mode is None and saved is not None:
        mode = saved["adapter_mode"]
    mode = check_mode(mode)
    if saved is not None and mode == "dense":
        saved = None
    return mode, saved


def check_mergeable(net: SuperNetwork) -> None:
    """Refuse to merge dense adapters into an INT-quantized base: the result would leave the INT grid."""
    for name, m in net.elastic.items():
        grid = getattr(m.base_layer, GRID_ATTR, None)
        if grid is not None and m.active_rank and not isinstance(m, QALoRALinear):
            raise CompressError(
                f"--format merged: {name} has an INT{grid.bits} base and a plain adapter; merging would leave the "
                "INT grid; fix: keep the adapter unmerged (--format peft: INT4 + FP16), or train with --adapter-mode qa"
            )
        if isinstance(m, SparseLoRALinear):
            m.check_mask(name)


def check_peft_exportable(net: SuperNetwork) -> None:
    """Refuse a PEFT export of SparsePEFT / QA-SparsePEFT adapters: stock PEFT would apply their delta
    dense (without the mask) and off the INT grid, so it would compute another model than the one searched."""
    masked = [n for n, m in net.elastic.items() if isinstance(m, SparseLoRALinear) and m.active_rank]
    if masked:
        what = "quantized on the base's INT grid and masked" if net.adapter_mode == "qa" else "masked"
        raise ExportError(
            f"--format peft: the {net.adapter_mode} adapters (e.g. {masked[0]}) are {what} by the base's zeros, which "
            "a stock PEFT LoRA cannot express (PEFT would apply them dense and compute another model); "
            "fix: use --format merged, which keeps the zeros and the grid"
        )


def merge_sparsity(net: SuperNetwork, merged: nn.Module) -> dict[str, float]:
    """The share of zero weights in the decoder linears before (``base``) and after (``merged``) merging,
    with a `LoraSearchWarning` when dense adapters filled a sparse base's zeros."""
    shares = {"base": _zero_share(net.model), "merged": _zero_share(merged)}
    dense = [n for n, m in net.elastic.items() if m.active_rank and not isinstance(m, SparseLoRALinear)]
    if dense and shares["base"] >= SPARSE_BASE and shares["merged"] < shares["base"]:
        warnings.warn(LoraSearchWarning(
            f"--format merged: the dense adapters (e.g. {dense[0]}) fill the sparse base's zeros: {shares['base']:.1%} "
            f"of the decoder weights were zero, {shares['merged']:.1%} are after merging (in subnet.json); fix: train "
            "with --adapter-mode sparse (SparsePEFT) to keep them, or export --format peft"), stacklevel=3)
    return shares


def _zero_share(model: nn.Module) -> float:
    weights = [m.weight for m in decoder_linears(model).values()]  # elastic bases included, adapters not
    total = sum(w.numel() for w in weights)
    return float(sum(int((w == 0).sum()) for w in weights) / total) if total else 0.0


def save_merged_model(folder: Path, net: SuperNetwork, model: nn.Module, tokenizer: Any = None) -> None:
    """Save a merged export's model into ``folder``: a QA-SparsePEFT merge as a compressed-tensors INT
    checkpoint on the base's grid (its codes are equation 3's), any other as a float checkpoint; sparse
    modes add the sparsity report (a sparse model is written dense, its zeros recorded there)."""
    modules = dict(model.named_modules())
    qa = {n: m for n, m in net.elastic.items() if isinstance(m, QALoRALinear)}
    for name, m in qa.items():
        setattr(modules[name], GRID_ATTR, m.grid)
    if qa:
        write_quantized_folder(folder, model, tokenizer, {"adapter_mode": "qa", "method": "qa-sparsepeft merge"})
    else:
        save_model_folder(folder, model, tokenizer)
    if any(isinstance(m, SparseLoRALinear) for m in net.elastic.values()):
        report = sparsity_report(model)
        atomic_write_json(folder / SPARSITY_FILE, {
            "format": "lorasearch-sparse", "version": 1, "adapter_mode": getattr(net, "adapter_mode", None),
            "sparsity": float(report["sparsity"].iloc[-1]),
            "layers": report.iloc[:-1][["module", "nonzero", "numel", "sparsity"]].to_dict("records"),
        })
