"""The error type of the compression package."""

from __future__ import annotations

from ..errors import LoraSearchError


class CompressError(LoraSearchError):
    """Bad input to sparsification, quantization or the sparse/quantization-aware adapter modes."""
