"""Building a super-network on a sparse or quantized base, and exporting it with its compression kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from torch import nn

from .errors import CompressError
from .masked import QALoRALinear, SparseLoRALinear, adapter_folder_mode, apply_adapter_mode, check_mode
from .quant import GRID_ATTR, attach_grids, is_quantized_folder, write_quant_files
from .sparsity import SPARSITY_FILE, sparsity_report


def resolve_mode(mode: str | None, adapter: str | Path | None) -> tuple[str, dict[str, Any] | None]:
    """The adapter mode: the one asked for, else the adapter folder's saved one, else ``dense``."""
    saved = adapter_folder_mode(adapter)
    if mode is None and saved is not None:
        mode = saved["adapter_mode"]
    mode = check_mode(mode)
    if saved is not None and mode == "dense":
        saved = None
    return mode, saved


def build_compressed_network(settings: Any, space: Any, load: Mapping[str, Any]):
    """A `SuperNetwork` as ``settings`` say, with INT grids attached (quantized base) and the adapter mode applied."""
    from ..models import load_model
    from ..supernet import SuperNetwork

    mode, saved = resolve_mode(getattr(settings, "adapter_mode", None), settings.adapter)
    loaded = load_model(settings.model, **load)
    if is_quantized_folder(settings.model):
        attach_grids(loaded.model, settings.model)
    net = SuperNetwork(loaded.model, space, settings.adapter, tokenizer=loaded.tokenizer,
                       model_spec=loaded.spec, seed=settings.seed)
    return apply_adapter_mode(net, mode, saved)


def needs_compressed_build(settings: Any) -> bool:
    """Whether `build_compressed_network` is needed (a mode, a mode-tagged adapter, or a quantized base)."""
    mode = getattr(settings, "adapter_mode", None)
    return (mode not in (None, "dense") or adapter_folder_mode(settings.adapter) is not None
            or is_quantized_folder(settings.model))


def check_mergeable(net: Any) -> None:
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


def write_compression_files(folder: Path, net: Any, model: nn.Module) -> None:
    """Beside a merged export: the INT codes and grids (QA) and the sparsity report (sparse modes)."""
    from ..io import atomic_write_json

    modules = dict(model.named_modules())
    qa = {n: m for n, m in net.elastic.items() if isinstance(m, QALoRALinear)}
    for name, m in qa.items():
        setattr(modules[name], GRID_ATTR, m.grid)
    if qa:
        write_quant_files(folder, model, {"adapter_mode": "qa"})
    if any(isinstance(m, SparseLoRALinear) for m in net.elastic.values()):
        report = sparsity_report(model)
        atomic_write_json(folder / SPARSITY_FILE, {
            "format": "lorasearch-sparse", "version": 1, "adapter_mode": getattr(net, "adapter_mode", None),
            "sparsity": float(report["sparsity"].iloc[-1]),
            "layers": report.iloc[:-1][["module", "nonzero", "numel", "sparsity"]].to_dict("records"),
        })

