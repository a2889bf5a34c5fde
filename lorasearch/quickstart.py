"""Deprecated: moved to `lorasearch.runs.quickstart`; this module re-exports it for one release."""

import warnings

from .runs.quickstart import QuickstartPlan, run_quickstart, shipped_space  # noqa: F401

warnings.warn("lorasearch.quickstart is deprecated; import from lorasearch.runs.quickstart", DeprecationWarning,
              stacklevel=2)
