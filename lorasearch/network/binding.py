"""Resolve a `SearchSpace` against a model: which modules each gene drives, checked before any work.

`bind(space, model)` finds the decoder layers, expands every module pattern, and checks that
each pattern matches, that choices fit the modules (rank <= min(in, out), widths <= channels,
heads in whole key/value groups, blocks kept <= blocks) and that no module dimension is driven by
two genes. A depth gene drives the ``block`` dimension of decoder blocks: 1 runs the block, 0 skips it.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass
from typing import Any, Mapping

from typing import Sequence

from torch import nn

from ..errors import SpaceError, where
from ..space import Gene, Group, SearchSpace
from .depth import default_block_order
from .elastic import ElasticLoRALinear

_HEAD_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class Slot:
    """One dimension (``rank``, ``in``, ``out`` or ``block``) of one module, set from a gene's value.

    The active size is ``round(value * per_unit)``: 1 for ranks and channel counts, the full size
    for width fractions, the head size for attention heads. For a decoder block (``block``) it is 1
    (run) or 0 (skip): the block runs when its ``position`` in the importance order (0 = most
    important) is below the number of blocks kept, ``round(value * per_unit)``.
    """

    module: str
    dim: str
    per_unit: float
    position: int = 0

    def size(self, value: Any) -> int:
        if self.dim == "rank":
            return int(value)
        if self.dim == "block":
            return int(self.position < int(round(float(value) * self.per_unit)))
        return max(1, int(round(float(value) * self.per_unit)))


@dataclass(frozen=True)
class SpaceBinding:
    """A space bound to a model's modules.

    Attributes:
        space: the space, expanded over the model's layers.
        slots: gene key -> the module dimensions it drives.
        rank_modules: full names of modules with elastic-rank adapters.
        fixed_modules: full names of modules with fixed-rank adapters (``adapter.targets``).
        width_modules: full names of modules whose base channels are elastic (Mode B).
        modules: the three above, in model order.
        block_modules: full names of the decoder blocks a depth gene can skip, in model order.
        block_order: block indices from most to least important (what depth counts drop last to first).
    """

    space: SearchSpace
    slots: Mapping[str, tuple[Slot, ...]]
    rank_modules: tuple[str, ...]
    fixed_modules: tuple[str, ...]
    width_modules: tuple[str, ...]
    modules: tuple[str, ...]
    """Every module that gets wrapped in an `ElasticLoRALinear`, in model order."""
    block_modules: tuple[str, ...] = ()
    block_order: tuple[int, ...] = ()

    def resolve(self, config: Mapping[str, Any]) -> dict[str, dict[str, int]]:
        """Map a config to ``module -> {dim: active size}`` (dims not named stay maximal)."""
        self.space.encode(config)  # validates keys and values
        sizes: dict[str, dict[str, int]] = {}
        for key, slots in self.slots.items():
            for slot in slots:
                sizes.setdefault(slot.module, {})[slot.dim] = slot.size(config[key])
        return sizes


def linear_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The model's linear layers by name (an already wrapped layer counts as one linear)."""
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, ElasticLoRALinear):
            found[name] = module
        elif isinstance(module, nn.Linear) and not _inside_wrapper(name, found):
            found[name] = module
    return found


def _inside_wrapper(name: str, found: Mapping[str, nn.Module]) -> bool:
    parent = name.rsplit(".", 1)[0]
    return isinstance(found.get(parent), ElasticLoRALinear)


def find_layers(space: SearchSpace, model: nn.Module) -> list[int]:
    """Indices of the decoder layers that the space's ``per_layer`` template finds in the model."""
    names = [n for n, _ in model.named_modules()]
    pattern = re.compile(re.escape(space.per_layer).replace(r"\{i\}", r"(\d+)") + "$")
    layers = sorted({int(m.group(1)) for n in names if (m := pattern.match(n))})
    if not layers:
        close = difflib.get_close_matches(space.per_layer.replace("{i}", "0"), names, n=3, cutoff=0.4)
        hint = f"nearest module names: {', '.join(close)}" if close else "check the model's module names"
        raise SpaceError(f"{where(space.source, 'per_layer')}{space.per_layer!r} matches no module; {hint}")
    return layers


def bind(space: SearchSpace, model: nn.Module, block_order: Sequence[int] | None = None) -> SpaceBinding:
    """Resolve and check ``space`` against ``model``; raise `SpaceError` on the first problem.

    ``block_order`` (block indices, most important first) says which blocks a depth count keeps;
    default: `lorasearch.network.depth.default_block_order`.
    """
    if space.per_layer is not None:
        layers = find_layers(space, model)
        if layers != list(range(len(layers))):
            raise SpaceError(f"{where(space.source, 'per_layer')}layer indices {layers} are not 0..N-1; "
                             "fix: point per_layer at the decoder layers' container, e.g. model.layers.{i}")
        space = space.with_num_layers(len(layers))
    order = tuple(block_order) if block_order is not None else tuple(default_block_order(space.num_layers or 0))
    if sorted(order) != list(range(space.num_layers or 0)):
        raise SpaceError(f"{where(space.source, 'per_layer')}the block order {list(order)} is not a permutation of the "
                         f"model's {space.num_layers or 0} blocks; fix: use the adapter trained on this model")
    binder = _Binder(space, linear_modules(model), dict(model.named_modules()), order)
    return binder.run()


class _Binder:
    def __init__(self, space: SearchSpace, linears: dict[str, nn.Module], all_modules: dict[str, nn.Module],
                 block_order: tuple[int, ...] = ()):
        self.space = space
        self.linears = linears
        self.all_modules = all_modules
        self.block_order = block_order
        self.owner: dict[tuple[str, str], str] = {}

    def run(self) -> SpaceBinding:
        slots = {gene.key: self._gene_slots(gene) for gene in self.space.genes}
        rank_modules = _ordered(s.module for ss in slots.values() for s in ss if s.dim == "rank")
        width_modules = _ordered(s.module for ss in slots.values() for s in ss if s.dim in ("in", "out"))
        blocks = _ordered(s.module for ss in slots.values() for s in ss if s.dim == "block")
        fixed = self._fixed_targets(set(rank_modules))
        order = {name: n for n, name in enumerate(self.linears)}
        by_model_order = lambda names: tuple(sorted(names, key=order.__getitem__))  # noqa: E731
        modules = list(self.all_modules)
        return SpaceBinding(
            self.space, slots, by_model_order(rank_modules), by_model_order(fixed), by_model_order(width_modules),
            by_model_order(set(rank_modules) | set(fixed) | set(width_modules)),
            tuple(sorted(blocks, key=modules.index)), self.block_order,
        )

    def _prefixes(self, group: Group, gene: Gene) -> list[str]:
        if self.space.per_layer is None:
            return [""]
        layers = [gene.layer] if gene.layer is not None else self.space.layer_indices(group)
        return [self.space.per_layer.replace("{i}", str(i)) + "." for i in layers]

    def _gene_slots(self, gene: Gene) -> tuple[Slot, ...]:
        group = self.space.group(gene.group)
        slots: list[Slot] = []
        for prefix in self._prefixes(group, gene):
            if group.kind == "rank":
                patterns = (gene.module,) if gene.module else group.modules
                slots += self._rank_slots(group, prefix, patterns)
            elif group.kind == "width":
                slots += self._width_slots(group, prefix)
            elif group.kind == "heads":
                slots += self._head_slots(group, prefix)
        if group.kind == "depth":
            slots = self._block_slots(group, gene)
        for slot in slots:
            self._claim(slot, group, gene)
        return tuple(slots)

    def _claim(self, slot: Slot, group: Group, gene: Gene) -> None:
        key = (slot.module, slot.dim)
        other = self.owner.setdefault(key, gene.key)
        if other != gene.key:
            raise SpaceError(
                f"{where(self.space.source, f'groups.{group.name}')}module {slot.module} ({slot.dim}) is driven by "
                f"both {other!r} and {gene.key!r}; fix: make the patterns match each module once"
            )

    def _match(self, prefix: str, pattern: str, field: str) -> list[str]:
        rel = {name[len(prefix):]: name for name in self.linears if name.startswith(prefix)}
        # A bare leaf name (PEFT style, e.g. q_proj) matches at any depth below the prefix.
        hits = [full for r, full in rel.items() if fnmatch.fnmatchcase(r, pattern) or fnmatch.fnmatchcase(r, "*." + pattern)]
        if not hits:
            close = difflib.get_close_matches(pattern, list(rel), n=3, cutoff=0.3) or list(rel)[:3]
            raise SpaceError(
                f"{where(self.space.source, field)}{pattern!r} matches no linear module under "
                f"'{prefix or '<model>'}'; nearest: {', '.join(close) or 'none'}"
            )
        return hits

    def _rank_slots(self, group: Group, prefix: str, patterns) -> list[Slot]:
        slots = []
        for pattern in patterns:
            for name in self._match(prefix, pattern, f"groups.{group.name}.modules"):
                module = self.linears[name]
                size = min(module.in_features, module.out_features)
                if group.choices[0] > size:
                    raise SpaceError(
                        f"{where(self.space.source, f'groups.{group.name}.rank')}rank {group.choices[0]} exceeds "
                        f"{name}'s size {module.in_features}x{module.out_features}; fix: use ranks <= {size}"
                    )
                slots.append(Slot(name, "rank", 1.0))
        return slots

    def _width_slots(self, group: Group, prefix: str) -> list[Slot]:
        field = f"groups.{group.name}.channels"
        outs = [n for p in group.channels_out for n in self._match(prefix, p, field)]
        ins = [n for p in group.channels_in for n in self._match(prefix, p, field)]
        sizes = {self.linears[n].out_features for n in outs} | {self.linears[n].in_features for n in ins}
        if len(sizes) != 1:
            raise SpaceError(f"{where(self.space.source, field)}the modules under '{prefix}' have different channel counts {sorted(sizes)}")
        full = sizes.pop()
        fractions = isinstance(group.choices[0], float)
        if not fractions and group.choices[0] != full:
            raise SpaceError(
                f"{where(self.space.source, f'groups.{group.name}.width')}the first width {group.choices[0]} must be "
                f"the full size {full} of {(outs + ins)[0]}; fix: start the list with {full} or use fractions"
            )
        per_unit = float(full) if fractions else 1.0
        return [Slot(n, "out", per_unit) for n in outs] + [Slot(n, "in", per_unit) for n in ins]

    def _head_slots(self, group: Group, prefix: str) -> list[Slot]:
        field = f"groups.{group.name}"
        attn_name = prefix + group.attention
        attn = self.all_modules.get(attn_name)
        missing = [p for p in _HEAD_PROJECTIONS if f"{attn_name}.{p}" not in self.linears]
        if attn is None or missing:
            raise SpaceError(
                f"{where(self.space.source, field)}'{attn_name}' has no separate {', '.join(missing or _HEAD_PROJECTIONS)}; "
                "fix: set attention: to the attention module (fused qkv projections cannot drop heads)"
            )
        q, k = self.linears[f"{attn_name}.q_proj"], self.linears[f"{attn_name}.k_proj"]
        head_dim = int(getattr(attn, "head_dim", 0) or 0)
        if not head_dim:
            raise SpaceError(f"{where(self.space.source, field)}'{attn_name}' does not expose head_dim; "
                             "fix: drop the heads group for this model (widths and ranks still work)")
        heads, kv_heads = q.out_features // head_dim, k.out_features // head_dim
        per_kv = heads // kv_heads
        bad = [h for h in group.choices if h % per_kv or h > heads]
        if group.choices[0] != heads or bad:
            raise SpaceError(
                f"{where(self.space.source, field + '.heads')}choices must start at {heads} heads and be multiples of "
                f"{per_kv} (query heads per key/value head); fix: e.g. {list(range(heads, 0, -per_kv))}"
            )
        return [
            Slot(f"{attn_name}.q_proj", "out", float(head_dim)),
            Slot(f"{attn_name}.k_proj", "out", head_dim / per_kv),
            Slot(f"{attn_name}.v_proj", "out", head_dim / per_kv),
            Slot(f"{attn_name}.o_proj", "in", float(head_dim)),
        ]

    def _block_slots(self, group: Group, gene: Gene) -> list[Slot]:
        """One ``block`` slot per decoder block the gene drives: its own block (``share: layer``), or
        every block of the group, each with its position among them in the importance order."""
        field = f"groups.{group.name}.depth"
        container = self.space.per_layer.rpartition(".")[0]
        if not self.space.per_layer.endswith(".{i}") or not isinstance(self.all_modules.get(container), nn.ModuleList):
            raise SpaceError(f"{where(self.space.source, 'per_layer')}{self.space.per_layer!r} does not name the items of "
                             "the decoder's list of blocks, so whole blocks cannot be skipped; fix: use e.g. "
                             "model.layers.{i}, or drop the depth group")
        name = lambda i: self.space.per_layer.replace("{i}", str(i))  # noqa: E731
        if gene.layer is not None:
            return [Slot(name(gene.layer), "block", 1.0)]
        blocks = self.space.layer_indices(group)
        fractions = isinstance(group.choices[0], float)
        if not fractions and group.choices[0] != len(blocks):
            raise SpaceError(f"{where(self.space.source, field)}the first choice {group.choices[0]} must be the number of "
                             f"blocks the group covers ({len(blocks)}); fix: start the list with {len(blocks)} or use "
                             "fractions")
        too_few = [v for v in group.choices if round(float(v) * (len(blocks) if fractions else 1)) < 1]
        if too_few:
            raise SpaceError(f"{where(self.space.source, field)}{too_few[0]} of {len(blocks)} blocks keeps none; "
                             "fix: keep at least one block")
        ranked = [i for i in self.block_order if i in set(blocks)]
        per_unit = float(len(blocks)) if fractions else 1.0
        return [Slot(name(i), "block", per_unit, ranked.index(i)) for i in blocks]

    def _fixed_targets(self, rank_modules: set[str]) -> list[str]:
        if not self.space.adapter.targets:
            return []
        prefixes = [""] if self.space.per_layer is None else [
            self.space.per_layer.replace("{i}", str(i)) + "." for i in range(self.space.num_layers or 0)
        ]
        found = [n for p in prefixes for t in self.space.adapter.targets for n in self._match(p, t, "adapter.targets")]
        return [n for n in _ordered(found) if n not in rank_modules]


def _ordered(names) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))
