"""`ElasticLoRALinear`: an `nn.Linear` with a LoRA branch whose rank and widths can shrink.

The active rank is a prefix: rank r uses ``lora_A.weight[:r]`` and ``lora_B.weight[:, :r]``.
Active widths keep the first channels of the base weight and of the adapter alike (Mode B).
Everything is sliced, never masked: views cost no copy, the inactive part costs no compute,
and switching configs only sets three integers.

The scale is ``alpha / r_max`` (``alpha / sqrt(r_max)`` with rsLoRA) for every sub-rank, as the
reference trains and evaluates its super-adapters.

The adapter may keep another dtype than the base (fp32 adapters over a bf16 base, as PEFT does by
default): in training (and wherever gradients are on) its branch runs in the adapter's dtype on an
input cast to it, and the sum is cast back to the base's dtype, PEFT's own order. Evaluation (eval
mode, no gradient) takes a cheaper path to the same function (`_add_low_rank`): the branch
accumulated into the base's output in place, by one ``addmm`` in the base's dtype where the dtypes
agree and on a GPU, so an elastic subnet costs little more than the same subnet merged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _add_low_rank(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """``y + scaling * (x A^T) B^T``, added into ``y`` in place, for evaluation (no gradient, eval mode).

    Where the adapter and the base share a dtype, and on a GPU, the branch runs in the base's dtype:
    casting the small ``A`` and ``B`` costs ``r * (in + out)`` element copies where casting the input
    would cost ``tokens * in``; the scale goes into the second matmul, which accumulates straight into
    ``y`` (one ``addmm``: no ``tokens x out`` temporary, no separate scale or add). On the CPU an fp32
    adapter over a bf16/fp16 base keeps its branch in fp32, PEFT's way (a CPU's low-precision matmuls
    are slow, its input cast is not), and only the sum lands in ``y`` in place.
    """
    if a.dtype == y.dtype or y.device.type != "cpu":
        low = F.linear(x, a.to(y.dtype))
        y.view(-1, y.shape[-1]).addmm_(low.reshape(-1, low.shape[-1]), b.to(y.dtype).t(), alpha=scaling)
    else:
        y.add_(F.linear(F.linear(x.to(a.dtype), a), b), alpha=scaling)
    return y


class ElasticLoRALinear(nn.Module):
    """Wrap a frozen ``nn.Linear`` (kept as ``base_layer``) with an elastic LoRA branch.

    Args:
        base_layer: the linear layer of the model; its weights are used in place, not copied.
        rank: the trained (maximal) LoRA rank; 0 means no adapter, only elastic widths.
        alpha: LoRA alpha; the scale is ``alpha / rank`` (``alpha / sqrt(rank)`` with rsLoRA).
        dropout: dropout on the adapter's input during training, as in PEFT.
        use_rslora: use rank-stabilised scaling.
        adapter_dtype: the adapter's dtype (default: the base's). Fresh adapters are initialised on
            the CPU, so a seed gives the same adapter on every device.
        adapter_device: where the adapter lives (default: the base weight's device). A base without
            weights (the meta device: shapes only, or offloaded by accelerate) may still have a
            real adapter, e.g. on the CPU or on the device its layer runs on.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        rank: int = 0,
        alpha: float = 1.0,
        dropout: float = 0.0,
        use_rslora: bool = False,
        adapter_dtype: torch.dtype | None = None,
        adapter_device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.max_rank = int(rank)
        self.alpha = float(alpha)
        self.use_rslora = use_rslora
        self.scaling = self.alpha / (math.sqrt(rank) if use_rslora else rank) if rank else 0.0
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if rank:
            device = torch.device(adapter_device) if adapter_device is not None else base_layer.weight.device
            kw = {"device": device if device.type == "meta" else "cpu", "dtype": adapter_dtype or base_layer.weight.dtype}
            self.lora_A = nn.Linear(self.in_features, rank, bias=False, **kw)
            self.lora_B = nn.Linear(rank, self.out_features, bias=False, **kw)
            self.reset_adapter_parameters()
            self.lora_A.to(device)
            self.lora_B.to(device)
        else:
            self.lora_A = self.lora_B = None
        self.active_rank = self.max_rank
        self.active_in = self.in_features
        self.active_out = self.out_features

    def reset_adapter_parameters(self) -> None:
        """PEFT's LoRA initialisation: Kaiming-uniform A, zero B (the adapter starts as a no-op)."""
        if self.lora_A is not None:
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B.weight)

    def set_active(self, rank: int | None = None, in_features: int | None = None, out_features: int | None = None) -> None:
        """Choose the active sub-layer; ``None`` keeps the maximal value of that dimension."""
        rank = self.max_rank if rank is None else int(rank)
        in_features = self.in_features if in_features is None else int(in_features)
        out_features = self.out_features if out_features is None else int(out_features)
        if not 0 <= rank <= self.max_rank:
            raise ValueError(f"rank {rank} outside [0, {self.max_rank}]")
        if not 0 < in_features <= self.in_features or not 0 < out_features <= self.out_features:
            raise ValueError(f"width {in_features}x{out_features} outside {self.in_features}x{self.out_features}")
        self.active_rank, self.active_in, self.active_out = rank, in_features, out_features

    def reset(self) -> None:
        """Activate the maximal sub-layer."""
        self.set_active()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, i, o = self.active_rank, self.active_in, self.active_out
        weight = self.base_layer.weight
        bias = self.base_layer.bias
        if i != self.in_features or o != self.out_features:
            weight = weight[:o, :i]
            bias = bias[:o] if bias is not None else None
        y = F.linear(x, weight, bias)
        if r:
            a, b = self.lora_A.weight, self.lora_B.weight
            # Slice only what shrank: a full-size slice still adds a view and a backward copy.
            if r != self.max_rank or i != self.in_features:
                a = a[:r, :i]
            if r != self.max_rank or o != self.out_features:
                b = b[:o, :r]
            if self.training or torch.is_grad_enabled() or torch.jit.is_tracing():
                h = self.lora_dropout(x)
                delta = F.linear(F.linear(h.to(a.dtype), a), b) * self.scaling  # .to() is free when dtypes agree
                y = (y + delta).to(y.dtype)  # PEFT's order: add in the adapter's dtype, cast back
            else:
                y = _add_low_rank(y, x, a, b, self.scaling)
        return y

    @property
    def adapter_dtype(self) -> torch.dtype | None:
        """The adapter weights' dtype (None without an adapter)."""
        return self.lora_A.weight.dtype if self.lora_A is not None else None

    def active_delta_weight(self) -> torch.Tensor | None:
        """``scale * B[:o, :r] @ A[:r, :i]``, the adapter folded into a weight of the active shape."""
        r, i, o = self.active_rank, self.active_in, self.active_out
        if not r:
            return None
        return (self.lora_B.weight[:o, :r] @ self.lora_A.weight[:r, :i]) * self.scaling

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """The base weight at the active sizes with the active adapter folded in (what merging stores)."""
        weight = self.base_layer.weight[: self.active_out, : self.active_in]
        delta = self.active_delta_weight()
        return weight if delta is None else (weight.float() + delta.float()).to(weight.dtype)

    def extra_repr(self) -> str:
        return (
            f"in={self.active_in}/{self.in_features}, out={self.active_out}/{self.out_features}, "
            f"rank={self.active_rank}/{self.max_rank}, scaling={self.scaling:g}"
        )
