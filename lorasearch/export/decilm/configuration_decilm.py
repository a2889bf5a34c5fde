"""Configuration of a decoder whose blocks differ in shape: the DeciLM / Nemotron-NAS layout.

Written by lorasearch for its per-layer pruned exports; it imports
only transformers, so a folder that carries it loads without lorasearch.

``block_configs`` holds one entry per decoder block::

    {"attention": {"no_op": false, "replace_with_linear": false, "n_heads_in_group": 3},
     "ffn": {"no_op": false, "replace_with_linear": false, "intermediate_size": 1152}}

* ``attention.n_heads_in_group``: query heads per key/value head, so the block has
  ``num_attention_heads // n_heads_in_group`` key/value heads (the DeciLM meaning).
* ``attention.num_attention_heads`` (a lorasearch addition, absent when every block keeps the global
  count): the block's own query heads. vLLM's DeciLM loader reads the global count only, so a folder
  that uses it loads with this code alone.
* ``ffn.intermediate_size`` or DeciLM's ``ffn.ffn_mult`` (``2 * ffn_mult * hidden_size / 3``
  rounded up to a multiple of 256).
* ``no_op``: the block leaves that part out (the residual stream passes unchanged).
  ``replace_with_linear`` is read but must be false: this code has no linear replacement.

The entries read as attributes (``block.attention.no_op``) as well as keys, as vLLM reads them.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


class BlockSection(dict):
    """One part of a ``block_configs`` entry: a dict whose keys also read as attributes.

    An absent key is an absent attribute, so ``hasattr(block.ffn, "ffn_mult")`` is false when the
    entry gives ``intermediate_size``, which is how vLLM's DeciLM loader chooses between the two.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __deepcopy__(self, memo: dict) -> "BlockSection":
        import copy

        return type(self)({k: copy.deepcopy(v, memo) for k, v in self.items()})


def ffn_mult_to_intermediate_size(ffn_mult: float, hidden_size: int) -> int:
    """DeciLM's rule: ``int(2 * ffn_mult * hidden_size / 3)`` rounded up to a multiple of 256."""
    size = int(2 * ffn_mult * hidden_size / 3)
    return size if size % 256 == 0 else size + 256 - size % 256


class DeciLMConfig(PretrainedConfig):
    """A Llama-style decoder with a shape per block (``block_configs``); see the module docstring."""

    model_type = "nemotron-nas"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 4096,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        head_dim: int | None = None,
        hidden_act: str = "silu",
        max_position_embeddings: int = 2048,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        use_cache: bool = True,
        rope_parameters: dict | None = None,
        attention_bias: bool = False,
        qkv_bias: bool | None = None,
        mlp_bias: bool = False,
        sliding_window: int | None = None,
        attention_dropout: float = 0.0,
        block_configs: list | None = None,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        theta = kwargs.pop("rope_theta", None)
        self.rope_parameters = dict(rope_parameters or {"rope_type": "default", "rope_theta": theta or 10000.0})
        self.rope_theta = self.rope_parameters.get("rope_theta", theta)
        self.attention_bias = attention_bias
        self.qkv_bias = attention_bias if qkv_bias is None else qkv_bias
        self.mlp_bias = mlp_bias
        self.sliding_window = sliding_window
        self.attention_dropout = attention_dropout
        if block_configs is None:
            block_configs = [{"attention": {"n_heads_in_group": 1}, "ffn": {"ffn_mult": 4.0}}] * num_hidden_layers
        self.block_configs = [_block(b, n) for n, b in enumerate(block_configs)]
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
        self._check()

    # ------------------------------------------------------------------ per-block sizes
    def block_heads(self, index: int) -> int:
        """Query heads of block ``index`` (0 when its attention is left out)."""
        attention = self.block_configs[index].attention
        return 0 if attention.no_op else int(attention.get("num_attention_heads", self.num_attention_heads))

    def block_kv_heads(self, index: int) -> int:
        """Key/value heads of block ``index`` (0 when its attention is left out)."""
        attention = self.block_configs[index].attention
        return 0 if attention.no_op else self.block_heads(index) // int(attention.n_heads_in_group)

    def block_intermediate_size(self, index: int) -> int:
        """FFN width of block ``index`` (0 when its FFN is left out)."""
        ffn = self.block_configs[index].ffn
        if ffn.no_op:
            return 0
        if "intermediate_size" in ffn:
            return int(ffn.intermediate_size)
        return ffn_mult_to_intermediate_size(float(ffn.ffn_mult), self.hidden_size)

    def _check(self) -> None:
        if len(self.block_configs) != self.num_hidden_layers:
            raise ValueError(f"config.json: block_configs has {len(self.block_configs)} entries but "
                             f"num_hidden_layers is {self.num_hidden_layers}; fix: one entry per block")
        rope_type = self.rope_parameters.get("rope_type", self.rope_parameters.get("type", "default"))
        if rope_type not in STATIC_ROPE_TYPES:
            raise ValueError(f"config.json: rope_parameters.rope_type {rope_type!r} is not supported by this "
                             f"modeling code; fix: use one of {', '.join(STATIC_ROPE_TYPES)}")
        for n in range(self.num_hidden_layers):
            heads, kv = self.block_heads(n), self.block_kv_heads(n)
            if heads and (kv < 1 or heads % kv):
                raise ValueError(f"config.json: block_configs[{n}].attention: {heads} query heads cannot be split "
                                 f"into groups of n_heads_in_group; fix: a divisor of {heads}")


def _block(raw: Any, index: int) -> BlockSection:
    """A ``block_configs`` entry as attribute-readable sections, with DeciLM's defaults."""
    raw = dict(raw)
    block = BlockSection()
    for part in ("attention", "ffn"):
        section = BlockSection({"no_op": False, "replace_with_linear": False, **dict(raw.get(part) or {})})
        if section.replace_with_linear:
            raise ValueError(f"config.json: block_configs[{index}].{part}.replace_with_linear is true, which this "
                             "modeling code does not implement; fix: write the block with its own weights")
        if not section.no_op:
            needed = ("n_heads_in_group",) if part == "attention" else ("intermediate_size", "ffn_mult")
            if not any(section.get(key) is not None for key in needed):
                raise ValueError(f"config.json: block_configs[{index}].{part} needs {' or '.join(needed)}")
        block[part] = section
    return block
