"""Declarative search spaces: which modules carry elastic adapters, which share a choice, and the choices.

A space file (YAML or JSON, one schema) looks like::

    name: llama-shears
    adapter: {rank: 32, alpha: 64}
    per_layer: "model.layers.{i}"      # default; {i} runs over every decoder layer of the model
    groups:                             # one gene per group and layer (share: layer, the default)
      attn: {modules: [self_attn.q_proj, self_attn.k_proj, self_attn.v_proj], rank: [32, 24, 16]}
      up:   {modules: [mlp.up_proj], rank: [32, 24, 16]}
      mlp:  {width: [1.0, 0.875, 0.75], channels: mlp}    # Mode B: MLP intermediate channels
      heads: {heads: [9, 6, 3]}                            # Mode B: whole attention heads
      depth: {depth: [30, 28, 26, 24]}                     # Mode B: whole decoder blocks kept

Each group has exactly one kind of choice list, written largest first:

* ``rank`` (Mode A): the active LoRA rank of every module in ``modules``. The first value is the
  trained rank of those modules: ``adapter.rank`` for fresh adapters, each module's own rank for a
  loaded adapter (a module of PEFT's ``rank_pattern`` may differ from ``r``: give it a group of its own).
* ``width`` (Mode B): the number of channels kept, as fractions in (0, 1] (first 1.0) or as channel
  counts (first = the full size). ``channels: mlp`` means the rows of ``mlp.gate_proj`` and
  ``mlp.up_proj`` and the columns of ``mlp.down_proj``; ``channels: {out: [...], in: [...]}`` names
  other modules. Base weights and adapters are sliced together.
* ``heads`` (Mode B): the number of query heads kept in the ``attention`` module (default
  ``self_attn``). Whole key/value groups go with them, so each value must be a multiple of
  ``num_attention_heads / num_key_value_heads``.
* ``depth`` (Mode B): whole decoder blocks (the modules ``per_layer`` names). With ``share: global``
  (the default for depth) one gene holds the number of blocks kept, as a count (first = every
  block the group covers) or as fractions (first 1.0); the blocks dropped are the least important
  ones in the order recorded beside the adapter (`lorasearch.network.depth`). With ``share: layer``
  each block has its own keep gene whose choices are ``[1, 0]`` (keep, drop). A dropped block is
  an identity on the residual stream. ``layers: [..]`` restricts which blocks may be dropped.

``share`` chooses who shares one gene: ``layer`` (the group's modules within one layer, default),
``global`` (all layers) or ``module`` (every listed module of every layer on its own; rank groups
only). ``layers: [..]`` restricts a group to some layer indices. Module entries are glob patterns
relative to the layer (or to the model when ``per_layer`` is null).

A *config* is a plain dict ``gene key -> chosen value``; a *gene vector* holds, per gene, the index
of the value in its descending list (0 = largest). Gene keys are ``group`` (global),
``group.LAYER`` (per layer) and ``group.LAYER.MODULE`` (per module).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import yaml

from .errors import SpaceError, where
from .io import atomic_write_text, parse_json, parse_yaml, read_text

DEFAULT_PER_LAYER = "model.layers.{i}"
KINDS = ("rank", "width", "heads", "depth")
SHARES = ("layer", "global", "module")
CHANNEL_PRESETS: dict[str, dict[str, tuple[str, ...]]] = {
    "mlp": {"out": ("mlp.gate_proj", "mlp.up_proj"), "in": ("mlp.down_proj",)},
}
_GROUP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_TOP_KEYS = {"name", "description", "source", "adapter", "per_layer", "num_layers", "groups"}
_ADAPTER_KEYS = {"rank", "alpha", "dropout", "use_rslora", "targets"}
_GROUP_KEYS = {"modules", "rank", "width", "heads", "depth", "channels", "attention", "share", "layers"}

Config = dict[str, Any]


@dataclass(frozen=True)
class AdapterSpec:
    """How fresh adapters are built: trained rank, alpha (scale = alpha / rank), dropout.

    ``targets`` lists extra modules that carry a fixed-rank adapter outside any group.
    """

    rank: int | None = None
    alpha: float | None = None
    dropout: float = 0.0
    use_rslora: bool = False
    targets: tuple[str, ...] = ()

    @property
    def effective_alpha(self) -> float:
        """alpha, defaulting to the rank (a scale of 1)."""
        return float(self.alpha if self.alpha is not None else (self.rank or 1))


@dataclass(frozen=True)
class Group:
    """One named group of the file: a kind of choice, its descending choices and its modules."""

    name: str
    kind: str
    choices: tuple
    modules: tuple[str, ...] = ()
    channels: str | None = None
    channels_out: tuple[str, ...] = ()
    channels_in: tuple[str, ...] = ()
    attention: str = "self_attn"
    share: str = "layer"
    layers: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Gene:
    """One searchable decision: its config key, its group and layer, and its choices."""

    key: str
    group: str
    choices: tuple
    layer: int | None = None
    module: str | None = None


@dataclass(frozen=True)
class SearchSpace:
    """A search space as declared in a file; see the module docstring for the format.

    The gene-level API (:meth:`size`, :meth:`encode`, :meth:`decode`, :meth:`max`, :meth:`min`,
    :meth:`heuristic`, :meth:`sample`) needs the number of layers: set ``num_layers`` in the file,
    call :meth:`with_num_layers`, or bind the space to a model (``lorasearch.network.binding.bind``).
    """

    name: str
    groups: tuple[Group, ...]
    adapter: AdapterSpec = field(default_factory=AdapterSpec)
    per_layer: str | None = DEFAULT_PER_LAYER
    num_layers: int | None = None
    description: str = ""
    source: str | None = field(default=None, compare=False)

    # ----------------------------------------------------------------- reading and writing
    @classmethod
    def load(cls, path: str | Path) -> "SearchSpace":
        """Read a space from a ``.yaml``/``.yml`` or ``.json`` file."""
        path = Path(path)
        text = read_text(path, SpaceError, "space file")
        return cls.loads(text, source=str(path), fmt="json" if path.suffix == ".json" else "yaml")

    @classmethod
    def loads(cls, text: str, *, source: str = "<string>", fmt: str = "yaml") -> "SearchSpace":
        """Parse a space from YAML (a superset of JSON) or strict JSON text."""
        data = parse_json(text, source, SpaceError) if fmt == "json" else parse_yaml(text, source, SpaceError)
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> "SearchSpace":
        """Build and check a space from its plain-dict form (what the files hold)."""
        return _parse_space(data, source)

    def to_dict(self) -> dict[str, Any]:
        """The plain-dict form, as written to files; ``from_dict`` reads it back unchanged."""
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        adapter = _adapter_to_dict(self.adapter)
        if adapter:
            out["adapter"] = adapter
        out["per_layer"] = self.per_layer
        if self.num_layers is not None:
            out["num_layers"] = self.num_layers
        out["groups"] = {g.name: _group_to_dict(g, self.per_layer) for g in self.groups}
        return out

    def dumps(self, fmt: str = "yaml") -> str:
        """Serialise to YAML or JSON text."""
        if fmt == "json":
            return json.dumps(self.to_dict(), indent=2) + "\n"
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=100)

    def save(self, path: str | Path) -> Path:
        """Write the space to ``path`` (JSON for ``.json``, else YAML), atomically."""
        path = Path(path)
        atomic_write_text(path, self.dumps("json" if path.suffix == ".json" else "yaml"))
        return path

    # ----------------------------------------------------------------------------- genes
    def with_num_layers(self, num_layers: int) -> "SearchSpace":
        """A copy of this space expanded over ``num_layers`` decoder layers."""
        if self.num_layers is not None and self.num_layers != num_layers:
            raise SpaceError(
                f"{where(self.source, 'num_layers')}the file says {self.num_layers} layers but the model has "
                f"{num_layers}; fix: remove num_layers or use a space made for this model"
            )
        space = replace(self, num_layers=num_layers)
        space._check_layer_subsets()
        return space

    @cached_property
    def genes(self) -> tuple[Gene, ...]:
        """Every gene of the space, in a fixed order (group order, then layer, then module)."""
        if self.per_layer is not None and self.num_layers is None:
            raise SpaceError(
                f"{where(self.source, 'num_layers')}the space is per layer but its layer count is unknown; "
                "fix: set num_layers in the file, pass a model (--model), or call with_num_layers(n)"
            )
        return tuple(gene for group in self.groups for gene in self._group_genes(group))

    @property
    def keys(self) -> tuple[str, ...]:
        """The config keys, in gene order."""
        return tuple(g.key for g in self.genes)

    def layer_indices(self, group: Group) -> tuple[int, ...]:
        """The layer indices a group covers (empty for a space without per_layer)."""
        if self.per_layer is None:
            return ()
        return group.layers if group.layers is not None else tuple(range(self.num_layers or 0))

    def _group_genes(self, group: Group) -> Iterable[Gene]:
        layers = self.layer_indices(group)
        if group.share == "global":
            yield Gene(group.name, group.name, group.choices)
        elif group.share == "layer":
            for i in layers:
                yield Gene(f"{group.name}.{i}", group.name, group.choices, layer=i)
        else:  # module
            for i in layers or (None,):
                for module in group.modules:
                    key = f"{group.name}.{module}" if i is None else f"{group.name}.{i}.{module}"
                    yield Gene(key, group.name, group.choices, layer=i, module=module)

    def _check_layer_subsets(self) -> None:
        for group in self.groups:
            bad = [i for i in group.layers or () if i >= (self.num_layers or 0)]
            if bad:
                raise SpaceError(
                    f"{where(self.source, f'groups.{group.name}.layers')}layer {bad[0]} does not exist "
                    f"(the model has {self.num_layers}); fix: use indices 0..{(self.num_layers or 1) - 1}"
                )

    def size(self) -> int:
        """The number of distinct configs (the product of the choice-list lengths)."""
        return math.prod(len(g.choices) for g in self.genes)

    def encode(self, config: Mapping[str, Any], source: str | None = None) -> np.ndarray:
        """Turn a config into its gene vector (index into each descending list; 0 = largest).

        ``source`` names where the config came from in errors (default: the space's file).
        """
        field_ = f"{source or self.source or self.name}: config"
        unknown = set(config) - set(self.keys)
        if unknown:
            raise SpaceError(f"{field_}: unknown key {sorted(unknown)[0]!r}; fix: use the keys of space {self.name!r}")
        genes = np.empty(len(self.genes), dtype=np.int64)
        for n, gene in enumerate(self.genes):
            if gene.key not in config:
                raise SpaceError(f"{field_}: key {gene.key!r} is missing; fix: give a value from {list(gene.choices)}")
            value = config[gene.key]
            matches = [j for j, c in enumerate(gene.choices) if _same(c, value)]
            if not matches:
                raise SpaceError(f"{field_}: {gene.key}={value!r} is not a choice; fix: pick one of {list(gene.choices)}")
            genes[n] = matches[0]
        return genes

    def decode(self, genes: Iterable[int]) -> Config:
        """Turn a gene vector back into a config."""
        genes = [int(round(float(g))) for g in genes]
        if len(genes) != len(self.genes):
            raise SpaceError(f"genes: got {len(genes)} values for {len(self.genes)} genes of space {self.name!r}")
        config = {}
        for gene, index in zip(self.genes, genes):
            if not 0 <= index < len(gene.choices):
                raise SpaceError(f"genes: index {index} out of range for {gene.key} ({len(gene.choices)} choices)")
            config[gene.key] = gene.choices[index]
        return config

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper gene indices (inclusive), for optimisers."""
        upper = np.array([len(g.choices) - 1 for g in self.genes], dtype=np.int64)
        return np.zeros_like(upper), upper

    def max(self) -> Config:
        """The largest config: the first value of every list."""
        return self.decode([0] * len(self.genes))

    def min(self) -> Config:
        """The smallest config: the last value of every list."""
        return self.decode([len(g.choices) - 1 for g in self.genes])

    def heuristic(self) -> Config:
        """The midpoint heuristic subnet: index ``(n - 1) // 2`` of each descending list.

        This is the rule of LoNAS, Shears and SQFT. For odd lengths it is the median
        (``[32, 24, 16] -> 24``); for even lengths it is the *larger* of the two middle values
        (``[32, 28] -> 32``, ``[32, 28, 24, 20] -> 28``).
        """
        return self.decode([(len(g.choices) - 1) // 2 for g in self.genes])

    def sample(self, rng: np.random.Generator | random.Random | int | None = None) -> Config:
        """A config drawn uniformly and independently per gene."""
        if isinstance(rng, random.Random):
            return self.decode([rng.randrange(len(g.choices)) for g in self.genes])
        rng = np.random.default_rng(rng)
        return self.decode([int(rng.integers(len(g.choices))) for g in self.genes])

    def canonical(self, config: Mapping[str, Any]) -> tuple:
        """A hashable, order-independent key of a config (its gene tuple)."""
        return tuple(int(i) for i in self.encode(config))

    def group(self, name: str) -> Group:
        """The group called ``name``."""
        for g in self.groups:
            if g.name == name:
                return g
        raise SpaceError(f"space {self.name!r} has no group {name!r}")

    @property
    def mode(self) -> str:
        """``"A"`` for rank-only spaces, ``"B"`` when widths, heads or depth are elastic."""
        return "B" if any(g.kind != "rank" for g in self.groups) else "A"

    @property
    def depth_groups(self) -> tuple[Group, ...]:
        """The groups that drop whole decoder blocks."""
        return tuple(g for g in self.groups if g.kind == "depth")

    @property
    def rank_modules(self) -> tuple[str, ...]:
        """Module patterns (relative to a layer) that carry elastic-rank adapters."""
        return tuple(m for g in self.groups if g.kind == "rank" for m in g.modules)


def _same(choice: Any, value: Any) -> bool:
    try:
        return float(choice) == float(value)
    except (TypeError, ValueError):
        return False


# ------------------------------------------------------------------------------- parsing
def _parse_space(data: Any, source: str) -> SearchSpace:
    if not isinstance(data, Mapping):
        raise SpaceError(f"{source}: the file must hold a mapping with name and groups; fix: see search_spaces/")
    _reject_unknown(data, _TOP_KEYS, source, "")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise SpaceError(f"{source}: name: missing or not a string; fix: add `name: my-space`")
    adapter = _parse_adapter(data.get("adapter") or {}, source)
    per_layer = data.get("per_layer", DEFAULT_PER_LAYER)
    if per_layer is not None and (not isinstance(per_layer, str) or "{i}" not in per_layer):
        raise SpaceError(f"{source}: per_layer: {per_layer!r} has no {{i}}; fix: e.g. \"model.layers.{{i}}\" or null")
    num_layers = data.get("num_layers")
    if num_layers is not None and (not _is_int(num_layers) or num_layers < 1):
        raise SpaceError(f"{source}: num_layers: {num_layers!r} is not a positive integer; fix: remove it or set it")
    raw_groups = data.get("groups")
    if not isinstance(raw_groups, Mapping) or not raw_groups:
        raise SpaceError(f"{source}: groups: missing or empty; fix: declare at least one group (see search_spaces/)")
    groups = tuple(_parse_group(str(k), v, source, adapter, per_layer) for k, v in raw_groups.items())
    space = SearchSpace(
        name=name,
        groups=groups,
        adapter=adapter,
        per_layer=per_layer,
        num_layers=num_layers,
        description=str(data.get("description") or ""),
        source=source,
    )
    if num_layers is not None:
        space._check_layer_subsets()
    return space


def _reject_unknown(data: Mapping, allowed: set[str], source: str, prefix: str) -> None:
    unknown = sorted(set(map(str, data)) - allowed)
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], sorted(allowed), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"allowed keys: {', '.join(sorted(allowed))}"
        raise SpaceError(f"{source}: {prefix}{unknown[0]}: unknown key; fix: {hint}")


def _parse_adapter(raw: Any, source: str) -> AdapterSpec:
    if not isinstance(raw, Mapping):
        raise SpaceError(f"{source}: adapter: must be a mapping like {{rank: 32, alpha: 64}}")
    _reject_unknown(raw, _ADAPTER_KEYS, source, "adapter.")
    rank = raw.get("rank")
    if rank is not None and (not _is_int(rank) or rank < 1):
        raise SpaceError(f"{source}: adapter.rank: {rank!r} is not a positive integer; fix: e.g. rank: 32")
    alpha = raw.get("alpha")
    if alpha is not None and (not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0):
        raise SpaceError(f"{source}: adapter.alpha: {alpha!r} is not a positive number; fix: e.g. alpha: 64")
    dropout = raw.get("dropout", 0.0)
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise SpaceError(f"{source}: adapter.dropout: {dropout!r} must be in [0, 1); fix: e.g. dropout: 0.05")
    targets = _string_list(raw.get("targets", []), source, "adapter.targets")
    return AdapterSpec(rank, alpha, float(dropout), bool(raw.get("use_rslora", False)), targets)


def _parse_group(name: str, raw: Any, source: str, adapter: AdapterSpec, per_layer: str | None) -> Group:
    field_ = f"groups.{name}"
    if not _GROUP_NAME.match(name):
        raise SpaceError(f"{source}: {field_}: group names use letters, digits, _ and -; fix: rename the group")
    if not isinstance(raw, Mapping):
        raise SpaceError(f"{source}: {field_}: must be a mapping like {{modules: [...], rank: [32, 16]}}")
    _reject_unknown(raw, _GROUP_KEYS, source, f"{field_}.")
    kinds = [k for k in KINDS if k in raw]
    if len(kinds) != 1:
        raise SpaceError(f"{source}: {field_}: give exactly one of rank, width, heads or depth (got {kinds or 'none'})")
    kind = kinds[0]
    choices = _parse_choices(raw[kind], kind, source, f"{field_}.{kind}")
    share = raw.get("share", default_share(kind, per_layer))
    if share not in SHARES:
        raise SpaceError(f"{source}: {field_}.share: {share!r} is not one of {', '.join(SHARES)}")
    if share == "layer" and per_layer is None:
        raise SpaceError(f"{source}: {field_}.share: 'layer' needs per_layer; fix: use share: global or module")
    if share == "module" and kind != "rank":
        raise SpaceError(f"{source}: {field_}.share: 'module' applies to rank groups only; fix: use layer or global")
    layers = raw.get("layers")
    if layers is not None:
        if per_layer is None or not isinstance(layers, list) or not layers or not all(_is_int(i) and i >= 0 for i in layers):
            raise SpaceError(f"{source}: {field_}.layers: must be a list of layer indices (needs per_layer)")
        layers = tuple(sorted(set(layers)))
    group = Group(name=name, kind=kind, choices=choices, share=share, layers=layers)
    if kind == "rank":
        return _rank_group(group, raw, source, adapter)
    if kind == "width":
        return _width_group(group, raw, source)
    if kind == "depth":
        return _depth_group(group, source, per_layer)
    return replace(group, attention=str(raw.get("attention", "self_attn")))


def default_share(kind: str, per_layer: str | None) -> str:
    """Who shares a gene when the file does not say: one gene per layer, except for depth (one count)."""
    return "layer" if per_layer and kind != "depth" else "global"


def _depth_group(group: Group, source: str, per_layer: str | None) -> Group:
    field_ = f"groups.{group.name}"
    if per_layer is None:
        raise SpaceError(f"{source}: {field_}.depth: drops whole blocks of per_layer, which is null; "
                         "fix: set per_layer (e.g. model.layers.{i}) or remove the group")
    if group.share == "layer" and list(group.choices) != [1, 0]:
        raise SpaceError(f"{source}: {field_}.depth: with share: layer each block has a keep gene, so the choices "
                         f"must be [1, 0] (keep, drop), not {list(group.choices)}; fix: use [1, 0] or share: global")
    if group.share == "global" and not isinstance(group.choices[0], float) and 0 in group.choices:
        raise SpaceError(f"{source}: {field_}.depth: {list(group.choices)} keeps 0 blocks; fix: keep at least 1")
    return group


def _rank_group(group: Group, raw: Mapping, source: str, adapter: AdapterSpec) -> Group:
    field_ = f"groups.{group.name}"
    modules = _string_list(raw.get("modules"), source, f"{field_}.modules")
    repeated = sorted({m for m in modules if modules.count(m) > 1})
    if repeated:
        raise SpaceError(f"{source}: {field_}.modules: {repeated[0]!r} is listed twice; fix: list each module once")
    if not modules:
        raise SpaceError(f"{source}: {field_}.modules: a rank group needs modules; fix: e.g. [self_attn.q_proj]")
    if adapter.rank is None:
        raise SpaceError(f"{source}: adapter.rank: missing but group {group.name!r} has rank choices; fix: add `adapter: {{rank: {group.choices[0]}}}`")
    # The first value is the trained rank of the group's modules: adapter.rank for fresh adapters, each
    # module's own rank for a loaded one (PEFT's rank_pattern may differ from r); SuperNetwork checks it.
    return replace(group, modules=modules)


def _width_group(group: Group, raw: Mapping, source: str) -> Group:
    field_ = f"groups.{group.name}"
    channels = raw.get("channels", "mlp")
    if isinstance(channels, str):
        if channels not in CHANNEL_PRESETS:
            raise SpaceError(f"{source}: {field_}.channels: unknown preset {channels!r}; fix: use mlp or {{out: [...], in: [...]}}")
        preset = CHANNEL_PRESETS[channels]
        return replace(group, channels=channels, channels_out=preset["out"], channels_in=preset["in"])
    if not isinstance(channels, Mapping) or not set(channels) <= {"out", "in"} or not channels:
        raise SpaceError(f"{source}: {field_}.channels: must be a preset name or {{out: [...], in: [...]}}")
    out = _string_list(channels.get("out", []), source, f"{field_}.channels.out")
    in_ = _string_list(channels.get("in", []), source, f"{field_}.channels.in")
    return replace(group, channels_out=out, channels_in=in_)


def _parse_choices(raw: Any, kind: str, source: str, field_: str) -> tuple:
    if not isinstance(raw, list) or not raw:
        raise SpaceError(f"{source}: {field_}: must be a non-empty list, largest first; fix: e.g. [32, 24, 16]")
    fractions = kind in ("width", "depth") and all(isinstance(v, float) for v in raw)
    for v in raw:
        ok = (isinstance(v, float) and 0 < v <= 1) if fractions else (_is_int(v) and v >= (0 if kind in ("rank", "depth") else 1))
        if not ok:
            want = "fractions in (0, 1]" if fractions else ("integers >= 0" if kind in ("rank", "depth") else "positive integers")
            raise SpaceError(f"{source}: {field_}: value {v!r} is not allowed here; fix: use {want}")
    if any(b >= a for a, b in zip(raw, raw[1:])):
        raise SpaceError(
            f"{source}: {field_}: {raw} is not strictly descending; fix: write it largest first, "
            f"without repeats: {sorted(set(raw), reverse=True)}"
        )
    if fractions and raw[0] != 1.0:
        raise SpaceError(f"{source}: {field_}: fractions must start at 1.0 (the full width); fix: prepend 1.0")
    return tuple(raw)


def _string_list(raw: Any, source: str, field_: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(s, str) and s for s in raw):
        raise SpaceError(f"{source}: {field_}: must be a list of module-name patterns")
    return tuple(raw)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _adapter_to_dict(a: AdapterSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if a.rank is not None:
        out["rank"] = a.rank
    if a.alpha is not None:
        out["alpha"] = a.alpha
    if a.dropout:
        out["dropout"] = a.dropout
    if a.use_rslora:
        out["use_rslora"] = True
    if a.targets:
        out["targets"] = list(a.targets)
    return out


def _group_to_dict(g: Group, per_layer: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if g.kind == "rank":
        out["modules"] = list(g.modules)
    out[g.kind] = list(g.choices)
    if g.kind == "width":
        out["channels"] = g.channels or {
            k: list(v) for k, v in (("out", g.channels_out), ("in", g.channels_in)) if v
        }
    if g.kind == "heads" and g.attention != "self_attn":
        out["attention"] = g.attention
    if g.share != default_share(g.kind, per_layer):
        out["share"] = g.share
    if g.layers is not None:
        out["layers"] = list(g.layers)
    return out


# ------------------------------------------------------------------------------ summaries
def space_fingerprint(space: SearchSpace) -> str:
    """A short hash of a space's content, so a run notices an edited space file."""
    return hashlib.sha256(json.dumps(space.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def config_summary(config: str | Mapping[str, Any]) -> str:
    """A config in one short line: per group its value, or its distinct values (largest first)
    and their mean when layers differ, e.g. ``attn 32/16 (mean 24.5) · up 32``.

    Groups come from the gene keys (``group``, ``group.layer``, ``group.layer.module``), so a
    config summarises the same with or without its space.
    """
    values = json.loads(config) if isinstance(config, str) else dict(config)
    groups: dict[str, list[Any]] = {}
    for key, value in values.items():
        groups.setdefault(str(key).split(".")[0], []).append(value)
    return " · ".join(_group_summary(name, chosen) for name, chosen in groups.items())


def _group_summary(name: str, chosen: list[Any]) -> str:
    distinct = sorted(set(chosen), key=lambda v: (-v, v) if isinstance(v, (int, float)) else (0, str(v)))
    if len(distinct) == 1:
        return f"{name} {_choice(distinct[0])}"
    text = f"{name} {'/'.join(_choice(v) for v in distinct)}"
    if all(isinstance(v, (int, float)) for v in chosen):
        text += f" (mean {_choice(round(sum(chosen) / len(chosen), 3 if max(chosen) <= 1 else 1))})"
    return text


def _choice(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)
