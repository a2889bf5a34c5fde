"""What a running search reports, in the manner of pymoo's ``Callback``: one object whose methods the
engine calls at each event, passed once, instead of one function per kind of line threaded through
every layer.

`SearchCallback` is silent; `PrintLines` sends each kind of line to a function of one string (the
CLI passes its console). Subclass `SearchCallback` to collect records, drive a notebook widget or
stop a dashboard: whatever a hook raises stops the search (a resume continues it).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

LineSink = Callable[[str], None]


class SearchCallback:
    """The hooks of a running search. Override what you need; each default does nothing, so
    ``SearchCallback()`` runs a silent search."""

    def on_message(self, line: str) -> None:
        """A line about the run as a whole: each generation's summary, the preflight, a resume, the
        surrogate's state."""

    def on_progress(self, line: str) -> None:
        """A step of long work inside a batch (the surrogate's probes, every 20)."""

    def on_evaluation(self, record: Mapping[str, Any], line: str) -> None:
        """One finished evaluation: its record as logged in ``evaluations.jsonl``, and its one-line
        summary (the line a run directory's ``progress.log`` gets)."""


class PrintLines(SearchCallback):
    """Messages to ``log``, progress and evaluation lines to ``progress``; either may be None (not shown)."""

    def __init__(self, log: LineSink | None = print, progress: LineSink | None = None) -> None:
        self.log, self.progress = log, progress

    def on_message(self, line: str) -> None:
        if self.log is not None:
            self.log(line)

    def on_progress(self, line: str) -> None:
        if self.progress is not None:
            self.progress(line)

    def on_evaluation(self, record: Mapping[str, Any], line: str) -> None:
        self.on_progress(line)
