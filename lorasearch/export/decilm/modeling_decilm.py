"""A decoder whose blocks differ in shape, read from ``config.block_configs`` (DeciLM / Nemotron-NAS).

Written by lorasearch for its per-layer pruned exports; it imports only torch and transformers, so a
folder that carries it loads with ``AutoModelForCausalLM.from_pretrained(folder,
trust_remote_code=True)`` and no lorasearch. Each block is a Llama block (RMSNorm, rotary attention
with grouped key/value heads, gated MLP) with its own query heads, key/value heads and MLP width, or
with its attention or MLP left out (``no_op``). The weights keep the Llama names
(``model.layers.N.self_attn.q_proj.weight``, ...), which vLLM's native ``DeciLMForCausalLM`` reads too.

Attention is eager or PyTorch's scaled-dot-product attention (``attn_implementation="sdpa"``, the
default); the key/value cache is the one transformers' ``generate`` passes in (a ``DynamicCache``
when none is given). Blocks whose attention is left out take no cache slot, as in vLLM.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_decilm import DeciLMConfig

_TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])


def _cache_field(cls: type) -> str:
    """The name of an output class's cache field: ``cache`` (transformers >= 5.25) or ``past_key_values``."""
    return "cache" if "cache" in getattr(cls, "__dataclass_fields__", {}) else "past_key_values"


def _output(cls: type, cache: Any, **fields: Any) -> Any:
    """A transformers output with ``cache`` in its cache field."""
    return cls(**fields, **{_cache_field(cls): cache})


class DeciLMRMSNorm(nn.Module):
    """Root-mean-square norm computed in fp32, as Llama's."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


class DeciLMRotaryEmbedding(nn.Module):
    """Rotary position embedding; a ``partial_rotary_factor`` below 1 rotates the first dimensions only.

    The frequencies are computed on first use on each device and held outside the module's buffers,
    so whatever way a loader materialises the model (meta device, ``to_empty``) cannot leave them
    uninitialised.
    """

    def __init__(self, config: DeciLMConfig) -> None:
        super().__init__()
        self.config = config
        params = config.rope_parameters
        factor = float(params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0) or 1.0))
        self.rotary_dim = int(config.head_dim * factor)
        self.rope_type = params.get("rope_type", params.get("type", "default"))
        self._frequencies: dict[torch.device, tuple[torch.Tensor, float]] = {}

    def frequencies(self, device: torch.device) -> tuple[torch.Tensor, float]:
        """The inverse frequencies (fp32, on ``device``) and the scale of cos and sin."""
        if device not in self._frequencies:
            if self.rope_type == "default":
                exponents = torch.arange(0, self.rotary_dim, 2, dtype=torch.int64, device=device).float()
                theta = float(self.config.rope_parameters["rope_theta"])
                self._frequencies[device] = 1.0 / (theta ** (exponents / self.rotary_dim)), 1.0
            else:
                from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

                inv_freq, scaling = ROPE_INIT_FUNCTIONS[self.rope_type](self.config)
                self._frequencies[device] = inv_freq.float().to(device), float(scaling)
        return self._frequencies[device]

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq, scaling = self.frequencies(positions.device)
        freqs = positions[..., None].float() * inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        return (angles.cos() * scaling).to(dtype), (angles.sin() * scaling).to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    rot = cos.shape[-1]
    rotated = x[..., :rot] * cos + _rotate_half(x[..., :rot]) * sin
    return rotated if rot == x.shape[-1] else torch.cat((rotated, x[..., rot:]), dim=-1)


class DeciLMAttention(nn.Module):
    """Grouped-query attention with this block's own query and key/value head counts."""

    def __init__(self, config: DeciLMConfig, heads: int, kv_heads: int, cache_index: int) -> None:
        super().__init__()
        self.config = config
        self.head_dim = config.head_dim
        self.heads, self.kv_heads = heads, kv_heads
        self.cache_index = cache_index
        self.scaling = self.head_dim ** -0.5
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, heads * self.head_dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(heads * self.head_dim, hidden, bias=config.attention_bias)

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], masks: "_Masks",
                cache: Any) -> torch.Tensor:
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = (t.unsqueeze(1) for t in rotary)
        q, k = _apply_rotary(q, cos, sin), _apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.cache_index)
        groups = self.heads // self.kv_heads
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        if getattr(self.config, "_attn_implementation", None) == "sdpa":
            plain = masks.plain(length, k.shape[-2])  # no mask needed: let the kernel apply causality
            bias = None if plain is not None else masks.bias(k.shape[-2], q.dtype)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=bool(plain), scale=self.scaling)
        else:
            weights = torch.matmul(q, k.transpose(2, 3)) * self.scaling + masks.bias(k.shape[-2], q.dtype)
            out = torch.matmul(torch.softmax(weights, dim=-1, dtype=torch.float32).to(q.dtype), v)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


class DeciLMMLP(nn.Module):
    """Gated MLP of this block's own width: ``down(act(gate(x)) * up(x))``."""

    def __init__(self, config: DeciLMConfig, width: int, hidden_act: str) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.gate_proj = nn.Linear(hidden, width, bias=config.mlp_bias)
        self.up_proj = nn.Linear(hidden, width, bias=config.mlp_bias)
        self.down_proj = nn.Linear(width, hidden, bias=config.mlp_bias)
        self.act_fn = ACT2FN[hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class DeciLMDecoderLayer(nn.Module):
    """One block: pre-norm attention and pre-norm MLP, either of them possibly left out."""

    def __init__(self, config: DeciLMConfig, index: int, cache_index: int) -> None:
        super().__init__()
        block = config.block_configs[index]
        self.self_attn = self.input_layernorm = self.mlp = self.post_attention_layernorm = None
        if not block.attention.no_op:
            self.input_layernorm = DeciLMRMSNorm(config.hidden_size, config.rms_norm_eps)
            self.self_attn = DeciLMAttention(config, config.block_heads(index), config.block_kv_heads(index), cache_index)
        if not block.ffn.no_op:
            self.post_attention_layernorm = DeciLMRMSNorm(config.hidden_size, config.rms_norm_eps)
            act = block.ffn.get("hidden_act") or config.hidden_act
            self.mlp = DeciLMMLP(config, config.block_intermediate_size(index), act)

    def forward(self, h: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], masks: "_Masks",
                cache: Any) -> torch.Tensor:
        if self.self_attn is not None:
            h = h + self.self_attn(self.input_layernorm(h), rotary, masks, cache)
        if self.mlp is not None:
            h = h + self.mlp(self.post_attention_layernorm(h))
        return h


class _Masks:
    """Additive attention masks (causal, padding, sliding window) for one forward, one per key length.

    Keys are the last ``length`` positions before the end of the queries, which holds for the full
    cache and for a sliding-window cache alike.
    """

    def __init__(self, query_positions: torch.Tensor, padding: torch.Tensor | None, window: int | None) -> None:
        if padding is not None and padding.dim() == 2 and bool(padding.all()):
            padding = None  # a mask of ones (what generate and lm-eval pass without padding) masks nothing
        self.queries, self.padding, self.window = query_positions, padding, window
        self.cache: dict[tuple[int, torch.dtype], torch.Tensor] = {}

    def plain(self, queries: int, keys: int) -> str | None:
        """``"causal"`` (queries and keys the same positions) or ``""`` (one query that sees every key)
        when no padding or window masks anything beyond causality; else None."""
        if self.padding is not None or (self.window is not None and keys > self.window):
            return None
        if queries == keys:
            return "causal"
        return "" if queries == 1 else None

    def bias(self, length: int, dtype: torch.dtype) -> torch.Tensor:
        key = (length, dtype)
        if key not in self.cache:
            self.cache[key] = self._build(length, dtype)
        return self.cache[key]

    def _build(self, length: int, dtype: torch.dtype) -> torch.Tensor:
        if self.padding is not None and self.padding.dim() == 4:
            given = self.padding[..., -length:]
            return given if given.is_floating_point() else torch.zeros_like(given, dtype=dtype).masked_fill(
                ~given.bool(), torch.finfo(dtype).min)
        end = int(self.queries[-1]) + 1
        keys = torch.arange(end - length, end, device=self.queries.device)
        allowed = keys[None, :] <= self.queries[:, None]
        if self.window is not None:
            allowed &= (self.queries[:, None] - keys[None, :]) < self.window
        allowed = allowed[None, None]
        if self.padding is not None:
            allowed = allowed & self.padding[:, keys].bool()[:, None, None, :]
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min)


class DeciLMPreTrainedModel(PreTrainedModel):
    """Weight initialisation and the transformers hooks shared by the model classes."""

    config_class = DeciLMConfig
    base_model_prefix = "model"
    _no_split_modules = ["DeciLMDecoderLayer"]
    _supports_sdpa = True
    _supports_cache_class = True

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(0.0, std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(0.0, std)
        elif isinstance(module, DeciLMRMSNorm):
            module.weight.data.fill_(1.0)


class DeciLMModel(DeciLMPreTrainedModel):
    """Embeddings, the blocks of ``config.block_configs`` and the final norm."""

    def __init__(self, config: DeciLMConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, getattr(config, "pad_token_id", None))
        layers, slot = [], 0
        for index in range(config.num_hidden_layers):
            layers.append(DeciLMDecoderLayer(config, index, slot))
            slot += layers[-1].self_attn is not None
        self.layers = nn.ModuleList(layers)
        self.norm = DeciLMRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = DeciLMRotaryEmbedding(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        cache: Any = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("DeciLMModel.forward: give exactly one of input_ids and inputs_embeds")
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        cache = cache if cache is not None else kwargs.get("past_key_values")  # the name before transformers 5.25
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache()
        past = cache.get_seq_length(0) if cache is not None else 0
        cache_position = kwargs.get("cache_position")  # given by generate before transformers 5.25
        if cache_position is None:
            cache_position = torch.arange(past, past + h.shape[1], device=h.device)
        if position_ids is None:
            position_ids = cache_position.unsqueeze(0)
        masks = _Masks(cache_position, attention_mask, self.config.sliding_window)
        rotary = self.rotary_emb(position_ids, h.dtype)
        for layer in self.layers:
            h = layer(h, rotary, masks, cache if use_cache else None)
        return _output(BaseModelOutputWithPast, cache if use_cache else None, last_hidden_state=self.norm(h))


class DeciLMForCausalLM(DeciLMPreTrainedModel, GenerationMixin):
    """`DeciLMModel` with a language-model head (tied to the embeddings when the config says so)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"} if _TRANSFORMERS_MAJOR >= 5 else ["lm_head.weight"]

    def __init__(self, config: DeciLMConfig) -> None:
        super().__init__(config)
        self.model = DeciLMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cache: Any = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        legacy = {k: kwargs[k] for k in ("past_key_values", "cache_position") if k in kwargs}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         inputs_embeds=inputs_embeds, use_cache=use_cache, cache=cache, **legacy)
        h = out.last_hidden_state
        if isinstance(logits_to_keep, int):
            h = h[:, -logits_to_keep:] if logits_to_keep else h
        else:
            h = h[:, logits_to_keep]
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            shifted = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
            loss = F.cross_entropy(shifted, labels[:, 1:].reshape(-1).to(logits.device), ignore_index=-100)
        return _output(CausalLMOutputWithPast, getattr(out, _cache_field(type(out))), loss=loss, logits=logits)


class LoraSearchDeciLMForCausalLM(DeciLMForCausalLM):
    """The same model under the name that a folder with per-block query heads declares.

    vLLM's DeciLM loader keeps the query heads global, so such a folder names this class in
    ``architectures``: an architecture vLLM does not list, refused before any weight is read
    rather than failing on a weight's shape (read from vLLM's source, not run).
    """
