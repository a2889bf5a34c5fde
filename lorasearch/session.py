"""Deprecated: moved to `lorasearch.runs.settings`; this module re-exports it for one release."""

import warnings

from .runs.settings import (  # noqa: F401
    EVALUATORS,
    NetworkSettings,
    TaskSettings,
    build_evaluator,
    build_network,
    evaluator_kind,
    load_task,
    resolve_config,
    settings_dict,
)
from .space import space_fingerprint  # noqa: F401

warnings.warn("lorasearch.session is deprecated; import from lorasearch.runs.settings", DeprecationWarning, stacklevel=2)
