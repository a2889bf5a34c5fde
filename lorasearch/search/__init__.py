"""Multi-objective search over a space's configs (NSGA-II, random, optuna, exhaustive), model-agnostic.

``run_search(space, objectives, settings, out_dir=...)`` is the engine; `Objective` wraps any
callable ``config -> value``; a `SearchCallback` hears of each generation and evaluation. Nothing here knows about models: `lorasearch.runs.search_network`
builds accuracy, MACs, parameters and latency objectives from a super-network and searches it.
"""

from ..results.run import SearchResult
from ..results.table import DIRECTIONS_OF
from .backends import BackendSettings, EvaluationBackend, LocalBackend, make_backend
from .callbacks import PrintLines, SearchCallback
from .engine import SearchEngine, SearchSettings, run_search
from .objectives import Constraint, Measurement, Objective, parse_constraint
from .strategies import STRATEGIES

__all__ = [
    "DIRECTIONS_OF",
    "STRATEGIES",
    "BackendSettings",
    "Constraint",
    "EvaluationBackend",
    "LocalBackend",
    "make_backend",
    "Measurement",
    "Objective",
    "PrintLines",
    "SearchCallback",
    "SearchEngine",
    "SearchResult",
    "SearchSettings",
    "parse_constraint",
    "run_search",
]
