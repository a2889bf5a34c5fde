"""Task data: loaders and their errors, prompts, multiple-choice parsing, subsets, label masking."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lorasearch.data import (
    BOOLEAN_TEXTS,
    DataError,
    Record,
    encode_for_training,
    format_prompt,
    is_multiple_choice,
    load_records,
    parse_choices,
    subset,
    synthetic_task,
    train_val_split,
)
from lorasearch.models.loading import byte_tokenizer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "llm-adapters"
MC_TASKS = ["ARC-Easy", "boolq", "piqa", "social_i_qa", "openbookqa"]


def record(instruction: str, answer: str, index: int | None = 0) -> Record:
    return Record(instruction, "", f"the correct answer is {answer}", answer, "task.json", index)


# ------------------------------------------------------------------------------ multiple-choice shapes
SHAPES = {
    "arc": (
        "Please choose the correct answer to the question: Which gas do plants take in?\n\n"
        "Answer1: oxygen Answer2: carbon dioxide Answer3: helium Answer4: neon\n\n"
        "Answer format: answer1/answer2/answer3/answer4",
        "answer2",
        "Which gas do plants take in?",
        ("oxygen", "carbon dioxide", "helium", "neon"),
    ),
    "arc-5": (
        "Please choose the correct answer to the question: Pick one.\n\n"
        "Answer1: a Answer2: b Answer3: c Answer4: d Answer5: e\n\n"
        "Answer format: answer1/answer2/answer3/answer4/answer5",
        "answer5",
        "Pick one.",
        ("a", "b", "c", "d", "e"),
    ),
    "siqa": (
        "Please choose the correct answer to the question: "
        "Tracy stayed out. What does Tracy need to do before this?\n\n"
        "Answer1: make a new plan Answer2: Go home Answer3: Find somewhere to go\n\n"
        "Answer format: answer1/answer2/answer3",
        "answer3",
        "Tracy stayed out. What does Tracy need to do before this?",
        ("make a new plan", "Go home", "Find somewhere to go"),
    ),
    "piqa": (
        "Please choose the correct solution to the question: How do I open a jar?\n\n"
        "Solution1: Twist the lid, holding the jar: firmly.\n\nSolution2: Hit it with a hammer.\n\n"
        "Answer format: solution1/solution2",
        "solution1",
        "How do I open a jar?",
        ("Twist the lid, holding the jar: firmly.", "Hit it with a hammer."),
    ),
    "hellaswag": (
        "Please choose the correct ending to complete the given sentence: "
        "Playing drums: People stand behind drums. A man\n\n"
        "Ending1: plays a bag pipe. Ending2: walks away. Ending3: begins playing a drum set. Ending4: sleeps.\n\n"
        "Answer format: ending1/ending2/ending3/ending4",
        "ending3",
        "Playing drums: People stand behind drums. A man",
        ("plays a bag pipe.", "walks away.", "begins playing a drum set.", "sleeps."),
    ),
    "winogrande": (
        "Please choose the correct answer to fill in the blank to complete the given sentence: "
        "Sarah was a much better surgeon than Maria so _ always got the harder cases.\n\n"
        "Option1: Sarah Option2: Maria\n\nAnswer format: option1/option2",
        "option1",
        "Sarah was a much better surgeon than Maria so _ always got the harder cases.",
        ("Sarah", "Maria"),
    ),
    "boolq": (
        "Please answer the following question with true or false, question: is the sky blue?\n\n"
        "Answer format: true/false",
        "true",
        "is the sky blue?",
        (BOOLEAN_TEXTS["true"], BOOLEAN_TEXTS["false"]),
    ),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_parse_every_llm_adapters_shape(shape):
    instruction, answer, question, texts = SHAPES[shape]
    rec = record(instruction, answer)
    assert is_multiple_choice(rec)
    choices = parse_choices(rec)
    assert choices.question == question
    assert choices.texts == texts
    assert len(choices.labels) == len(texts)
    assert choices.labels[choices.answer] == answer


def test_parse_accepts_capitalised_answer_and_spaced_labels():
    rec = record("Q?\n\nSolution1: a\n\nSolution2: b\n\nAnswer format: solution 1/solution2", "Solution2")
    choices = parse_choices(rec)
    assert choices.labels == ("solution1", "solution2") and choices.answer == 1


def test_answer_outside_the_options_names_file_and_index():
    with pytest.raises(DataError, match=r"task\.json: record 7: answer 'answer5' is not one of the options"):
        parse_choices(record(SHAPES["arc"][0], "answer5", index=7))


def test_declared_option_without_text_is_an_error():
    rec = record("Q?\n\nAnswer1: a Answer2: b\n\nAnswer format: answer1/answer2/answer3", "answer1", index=3)
    with pytest.raises(DataError, match=r"record 3: option 'answer3' is declared but its text is missing"):
        parse_choices(rec)


def test_instruction_without_answer_format_is_an_error():
    rec = record("What is 2 + 2?", "4")
    assert not is_multiple_choice(rec)
    with pytest.raises(DataError, match="no 'Answer format"):
        parse_choices(rec)


@pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} not present")
@pytest.mark.parametrize("task", MC_TASKS)
def test_every_real_test_record_parses(task):
    records = load_records(DATA / task / "test.json")
    for rec in records:
        choices = parse_choices(rec)
        assert choices.question and all(choices.texts)


# ----------------------------------------------------------------------------------------- loaders
ROWS = [
    {"instruction": "What is 1 + 1?", "input": "", "output": "The answer is 2.", "answer": "2.0"},
    {"instruction": "Add these", "input": "3 and 4", "output": "The answer is 7.", "answer": 7},
]


def test_load_json_list_and_jsonl_agree(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps(ROWS))
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    a, b = load_records(tmp_path / "t.json"), load_records(tmp_path / "t.jsonl")
    assert a == b and len(a) == 2
    assert a[1].answer == "7" and a[1].index == 1 and a[1].source.endswith("t.json")


def test_missing_field_names_file_and_record(tmp_path):
    rows = [ROWS[0], {k: v for k, v in ROWS[1].items() if k != "output"}]
    (tmp_path / "t.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"t\.json: record 1: missing field 'output'"):
        load_records(tmp_path / "t.json")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("empty.json", "[]", "no records"),
        ("empty.jsonl", "\n", "no records"),
        ("dict.json", '{"instruction": "x"}', "expected a JSON list"),
        ("bad.json", "[{", "not valid JSON"),
        ("bad.jsonl", json.dumps(ROWS[0]) + "\n{oops\n", "line 2: not valid JSON"),
    ],
)
def test_bad_files(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=message):
        load_records(tmp_path / name)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="task file not found"):
        load_records(tmp_path / "nope.json")


def test_column_mapping(tmp_path):
    rows = [{"q": "Q?", "input": "", "a": "A", "answer": "A"}]
    (tmp_path / "t.jsonl").write_text(json.dumps(rows[0]))
    (rec,) = load_records(tmp_path / "t.jsonl", columns={"instruction": "q", "output": "a"})
    assert rec.instruction == "Q?" and rec.output == "A"


def test_hf_folder_without_datasets_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    (tmp_path / "dataset_dict.json").write_text('{"splits": ["train"]}')  # what save_to_disk writes
    with pytest.raises(DataError, match="pip install datasets"):
        load_records(tmp_path)


def test_a_plain_folder_is_no_datasets_folder(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=r"a folder, and no Hugging Face datasets folder .*fix: pass a \.json"):
        load_records(tmp_path)


def test_hf_folder_round_trip(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict(
        {"validation": datasets.Dataset.from_list([dict(r, answer=str(r["answer"])) for r in ROWS])}
    ).save_to_disk(str(tmp_path / "ds"))
    assert [r.answer for r in load_records(tmp_path / "ds", split="validation")] == ["2.0", "7"]


# ----------------------------------------------------------------------------------------- prompts
def test_prompt_templates():
    plain = format_prompt(Record("Do it.", "", "", ""))
    assert plain.startswith("Below is an instruction that describes a task. Write a response")
    assert plain.endswith("### Instruction:\nDo it.\n\n### Response:\n") and "### Input" not in plain
    with_input = format_prompt(Record("Do it.", "on this", "", ""))
    assert "### Instruction:\nDo it.\n\n### Input:\non this\n\n### Response:\n" in with_input


# ---------------------------------------------------------------------------------- synthetic task
def test_synthetic_task_is_deterministic_and_well_formed():
    a, b = synthetic_task(40, seed=3), synthetic_task(40, seed=3)
    assert a == b and a != synthetic_task(40, seed=4)
    answers = set()
    for rec in a:
        choices = parse_choices(rec)
        assert len(choices.labels) == 4 and len(set(choices.texts)) == 4
        assert rec.output == f"the correct answer is {rec.answer}"
        answers.add(rec.answer)
    assert len(answers) > 1


def test_synthetic_answers_are_right():
    for rec in synthetic_task(20):
        choices = parse_choices(rec)
        q, value = choices.question, int(choices.texts[choices.answer])
        values = [int(t) for t in choices.texts]
        if "+" in q or " - " in q:
            assert value == eval(q.removeprefix("What is ").rstrip("?"))  # noqa: S307 (our own generated text)
        else:
            assert value == (max(values) if "largest" in q else min(values))


# ------------------------------------------------------------------------------------------ subsets
def test_subset_is_seeded_nested_and_ordered():
    recs = synthetic_task(50)
    small, large = subset(recs, 10, seed=1), subset(recs, 30, seed=1)
    assert small == subset(recs, 10, seed=1) and small != subset(recs, 10, seed=2)
    assert set(map(id, small)) <= set(map(id, large))
    assert [r.index for r in large] == sorted(r.index for r in large)
    assert subset(recs, None) == recs and subset(recs, 500) == recs


def test_empty_subset_is_an_error():
    with pytest.raises(DataError, match="empty"):
        subset(synthetic_task(5), 0)


def test_train_val_split():
    recs = synthetic_task(20)
    train, val = train_val_split(recs, 5, seed=0)
    assert len(train) == 15 and len(val) == 5
    assert {r.index for r in train}.isdisjoint(r.index for r in val)
    assert train_val_split(recs, 5, seed=0) == (train, val)
    assert len(train_val_split(recs, 0.25, seed=0)[1]) == 5
    with pytest.raises(DataError, match="non-empty"):
        train_val_split(recs, 20, seed=0)


# ------------------------------------------------------------------------------------ label masking
def test_encode_for_training_masks_the_prompt():
    tok = byte_tokenizer()
    rec = Record("Say hi.", "", "hi there", "")
    enc = encode_for_training(tok, rec, max_length=512)
    prompt_len = len(tok(format_prompt(rec)).input_ids)
    assert len(enc["input_ids"]) == len(enc["labels"]) == len(enc["attention_mask"])
    assert enc["labels"][:prompt_len] == [-100] * prompt_len
    response = enc["labels"][prompt_len:]
    assert response == enc["input_ids"][prompt_len:]
    assert response[-1] == tok.eos_token_id
    assert tok.decode(response[:-1]) == "hi there"


def test_encode_for_training_truncates():
    tok = byte_tokenizer()
    rec = Record("Say hi.", "", "hi there", "")
    enc = encode_for_training(tok, rec, max_length=20)
    assert len(enc["input_ids"]) == len(enc["labels"]) == 20
    assert set(enc["labels"]) == {-100}


def test_a_missing_hub_name_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as exc:
        load_records("someone/not-a-dataset")
    message = str(exc.value)
    assert "\n" not in message and message.startswith("someone/not-a-dataset: not a file here")
