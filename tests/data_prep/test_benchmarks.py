"""data_prep.benchmarks on hand-written fixtures in each benchmark's published schema."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep import benchmarks
from data_prep.benchmarks import BENCHMARKS, answer_to_ground_truth, collect_benchmark
from data_prep.pipeline import REASON_TEXT, Reason
from data_prep.schema import check_parquet, render_prompt
from data_prep.sources import resolve_sources

FIXTURES = Path(__file__).parents[1] / "fixtures" / "data"


def records(name: str) -> list[dict]:
    path = FIXTURES / name
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return [json.loads(line) for line in path.read_text().splitlines()]


def prepare(name: str, fixture: str | Path, tmp_path: Path, capsys: pytest.CaptureFixture, *extra: str) -> list[dict]:
    out = tmp_path / f"{name}.parquet"
    benchmarks.main(["--name", name, "--input", str(FIXTURES / fixture), "--output", str(out), *extra])
    capsys.readouterr()
    return pq.read_table(out).to_pylist()


def test_amc_float_answers_become_integer_strings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows = prepare("amc2023", "amc2023.jsonl", tmp_path, capsys)
    assert [record["answer"] for record in records("amc2023.jsonl")] == [27.0, 36.0, 45.0, 0.0]
    assert [row["reward_model"]["ground_truth"] for row in rows] == ["27", "36", "45", "0"]
    assert [row["extra_info"]["raw_problem"] for row in rows] == [r["question"] for r in records("amc2023.jsonl")]
    assert [row["extra_info"]["index"] for row in rows] == ["0", "1", "2", "3"]


def test_math500_latex_answers_survive_untouched_with_subject_level_and_unique_id(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rows = prepare("math500", "math500.jsonl", tmp_path, capsys)
    source = records("math500.jsonl")
    assert [row["reward_model"]["ground_truth"] for row in rows] == [record["answer"] for record in source]
    assert rows[0]["reward_model"]["ground_truth"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    for row, record in zip(rows, source):
        info = row["extra_info"]
        assert (info["subject"], info["level"], info["unique_id"]) == (
            record["subject"],
            record["level"],
            record["unique_id"],
        )
        assert info["index"] == record["unique_id"]
        assert info["raw_problem"] == record["problem"]  # the problem's LaTeX and double spaces kept


def test_aime2024_maps_problem_answer_and_id(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows = prepare("aime2024", "aime2024.jsonl", tmp_path, capsys)
    assert [row["extra_info"]["index"] for row in rows] == ["60", "61", "62"]
    assert [row["reward_model"]["ground_truth"] for row in rows] == ["738", "699", "036"]  # strings kept as published


def test_aime2024_in_the_dapo_format_is_deduplicated(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "aime2024.parquet"
    benchmarks.main(["--name", "aime2024", "--input", str(FIXTURES / "aime2024_dapo.jsonl"), "--output", str(out)])
    printed = capsys.readouterr().out
    assert "rows read:          6" in printed and "duplicates dropped: 4" in printed
    rows = pq.read_table(out).to_pylist()
    assert [row["extra_info"]["index"] for row in rows] == ["aime-2024-0-0", "aime-2024-1-0"]
    assert [row["extra_info"]["raw_problem"] for row in rows] == [
        record["extra_info"]["raw_problem"] for record in records("aime2024_dapo.jsonl")[:2]
    ]
    assert {row["data_source"] for row in rows} == {"aime2024"}


def test_aime2025_from_a_json_array_and_from_a_file_without_ids(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows = prepare("aime2025", "aime2025.json", tmp_path, capsys)
    assert [row["extra_info"]["index"] for row in rows] == ["2025-I-1", "2025-I-2"]
    assert [row["reward_model"]["ground_truth"] for row in rows] == ["70", "117"]
    rows = prepare("aime2025", "aime2025_no_id.jsonl", tmp_path, capsys)
    assert [row["extra_info"]["index"] for row in rows] == ["aime2025-0", "aime2025-1"]
    assert [row["reward_model"]["ground_truth"] for row in rows] == ["70", "47"]  # stored as integers


@pytest.mark.parametrize(
    ("name", "fixture"),
    [
        ("aime2024", "aime2024.jsonl"),
        ("aime2024", "aime2024_dapo.jsonl"),
        ("aime2025", "aime2025.json"),
        ("amc2023", "amc2023.jsonl"),
        ("math500", "math500.jsonl"),
    ],
)
def test_every_benchmark_uses_the_training_template_names_itself_and_passes_the_check(
    name: str, fixture: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rows = prepare(name, fixture, tmp_path, capsys)
    for row in rows:
        assert row["data_source"] == name
        assert row["prompt"] == [{"content": render_prompt(row["extra_info"]["raw_problem"]), "role": "user"}]
        assert row["extra_info"]["split"] == "test"
    report = check_parquet(tmp_path / f"{name}.parquet")
    assert report.ok and report.rows_with_template == len(rows) and report.rows_per_source == {name: len(rows)}


def test_data_source_can_be_renamed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows = prepare("amc2023", "amc2023.jsonl", tmp_path, capsys, "--data-source", "amc23_test")
    assert {row["data_source"] for row in rows} == {"amc23_test"}


def test_parquet_input_gives_the_same_rows_as_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parquet = tmp_path / "amc.parquet"
    pq.write_table(pa.Table.from_pylist(records("amc2023.jsonl")), parquet)  # answers stored as float64
    assert pq.read_schema(parquet).field("answer").type == pa.float64()
    from_jsonl = prepare("amc2023", "amc2023.jsonl", tmp_path / "a", capsys)
    from_parquet = prepare("amc2023", parquet, tmp_path / "b", capsys)
    assert from_jsonl == from_parquet


AMC_BAD = {
    1: (Reason.NON_INTEGER_ANSWER, "2.5"),
    2: (Reason.NON_STRING_ANSWER, "[2, 3] has type list"),
    3: (Reason.NON_STRING_ANSWER, "True has type bool"),
    4: (Reason.NULL_ANSWER, "missing"),
    5: (Reason.EMPTY_PROMPT, "empty"),
    6: (Reason.NON_STRING_PROBLEM, "12345 has type int"),
    7: (Reason.DUPLICATE_ID, "also the id of"),
    8: (Reason.EMPTY_ANSWER, "answer is empty"),
}


def test_every_bad_benchmark_row_is_named_with_its_problem() -> None:
    prepared = collect_benchmark(BENCHMARKS["amc2023"], resolve_sources(str(FIXTURES / "amc2023_bad.jsonl")), True)
    found = {bad.row: (bad.kind, bad.reason) for bad in prepared.bad_rows}
    assert sorted(found) == sorted(AMC_BAD)
    for row, (reason, words) in AMC_BAD.items():
        assert found[row][0] == REASON_TEXT[reason], row
        assert words in found[row][1], (row, found[row])
    assert prepared.ids == ["0", "9"] and prepared.ground_truths == ["27", "11"]


def test_malformed_benchmark_lines_are_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "amc.jsonl"
    path.write_text((FIXTURES / "amc2023.jsonl").read_text() + '{"id": 9, "question": \n"null"\n')
    prepared = collect_benchmark(BENCHMARKS["amc2023"], resolve_sources(str(path)), skip_bad=True)
    assert [(bad.row, bad.kind) for bad in prepared.bad_rows] == [
        (4, REASON_TEXT[Reason.MALFORMED_ROW]),
        (5, REASON_TEXT[Reason.MALFORMED_ROW]),
    ]
    assert "line 4" in prepared.bad_rows[0].reason and "a JSON str" in prepared.bad_rows[1].reason
    assert len(prepared) == 4


def test_math500_answers_must_be_strings_and_unique_ids_unique(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = FIXTURES / "math500_bad.jsonl"
    with pytest.raises(SystemExit) as caught:
        benchmarks.main(["--name", "math500", "--input", str(path), "--output", str(tmp_path / "m.parquet")])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert f"{path}, row 1 (id test/prealgebra/8.json): answer is not a string: 4 has type int" in err
    assert f"{path}, row 2 (id test/prealgebra/7.json): duplicate id" in err
    assert not (tmp_path / "m.parquet").exists()


def test_skip_bad_keeps_the_good_benchmark_rows(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "amc.parquet"
    benchmarks.main(
        ["--name", "amc2023", "--input", str(FIXTURES / "amc2023_bad.jsonl"), "--output", str(out), "--skip-bad"]
    )
    printed = capsys.readouterr().out
    assert "bad rows skipped:   8" in printed and "skipped ids: 1, 2, 3, 4, 5, 6, 0, 8" in printed
    assert [row["extra_info"]["index"] for row in pq.read_table(out).to_pylist()] == ["0", "9"]


def test_a_benchmark_file_without_the_problem_column_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "renamed.jsonl"
    path.write_text(json.dumps({"id": 1, "prompt_text": "What is $1+1$?", "answer": 2.0}) + "\n")
    with pytest.raises(SystemExit):
        benchmarks.main(["--name", "amc2023", "--input", str(path), "--output", str(tmp_path / "o.parquet")])
    err = capsys.readouterr().err
    assert str(path) in err and "missing column(s)" in err and "question" in err


def test_fields_match_case_insensitively_and_pass_rates_are_kept(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "aime_caps.jsonl"
    path.write_text(
        json.dumps({"ID": "2024-I-1", "Problem": "Find $1+1$.", "Answer": 2, "pass_rate": 0.25})
        + "\n"
        + json.dumps({"ID": "2024-I-2", "Problem": "Find $2+2$.", "Answer": 4, "pass_rate": None})
        + "\n"
    )
    rows = prepare("aime2024", path, tmp_path, capsys)
    assert [(row["extra_info"]["index"], row["extra_info"]["pass_rate"]) for row in rows] == [
        ("2024-I-1", 0.25),
        ("2024-I-2", None),
    ]
    assert [row["reward_model"]["ground_truth"] for row in rows] == ["2", "4"]


@pytest.mark.parametrize(
    ("value", "integer_answers", "expected"),
    [
        (27.0, True, ("27", Reason.OK)),
        (-3.0, True, ("-3", Reason.OK)),
        (42, True, ("42", Reason.OK)),
        ("27.0", True, ("27.0", Reason.OK)),  # strings are never rewritten
        ("\\frac{1}{2}", False, ("\\frac{1}{2}", Reason.OK)),
        (0.5, True, (None, Reason.NON_INTEGER_ANSWER)),
        (27.0, False, (None, Reason.NON_STRING_ANSWER)),
        (True, True, (None, Reason.NON_STRING_ANSWER)),
        (float("nan"), True, (None, Reason.OK)),  # a missing answer: reported as null by the collector
    ],
)
def test_answer_to_ground_truth(value: object, integer_answers: bool, expected: tuple) -> None:
    ground_truth, reason, _ = answer_to_ground_truth(value, integer_answers)
    assert (ground_truth, reason) == expected


def test_a_benchmark_hub_name_offline_asks_for_a_local_path(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(SystemExit) as caught:
        benchmarks.main(["--name", "math500", "--output", str(tmp_path / "m.parquet")])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "HuggingFaceH4/MATH-500" in err and "local path" in err


def test_a_benchmark_hub_name_online_is_loaded_with_its_default_split(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hub is mocked (no network here): load_dataset returns the fixture as a datasets.Dataset.
    import datasets

    from data_prep import sources

    calls: list[tuple] = []

    def load_dataset(name: str, split: str | None = None) -> datasets.Dataset:
        calls.append((name, split))
        return datasets.Dataset.from_list(records("math500.jsonl"))

    monkeypatch.setattr(sources, "hub_is_reachable", lambda: (True, ""))
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    benchmarks.main(["--name", "math500", "--output", str(tmp_path / "hub.parquet")])
    assert calls == [("HuggingFaceH4/MATH-500", "test")]
    assert pq.read_table(tmp_path / "hub.parquet").to_pylist() == prepare("math500", "math500.jsonl", tmp_path, capsys)
