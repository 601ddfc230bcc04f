"""The data schema shared by training and evaluation: the prompt template, the row builder and the checker.

Every file this package writes is a parquet in the schema verl's ``RLHFDataset`` reads::

    data_source   str                                    e.g. "math_dapo", "aime2024" (verl groups metrics by it)
    prompt        list<struct<content: str, role: str>>  one user message: PROMPT_TEMPLATE around the problem
    ability       str                                    "MATH"
    reward_model  struct<ground_truth: str, style: str>  the reference answer, read by data_prep.ground_truth's rule
    extra_info    struct<index: str, raw_problem: str, split: str, ...>
                  (+ ``pass_rate`` when the input had one, + per-benchmark fields such as MATH-500's ``subject``)

The prompt template is DAPO's, used verbatim for training (DAPO-Math-17k, synthetic arithmetic) and for every
benchmark, so that evaluation measures the format the policy was trained on.

``check_data_files`` is what the training entry point runs on its data files before Ray starts; ``python -m
data_prep.check`` runs it from the command line. Row numbers in every message are 0-based.
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.ground_truth import ground_truth_problem

PROMPT_TEMPLATE = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{problem}\n\n"
    'Remember to put your answer on its own line after "Answer:".'
)
PROMPT_PREFIX, PROMPT_SUFFIX = PROMPT_TEMPLATE.split("{problem}")
ABILITY = "MATH"
REWARD_STYLE = "rule"
REQUIRED_COLUMNS = ("data_source", "prompt", "reward_model")
CHAT_ROLES = frozenset({"system", "user", "assistant"})
# extra_info fields with a fixed type whatever the values (a column of only nulls would otherwise be typed null).
EXTRA_INFO_TYPES: dict[str, pa.DataType] = {
    "index": pa.string(),
    "raw_problem": pa.string(),
    "split": pa.string(),
    "pass_rate": pa.float64(),
}
PROMPT_TYPE = pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))
REWARD_MODEL_TYPE = pa.struct([("ground_truth", pa.string()), ("style", pa.string())])


class DataError(ValueError):
    """Bad input data; the message names the file and, where it applies, the row."""


class DataCheckError(DataError):
    """A data file fails the schema check (``check_data_files``)."""


# ----------------------------------------------------------------------------------------------------------------
# Prompts and rows
# ----------------------------------------------------------------------------------------------------------------


def render_prompt(problem: str) -> str:
    """The user message for ``problem``: PROMPT_TEMPLATE, identical for training and evaluation."""
    return PROMPT_PREFIX + problem + PROMPT_SUFFIX


def extract_problem(content: str) -> str | None:
    """The problem inside a templated prompt (inverse of ``render_prompt``), or None if ``content`` is not templated.

    Leading and trailing white space around the whole message is tolerated.
    """
    text = content.strip()
    if len(text) < len(PROMPT_PREFIX) + len(PROMPT_SUFFIX):
        return None
    if not (text.startswith(PROMPT_PREFIX) and text.endswith(PROMPT_SUFFIX)):
        return None
    return text[len(PROMPT_PREFIX) : len(text) - len(PROMPT_SUFFIX)]


def normalise_problem(problem: str) -> str:
    """The key two problems are duplicates under: Unicode NFKC, white space runs collapsed, ends stripped.

    Case is kept: in mathematics ``X`` and ``x`` are different names.
    """
    return " ".join(unicodedata.normalize("NFKC", problem).split())


def build_row(
    data_source: str,
    problem: str,
    ground_truth: str,
    index: str,
    split: str,
    extra_info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One row of verl's RL schema: ``problem`` rendered with PROMPT_TEMPLATE as a single user message.

    ``extra_info`` adds fields after ``index``, ``raw_problem`` and ``split`` (e.g. ``pass_rate``, ``subject``).
    """
    info: dict[str, Any] = {"index": index, "raw_problem": problem, "split": split}
    if extra_info:
        clash = set(info) & set(extra_info)
        if clash:
            raise ValueError(f"extra_info may not redefine {sorted(clash)}")
        info.update(extra_info)
    return {
        "data_source": data_source,
        "prompt": [{"content": render_prompt(problem), "role": "user"}],
        "ability": ABILITY,
        "reward_model": {"ground_truth": ground_truth, "style": REWARD_STYLE},
        "extra_info": info,
    }


def rows_to_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Rows from ``build_row`` as an arrow table with the schema's types (extra_info fields typed per column)."""
    if not rows:
        raise ValueError("no rows to write")
    info_names = list(rows[0]["extra_info"])
    for number, row in enumerate(rows):
        if list(row["extra_info"]) != info_names:
            raise ValueError(f"row {number}: extra_info fields {list(row['extra_info'])} differ from {info_names}")
    info_arrays = [
        pa.array([row["extra_info"][name] for row in rows], type=EXTRA_INFO_TYPES.get(name)) for name in info_names
    ]
    return pa.table(
        {
            "data_source": pa.array([row["data_source"] for row in rows], type=pa.string()),
            "prompt": pa.array([row["prompt"] for row in rows], type=PROMPT_TYPE),
            "ability": pa.array([row["ability"] for row in rows], type=pa.string()),
            "reward_model": pa.array([row["reward_model"] for row in rows], type=REWARD_MODEL_TYPE),
            "extra_info": pa.StructArray.from_arrays(info_arrays, names=info_names),
        }
    )


def write_rows(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write ``rows`` to the parquet ``path`` (parent folders created)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(rows_to_table(rows), out)
    return out


# ----------------------------------------------------------------------------------------------------------------
# The check
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowProblem:
    """One bad row: its 0-based number, its id (when it has one) and what is wrong."""

    row: int
    index: str | None
    reason: str

    def describe(self, path: str | Path) -> str:
        where = f"{path}, row {self.row}" + (f" (id {self.index})" if self.index is not None else "")
        return f"{where}: {self.reason}"


@dataclass
class CheckReport:
    """What ``validate_rows`` found in one file: counts for the summary and the bad rows."""

    path: str
    num_rows: int
    rows_per_source: dict[str, int] = field(default_factory=dict)
    num_unique_ground_truths: int = 0
    rows_with_template: int = 0
    rows_with_pass_rate: int = 0
    prompt_chars: tuple[int, float, int] = (0, 0.0, 0)  # min, mean, max over the user messages
    problems: list[RowProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self, max_problems: int = 10) -> str:
        low, mean, high = self.prompt_chars
        sources = ", ".join(f"{name}: {count}" for name, count in sorted(self.rows_per_source.items()))
        lines = [
            f"{self.path}: {self.num_rows} rows, {'OK' if self.ok else f'{len(self.problems)} bad row(s)'}",
            f"  data_source: {sources or '-'}",
            f"  unique ground truths: {self.num_unique_ground_truths}",
            f"  prompts in the shared template: {self.rows_with_template}/{self.num_rows}",
            f"  rows with extra_info.pass_rate: {self.rows_with_pass_rate}",
            f"  prompt characters: min {low}, mean {mean:.0f}, max {high}",
        ]
        if self.rows_with_template < self.num_rows:
            lines.append(
                f"  warning: {self.num_rows - self.rows_with_template} prompt(s) are not in the shared template "
                "(data_prep.schema.PROMPT_TEMPLATE): training and evaluation formats may differ"
            )
        lines += [f"  bad: {problem.describe(self.path)}" for problem in self.problems[:max_problems]]
        if len(self.problems) > max_problems:
            lines.append(f"  ... and {len(self.problems) - max_problems} more bad row(s)")
        return "\n".join(lines)


def _as_list(value: Any) -> list[Any] | None:
    """A list value as read back from parquet (pandas gives numpy arrays for list columns), or None."""
    if isinstance(value, list | tuple):
        return list(value)
    if hasattr(value, "tolist") and getattr(value, "ndim", 0) == 1:
        return value.tolist()
    return None


def _prompt_problem(prompt: Any) -> tuple[str | None, str | None]:
    """(the last user message's content, None) or (None, what is wrong with ``prompt``)."""
    messages = _as_list(prompt)
    if messages is None:
        return None, f"prompt is a {type(prompt).__name__}, not a list of chat messages"
    if not messages:
        return None, "prompt is empty (no messages)"
    for message in messages:
        if not isinstance(message, Mapping) or not isinstance(message.get("content"), str):
            return None, f"prompt message {message!r} is not a {{'role', 'content'}} pair of strings"
        if message.get("role") not in CHAT_ROLES:
            return None, f"prompt message role {message.get('role')!r} is not one of {sorted(CHAT_ROLES)}"
    user_contents = [message["content"] for message in messages if message["role"] == "user"]
    if not user_contents or not user_contents[-1].strip():
        return None, "prompt is empty (no user message with content)"
    return user_contents[-1], None


def _pass_rate_problem(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        return f"extra_info.pass_rate {value!r} is not a number in [0, 1]"
    return None


def validate_rows(df: pd.DataFrame, path: str | Path) -> CheckReport:
    """Check every row of ``df`` (a file in this schema, read from ``path``) and count what the summary shows.

    A row is bad when its data_source is not a non-empty string, its prompt is not a list of chat messages with a
    non-empty user message, its ground truth is not a string math-verify parses, its ``extra_info.index`` repeats an
    earlier row's, or its ``extra_info.pass_rate`` is not in [0, 1]. Raises DataCheckError for missing columns.
    """
    missing = [column for column in REQUIRED_COLUMNS if column not in df.columns]
    if missing:
        raise DataCheckError(
            f"{path}: missing column(s) {missing}; found {list(df.columns)}; verl's RL schema needs "
            f"{list(REQUIRED_COLUMNS)} (write the file with the data_prep tools)"
        )
    report = CheckReport(path=str(path), num_rows=len(df))
    infos = df["extra_info"].tolist() if "extra_info" in df.columns else [None] * len(df)
    first_row_of_index: dict[str, int] = {}
    sources: Counter[str] = Counter()
    ground_truths: set[str] = set()
    lengths: list[int] = []
    for row, (source, prompt, reward_model, info) in enumerate(
        zip(df["data_source"].tolist(), df["prompt"].tolist(), df["reward_model"].tolist(), infos)
    ):
        info = info if isinstance(info, Mapping) else {}
        index = info.get("index")
        index = None if index is None else str(index)
        reasons: list[str] = []
        if isinstance(source, str) and source:
            sources[source] += 1
        else:
            reasons.append(f"data_source {source!r} is not a non-empty string")
        content, prompt_reason = _prompt_problem(prompt)
        if prompt_reason:
            reasons.append(prompt_reason)
        else:
            lengths.append(len(content))
            problem = extract_problem(content)
            report.rows_with_template += problem is not None and render_prompt(problem) == content.strip()
        ground_truth = reward_model.get("ground_truth") if isinstance(reward_model, Mapping) else None
        if not isinstance(reward_model, Mapping):
            reasons.append(f"reward_model {reward_model!r} is not a struct with a ground_truth")
        elif answer_reason := ground_truth_problem(ground_truth):
            reasons.append(answer_reason)
        else:
            ground_truths.add(ground_truth)
        if index is not None:
            if index in first_row_of_index:
                reasons.append(f"duplicate id {index!r} (first at row {first_row_of_index[index]})")
            else:
                first_row_of_index[index] = row
        pass_rate = info.get("pass_rate")
        if pass_rate_reason := _pass_rate_problem(pass_rate):
            reasons.append(pass_rate_reason)
        elif pass_rate is not None and not (isinstance(pass_rate, float) and math.isnan(pass_rate)):
            report.rows_with_pass_rate += 1
        if reasons:
            report.problems.append(RowProblem(row=row, index=index, reason="; ".join(reasons)))
    report.rows_per_source = dict(sources)
    report.num_unique_ground_truths = len(ground_truths)
    if lengths:
        report.prompt_chars = (min(lengths), sum(lengths) / len(lengths), max(lengths))
    return report


def check_parquet(path: str | Path) -> CheckReport:
    """Read the parquet ``path`` and validate every row (``validate_rows``); the report holds the summary.

    Raises DataCheckError when the file is missing, not a readable parquet file, empty or lacks a column; bad rows
    are listed in the report (``report.ok`` is False), not raised.
    """
    file = Path(path)
    if not file.is_file():
        raise DataCheckError(f"{file}: no such file")
    try:
        table = pq.read_table(file)
    except Exception as err:  # pyarrow raises several types for a file that is not parquet
        raise DataCheckError(f"{file}: not a readable parquet file ({type(err).__name__}: {err})") from err
    if table.num_rows == 0:
        raise DataCheckError(f"{file}: the file has no rows")
    return validate_rows(table.to_pandas(), file)


def check_data_files(paths: Iterable[str | Path]) -> None:
    """Check each parquet in ``paths``; raise one DataCheckError naming every failing file and its first bad rows.

    The training entry point calls this on its train and validation files before Ray starts.
    """
    failures: list[str] = []
    for path in paths:
        try:
            report = check_parquet(path)
        except DataCheckError as err:
            failures.append(str(err))
            continue
        if not report.ok:
            shown = report.problems[:5]
            more = len(report.problems) - len(shown)
            failures += [problem.describe(report.path) for problem in shown]
            if more:
                failures.append(f"{report.path}: ... and {more} more bad row(s) (python -m data_prep.check lists them)")
    if failures:
        raise DataCheckError("data check failed:\n  " + "\n  ".join(failures))
