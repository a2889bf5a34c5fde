"""Layers that accelerate offloads (``--device-map`` with CPU or disk offload), wrapped correctly.

With a device map that offloads a block, accelerate keeps the block's weights out of the model
(on the meta device) and puts a hook on the block that brings each weight in, by its name, from a
weights map (CPU memory or files on disk) before the block runs and sends it back afterwards.
Wrapping a layer renames its weights (``q_proj.weight`` becomes ``q_proj.base_layer.weight``) and
adds the adapter's, so the stock hook, left in place, looks the new names up in vain and the
block computes with empty weights (non-finite logits, silently).

`OffloadedBlocks.detach` takes those hooks off before the layers are wrapped and remembers each
block's execution device and weights map; the adapters of the block's layers are then built on
its execution device (they are small, and trained in place); `OffloadedBlocks.attach` puts a hook
back on each block that brings the base weights in under their wrapped names, looked up under
their original ones, and leaves the adapters where they are.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

BASE_LAYER = ".base_layer."


@dataclass
class OffloadedBlock:
    """One block accelerate offloads: where it runs and where its weights are kept."""

    name: str
    device: torch.device
    weights: Mapping[str, torch.Tensor]
    """The block's weights by their names relative to the block, as loaded (lazy for disk offload)."""
    skip_keys: Any = None


def _offload_hook(module: nn.Module) -> Any:
    """The accelerate hook of ``module`` that offloads its weights, or None."""
    hook = getattr(module, "_hf_hook", None)
    for candidate in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
        if getattr(candidate, "offload", False) and getattr(candidate, "weights_map", None) is not None:
            return candidate
    return None


def original_name(wrapped: str) -> str:
    """``self_attn.q_proj.base_layer.weight`` -> ``self_attn.q_proj.weight`` (the name before wrapping)."""
    return ("." + wrapped).replace(BASE_LAYER, ".")[1:]


class OffloadedBlocks:
    """The offloaded blocks of a model, between taking accelerate's hooks off and putting ours on."""

    def __init__(self, blocks: Mapping[str, OffloadedBlock]) -> None:
        self.blocks = dict(blocks)

    @classmethod
    def detach(cls, model: nn.Module) -> "OffloadedBlocks | None":
        """Take the offload hooks off ``model``'s blocks; None when nothing is offloaded."""
        found = {name: hook for name, module in model.named_modules() if (hook := _offload_hook(module)) is not None}
        if not found:
            return None
        from accelerate.hooks import remove_hook_from_module

        blocks = {}
        for name, hook in found.items():
            blocks[name] = OffloadedBlock(name, torch.device(hook.execution_device), hook.weights_map, hook.skip_keys)
            remove_hook_from_module(model.get_submodule(name))
        return cls(blocks)

    def device_of(self, module: str) -> torch.device | None:
        """The execution device of the offloaded block holding ``module``, or None."""
        for name, block in self.blocks.items():
            if not name or module == name or module.startswith(name + "."):
                return block.device
        return None

    def attach(self, model: nn.Module) -> None:
        """Hook each block again, its weights brought in under their wrapped names."""
        from accelerate.hooks import add_hook_to_module

        for name, block in self.blocks.items():
            module = model.get_submodule(name)
            absent = {n: original_name(n) for n, p in module.named_parameters() if p.device.type == "meta"}
            add_hook_to_module(module, _hook_class()(block, absent))


@functools.cache
def _hook_class() -> type:
    """The hook type, made on first use so that importing lorasearch does not import accelerate."""
    from accelerate.hooks import ModelHook
    from accelerate.utils import send_to_device, set_module_tensor_to_device

    class BringWeightsIn(ModelHook):
        """Before the block runs: its absent weights onto its device from the weights map (by their
        original names), the inputs too; afterwards, the weights back to the meta device."""

        def __init__(self, block: OffloadedBlock, names: Mapping[str, str]) -> None:
            self.block, self.names = block, dict(names)

        def pre_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
            for wrapped, original in self.names.items():
                set_module_tensor_to_device(module, wrapped, self.block.device, value=self.block.weights[original])
            return (send_to_device(args, self.block.device),
                    send_to_device(kwargs, self.block.device, skip_keys=self.block.skip_keys))

        def post_forward(self, module: nn.Module, output: Any) -> Any:
            for wrapped in self.names:
                set_module_tensor_to_device(module, wrapped, "meta")
            return output

    return BringWeightsIn
