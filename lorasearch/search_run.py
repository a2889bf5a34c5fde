"""Deprecated: moved to `lorasearch.runs.search`; this module re-exports it for one release."""

import warnings

from .report import summary_table  # noqa: F401
from .runs.search import NetworkRecipe, SearchRun, run_from_file  # noqa: F401

warnings.warn("lorasearch.search_run is deprecated; import from lorasearch.runs.search", DeprecationWarning, stacklevel=2)
