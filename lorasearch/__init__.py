"""lorasearch: multi-objective architecture search over elastic LoRA super-networks of LLMs.

The pieces, each usable from Python and from the ``lorasearch`` command:

* `SearchSpace` (``lorasearch.space``): declarative spaces of rank and width choices;
* `ElasticLoRALinear` (``lorasearch.elastic``): the sliceable adapter layer;
* `SuperNetwork` (``lorasearch.supernet``): a model, a space and its adapters, one subnet active;
* `load_model` (``lorasearch.models``): Hugging Face names, paths, GGUF files and tiny test models;
* `load_pruned` (``lorasearch.export``): loads a pruned Mode B export whose widths differ per layer.
"""

from .elastic import ElasticLoRALinear
from .errors import AdapterError, LoraSearchError, ModelError, SpaceError
from .export import load_pruned
from .models import load_model
from .space import SearchSpace
from .supernet import SuperNetwork

__version__ = "0.1.0"

__all__ = [
    "AdapterError",
    "ElasticLoRALinear",
    "LoraSearchError",
    "ModelError",
    "SearchSpace",
    "SpaceError",
    "SuperNetwork",
    "load_model",
    "load_pruned",
]
