"""Deprecated: moved to `lorasearch.runs.train`; this module re-exports it for one release."""

import warnings

from .runs.train import VALIDATION_FILE, load_training_records, prepare_training  # noqa: F401

warnings.warn("lorasearch.training_run is deprecated; import from lorasearch.runs.train", DeprecationWarning, stacklevel=2)
