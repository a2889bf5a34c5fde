"""Resolve a `SearchSpace` against a model: which modules each gene drives, checked before any work.

`bind(space, model)` finds the decoder layers, expands every module pattern, and checks that
each pattern matches, that choices fit the modules (rank <= min(in, out), widths <= channels,
heads in whole key/value groups) and that no module dimension is driven by two genes.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass
from typing import Any, Mapping

from torch import nn

from ..errors import SpaceError, where
from ..space import Gene, Group, SearchSpace
from .elastic import ElasticLoRALinear

_HEAD_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class Slot:
    """One dimension (``rank``, ``in`` or ``out``) of one module, set from a gene's value.

    The active size is ``round(value * per_unit)``: 1 for ranks and channel counts, the full size
    for width fractions, the head size for attention heads.
    """

    module: str
    dim: str
    per_unit: float

    def size(self, value: Any) -> int:
        return max(1, int(round(float(value) * self.per_unit))) if self.dim != "rank" else int(value)


@dataclass(frozen=True)
class SpaceBinding:
    """A space bound to a model's modules.

    Attributes:
        space: the space, expanded over the model's layers.
        slots: gene key -> the module dimensions it drives.
        rank_modules: full names of modules with elastic-rank adapters.
        fixed_modules: full names of modules with fixed-rank adapters (``adapter.targets``).
        width_modules: full names of modules whose base channels are elastic (Mode B).
        modules: all of the above, in model order.
    """

    space: SearchSpace
    slots: Mapping[str, tuple[Slot, ...]]
    rank_modules: tuple[str, ...]
    fixed_modules: tuple[str, ...]
    width_modules: tuple[str, ...]
    modules: tuple[str, ...]
    """Every module that gets wrapped in an `ElasticLoRALinear`, in model order."""

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


def bind(space: SearchSpace, model: nn.Module) -> SpaceBinding:
    """Resolve and check ``space`` against ``model``; raise `SpaceError` on the first problem."""
    if space.per_layer is not None:
        layers = find_layers(space, model)
        if layers != list(range(len(layers))):
            raise SpaceError(f"{where(space.source, 'per_layer')}layer indices {layers} are not 0..N-1; "
                             "fix: point per_layer at the decoder layers' container, e.g. model.layers.{i}")
        space = space.with_num_layers(len(layers))
    binder = _Binder(space, linear_modules(model), dict(model.named_modules()))
    return binder.run()


class _Binder:
    def __init__(self, space: SearchSpace, linears: dict[str, nn.Module], all_modules: dict[str, nn.Module]):
        self.space = space
        self.linears = linears
        self.all_modules = all_modules
        self.owner: dict[tuple[str, str], str] = {}

    def run(self) -> SpaceBinding:
        slots = {gene.key: self._gene_slots(gene) for gene in self.space.genes}
        rank_modules = _ordered(s.module for ss in slots.values() for s in ss if s.dim == "rank")
        width_modules = _ordered(s.module for ss in slots.values() for s in ss if s.dim != "rank")
        fixed = self._fixed_targets(set(rank_modules))
        order = {name: n for n, name in enumerate(self.linears)}
        by_model_order = lambda names: tuple(sorted(names, key=order.__getitem__))  # noqa: E731
        return SpaceBinding(
            self.space, slots, by_model_order(rank_modules), by_model_order(fixed), by_model_order(width_modules),
            by_model_order(set(rank_modules) | set(fixed) | set(width_modules)),
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
            else:
                slots += self._head_slots(group, prefix)
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
