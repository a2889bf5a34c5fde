"""Recovery of one chosen subnet: its adapter fine-tuned alone after the search, optionally distilled
from the super-network's max subnet as it was before recovery.

A searched Mode B subnet is the base with channels, heads or blocks removed, and the super-adapter
was trained for many subnets at once; peers recover the one they ship (LLM-Pruner, MultiPruner: a
short LoRA fine-tune of the pruned model; Minitron: distillation from the parent). Here recovery
is an `NLSTrainer` run whose sampler always returns the chosen config (`SubnetSampler`):

* only the subnet's part of the adapter changes: the elastic layers slice the adapter tensors, so
  the channels, ranks and blocks the subnet leaves out get no gradient, and with no weight decay
  (`check_recovery_args`) AdamW leaves them bit for bit as they were; the base stays frozen;
* with ``distill``, the teacher is the max subnet of the super-adapter as recovery found it
  (`FrozenTeacher`: the adapter tensors are snapshotted once, and swapped in, without gradient, for
  each teacher forward), so the teacher does not drift while the shared weights train. Each
  micro-batch then costs one forward of the max subnet more.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from ..errors import LoraSearchError
from ..network.supernet import SuperNetwork
from ..space import Config
from .trainer import TrainArgs, response_logits


class SubnetSampler:
    """Every step trains the one chosen config."""

    name = "subnet"

    def __init__(self, config: Config) -> None:
        self.config = dict(config)

    def step_configs(self, rng: np.random.Generator) -> list[Config]:
        return [dict(self.config)]


class FrozenTeacher:
    """The max subnet of ``net`` with the adapter as it is now, for distillation while the adapter trains.

    Calling it with a batch returns the max subnet's response logits (no gradient); the caller
    activates its own config again afterwards.
    """

    def __init__(self, net: SuperNetwork) -> None:
        self.net = net
        self.frozen = {name: (m.lora_A.weight.detach().clone(), m.lora_B.weight.detach().clone())
                       for name, m in net.elastic.items() if m.lora_A is not None}

    @torch.no_grad()
    def __call__(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        live = {}
        for name, (a, b) in self.frozen.items():
            m = self.net.elastic[name]
            live[name] = (m.lora_A.weight.data, m.lora_B.weight.data)
            m.lora_A.weight.data, m.lora_B.weight.data = a, b
        try:
            self.net.activate(self.net.space.max())
            return response_logits(self.net.model, batch)[0]
        finally:
            for name, (a, b) in live.items():
                m = self.net.elastic[name]
                m.lora_A.weight.data, m.lora_B.weight.data = a, b


def check_recovery_args(args: TrainArgs) -> None:
    """Refuse settings under which recovery would change more than the subnet's part of the adapter."""
    if args.weight_decay:
        raise LoraSearchError(f"recover: --weight-decay {args.weight_decay} would shrink the adapter outside the "
                              "subnet too (the rest of the super-adapter must stay as it was); fix: --weight-decay 0")
