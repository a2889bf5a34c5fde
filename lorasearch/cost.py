"""Cost of a sub-network: MACs per module in closed form, parameters, fvcore traces and latency.

The unit is the MAC: one multiply-accumulate, fvcore's unit (it calls them flops). Figures model
one sequence of ``seq_len`` tokens, batch 1, prefill (no KV cache, logits for every token), in one
of two deployments, and every figure says which:

* ``unmerged``: adapters run beside the base, ``r * (d_in + d_out)`` MACs per token each;
* ``merged``: adapters folded into the base weights, which adds no MACs.

Per token, a linear layer at active widths ``d_in x d_out`` costs ``d_in * d_out`` (biases add no
MACs, as in fvcore). Attention is counted analytically whatever the model's attention
implementation: per layer, the scores ``QK^T`` and the context ``softmax(.)V`` each cost
``heads_active * T * T * head_dim`` (the full square, as eager attention computes it; grouped-query
attention repeats keys and values to all query heads, so the key/value head count does not enter).
Embedding lookups cost nothing; ``lm_head`` costs ``T * hidden * vocab``. A decoder block that a
depth gene skips costs nothing and holds no parameters: every MAC and parameter term of a module
inside it carries the block's keep factor (1 or 0).

`CostModel` takes the full-size per-module MACs from one fvcore trace (``reference="fvcore"``),
checks them against the shapes (a disagreement is a `lorasearch.errors.CostWarning`, and the shapes'
count is kept), and keeps whatever else fvcore counts (``kind == "other"``) as a constant;
``reference="analytic"`` uses the shapes alone (a search's default: the tests hold the two equal
on every tiny family, Mode A and B). Per config it then only adds pre-computed
per-gene tables (a few dictionary look-ups), so fvcore's cost is paid once, not per candidate.

fvcore has no handle for ``aten::scaled_dot_product_attention`` and would count SDPA attention as
zero; every trace here registers one (`sdpa_macs`) with the same count as eager attention, so
fvcore and the closed form agree for eager and SDPA models alike. `fvcore_macs` traces an actual
subnet for users who want fvcore's raw count; `measure_latency` times the merged subnet.
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
import time
import warnings
from dataclasses import dataclass, field
from itertools import product
from typing import Any, Callable, Iterator, Mapping, Sequence

import pandas as pd
import torch
from torch import nn

from .errors import CostError, CostWarning
from .network.binding import linear_modules
from .network.supernet import SuperNetwork

DEPLOYMENTS = ("unmerged", "merged")
REFERENCES = ("fvcore", "analytic")
KINDS = ("embedding", "linear", "adapter", "attention", "lm_head", "other")
TOTAL = "total"
ROOT = "(model)"  # the model's own ops in traces and breakdowns



# ------------------------------------------------------------------------ parameters
@dataclass(frozen=True)
class ParameterCounts:
    """Parameters of one sub-network.

    Attributes:
        total: base parameters at the active widths plus the active adapter parameters (unmerged).
        trainable: the active adapter parameters.
        base: base parameters at the active widths (what a merged model holds).
        nonzero: non-zero entries of the base parameters at the active widths (for sparse bases;
            equals ``base`` for dense ones), or None when not counted. Adapters are dense and
            counted in ``trainable``.
    """

    total: int
    trainable: int
    base: int
    nonzero: int | None = None


def parameter_counts(
    net: SuperNetwork, config: Mapping[str, Any] | None = None, *, nonzero: bool = False
) -> ParameterCounts:
    """Count the parameters of ``config`` (default: the active config) in closed form.

    ``nonzero=True`` also counts the non-zero base entries (reads every weight once; slow on big models).
    """
    config = config if config is not None else net.active_config
    return CostModel(net, seq_len=1, reference="analytic").parameters(config, nonzero=nonzero)


# ------------------------------------------------------------------------ closed form
@dataclass(frozen=True)
class Dim:
    """One module dimension: a constant, or the size that the value of gene ``gene`` gives it."""

    full: int
    gene: str | None = None
    sizes: Mapping[Any, int] = field(default_factory=dict)

    def at(self, config: Mapping[str, Any]) -> int:
        return self.sizes[config[self.gene]] if self.gene is not None else self.full


@dataclass(frozen=True)
class Term:
    """``coef * prod(dims)``: one summand of a row's MACs or parameters."""

    coef: int
    dims: tuple[Dim, ...] = ()

    @property
    def genes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(d.gene for d in self.dims if d.gene is not None))

    def at(self, config: Mapping[str, Any]) -> int:
        return self.coef * math.prod(d.at(config) for d in self.dims)


@dataclass(frozen=True)
class Row:
    """One line of the breakdown: a module and the kind of work it does, with its cost terms."""

    module: str
    kind: str
    macs: tuple[Term, ...] = ()
    params: tuple[Term, ...] = ()

    def macs_at(self, config: Mapping[str, Any]) -> int:
        return sum(t.at(config) for t in self.macs)

    def params_at(self, config: Mapping[str, Any]) -> int:
        return sum(t.at(config) for t in self.params)


@dataclass(frozen=True)
class LinearShape:
    """An elastic linear at full size, and the genes (None: fixed) that drive its dimensions."""

    name: str
    in_features: int
    out_features: int
    max_rank: int
    bias: bool
    in_gene: str | None
    out_gene: str | None
    rank_gene: str | None


@dataclass(frozen=True)
class AttentionShape:
    """One attention module: full query heads, head size, key/value heads, the gene of its heads."""

    name: str
    heads: int
    head_dim: int
    kv_heads: int
    gene: str | None


class _Polynomial:
    """A sum of terms, pre-evaluated per gene value and per tuple of coupled gene values.

    A term depends on at most three genes (rank and width of one module, and the depth gene of its
    block), so evaluating a config is one constant plus a dictionary look-up per gene and per coupled
    pair or triple.
    """

    def __init__(self, terms: Sequence[Term], choices: Mapping[str, tuple]) -> None:
        self.const = 0
        singles: dict[str, dict[Any, int]] = {}
        pairs: dict[tuple[str, str], dict[tuple, int]] = {}
        triples: dict[tuple[str, ...], dict[tuple, int]] = {}
        order = {key: n for n, key in enumerate(choices)}
        for term in terms:
            genes = sorted(term.genes, key=order.__getitem__)
            if not genes:
                self.const += term.at({})
            elif len(genes) == 1:
                table = singles.setdefault(genes[0], dict.fromkeys(choices[genes[0]], 0))
                for v in choices[genes[0]]:
                    table[v] += term.at({genes[0]: v})
            else:
                if len(genes) > 3:  # no module dimension product involves more genes
                    raise AssertionError(f"term over {genes}")
                tables = pairs if len(genes) == 2 else triples
                table = tables.setdefault(tuple(genes), {vv: 0 for vv in product(*(choices[g] for g in genes))})
                for values in table:
                    table[values] += term.at(dict(zip(genes, values)))
        self.singles = tuple(singles.items())
        self.pairs = tuple((a, b, t) for (a, b), t in pairs.items())
        self.triples = tuple((genes, t) for genes, t in triples.items())

    def __call__(self, config: Mapping[str, Any]) -> int:
        total = self.const
        for key, table in self.singles:
            total += table[config[key]]
        for a, b, table in self.pairs:
            total += table[config[a], config[b]]
        for genes, table in self.triples:
            total += table[tuple(config[g] for g in genes)]
        return total


class CostModel:
    """Closed-form MACs and parameters of any sub-network of ``net``, per module.

    Args:
        net: the super-network; its modules' full shapes and the space's genes are read once.
        seq_len: tokens of the one sequence modelled (batch 1, prefill).
        deployment: ``"unmerged"`` (default) or ``"merged"``; the default of `macs`/`breakdown`.
        reference: ``"fvcore"`` (default) takes the full-size MACs per module from one fvcore trace
            (cross-checked against the shapes: a module whose count differs keeps its closed form,
            with a `CostWarning`; extra ops fvcore counts become constant ``other`` rows);
            ``"analytic"`` uses the shapes alone and needs no trace (what a search uses by default).

    Example::

        cost = CostModel(net, seq_len=128)
        cost.macs(net.space.heuristic())             # int, a few microseconds
        cost.breakdown(net.space.heuristic())        # DataFrame: module, kind, macs, params
    """

    def __init__(
        self, net: SuperNetwork, seq_len: int, deployment: str = "unmerged", reference: str = "fvcore"
    ) -> None:
        self.seq_len = _check_seq_len(seq_len)
        self.deployment = _check_deployment(deployment)
        if reference not in REFERENCES:
            raise CostError(f"reference={reference!r} is unknown; fix: use one of {', '.join(REFERENCES)}")
        self.reference = reference
        self.space = net.space
        self._net = net
        dims = _Dims(net)
        self._choices = dims.choices
        self.linears, self.attention = _shapes(net, dims)
        rows = _structural_rows(net, dims, self.linears, self.attention, self.seq_len)
        if reference == "fvcore":
            traced = fvcore_macs(net, net.space.max(), self.seq_len)[1]
            rows = _merge_trace(rows, traced, net.space.max())
        self.rows: tuple[Row, ...] = tuple(_gated(r, dims) for r in rows)
        self._macs = {d: _Polynomial(self._terms("macs", d), self._choices) for d in DEPLOYMENTS}
        self._base_params = _Polynomial(self._terms("params", "merged"), self._choices)
        adapters = [t for r in self.rows if r.kind == "adapter" for t in r.params]
        self._adapter_params = _Polynomial(adapters, self._choices)
        self._dims = dims
        self._slices = [
            (s.name, dims(s.name, "out", s.out_features), dims(s.name, "in", s.in_features), dims.keep(s.name))
            for s in self.linears
        ]
        self._nonzero_cache: dict[tuple[str, int, int], int] = {}
        self._nonzero_const: dict[str | None, int] | None = None
        self._zero_cache: dict[tuple[str, int, int], int] = {}
        self._plain_zeros: dict[str | None, int] | None = None

    def _terms(self, quantity: str, deployment: str) -> list[Term]:
        rows = [r for r in self.rows if not (deployment == "merged" and r.kind == "adapter")]
        return [t for r in rows for t in getattr(r, quantity)]

    # --------------------------------------------------------------------------- MACs
    def macs(self, config: Mapping[str, Any], deployment: str | None = None) -> int:
        """Total MACs of ``config`` for one sequence of ``seq_len`` tokens."""
        poly = self._macs[self._deployment(deployment)]
        try:
            if len(config) == len(self._choices):
                return poly(config)
        except (KeyError, TypeError):
            pass
        self.space.encode(config)  # raises a SpaceError that names the bad key or value
        raise CostError(f"config: cannot cost {config!r}")  # pragma: no cover (encode raised)

    def gmacs(self, config: Mapping[str, Any], deployment: str | None = None) -> float:
        """`macs` in GMACs (1e9 MACs)."""
        return gmacs(self.macs(config, deployment))

    def describe(self, config: Mapping[str, Any], deployment: str | None = None) -> str:
        """One line, e.g. ``"2.143 GMACs (unmerged adapters, 128 tokens)"``."""
        deployment = self._deployment(deployment)
        return f"{format_gmacs(self.macs(config, deployment))} ({deployment} adapters, {self.seq_len} tokens)"

    def breakdown(self, config: Mapping[str, Any], deployment: str | None = None) -> pd.DataFrame:
        """One row per module and kind (``linear``, ``adapter``, ``attention``, ``lm_head``,
        ``embedding``, ``other``) with its MACs and parameters, then a ``total`` row.

        Merged, adapter rows hold 0 MACs and 0 parameters (they are folded into the base).
        ``df.attrs`` holds ``deployment``, ``seq_len``, ``unit`` and ``reference``.
        """
        deployment = self._deployment(deployment)
        self.space.encode(config)
        folded = deployment == "merged"
        records = [
            (r.module, r.kind, 0 if folded and r.kind == "adapter" else r.macs_at(config),
             0 if folded and r.kind == "adapter" else r.params_at(config))
            for r in self.rows
        ]
        df = pd.DataFrame(records, columns=["module", "kind", "macs", "params"])
        df.loc[len(df)] = [TOTAL, TOTAL, int(df["macs"].sum()), int(df["params"].sum())]
        df["deployment"] = deployment
        df.attrs.update(deployment=deployment, seq_len=self.seq_len, unit="MACs", reference=self.reference)
        return df

    def by_module(self, config: Mapping[str, Any], deployment: str | None = None) -> dict[str, int]:
        """MACs per module name (a module's linear and adapter rows summed), like `fvcore_macs`'s."""
        df = self.breakdown(config, deployment)
        df = df[df["kind"] != TOTAL]
        return {str(k): int(v) for k, v in df.groupby("module", sort=False)["macs"].sum().items()}

    # --------------------------------------------------------------------- parameters
    def parameters(self, config: Mapping[str, Any], *, nonzero: bool = True) -> ParameterCounts:
        """Total (unmerged), trainable (adapter), base (merged) and non-zero base parameters.

        Non-zero counts are cached per module slice, so only the first call per slice reads weights;
        ``nonzero=False`` skips them, as does a model on the meta device (``ParameterCounts.nonzero``
        is then None).
        """
        self.space.encode(config)
        base = self._base_params(config)
        trainable = self._adapter_params(config)
        count = self._nonzero(config) if nonzero and not self.on_meta else None
        return ParameterCounts(total=base + trainable, trainable=trainable, base=base, nonzero=count)

    # ----------------------------------------------------------------- sparse bases
    def effective_macs(self, config: Mapping[str, Any], deployment: str | None = None) -> int:
        """MACs when multiplications by zero base weights are skipped: the sparse-base figure.

        `macs` stays the dense figure; this one subtracts ``seq_len`` MACs per zero entry of every
        linear's active slice (elastic and plain linears, ``lm_head`` included). Adapters count dense
        (unmerged); merged, the base's zeros are assumed to survive (SparsePEFT / QA-SparsePEFT).
        Zero counts are cached per module slice, so only the first call per slice reads weights.
        Equals `macs` for a dense base.
        """
        dense = self.macs(config, deployment)
        if self.on_meta:
            return dense  # no weights, so no zeros to count
        if self._plain_zeros is None:
            elastic = set(self._net.elastic)
            self._plain_zeros = {}
            for n, m in linear_modules(self._net.model).items():
                if n not in elastic:
                    block = self._dims.block_of(n)
                    self._plain_zeros[block] = (self._plain_zeros.get(block, 0)
                                                + int(m.weight.numel() - torch.count_nonzero(m.weight)))
        zeros = self._per_block(self._plain_zeros, config)
        for name, out, in_, keep in self._slices:
            if not keep.at(config):
                continue
            key = (name, out.at(config), in_.at(config))
            if key not in self._zero_cache:
                weight = self._net.elastic[name].base_layer.weight[: key[1], : key[2]]
                self._zero_cache[key] = int(weight.numel() - torch.count_nonzero(weight))
            zeros += self._zero_cache[key]
        return dense - self.seq_len * zeros

    def _per_block(self, counts: Mapping[str | None, int], config: Mapping[str, Any]) -> int:
        """The sum of per-block counts over the blocks ``config`` keeps (``None``: outside every block)."""
        return sum(n for block, n in counts.items() if block is None or self._dims.keep(block).at(config))

    def _nonzero(self, config: Mapping[str, Any]) -> int:
        if self._nonzero_const is None:
            self._nonzero_const = _constant_nonzero(self._net, self._dims.block_of)
        total = self._per_block(self._nonzero_const, config)
        for name, out, in_, keep in self._slices:
            if not keep.at(config):
                continue
            key = (name, out.at(config), in_.at(config))
            if key not in self._nonzero_cache:
                self._nonzero_cache[key] = _sliced_nonzero(self._net.elastic[name].base_layer, *key[1:])
            total += self._nonzero_cache[key]
        return total

    @property
    def on_meta(self) -> bool:
        """Whether the model has shapes but no weights (built from a config on the meta device)."""
        return next(self._net.model.parameters()).device.type == "meta"

    def _deployment(self, deployment: str | None) -> str:
        return self.deployment if deployment is None else _check_deployment(deployment)

    def __repr__(self) -> str:
        return (
            f"CostModel(seq_len={self.seq_len}, deployment={self.deployment!r}, reference={self.reference!r}, "
            f"rows={len(self.rows)}, genes={len(self._choices)})"
        )


def gmacs(macs: int) -> float:
    """MACs in GMACs (1e9)."""
    return macs / 1e9


def format_gmacs(macs: int) -> str:
    """``"1.234 GMACs"``."""
    return f"{gmacs(macs):.3f} GMACs"


# -------------------------------------------------------------------- building rows
def _check_seq_len(seq_len: Any) -> int:
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len <= 0:
        raise CostError(
            f"seq_len={seq_len!r}: a sequence needs at least one token; fix: pass an integer >= 1, e.g. 128"
        )
    return seq_len


def _check_deployment(deployment: str) -> str:
    if deployment not in DEPLOYMENTS:
        raise CostError(f"deployment={deployment!r} is unknown; fix: use 'unmerged' or 'merged'")
    return deployment


class _Dims:
    """Makes the `Dim` of a module dimension from the binding's slots (constant when no gene drives it)."""

    def __init__(self, net: SuperNetwork) -> None:
        self.choices = {g.key: g.choices for g in net.space.genes}
        self.slots = {(s.module, s.dim): (key, s) for key, slots in net.binding.slots.items() for s in slots}
        self.blocks = tuple(net.binding.block_modules)

    def block_of(self, module: str) -> str | None:
        """The skippable decoder block ``module`` lies in (or is), else None."""
        return next((b for b in self.blocks if module == b or module.startswith(b + ".")), None)

    def keep(self, module: str) -> Dim:
        """1 while the block holding ``module`` runs, 0 when a depth gene skips it (constant 1 outside blocks)."""
        block = self.block_of(module)
        return self(block, "block", 1) if block is not None else Dim(1)

    def gene(self, module: str, dim: str) -> str | None:
        hit = self.slots.get((module, dim))
        return hit[0] if hit else None

    def __call__(self, module: str, dim: str, full: int) -> Dim:
        hit = self.slots.get((module, dim))
        if hit is None:
            return Dim(full)
        key, slot = hit
        return Dim(full, key, {v: slot.size(v) for v in self.choices[key]})


def _shapes(net: SuperNetwork, dims: _Dims) -> tuple[tuple[LinearShape, ...], tuple[AttentionShape, ...]]:
    linears = tuple(
        LinearShape(name, m.in_features, m.out_features, m.max_rank, m.base_layer.bias is not None,
                    dims.gene(name, "in"), dims.gene(name, "out"), dims.gene(name, "rank"))
        for name, m in net.elastic.items()
    )
    attention = []
    for name, m in net.model.named_modules():
        if not (hasattr(m, "head_dim") and hasattr(m, "num_key_value_groups")):
            continue
        q = getattr(m, "q_proj", None)
        config = getattr(m, "config", None) or net.model.config
        heads = q.out_features // m.head_dim if q is not None else config.num_attention_heads
        kv_heads = heads // m.num_key_value_groups
        attention.append(AttentionShape(name, heads, m.head_dim, kv_heads, dims.gene(f"{name}.q_proj", "out")))
    return linears, tuple(attention)


def _structural_rows(
    net: SuperNetwork, dims: _Dims, linears: Sequence[LinearShape], attention: Sequence[AttentionShape], seq_len: int
) -> list[Row]:
    """Rows from the shapes alone, in model order; every parameter lands in exactly one row."""
    T = seq_len
    model = net.model
    shapes = {s.name: s for s in linears}
    attn = {a.name: a for a in attention}
    plain = {n: m for n, m in linear_modules(model).items() if n not in shapes}
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    claimed: set[int] = set()

    def own(*tensors: torch.Tensor | None) -> int:
        fresh = [t for t in tensors if t is not None and id(t) not in claimed]
        claimed.update(id(t) for t in fresh)
        return sum(t.numel() for t in fresh)

    rows: list[Row] = []
    for name, module in model.named_modules():
        if name in shapes:
            rows += _elastic_rows(shapes[name], dims, T)
            m = net.elastic[name]
            lora = (m.lora_A.weight, m.lora_B.weight) if m.lora_A is not None else ()
            own(m.base_layer.weight, m.base_layer.bias, *lora)
        elif name in plain:
            kind = "lm_head" if module is head else "linear"
            params = own(module.weight, module.bias)
            rows.append(Row(name, kind, (Term(T * module.in_features * module.out_features),), (Term(params),)))
        elif name in attn:
            a = attn[name]
            q = dims(f"{name}.q_proj", "out", a.heads * a.head_dim)
            rows.append(Row(name, "attention", (Term(2 * T * T, (q,)),)))
        elif module is embed:
            rows.append(Row(name, "embedding", (), (Term(own(module.weight)),)))
    rows += _leftover_rows(model, claimed)
    order = {name: n for n, (name, _) in enumerate(model.named_modules())}
    return sorted(rows, key=lambda r: order[r.module])  # stable: a linear stays before its adapter


def _elastic_rows(s: LinearShape, dims: _Dims, T: int) -> list[Row]:
    i, o = dims(s.name, "in", s.in_features), dims(s.name, "out", s.out_features)
    params = (Term(1, (i, o)),) + ((Term(1, (o,)),) if s.bias else ())
    rows = [Row(s.name, "linear", (Term(T, (i, o)),), params)]
    if s.max_rank:
        r = dims(s.name, "rank", s.max_rank)
        rows.append(Row(s.name, "adapter", (Term(T, (r, i)), Term(T, (r, o))), (Term(1, (r, i)), Term(1, (r, o)))))
    return rows


def _gated(row: Row, dims: _Dims) -> Row:
    """``row`` with the keep factor of its decoder block in every term (unchanged outside skippable blocks)."""
    keep = dims.keep(row.module)
    if keep.gene is None:
        return row
    gate = lambda terms: tuple(Term(t.coef, t.dims + (keep,)) for t in terms)  # noqa: E731
    return Row(row.module, row.kind, gate(row.macs), gate(row.params))


def _leftover_rows(model: nn.Module, claimed: set[int]) -> list[Row]:
    """One ``other`` row per module owning parameters no other row holds (norms, mostly)."""
    counts: dict[str, int] = {}
    for full_name, p in model.named_parameters():
        if id(p) not in claimed:
            claimed.add(id(p))
            owner = full_name.rpartition(".")[0]
            counts[owner] = counts.get(owner, 0) + p.numel()
    return [Row(name, "other", (), (Term(n),)) for name, n in counts.items()]


def _merge_trace(rows: list[Row], traced: Mapping[str, int], config: Mapping[str, Any]) -> list[Row]:
    """Check the shape-based MACs against fvcore's, module by module, and add what only fvcore sees."""
    expected: dict[str, int] = {}
    for r in rows:
        expected[r.module] = expected.get(r.module, 0) + r.macs_at(config)
    for module, macs in expected.items():
        if macs and traced.get(module, 0) != macs:
            warnings.warn(CostWarning(
                f"{module}: fvcore counts {traced.get(module, 0):,} MACs at full size but its shapes give {macs:,}; "
                "the closed form is kept for it (the module may compute more than its shapes say, or fvcore may not "
                "know one of its ops); --cost-reference analytic skips the trace"
            ), stacklevel=3)
    extra = {m: n for m, n in traced.items() if n and not expected.get(m)}
    out = []
    for r in rows:
        if r.module in extra and r.kind in ("other", "embedding"):
            r = Row(r.module, r.kind, (Term(extra.pop(r.module)),), r.params)
        out.append(r)
    return out + [Row(m, "other", (Term(n),)) for m, n in extra.items()]


def _sliced_nonzero(layer: nn.Linear, out: int, in_: int) -> int:
    n = int(torch.count_nonzero(layer.weight[:out, :in_]))
    return n + (int(torch.count_nonzero(layer.bias[:out])) if layer.bias is not None else 0)


def _constant_nonzero(net: SuperNetwork, block_of: Callable[[str], str | None]) -> dict[str | None, int]:
    """Non-zero entries of every base parameter outside the elastic linears (counted per slice), per
    skippable block (``None``: outside every block)."""
    elastic = {id(p) for m in net.elastic.values() for p in m.parameters()}
    counts: dict[str | None, int] = {}
    for name, p in net.model.named_parameters():
        if id(p) not in elastic:
            block = block_of(name.rpartition(".")[0])
            counts[block] = counts.get(block, 0) + int(torch.count_nonzero(p))
    return counts


# ----------------------------------------------------------------------------- fvcore
def sdpa_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for ``aten::scaled_dot_product_attention``: scores plus context, as eager.

    ``query [.., Hq, T, d]``, ``key [.., Hkv, S, d]``, ``value [.., Hkv, S, dv]`` cost
    ``prod(query.shape[:-1]) * S * (d + dv)``: every query head attends to all S positions, whether
    keys are repeated (``repeat_kv``) or shared (``enable_gqa``); causal masking is not subtracted.
    """
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    return math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


class _Logits(nn.Module):
    """Tensor in, tensor out, as fvcore's tracer needs: ``input_ids -> logits`` without a cache."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def _token_ids(model: nn.Module, seq_len: int, seed: int = 0) -> torch.Tensor:
    vocab = int(getattr(model.config, "vocab_size", 2))
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (1, seq_len), generator=gen).to(device)


def trace_macs(model: nn.Module, seq_len: int) -> dict[str, int]:
    """One fvcore trace of ``model`` on ``seq_len`` tokens: the MACs of each module's own ops.

    Names are relative to ``model`` (``"(model)"`` is the model itself). Unlike fvcore's ``by_module``,
    a parent does not include its children, so the values add up to the total.
    """
    from fvcore.nn import FlopCountAnalysis

    seq_len = _check_seq_len(seq_len)
    analysis = (
        FlopCountAnalysis(_Logits(model), (_token_ids(model, seq_len),))
        .set_op_handle("aten::scaled_dot_product_attention", sdpa_macs)
        .unsupported_ops_warnings(False)
        .uncalled_modules_warnings(False)
        .tracer_warnings("none")
    )
    with warnings.catch_warnings(), torch.no_grad(), _quiet_fvcore():
        warnings.simplefilter("ignore")
        nested = analysis.by_module()
    nested = {_strip(name): int(n) for name, n in nested.items() if name}  # "" is the _Logits wrapper
    own = dict(nested)
    for name, n in nested.items():
        if name != ROOT:
            own[name.rpartition(".")[0] or ROOT] -= n
    return own


def _strip(name: str) -> str:
    return ROOT if name == "model" else name.removeprefix("model.")


@contextlib.contextmanager
def _quiet_fvcore() -> Iterator[None]:
    logger = logging.getLogger("fvcore")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _adapters_folded(net: SuperNetwork) -> Iterator[None]:
    """Run the active widths with every adapter rank at 0: the compute of the merged model."""
    ranks = {name: m.active_rank for name, m in net.elastic.items()}
    for m in net.elastic.values():
        m.set_active(0, m.active_in, m.active_out)
    try:
        yield
    finally:
        for name, m in net.elastic.items():
            m.set_active(ranks[name], m.active_in, m.active_out)


def fvcore_macs(
    net: SuperNetwork, config: Mapping[str, Any], seq_len: int, deployment: str = "unmerged"
) -> tuple[int, dict[str, int]]:
    """A fresh fvcore trace of the subnet ``config``: ``(total MACs, MACs of each module's own ops)``.

    The config is activated for the trace and the previous one restored. ``merged`` traces with
    every adapter rank at 0 (what a merged model computes). SDPA attention is counted by `sdpa_macs`.
    Slow (a full trace, about a second for a 135M model); use `CostModel.macs` inside a search.
    """
    seq_len = _check_seq_len(seq_len)
    merged = _check_deployment(deployment) == "merged"
    with net.activated(config), (_adapters_folded(net) if merged else contextlib.nullcontext()):
        own = trace_macs(net.model, seq_len)
    return sum(own.values()), own


# ---------------------------------------------------------------------------- latency
def measure_latency(net: SuperNetwork, config: Mapping[str, Any], seq_len: int, n: int = 10, warmup: int = 3) -> float:
    """Median wall time in seconds of one prefill of ``seq_len`` tokens through the merged subnet.

    "Merged" is realised by running the active widths with every adapter rank at 0, which computes
    what a merged model computes (folding the adapter changes weight values, not shapes). Widths
    stay slices of the full weights, so column-sliced layers (Mode B's ``down_proj``, ``o_proj``)
    read strided views; a physically pruned copy can be slightly faster. Runs under
    ``torch.inference_mode`` in eval mode after ``warmup`` untimed runs of this config's shapes (a
    GPU's kernels are chosen and cached per shape on first use); the config is restored. On a GPU
    each timed run starts and ends with a synchronisation of the device (`timed_run`), so the time is
    the kernels' and not only their launch.
    """
    seq_len = _check_seq_len(seq_len)
    if n < 1 or warmup < 0:
        raise CostError(f"n={n}, warmup={warmup}: need n >= 1 timed runs and warmup >= 0; fix: e.g. n=10, warmup=3")
    ids = _token_ids(net.model, seq_len)
    times = []
    with net.activated(config), _adapters_folded(net), _eval_mode(net.model), torch.inference_mode():
        for step in range(warmup + n):
            seconds = timed_run(lambda: net.model(input_ids=ids, use_cache=False), ids.device)
            if step >= warmup:
                times.append(seconds)
    return statistics.median(times)


def timed_run(run: Callable[[], Any], device: torch.device) -> float:
    """Seconds ``run()`` takes on ``device``: on a GPU, work queued before is finished first and the
    clock stops only when the run's own kernels have finished (CUDA runs asynchronously)."""
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)
