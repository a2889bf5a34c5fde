"""The read side of a search: the results table and its maths, reading a run back, picking a subnet.

* `table`: the table of every evaluation, its Pareto set, hypervolume and noise (the names below);
* `run`: `SearchResult` and `load_run`, the one reader of a run directory;
* `pick` (import it as ``lorasearch.results.pick``): `pick_config` and the knee.
"""

from .run import SearchResult, load_run, read_run_document
from .table import (
    ObjectiveSpec,
    binomial_stderr,
    hypervolume,
    hypervolume_curve,
    noise_notes,
    pareto_mask,
    results_table,
    shared_specs,
    to_minimisation,
    within_noise,
)

__all__ = [
    "ObjectiveSpec",
    "SearchResult",
    "binomial_stderr",
    "hypervolume",
    "hypervolume_curve",
    "load_run",
    "noise_notes",
    "pareto_mask",
    "read_run_document",
    "results_table",
    "shared_specs",
    "to_minimisation",
    "within_noise",
]
