"""Training targets: how a task record becomes a tokenised training example.

* ``label``: the reference's target, the Alpaca prompt followed by the record's output
  ("the correct answer is answer2");
* ``text``: for multiple-choice records, ``"Question: {question}\\nAnswer:"`` followed by the
  correct option's text, the same context the option-text evaluator scores; other records fall
  back to ``label``.

On a short CPU budget a small model learns nothing beyond the label prior from the ``label``
target, while the ``text`` target moves the option-text accuracy (see benchmarks/RESULTS.md).
"""

from __future__ import annotations

from typing import Any, Sequence

from ..data import IGNORE_INDEX, TEXT_TEMPLATE, Record, encode_for_training, is_multiple_choice, parse_choices
from ..errors import LoraSearchError

TARGETS = ("label", "text")


def encode_option_text(tokenizer: Any, record: Record, max_length: int) -> dict[str, list[int]]:
    """Prompt ``Question: ...\\nAnswer:`` and response `` <correct option text>`` (+ EOS), prompt masked."""
    choices = parse_choices(record)
    prompt_ids = tokenizer(TEXT_TEMPLATE.format(question=choices.question)).input_ids
    response_ids = tokenizer(" " + choices.texts[choices.answer], add_special_tokens=False).input_ids
    if tokenizer.eos_token_id is not None:
        response_ids = response_ids + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + response_ids)[-max_length:]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[-max_length:]
    return {"input_ids": input_ids, "labels": labels}


def encode_records(tokenizer: Any, records: Sequence[Record], target: str, max_length: int) -> list[dict[str, list[int]]]:
    """Tokenise records for training with the chosen target; drop examples left without response tokens."""
    if target not in TARGETS:
        raise LoraSearchError(f"--target: unknown {target!r}; fix: use label or text")
    examples = []
    for record in records:
        if target == "text" and is_multiple_choice(record):
            example = encode_option_text(tokenizer, record, max_length)
        else:
            example = encode_for_training(tokenizer, record, max_length)
        if any(label != IGNORE_INDEX for label in example["labels"]):
            examples.append(example)
    return examples
