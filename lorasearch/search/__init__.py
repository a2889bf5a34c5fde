"""Multi-objective search over a super-network's configs (NSGA-II, random, optuna, exhaustive).

``run_search(space, objectives, settings, out_dir=...)`` is the engine; `Objective` wraps any
callable ``config -> value``; `standard_objectives` builds accuracy, MACs, parameters and latency
from a super-network, an evaluator and a cost model.
"""

from .api import search_network
from .backends import BackendSettings, EvaluationBackend, LocalBackend, make_backend
from .engine import SearchEngine, SearchResult, SearchSettings, run_search
from .objectives import Constraint, Measurement, Objective, ObjectiveContext, parse_constraint, standard_objectives
from .strategies import STRATEGIES

__all__ = [
    "STRATEGIES",
    "BackendSettings",
    "Constraint",
    "EvaluationBackend",
    "LocalBackend",
    "make_backend",
    "Measurement",
    "Objective",
    "ObjectiveContext",
    "SearchEngine",
    "SearchResult",
    "SearchSettings",
    "parse_constraint",
    "run_search",
    "search_network",
    "standard_objectives",
]
