"""Evaluators: a subnet's score on a fixed, seeded validation subset (`evaluators`: multiple
choice, exact match, loss; `harness`: lm-evaluation-harness tasks), chosen by name (`registry`)."""

from .evaluators import (
           CachedEvaluator,
           EvalResult,
           Evaluator,
           ExactMatchEvaluator,
           LossEvaluator,
           MultipleChoiceEvaluator,
)
from .harness import LMEvalEvaluator
from .registry import EVALUATORS, evaluator_kind

__all__ = ["EVALUATORS", "CachedEvaluator", "EvalResult", "Evaluator", "ExactMatchEvaluator", "LMEvalEvaluator",
           "LossEvaluator", "MultipleChoiceEvaluator", "evaluator_kind"]
