"""recipe.acpo.report without a browser: discovery, tolerant reading, plots, testbed marks, the CLI."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from recipe.acpo.report import build_report
from recipe.acpo.report.__main__ import main
from recipe.acpo.report.load import read_dump, read_metrics
from recipe.acpo.report.plots import PANELS
from recipe.acpo.testbed.slips import annotate_first_wrong, first_wrong_mark


def _embedded(page: str) -> dict:
    match = re.search(r'<script type="application/json" id="acpo-data">(.*?)</script>', page, re.S)
    assert match, "the page has no embedded data"
    return json.loads(match.group(1))


def test_report_of_a_run_with_metrics_and_dump(fake_run) -> None:
    run = fake_run(steps=3, per_step=4)
    summary = build_report(run / "report.html", run)
    page = (run / "report.html").read_text(encoding="utf-8")
    assert summary.metrics_file == run / "metrics.jsonl"
    assert summary.dump_dir == run / "ckpt" / "acpo_dump"
    assert summary.metrics_steps == 3 and summary.responses == 12
    # Every panel has a metric in the fake run (validation is logged on its own lines and merged by step).
    assert summary.plots == len(PANELS) == page.count('src="data:image/png;base64,')
    data = _embedded(page)
    assert len(data["records"]) == 12 and data["page_size"] == 25
    assert "response" not in data["records"][0]  # re-derived in the page from the tokens
    assert data["attr_scale"] > 0
    assert "http://" not in page and "https://" not in page  # nothing is fetched: the file opens from disk


def test_run_without_a_dump_gets_the_plots_only(fake_run) -> None:
    run = fake_run(steps=2, dump=False)
    summary = build_report(run / "report.html", run)
    page = (run / "report.html").read_text(encoding="utf-8")
    assert summary.dump_dir is None and summary.responses == 0 and summary.plots > 0
    assert "No step dump in this run" in page
    assert _embedded(page)["records"] == []


def test_empty_truncated_and_malformed_lines_are_skipped_and_counted(fake_run) -> None:
    run = fake_run(steps=2, per_step=3)
    dump_file = run / "ckpt" / "acpo_dump" / "step_000002.jsonl"
    good = dump_file.read_text(encoding="utf-8").splitlines()
    bad = ["", "   ", good[0][: len(good[0]) // 2], "[1, 2]", json.dumps({"global_step": 2, "tokens": []})]
    dump_file.write_text("\n".join(good + bad) + "\n", encoding="utf-8")
    metrics_file = run / "metrics.jsonl"
    metrics_file.write_text(metrics_file.read_text() + '{"step": 3, "data": {"critic/sc', encoding="utf-8")
    dump = read_dump(dump_file.parent)
    assert len(dump.records) == 6 and dump.skipped_lines == 3  # blank lines are not counted
    assert read_metrics(metrics_file).skipped_lines == 1
    summary = build_report(run / "report.html", run)
    assert (summary.responses, summary.dump_skipped_lines, summary.metrics_skipped_lines) == (6, 3, 1)
    assert "skipped 1 metrics and 3 dump lines" in (run / "report.html").read_text(encoding="utf-8")


def test_explicit_paths_override_discovery_and_a_missing_run_is_a_clear_error(fake_run, tmp_path: Path) -> None:
    run = fake_run(steps=2)
    other = tmp_path / "elsewhere" / "my_experiment.jsonl"
    other.parent.mkdir()
    other.write_text(json.dumps({"step": 1, "data": {"critic/score/mean": 0.5}}) + "\n")
    summary = build_report(tmp_path / "out.html", metrics_file=other, dump_dir=run / "ckpt" / "acpo_dump")
    assert summary.metrics_file == other and summary.plots == 1 and summary.responses == 8
    # Discovery finds a metrics JSONL of any name (verl's <experiment>.jsonl) by its first line.
    assert build_report(tmp_path / "found.html", other.parent).metrics_file == other
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no metrics JSONL"):
        build_report(tmp_path / "x.html", empty)
    assert main([str(empty)]) == 2
    assert main([str(tmp_path / "missing")]) == 2


def test_cli_writes_the_report_and_documents_the_inputs(fake_run, capsys: pytest.CaptureFixture[str]) -> None:
    run = fake_run(steps=1, per_step=2)
    assert main([str(run), "-o", str(run / "r.html"), "--page-size", "5"]) == 0
    out = capsys.readouterr().out
    assert f"report:  {(run / 'r.html').resolve()}" in out and "(2 responses)" in out
    assert _embedded((run / "r.html").read_text(encoding="utf-8"))["page_size"] == 5
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "VERL_FILE_LOGGER_PATH" in help_text and "acpo.dump" in help_text


@dataclass
class FakeEquation:
    start: int
    end: int
    text: str
    correct: bool
    uses_previous: bool = True


@dataclass
class FakeCheck:
    equations: list[FakeEquation]
    first_wrong: int | None
    parsed: bool = True


def _checker_for(wrong_text: str):
    """A stand-in for the testbed's ``check_steps``: the first occurrence of ``wrong_text`` is the wrong one."""

    def check_steps(response: str) -> FakeCheck:
        at = response.find(wrong_text)
        if at < 0:
            return FakeCheck([], None)
        return FakeCheck([FakeEquation(0, 1, "x", True), FakeEquation(at, at + len(wrong_text), wrong_text, False)], 1)

    return check_steps


def _testbed_record() -> dict:
    tokens = ["3", " +", " 4", " =", " 7", ".", " 7", " *", " 2", " =", " 15", ".", " Answer", ": 15"]
    steps = [(0, 6, 0.4), (6, 12, -0.9), (12, 14, -0.1)]
    return {
        "data_source": "arithmetic_steps",
        "tokens": tokens,
        "boundaries": [0, 6, 12, 14],
        "steps": [{"start": a, "end": b, "a_attr": v} for a, b, v in steps],
    }


def test_first_wrong_equation_is_mapped_to_its_tokens_and_step() -> None:
    record = _testbed_record()
    mark = first_wrong_mark(record, _checker_for("7 * 2 = 15"))
    # "7 * 2 = 15" starts inside token " 7" (index 6) and ends in token " 15" (index 10).
    assert (mark["token_start"], mark["token_end"], mark["step"]) == (6, 11, 1)
    assert mark["most_blamed_step"] == 1 and mark["blame_hit"] is True
    assert first_wrong_mark(record, _checker_for("nowhere")) is None


def test_only_testbed_responses_are_checked_and_a_checker_error_leaves_the_response_unmarked() -> None:
    records = [_testbed_record(), _testbed_record() | {"data_source": "math"}, _testbed_record()]
    records[2]["tokens"] = ["boom"]

    def checker(response: str) -> FakeCheck:
        if response == "boom":
            raise ValueError("unreadable")
        return _checker_for("3 + 4")(response)

    assert annotate_first_wrong(records, checker) == 1
    assert records[0]["first_wrong"]["step"] == 0 and records[0]["first_wrong"]["blame_hit"] is False
    assert "first_wrong" not in records[1] and "first_wrong" not in records[2]


def test_the_testbed_step_checker_marks_the_first_wrong_equation_of_a_dumped_response() -> None:
    from recipe.acpo.testbed.slips import TESTBED_DATA_SOURCES
    from recipe.acpo.testbed.task import DATA_SOURCE

    assert DATA_SOURCE in TESTBED_DATA_SOURCES
    tokens = ["First", ",", " 16", " -", " 11", " =", " 5", ".\n", "Then", ",", " 5", " *", " 3", " =", " 16", ".\n"]
    tokens += ["Answer", ":", " 16"]
    record = {
        "data_source": DATA_SOURCE,
        "tokens": tokens,
        "boundaries": [0, 8, 16, 19],
        "steps": [{"a_attr": 0.2}, {"a_attr": -0.6}, {"a_attr": -0.1}],
    }
    assert annotate_first_wrong([record]) == 1
    mark = record["first_wrong"]
    assert mark["text"] == "5 * 3 = 16"
    assert (mark["token_start"], mark["token_end"], mark["step"], mark["blame_hit"]) == (10, 15, 1, True)


def test_the_validation_panel_plots_the_mean_over_samples_not_verls_best_maj_and_std() -> None:
    panel = next(p for p in PANELS if p.title == "Validation accuracy")
    keys = {
        "val-core/arithmetic_steps/acc/mean@2",
        "val-core/arithmetic_steps/acc/best@2/mean",
        "val-core/arithmetic_steps/acc/best@2/std",
        "val-core/arithmetic_steps/acc/maj@2/mean",
        "val-core/math500/acc/mean@1",
        "val-aux/arithmetic_steps/reward/mean@2",
        "critic/score/mean",
    }
    assert panel.present_lines(keys) == [
        ("val-core/arithmetic_steps/acc/mean@2", "arithmetic_steps/acc/mean@2"),
        ("val-core/math500/acc/mean@1", "math500/acc/mean@1"),
    ]
