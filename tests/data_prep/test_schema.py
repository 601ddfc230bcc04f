"""The shared schema: prompt template, row builder, ground-truth parsing, and the check run before training."""

from __future__ import annotations

import threading
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_prep import arithmetic, benchmarks, check, dapo17k
from data_prep.ground_truth import ground_truth_problem, parse_ground_truth
from data_prep.schema import (
    PROMPT_TEMPLATE,
    DataCheckError,
    build_row,
    check_data_files,
    check_parquet,
    extract_problem,
    normalise_problem,
    render_prompt,
    rows_to_table,
    validate_rows,
    write_rows,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "data"
DAPO_TEMPLATE = (
    "Solve the following math problem step by step. The last line of your response should be of the form Answer: "
    "$Answer (without quotes) where $Answer is the answer to the problem.\n\n{problem}\n\nRemember to put your "
    'answer on its own line after "Answer:".'
)


def test_prompt_template_is_dapos_verbatim() -> None:
    assert PROMPT_TEMPLATE == DAPO_TEMPLATE
    assert render_prompt("What is $1+1$?") == DAPO_TEMPLATE.format(problem="What is $1+1$?")


@settings(max_examples=60, deadline=None)
@given(problem=st.text(min_size=1).filter(lambda text: text.strip() == text and text.strip()))
def test_extract_problem_inverts_render_prompt(problem: str) -> None:
    assert extract_problem(render_prompt(problem)) == problem
    assert extract_problem("\n  " + render_prompt(problem) + " \n") == problem


@pytest.mark.parametrize(
    "content",
    ["What is 2 + 2?", "", DAPO_TEMPLATE.split("{problem}")[0] + "What is 2 + 2?", "Answer: 4"],
)
def test_extract_problem_is_none_outside_the_template(content: str) -> None:
    assert extract_problem(content) is None


def test_normalise_problem_collapses_white_space_and_keeps_case() -> None:
    assert normalise_problem("  Let  $X$\tbe\n a set. ") == "Let $X$ be a set."
    assert normalise_problem("Let $X$ be") != normalise_problem("Let $x$ be")
    assert normalise_problem("ｘ＝１") == "x=1"  # NFKC: full-width forms are the same problem


@pytest.mark.parametrize(
    "answer",
    ["34", "-7", "\\frac{14}{3}", "\\left( 3, \\frac{\\pi}{2} \\right)", "\\text{Evelyn}", "p - q", "10\\sqrt{2}"],
)
def test_answers_math_verify_parses_are_usable(answer: str) -> None:
    assert ground_truth_problem(answer) is None
    assert parse_ground_truth(answer)


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (None, "missing"),
        (float("nan"), "missing"),
        ("", "empty"),
        ("   ", "empty"),
        (34, "has type int"),
        (["1"], "has type list"),
        ("\\frac{", "cannot be parsed"),
        ("\\text{}", "cannot be parsed"),
    ],
)
def test_unusable_answers_say_why(answer: object, words: str) -> None:
    reason = ground_truth_problem(answer)
    assert reason is not None and words in reason


@settings(max_examples=40, deadline=None)
@given(value=st.integers(min_value=-(10**12), max_value=10**12), decimals=st.integers(0, 10**6))
def test_plain_numbers_skipping_math_verify_are_ones_it_parses(value: int, decimals: int) -> None:
    # ground_truth_problem accepts plain integers and decimals without calling math-verify: math-verify must agree.
    assert ground_truth_problem(str(value)) is None
    assert parse_ground_truth(str(value))[0] == value
    decimal = f"{value}.{decimals}"
    assert ground_truth_problem(decimal) is None and parse_ground_truth(decimal)


def test_ground_truths_parse_off_the_main_thread() -> None:
    results: list[object] = []
    worker = threading.Thread(target=lambda: results.append(parse_ground_truth("\\frac{1}{2}")))
    worker.start()
    worker.join()
    assert results and results[0]


def test_rows_to_table_has_the_schema_types_even_for_all_null_pass_rates() -> None:
    rows = [build_row("demo", "What is $1+1$?", "2", "id-0", "train", {"pass_rate": None, "level": 3})]
    table = rows_to_table(rows)
    assert table.schema.field("prompt").type == pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))
    assert table.schema.field("reward_model").type == pa.struct([("ground_truth", pa.string()), ("style", pa.string())])
    info_type = table.schema.field("extra_info").type
    assert [info_type.field(i).name for i in range(info_type.num_fields)] == [
        "index",
        "raw_problem",
        "split",
        "pass_rate",
        "level",
    ]
    assert info_type.field("pass_rate").type == pa.float64()
    assert table.to_pylist()[0]["prompt"] == [{"content": render_prompt("What is $1+1$?"), "role": "user"}]


def test_build_row_refuses_extra_info_that_redefines_the_id() -> None:
    with pytest.raises(ValueError, match="index"):
        build_row("demo", "p", "1", "id-0", "train", {"index": "other"})


def _good_row(index: str) -> dict[str, object]:
    return build_row("demo", f"Problem {index}?", "3", index, "train", {"pass_rate": 0.5})


def test_validate_rows_names_every_bad_row_and_why() -> None:
    rows = [_good_row(str(n)) for n in range(9)]
    rows[1]["data_source"] = ""
    rows[2]["prompt"] = "just a string"
    rows[3]["prompt"] = [{"content": "  ", "role": "user"}]
    rows[4]["reward_model"] = {"ground_truth": None, "style": "rule"}
    rows[5]["reward_model"] = {"ground_truth": "\\frac{", "style": "rule"}
    rows[6]["extra_info"] = {**rows[6]["extra_info"], "index": "0"}
    rows[7]["extra_info"] = {**rows[7]["extra_info"], "pass_rate": 1.5}
    rows[8]["prompt"] = [{"content": "Free-form question?", "role": "user"}]  # outside the template: allowed
    report = validate_rows(pd.DataFrame(rows), "mem.parquet")
    reasons = {problem.row: problem.reason for problem in report.problems}
    assert sorted(reasons) == [1, 2, 3, 4, 5, 6, 7]
    assert "data_source" in reasons[1]
    assert "not a list of chat messages" in reasons[2]
    assert "prompt is empty" in reasons[3]
    assert "missing" in reasons[4]
    assert "cannot be parsed" in reasons[5]
    assert "duplicate id '0' (first at row 0)" in reasons[6]
    assert "pass_rate" in reasons[7]
    assert report.rows_with_template == 6  # all but 2 and 3 (no usable prompt) and 8 (free-form)
    assert report.rows_per_source == {"demo": 8}
    assert not report.ok


def test_check_parquet_reads_back_what_the_builders_write(tmp_path: Path) -> None:
    path = write_rows([_good_row("a"), _good_row("b")], tmp_path / "ok.parquet")
    report = check_parquet(path)
    assert report.ok and report.num_rows == 2 and report.rows_with_pass_rate == 2
    assert report.rows_with_template == 2
    assert "2 rows, OK" in report.summary() and "warning" not in report.summary()


def test_the_summary_warns_about_prompts_outside_the_shared_template(tmp_path: Path) -> None:
    rows = [_good_row("a"), _good_row("b")]
    rows[1]["prompt"] = [{"content": "Free-form question?", "role": "user"}]
    report = check_parquet(write_rows(rows, tmp_path / "mixed.parquet"))
    assert report.ok and report.rows_with_template == 1
    assert "warning: 1 prompt(s) are not in the shared template" in report.summary()


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda tmp: tmp / "absent.parquet", "no such file"),
        (lambda tmp: FIXTURES / "corrupt.parquet", "not a readable parquet file"),
        (lambda tmp: _write_table(tmp, {"prompt": ["x"]}), "missing column(s) ['data_source', 'reward_model']"),
        (lambda tmp: _write_table(tmp, {"data_source": pa.array([], pa.string())}), "no rows"),
    ],
)
def test_file_level_problems_raise_naming_the_file(make, words: str, tmp_path: Path) -> None:
    path = make(tmp_path)
    with pytest.raises(DataCheckError) as caught:
        check_parquet(path)
    assert str(path) in str(caught.value) and words in str(caught.value)


def _write_table(folder: Path, columns: dict[str, object]) -> Path:
    path = folder / "table.parquet"
    pq.write_table(pa.table(columns), path)
    return path


def test_check_data_files_raises_naming_the_file_and_row(tmp_path: Path) -> None:
    good = write_rows([_good_row("a")], tmp_path / "good.parquet")
    rows = [_good_row("a"), _good_row("b")]
    rows[1]["reward_model"] = {"ground_truth": "", "style": "rule"}
    bad = write_rows(rows, tmp_path / "bad.parquet")
    check_data_files([good])
    with pytest.raises(DataCheckError) as caught:
        check_data_files([good, bad, tmp_path / "absent.parquet"])
    message = str(caught.value)
    assert f"{bad}, row 1 (id b): ground truth is empty" in message
    assert "absent.parquet: no such file" in message
    assert str(good) not in message


def test_check_cli_prints_a_summary_and_fails_on_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = write_rows([_good_row("a"), _good_row("b")], tmp_path / "good.parquet")
    check.main([str(good)])
    out = capsys.readouterr().out
    assert "2 rows, OK" in out and "demo: 2" in out and "1 of 1 file(s) passed" in out
    with pytest.raises(SystemExit) as caught:
        check.main([str(good), str(FIXTURES / "corrupt.parquet")])
    assert caught.value.code == check.EXIT_FAILED
    assert "corrupt.parquet: FAILED" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("tool", "options"),
    [
        (dapo17k, ["--input", "--output-dir", "--val-size", "--seed", "--skip-bad", "--progress"]),
        (benchmarks, ["--name", "aime2024", "aime2025", "amc2023", "math500", "--input", "--output", "--skip-bad"]),
        (arithmetic, ["--num-ops", "--num-train", "--num-val", "--seed", "--data-source", "--output-dir"]),
        (check, ["FILE", "--max-bad"]),
    ],
)
def test_every_tool_documents_its_options(tool, options: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as caught:
        tool.main(["--help"])
    assert caught.value.code == 0
    text = capsys.readouterr().out
    assert f"python -m data_prep.{tool.__name__.rsplit('.', 1)[1]}" in text
    assert all(option in text for option in options)
