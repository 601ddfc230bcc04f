"""Labelled reasoning traces (``data_prep.labelled_traces``): reading refuses bad rows by line, writing round-trips,
generation is deterministic and its labels are right (checked equation by equation), and the token inputs start
each step on a token boundary."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest

from data_prep.labelled_traces import (
    SHAPE_NAMES,
    LabelledTrace,
    generate_traces,
    main,
    read_labelled_traces,
    trace_token_inputs,
    write_labelled_traces,
)
from recipe.acpo.testbed.step_check import check_steps

VALID = {
    "question": "What is 2 + 3?",
    "steps": ["2 + 3 = 5.", "The answer is 5."],
    "target": "5",
    "mistake_index": None,
}
_INTEGER = re.compile(r"-?\d+")


_DROP = object()  # as a value for _line: leave the key out


def _line(**changes: Any) -> str:
    """A JSONL line: the valid row with ``changes``."""
    row = {**VALID, **changes}
    return json.dumps({k: v for k, v in row.items() if v is not _DROP})


@pytest.fixture(scope="module")
def traces() -> list[LabelledTrace]:
    return generate_traces(300, seed=0) + generate_traces(100, seed=7)


# --- reading: every refusal names the file and the line ----------------------------------------------------------

BAD_LINES = {
    "invalid json": ('{"question": "q", ', "invalid JSON"),
    "not an object": ("[1, 2]", "expected a JSON object"),
    "a string": ('"hello"', "expected a JSON object"),
    "missing key": (_line(target=_DROP), "missing key 'target'"),
    "missing keys": (_line(target=_DROP, steps=_DROP), "missing keys"),
    "unknown key": (_line(source="x"), "unknown key 'source'"),
    "duplicate key": ('{"question": "a", "question": "b"}', "duplicate key 'question'"),
    "empty question": (_line(question=""), "'question' must be a non-empty string"),
    "blank question": (_line(question="  "), "'question' must be a non-empty string"),
    "question not a string": (_line(question=3), "'question' must be a non-empty string"),
    "empty target": (_line(target=""), "'target' must be a non-empty string"),
    "integer target": (_line(target=5), "'target' must be a non-empty string"),
    "null target": (_line(target=None), "'target' must be a non-empty string"),
    "steps a string": (_line(steps="2 + 3 = 5"), "'steps' must be a non-empty list"),
    "no steps": (_line(steps=[]), "'steps' must be a non-empty list"),
    "empty step": (_line(steps=["2 + 3 = 5.", ""]), "'steps'[1] must be a non-empty string"),
    "step not a string": (_line(steps=[5]), "'steps'[0] must be a non-empty string"),
    "bool mistake_index": (_line(mistake_index=True), "'mistake_index' must be null or an integer"),
    "float mistake_index": (_line(mistake_index=1.0), "'mistake_index' must be null or an integer"),
    "string mistake_index": (_line(mistake_index="1"), "'mistake_index' must be null or an integer"),
    "mistake_index too big": (_line(mistake_index=2), "'mistake_index' 2 is out of range for 2 steps"),
    "negative mistake_index": (_line(mistake_index=-1), "'mistake_index' -1 is out of range"),
}


@pytest.mark.parametrize("bad_line, reason", BAD_LINES.values(), ids=BAD_LINES.keys())
def test_a_bad_row_is_refused_naming_file_line_and_reason(tmp_path: Path, bad_line: str, reason: str) -> None:
    path = tmp_path / "traces.jsonl"
    path.write_text(f"{_line()}\n\n{bad_line}\n{_line()}\n", encoding="utf-8")
    with pytest.raises(ValueError) as caught:
        read_labelled_traces(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: line 3: "), message
    assert reason in message


def test_invalid_utf8_is_refused_by_line(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    path.write_bytes(_line().encode() + b"\n" + b'{"question": "\xff"}\n')
    with pytest.raises(ValueError, match=r"line 2: not valid UTF-8"):
        read_labelled_traces(path)


def test_every_bad_line_is_listed(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    path.write_text("\n".join([_line(), "{", _line(), _line(mistake_index=5), *["[]"] * 12]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError) as caught:
        read_labelled_traces(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: 14 bad lines:")
    assert "line 2: invalid JSON" in message
    assert "line 4: 'mistake_index' 5 is out of range" in message
    assert "... and 4 more" in message


@pytest.mark.parametrize("content", ["", "\n", "  \n\n \n"], ids=["empty", "newline", "blank lines"])
def test_a_file_without_traces_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=r"empty\.jsonl: no traces"):
        read_labelled_traces(path)


def test_blank_lines_are_skipped_and_lines_are_counted_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    path.write_text(f"\n{_line()}\n  \n{_line(mistake_index=0)}", encoding="utf-8")
    read = read_labelled_traces(path)
    assert [(t.line, t.mistake_index) for t in read] == [(2, None), (4, 0)]
    assert read[0] == LabelledTrace("What is 2 + 3?", ("2 + 3 = 5.", "The answer is 5."), "5", None, 2)


def test_a_file_round_trips(tmp_path: Path) -> None:
    traces = [
        *generate_traces(20, seed=3),
        LabelledTrace("Unicode \u2028 ok? ü", ("a\u2028b = é", "The answer is 1."), "1", 1, 21),
    ]
    path = write_labelled_traces(traces, tmp_path / "sub" / "traces.jsonl")
    assert read_labelled_traces(path) == traces
    assert len(path.read_text(encoding="utf-8").split("\n")) == len(traces) + 1
    assert list(json.loads(path.read_text(encoding="utf-8").split("\n")[0])) == [
        "question",
        "steps",
        "target",
        "mistake_index",
    ]


def test_writing_refuses_an_invalid_trace(tmp_path: Path) -> None:
    bad = LabelledTrace("q", ("s",), "1", 1, 1)
    with pytest.raises(ValueError, match=r"trace 1 \(line 1\).*out of range"):
        write_labelled_traces([bad], tmp_path / "bad.jsonl")
    assert not (tmp_path / "bad.jsonl").exists()


# --- generation ---------------------------------------------------------------------------------------------------


def test_generation_is_deterministic_for_a_seed_and_differs_across_seeds() -> None:
    first = generate_traces(40, seed=0)
    assert first == generate_traces(40, seed=0)
    assert first[:10] == generate_traces(10, seed=0)
    assert [t.question for t in generate_traces(40, seed=1)] != [t.question for t in first]


def test_generated_traces_have_the_documented_shape(traces: list[LabelledTrace]) -> None:
    assert len({t.question for t in traces[:300]}) == 300
    assert [t.line for t in traces[:300]] == list(range(1, 301))
    assert {len(t.steps) for t in traces} == {3, 4, 5, 6}
    assert all(re.fullmatch(r"\d+", t.target) for t in traces)
    with_mistake = sum(t.mistake_index is not None for t in traces)
    assert 0.7 <= with_mistake / len(traces) <= 0.9
    assert len(SHAPE_NAMES) >= 5
    # Several problem shapes occur: the last computing steps open in at least five different ways.
    assert len({t.steps[-2].split()[0] for t in traces}) >= 5


def _equations(step: str) -> list[Any]:
    return list(check_steps(step).equations)


def test_the_labels_match_the_arithmetic(traces: list[LabelledTrace]) -> None:
    for trace in traces:
        equations = [_equations(step) for step in trace.steps]
        wrong = [i for i, found in enumerate(equations) if any(not e.correct for e in found)]
        if trace.mistake_index is None:
            assert wrong == [], trace
            continue
        # Exactly one wrong step, the labelled one: every step before it is right, and every step after it does
        # its own arithmetic right on the wrong value.
        assert wrong == [trace.mistake_index], trace
        assert equations[trace.mistake_index], trace
        wrong_result = equations[trace.mistake_index][0].result
        later = [e for found in equations[trace.mistake_index + 1 :] for e in found]
        assert wrong_result in {e.left for e in later} | {e.right for e in later} or not later, trace
        assert str(wrong_result) in " ".join(trace.steps[trace.mistake_index + 1 :]), trace


def test_the_final_value_differs_from_the_target_iff_there_is_a_mistake(traces: list[LabelledTrace]) -> None:
    for trace in traces:
        assert not _equations(trace.steps[-1]), trace
        stated = _INTEGER.findall(trace.steps[-1])
        assert len(stated) == 1, trace
        last_result = [e for step in trace.steps for e in _equations(step)][-1].result
        assert int(stated[0]) == last_result, trace
        assert (stated[0] != trace.target) == (trace.mistake_index is not None), trace


def test_the_cli_writes_the_traces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "traces.jsonl"
    main([str(out), "--num", "12", "--seed", "5"])
    assert read_labelled_traces(out) == generate_traces(12, seed=5)
    printed = capsys.readouterr().out
    assert f"wrote 12 traces (seed 5) to {out}" in printed
    assert "steps per trace:" in printed


def test_the_committed_data_file_is_the_generated_one() -> None:
    data = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "labelled_arithmetic_traces.jsonl"
    if not data.exists():
        pytest.skip("benchmarks/data/labelled_arithmetic_traces.jsonl is not there")
    assert read_labelled_traces(data) == generate_traces(120, seed=0)


# --- token inputs -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chat_template", [True, False], ids=["chat", "raw"])
def test_steps_start_on_token_boundaries(qwen_tokenizer: Any, traces: list[LabelledTrace], chat_template: bool) -> None:
    tokenizer = qwen_tokenizer
    for trace in traces[:60]:
        tokens = trace_token_inputs(trace, tokenizer, chat_template=chat_template)
        starts = tokens.step_starts
        assert len(starts) == len(trace.steps)
        assert starts[0] == 0
        assert all(a < b for a, b in itertools.pairwise(starts))
        assert starts[-1] < len(tokens.response_ids)
        for index, step in enumerate(trace.steps):
            separator = "\n" if index + 1 < len(trace.steps) else ""
            assert tokenizer.decode(tokens.step_ids(index)) == step + separator
        # With Qwen's byte-level BPE the step-by-step ids are exactly the ids of the joined text.
        joined = "\n".join(trace.steps)
        assert tokens.response_ids == tokenizer(joined, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(tokens.response_ids) == joined
        prompt = tokenizer.decode(tokens.prompt_ids)
        if chat_template:
            assert prompt == f"<|im_start|>user\n{trace.question}<|im_end|>\n<|im_start|>assistant\n"
        else:
            assert prompt == trace.question + "\n"


class _CharTokenizer:
    """A stand-in tokenizer: one id per letter or digit (nothing for other characters), no chat template."""

    chat_template = None

    def __init__(self, bos_token_id: int | None = None) -> None:
        self.bos_token_id = bos_token_id

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = [ord(c) for c in text if c.isalnum()]
        if add_special_tokens and self.bos_token_id is not None:
            ids = [self.bos_token_id, *ids]
        return {"input_ids": ids}


def test_without_a_chat_template_the_prompt_is_the_raw_question() -> None:
    trace = LabelledTrace("Q1?", ("a1", "b"), "1", None, 1)
    tokens = trace_token_inputs(trace, _CharTokenizer(), chat_template=True)
    assert tokens.prompt_ids == [ord("Q"), ord("1")]
    assert tokens.response_ids == [ord("a"), ord("1"), ord("b")]
    assert tokens.step_starts == [0, 2]


def test_a_tokenizer_that_adds_bos_keeps_it_on_the_prompt_only() -> None:
    trace = LabelledTrace("Q?", ("a", "b"), "1", None, 1)
    tokens = trace_token_inputs(trace, _CharTokenizer(bos_token_id=1), chat_template=False)
    assert tokens.prompt_ids == [1, ord("Q")]
    assert tokens.response_ids == [ord("a"), ord("b")]


def test_a_step_without_tokens_is_refused() -> None:
    trace = LabelledTrace("Q?", ("a", "..."), "1", None, 7)
    with pytest.raises(ValueError, match=r"line 7: step 1 \('\.\.\.'\) gives no token"):
        trace_token_inputs(trace, _CharTokenizer(), chat_template=False)
