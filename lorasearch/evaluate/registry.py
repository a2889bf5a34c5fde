"""The evaluators by name: the class each ``--evaluator`` value builds, and the ``auto`` rule.

A new evaluator is a class on the `lorasearch.evaluate.evaluators.Evaluator` protocol with its own
``fingerprint_fields`` (the attributes that change its scores, which a resume compares), an entry
in `EVALUATORS`, and its constructor's options in `lorasearch.runs.settings.build_evaluator`.
"""

from __future__ import annotations

from typing import Sequence

from ..data import Record, is_multiple_choice
from ..errors import LoraSearchError
from .evaluators import CachedEvaluator, ExactMatchEvaluator, LossEvaluator, MultipleChoiceEvaluator
from .harness import LM_EVAL_PREFIX, LMEvalEvaluator, parse_lm_eval

EVALUATORS: dict[str, type[CachedEvaluator]] = {
    "text": MultipleChoiceEvaluator,  # the option texts' log-likelihood
    "label": MultipleChoiceEvaluator,  # the option labels after the reference's response prefix
    "exact": ExactMatchEvaluator,
    "loss": LossEvaluator,
    "lm-eval": LMEvalEvaluator,  # named as lm-eval:TASK[,TASK...]
}
NAMES = ("auto", "text", "label", "exact", "loss")  # what --evaluator takes besides lm-eval:TASK


def auto_kind(records: Sequence[Record]) -> str:
    """The ``auto`` rule: option texts for multiple choice, exact match for numeric answers, else loss."""
    if is_multiple_choice(records[0]):
        return "text"
    try:
        float(records[0].answer.replace(",", ""))
        return "exact"
    except ValueError:
        return "loss"


def evaluator_kind(name: str, records: Sequence[Record] | None = None) -> str:
    """The key of `EVALUATORS` that ``--evaluator NAME`` means (``auto`` resolved on ``records``)."""
    if parse_lm_eval(name) is not None:
        return "lm-eval"
    if name not in NAMES:
        raise LoraSearchError(f"--evaluator: unknown {name!r}; fix: use one of {', '.join(NAMES)} or {LM_EVAL_PREFIX}TASK")
    if name != "auto":
        return name
    if records is None:
        raise LoraSearchError("--evaluator auto: needs the task's records to choose; fix: pass them or name the evaluator")
    return auto_kind(records)
