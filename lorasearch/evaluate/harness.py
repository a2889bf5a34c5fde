"""lm-evaluation-harness as an evaluator (``pip install 'lorasearch[lmeval]'``).

`LMEvalEvaluator` scores a config with lm-eval's own tasks, prompts and metrics, under the same
protocol as the built-in evaluators (`lorasearch.evaluate.CachedEvaluator`): a seeded subset of
each task's documents (the same ``limit`` items for every config of a run, drawn as
`lorasearch.data.subset` draws records), per-item values read from lm-eval's logged samples, a
per-config item cache, and a score that is the mean over the tasks with each task's score kept
in ``EvalResult.extra["per_task"]`` (a search records them as columns ``accuracy_TASK``).

Tasks are lm-eval task names (``arc_easy``), paths of task YAMLs (their ``task:`` name is what
the results are filed under), or names found in an ``include`` folder of task YAMLs. A task
whose dataset lives on the Hugging Face Hub needs network access once (or a filled cache); a
task YAML with ``dataset_path: json`` and ``dataset_kwargs: {data_files: ...}`` runs offline.
`write_task` writes such a task from a multiple-choice task file.

How lm-eval's multiple-choice metrics relate to `MultipleChoiceEvaluator` in text mode (both
score each option's log-likelihood after the context, the option as a continuation):

* ``acc``: the option with the largest summed log-likelihood, our ``normalization="none"``;
* ``acc_norm``: the largest log-likelihood per character of the option string, our
  ``normalization="char"``. lm-eval counts the characters of the option without the
  ``target_delimiter`` (a space by default), we count them with the space, so the two coincide
  on tasks whose options carry their leading space and whose delimiter is empty (as `write_task`
  writes them) and differ by one character per option otherwise;
* ``acc_bytes`` divides by UTF-8 bytes; ours has no such mode (``token`` divides by tokens).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import logging
import math
import os
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import yaml

from ..data import TEXT_TEMPLATE, DataError, Record, parse_choices, subset
from ..io import atomic_write_text
from ..models.hub import hub_offline, use_local_files_only
from .evaluators import CachedEvaluator, EvalError, EvalResult

if TYPE_CHECKING:
    from ..network.supernet import SuperNetwork

LM_EVAL_PREFIX = "lm-eval:"
INSTALL_HINT = "fix: pip install 'lorasearch[lmeval]' (lm-eval 0.4.13)"
_YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class TaskItem:
    """One item of the subset: a document of one lm-eval task."""

    task: str
    doc: int


def parse_lm_eval(evaluator: str) -> list[str] | None:
    """The task specs of ``lm-eval:TASK[,TASK...]`` (None when ``evaluator`` is another kind)."""
    if not evaluator.startswith(LM_EVAL_PREFIX):
        return None
    specs = [s.strip() for s in evaluator[len(LM_EVAL_PREFIX):].split(",") if s.strip()]
    if not specs:
        raise EvalError("--evaluator lm-eval: names no task; fix: write lm-eval:TASK or lm-eval:TASK1,TASK2 "
                        "(task names or task YAML paths)")
    return specs


class LMEvalEvaluator(CachedEvaluator):
    """Scores configs with lm-evaluation-harness tasks (needs ``lm_eval``; see the module docs).

    Args:
        net: the `SuperNetwork` (with its tokenizer); lm-eval's ``HFLM`` wraps its model as it stands.
        tasks: one task spec or several: lm-eval task names, task YAML paths, or names in ``include``.
        metric: lm-eval's metric (``acc``, ``acc_norm``, ``exact_match``, ...), optionally with
            its filter after a comma (``exact_match,strict-match``; default: ``none``, else the
            task's first filter). A lower-is-better metric is negated (``neg_perplexity``).
        limit: documents per task in the seeded subset (None: all of them).
        seed: the subset's seed.
        num_fewshot: few-shot examples per item (None: the task's own setting, else 0). With
            few-shot examples every call scores the whole subset, since lm-eval draws an item's
            examples from one random stream over the documents it evaluates.
        include: a folder of task YAMLs added to lm-eval's task index (its ``include_path``).
        batch_size: lm-eval's batch size.
        progress: show lm-eval's progress bars and info logs (default: when stderr is a terminal).
    """

    # The settings that change a score: a resume compares their hash (lorasearch.fingerprints).
    fingerprint_fields: tuple[str, ...] = ("max_length", "metric", "num_fewshot")

    itemwise = False

    def __init__(
        self,
        net: SuperNetwork,
        tasks: str | Sequence[str],
        *,
        metric: str = "acc",
        limit: int | None = None,
        seed: int = 0,
        num_fewshot: int | None = None,
        include: str | Path | None = None,
        batch_size: int | None = 8,
        progress: bool | None = None,
    ) -> None:
        _import_lm_eval()
        specs = [tasks] if isinstance(tasks, str) else list(tasks)
        if not specs:
            raise EvalError("LMEvalEvaluator: no task; fix: name an lm-eval task or a task YAML")
        if limit is not None and limit < 1:
            raise DataError(f"limit {limit}: the subset would be empty; fix: use a limit of 1 or more")
        if num_fewshot is not None and num_fewshot < 0:
            raise EvalError(f"num_fewshot {num_fewshot}: must be 0 or more; fix: e.g. 0")
        self.metric_name, _, self.filter = metric.partition(",")
        self.task_manager, self.tasks = _load_tasks(specs, include)
        self.num_fewshot = num_fewshot
        for task in self.tasks.values():
            _set_fewshot(task, num_fewshot)
        self.filters = {name: _pick_filter(name, task, self.filter) for name, task in self.tasks.items()}
        self.higher_is_better = {name: _check_metric(name, task, self.metric_name) for name, task in self.tasks.items()}
        if len(set(self.higher_is_better.values())) > 1:
            raise EvalError(f"metric {self.metric_name!r}: higher is better on some tasks and worse on others; "
                            "fix: evaluate those tasks separately")
        subsets = {name: subset(list(range(len(task.eval_docs))), limit, seed) for name, task in self.tasks.items()}
        super().__init__(net, _interleave(subsets), limit=None, seed=seed, batch_size=batch_size, progress=progress)
        self.lm_batch_size = batch_size or 8
        higher = next(iter(self.higher_is_better.values()))
        self.metric = metric if higher else f"neg_{metric}"
        self.limit = limit
        self.chunked = not any(task.get_config("num_fewshot") for task in self.tasks.values())
        mean = _import_lm_eval().api.metrics.mean
        self.itemwise = higher and len(self.tasks) == 1 and all(
            task.aggregation()[self.metric_name] is mean for task in self.tasks.values())
        self._lm: Any = None

    # ------------------------------------------------------------------ the protocol
    @property
    def task_names(self) -> list[str]:
        """The tasks' names, as lm-eval files their results (a YAML's ``task:`` name)."""
        return list(self.tasks)

    def score_items(self, config: Mapping[str, Any], stop: int | None = None) -> EvalResult:
        """``config``'s result on the first ``stop`` items (see `CachedEvaluator.score_items`).

        With few-shot examples the whole subset is scored first, so an item's examples never
        depend on how far an earlier call went.
        """
        if not self.chunked and stop is not None and stop < self.n_items:
            known = self.net.space.canonical(config) in self.cache
            whole = super().score_items(config)
            part = super().score_items(config, stop)
            return part if known else replace(part, seconds=whole.seconds, scored=whole.scored)
        return super().score_items(config, stop)

    def largest_batch(self) -> None:
        """None: lm-eval batches its own requests, so there is no batch of ours to try first."""
        return None

    def _score(self, indices: range) -> tuple[list[Any], list[Any]]:
        run = indices if self.chunked else range(self.n_items)
        samples: dict[str, list[int]] = {}
        for i in run:
            samples.setdefault(self.records[i].task, []).append(self.records[i].doc)
        found = self._evaluate({task: sorted(docs) for task, docs in samples.items()})
        picked = [found[self.records[i]] for i in indices]
        return [value for value, _ in picked], [prediction for _, prediction in picked]

    def _aggregate(self, values: Sequence[Any], predictions: Sequence[Any]) -> EvalResult:
        by_task: dict[str, list[Any]] = {}
        for item, value in zip(self.records, values):
            by_task.setdefault(item.task, []).append(value)
        sign = 1.0 if next(iter(self.higher_is_better.values())) else -1.0
        per_task, errors = {}, []
        for name, task_values in by_task.items():
            aggregate = self.tasks[name].aggregation()[self.metric_name]
            per_task[name] = sign * float(aggregate(task_values))
            errors.append(_mean_stderr(task_values) if aggregate is _import_lm_eval().api.metrics.mean else None)
        score = sum(per_task.values()) / len(per_task)
        stderr = math.sqrt(sum(e * e for e in errors)) / len(errors) if None not in errors else None
        # lm-eval's per-item values as they are (restore_items takes them back); NaN where not a number
        items = tuple(float(v) if isinstance(v, (int, float)) else float("nan") for v in values)
        extra = {"per_task": per_task, "per_task_n": {name: len(v) for name, v in by_task.items()}}
        return EvalResult(score, len(values), stderr, 0.0, self.metric, tuple(predictions), extra, items)

    # ------------------------------------------------------------------ lm-eval
    def _evaluate(self, samples: Mapping[str, list[int]]) -> dict[TaskItem, tuple[Any, Any]]:
        """Per item of ``samples``: (its metric value, its prediction) under the active config.

        Runs lm-eval's ``evaluate`` with the seeds ``simple_evaluate`` would set (not
        ``simple_evaluate`` itself, which spends a second per call collecting environment details).
        """
        from lm_eval.defaults import DEFAULT_OTHER_SEED, DEFAULT_RANDOM_SEED
        from lm_eval.evaluator import evaluate

        tasks = [self.tasks[name] for name in samples]
        with _lm_eval_logs(self.progress), _global_generators_kept():
            random.seed(DEFAULT_RANDOM_SEED)
            np.random.seed(DEFAULT_OTHER_SEED)
            torch.manual_seed(DEFAULT_OTHER_SEED)
            for task in tasks:
                task.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)
            out = evaluate(lm=self._hflm(), task_dict=self.task_manager.load(tasks), samples=dict(samples),
                           bootstrap_iters=0, log_samples=True)
        found: dict[TaskItem, tuple[Any, Any]] = {}
        for name in samples:
            for entry in out["samples"][name]:
                if entry["filter"] == self.filters[name]:
                    prediction = _prediction(self.tasks[name], entry, self.metric_name)
                    found[TaskItem(name, int(entry["doc_id"]))] = (entry[self.metric_name], prediction)
        return found

    def _hflm(self) -> Any:
        """lm-eval's wrapper of the network's model, built at the first evaluation (after any move
        to a GPU) and kept: it holds no state between calls."""
        if self._lm is None:
            from lm_eval.models.huggingface import HFLM

            with _lm_eval_logs(self.progress):
                self._lm = HFLM(pretrained=self.net.model, tokenizer=self.tokenizer, batch_size=self.lm_batch_size,
                                max_length=self.max_length)
        return self._lm


# ---------------------------------------------------------------------------- task loading
def _import_lm_eval() -> Any:
    try:
        import lm_eval
        import lm_eval.api.metrics  # noqa: F401
    except ImportError:
        raise EvalError(f"the lm-eval evaluator needs lm-evaluation-harness; {INSTALL_HINT}") from None
    return lm_eval


def _is_yaml_path(spec: str) -> bool:
    return spec.endswith(_YAML_SUFFIXES) or Path(spec).is_file()


def _load_tasks(specs: Sequence[str], include: str | Path | None) -> tuple[Any, dict[str, Any]]:
    """lm-eval's task manager and the leaf tasks of ``specs`` by name.

    lm-eval's own index of some 15,000 tasks takes seconds to build, so it is built only when a
    spec is neither a YAML path nor a name in ``include``.
    """
    from lm_eval.tasks import TaskManager

    if include is not None and not Path(include).is_dir():
        raise EvalError(f"--lm-eval-include {include}: not a folder; fix: name a folder of lm-eval task YAMLs")
    for spec in specs:
        if spec.endswith(_YAML_SUFFIXES) and not Path(spec).is_file():
            raise EvalError(f"lm-eval task {spec}: no such file; fix: give the path of a task YAML or a task name")
    with _lm_eval_logs(False), _global_generators_kept(), _datasets_offline(use_local_files_only()):
        manager = TaskManager(include_path=include, include_defaults=False)
        needs_index = any(not _is_yaml_path(s) and s not in manager.all_tasks for s in specs)
        if needs_index:
            manager = _indexed_manager(str(include) if include is not None else None)
        try:
            return manager, _load_each(manager, specs, light=not needs_index)
        except _NeedsIndex:  # a YAML that names registered tasks (a group)
            manager = _indexed_manager(str(include) if include is not None else None)
            return manager, _load_each(manager, specs, light=False)


@functools.lru_cache(maxsize=4)
def _indexed_manager(include: str | None) -> Any:
    """A task manager over lm-eval's own tasks (and ``include``), built once per process."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include)


class _NeedsIndex(Exception):
    pass


def _load_each(manager: Any, specs: Sequence[str], *, light: bool) -> dict[str, Any]:
    tasks: dict[str, Any] = {}
    for spec in specs:
        for name, task in _load_one(manager, spec, light=light).items():
            if name in tasks:
                raise EvalError(f"lm-eval task {name}: named twice (through {spec}); fix: name each task once")
            tasks[name] = task
    return tasks


def _load_one(manager: Any, spec: str, *, light: bool) -> dict[str, Any]:
    try:
        return dict(manager.load([spec])["tasks"])
    except KeyError as exc:
        if light:  # without lm-eval's own index: a YAML naming registered tasks needs it
            raise _NeedsIndex from exc
        if _is_yaml_path(spec):
            raise EvalError(f"lm-eval task {spec}: {_first_line(exc)}; fix: check the names the YAML refers to") from None
        close = difflib.get_close_matches(spec, manager.all_tasks, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise EvalError(f"lm-eval task {spec!r}: not a registered task, group or tag; {hint}"
                        "fix: run lm-eval --tasks list, give a task YAML path, or add its folder with --lm-eval-include") from None
    except ConnectionError as exc:
        raise EvalError(f"lm-eval task {spec}: its dataset is not available offline ({_first_line(exc)}); fix: run it "
                        "once with network access to fill the Hugging Face cache, or point a task YAML at local files "
                        "(dataset_path: json, dataset_kwargs: {data_files: ...})") from None
    except FileNotFoundError as exc:
        raise EvalError(f"lm-eval task {spec}: a data file or dataset is missing ({_first_line(exc)}); fix: check "
                        "dataset_path and dataset_kwargs.data_files (relative paths count from the working directory)"
                        ) from None
    except EvalError:
        raise
    except Exception as exc:  # lm-eval's and datasets' own errors: a bad YAML, a dataset that cannot be built
        if _from_the_network(exc):
            raise EvalError(f"lm-eval task {spec}: its dataset could not be fetched from the Hugging Face Hub "
                            f"({type(exc).__name__}: {_first_line(exc)}); fix: check the network and the dataset "
                            "name, or point a task YAML at local files (dataset_path: json)") from None
        raise EvalError(f"lm-eval task {spec}: cannot be loaded ({type(exc).__name__}: {_first_line(exc)}); "
                        "fix: check the task YAML with lm-eval's own command line") from None


def _from_the_network(exc: BaseException) -> bool:
    """Whether ``exc`` comes from an HTTP client or the Hub (a download that failed)."""
    return isinstance(exc, TimeoutError) or type(exc).__module__.split(".")[0] in {
        "httpx", "httpx2", "httpcore", "httpcore2", "requests", "urllib3", "aiohttp", "huggingface_hub"}


def _first_line(exc: BaseException) -> str:
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return (text.strip().splitlines() or [type(exc).__name__])[0]


def _set_fewshot(task: Any, num_fewshot: int | None) -> None:
    """lm-eval's rule: ``num_fewshot`` replaces the task's own count unless the task fixes it at 0;
    a task without one gets 0."""
    own = task.get_config("num_fewshot")
    if num_fewshot is not None and own != 0:
        task.set_config(key="num_fewshot", value=num_fewshot)
    elif own is None:
        task.set_config(key="num_fewshot", value=0)


def _check_metric(name: str, task: Any, metric: str) -> bool:
    """Whether higher is better for ``metric`` on ``task``; a one-line error if it has no such metric."""
    aggregations = task.aggregation()
    if metric not in aggregations:
        raise EvalError(f"lm-eval task {name}: no metric {metric!r}; fix: --metric one of {', '.join(sorted(aggregations))}")
    return bool(task.higher_is_better().get(metric, True))


def _pick_filter(name: str, task: Any, wanted: str) -> str:
    """The filter whose results count: the asked one, else ``none``, else the task's first."""
    names = [f.name for f in getattr(task, "_filters", [])] or ["none"]
    if wanted:
        if wanted not in names:
            raise EvalError(f"lm-eval task {name}: no filter {wanted!r}; fix: --metric METRIC,FILTER with FILTER one of "
                            f"{', '.join(names)}")
        return wanted
    return "none" if "none" in names else names[0]


def _interleave(subsets: Mapping[str, Sequence[int]]) -> list[TaskItem]:
    """The tasks' subsets taken in turn (task A's first document, task B's first, ...), so that a
    prefix of the items covers every task about evenly."""
    items, longest = [], max(len(docs) for docs in subsets.values())
    for k in range(longest):
        items += [TaskItem(name, docs[k]) for name, docs in subsets.items() if k < len(docs)]
    return items


def _mean_stderr(values: Sequence[Any]) -> float | None:
    """Standard error of a mean over items (the binomial one for 0/1 values)."""
    if not values or not all(isinstance(v, (int, float)) for v in values):
        return None
    n = len(values)
    mean = sum(values) / n
    return math.sqrt(max(sum((v - mean) ** 2 for v in values) / n, 0.0) / n)


def _prediction(task: Any, entry: Mapping[str, Any], metric: str) -> Any:
    """The option index a multiple-choice item picked under ``metric``'s rule; else the filtered
    response (a generated text)."""
    responses = entry["filtered_resps"]
    if task.OUTPUT_TYPE != "multiple_choice":
        return responses[0] if responses else None
    lls = [float(r[0]) for r in responses]
    choices = task.doc_to_choice(entry["doc"])
    if metric == "acc_norm":
        lls = [ll / len(c) for ll, c in zip(lls, choices)]
    elif metric == "acc_bytes":
        lls = [ll / len(c.encode("utf-8")) for ll, c in zip(lls, choices)]
    return max(range(len(lls)), key=lls.__getitem__)


@contextlib.contextmanager
def _global_generators_kept() -> Iterator[None]:
    """Python's, numpy's and torch's global generators as they were before the block.

    An evaluation seeds them as lm-eval does (which makes its own sampling repeatable), and lm-eval
    draws from Python's for task ids; left changed, a seeded search strategy that draws from them
    would propose other configs after a resume, which skips the logged evaluations.
    """
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def _datasets_offline(enabled: bool) -> Iterator[None]:
    """With no hub to reach (`lorasearch.models.hub.use_local_files_only`), ``datasets`` and
    ``huggingface_hub`` read the local cache only: a task whose data is not there fails at once, in one
    line, instead of after a minute of retries and a resolver error per retry."""
    if not enabled:
        yield
        return
    import datasets.config

    before = (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    try:
        with hub_offline():
            yield
    finally:
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE = before


@contextlib.contextmanager
def _lm_eval_logs(show: bool) -> Iterator[None]:
    """lm-eval's info logs and warnings (about every call) only when asked for or debugging."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    if not show and not os.environ.get("LORASEARCH_DEBUG"):
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# ---------------------------------------------------------------------------- offline tasks
def write_task(
    records: Sequence[Record],
    folder: str | Path,
    name: str,
    *,
    template: str = TEXT_TEMPLATE,
    metrics: Sequence[str] = ("acc", "acc_norm"),
) -> Path:
    """Write a multiple-choice task file as an offline lm-eval task: ``NAME.jsonl`` and ``NAME.yaml``.

    Each record becomes a document with the prompt ``template`` (our text mode's), its option
    texts with a leading space and an empty target delimiter, so lm-eval's continuations and
    ``acc_norm``'s character counts are exactly `MultipleChoiceEvaluator`'s in text mode. The
    YAML names the data file by its absolute path. Returns the YAML's path.
    """
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for record in records:
        choices = parse_choices(record)
        rows.append({"prompt": template.format(question=choices.question),
                     "choices": [" " + text for text in choices.texts], "answer": choices.answer})
    data = folder / f"{name}.jsonl"
    atomic_write_text(data, "".join(json.dumps(row) + "\n" for row in rows))
    config = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "prompt",
        "doc_to_choice": "choices",
        "doc_to_target": "answer",
        "target_delimiter": "",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in metrics],
    }
    path = folder / f"{name}.yaml"
    atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))
    return path


__all__ = ["LM_EVAL_PREFIX", "LMEvalEvaluator", "TaskItem", "parse_lm_eval", "write_task"]
