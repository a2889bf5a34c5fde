"""SparsePEFT and QA-SparsePEFT: elastic LoRA modules whose delta respects a sparse (and INT4) base.

SparsePEFT (`SparseLoRALinear`) masks the adapter's delta ``s * B A`` with the base's non-zero
pattern ``M = (W != 0)`` in training and on merge, so the merged weight ``W + (s * B A) * M`` keeps
exactly the base's zeros. The forward computes *one* linear with that fused weight, instead of the
reference's base linear plus a second linear with a dense masked delta: one ``T x in x out`` matmul
less per layer (the ``out x r x in`` product ``B A`` is the only extra work). With adapter dropout
active in training, the dropped input needs its own path, so the reference's two-linear form is used.

QA-SparsePEFT (`QALoRALinear`) follows the paper's equation 3: it quantizes ``W^p + L^p`` on the
base's frozen grid, ``W^p`` being the sparse weights from *before* quantization (kept by
``lorasearch quantize``), then de-quantizes (equation 4), with a straight-through estimator (an
identity gradient, clamped entries included); merging stores that value, which lies on the grid
and keeps the zeros (a zero weight maps to the integer zero point and back to 0). Its mask is
``W^p != 0``. Without ``W^p`` (a quantized folder that lacks it) the de-quantised base
``s (q - z)`` stands in, with a warning: there an adapter entry below half a step rounds back to
the base's code and changes nothing. Which base it used is saved as ``qa_base`` (``float`` or
``dequantized``) beside the adapter, and an adapter is loaded against the base it was trained on.
At rank 0 the module is its de-quantised base. In training with adapter dropout, the base path
gets the input and the quantized delta ``Q(W^p + L^p) - s (q - z)`` gets the dropped input, as
SparsePEFT splits base and delta.

Under a JIT trace (fvcore's MAC count) both run the plain low-rank form, so traced MACs agree with
the cost model's closed form (base plus ``r * (in + out)`` per token unmerged; merged adds nothing).

Both record the base's mask (its non-zero count and a fingerprint per module) when they are built,
write it beside a saved adapter (``lorasearch_adapter_mode.json``), and refuse to merge into, or load
onto, a base whose mask differs.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CompressError, LoraSearchWarning
from ..network.elastic import ElasticLoRALinear
from ..network.supernet import ADAPTER_MODE_FILE, SuperNetwork
from .quant import GRID_ATTR, PREQUANT_ATTR, PREQUANT_FILE, QuantGrid

ADAPTER_MODES = ("dense", "sparse", "qa")


def mask_fingerprint(mask: torch.Tensor) -> str:
    """A short hash of a boolean mask (its shape and bits)."""
    bits = np.packbits(mask.detach().cpu().numpy().astype(np.uint8))
    return hashlib.sha256(str(tuple(mask.shape)).encode() + bits.tobytes()).hexdigest()[:16]


class SparseLoRALinear(ElasticLoRALinear):
    """An `ElasticLoRALinear` whose delta is masked by the base's non-zero pattern (SparsePEFT).

    Build one with `SparseLoRALinear.convert(module)`, which changes an existing module in place
    (the adapter parameters stay the same objects).
    """

    mask: torch.Tensor

    @classmethod
    def convert(cls, module: ElasticLoRALinear) -> "SparseLoRALinear":
        """Turn ``module`` into this class in place and record its base's mask."""
        module.__class__ = cls
        module._init_mode()
        return module

    def _init_mode(self) -> None:
        mask = self.mask_source() != 0
        self.register_buffer("mask", mask, persistent=False)
        self.mask_nnz = int(mask.sum())
        self.mask_fingerprint = mask_fingerprint(mask)

    def mask_source(self) -> torch.Tensor:
        """The weight whose non-zeros make the mask ``M``: the base's."""
        return self.base_layer.weight

    def masked_delta(self) -> torch.Tensor | None:
        """``(s * B[:o, :r] @ A[:r, :i]) * M[:o, :i]``, or None at rank 0."""
        r, i, o = self.active_rank, self.active_in, self.active_out
        if not r:
            return None
        delta = (self.lora_B.weight[:o, :r] @ self.lora_A.weight[:r, :i]) * self.scaling
        return delta * self.mask[:o, :i]

    def _base(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        o, i = self.active_out, self.active_in
        bias = self.base_layer.bias
        return self.base_layer.weight[:o, :i], (bias[:o] if bias is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing():  # fvcore's MAC trace: count what the cost model counts (base + r(in + out))
            return super().forward(x)
        weight, bias = self._base()
        if not self.active_rank:
            return F.linear(x, weight, bias)
        delta = self.masked_delta()
        if self.training and isinstance(self.lora_dropout, nn.Dropout):
            h = self.lora_dropout(x)
            return F.linear(x, weight, bias) + F.linear(h.to(delta.dtype), delta).to(x.dtype)
        return F.linear(x, weight + delta.to(weight.dtype), bias)

    def active_delta_weight(self) -> torch.Tensor | None:
        """The masked delta: what merging adds to the base."""
        return self.masked_delta()

    def check_mask(self, name: str = "") -> None:
        """Refuse a base whose non-zero pattern is no longer the one the adapter was built on."""
        now = self.mask_source() != 0
        if not torch.equal(now, self.mask):
            raise CompressError(
                f"{name or 'module'}: the base's sparsity mask changed since the SparsePEFT adapter was attached "
                f"({int(now.sum()):,} non-zeros now, {self.mask_nnz:,} then); merging would break the sparsity; "
                "fix: merge into the sparse base the adapter was trained on"
            )

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """``W + (s * B A) * M`` at the active sizes (checks the mask first)."""
        self.check_mask()
        weight, _ = self._base()
        delta = self.masked_delta()
        return weight if delta is None else (weight.float() + delta.float()).to(weight.dtype)


class QALoRALinear(SparseLoRALinear):
    """QA-SparsePEFT: ``Q(W^p + L^p)`` on the base's frozen INT grid (equations 3 and 4, STE).

    ``float_weight`` is ``W^p`` (the base's ``prequant_weight`` when it has one, moved into this
    module), else None: then the de-quantised base weight stands in for it.
    """

    grid: QuantGrid
    float_weight: torch.Tensor | None

    def _init_mode(self) -> None:
        self.grid = required_grid(self.base_layer)
        prequant = getattr(self.base_layer, PREQUANT_ATTR, None)
        if prequant is not None:
            delattr(self.base_layer, PREQUANT_ATTR)
        self.register_buffer("float_weight", prequant, persistent=False)
        super()._init_mode()

    @property
    def qa_base(self) -> str:
        """``float`` (equation 3 on ``W^p``) or ``dequantized`` (the fallback on ``s (q - z)``)."""
        return "float" if self.float_weight is not None else "dequantized"

    def mask_source(self) -> torch.Tensor:
        """``W^p`` (the paper's mask: the sparse weights' non-zeros), else the de-quantised base."""
        return self.float_weight if self.float_weight is not None else self.base_layer.weight

    def quantized_weight(self) -> torch.Tensor | None:
        """``s (clamp(round((W^p + L^p) / s) + z, 0, 2^n - 1) - z)`` at the active sizes, in fp32, with an
        identity gradient to ``L^p``; None at rank 0."""
        delta = self.masked_delta()
        if delta is None:
            return None
        fused = self.mask_source()[: self.active_out, : self.active_in].float() + delta.float()
        return self.grid.fake_quantize(fused)  # the grid is applied in fp32 whatever the dtypes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing():
            return ElasticLoRALinear.forward(self, x)
        weight, bias = self._base()
        quantized = self.quantized_weight()
        if quantized is None:
            return F.linear(x, weight, bias)  # the base already lies on its grid
        if self.training and isinstance(self.lora_dropout, nn.Dropout):
            h = self.lora_dropout(x)
            delta = quantized - weight.float()  # what the adapter moves the quantized weight by
            return F.linear(x, weight, bias) + F.linear(h.to(delta.dtype), delta).to(x.dtype)
        return F.linear(x, quantized.to(weight.dtype), bias)

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """Equation 4 of equation 3: the de-quantised codes of ``W^p + L^p`` (on the grid, zeros kept);
        the de-quantised base at rank 0."""
        self.check_mask()
        weight, _ = self._base()
        quantized = self.quantized_weight()
        return weight if quantized is None else quantized.to(weight.dtype)

    def merged_codes(self) -> torch.Tensor:
        """The INT codes of the merged weight (equation 3)."""
        return self.grid.quantize(self.merged_weight()).to(torch.uint8)


def required_grid(layer: nn.Module) -> QuantGrid:
    """The INT grid of a quantized base linear, else `CompressError`: QA needs a quantized base."""
    grid = getattr(layer, GRID_ATTR, None)
    if grid is None:
        raise CompressError(
            "--adapter-mode qa: the base is not quantized (no INT grid on its linears); "
            "fix: quantize it first (lorasearch quantize) and train on that folder"
        )
    return grid


MODE_CLASSES = {"sparse": SparseLoRALinear, "qa": QALoRALinear}


def check_mode(mode: str | None) -> str:
    """``None`` is ``dense``; anything outside `ADAPTER_MODES` is refused."""
    mode = mode or "dense"
    if mode not in ADAPTER_MODES:
        raise CompressError(f"--adapter-mode {mode!r}: unknown; fix: use one of {', '.join(ADAPTER_MODES)}")
    return mode


def adapter_folder_mode(adapter: str | Path | None) -> dict[str, Any] | None:
    """The mode document saved beside a SparsePEFT/QA adapter, or None."""
    if adapter is None or not (Path(adapter) / ADAPTER_MODE_FILE).is_file():
        return None
    return json.loads((Path(adapter) / ADAPTER_MODE_FILE).read_text())


def apply_adapter_mode(net: SuperNetwork, mode: str | None, saved: Mapping[str, Any] | None = None) -> SuperNetwork:
    """Turn ``net``'s adapter modules into SparsePEFT (``sparse``) or QA-SparsePEFT (``qa``) modules.

    ``saved`` is the mode document of the adapter folder the network was loaded from: its per-module
    masks must match the base's, else `CompressError` (the adapter was trained on another sparse base).
    QA-SparsePEFT quantizes ``W^p + L^p`` where the base's linears carry ``W^p`` (``prequant_weight``,
    see `lorasearch.compress.quant.attach_grids`), else the de-quantised base with a `LoraSearchWarning`;
    an adapter saved with ``qa_base: dequantized`` runs against the de-quantised base, and one saved
    with ``qa_base: float`` is refused on a base without ``W^p``. The network's ``adapter_metadata`` is
    set so `SuperNetwork.save_adapter` writes the document (with ``qa_base`` for QA).
    """
    mode = check_mode(mode)
    if mode == "dense":
        return net
    absent = [n for n, m in net.elastic.items() if m.lora_A is not None and m.base_layer.weight.device.type == "meta"]
    if absent:
        raise CompressError(f"--adapter-mode {mode}: {absent[0]}: the base weights are offloaded (--device-map) or absent, "
                            "and the mode's masks and grids need them; fix: load the model on one device (drop --device-map)")
    cls = MODE_CLASSES[mode]
    adapters = {name: m for name, m in net.elastic.items() if m.lora_A is not None}
    qa_base = resolve_qa_base(net, adapters.values(), saved) if mode == "qa" else None
    if qa_base == "dequantized":
        _drop_float_base(net.model)
    modules = {}
    for name, module in adapters.items():
        cls.convert(module)
        modules[name] = {"nonzero": module.mask_nnz, "fingerprint": module.mask_fingerprint}
    _drop_float_base(net.model)  # W^p of linears without an adapter is never used
    if saved is not None:
        _check_saved_masks(saved, modules, getattr(net, "adapter_path", None))
    document: dict[str, Any] = {"format": "lorasearch-adapter-mode", "version": 1, "adapter_mode": mode, "modules": modules}
    grids = [m.grid for m in net.elastic.values() if isinstance(m, QALoRALinear)]
    if grids:
        document["quant"] = {"bits": grids[0].bits, "group_size": grids[0].group_size}
        document["qa_base"] = qa_base
    net.adapter_metadata = document
    net.adapter_mode = mode
    return net


def resolve_qa_base(net: SuperNetwork, modules: Iterable[ElasticLoRALinear], saved: Mapping[str, Any] | None) -> str:
    """``float`` or ``dequantized``: what QA-SparsePEFT quantizes ``W + L^p`` with (see `apply_adapter_mode`)."""
    modules = list(modules)
    for m in modules:
        required_grid(m.base_layer)
    available = all(hasattr(m.base_layer, PREQUANT_ATTR) for m in modules)
    trained = None
    if saved is not None and saved.get("adapter_mode") == "qa":
        trained = saved.get("qa_base", "dequantized")  # adapters saved before it was recorded used s (q - z)
    source, base = getattr(net, "adapter_path", None), net.model_spec or "model"
    if trained == "float" and not available:
        raise CompressError(
            f"{source}: the QA-SparsePEFT adapter was trained against the weights from before quantization (W^p), "
            f"which the base {base} lacks ({PREQUANT_FILE}); fix: load the quantized folder it was trained on"
        )
    if trained == "dequantized":
        if available:
            warnings.warn(LoraSearchWarning(
                f"{source}: this QA-SparsePEFT adapter was trained against the de-quantised base s(q - z), so it runs "
                "against that base (not W^p + L^p as in the paper); retrain it to use the float base"), stacklevel=3)
        return "dequantized"
    if not available:
        warnings.warn(LoraSearchWarning(
            f"--adapter-mode qa: the base {base} has no weights from before quantization ({PREQUANT_FILE}), "
            "so QA-SparsePEFT trains against the de-quantised base s(q - z), where adapter entries below half a "
            "quantization step change nothing; fix: quantize the float model again with lorasearch quantize"),
            stacklevel=3)
        return "dequantized"
    return "float"


def _drop_float_base(model: nn.Module) -> None:
    for module in model.modules():
        if hasattr(module, PREQUANT_ATTR):
            delattr(module, PREQUANT_ATTR)


def _check_saved_masks(saved: Mapping[str, Any], modules: Mapping[str, Any], adapter: Any) -> None:
    for name, want in saved.get("modules", {}).items():
        have = modules.get(name)
        if have is not None and have["fingerprint"] != want["fingerprint"]:
            raise CompressError(
                f"{adapter}: {name}: the SparsePEFT adapter was trained on a base with {want['nonzero']:,} non-zeros "
                f"(mask {want['fingerprint']}) but this base has {have['nonzero']:,} (mask {have['fingerprint']}); "
                "merging would break the sparsity; fix: load the sparse base the adapter was trained on"
            )
