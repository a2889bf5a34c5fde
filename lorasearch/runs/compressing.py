"""Compressing a base from settings: ``lorasearch sparsify`` (Wanda or magnitude) and ``lorasearch
quantize`` (group-wise INT). The base stays in CPU memory; the layer-by-layer work runs on
``--device`` (a GPU when present)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from ..compress.quant import quantize_model, save_quantized
from ..compress.sparsity import SPARSITY_FILE, save_sparse, sparsify, sparsity_report
from ..data import load_records
from ..errors import LoraSearchError
from ..io import refuse_existing
from ..models.loading import LoadedModel, load_model, resolve_device
from .settings import NetworkSettings


@dataclass
class SparsifySettings:
    """How ``lorasearch sparsify`` prunes a base."""

    method: str = "wanda"
    """wanda (|W| * ||X_j||, per output row) or magnitude (|W|, per layer)."""
    ratio: float = 0.5
    """Share of weights to zero, in [0, 1) (N:M patterns fix it at N/M)."""
    pattern: str = "unstructured"
    """unstructured, 2:4 or 4:8."""
    calibration: str | None = None
    """Task file whose texts calibrate Wanda."""
    samples: int = 128
    """Calibration windows (the reference uses 128)."""
    calibration_seq_len: int = 512
    """Tokens per calibration window."""
    calibration_batch: int = 8
    """Calibration windows per forward pass."""


def load_for_rewriting(network: NetworkSettings) -> tuple[LoadedModel, torch.device]:
    """A base to sparsify or quantize: in CPU memory, in the checkpoint's own dtype unless --dtype
    says otherwise, with --device (a GPU when present) as where the layer-by-layer work runs."""
    device = resolve_device(network.device)
    options = {**network.load_options(), "device": "cpu", "device_map": None}
    if network.dtype in (None, "auto"):
        options["dtype"] = "own"
    return load_model(network.model, **options), device


def sparsify_base(network: NetworkSettings, settings: SparsifySettings, out: str | Path) -> pd.DataFrame:
    """Prune the base of ``network`` as ``settings`` say, save it to ``out`` with its per-layer report
    and return the report (its last row: the decoder linears as a whole)."""
    out = Path(out)
    refuse_existing(out)
    if settings.method == "wanda" and settings.calibration is None:
        raise LoraSearchError("--calibration: missing; Wanda needs calibration texts; fix: pass a task file, or --method magnitude")
    records = load_records(settings.calibration) if settings.calibration is not None else None
    loaded, device = load_for_rewriting(network)
    report = sparsify(loaded.model, loaded.tokenizer, method=settings.method, ratio=settings.ratio,
                      pattern=settings.pattern, records=records, n_samples=settings.samples,
                      seq_len=settings.calibration_seq_len, batch_size=settings.calibration_batch, device=device)
    provenance = {"model": loaded.spec, "calibration": settings.calibration}
    save_sparse(loaded.model, loaded.tokenizer, out, report, provenance)
    return report


def quantize_base(network: NetworkSettings, out: str | Path, bits: int = 4, group_size: int = 128) -> float:
    """Quantize the base's decoder linears group-wise to INT (round-to-nearest), save codes, scales
    and zeros to ``out`` and return the share of zeros in the decoder linears (a sparse base stays sparse)."""
    out = Path(out)
    refuse_existing(out)
    loaded, device = load_for_rewriting(network)
    quantize_model(loaded.model, bits, group_size, device=device)
    save_quantized(loaded.model, loaded.tokenizer, out, {"model": loaded.spec})
    if (Path(network.model) / SPARSITY_FILE).is_file():
        shutil.copy(Path(network.model) / SPARSITY_FILE, out / SPARSITY_FILE)
    return float(sparsity_report(loaded.model)["sparsity"].iloc[-1])


__all__ = ["SparsifySettings", "load_for_rewriting", "quantize_base", "sparsify_base"]
