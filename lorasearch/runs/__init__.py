"""The application layer: the only code that turns plain settings or a run directory into objects.

* `settings`: `NetworkSettings`, `TaskSettings`, the one `build_network`, `build_evaluator`, `resolve_config`;
* `objectives`: the registered objectives built from a network, an evaluator and a cost model;
* `train`: a training run from settings (`prepare_training`);
* `search`: `search_network` and `SearchRun` (a search from settings; resume);
* `export`: `export_run` (pick and export from a run directory);
* `quickstart`: the README's main job.

The library below knows nothing of this layer; the CLI above is a thin layer over it.
"""

from .export import export_run, load_results
from .objectives import ObjectiveContext, build_objective, network_objectives, standard_objectives
from .search import NetworkRecipe, SearchRun, run_from_file, search_network
from .settings import (
    NetworkSettings,
    TaskSettings,
    build_evaluator,
    build_network,
    load_task,
    resolve_config,
    settings_dict,
)
from .train import prepare_training

__all__ = [
    "NetworkRecipe",
    "NetworkSettings",
    "ObjectiveContext",
    "SearchRun",
    "TaskSettings",
    "build_evaluator",
    "build_network",
    "build_objective",
    "export_run",
    "load_results",
    "load_task",
    "network_objectives",
    "prepare_training",
    "resolve_config",
    "run_from_file",
    "search_network",
    "settings_dict",
    "standard_objectives",
]
