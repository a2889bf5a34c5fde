"""Compressing a base from settings: ``lorasearch sparsify`` (Wanda or magnitude) and ``lorasearch
quantize`` (group-wise INT). The base stays in CPU memory; the layer-by-layer work runs on
``--device`` (a GPU when present)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from ..compress.quant import quantize_model, save_quantized
from ..compress.sparsity import SPARSITY_FILE, save_sparse, sparsify, sparsity_report
from ..data import load_records
from ..errors import LoraSearchError
from ..io import refuse_existing
from ..models.loading import LoadedModel, load_model, resolve_device
from ..models.preflight import PreflightReport, layerwise_batch, run_preflight
from .settings import NetworkSettings

PREFLIGHT_SEQ_LEN = 128  # tokens of the preflight batch where no calibration length is set


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


def sparsify_base(network: NetworkSettings, settings: SparsifySettings, out: str | Path,
                  log: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Prune the base of ``network`` as ``settings`` say, save it to ``out`` with its per-layer report
    and return the report (its last row: the decoder linears as a whole). A calibration batch runs
    through the first block on the device first (`preflight_layers`; ``log`` gets its line)."""
    out = Path(out)
    refuse_existing(out)
    if settings.method == "wanda" and settings.calibration is None:
        raise LoraSearchError("--calibration: missing; Wanda needs calibration texts; fix: pass a task file, or --method magnitude")
    records = load_records(settings.calibration) if settings.calibration is not None else None
    loaded, device = load_for_rewriting(network)
    calibrated = settings.method == "wanda"
    preflight_layers(loaded, device, settings.calibration_batch if calibrated else 1,
                     settings.calibration_seq_len if calibrated else PREFLIGHT_SEQ_LEN, log)
    report = sparsify(loaded.model, loaded.tokenizer, method=settings.method, ratio=settings.ratio,
                      pattern=settings.pattern, records=records, n_samples=settings.samples,
                      seq_len=settings.calibration_seq_len, batch_size=settings.calibration_batch, device=device)
    provenance = {"model": loaded.spec, "calibration": settings.calibration}
    save_sparse(loaded.model, loaded.tokenizer, out, report, provenance)
    return report


def quantize_base(network: NetworkSettings, out: str | Path, bits: int = 4, group_size: int = 128,
                  log: Callable[[str], None] | None = None) -> float:
    """Quantize the base's decoder linears group-wise to INT (round-to-nearest), save codes, scales
    and zeros to ``out`` and return the share of zeros in the decoder linears (a sparse base stays sparse).
    A batch runs through the first block on the device first (`preflight_layers`)."""
    out = Path(out)
    refuse_existing(out)
    loaded, device = load_for_rewriting(network)
    preflight_layers(loaded, device, 1, PREFLIGHT_SEQ_LEN, log)
    quantize_model(loaded.model, bits, group_size, device=device)
    save_quantized(loaded.model, loaded.tokenizer, out, {"model": loaded.spec})
    if (Path(network.model) / SPARSITY_FILE).is_file():
        shutil.copy(Path(network.model) / SPARSITY_FILE, out / SPARSITY_FILE)
    return float(sparsity_report(loaded.model)["sparsity"].iloc[-1])


def preflight_layers(loaded: LoadedModel, device: torch.device, batch: int, seq_len: int,
                     log: Callable[[str], None] | None) -> PreflightReport:
    """One batch through the embeddings and the first block on ``device``, as the layer-by-layer work
    will run it; a one-line `PreflightError` when it fails, else its line to ``log``."""
    report = run_preflight(f"one block on a batch of {batch} x {seq_len} tokens", device,
                           layerwise_batch(loaded.model, device, batch, seq_len),
                           "lower --calibration-batch or --calibration-seq-len, or use another --device")
    if log is not None:
        log(report.line())
    return report


__all__ = ["SparsifySettings", "load_for_rewriting", "preflight_layers", "quantize_base", "sparsify_base"]
