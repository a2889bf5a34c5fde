"""Sparse and low-precision bases (Shears, SQFT): Wanda/magnitude/N:M sparsity, INT4 quantization,
and the SparsePEFT / QA-SparsePEFT adapter modes that keep them through fine-tuning and merging.

* `sparsity`: `sparsify` prunes a model in place (Wanda, magnitude; unstructured or N:M) and
  `save_sparse` writes a base that ``from_pretrained`` loads, with a per-layer report.
* `quant`: group-wise asymmetric INT4 round-to-nearest (`quantize_model`), saved as a
  compressed-tensors checkpoint (`save_quantized`) that stock ``from_pretrained`` loads where the
  compressed-tensors package is installed and `load_quantized` loads with its grid.
* `gptq`: GPTQ on the same grid through llm-compressor (`gptq_quantize_model`).
* `masked`: `SparseLoRALinear` (SparsePEFT) and `QALoRALinear` (QA-SparsePEFT), and
  `apply_adapter_mode`, which turns a `SuperNetwork`'s modules into them.
"""

from ..errors import CompressError
from .gptq import gptq_available, gptq_quantize_model
from .masked import ADAPTER_MODES, QALoRALinear, SparseLoRALinear, apply_adapter_mode
from .quant import QuantGrid, dequantize, fake_quantize, load_quantized, quantize_model, quantize_weight, save_quantized
from .sparsity import METHODS, save_sparse, sparsify, sparsity_report

__all__ = [
    "ADAPTER_MODES", "CompressError", "METHODS", "QALoRALinear", "QuantGrid", "SparseLoRALinear",
    "apply_adapter_mode", "dequantize", "fake_quantize", "gptq_available", "gptq_quantize_model", "load_quantized", "quantize_model", "quantize_weight",
    "save_quantized", "save_sparse", "sparsify", "sparsity_report",
]
