"""The super-network: the elastic LoRA layer (`elastic`), binding a space to a model (`binding`),
the wrapped model with one subnet active (`supernet`), recorded channel permutations
(`permutation`), the PEFT adapter folder format (`peft_format`) and layers that accelerate
offloads (`offload`)."""

from .binding import SpaceBinding, bind
from .elastic import ElasticLoRALinear
from .permutation import ChannelPermutation
from .supernet import SuperNetwork

__all__ = ["ChannelPermutation", "ElasticLoRALinear", "SpaceBinding", "SuperNetwork", "bind"]
