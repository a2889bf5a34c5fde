"""NNCF configs of LoNAS and Shears: ``bootstrapNAS.training.elasticity.width`` groups of graph nodes.

``overwrite_groups`` lists groups of NNCF node scopes and ``overwrite_groups_widths`` each group's
descending output widths. A node scope names one linear op, for example::

    PeftModelForCausalLM/LoraModel[base_model]/LlamaForCausalLM[model]/LlamaModel[model]/
    ModuleList[layers]/LlamaDecoderLayer[0]/LlamaAttention[self_attn]/Linear[q_proj]/
    ModuleDict[lora_A]/NNCFLinear[default]/linear_0

is the lora_A of ``model.layers.0.self_attn.q_proj``; ``.../Linear[gate_proj]/NNCFUserSelfLinear
[self_linear]/linear_0`` is a base weight (LoNAS's patched PEFT). Shears writes each group once with a
``{re}`` prefix and ``{*}`` as the layer index; its loader repeats it for every layer.

Mapping of a group, by the roles of its nodes:

* only lora_A: a rank group (the output width of lora_A is the rank; lora_B's input follows).
* base weights, possibly with the lora_B of those modules: a Mode B width group on the base output
  channels (``channels: mlp`` for LLaMA's gate/up, else ``{out, in}``, the reader taken from a table
  of known MLP pairs). NNCF finds the reader in the traced graph; a module outside the table is an
  error.
* only lora_B: refused. It would cut the adapter's output without the base weight's, which no
  lorasearch group expresses (and lora_B's input already follows lora_A).
* lora_A mixed with base or lora_B nodes: refused.

SQFT's legacy NNCF configs hold the same tree under an ``SQFT`` key (``algorithm: nls``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping

from ..errors import SpaceError
from ..space import SearchSpace
from . import Unit, build_space, check_choices

ROOTS = ("bootstrapNAS", "SQFT")
_ALGORITHMS = {"bootstrapNAS": "progressive_shrinking", "SQFT": "nls"}
_TOKEN = re.compile(r"^[A-Za-z_][\w.]*\[(?P<name>[^\[\]/]+)\]$")
_PLACEHOLDER = "{*}"
_PEFT_WRAPPER = ["base_model", "model"]  # LoraModel[base_model]/XForCausalLM[model]
# leaf -> sibling that reads its output channels (NNCF finds this in the graph; we cannot)
_READERS = {"gate_proj": "down_proj", "up_proj": "down_proj", "dense_h_to_4h": "dense_4h_to_h", "fc1": "fc2"}
_EXAMPLE = (
    ".../ModuleList[layers]/LlamaDecoderLayer[0]/LlamaAttention[self_attn]/Linear[q_proj]/"
    "ModuleDict[lora_A]/NNCFLinear[default]/linear_0"
)


# The LoRA modules the reference's training commands name in --target_modules, per model family
# (LoNAS, Shears and SQFT commands together): (family, attention leaves and their usual parent,
# MLP leaves and their usual parent). The first family holding every module of a file is its own.
COMMAND_MODULES = (
    ("LLaMA", ("q_proj", "k_proj", "v_proj"), "self_attn", ("up_proj", "gate_proj", "down_proj"), "mlp"),
    ("MPT", ("q_proj", "k_proj", "v_proj", "out_proj"), "attn", ("up_proj", "down_proj"), "ffn"),
    ("BLOOM", ("query_key_value",), "self_attention", ("dense_h_to_4h", "dense_4h_to_h"), "mlp"),
    ("Phi-3", ("qkv_proj",), "self_attn", (), "mlp"),
)


def targets_note(modules: Iterable[str]) -> str:
    """The description's sentence on LoRA modules that a file leaves out: the reference's files
    list only elastic modules, so modules of the training command's --target_modules without a group
    keep their trained rank and belong in ``adapter.targets``. Names those of the reference's own
    commands for the file's model family that have no group among ``modules``."""
    modules = list(dict.fromkeys(modules))
    leaves = {m.rpartition(".")[2] for m in modules}
    rule = ("LoRA modules of the training command's --target_modules that are in no group keep their "
            "trained rank: add them to adapter.targets")
    for family, attention, attention_parent, mlp, mlp_parent in COMMAND_MODULES:
        if not leaves or not leaves <= set(attention) | set(mlp):
            continue
        missing = [_module_path(leaf, part, parent, modules)
                   for part, parent in ((attention, attention_parent), (mlp, mlp_parent))
                   for leaf in part if leaf not in leaves]
        if not missing:
            return f" {rule}; every module the reference's {family} commands train has a group here."
        return (f" {rule}; of the modules the reference's {family} commands train, these are in no group here: "
                f"{', '.join(missing)} (add those your command lists).")
    return f" {rule}."


def _module_path(leaf: str, part: tuple[str, ...], parent: str, modules: list[str]) -> str:
    """``leaf`` under the parent of a file module of the same part of the layer (else the usual one)."""
    sibling = next((m for m in modules if m.rpartition(".")[2] in part and "." in m), None)
    return f"{sibling.rpartition('.')[0] if sibling else parent}.{leaf}"


@dataclass(frozen=True)
class Node:
    """One parsed node scope: the layer path template, the layer (None for ``{*}``), module and role."""

    per_layer: str
    layer: int | None
    module: str
    role: str  # "lora_A", "lora_B" or "base"


def space_from_nncf(data: Mapping[str, Any], *, source: str, name: str, alpha: float | None = None) -> SearchSpace:
    """Build a space from the parsed JSON of an NNCF config (``bootstrapNAS`` or legacy ``SQFT``)."""
    root = next(k for k in ROOTS if isinstance(data.get(k), Mapping))
    field = f"{root}.training.elasticity.width"
    groups, widths = _width_section(data[root], root, source)
    if len(groups) != len(widths):
        raise SpaceError(
            f"{source}: {field}: {len(groups)} overwrite_groups but {len(widths)} overwrite_groups_widths; "
            "fix: give one width list per group"
        )
    per_layer, units = None, []
    for g, (group, choices) in enumerate(zip(groups, widths)):
        nodes = _group_nodes(group, source, f"{field}.overwrite_groups[{g}]")
        templates = {n.per_layer for n in nodes} | ({per_layer} if per_layer else set())
        if len(templates) > 1:
            raise SpaceError(
                f"{source}: {field}.overwrite_groups[{g}]: layers lie under {sorted(templates)}; fix: describe one model"
            )
        per_layer = templates.pop()
        units.append(_unit(nodes, choices, source, field, g))
    templated = any(u.layers is None for u in units)
    kind = "SQFT's legacy NNCF config" if root == "SQFT" else "an NNCF bootstrapNAS config (LoNAS/Shears)"
    with_lora = [m for u in units for m in (u.modules if u.kind == "rank" else u.adapters)]
    description = (
        f"Imported from {kind} ({len(groups)} overwrite_groups"
        f"{', {re}/{*} templates for every layer' if templated else ''}).{targets_note(with_lora)}"
    )
    if not any(u.kind == "rank" for u in units):
        description += (" No rank group, so no adapter rank or alpha is set: set adapter.rank and adapter.alpha "
                        "to the training command's --lora_r and --lora_alpha.")
    return build_space(units, per_layer=per_layer, name=name, source=source, description=description, alpha=alpha)


def parse_node(scope: str) -> Node:
    """Parse an NNCF node scope into its layer path template, layer, module and role.

    Raises ``ValueError`` with the reason when the scope has no recognisable shape.
    """
    tokens = scope.removeprefix("{re}").split("/")
    if len(tokens) < 3:
        raise ValueError("not a '/'-separated NNCF scope")
    names = []
    for n, token in enumerate(tokens):
        match = _TOKEN.match(token)
        if match:
            names.append(match["name"])
        elif n not in (0, len(tokens) - 1):  # the root class and the op (linear_0) carry no [name]
            raise ValueError(f"token {token!r} is not Class[name]")
    if names[:2] == _PEFT_WRAPPER:
        names = names[2:]
    role, names = _role(names)
    index = next((i for i, s in enumerate(names) if s.isdigit() or s == _PLACEHOLDER), None)
    if index in (None, 0, len(names) - 1):
        raise ValueError("no layer index such as LlamaDecoderLayer[0] followed by a module")
    layer = None if names[index] == _PLACEHOLDER else int(names[index])
    return Node(".".join(names[:index]) + ".{i}", layer, ".".join(names[index + 1 :]), role)


def _role(names: list[str]) -> tuple[str, list[str]]:
    for role in ("lora_A", "lora_B"):
        if role in names:
            return role, names[: names.index(role)]
    return "base", names[:-1] if names and names[-1] == "self_linear" else names


def _width_section(tree: Any, root: str, source: str) -> tuple[list, list]:
    training = tree.get("training") if isinstance(tree, Mapping) else None
    if not isinstance(training, Mapping):
        raise SpaceError(f"{source}: {root}.training: missing; fix: {_fix_hint(root)}")
    algorithm = training.get("algorithm", _ALGORITHMS[root])
    if algorithm not in _ALGORITHMS.values():
        raise SpaceError(
            f"{source}: {root}.training.algorithm: {algorithm!r} is not NLS training; "
            "fix: import a LoNAS, Shears or SQFT config"
        )
    elasticity = training.get("elasticity")
    dims = elasticity.get("available_elasticity_dims", ["width"]) if isinstance(elasticity, Mapping) else ["width"]
    if set(dims) - {"width"}:
        raise SpaceError(
            f"{source}: {root}.training.elasticity.available_elasticity_dims: {dims} includes more than width; "
            "fix: lorasearch imports width elasticity only; remove the other dimensions"
        )
    width = elasticity.get("width") if isinstance(elasticity, Mapping) else None
    field = f"{root}.training.elasticity.width"
    if not isinstance(width, Mapping) or not width.get("overwrite_groups"):
        raise SpaceError(
            f"{source}: {field}.overwrite_groups: missing or empty (NNCF would then group the model itself); "
            f"fix: {_fix_hint(root)}"
        )
    groups, widths = width["overwrite_groups"], width.get("overwrite_groups_widths")
    if not isinstance(groups, list) or not isinstance(widths, list):
        raise SpaceError(
            f"{source}: {field}: overwrite_groups and overwrite_groups_widths must be lists; fix: {_fix_hint(root)}"
        )
    return groups, widths


def _fix_hint(root: str) -> str:
    return f"list the groups in {root}.training.elasticity.width.overwrite_groups with their overwrite_groups_widths"


def _group_nodes(group: Any, source: str, field: str) -> list[Node]:
    if not isinstance(group, list) or not group or not all(isinstance(s, str) for s in group):
        raise SpaceError(f"{source}: {field}: must be a non-empty list of node names; fix: e.g. [\"{_EXAMPLE}\"]")
    nodes = []
    for n, scope in enumerate(group):
        try:
            nodes.append(parse_node(scope))
        except ValueError as exc:
            raise SpaceError(
                f"{source}: {field}[{n}]: cannot parse node {scope!r} ({exc}); fix: use names like {_EXAMPLE}"
            ) from None
    return nodes


def _unit(nodes: list[Node], raw_choices: Any, source: str, field: str, g: int) -> Unit:
    where = f"{field}.overwrite_groups[{g}]"
    roles = {n.role for n in nodes}
    layers = _layers(nodes, source, where)
    share = "global" if layers is not None and len(layers) > 1 else "layer"
    if roles == {"lora_A"}:
        choices = check_choices(raw_choices, source=source, field=f"{field}.overwrite_groups_widths[{g}]", minimum=0)
        return Unit("rank", _modules(nodes, "lora_A"), choices, layers, where, share=share)
    if roles == {"lora_B"}:
        raise SpaceError(
            f"{source}: {where}: only lora_B nodes (the adapter's output channels without the base weight's) "
            "cannot be mapped; fix: add the base weights (NNCFUserSelfLinear[self_linear]) for a width group, "
            "or use the lora_A nodes for an elastic rank"
        )
    if "lora_A" in roles:
        raise SpaceError(
            f"{source}: {where}: mixes lora_A nodes (a rank) with base or lora_B nodes (a width); "
            "fix: put the lora_A nodes in a group of their own"
        )
    unit = Unit("width", _modules(nodes, "base"), (), layers, where, share=share, adapters=_modules(nodes, "lora_B"))
    choices = check_choices(raw_choices, source=source, field=f"{field}.overwrite_groups_widths[{g}]", minimum=1)
    return replace(unit, choices=choices, channels_in=_readers(unit, source))


def _modules(nodes: list[Node], role: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(n.module for n in nodes if n.role == role))


def _readers(unit: Unit, source: str) -> tuple[str, ...]:
    """The modules that read the cut channels; each lora_B must sit on a cut base weight."""
    out, adapters, where = unit.modules, unit.adapters, unit.where
    stray = [m for m in adapters if m not in out]
    if stray:
        raise SpaceError(
            f"{source}: {where}: the lora_B of {stray[0]} is cut but not its base weight; "
            f"fix: add {stray[0]}'s NNCFUserSelfLinear[self_linear] node or drop its lora_B node"
        )
    readers = []
    for module in out:
        parent, _, leaf = module.rpartition(".")
        if leaf not in _READERS:
            raise SpaceError(
                f"{source}: {where}: cannot tell which module reads the output channels of {module}; "
                "fix: write this group by hand as width with channels: {out: [...], in: [...]}"
            )
        readers.append(f"{parent}.{_READERS[leaf]}" if parent else _READERS[leaf])
    return tuple(dict.fromkeys(readers))


def _layers(nodes: list[Node], source: str, where: str) -> frozenset[int] | None:
    """The group's layers (None for a ``{*}`` template); every layer must hold the same nodes."""
    layers = {n.layer for n in nodes}
    if None in layers and len(layers) > 1:
        raise SpaceError(f"{source}: {where}: mixes {{*}} with explicit layer indices; fix: use one or the other")
    shapes = {layer: frozenset((n.module, n.role) for n in nodes if n.layer == layer) for layer in layers}
    if len(set(shapes.values())) > 1:
        raise SpaceError(
            f"{source}: {where}: spans layers {sorted(layers)} with different modules in each; "
            "fix: give each layer its own group"
        )
    return None if None in layers else frozenset(layers)
