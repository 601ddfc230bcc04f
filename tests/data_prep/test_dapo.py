"""data_prep.dapo17k on hand-written fixtures in the published DAPO-Math-17k schema (prompts repeated as published)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq
import pytest

from data_prep import dapo17k
from data_prep.dapo17k import collect_dapo
from data_prep.pipeline import REASON_TEXT, Reason
from data_prep.schema import DataError, check_parquet, render_prompt
from data_prep.sources import hub_is_reachable, resolve_sources

FIXTURES = Path(__file__).parents[1] / "fixtures" / "data"
DAPO = FIXTURES / "dapo_math_17k.jsonl"
BAD = FIXTURES / "dapo_bad_rows.jsonl"


def fixture_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def as_parquet(records: list[dict], path: Path) -> Path:
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def run(args: list[str], capsys: pytest.CaptureFixture) -> str:
    dapo17k.main(args)
    return capsys.readouterr().out


def read_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def first_occurrences(records: list[dict]) -> list[dict]:
    """What de-duplication must keep, computed independently: the first record of each problem text."""
    seen: set[str] = set()
    kept = []
    for record in records:
        key = " ".join(record["prompt"][0]["content"].split())
        if key not in seen:
            seen.add(key)
            kept.append(record)
    return kept


def test_duplicates_are_dropped_keeping_the_first_occurrence_its_id_and_the_input_order(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = run(["--input", str(DAPO), "--output-dir", str(tmp_path)], capsys)
    records = fixture_records(DAPO)
    expected = first_occurrences(records)
    rows = read_rows(tmp_path / "dapo17k_train.parquet")
    assert [row["extra_info"]["index"] for row in rows] == [record["extra_info"]["index"] for record in expected]
    assert [row["prompt"] for row in rows] == [record["prompt"] for record in expected]
    assert [row["reward_model"]["ground_truth"] for row in rows] == [
        record["reward_model"]["ground_truth"] for record in expected
    ]
    assert "rows read:          13" in out and "duplicates dropped: 8" in out and "rows written:       5" in out
    assert "bad rows skipped:   0" in out


def test_problems_differing_only_in_white_space_are_duplicates(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    records = fixture_records(DAPO)
    assert "has  sides" in records[-1]["prompt"][0]["content"]  # the fixture's white-space variant
    run(["--input", str(DAPO), "--output-dir", str(tmp_path)], capsys)
    problems = [row["extra_info"]["raw_problem"] for row in read_rows(tmp_path / "dapo17k_train.parquet")]
    assert "A triangle has sides $13$, $14$ and $15$. What is its area?" in problems
    assert not any("has  sides" in problem for problem in problems)


def test_the_problem_is_extracted_and_rendered_again_with_the_shared_template(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run(["--input", str(DAPO), "--output-dir", str(tmp_path)], capsys)
    for row in read_rows(tmp_path / "dapo17k_train.parquet"):
        problem = row["extra_info"]["raw_problem"]
        assert "Solve the following" not in problem and "Remember to put" not in problem
        assert row["prompt"] == [{"content": render_prompt(problem), "role": "user"}]
        assert row["data_source"] == "math_dapo" and row["ability"] == "MATH"
        assert row["extra_info"]["split"] == "train"
    assert check_parquet(tmp_path / "dapo17k_train.parquet").ok


def test_parquet_and_jsonl_inputs_give_identical_outputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parquet = tmp_path / "dapo.parquet"
    pq.write_table(pajson.read_json(DAPO), parquet)  # nested columns as arrow infers them, like the published file
    run(["--input", str(DAPO), "--output-dir", str(tmp_path / "from_jsonl")], capsys)
    run(["--input", str(parquet), "--output-dir", str(tmp_path / "from_parquet")], capsys)
    from_jsonl = pq.read_table(tmp_path / "from_jsonl" / "dapo17k_train.parquet")
    from_parquet = pq.read_table(tmp_path / "from_parquet" / "dapo17k_train.parquet")
    assert from_jsonl.equals(from_parquet)


def test_same_input_and_seed_give_the_same_bytes_and_the_seed_draws_the_validation_set(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    def prepare(name: str, seed: int) -> tuple[bytes, bytes, list[str], list[str]]:
        out = tmp_path / name
        run(["--input", str(DAPO), "--output-dir", str(out), "--val-size", "2", "--seed", str(seed)], capsys)
        train, val = out / "dapo17k_train.parquet", out / "dapo17k_val.parquet"
        ids = [[row["extra_info"]["index"] for row in read_rows(path)] for path in (train, val)]
        return train.read_bytes(), val.read_bytes(), ids[0], ids[1]

    first, again = prepare("a", seed=0), prepare("b", seed=0)
    assert first == again
    _, _, train_ids, val_ids = first
    assert len(val_ids) == 2 and len(train_ids) == 3 and not set(train_ids) & set(val_ids)
    every_id = [record["extra_info"]["index"] for record in first_occurrences(fixture_records(DAPO))]
    assert sorted(train_ids + val_ids) == sorted(every_id)
    assert train_ids == [index for index in every_id if index in train_ids]  # input order within a split
    draws = {tuple(prepare(f"seed{seed}", seed)[3]) for seed in range(6)}
    assert len(draws) > 1


def test_a_validation_set_leaving_no_training_rows_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as caught:
        dapo17k.main(["--input", str(DAPO), "--output-dir", str(tmp_path), "--val-size", "5"])
    assert caught.value.code == 2
    assert "--val-size 5 leaves no training rows out of 5" in capsys.readouterr().err


# Row of dapo_bad_rows.jsonl -> the problem the tool must name (row 0 and row 14 are good).
EXPECTED_BAD_ROWS = {
    1: (Reason.NULL_ANSWER, "answer is missing"),
    2: (Reason.EMPTY_ANSWER, "answer is empty"),
    3: (Reason.NON_STRING_ANSWER, "24 has type int"),
    4: (Reason.BAD_ANSWER, "cannot be parsed by math-verify"),
    5: (Reason.EMPTY_PROMPT, "empty prompt"),
    6: (Reason.EMPTY_PROMPT, "empty prompt"),
    7: (Reason.NOT_TEMPLATED, "does not follow the DAPO prompt template"),
    8: (Reason.PROMPT_SHAPE, "not a single user chat message"),
    9: (Reason.DUPLICATE_ID, "also the id of"),
    10: (Reason.MISSING_ID, "id is missing"),
    11: (Reason.BAD_PASS_RATE, "1.5"),
    12: (Reason.MALFORMED_ROW, "line 12"),
    13: (Reason.MALFORMED_ROW, "a JSON list"),
}


def test_every_bad_input_row_is_named_with_its_problem() -> None:
    prepared = collect_dapo(resolve_sources(str(BAD)), skip_bad=True)
    found = {bad.row: (bad.kind, bad.reason) for bad in prepared.bad_rows}
    assert sorted(found) == sorted(EXPECTED_BAD_ROWS)
    for row, (reason, words) in EXPECTED_BAD_ROWS.items():
        kind, text = found[row]
        assert kind == REASON_TEXT[reason], row
        assert words in text, (row, text)
    assert prepared.ids == ["good-0", "good-1"]


def test_bad_rows_stop_the_run_naming_the_file_and_row(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as caught:
        dapo17k.main(["--input", str(BAD), "--output-dir", str(tmp_path)])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert f"{BAD}, row 1 (id null-answer): answer is missing (null)" in err
    assert "13 bad row(s)" in err and "--skip-bad" in err
    assert not (tmp_path / "dapo17k_train.parquet").exists()


def test_skip_bad_writes_the_good_rows_and_reports_the_skipped_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    listing = tmp_path / "skipped.jsonl"
    out = run(
        ["--input", str(BAD), "--output-dir", str(tmp_path), "--skip-bad", "--bad-rows-out", str(listing)], capsys
    )
    assert "rows read:          15" in out and "bad rows skipped:   13" in out and "rows written:       2" in out
    assert "skipped ids: null-answer, empty-answer, non-string-answer, unparseable-answer" in out
    assert "1 x duplicate id" in out
    skipped = [json.loads(line) for line in listing.read_text().splitlines()]
    assert [record["row"] for record in skipped] == sorted(EXPECTED_BAD_ROWS)
    assert [row["extra_info"]["index"] for row in read_rows(tmp_path / "dapo17k_train.parquet")] == ["good-0", "good-1"]


def test_bad_rows_in_a_parquet_file_are_found_by_the_vectorised_reader(tmp_path: Path) -> None:
    # The rows arrow can hold in one typed file (not the non-string answer nor the malformed lines).
    records = fixture_records_lenient(BAD)
    parquet_rows = [0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 14]
    path = as_parquet([records[row] for row in parquet_rows], tmp_path / "bad.parquet")
    prepared = collect_dapo(resolve_sources(str(path)), skip_bad=True)
    found = {parquet_rows[bad.row]: bad.kind for bad in prepared.bad_rows}
    assert found == {row: REASON_TEXT[reason] for row, (reason, _) in EXPECTED_BAD_ROWS.items() if row in parquet_rows}
    assert prepared.ids == ["good-0", "good-1"]


def fixture_records_lenient(path: Path) -> list:
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            records.append(None)
    return records


def test_ground_truths_stored_as_numbers_are_non_string_answers(tmp_path: Path) -> None:
    records = fixture_records(DAPO)[:3]
    for record in records:
        record["reward_model"]["ground_truth"] = int(record["reward_model"]["ground_truth"])
    path = as_parquet(records, tmp_path / "int_answers.parquet")
    with pytest.raises(DataError) as caught:
        collect_dapo(resolve_sources(str(path)), skip_bad=False)
    assert "row 0 (id 00000000-0000-4000-8000-000000000000): answer is not a string" in str(caught.value)
    assert "int64" in str(caught.value)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_a_missing_column_names_the_file_and_the_column(
    suffix: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = FIXTURES / "dapo_missing_column.jsonl"
    if suffix == ".parquet":
        path = as_parquet(fixture_records(path), tmp_path / "missing.parquet")
    with pytest.raises(SystemExit):
        dapo17k.main(["--input", str(path), "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert str(path) in err and "missing column(s) ['reward_model']" in err


@pytest.mark.parametrize(
    ("name", "words"),
    [("not_a_dataset.txt", "not a parquet, jsonl or json file"), ("corrupt.parquet", "not a readable")],
)
def test_files_that_are_not_data_are_refused_by_name(
    name: str, words: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as caught:
        dapo17k.main(["--input", str(FIXTURES / name), "--output-dir", str(tmp_path)])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert str(FIXTURES / name) in err and words in err


def test_a_json_file_that_is_not_json_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('[{"prompt": ')
    with pytest.raises(DataError) as caught:
        collect_dapo(resolve_sources(str(path)), skip_bad=True)
    assert str(path) in str(caught.value) and "not valid JSON" in str(caught.value)


def test_integer_ids_are_kept_as_strings(tmp_path: Path) -> None:
    records = fixture_records(DAPO)[:3]
    for number, record in enumerate(records):
        record["extra_info"]["index"] = 100 + number
    path = as_parquet(records, tmp_path / "int_ids.parquet")
    assert pq.read_schema(path).field("extra_info").type.field("index").type == pa.int64()
    assert collect_dapo(resolve_sources(str(path)), skip_bad=False).ids == ["100", "101", "102"]


def test_a_folder_is_read_file_by_file_with_rows_numbered_per_file(tmp_path: Path) -> None:
    lines = DAPO.read_text().splitlines()
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "part-0.jsonl").write_text("\n".join(lines[:6]) + "\n")
    (folder / "part-1.jsonl").write_text("\n".join(lines[6:]) + "\n" + BAD.read_text().splitlines()[1] + "\n")
    prepared = collect_dapo(resolve_sources(str(folder)), skip_bad=True)
    assert prepared.rows_read == 14 and len(prepared) == 5
    [bad] = prepared.bad_rows
    assert (Path(bad.file).name, bad.row, bad.index) == ("part-1.jsonl", 7, "null-answer")


def test_pass_rates_are_kept(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run(["--input", str(FIXTURES / "dapo_math_17k_pass_rate.jsonl"), "--output-dir", str(tmp_path)], capsys)
    table = pq.read_table(tmp_path / "dapo17k_train.parquet")
    info = table.column("extra_info").to_pylist()
    assert [(row["index"], row["pass_rate"]) for row in info] == [("pr-0", 0.125), ("pr-1", None), ("pr-3", 1.0)]
    assert table.schema.field("extra_info").type.field("pass_rate").type == pa.float64()
    assert check_parquet(tmp_path / "dapo17k_train.parquet").rows_with_pass_rate == 2


def test_duplicates_with_another_ground_truth_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    records = fixture_records(DAPO)[:4]  # rows 0 and 3 are the same problem
    records[3]["reward_model"]["ground_truth"] = "5"
    source = tmp_path / "conflict.jsonl"
    source.write_text("".join(json.dumps(record) + "\n" for record in records))
    out = run(["--input", str(source), "--output-dir", str(tmp_path)], capsys)
    assert "warning: 1 problem(s) have duplicates with another ground truth" in out
    assert records[0]["extra_info"]["index"] in out
    assert read_rows(tmp_path / "dapo17k_train.parquet")[0]["reward_model"]["ground_truth"] == "2"


def test_a_hub_name_offline_asks_for_a_local_path_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(SystemExit) as caught:
        dapo17k.main(["--output-dir", str(tmp_path)])  # the default input is the hub name
    assert time.perf_counter() - start < 5
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "BytedTsinghua-SIA/DAPO-Math-17k" in err and "offline" in err and "local path" in err


def test_the_hub_probe_gives_up_quickly_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens there
    start = time.perf_counter()
    reachable, why = hub_is_reachable(timeout_s=2.0)
    assert not reachable and "127.0.0.1:9" in why
    assert time.perf_counter() - start < 3.0


def test_a_hub_name_online_is_loaded_with_datasets(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hub is mocked (no network here): load_dataset returns the fixture as a datasets.Dataset.
    import datasets

    from data_prep import sources

    calls: list[tuple] = []

    def load_dataset(name: str, split: str | None = None) -> datasets.Dataset:
        calls.append((name, split))
        return datasets.Dataset.from_list(fixture_records(DAPO))

    monkeypatch.setattr(sources, "hub_is_reachable", lambda: (True, ""))
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    out = run(["--output-dir", str(tmp_path / "hub")], capsys)
    assert calls == [("BytedTsinghua-SIA/DAPO-Math-17k", "train")]
    assert "rows read:          13" in out and "rows written:       5" in out
    run(["--input", str(DAPO), "--output-dir", str(tmp_path / "local")], capsys)
    hub_rows = pq.read_table(tmp_path / "hub" / "dapo17k_train.parquet")
    assert hub_rows.equals(pq.read_table(tmp_path / "local" / "dapo17k_train.parquet"))


def test_progress_bars_are_shown_when_asked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parquet = tmp_path / "dapo.parquet"
    pq.write_table(pajson.read_json(DAPO), parquet)
    dapo17k.main(["--input", str(parquet), "--output-dir", str(tmp_path), "--progress"])
    err = capsys.readouterr().err
    assert "reading dapo.parquet" in err and "13/13" in err and "distinct prompts" in err
    dapo17k.main(["--input", str(parquet), "--output-dir", str(tmp_path), "--no-progress"])
    assert capsys.readouterr().err == ""
