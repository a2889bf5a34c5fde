"""Preflight: one batch on the target device before a long job, with the memory it took.

A long command (train, search, sparsify, quantize, the quickstart) loads its model, runs one batch
of the work it is about to do (the largest it will see, where it can tell) on the device it will
run on, and reports the time and memory; when that batch fails (out of memory, a kernel the
device lacks, a dtype it cannot compute in), the command stops at once with one line, not after
an hour. `run_preflight` runs the batch and measures; the commands decide what the batch is.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..errors import PreflightError
from .anatomy import decoder_layers

GIB = 2**30


@dataclass(frozen=True)
class PreflightReport:
    """What one preflight batch took."""

    what: str
    """The batch, e.g. ``one training step of 8 x 64 tokens (max subnet)``."""
    device: torch.device
    seconds: float
    resident_bytes: int
    """This process's resident memory after the batch (the model in CPU memory included)."""
    peak_bytes: int | None = None
    """On a GPU: the most memory allocated on it during the batch (the model included)."""
    total_bytes: int | None = None
    """On a GPU: its memory."""

    def line(self) -> str:
        """One line for the log, e.g. ``preflight: ... on cuda:0 in 0.41 s; GPU memory peak 14.2 of 79.2 GiB; ...``."""
        gpu = ""
        if self.peak_bytes is not None and self.total_bytes:
            gpu = f"; GPU memory peak {self.peak_bytes / GIB:.2f} of {self.total_bytes / GIB:.1f} GiB"
        return (f"preflight: {self.what} on {self.device} in {self.seconds:.2f} s{gpu}; "
                f"process {self.resident_bytes / GIB:.2f} GiB resident")


def resident_bytes() -> int:
    """This process's resident memory now (its peak where /proc is not there)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_preflight(what: str, device: torch.device, batch: Callable[[], Any], fix: str) -> PreflightReport:
    """Run ``batch()`` on ``device`` once and measure it; a failure is a one-line `PreflightError`
    that names the batch, the device, the cause and ``fix``. RNG states are kept: the batch draws
    no random number the job would otherwise draw."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
        with torch.random.fork_rng(devices=[index] if cuda else []):
            batch()
        if cuda:
            torch.cuda.synchronize(device)
    except (RuntimeError, MemoryError, NotImplementedError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        if cuda:
            torch.cuda.empty_cache()
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PreflightError(f"preflight: {what} on {device} failed ({type(exc).__name__}: {cause}); fix: {fix}") from None
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if cuda else None
    total = torch.cuda.get_device_properties(device).total_memory if cuda else None
    return PreflightReport(what, device, seconds, resident_bytes(), peak, total)


def layerwise_batch(model: torch.nn.Module, device: torch.device, batch: int, seq_len: int) -> Callable[[], None]:
    """One batch of ``batch`` x ``seq_len`` tokens through the embeddings and the first decoder block
    on ``device``, the way layer-by-layer work (Wanda, quantization) runs a model kept in CPU memory:
    only what is outside the blocks and the block at hand on the device."""
    from .calibration import capture_layer_inputs, on_device, outside_layers_on, run_layer

    def run() -> None:
        vocab = int(getattr(model.config, "vocab_size", 2))
        tokens = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0))
        with torch.no_grad(), outside_layers_on(model, device):
            args, kwargs = capture_layer_inputs(model, tokens, batch)[0]
            with on_device(decoder_layers(model)[0], device) as layer:
                run_layer(layer, args, kwargs)

    return run
