"""Task data: records in the LLM-Adapters format, loaders, prompt templates and multiple-choice parsing.

A task is a list of `Record` (``instruction``, ``input``, ``output``, ``answer``), the format of the
LLM-Adapters data sets that LoNAS, Shears and SQFT train and evaluate on. Loaders read:

* a JSON list of records (``*.json``, the LLM-Adapters files);
* JSON Lines with the same fields (``*.jsonl``);
* a Hugging Face ``datasets`` folder written by ``save_to_disk`` (needs ``pip install datasets``).

Multiple-choice instructions state their options inside the text and end with
``Answer format: answer1/answer2/...``; `parse_choices` recovers the question, the labels and the
option texts. `format_prompt` builds the Alpaca-style prompt the reference trains and evaluates with.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .errors import DataError
from .io import read_text
from .models.hub import hub_offline, looks_like_path, offline_problem, use_local_files_only

FIELDS = ("instruction", "input", "output", "answer")

PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)

# The option-text evaluator's context before each option, and the training target that matches it.
TEXT_TEMPLATE = "Question: {question}\nAnswer:"
# The label evaluator's start of the response before the option label (the reference's output format).
RESPONSE_PREFIX = "the correct answer is "
IGNORE_INDEX = -100  # label of the tokens a loss skips (prompt tokens), as transformers uses it

# Options that the instruction names but never spells out: how each reads as an answer to the question.
BOOLEAN_TEXTS = {"true": "yes", "false": "no", "yes": "yes", "no": "no"}

_FORMAT_RE = re.compile(r"answer\s+format\s*:\s*(?P<labels>[^\n]*?)\s*\.?\s*$", re.IGNORECASE)
_LABEL_RE = re.compile(r"^(?P<stem>[a-z]+)\s*(?P<num>\d+)$")
# The lead-ins LLM-Adapters puts before the question ("Please choose the correct answer to the question: ").
_LEAD_IN_RE = re.compile(r"^please (?:choose|answer|select)[^:\n]*?:\s*", re.IGNORECASE)



@dataclass(frozen=True)
class Record:
    """One task item. ``source`` and ``index`` say where it came from, for error messages."""

    instruction: str
    input: str
    output: str
    answer: str
    source: str | None = field(default=None, compare=False, repr=False)
    index: int | None = field(default=None, compare=False, repr=False)

    @property
    def where(self) -> str:
        """``file: record N`` for error messages."""
        src = self.source or "<records>"
        return f"{src}: record {self.index}" if self.index is not None else src

    def to_dict(self) -> dict[str, str]:
        """The four LLM-Adapters fields."""
        return {name: getattr(self, name) for name in FIELDS}


@dataclass(frozen=True)
class Choices:
    """A multiple-choice item parsed from its instruction: the question, labels, option texts, answer index."""

    question: str
    labels: tuple[str, ...]
    texts: tuple[str, ...]
    answer: int


# ------------------------------------------------------------------------------------------ loading
def load_records(
    path: str | Path,
    *,
    split: str | None = None,
    columns: Mapping[str, str] | None = None,
) -> list[Record]:
    """Read a task file: a JSON list, JSON Lines, or a Hugging Face ``datasets`` folder.

    Args:
        path: ``*.json`` (a list of records), ``*.jsonl``, or a folder written by ``save_to_disk``.
        split: the split to read when the folder holds a ``DatasetDict``.
        columns: rename columns to the record fields, ``{"instruction": "question", ...}``.
    """
    name = str(path)
    path = Path(path)
    if path.is_dir():
        rows = _read_hf_folder(path, split)
    elif not path.exists() and _HUB_NAME.match(name) and path.suffix not in TASK_SUFFIXES and not looks_like_path(name):
        rows = _read_hf_hub(name, split)
    elif not path.exists():
        raise DataError(f"{path}: task file not found; fix: check the path")
    elif not path.is_file():
        raise DataError(f"{path}: not a regular file; fix: pass a .json or .jsonl task file")
    elif path.suffix == ".jsonl":
        rows = _read_jsonl(path)
    else:
        rows = _read_json_list(path)
    return records_from_dicts(rows, source=str(path), columns=columns)


def records_from_dicts(
    rows: Iterable[Mapping[str, Any]], *, source: str = "<records>", columns: Mapping[str, str] | None = None
) -> list[Record]:
    """Build records from mappings with the four fields; a missing field names the record's index."""
    columns = dict(columns or {})
    records = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise DataError(f"{source}: record {i}: expected an object with fields {', '.join(FIELDS)}; "
                            "fix: make every record a JSON object with those fields")
        values = {}
        for name in FIELDS:
            key = columns.get(name, name)
            if key not in row or row[key] is None:
                raise DataError(
                    f"{source}: record {i}: missing field {key!r}; fix: give every record {', '.join(FIELDS)}"
                )
            value = row[key]
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = str(value)
            if not isinstance(value, str):
                raise DataError(f"{source}: record {i}: field {key!r} must be a string, got {type(value).__name__}; "
                                f"fix: quote the value of {key!r}")
            values[name] = value
        records.append(Record(**values, source=source, index=i))
    if not records:
        raise DataError(f"{source}: no records; fix: point at a non-empty task file")
    return records


def _read_json_list(path: Path) -> list[Any]:
    try:
        data = json.loads(read_text(path, DataError, "task file"))
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); fix: use a JSON list or a .jsonl file"
        ) from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply; fix: use a JSON list of flat records") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got a JSON {type(data).__name__}; "
                        "fix: wrap the records in [...] or use a .jsonl file")
    return data


def _read_jsonl(path: Path) -> list[Any]:
    rows = []
    for n, line in enumerate(read_text(path, DataError, "task file").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {n}: not valid JSON ({exc.msg}); fix: one JSON object per line") from None
    return rows


_HUB_NAME = re.compile(r"^[\w.-]+/[\w.-]+$")  # owner/dataset, with no such file here
TASK_SUFFIXES = (".json", ".jsonl")
DATASETS_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")  # what save_to_disk writes


def _read_hf_hub(name: str, split: str | None) -> list[Any]:
    """A Hugging Face hub dataset by name (needs `datasets` and a network connection)."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"{name}: not a file here; reading it from the Hugging Face hub needs `datasets`; fix: pip install datasets") from None
    local_only = use_local_files_only()
    try:
        with hub_offline(local_only):
            return list(datasets.load_dataset(name, split=split or "train"))
    except Exception as exc:  # datasets raises many types for a missing name or no network
        if local_only:
            raise DataError(f"{name}: {offline_problem('not a file here')}") from None
        raise DataError(f"{name}: not a file here, and the hub did not serve it ({type(exc).__name__}); fix: check the name or the path") from None


def _read_hf_folder(path: Path, split: str | None) -> list[Any]:
    if not any((path / marker).is_file() for marker in DATASETS_MARKERS):
        raise DataError(f"{path}: a folder, and no Hugging Face datasets folder (no {' or '.join(DATASETS_MARKERS)}); "
                        "fix: pass a .json or .jsonl task file, or a folder written by datasets' save_to_disk")
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"{path}: reading a Hugging Face dataset folder needs `datasets`; fix: pip install datasets"
        ) from None
    try:
        data = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for a damaged folder
        raise DataError(f"{path}: unreadable datasets folder ({type(exc).__name__}); fix: save it again with save_to_disk") from None
    if isinstance(data, datasets.DatasetDict):
        if split is None and len(data) == 1:
            split = next(iter(data))
        if split not in data:
            raise DataError(f"{path}: split {split!r} not found; fix: pass split= one of {', '.join(data)}")
        data = data[split]
    return list(data)


# ------------------------------------------------------------------------------------------ prompts
def format_prompt(record: Record) -> str:
    """The Alpaca-style prompt (up to ``### Response:\\n``), with the input section when input is non-empty."""
    if record.input.strip():
        return PROMPT_WITH_INPUT.format(instruction=record.instruction, input=record.input)
    return PROMPT.format(instruction=record.instruction)


def format_example(record: Record) -> str:
    """The prompt followed by the record's output: the full training text."""
    return format_prompt(record) + record.output


# ------------------------------------------------------------------------------------ multiple choice
def is_multiple_choice(record: Record) -> bool:
    """Whether the instruction declares its options with an ``Answer format:`` line."""
    return _FORMAT_RE.search(record.instruction) is not None


def parse_choices(record: Record) -> Choices:
    """Parse a multiple-choice instruction: question, option labels, option texts and the answer's index.

    Understands every LLM-Adapters shape: ``Answer1: ... Answer2: ...`` (ARC, OBQA, SIQA),
    ``Solution1: ...\\n\\nSolution2: ...`` (PIQA), ``Option1/2`` (WinoGrande), ``Ending1..4``
    (HellaSwag) and ``true/false`` (BoolQ, whose option texts are `BOOLEAN_TEXTS`).
    """
    match = _FORMAT_RE.search(record.instruction)
    if match is None:
        raise DataError(f"{record.where}: no 'Answer format: ...' line; fix: use a multiple-choice task file")
    labels = tuple(re.sub(r"\s+", "", lab).lower() for lab in match.group("labels").split("/"))
    if len(labels) < 2 or not all(labels) or len(set(labels)) != len(labels):
        raise DataError(
            f"{record.where}: 'Answer format: {match.group('labels')}' must list two or more distinct labels"
        )
    body = record.instruction[: match.start()]
    question, texts = _split_options(body, labels, record)
    answer = record.answer.strip().lower()
    if answer not in labels:
        raise DataError(
            f"{record.where}: answer {record.answer!r} is not one of the options {'/'.join(labels)}; "
            "fix: correct the record's answer or its 'Answer format' line"
        )
    return Choices(question, labels, texts, labels.index(answer))


def _split_options(body: str, labels: Sequence[str], record: Record) -> tuple[str, tuple[str, ...]]:
    """Split the instruction body at the option markers (``Answer1:``) into the question and option texts."""
    if all(lab in BOOLEAN_TEXTS for lab in labels):
        return _strip_lead_in(body), tuple(BOOLEAN_TEXTS[lab] for lab in labels)
    starts, ends, pos = [], [], 0
    for label in labels:
        found = _marker(label).search(body, pos)
        if found is None:
            raise DataError(
                f"{record.where}: option {label!r} is declared but its text is missing; "
                f"fix: add '{label.capitalize()}: ...'"
            )
        starts.append(found.start())
        ends.append(found.end())
        pos = found.end()
    texts = tuple(body[end:nxt].strip() for end, nxt in zip(ends, starts[1:] + [len(body)]))
    return _strip_lead_in(body[: starts[0]]), texts


def _marker(label: str) -> re.Pattern[str]:
    m = _LABEL_RE.match(label)
    spelled = rf"{m.group('stem')}\s*{m.group('num')}" if m else re.escape(label)
    return re.compile(rf"(?<![A-Za-z0-9]){spelled}\s*[:.)]", re.IGNORECASE)


def _strip_lead_in(text: str) -> str:
    return _LEAD_IN_RE.sub("", text.strip(), count=1).strip()


# -------------------------------------------------------------------------------------- synthetic task
def synthetic_task(n: int = 200, seed: int = 0) -> list[Record]:
    """``n`` small arithmetic and comparison questions with 4 options, in the LLM-Adapters format.

    Generated here (no download), deterministic per ``seed``: the quickstart's task when the user
    gives no task file.
    """
    rng = random.Random(seed)
    makers = (_sum_question, _difference_question, _largest_question, _smallest_question)
    records = []
    for i in range(n):
        question, correct, distractors = makers[i % len(makers)](rng)
        options = [correct, *distractors]
        rng.shuffle(options)
        k = options.index(correct) + 1
        shown = " ".join(f"Answer{j}: {opt}" for j, opt in enumerate(options, start=1))
        instruction = (
            f"Please choose the correct answer to the question: {question}\n\n{shown}\n\n"
            "Answer format: answer1/answer2/answer3/answer4"
        )
        records.append(
            Record(instruction, "", f"the correct answer is answer{k}", f"answer{k}", f"synthetic(seed={seed})", i)
        )
    return records


def _near_misses(rng: random.Random, value: int) -> list[int]:
    offsets = rng.sample([-10, -3, -2, -1, 1, 2, 3, 10], 3)
    return [value + d for d in offsets]


def _sum_question(rng: random.Random) -> tuple[str, int, list[int]]:
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    return f"What is {a} + {b}?", a + b, _near_misses(rng, a + b)


def _difference_question(rng: random.Random) -> tuple[str, int, list[int]]:
    a, b = sorted((rng.randint(2, 90), rng.randint(2, 90)), reverse=True)
    return f"What is {a} - {b}?", a - b, _near_misses(rng, a - b)


def _largest_question(rng: random.Random) -> tuple[str, int, list[int]]:
    values = rng.sample(range(1, 100), 4)
    return "Which number is the largest?", max(values), sorted(set(values) - {max(values)})


def _smallest_question(rng: random.Random) -> tuple[str, int, list[int]]:
    values = rng.sample(range(1, 100), 4)
    return "Which number is the smallest?", min(values), sorted(set(values) - {min(values)})


# ------------------------------------------------------------------------------------------ subsets
def subset(records: Sequence[Record], n: int | None, seed: int = 0) -> list[Record]:
    """A fixed seeded subset of ``n`` records in file order (all of them when ``n`` is None or too large).

    Subsets of one seed are nested: the 100-item subset lies inside the 300-item one.
    """
    if not records:
        raise DataError("no records to take a subset of; fix: point at a non-empty task file")
    if n is None or n >= len(records):
        return list(records)
    if n <= 0:
        raise DataError(f"subset size {n} (--limit, --max-records): the subset would be empty; fix: use 1 or more")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    return [records[i] for i in sorted(order[:n])]


def train_val_split(
    records: Sequence[Record], val_size: int | float, seed: int = 0
) -> tuple[list[Record], list[Record]]:
    """Split into (train, validation); ``val_size`` is a count or a fraction in (0, 1). Seeded."""
    total = len(records)
    count = round(val_size * total) if isinstance(val_size, float) and 0 < val_size < 1 else int(val_size)
    if not 0 < count < total:
        raise DataError(f"val_size {val_size}: must leave both parts non-empty for {total} records; "
                        f"fix: use a share in (0, 1) or a count from 1 to {total - 1}")
    order = list(range(total))
    random.Random(seed).shuffle(order)
    val = set(order[:count])
    return [r for i, r in enumerate(records) if i not in val], [records[i] for i in sorted(val)]


# ------------------------------------------------------------------------------------- tokenisation
def encode_for_training(tokenizer: Any, record: Record, max_length: int) -> dict[str, list[int]]:
    """Token ids of prompt + output (+ EOS) and labels with the prompt masked to -100.

    The prompt and the response are tokenised separately, so the mask boundary is exact; the
    result is truncated to ``max_length`` tokens from the right.
    """
    prompt_ids = tokenizer(format_prompt(record)).input_ids
    response_ids = tokenizer(record.output, add_special_tokens=False).input_ids
    if tokenizer.eos_token_id is not None:
        response_ids = response_ids + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + response_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_length]
    return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}
