"""Importance ordering of Mode B channels and heads: sort them once, before NLS, so prefixes keep the best.

Mode B keeps the *first* w MLP intermediate channels (and the first key/value groups of heads), in
whatever order pre-training left them. This module scores every such unit on calibration
activations of the training data and permutes the layers so that every prefix holds the most
important units. The permutation moves whole channels (rows of gate/up, columns of down) and whole
key/value groups (their query heads' rows of q, their rows of k and v, the heads' columns of o), so
grouped-query attention stays intact and the full model computes exactly what it did before.

**The metric** ("output energy"): a unit's score is the squared Frobenius norm, over the calibration
tokens, of what it adds to the output of the layer that reads it, ``||X_u W_u^T||_F^2``, where
``X_u`` are the reader's input columns of the unit and ``W_u`` its weight columns: ``down_proj``
for an MLP channel, ``o_proj`` for a key/value group's heads. It is the output error of dropping
that unit alone; for one MLP channel it is ``||X_j||^2 * ||W[:, j]||^2``, Wanda's ``|W| * ||X_j||``
summed over the column in the L2 sense. The reader's weight includes the active adapter (at the
max config), so an adapter trained before reordering counts too.

Supported layouts: Llama-style separate ``gate_proj/up_proj/down_proj`` and ``q/k/v/o_proj``
(Llama, Mistral, Qwen2, ...) and Phi-3's fused ``gate_up_proj`` and ``qkv_proj``. The function is
preserved for all of them (`unit_sets` finds them); a search space can only make separate
projections elastic (`lorasearch.network.binding` refuses widths and heads on fused ones), so a Phi-3
space has nothing for `reorder_network` to reorder.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..data import Record
from ..errors import CalibrationError, LoraSearchError, SpaceError
from ..models.anatomy import decoder_layers
from ..models.calibration import calibration_tokens, capture_layer_inputs, run_layer, with_hidden
from ..network.binding import linear_modules
from ..network.elastic import ElasticLoRALinear
from ..network.permutation import ChannelPermutation
from ..network.supernet import SuperNetwork

METRIC = "output-energy"


@dataclass(frozen=True)
class Part:
    """One dimension of one module that holds the units: ``segments`` are ``(offset, block)`` runs, each
    one copy of the units with ``block`` channels per unit (two runs for a fused gate/up, three for qkv)."""

    module: str
    dim: str
    segments: tuple[tuple[int, int], ...]

    def index(self, order: torch.Tensor) -> torch.Tensor:
        """The channel index of this dimension when the units are put in ``order``."""
        pieces = [(offset + order[:, None] * block + torch.arange(block)).flatten() for offset, block in self.segments]
        return torch.cat(pieces)


@dataclass(frozen=True)
class UnitSet:
    """Interchangeable units of one decoder layer: MLP intermediate channels or key/value groups of heads.

    Attributes:
        kind: ``mlp`` or ``heads``.
        layer: the decoder layer's index.
        units: how many units (channels, or key/value groups).
        parts: every module dimension that moves with the units.
        reader: the module whose input columns hold the units (``down_proj``, ``o_proj``): the scores come from it.
        block: the reader's input columns per unit (1 for channels; query heads per group x head size).
        keep: the prefix lengths (in units) the search space uses, for the report; empty when unknown.
    """

    kind: str
    layer: int
    units: int
    parts: tuple[Part, ...]
    reader: str
    block: int
    keep: tuple[int, ...] = ()

    @property
    def modules(self) -> set[str]:
        return {p.module for p in self.parts}


@dataclass
class ReorderResult:
    """What `reorder_network` did: the permutation it applied and a summary of the scores."""

    permutation: ChannelPermutation
    sets: list[UnitSet]
    scores: list[torch.Tensor]

    def summary(self) -> dict[str, Any]:
        """Per kind and prefix length: the mean share of the score kept before and after reordering."""
        shares: dict[str, dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
        for unit_set, score in zip(self.sets, self.scores):
            total = float(score.sum()) or 1.0
            ranked = torch.sort(score, descending=True, stable=True).values
            for k in unit_set.keep:
                label = f"{k}/{unit_set.units}"
                shares[unit_set.kind][label].append([float(score[:k].sum()) / total, float(ranked[:k].sum()) / total])
        table = {kind: {label: {"before": sum(v[0] for v in vals) / len(vals), "after": sum(v[1] for v in vals) / len(vals)}
                        for label, vals in by_label.items()} for kind, by_label in shares.items()}
        return {"metric": METRIC, **dict(self.permutation.info), "sets": len(self.sets), "prefix_score_share": table}


# ------------------------------------------------------------------------------------ structure
def unit_sets(model: nn.Module) -> list[UnitSet]:
    """Every MLP and attention unit set of the model's decoder layers that a permutation can reorder."""
    layers = decoder_layers(model)
    prefix = next(n for n, m in model.named_modules() if m is layers)
    linears = linear_modules(model)
    found: list[UnitSet] = []
    for i, layer in enumerate(layers):
        base = f"{prefix}.{i}"
        for make in (_mlp_set, _attention_set):
            unit_set = make(i, base, layer, linears)
            if unit_set is not None:
                found.append(unit_set)
    return found


def _mlp_set(i: int, base: str, layer: nn.Module, linears: Mapping[str, nn.Module]) -> UnitSet | None:
    names = {n: f"{base}.mlp.{n}" for n in ("gate_proj", "up_proj", "down_proj", "gate_up_proj")}
    down = linears.get(names["down_proj"])
    if down is None:
        return None
    size = down.in_features
    if names["gate_proj"] in linears and names["up_proj"] in linears:
        parts = [Part(names["gate_proj"], "out", ((0, 1),)), Part(names["up_proj"], "out", ((0, 1),))]
    elif names["gate_up_proj"] in linears:
        parts = [Part(names["gate_up_proj"], "out", ((0, 1), (size, 1)))]
    else:
        return None
    parts.append(Part(names["down_proj"], "in", ((0, 1),)))
    return UnitSet("mlp", i, size, tuple(parts), names["down_proj"], 1)


def _attention_set(i: int, base: str, layer: nn.Module, linears: Mapping[str, nn.Module]) -> UnitSet | None:
    attn = getattr(layer, "self_attn", None)
    head_dim = int(getattr(attn, "head_dim", 0) or 0)
    names = {n: f"{base}.self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj")}
    o = linears.get(names["o_proj"])
    if attn is None or not head_dim or o is None:
        return None
    heads = o.in_features // head_dim
    if all(names[n] in linears for n in ("q_proj", "k_proj", "v_proj")):
        kv = linears[names["k_proj"]].out_features // head_dim
        per = heads // kv
        parts = [Part(names["q_proj"], "out", ((0, per * head_dim),)),
                 Part(names["k_proj"], "out", ((0, head_dim),)), Part(names["v_proj"], "out", ((0, head_dim),))]
    elif names["qkv_proj"] in linears:
        kv = (linears[names["qkv_proj"]].out_features - heads * head_dim) // (2 * head_dim)
        per = heads // kv
        q_rows = heads * head_dim
        parts = [Part(names["qkv_proj"], "out", ((0, per * head_dim), (q_rows, head_dim), (q_rows + kv * head_dim, head_dim)))]
    else:
        return None
    parts.append(Part(names["o_proj"], "in", ((0, per * head_dim),)))
    return UnitSet("heads", i, kv, tuple(parts), names["o_proj"], per * head_dim)


def network_unit_sets(net: SuperNetwork) -> list[UnitSet]:
    """The unit sets the space's Mode B genes slice, with the prefix lengths they use (none for Mode A).

    Raises `SpaceError` when a width group drives modules that are not a decoder layer's MLP or
    attention projections (a custom ``channels`` spec), which a permutation could not keep intact.
    """
    sets = unit_sets(net.model)
    owner = {(p.module, p.dim): n for n, s in enumerate(sets) for p in s.parts}
    blocks = {(p.module, p.dim): p.segments[0][1] for s in sets for p in s.parts}
    keep: dict[int, set[int]] = defaultdict(set)
    for gene in net.space.genes:
        if net.space.group(gene.group).kind in ("rank", "depth"):  # depth: blocks, not channels
            continue
        for slot in net.binding.slots[gene.key]:
            n = owner.get((slot.module, slot.dim))
            if n is None:
                raise SpaceError(
                    f"{net.space.source}: groups.{gene.group}: {slot.module} ({slot.dim}) is not part of a decoder "
                    "layer's MLP or attention heads, so it cannot be reordered; fix: train with --no-reorder"
                )
            keep[n] |= {slot.size(v) // blocks[(slot.module, slot.dim)] for v in gene.choices}
    return [replace(sets[n], keep=tuple(sorted(k, reverse=True))) for n, k in sorted(keep.items())]


# -------------------------------------------------------------------------------------- scores
class _Energy:
    """Accumulates, per unit, the Gram block of a reader's input columns over the calibration tokens."""

    def __init__(self, unit_set: UnitSet, module: nn.Module) -> None:
        self.set, self.module = unit_set, module
        b = unit_set.block
        self.gram = torch.zeros(unit_set.units, b, b, dtype=torch.float64)
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        x = args[0].detach().float().reshape(-1, self.set.units, self.set.block)
        self.gram += torch.einsum("tnb,tnc->nbc", x, x).double().cpu()

    def scores(self) -> torch.Tensor:
        weight = _reader_weight(self.module).float()
        w = weight.reshape(weight.shape[0], self.set.units, self.set.block)
        cross = torch.einsum("onb,onc->nbc", w, w).double().cpu()
        return (self.gram * cross).sum((1, 2))


def _reader_weight(module: nn.Module) -> torch.Tensor:
    if isinstance(module, ElasticLoRALinear):
        return module.merged_weight()
    return module.weight.detach()


@torch.no_grad()
def unit_scores(model: nn.Module, sets: Sequence[UnitSet], tokens: torch.Tensor, batch_size: int = 8) -> list[torch.Tensor]:
    """The output-energy score of every unit of every set (see the module docstring), layer by layer."""
    linears = linear_modules(model)
    by_layer: dict[int, list[int]] = defaultdict(list)
    for n, unit_set in enumerate(sets):
        by_layer[unit_set.layer].append(n)
    scores: list[torch.Tensor | None] = [None] * len(sets)
    inputs = capture_layer_inputs(model, tokens, batch_size)
    layers = decoder_layers(model)
    for i, layer in enumerate(layers):
        if i > max(by_layer, default=-1):
            break
        meters = {n: _Energy(sets[n], linears[sets[n].reader]) for n in by_layer.get(i, [])}
        try:
            inputs = [with_hidden(args, kwargs, run_layer(layer, args, kwargs)) for args, kwargs in inputs]
        finally:
            for meter in meters.values():
                meter.handle.remove()
        for n, meter in meters.items():
            scores[n] = meter.scores()
    return scores  # type: ignore[return-value]


def importance_permutation(sets: Sequence[UnitSet], scores: Sequence[torch.Tensor],
                           info: Mapping[str, Any] | None = None) -> ChannelPermutation:
    """The permutation that puts each set's units in descending score order (ties keep their order)."""
    indices = {}
    for unit_set, score in zip(sets, scores):
        order = torch.argsort(score, descending=True, stable=True)
        for part in unit_set.parts:
            indices[(part.module, part.dim)] = part.index(order)
    return ChannelPermutation(indices, {"metric": METRIC, **dict(info or {})})


# ------------------------------------------------------------------------------------ the step
def reorder_network(
    net: SuperNetwork,
    records: Sequence[Record],
    *,
    samples: int = 32,
    seq_len: int = 128,
    batch_size: int = 8,
    seed: int = 0,
) -> ReorderResult | None:
    """Score the units the space slices on ``records`` and permute ``net`` so prefixes keep the best.

    Calibration: ``samples`` windows of ``seq_len`` tokens of the records' texts (prompt and answer),
    the records taken in a seeded random order so a mix of tasks is covered. Scores are taken at the
    max config. Returns None for a space without widths or heads (Mode A): nothing to reorder.
    """
    sets = network_unit_sets(net)
    if not sets:
        return None
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    try:
        tokens = calibration_tokens(net.tokenizer, shuffled, samples, seq_len)
    except CalibrationError as exc:
        raise LoraSearchError(
            f"--reorder: {len(shuffled)} training records are too few for {samples} calibration windows of {seq_len} "
            f"tokens ({str(exc).split(';')[0]}); fix: lower --reorder-samples or --reorder-seq-len, or --no-reorder"
        ) from None
    was_training = net.model.training
    net.model.eval()
    try:
        with net.activated(net.space.max()):
            scores = unit_scores(net.model, sets, tokens, batch_size)
    finally:
        net.model.train(was_training)
    permutation = importance_permutation(sets, scores, {"samples": samples, "seq_len": seq_len, "seed": seed})
    net.permute(permutation, source="--reorder")
    return ReorderResult(permutation, sets, scores)
