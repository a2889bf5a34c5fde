"""Evaluators: the score of one sub-network on a fixed validation subset, higher is better.

Every evaluator follows one protocol: ``evaluator(config) -> EvalResult``. It holds a
`SuperNetwork` and a seeded subset of a task, activates ``config`` for the duration of the call,
runs the model under ``torch.inference_mode()`` in eval mode, and caches the result under
``net.space.canonical(config)``, so a search that revisits a config pays nothing.

* `MultipleChoiceEvaluator` ``mode="label"``: one forward per question on the Alpaca prompt plus
  ``"the correct answer is "``; compares the log-probabilities of the options' labels.
* `MultipleChoiceEvaluator` ``mode="text"``: length-normalised log-likelihood of each option's text
  after ``"Question: {question}\\nAnswer:"``.
* `ExactMatchEvaluator`: greedy generation, the number after "The answer is" (else the last
  number), compared with a tolerance (GSM8K, SVAMP, ...).
* `LossEvaluator`: negative mean token loss (or perplexity) on held-out records or texts.
* `lorasearch.evaluate.harness.LMEvalEvaluator` (its own module, on this same protocol):
  lm-evaluation-harness tasks, when ``lm_eval`` is installed.

Sequences are left-padded with explicit position ids, so a sequence's scores do not depend on
what it is batched with.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import re
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import torch

from ..data import (
    IGNORE_INDEX,
    RESPONSE_PREFIX,
    TEXT_TEMPLATE,
    DataError,
    Record,
    encode_for_training,
    format_prompt,
    load_records,
    parse_choices,
    subset,
)
from ..errors import EvalError
from ..results import binomial_stderr

if TYPE_CHECKING:
    from ..network.supernet import SuperNetwork

NORMALIZATIONS = ("char", "token", "none")

_NUMBER = r"-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)"
_ANSWER_IS_RE = re.compile(rf"the answer is\s*:?\s*\$?\s*({_NUMBER})", re.IGNORECASE)
_NUMBER_RE = re.compile(_NUMBER)



@dataclass(frozen=True)
class EvalResult:
    """The outcome of evaluating one config.

    Attributes:
        score: higher is better (accuracy, or the negative loss).
        n: items evaluated.
        stderr: standard error of ``score`` where it applies (binomial for accuracies), else None.
        seconds: wall time of the evaluation (of the first call, for cached results).
        metric: what ``score`` is: ``accuracy``, ``neg_loss`` or ``neg_perplexity``.
        predictions: per item, the predicted label (multiple choice) or number (exact match).
        extra: other figures (``loss``, ``perplexity``, ``tokens``, ``truncated``).
    """

    score: float
    n: int
    stderr: float | None
    seconds: float = field(compare=False)
    metric: str = "accuracy"
    predictions: tuple[Any, ...] = field(default=(), repr=False, compare=False)
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    item_scores: tuple[float, ...] = field(default=(), repr=False, compare=False)
    """Per item of the subset, in its fixed order: 1.0/0.0 for accuracies, the item's own score else."""
    scored: int = field(default=0, compare=False)
    """Items this call ran through the model (0 when everything came from the cache)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain data for logs, without the per-item predictions and scores."""
        out = asdict(self)
        for per_call in ("predictions", "item_scores", "scored"):
            out.pop(per_call)
        out["extra"] = dict(self.extra)
        return out


@runtime_checkable
class Evaluator(Protocol):
    """Anything that maps a config to an `EvalResult` (higher score is better)."""

    metric: str

    def __call__(self, config: Mapping[str, Any]) -> EvalResult: ...


def extract_number(text: str) -> float | None:
    """The number after "The answer is", else the last number in ``text``; None when there is none."""
    match = _ANSWER_IS_RE.search(text)
    raw = match.group(1) if match else (_NUMBER_RE.findall(text) or [None])[-1]
    if raw is None:
        return None
    try:
        return float(raw.replace(",", ""))
    except ValueError:
        return None


# ------------------------------------------------------------------------------------------- base
@dataclass
class _Scored:
    """What a config has been scored on so far: the first ``len(values)`` items of the subset."""

    values: list[Any] = field(default_factory=list)
    predictions: list[Any] = field(default_factory=list)
    restored: int = 0
    """Items scored in an earlier process and restored from its log, not yet counted as scored."""


class CachedEvaluator:
    """The shared part of the evaluators: the network, the seeded subset in a fixed order, the
    caches, batching, and the activation of a config around each run.

    A config's score is built from per-item values, cached per config: `score_items` scores the
    first ``stop`` items and a later call with a larger ``stop`` continues where it stopped, so the
    score on the first k items is exactly the prefix of the score on the first n (racing relies on
    this). ``evaluator(config)`` is ``score_items(config)`` on the whole subset.

    Args:
        net: the `SuperNetwork` (with its tokenizer).
        records: records or the path of a task file.
        limit: size of the seeded subset (None: every record).
        seed: the subset's seed (it also fixes the items' order).
        batch_size: most sequences per forward pass (None: only the token budget counts).
        max_batch_tokens: most tokens per forward pass, padding and the text mode's per-option
            copies of the context included (None: only ``batch_size`` counts).
        max_length: longest sequence; longer contexts lose their start (default: the model's limit).
        progress: show a progress bar (default: when stderr is a terminal).
    """

    # The settings that change a score: a resume compares their hash (lorasearch.fingerprints).
    fingerprint_fields: tuple[str, ...] = ("max_length", "metric")

    metric = "accuracy"
    itemwise = True
    """Whether the score is the mean of per-item values (accuracies), so that paired per-item
    comparisons on a prefix of the subset mean something."""

    def __init__(
        self,
        net: SuperNetwork,
        records: Sequence[Record] | str | Path,
        *,
        limit: int | None = None,
        seed: int = 0,
        batch_size: int | None = 8,
        max_batch_tokens: int | None = None,
        max_length: int | None = None,
        progress: bool | None = None,
    ) -> None:
        if net.tokenizer is None:
            raise EvalError("the SuperNetwork has no tokenizer; fix: build it with tokenizer= or from_pretrained")
        if batch_size is not None and batch_size < 1:
            raise EvalError(f"batch_size {batch_size}: must be 1 or more")
        if max_batch_tokens is not None and max_batch_tokens < 1:
            raise EvalError(f"max_batch_tokens {max_batch_tokens}: must be 1 or more")
        self.net = net
        self.tokenizer = net.tokenizer
        all_records = load_records(records) if isinstance(records, (str, Path)) else list(records)
        if not all_records:
            raise DataError("no records to evaluate on; fix: pass a non-empty task file or list")
        self.records: list[Any] = subset(all_records, limit, seed)
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_length = max_length or _model_max_length(net.model)
        self.progress = progress
        self._cache: dict[Any, EvalResult] = {}
        self._scored: dict[Any, _Scored] = {}

    @property
    def n_items(self) -> int:
        """Items in the subset (what a full evaluation scores)."""
        return len(self.records)

    def __call__(self, config: Mapping[str, Any]) -> EvalResult:
        """Evaluate ``config`` on the subset (from the cache when seen before)."""
        return self.score_items(config)

    def score_items(self, config: Mapping[str, Any], stop: int | None = None) -> EvalResult:
        """``config``'s result on the first ``stop`` items of the subset (default: all of them).

        Items scored before for this config are not scored again.
        """
        key = self.net.space.canonical(config)
        stop = self.n_items if stop is None else int(stop)
        if not 1 <= stop <= self.n_items:
            raise EvalError(f"stop {stop}: outside 1..{self.n_items} items of the subset")
        if stop == self.n_items and key in self._cache:
            return self._cache[key]
        scored = self._scored.setdefault(key, _Scored())
        start, todo = time.perf_counter(), range(len(scored.values), stop)
        if len(todo):
            with _evaluating(self.net, config):
                values, predictions = self._score(todo)
            scored.values += values
            scored.predictions += predictions
        result = self._aggregate(scored.values[:stop], scored.predictions[:stop])
        # Restored items count as this evaluation's: its cost is the same as had it never crashed.
        result = replace(result, seconds=time.perf_counter() - start, scored=len(todo) + scored.restored)
        scored.restored = 0
        if stop == self.n_items:
            self._cache[key] = result
        return result

    def restore_items(self, config: Mapping[str, Any], values: Sequence[Any]) -> None:
        """Take per-item values scored earlier (a run's log, after a crash) as already scored."""
        key = self.net.space.canonical(config)
        scored = self._scored.setdefault(key, _Scored())
        if len(values) > len(scored.values):
            extra = list(values[len(scored.values):])
            scored.values += extra
            scored.predictions += [None] * len(extra)
            scored.restored += len(extra)

    def _score(self, indices: range) -> tuple[list[Any], list[Any]]:
        """Per-item values and predictions of the active config on the items ``indices``."""
        raise NotImplementedError

    def _aggregate(self, values: Sequence[Any], predictions: Sequence[Any]) -> EvalResult:
        """The result over items whose values are ``values`` (default: the accuracy of 0/1 values)."""
        return _accuracy_result([bool(v) for v in values], predictions)

    @property
    def cache(self) -> dict[Any, EvalResult]:
        """Full results so far, keyed by ``net.space.canonical(config)``."""
        return self._cache

    def _batches(self, indices: Sequence[int], cost: Callable[[int], int]) -> Iterator[list[int]]:
        """``indices`` most costly first, in batches within ``batch_size`` and ``max_batch_tokens``
        (a batch costs its size times its first, largest item's cost: the padded width)."""
        order = sorted(indices, key=lambda i: -cost(i))
        batch: list[int] = []
        for i in order:
            too_many = self.batch_size is not None and len(batch) >= self.batch_size
            too_long = self.max_batch_tokens is not None and batch and (len(batch) + 1) * cost(batch[0]) > self.max_batch_tokens
            if batch and (too_many or too_long):
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    # ------------------------------------------------------------------ preflight
    def largest_batch(self) -> list[int] | None:
        """The subset's most costly batch under the batch limits (the first one a full evaluation runs);
        None for an evaluator that batches its requests itself."""
        return next(self._batches(range(self.n_items), self._cost))

    def batch_tokens(self, batch: Sequence[int]) -> int:
        """Tokens ``batch`` puts through a forward, padding (and per-option context copies) included."""
        return len(batch) * max(self._cost(i) for i in batch)

    def run_batch(self, batch: Sequence[int], config: Mapping[str, Any]) -> None:
        """Run ``batch`` under ``config`` as an evaluation would, scoring nothing into the caches (a
        long command's preflight: does the largest batch fit the device?)."""
        with _evaluating(self.net, config):
            self._run(batch)

    def _cost(self, i: int) -> int:
        """Tokens item ``i`` puts through a forward (what the token budget counts)."""
        raise NotImplementedError

    def _run(self, batch: Sequence[int]) -> None:
        """One batch through the model as `_score` runs it (the active config, under inference mode)."""
        raise NotImplementedError

    @property
    def _device(self) -> torch.device:
        return next(self.net.model.parameters()).device

    def _bar(self, total: int, desc: str):
        """A progress bar on a terminal; without one (a job, a pipe), a line on stderr now and then."""
        if self.progress is None and not sys.stderr.isatty():
            return LineProgress(total, desc)
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, disable=not self.progress and self.progress is not None, leave=False)

    def _forward(self, seqs: Sequence[Sequence[int]], keep: int) -> torch.Tensor:
        """Log-probabilities over the vocabulary at the last ``keep`` positions of left-padded ``seqs``."""
        ids, mask = _left_pad(seqs, _pad_id(self.tokenizer), self._device)
        out = self.net.model(input_ids=ids, attention_mask=mask, position_ids=_position_ids(mask), logits_to_keep=keep)
        return torch.log_softmax(out.logits[:, -keep:].float(), dim=-1)


class LineProgress:
    """Progress for logs: a line ``desc: k of N (s)`` on stderr at most every ``every`` seconds,
    and one at the end when the work took that long."""

    def __init__(self, total: int, desc: str, every: float = 60.0) -> None:
        self.total, self.desc, self.every = total, desc, every
        self.done, self.start = 0, time.perf_counter()
        self.last = self.start

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            print(f"{self.desc}: {self.done} of {self.total} ({now - self.start:.0f} s)", file=sys.stderr, flush=True)

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        if time.perf_counter() - self.start >= self.every:
            print(f"{self.desc}: {self.done} of {self.total} done ({time.perf_counter() - self.start:.0f} s)",
                  file=sys.stderr, flush=True)


@contextlib.contextmanager
def _evaluating(net: SuperNetwork, config: Mapping[str, Any]) -> Iterator[None]:
    """Eval mode, ``config`` active and inference mode for the block; all restored afterwards."""
    was_training = net.model.training
    net.model.eval()
    head = net.model.get_output_embeddings() if hasattr(net.model, "get_output_embeddings") else None
    # transformers hands the head a strided slice (logits_to_keep); a frozen bf16 head on the CPU then
    # takes a path that holds several times its weight in temporaries (1 GB on a 1.1B model).
    handle = head.register_forward_pre_hook(_contiguous_input) if head is not None else None
    try:
        with net.activated(config), torch.inference_mode():
            yield
    finally:
        net.model.train(was_training)
        if handle is not None:
            handle.remove()


def _contiguous_input(module: torch.nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(), *args[1:]) if args and isinstance(args[0], torch.Tensor) else args


def _accuracy_result(correct: Sequence[bool], predictions: Sequence[Any], **extra: Any) -> EvalResult:
    n = len(correct)
    p = sum(correct) / n
    items = tuple(1.0 if c else 0.0 for c in correct)
    return EvalResult(p, n, binomial_stderr(p, n), 0.0, "accuracy", tuple(predictions), extra, items)


# -------------------------------------------------------------------------------- multiple choice
@dataclass
class _LabelItem:
    context: list[int]  # prompt + response prefix + the labels' common token prefix
    candidates: list[int]  # the first distinguishing token of each label
    labels: tuple[str, ...]
    answer: int


@dataclass
class _TextItem:
    context: list[int]
    continuations: list[list[int]]
    lengths: list[float]  # the normaliser of each option's log-likelihood
    labels: tuple[str, ...]
    answer: int


class MultipleChoiceEvaluator(CachedEvaluator):
    """Accuracy on a multiple-choice task in the LLM-Adapters format.

    Args:
        net: the `SuperNetwork` (with its tokenizer).
        records: records or the path of a task file.
        mode: ``"label"`` scores the option labels after the response prefix (how the reference's
            models answer), one forward per question; ``"text"`` scores each option's text.
        normalization: text mode only: divide an option's log-likelihood by its length in
            characters (``"char"``, default), tokens (``"token"``) or not at all (``"none"``).
        response_prefix: label mode: the start of the response before the label.
        template: text mode: the context before each option, with ``{question}``.
        subset: ``limit``, ``seed``, ``batch_size`` (text mode: questions per batch, each with all
            its options), ``max_length``, ``progress``: see `CachedEvaluator`.
    """

    # The settings that change a score: a resume compares their hash (lorasearch.fingerprints).
    fingerprint_fields: tuple[str, ...] = ("max_length", "metric", "mode", "normalization", "response_prefix", "template")

    def __init__(
        self,
        net: SuperNetwork,
        records: Sequence[Record] | str | Path,
        *,
        mode: str = "label",
        normalization: str = "char",
        response_prefix: str = RESPONSE_PREFIX,
        template: str = TEXT_TEMPLATE,
        **subset: Any,
    ) -> None:
        if mode not in ("label", "text"):
            raise EvalError(f"mode {mode!r}: use 'label' or 'text'")
        if normalization not in NORMALIZATIONS:
            raise EvalError(f"normalization {normalization!r}: use one of {', '.join(NORMALIZATIONS)}")
        super().__init__(net, records, **subset)
        self.mode = mode
        self.normalization = normalization
        self.response_prefix = response_prefix
        self.template = template
        self.truncated = 0
        prepare = self._label_item if mode == "label" else self._text_item
        self.items = [prepare(r) for r in self.records]

    # ------------------------------------------------------------------ preparation
    def _label_item(self, record: Record) -> _LabelItem:
        choices = parse_choices(record)
        prompt = format_prompt(record) + self.response_prefix
        full = [self.tokenizer(prompt + label).input_ids for label in choices.labels]
        common = _common_prefix_length(full)
        if any(len(ids) <= common for ids in full):
            raise EvalError(
                f"{record.where}: one option label is a prefix of another ({'/'.join(choices.labels)}); "
                "fix: use mode='text'"
            )
        candidates = [ids[common] for ids in full]
        if len(set(candidates)) != len(candidates):
            raise EvalError(
                f"{record.where}: labels {'/'.join(choices.labels)} share their first distinguishing token; "
                "fix: use mode='text'"
            )
        context = self._truncate(full[0][:common])
        return _LabelItem(context, candidates, choices.labels, choices.answer)

    def _text_item(self, record: Record) -> _TextItem:
        choices = parse_choices(record)
        context = self.tokenizer(self.template.format(question=choices.question)).input_ids
        continuations, lengths = [], []
        for label, text in zip(choices.labels, choices.texts):
            ids = self.tokenizer(" " + text, add_special_tokens=False).input_ids
            if not text or not ids:
                raise DataError(
                    f"{record.where}: option {label} has no text; fix: give every option a text or use mode='label'"
                )
            continuations.append(ids)
            lengths.append({"char": len(" " + text), "token": len(ids), "none": 1}[self.normalization])
        budget = self.max_length - max(len(c) for c in continuations)
        return _TextItem(self._truncate(context, budget), continuations, lengths, choices.labels, choices.answer)

    def _truncate(self, ids: list[int], budget: int | None = None) -> list[int]:
        budget = self.max_length if budget is None else budget
        if len(ids) <= budget:
            return ids
        self.truncated += 1
        return ids[len(ids) - max(budget, 1) :]

    # ------------------------------------------------------------------ scoring
    @torch.inference_mode()
    def option_scores(self, indices: Sequence[int] | None = None) -> list[list[float]]:
        """Per item (all, or ``indices``), the score of each option under the active config (no
        cache, no activation)."""
        indices = range(len(self.items)) if indices is None else indices
        scores = self._label_scores(indices) if self.mode == "label" else self._text_scores(indices)
        return [scores[i] for i in indices]

    def _score(self, indices: range) -> tuple[list[Any], list[Any]]:
        picks = [max(range(len(s)), key=s.__getitem__) for s in self.option_scores(indices)]
        items = [self.items[i] for i in indices]
        return [p == item.answer for p, item in zip(picks, items)], [item.labels[p] for p, item in zip(picks, items)]

    def _aggregate(self, values: Sequence[Any], predictions: Sequence[Any]) -> EvalResult:
        return _accuracy_result(values, predictions, mode=self.mode, truncated=self.truncated)

    def _cost(self, i: int) -> int:
        return self._item_cost(i)

    def _run(self, batch: Sequence[int]) -> None:
        self.option_scores(batch)

    def _item_cost(self, i: int) -> int:
        """Tokens one item puts through a forward: its context (copied per option in text mode)."""
        item = self.items[i]
        if self.mode == "label":
            return len(item.context)
        return len(item.context) * (1 + len(item.continuations)) + sum(len(c) for c in item.continuations)

    def _label_scores(self, indices: Sequence[int]) -> dict[int, list[float]]:
        scores: dict[int, list[float]] = {}
        with self._bar(len(indices), f"mc-label ({len(indices)} questions)") as bar:
            for batch in self._batches(indices, self._item_cost):
                logprobs = self._forward([self.items[i].context for i in batch], keep=1)[:, -1]
                rows = [row for row, i in enumerate(batch) for _ in self.items[i].candidates]
                labels = [c for i in batch for c in self.items[i].candidates]
                picked = logprobs[torch.tensor(rows, device=logprobs.device), torch.tensor(labels, device=logprobs.device)]
                values = iter(picked.tolist())  # gathered on the device, copied once per batch
                for i in batch:
                    scores[i] = [next(values) for _ in self.items[i].candidates]
                bar.update(len(batch))
        return scores

    def _text_scores(self, indices: Sequence[int]) -> dict[int, list[float]]:
        # Each question's context runs once; its options continue from the cached keys and values,
        # so an item costs one context plus its options' few tokens instead of one context per option.
        scores: dict[int, list[float]] = {}
        options = sum(len(self.items[i].continuations) for i in indices)
        with self._bar(options, f"mc-text ({len(indices)} questions, {options} options)") as bar:
            for batch in self._batches(indices, self._item_cost):
                for i, logprobs in zip(batch, self._continuation_logprobs([self.items[i] for i in batch])):
                    item = self.items[i]
                    scores[i] = [lp / n for lp, n in zip(logprobs, item.lengths)]
                    bar.update(len(item.continuations))
        return scores

    def _continuation_logprobs(self, items: Sequence[_TextItem]) -> list[list[float]]:
        """Per item, the summed log-probability of each continuation after the item's context."""
        device = self._device
        ids, mask = _left_pad([item.context for item in items], _pad_id(self.tokenizer), device)
        out = self.net.model(
            input_ids=ids, attention_mask=mask, position_ids=_position_ids(mask), use_cache=True, logits_to_keep=1
        )
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # predicts each continuation's first token
        rows = [(k, cont) for k, item in enumerate(items) for cont in item.continuations]
        owner = torch.tensor([k for k, _ in rows], device=device)
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        cache.batch_select_indices(owner)  # one cached context per option row
        width = max(len(cont) for _, cont in rows)
        cont_ids = torch.full((len(rows), width), _pad_id(self.tokenizer), dtype=torch.long)
        cont_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (_, cont) in enumerate(rows):
            cont_ids[r, : len(cont)] = torch.tensor(cont)
            cont_mask[r, : len(cont)] = 1
        cont_ids, cont_mask = cont_ids.to(device), cont_mask.to(device)
        context_mask = mask[owner]
        positions = context_mask.sum(-1, keepdim=True) + torch.arange(width, device=device)
        logits = self.net.model(
            input_ids=cont_ids,
            attention_mask=torch.cat([context_mask, cont_mask], dim=1),
            position_ids=positions,
            **_cache_argument(self.net.model, cache),
        ).logits
        # Each row's summed log-probability, gathered on the device in float64 and copied once per
        # batch (a copy per option would wait for the GPU once per option).
        total = first[owner, cont_ids[:, 0]].double()
        if width > 1:
            rest = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, cont_ids[:, 1:, None])[..., 0]
            total = total + torch.where(cont_mask[:, 1:].bool(), rest, 0.0).double().sum(-1)
        totals: list[list[float]] = [[] for _ in items]
        for (k, _), value in zip(rows, total.tolist()):
            totals[k].append(value)
        return totals


# ---------------------------------------------------------------------------------- exact match
class ExactMatchEvaluator(CachedEvaluator):
    """Accuracy of greedy generation on math word problems (GSM8K, SVAMP, ...).

    The prompt is the Alpaca prompt of each record; the predicted number is the one after
    "The answer is", else the last number of the generated text; it is correct when it lies within
    ``tolerance`` of the record's ``answer``.

    Args:
        net, records, limit, seed, batch_size, max_length, progress: see `CachedEvaluator`.
        max_new_tokens: generation limit per item.
        tolerance: absolute tolerance of the numeric comparison.
    """

    # The settings that change a score: a resume compares their hash (lorasearch.fingerprints).
    fingerprint_fields: tuple[str, ...] = ("max_length", "metric", "max_new_tokens", "tolerance")

    def __init__(
        self,
        net: SuperNetwork,
        records: Sequence[Record] | str | Path,
        *,
        max_new_tokens: int = 256,
        tolerance: float = 1e-3,
        **subset: Any,
    ) -> None:
        super().__init__(net, records, **subset)
        self.max_new_tokens = max_new_tokens
        self.tolerance = tolerance
        self.golds = [self._gold(r) for r in self.records]
        budget = max(self.max_length - max_new_tokens, 1)
        self.prompts = [self.tokenizer(format_prompt(r)).input_ids[-budget:] for r in self.records]

    @staticmethod
    def _gold(record: Record) -> float:
        try:
            return float(record.answer.replace(",", ""))
        except ValueError:
            raise DataError(
                f"{record.where}: answer {record.answer!r} is not a number; "
                "fix: use a math task or MultipleChoiceEvaluator"
            ) from None

    @torch.inference_mode()
    def generations(self, indices: Sequence[int] | None = None) -> list[str]:
        """The greedy completion of every item (or of ``indices``) under the active config (no cache,
        no activation)."""
        from transformers import GenerationConfig

        tok = self.tokenizer
        config = GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=_pad_id(tok),
            eos_token_id=tok.eos_token_id,
            bos_token_id=tok.bos_token_id,
        )
        indices = range(len(self.prompts)) if indices is None else indices
        texts: dict[int, str] = {}
        with self._bar(len(indices), f"generate ({len(indices)} problems)") as bar:
            for batch in self._batches(indices, self._cost):
                ids, mask = _left_pad([self.prompts[i] for i in batch], _pad_id(tok), self._device)
                out = self.net.model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
                new_tokens = out[:, ids.shape[1]:].tolist()  # copied from the device once per batch
                for row, i in enumerate(batch):
                    texts[i] = tok.decode(new_tokens[row], skip_special_tokens=True)
                bar.update(len(batch))
        return [texts[i] for i in indices]

    def _cost(self, i: int) -> int:
        return len(self.prompts[i]) + self.max_new_tokens

    def _run(self, batch: Sequence[int]) -> None:
        """A forward over the prompts followed by ``max_new_tokens`` tokens each: at least the memory of
        the last step of their generation, in one pass instead of ``max_new_tokens``."""
        pad = _pad_id(self.tokenizer)
        seqs = [self.prompts[i] + [pad] * self.max_new_tokens for i in batch]
        ids, mask = _left_pad(seqs, pad, self._device)
        self.net.model(input_ids=ids, attention_mask=mask, position_ids=_position_ids(mask), logits_to_keep=1)

    def _score(self, indices: range) -> tuple[list[Any], list[Any]]:
        predicted = [extract_number(t) for t in self.generations(indices)]
        golds = [self.golds[i] for i in indices]
        return [p is not None and abs(p - g) <= self.tolerance for p, g in zip(predicted, golds)], predicted


# ------------------------------------------------------------------------------------------ loss
class LossEvaluator(CachedEvaluator):
    """Negative mean token loss (or perplexity) on held-out data.

    Records are scored on their response only (the prompt masked, as in training); plain strings
    are scored on every token after the first.

    Args:
        net, limit, seed, batch_size, max_length, progress: see `CachedEvaluator`.
        records: records, strings, or the path of a task file.
        metric: ``"neg_loss"`` (score = -mean loss) or ``"neg_perplexity"`` (score = -exp(mean loss)).
    """

    # The settings that change a score: a resume compares their hash (lorasearch.fingerprints).
    fingerprint_fields: tuple[str, ...] = ("max_length", "metric")

    def __init__(
        self,
        net: SuperNetwork,
        records: Sequence[Record | str] | str | Path,
        *,
        metric: str = "neg_loss",
        **subset: Any,
    ) -> None:
        if metric not in ("neg_loss", "neg_perplexity"):
            raise EvalError(f"metric {metric!r}: use 'neg_loss' or 'neg_perplexity'")
        super().__init__(net, records, **subset)
        self.metric = metric
        self.examples = [self._encode(r) for r in self.records]

    def _encode(self, item: Record | str) -> tuple[list[int], list[int]]:
        if isinstance(item, Record):
            enc = encode_for_training(self.tokenizer, item, self.max_length)
            return enc["input_ids"], enc["labels"]
        ids = self.tokenizer(item).input_ids[: self.max_length]
        return ids, list(ids)

    itemwise = False  # the loss is token-weighted, not a mean over items

    def _cost(self, i: int) -> int:
        return len(self.examples[i][0])

    def _run(self, batch: Sequence[int]) -> None:
        self._batch_nll(batch)

    def _score(self, indices: range) -> tuple[list[Any], list[Any]]:
        """Per item: (summed negative log-likelihood, scored tokens)."""
        values: dict[int, tuple[float, int]] = {}
        with self._bar(len(indices), f"loss ({len(indices)} items)") as bar:
            for batch in self._batches(indices, self._cost):
                for i, value in zip(batch, self._batch_nll(batch)):
                    values[i] = value
                bar.update(len(batch))
        return [values[i] for i in indices], [None] * len(indices)

    def _batch_nll(self, batch: Sequence[int]) -> list[tuple[float, int]]:
        """Summed NLL and token count per sequence. The vocabulary projection runs on the scored
        positions only, so a batch of long texts never holds a logits tensor of every position."""
        device = self._device
        ids, mask = _left_pad([self.examples[i][0] for i in batch], _pad_id(self.tokenizer), device)
        width = ids.shape[1]
        targets = torch.full((len(batch), width - 1), IGNORE_INDEX, dtype=torch.long)  # position t predicts t + 1
        for row, i in enumerate(batch):
            labels = self.examples[i][1]
            targets[row, width - len(labels): width - 1] = torch.tensor(labels[1:], dtype=torch.long)
        targets = targets.to(device)
        keep = targets != IGNORE_INDEX
        hidden = self.net.model.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=_position_ids(mask)).last_hidden_state
        logits = self.net.model.get_output_embeddings()(hidden[:, :-1][keep])
        nll = -torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[keep][:, None])[:, 0]
        rows = keep.nonzero()[:, 0]
        sums = torch.zeros(len(batch), dtype=torch.float64, device=device).index_add_(0, rows, nll.double())
        counts = keep.sum(-1)
        totals, tokens = torch.stack([sums, counts.to(sums.dtype)]).tolist()  # copied from the device once per batch
        return [(total, int(n)) for total, n in zip(totals, tokens)]

    def _aggregate(self, values: Sequence[Any], predictions: Sequence[Any]) -> EvalResult:
        total, tokens = sum(v[0] for v in values), sum(v[1] for v in values)
        if tokens == 0:
            raise DataError("no tokens to score (every response was truncated away); fix: raise max_length")
        loss = total / tokens
        perplexity = math.exp(min(loss, 700.0))
        score = -loss if self.metric == "neg_loss" else -perplexity
        extra = {"loss": loss, "perplexity": perplexity, "tokens": tokens}
        items = tuple(-nll / n if n else float("nan") for nll, n in values)
        return EvalResult(score, len(values), None, 0.0, self.metric, (), extra, items)


# --------------------------------------------------------------------------------------- helpers
def _common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    n = 0
    for column in zip(*seqs):
        if len(set(column)) != 1:
            break
        n += 1
    return n


def _pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    return ids.to(device), mask.to(device)


def _position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each sequence's first real token (pads get 0)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _cache_argument(model: Any, cache: Any) -> dict[str, Any]:
    """The key-value cache as ``forward`` wants it: ``cache`` from transformers 5.2x on, else ``past_key_values``."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}


def _model_max_length(model: Any) -> int:
    config = getattr(model, "config", None)
    return int(getattr(config, "max_position_embeddings", None) or 2048)
