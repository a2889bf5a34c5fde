"""Compressing a base from settings: ``lorasearch sparsify`` (Wanda or magnitude) and ``lorasearch
quantize`` (group-wise INT: round-to-nearest, or GPTQ through llm-compressor). The base stays in CPU
memory; the layer-by-layer work runs on ``--device`` (a GPU when present)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from ..compress.gptq import gptq_quantize_model
from ..compress.quant import quantize_model, save_quantized
from ..compress.sparsity import SPARSITY_FILE, save_sparse, sparsify, sparsity_report
from ..data import load_records
from ..errors import CalibrationError, CompressError, LoraSearchError
from ..io import refuse_existing
from ..models.calibration import calibration_tokens
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


QUANTIZE_METHODS = ("rtn", "gptq")


@dataclass
class QuantizeSettings:
    """How ``lorasearch quantize`` rounds a base's decoder linears to INT."""

    method: str = "rtn"
    """rtn (round-to-nearest) or gptq (llm-compressor's GPTQ, layer by layer on calibration texts)."""
    bits: int = 4
    """Bits per weight (asymmetric, integer zero point)."""
    group_size: int = 128
    """Inputs per quantization group; must divide every input size."""
    calibration: str | None = None
    """Task file whose texts calibrate GPTQ."""
    samples: int = 128
    """Calibration windows (GPTQ)."""
    calibration_seq_len: int = 512
    """Tokens per calibration window (GPTQ)."""
    calibration_batch: int = 8
    """Calibration windows per forward pass (GPTQ)."""


def quantize_base(network: NetworkSettings, out: str | Path, bits: int = 4, group_size: int = 128,
                  settings: QuantizeSettings | None = None, log: Callable[[str], None] | None = None) -> float:
    """Quantize the base's decoder linears group-wise to INT as ``settings`` say (default: round-to-nearest
    with ``bits`` and ``group_size``), save them to ``out`` as a compressed-tensors checkpoint and return
    the share of zeros in the decoder linears (a sparse base stays sparse). Round-to-nearest keeps the
    weights from before quantization for QA-SparsePEFT; GPTQ does not (its codes are no rounding of them).
    A batch runs through the first block on the device first (`preflight_layers`; ``log`` gets its line)."""
    settings = settings or QuantizeSettings(bits=bits, group_size=group_size)
    if settings.method not in QUANTIZE_METHODS:
        raise CompressError(f"--method {settings.method!r}: unknown; fix: use one of {', '.join(QUANTIZE_METHODS)}")
    if settings.method == "gptq" and settings.calibration is None:
        raise CompressError("--calibration: missing; GPTQ needs calibration texts; fix: pass a task file, or --method rtn")
    out = Path(out)
    refuse_existing(out)
    records = load_records(settings.calibration) if settings.calibration is not None else None
    loaded, device = load_for_rewriting(network)
    gptq = settings.method == "gptq"
    preflight_layers(loaded, device, settings.calibration_batch if gptq else 1,
                     settings.calibration_seq_len if gptq else PREFLIGHT_SEQ_LEN, log)
    provenance = {"model": loaded.spec, "method": settings.method}
    if settings.method == "gptq":
        try:
            tokens = calibration_tokens(loaded.tokenizer, records, settings.samples, settings.calibration_seq_len)
        except CalibrationError as exc:
            raise CompressError(str(exc)) from None
        gptq_quantize_model(loaded.model, tokens, settings.bits, settings.group_size, settings.calibration_batch, device)
        provenance.update(calibration=settings.calibration, samples=settings.samples,
                          calibration_seq_len=settings.calibration_seq_len)
    else:
        quantize_model(loaded.model, settings.bits, settings.group_size, device=device)
    save_quantized(loaded.model, loaded.tokenizer, out, provenance)
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


__all__ = ["QuantizeSettings", "SparsifySettings", "load_for_rewriting", "preflight_layers", "quantize_base",
           "sparsify_base"]
