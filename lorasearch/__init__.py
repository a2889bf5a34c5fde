"""lorasearch: multi-objective architecture search over elastic LoRA super-networks of LLMs.

The front door: everything a notebook or script needs, importable from ``lorasearch``.

* `SearchSpace`: declarative spaces of rank and width choices (``lorasearch.space``);
* `SuperNetwork`: a model, a space and its elastic adapters, one subnet active (``lorasearch.network.supernet``);
* `build_network`, `NetworkSettings`, `TaskSettings`, `build_evaluator`: objects from plain settings
  (``lorasearch.runs``);
* `search_network`, `SearchSettings`, `SearchRun`: the search (``lorasearch.runs.searching``);
* `load_run`, `SearchResult`, `pick_config`: a finished search read back (``lorasearch.results``);
* `MultipleChoiceEvaluator`, `LMEvalEvaluator`: accuracy evaluators (built in; lm-evaluation-harness tasks);
* `export_config`, `export_peft`, `export_merged`, `export_pruned`, `export_run`, `load_pruned`: exports.

Layers, bottom to top: the library (space, binding, elastic, supernet, models, data, cost,
evaluate, train, compress, search, results, export, plot, report), then ``lorasearch.runs`` (the
only code that builds objects from settings or run directories), then ``lorasearch.cli``.
"""

from .errors import AdapterError, ExportError, LoraSearchError, ModelError, SpaceError
from .evaluate.evaluators import EvalResult, MultipleChoiceEvaluator
from .evaluate.harness import LMEvalEvaluator
from .export.exporters import export_config, export_merged, export_peft, export_pruned, load_pruned
from .models.loading import load_model
from .network.elastic import ElasticLoRALinear
from .network.supernet import SuperNetwork
from .results import SearchResult, load_run
from .results.pick import pick_config
from .runs import (
    NetworkSettings,
    SearchRun,
    TaskSettings,
    build_evaluator,
    build_network,
    export_run,
    prepare_training,
    search_network,
)
from .search import SearchSettings
from .space import SearchSpace
from .train.trainer import TrainArgs
from .version import __version__

__all__ = [
    "AdapterError",
    "ElasticLoRALinear",
    "EvalResult",
    "ExportError",
    "LMEvalEvaluator",
    "LoraSearchError",
    "ModelError",
    "MultipleChoiceEvaluator",
    "NetworkSettings",
    "SearchResult",
    "SearchRun",
    "SearchSettings",
    "SearchSpace",
    "SpaceError",
    "SuperNetwork",
    "TaskSettings",
    "TrainArgs",
    "__version__",
    "build_evaluator",
    "build_network",
    "export_config",
    "export_merged",
    "export_peft",
    "export_pruned",
    "export_run",
    "load_model",
    "load_pruned",
    "load_run",
    "pick_config",
    "prepare_training",
    "search_network",
]
