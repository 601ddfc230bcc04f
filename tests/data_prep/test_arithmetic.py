"""data_prep.arithmetic: seeded multi-step word problems whose answers are the integers the sentences describe."""

from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from data_prep import arithmetic
from data_prep.arithmetic import generate, make_problem, parse_num_ops
from data_prep.schema import check_parquet, render_prompt

# What each operation sentence does, read back from the text alone.
OPERATIONS = [
    (re.compile(r"(?:Then \w+ gets|A friend gives \w+) (\d+) more\."), lambda value, n: value + n),
    (re.compile(r"\w+ (?:gives away|loses) (\d+)(?: of them)?\."), lambda value, n: value - n),
    (re.compile(r"becomes (\d+) times as large\."), lambda value, n: value * n),
    (re.compile(r"equally among (\d+) boxes and keeps one box\."), lambda value, n: value / n),
]


def evaluate(text: str) -> tuple[float, int]:
    """(the final quantity, the number of operations), computed from the sentences independently of the generator."""
    sentences = re.findall(r"[^.?]+[.?]", text)
    start = re.fullmatch(r"\s*\w+ has (\d+) \w+\.", sentences[0])
    assert start, sentences[0]
    value: float = int(start.group(1))
    for sentence in sentences[1:-1]:
        matches = [(pattern.search(sentence), apply) for pattern, apply in OPERATIONS]
        [(match, apply)] = [(match, apply) for match, apply in matches if match]
        value = apply(value, int(match.group(1)))
        assert value == int(value) and value >= 1, (text, value)  # an integer at every step
    assert sentences[-1].strip().startswith("How many")
    return value, len(sentences) - 2


@pytest.mark.parametrize("num_ops", [1, 2, 4, 8])
def test_answers_are_the_integers_the_sentences_describe(num_ops: int) -> None:
    rng = random.Random(num_ops)
    for _ in range(200):
        problem = make_problem(rng, num_ops)
        value, operations = evaluate(problem.text)
        assert value == problem.answer and operations == num_ops == problem.num_ops


def test_the_same_arguments_give_the_same_files_and_another_seed_other_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    def files(name: str, seed: int) -> tuple[bytes, bytes]:
        out = tmp_path / name
        arithmetic.main(["--output-dir", str(out), "--num-train", "20", "--num-val", "5", "--seed", str(seed)])
        return (out / "arithmetic_train.parquet").read_bytes(), (out / "arithmetic_val.parquet").read_bytes()

    assert files("a", 0) == files("b", 0)
    assert files("c", 1) != files("a", 0)
    assert "problems generated: 25" in capsys.readouterr().out


def test_rows_follow_the_schema_and_record_their_difficulty(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    options = ["--num-train", "40", "--num-val", "10", "--num-ops", "2-4", "--data-source", "arith_hard"]
    arithmetic.main(["--output-dir", str(tmp_path), *options])
    train = pq.read_table(tmp_path / "arith_hard_train.parquet").to_pylist()
    val = pq.read_table(tmp_path / "arith_hard_val.parquet").to_pylist()
    assert (len(train), len(val)) == (40, 10)
    for row in train + val:
        problem = row["extra_info"]["raw_problem"]
        assert row["data_source"] == "arith_hard"
        assert row["prompt"] == [{"content": render_prompt(problem), "role": "user"}]
        value, operations = evaluate(problem)
        assert row["reward_model"]["ground_truth"] == str(int(value))
        assert operations == row["extra_info"]["num_ops"] and 2 <= operations <= 4
    assert {row["extra_info"]["num_ops"] for row in train} == {2, 3, 4}
    assert not {row["extra_info"]["raw_problem"] for row in train} & {row["extra_info"]["raw_problem"] for row in val}
    ids = [row["extra_info"]["index"] for row in train + val]
    assert len(set(ids)) == 50 and ids[0] == "arith_hard-0"
    assert check_parquet(tmp_path / "arith_hard_train.parquet").ok
    assert check_parquet(tmp_path / "arith_hard_val.parquet").ok


def test_more_operations_give_longer_problems_on_average() -> None:
    easy = generate(100, (1, 1), seed=0)
    hard = generate(100, (6, 6), seed=0)
    assert sum(len(p.text) for p in hard) > 2 * sum(len(p.text) for p in easy)


def test_generate_excludes_given_problems_and_never_repeats() -> None:
    first = generate(30, (1, 1), seed=3)
    second = generate(30, (1, 1), seed=3, exclude={problem.text for problem in first})
    texts = [problem.text for problem in first + second]
    assert len(set(texts)) == 60


@pytest.mark.parametrize(("text", "expected"), [("3", (3, 3)), ("2-5", (2, 5)), (" 1 - 1 ", (1, 1))])
def test_parse_num_ops_reads_a_count_or_a_range(text: str, expected: tuple[int, int]) -> None:
    assert parse_num_ops(text) == expected


@pytest.mark.parametrize("text", ["0", "5-2", "two", "1-", ""])
def test_parse_num_ops_rejects_nonsense(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_num_ops(text)


def test_no_validation_file_when_num_val_is_zero(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    arithmetic.main(["--output-dir", str(tmp_path), "--num-train", "3", "--num-val", "0"])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["arithmetic_train.parquet"]


def test_draw_distinct_skips_repeats_excluded_and_rejected_problems_and_names_what_ran_out() -> None:
    from dataclasses import dataclass

    from data_prep.arithmetic import draw_distinct
    from data_prep.schema import DataError

    @dataclass
    class Drawn:
        text: str

    texts = iter(["a", "a", "b", "x", "c", "d"])
    drawn = draw_distinct(2, lambda: Drawn(next(texts)), "letters", exclude={"b"}, accept=lambda p: p.text != "x")
    assert [p.text for p in drawn] == ["a", "c"]
    with pytest.raises(DataError, match="cannot draw 2 distinct letters: ask for fewer"):
        draw_distinct(2, lambda: Drawn("same"), "letters", max_attempts=5)
