"""recipe.acpo.validation.generations: verl's validation dump read back and the correctness rule, shared by the
evaluation and the pass-rate pre-pass; every error names the folder, or the file and the line or sample."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from recipe.acpo.validation.command import ValidationRunError
from recipe.acpo.validation.generations import (
    GenerationsError,
    is_correct,
    read_generations,
    sample_accuracy,
    sample_location,
)


def _dump(folder: Path, *lines: str, name: str = "0.jsonl") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return folder / name


def test_the_samples_come_back_in_the_files_order_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    samples = [{"uid": "p_0_0", "score": 1.0}, {"uid": "p_1_0", "score": 0.0}]
    file = _dump(tmp_path / "generations", json.dumps(samples[0]), "", json.dumps(samples[1]))
    generations = read_generations(tmp_path / "generations")
    assert generations.file == file and generations.samples == samples


def test_a_folder_without_exactly_one_generations_file_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(GenerationsError, match=rf"exactly one generations file in {re.escape(str(empty))}.*\[\]"):
        read_generations(empty)
    _dump(tmp_path / "two", "{}", name="0.jsonl")
    _dump(tmp_path / "two", "{}", name="1.jsonl")
    with pytest.raises(GenerationsError, match=r"found \['0.jsonl', '1.jsonl'\]"):
        read_generations(tmp_path / "two")


@pytest.mark.parametrize(("bad_line", "message"), [("{not json", "not JSON"), ("[1, 2]", "not a JSON object: [1, 2]")])
def test_a_line_that_is_not_a_json_object_names_the_file_and_the_line(
    tmp_path: Path, bad_line: str, message: str
) -> None:
    file = _dump(tmp_path, json.dumps({"score": 1.0}), bad_line)
    with pytest.raises(GenerationsError, match=re.escape(f"{file}:2: {message}")):
        read_generations(tmp_path)


def test_a_file_without_samples_is_an_error_the_tools_report_as_theirs(tmp_path: Path) -> None:
    file = _dump(tmp_path, "", "  ")
    with pytest.raises(ValidationRunError, match=re.escape(f"{file} holds no samples")):
        read_generations(tmp_path)


@pytest.mark.parametrize(
    ("sample", "accuracy"),
    [
        ({"score": 1.0}, 1.0),
        ({"score": 0}, 0.0),
        ({"score": 0.0, "acc": 1.0}, 1.0),  # the scorer's acc wins over the reward
        ({"score": 1.0, "acc": False}, 0.0),  # a bool is 0 or 1
        ({"score": 0.25, "acc": None}, 0.25),  # no acc: the score
    ],
)
def test_a_samples_accuracy_is_its_acc_else_its_score(sample: dict, accuracy: float) -> None:
    assert sample_accuracy(sample, "here") == accuracy


@pytest.mark.parametrize("value", [-1.0, 1.5, float("nan"), "1", None])
def test_an_accuracy_outside_0_1_names_the_file_and_the_sample(value: object) -> None:
    where = sample_location("/dump/0.jsonl", 3)
    with pytest.raises(GenerationsError, match=re.escape(f"/dump/0.jsonl, sample 3: accuracy {value!r} is not")):
        sample_accuracy({"score": value}, where)


def test_a_sample_is_correct_when_its_accuracy_is_above_0() -> None:
    assert [is_correct(a) for a in (0.0, 0.25, 1.0)] == [False, True, True]
