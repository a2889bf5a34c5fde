"""Elastic depth: decoder blocks that a subnet skips, the importance order that says which go first,
and the physical removal of skipped blocks from a copy of the model.

**Skipping.** `gate_block` makes a decoder block skippable in place: its ``forward`` is wrapped (an
instance attribute, so module names, state dicts and hooks stay as they were) and, while the block
is switched off, returns its input hidden states unchanged: an identity on the residual stream, at
no compute. Two details keep a skipped block invisible to the rest of the model:

* **Outputs.** Decoder layers of transformers 5.x return the hidden states as a tensor; those of
  older releases returned a tuple (hidden states, then attention weights when asked for, then the
  key/value cache when ``use_cache``). A skipped block returns what its block returned the last
  time it ran, and before that what its ``forward``'s return annotation says.
* **The key/value cache.** A cache sizes its masks and positions from one layer's length (layer 0
  by default). A skipped block therefore appends a placeholder of one head of size 1 per new token
  to its own cache layer (``[batch, 1, tokens, 1]`` zeros, a few bytes per token), so every layer
  reports the same length and cached decoding (generation, the option-text evaluator) stays exact.

**Importance order.** Which blocks a "keep k blocks" gene drops comes from `BlockImportance`:
one score per block, measured once before training on calibration data
(`lorasearch.train.block_importance`), saved beside the adapter as
``lorasearch_block_importance.json`` and applied by every consumer on loading, like the channel
permutation. Without a recorded order, `default_block_order` drops the deepest blocks first and the
last block last (deep blocks but the last change the residual stream least; ShortGPT, Gromov et al.).

**Removal.** `drop_skipped_blocks` deletes the switched-off blocks of a model (a copy), numbers the
rest 0..k-1 (``layer_idx`` of their attention, ``config.num_hidden_layers``, ``config.layer_types``)
and removes the gates, so the result is a stock model with fewer layers.
"""

from __future__ import annotations

import inspect
import json
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..errors import AdapterError
from ..io import atomic_write_json

BLOCK_IMPORTANCE_FILE = "lorasearch_block_importance.json"
_KEEP = "lorasearch_keep"  # True: the block runs; False: it is skipped
_INNER = "lorasearch_inner_forward"  # the forward the gate wraps (the class's, or a hook's)
_TUPLE = "lorasearch_returns_tuple"  # learned from the block's last real output
_CACHE_NAMES = ("cache", "past_key_values", "past_key_value")  # transformers 5.2x, 5.0x-5.1x, 4.x


# ------------------------------------------------------------------------------- gating
def gate_block(block: nn.Module) -> None:
    """Make ``block`` skippable (idempotent); it runs until `set_block_kept` switches it off."""
    if is_gated(block):
        return
    block.__dict__[_INNER] = block.forward
    block.__dict__[_TUPLE] = None
    block.__dict__[_KEEP] = True
    block.forward = types.MethodType(_gated_forward, block)


def is_gated(block: nn.Module) -> bool:
    """Whether `gate_block` wrapped ``block``."""
    return _KEEP in block.__dict__


def set_block_kept(block: nn.Module, keep: bool) -> None:
    """Switch a gated block on (``keep``) or off (an identity)."""
    block.__dict__[_KEEP] = bool(keep)


def block_kept(block: nn.Module) -> bool:
    """Whether a block runs (an ungated block always does)."""
    return bool(block.__dict__.get(_KEEP, True))


def ungate_block(block: nn.Module) -> None:
    """Undo `gate_block`: the block's own forward again, always run."""
    for name in ("forward", _INNER, _TUPLE, _KEEP):
        block.__dict__.pop(name, None)


def _gated_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    if self.__dict__[_KEEP]:
        out = self.__dict__[_INNER](*args, **kwargs)
        self.__dict__[_TUPLE] = isinstance(out, tuple)
        return out
    hidden = args[0] if args else kwargs["hidden_states"]
    cache = next((kwargs[n] for n in _CACHE_NAMES if kwargs.get(n) is not None), None)
    if cache is not None and kwargs.get("use_cache", True) is not False:
        _placeholder_update(self, cache, hidden)
    returns_tuple = self.__dict__[_TUPLE]
    if returns_tuple is None:
        returns_tuple = self.__dict__[_TUPLE] = _annotated_tuple(type(self))
    if not returns_tuple:
        return hidden
    extra = ((None,) if kwargs.get("output_attentions") else ()) + ((cache,) if kwargs.get("use_cache") else ())
    return (hidden, *extra)


def _annotated_tuple(cls: type) -> bool:
    """Whether a decoder layer class says it returns a tuple (transformers 4.x) rather than a tensor."""
    annotation = inspect.signature(cls.forward).return_annotation
    return "tuple" in str(annotation).lower()


def _placeholder_update(block: nn.Module, cache: Any, hidden: torch.Tensor) -> None:
    """Grow the skipped block's cache layer by the new tokens, so all layers report one length."""
    layer_idx = block_layer_index(block)
    if layer_idx is None or not hasattr(cache, "update"):
        return
    placeholder = hidden.new_zeros(hidden.shape[0], 1, hidden.shape[1], 1)
    cache.update(placeholder, placeholder, layer_idx)


def block_layer_index(block: nn.Module) -> int | None:
    """The ``layer_idx`` the block's attention uses for the key/value cache (None when it has none)."""
    for module in block.modules():
        index = module.__dict__.get("layer_idx")
        if isinstance(index, int) and not isinstance(index, bool):
            return index
    return None


# ----------------------------------------------------------------------------- removal
def drop_skipped_blocks(model: nn.Module) -> list[int]:
    """Delete the switched-off gated blocks of ``model`` in place and number the rest 0..k-1; remove
    every gate. Returns the original indices of the blocks kept (every block when none was gated)."""
    containers = [m for m in model.modules() if isinstance(m, nn.ModuleList) and any(is_gated(b) for b in m)]
    kept: list[int] = []
    for container in containers:
        kept = [i for i, block in enumerate(container) if block_kept(block)]
        survivors = [container[i] for i in kept]
        for new_index, block in enumerate(survivors):
            ungate_block(block)
            _renumber(block, new_index)
        for block in container:
            ungate_block(block)
        container._modules.clear()
        for new_index, block in enumerate(survivors):
            container.add_module(str(new_index), block)
        _shrink_config(getattr(model, "config", None), kept)
    return kept


def _renumber(block: nn.Module, index: int) -> None:
    for module in block.modules():
        if isinstance(module.__dict__.get("layer_idx"), int):
            module.layer_idx = index


def _shrink_config(config: Any, kept: Sequence[int]) -> None:
    if config is None:
        return
    old = int(getattr(config, "num_hidden_layers", len(kept)))
    config.num_hidden_layers = len(kept)
    types_ = getattr(config, "layer_types", None)
    if isinstance(types_, (list, tuple)) and len(types_) == old:
        config.layer_types = [types_[i] for i in kept]


# ------------------------------------------------------------------------ importance
def default_block_order(n_blocks: int) -> list[int]:
    """Blocks from most to least important when nothing was measured: the last block, then the first
    to the last but one, so dropping k blocks drops the k deepest blocks before the last."""
    return [n_blocks - 1, *range(n_blocks - 1)] if n_blocks else []


@dataclass(frozen=True)
class BlockImportance:
    """One importance score per decoder block (higher: the block matters more), and how it was measured.

    Attributes:
        scores: per block index, e.g. one minus the cosine similarity of the block's input and output.
        info: plain facts (metric, calibration size, seed), stored with it.
    """

    scores: tuple[float, ...]
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def order(self) -> list[int]:
        """Block indices from most to least important (ties: the deeper block is dropped first)."""
        return sorted(range(len(self.scores)), key=lambda i: (-self.scores[i], i))

    def save(self, path: str | Path) -> Path:
        """Write the scores and the order to ``path`` (JSON), atomically."""
        document = {"format": "lorasearch-block-importance", "version": 1, "scores": list(self.scores),
                    "order": self.order, "info": dict(self.info)}
        atomic_write_json(path, document)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "BlockImportance":
        """Read a file written by `save`; raise `AdapterError` naming the file when it is unusable."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise AdapterError(f"{path}: cannot read the block importance ({exc}); fix: re-save the adapter") from None
        scores = data.get("scores") if isinstance(data, Mapping) else None
        if (not isinstance(data, Mapping) or data.get("format") != "lorasearch-block-importance"
                or not isinstance(scores, list) or not all(isinstance(s, (int, float)) for s in scores)):
            raise AdapterError(f"{path}: not a lorasearch block importance file (format, scores); "
                               "fix: remove it or re-save the adapter")
        return cls(tuple(float(s) for s in scores), dict(data.get("info") or {}))

    def check(self, n_blocks: int, source: str) -> None:
        """Raise `AdapterError` unless there is one score per block of the model."""
        if len(self.scores) != n_blocks:
            raise AdapterError(f"{source}: {len(self.scores)} block scores for a model of {n_blocks} blocks; "
                               "fix: load the base model the adapter was trained on")


def read_block_importance(folder: str | Path | None) -> BlockImportance | None:
    """The block importance saved beside an adapter folder, or None when there is none."""
    if folder is None or not (Path(folder) / BLOCK_IMPORTANCE_FILE).is_file():
        return None
    return BlockImportance.load(Path(folder) / BLOCK_IMPORTANCE_FILE)
