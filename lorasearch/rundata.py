"""Deprecated: moved to `lorasearch.results.run`; this module re-exports it for one release."""

import warnings

from .results.run import (  # noqa: F401
    LOG_FILE,
    REFERENCE_SOURCES,
    RUN_FILE,
    TABLE_FILE,
    RunData,
    SearchResult,
    as_run,
    from_result,
    load_run,
    running_hypervolume,
)

warnings.warn("lorasearch.rundata is deprecated; import from lorasearch.results", DeprecationWarning, stacklevel=2)
