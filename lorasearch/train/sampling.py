"""Sub-network samplers for NLS training: which configs one optimizer step trains.

Each sampler returns the list of configs for one step; the trainer draws it once per optimizer
step, outside ``forward``, so gradient accumulation and gradient checkpointing see the same
sub-networks throughout the step.

* ``random``: one config drawn uniformly per gene (the reference's NLS);
* ``sandwich``: the max, the min and ``k`` random configs, their gradients averaged (the sandwich
  rule of BigNAS and Once-for-All): the largest and the smallest sub-network train every step;
* ``fixed``: always the max config (plain LoRA at the full rank, the baseline);
* ``auto`` (the default): ``sandwich`` for Mode B spaces (widths or heads), ``random`` for Mode A.
  A Mode B subnet is the base model with channels removed, so the max and min subnets differ far
  more than rank choices do, and training both every step keeps the ends of the front accurate; a
  sandwich step costs ``2 + k`` forward and backward passes against one for ``random``.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..errors import LoraSearchError
from ..space import Config, SearchSpace


class Sampler(Protocol):
    """Draws the configs one optimizer step trains."""

    name: str

    def step_configs(self, rng: np.random.Generator) -> list[Config]: ...


class RandomSampler:
    """One uniformly drawn config per step."""

    name = "random"

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def step_configs(self, rng: np.random.Generator) -> list[Config]:
        return [self.space.sample(rng)]


class SandwichSampler:
    """The max, the min and ``k`` random configs per step (the sandwich rule)."""

    name = "sandwich"

    def __init__(self, space: SearchSpace, k: int = 2) -> None:
        self.space, self.k = space, k

    def step_configs(self, rng: np.random.Generator) -> list[Config]:
        return [self.space.max(), self.space.min()] + [self.space.sample(rng) for _ in range(self.k)]


class FixedSampler:
    """Always the max config: plain LoRA at the trained rank."""

    name = "fixed"

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def step_configs(self, rng: np.random.Generator) -> list[Config]:
        return [self.space.max()]


SAMPLERS = {"random": RandomSampler, "sandwich": SandwichSampler, "fixed": FixedSampler}
AUTO = "auto"


def resolve_sampler(name: str, space: SearchSpace) -> str:
    """``auto`` made concrete: ``sandwich`` for a Mode B space, ``random`` for Mode A; other names as given."""
    if name == AUTO:
        return "sandwich" if space.mode == "B" else "random"
    if name not in SAMPLERS:
        raise LoraSearchError(f"sampler: unknown {name!r}; fix: use one of {AUTO}, {', '.join(SAMPLERS)}")
    return name


def make_sampler(name: str, space: SearchSpace, sandwich_k: int = 2) -> Sampler:
    """Build a sampler by name (``auto`` resolved by `resolve_sampler`)."""
    name = resolve_sampler(name, space)
    return SandwichSampler(space, sandwich_k) if name == "sandwich" else SAMPLERS[name](space)
