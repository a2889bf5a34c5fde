"""Unstructured and N:M sparsity of a base model: Wanda (Sun et al. 2023) and magnitude pruning.

Wanda scores a weight by ``|W_ij| * ||X_j||_2``, ``X_j`` being input channel j of the layer over
every calibration token, and compares weights within each output row (as the reference does): the
``int(in * ratio)`` lowest-scored weights of every row are zeroed. Blocks are pruned one after
another: each block's statistics come from inputs that already went through the pruned blocks
before it. Every ``nn.Linear`` inside the decoder blocks is pruned; embeddings and ``lm_head`` are not.

Magnitude pruning scores ``|W|`` and, as the reference, compares over the whole layer.
With an N:M pattern (``2:4``, ``4:8``) the N lowest-scored weights of every M consecutive inputs of a
row are zeroed (50 % sparsity for both), whatever the ratio.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch
from torch import nn

from ..data import Record
from ..errors import CalibrationError, CompressError
from ..io import atomic_write_json, staged
from ..models.anatomy import block_linears, decoder_layers, decoder_linears
from ..models.calibration import (
    calibration_tokens,
    capture_layer_inputs,
    on_device,
    outside_layers_on,
    run_layer,
    with_hidden,
)
from ..models.loading import save_model_folder

METHODS = ("wanda", "magnitude")
PATTERNS = ("unstructured", "2:4", "4:8")
SPARSITY_FILE = "lorasearch_sparsity.json"
_NM = re.compile(r"^(\d+):(\d+)$")


def check_ratio(ratio: float) -> float:
    """A sparsity ratio in [0, 1), else `CompressError`."""
    if not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0:
        raise CompressError(f"--ratio {ratio}: the sparsity ratio must lie in [0, 1); fix: e.g. --ratio 0.5")
    return float(ratio)


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """``None`` for unstructured, ``(n, m)`` for ``"n:m"`` (n zeros in every m), else `CompressError`."""
    if pattern == "unstructured":
        return None
    match = _NM.match(str(pattern))
    if match is None or not 0 < int(match[1]) < int(match[2]):
        raise CompressError(f"--pattern {pattern!r}: unknown; fix: use unstructured or N:M with 0 < N < M, e.g. 2:4 or 4:8")
    return int(match[1]), int(match[2])


def check_pattern_fits(model: nn.Module, nm: tuple[int, int] | None) -> None:
    """Refuse an N:M pattern whose M does not divide some layer's input size."""
    if nm is None:
        return
    for name, layer in decoder_linears(model).items():
        if layer.in_features % nm[1]:
            raise CompressError(
                f"--pattern {nm[0]}:{nm[1]}: {name} has {layer.in_features} inputs, not a multiple of {nm[1]}; "
                "fix: use unstructured or a pattern whose M divides every input size"
            )


# ------------------------------------------------------------------------------------- masks
def prune_mask(score: torch.Tensor, ratio: float, nm: tuple[int, int] | None, per_row: bool = True) -> torch.Tensor:
    """Boolean mask of the weights to zero: the lowest scores per row (or layer), or per N:M group."""
    out, inp = score.shape
    if nm is not None:
        n, m = nm
        groups = score.reshape(out, inp // m, m)
        idx = torch.topk(groups, n, dim=-1, largest=False).indices
        return torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, idx, True).reshape(out, inp)
    if per_row:
        k = int(inp * ratio)
        mask = torch.zeros_like(score, dtype=torch.bool)
        if k:
            mask.scatter_(1, torch.topk(score, k, dim=1, largest=False).indices, True)
        return mask
    k = int(score.numel() * ratio)
    mask = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
    if k:
        mask[torch.topk(score.flatten(), k, largest=False).indices] = True
    return mask.view_as(score)


@torch.no_grad()
def _apply(layer: nn.Linear, zero: torch.Tensor) -> None:
    layer.weight[zero] = 0


# --------------------------------------------------------------------------------- methods
@torch.no_grad()
def prune_magnitude(model: nn.Module, ratio: float, nm: tuple[int, int] | None) -> None:
    """Zero the smallest ``|W|`` of every decoder linear (per layer, or per N:M group)."""
    for layer in decoder_linears(model).values():
        _apply(layer, prune_mask(layer.weight.abs().float(), ratio, nm, per_row=False))


class _InputNorms:
    """Forward hooks summing ``x_j^2`` over every token reaching each linear of a block."""

    def __init__(self, linears: Mapping[str, nn.Linear]) -> None:
        self.sums = {n: torch.zeros(m.in_features, dtype=torch.float64, device=m.weight.device) for n, m in linears.items()}
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in linears.items()]

    def _hook(self, name: str):
        def hook(module, args, output):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            self.sums[name] += (x * x).sum(0)
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@torch.no_grad()
def prune_wanda(model: nn.Module, tokens: torch.Tensor, ratio: float, nm: tuple[int, int] | None, batch_size: int = 8,
                device: torch.device | None = None) -> None:
    """Wanda, block after block: statistics from the pruned prefix's outputs, then prune, then replay.

    ``device`` (default: the model's) is where the work runs; with a model in CPU memory and a GPU
    here, only one block and the calibration activations are on the GPU at a time.
    """
    device = device or next(model.parameters()).device
    with outside_layers_on(model, device):
        inputs = capture_layer_inputs(model, tokens, batch_size)
    for layer in decoder_layers(model):
        with on_device(layer, device):
            linears = block_linears(layer)
            norms = _InputNorms(linears)
            try:
                for args, kwargs in inputs:
                    run_layer(layer, args, kwargs)
            finally:
                norms.remove()
            for name, lin in linears.items():
                score = lin.weight.abs().double() * norms.sums[name].sqrt()[None, :]
                _apply(lin, prune_mask(score, ratio, nm))
            inputs = [with_hidden(args, kwargs, run_layer(layer, args, kwargs)) for args, kwargs in inputs]


def sparsify(
    model: nn.Module,
    tokenizer: Any = None,
    *,
    method: str = "wanda",
    ratio: float = 0.5,
    pattern: str = "unstructured",
    records: Sequence[Record] | None = None,
    n_samples: int = 128,
    seq_len: int = 512,
    batch_size: int = 8,
    device: torch.device | None = None,
) -> pd.DataFrame:
    """Prune ``model``'s decoder linears in place and return the per-layer sparsity report.

    Args:
        model: a plain (unwrapped) decoder-only causal LM.
        tokenizer: tokenises the calibration texts (Wanda only).
        method: ``wanda`` (``|W| * ||X_j||``, per output row) or ``magnitude`` (``|W|``, per layer).
        ratio: the share of weights to zero, in [0, 1); ignored by N:M patterns (which fix it at N/M).
        pattern: ``unstructured``, ``2:4`` or ``4:8`` (any ``N:M``).
        records: the calibration task's records (Wanda only): ``n_samples`` windows of ``seq_len``
            tokens are cut from their concatenated texts.
        device: where Wanda's layer-by-layer work runs (default: the model's device).
    """
    if method not in METHODS:
        raise CompressError(f"--method {method!r}: unknown; fix: use one of {', '.join(METHODS)}")
    ratio = check_ratio(ratio)
    nm = parse_pattern(pattern)
    check_pattern_fits(model, nm)
    if method == "magnitude":
        prune_magnitude(model, ratio, nm)
    else:
        if tokenizer is None or not records:
            raise CompressError("--method wanda: needs calibration records and a tokenizer; fix: pass --calibration TASK_FILE")
        try:
            tokens = calibration_tokens(tokenizer, records, n_samples, seq_len)
        except CalibrationError as exc:
            raise CompressError(str(exc)) from None
        prune_wanda(model, tokens, ratio, nm, batch_size, device)
    report = sparsity_report(model)
    report.attrs.update(method=method, ratio=ratio, pattern=pattern, samples=n_samples, seq_len=seq_len)
    return report


def sparsity_report(model: nn.Module) -> pd.DataFrame:
    """One row per decoder linear (module, out, in, nonzero, numel, sparsity), then a ``total`` row."""
    rows = []
    for name, layer in decoder_linears(model).items():
        nnz = int(torch.count_nonzero(layer.weight))
        rows.append((name, layer.out_features, layer.in_features, nnz, layer.weight.numel()))
    df = pd.DataFrame(rows, columns=["module", "out", "in", "nonzero", "numel"])
    df.loc[len(df)] = ["total", 0, 0, int(df["nonzero"].sum()), int(df["numel"].sum())]
    df["sparsity"] = 1.0 - df["nonzero"] / df["numel"]
    return df


def save_sparse(model: nn.Module, tokenizer: Any, out: str | Path, report: pd.DataFrame, provenance: Mapping[str, Any] | None = None) -> Path:
    """Save a pruned model (``from_pretrained`` loads it) with ``lorasearch_sparsity.json`` beside it."""
    document = {
        "format": "lorasearch-sparse", "version": 1, **report.attrs, **dict(provenance or {}),
        "sparsity": float(report["sparsity"].iloc[-1]),
        "layers": report.iloc[:-1][["module", "nonzero", "numel", "sparsity"]].to_dict("records"),
    }
    with staged(out, CompressError) as tmp:
        save_model_folder(tmp, model, tokenizer)
        atomic_write_json(tmp / SPARSITY_FILE, document)
    return Path(out)
