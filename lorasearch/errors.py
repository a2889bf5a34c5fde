"""Error types. Every message is one line that names the file, the field and the fix."""

from __future__ import annotations


class LoraSearchError(Exception):
    """Base class of the errors lorasearch raises for bad input; the CLI prints them as one line."""


class LoraSearchWarning(UserWarning):
    """Something lorasearch handled but the user should know (a torn log line cut back, a pickle
    file read); the CLI prints it as one ``warning: ...`` line."""


class SpaceError(LoraSearchError):
    """A search-space file is malformed or does not fit the model it is applied to."""


class AdapterError(LoraSearchError):
    """An adapter folder is missing files or holds tensors of the wrong shape."""


class ModelError(LoraSearchError):
    """A model cannot be found, loaded or built."""


class ExportError(LoraSearchError):
    """A subnet cannot be picked or exported as asked."""


class CostError(LoraSearchError):
    """Bad input to the cost model (a sequence length, a deployment, a reference)."""


class CostWarning(LoraSearchWarning):
    """An fvcore count that disagrees with a module's shapes: the closed form is kept for it."""


class DataError(LoraSearchError):
    """A task file is missing, malformed, empty, or its answers do not fit its options."""


class EvalError(LoraSearchError):
    """An evaluator cannot be built or run on the given network and data."""


class CompressError(LoraSearchError):
    """Bad input to sparsification, quantization or the sparse/quantization-aware adapter modes."""


class CalibrationError(LoraSearchError):
    """Calibration texts that cannot give the windows asked for (Wanda, quantization, reordering)."""


class PreflightError(LoraSearchError):
    """The one batch a long command runs on its device before it starts failed (memory, a kernel, a dtype)."""


class Interrupted(LoraSearchError):
    """A run stopped by Ctrl-C (SIGINT) or SIGTERM; what it finished is on disk. ``exit_code`` is the
    shell's: 130 for SIGINT, 143 for SIGTERM."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Terminated(BaseException):
    """Raised in the main thread when the CLI receives SIGTERM, so that a run unwinds (locks released,
    the log flushed) as it does on Ctrl-C; a `BaseException`, like `KeyboardInterrupt`, so that no
    ``except Exception`` swallows it."""


def where(source: str | None, field: str | None = None) -> str:
    """Format the `file: field:` prefix of an error message."""
    parts = [p for p in (source, field) if p]
    return ": ".join(parts) + ": " if parts else ""
