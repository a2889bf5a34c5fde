"""The application layer: the only code that turns plain settings or a run directory into objects,
one module per command, so the CLI above only parses, calls one function here and prints.

* `settings`: `NetworkSettings`, `TaskSettings`, the one `build_network`, `build_evaluator`, `resolve_config`;
* `network_objectives`: the registered objectives built from a network, an evaluator and a cost model;
* `training`: a training run from settings (`prepare_training`);
* `recovering`: fine-tune one subnet picked from a search, then export it (`prepare_recovery`);
* `searching`: `search_network`, `SearchRun` (a search from settings; resume), `pick_under_budget`;
* `exporting`: `export_run` (pick and export from a run directory);
* `scoring`: one subnet's accuracy, MACs and parameters (`score_subnet`), its cost breakdown;
* `compressing`: sparsify and quantize a base (`sparsify_base`, `quantize_base`);
* `inspecting`: spaces, plots and reports (`load_space`, `plot_runs`, `report_run`);
* `quickstart`: the README's main job.

The library below knows nothing of this layer; the CLI above is a thin layer over it. The other
settings dataclasses the CLI derives options from (`TrainArgs`, `SearchSettings`,
`BackendSettings`) and the search's printing callback (`PrintLines`) are re-exported here.
"""

from ..search.backends import BackendSettings
from ..search.callbacks import PrintLines, SearchCallback
from ..search.engine import SearchSettings
from ..train.trainer import TrainArgs
from ..version import __version__
from .compressing import QuantizeSettings, SparsifySettings, quantize_base, sparsify_base
from .exporting import export_run, load_results, picked_subnet
from .inspecting import (
    front_summary,
    import_space_file,
    knee_summary,
    load_space,
    plot_runs,
    reference_configs,
    report_run,
)
from .network_objectives import ObjectiveContext, build_objective, network_objectives, standard_objectives
from .scoring import cost_breakdown, score_subnet
from .searching import (
    RESUME_OPTIONS,
    BudgetPick,
    NetworkRecipe,
    SearchRun,
    pick_under_budget,
    resumed_run,
    run_from_file,
    search_network,
    write_pick,
)
from .settings import (
    NetworkSettings,
    TaskSettings,
    build_evaluator,
    build_network,
    load_task,
    resolve_config,
    settings_dict,
)
from .recovering import prepare_recovery, read_recovery
from .training import prepare_training

__all__ = [
    "RESUME_OPTIONS",
    "__version__",
    "BackendSettings",
    "BudgetPick",
    "NetworkRecipe",
    "NetworkSettings",
    "ObjectiveContext",
    "SearchRun",
    "SearchCallback",
    "SearchSettings",
    "SparsifySettings",
    "TaskSettings",
    "TrainArgs",
    "build_evaluator",
    "build_network",
    "build_objective",
    "cost_breakdown",
    "export_run",
    "front_summary",
    "import_space_file",
    "knee_summary",
    "load_results",
    "load_space",
    "load_task",
    "network_objectives",
    "pick_under_budget",
    "PrintLines",
    "picked_subnet",
    "plot_runs",
    "prepare_recovery",
    "prepare_training",
    "QuantizeSettings",
    "quantize_base",
    "read_recovery",
    "reference_configs",
    "report_run",
    "resolve_config",
    "resumed_run",
    "run_from_file",
    "score_subnet",
    "search_network",
    "settings_dict",
    "sparsify_base",
    "standard_objectives",
    "write_pick",
]
