"""Validation and de-duplication shared by the data tools, vectorised so that 1.79M rows take seconds.

Each tool turns its input into ``RowBatch``es (the problem text, ground truth, id and optional pass rate of every
row, plus what was wrong with a row while reading it). ``RowCollector`` hashes the texts and ground truths batch by
batch (memory grows with the number of *distinct* prompts, not rows), then ``finish`` does the per-value work once
per distinct value (template extraction, normalisation, math-verify), broadcasts it back to rows with numpy, drops
bad rows or raises, de-duplicates by normalised problem keeping the first occurrence, and checks ids.

Row numbers in messages are 0-based within their file.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from data_prep.ground_truth import ground_truth_problem
from data_prep.schema import DataError, build_row, extract_problem, normalise_problem

T = TypeVar("T")
MAX_ROWS_IN_ERROR = 10
MAX_IDS_LISTED = 50


class Reason(IntEnum):
    """Why a row is bad (0: it is not). The order is the priority when a row has several problems."""

    OK = 0
    MALFORMED_ROW = 1
    PROMPT_SHAPE = 2
    EMPTY_PROMPT = 3
    NOT_TEMPLATED = 4
    NON_STRING_PROBLEM = 5
    NULL_ANSWER = 6
    EMPTY_ANSWER = 7
    NON_STRING_ANSWER = 8
    NON_INTEGER_ANSWER = 9
    BAD_ANSWER = 10
    MISSING_ID = 11
    BAD_PASS_RATE = 12
    DUPLICATE_ID = 13


REASON_TEXT = {
    Reason.MALFORMED_ROW: "malformed row (not a JSON object)",
    Reason.PROMPT_SHAPE: "prompt is not a single user chat message",
    Reason.EMPTY_PROMPT: "empty prompt (no problem text)",
    Reason.NOT_TEMPLATED: "prompt does not follow the DAPO prompt template",
    Reason.NON_STRING_PROBLEM: "problem is not a string",
    Reason.NULL_ANSWER: "answer is missing (null)",
    Reason.EMPTY_ANSWER: "answer is empty",
    Reason.NON_STRING_ANSWER: "answer is not a string",
    Reason.NON_INTEGER_ANSWER: "answer is a number that is not an integer",
    Reason.BAD_ANSWER: "answer cannot be parsed by the reward (math-verify)",
    Reason.MISSING_ID: "id is missing",
    Reason.BAD_PASS_RATE: "extra_info.pass_rate is not a number in [0, 1]",
    Reason.DUPLICATE_ID: "duplicate id",
}


def _disabled(enabled: bool | None) -> bool:
    return (not sys.stderr.isatty()) if enabled is None else not enabled


def progress(iterable: Iterable[T], enabled: bool | None, **kwargs: Any) -> Iterator[T]:
    """A tqdm bar on stderr over ``iterable``; ``enabled=None`` shows it only when stderr is a terminal."""
    return iter(tqdm(iterable, disable=_disabled(enabled), **kwargs))


def progress_bar(total: int, enabled: bool | None, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr advanced by hand (``bar.update(n)``); shown as ``progress`` decides."""
    return tqdm(total=total, disable=_disabled(enabled), **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Per-value coercions shared by the readers
# ----------------------------------------------------------------------------------------------------------------


def coerce_id(value: Any) -> str | None:
    """An id as a string (ints are accepted: some sets number their rows), or None when missing."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float):
        return None if math.isnan(value) or not value.is_integer() else str(int(value))
    return str(value) if isinstance(value, str | int) and str(value).strip() else None


def coerce_pass_rate(value: Any) -> tuple[float, bool]:
    """(the pass rate, NaN when absent; whether it is valid): a number in [0, 1] or null."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return math.nan, True
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        return math.nan, False
    return float(value), True


# ----------------------------------------------------------------------------------------------------------------
# Rows in, rows out
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class RowBatch:
    """Consecutive rows of one input file, reduced to what the pipeline needs.

    ``text`` is the prompt's content (templated inputs) or the raw problem, null where the row has none;
    ``ground_truth`` the reference answer as a string, null where absent or already flagged; ``ids`` null where
    missing; ``reasons`` what reading found wrong (``Reason``, 0 = nothing); ``details`` optional words per bad row
    (batch-relative row number); ``pass_rate`` NaN where absent (None: the input has no pass rates); ``extra``
    per-row extra_info fields to carry to the output.
    """

    text: pa.Array | pa.ChunkedArray
    ground_truth: pa.Array | pa.ChunkedArray
    ids: pa.Array | pa.ChunkedArray
    reasons: np.ndarray
    details: dict[int, str] = field(default_factory=dict)
    pass_rate: np.ndarray | None = None
    extra: dict[str, list[Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.reasons)


@dataclass(frozen=True)
class BadRow:
    """A bad input row: where it is, its id, the kind of problem (``REASON_TEXT``) and the full description."""

    file: str
    row: int
    index: str | None
    kind: str
    reason: str

    def describe(self) -> str:
        where = f"{self.file}, row {self.row}" + (f" (id {self.index})" if self.index is not None else "")
        return f"{where}: {self.reason}"


@dataclass
class Prepared:
    """The rows kept (input order), with what the output needs, and the counts the tools print."""

    problems: list[str]
    ground_truths: list[str]
    ids: list[str]
    pass_rates: list[float | None] | None
    extra: dict[str, list[Any]]
    rows_read: int
    duplicates_dropped: int
    bad_rows: list[BadRow]
    conflicting_answers: list[str]  # ids of kept rows whose duplicates carry another ground truth

    def __len__(self) -> int:
        return len(self.problems)

    def extra_info(self, position: int) -> dict[str, Any]:
        """The extra_info fields of kept row ``position`` beyond index, raw_problem and split."""
        info = {name: values[position] for name, values in self.extra.items()}
        if self.pass_rates is not None:
            info["pass_rate"] = self.pass_rates[position]
        return info

    def rows(self, data_source: str, positions: Sequence[int], split: str) -> list[dict[str, Any]]:
        """Output rows (``schema.build_row``) for the kept rows at ``positions``."""
        return [
            build_row(
                data_source, self.problems[p], self.ground_truths[p], self.ids[p], split, extra_info=self.extra_info(p)
            )
            for p in positions
        ]

    def count_lines(self, rows_written: int) -> list[str]:
        """The counts every tool prints: rows read, bad rows, duplicates dropped, rows written."""
        lines = [
            f"rows read:          {self.rows_read}",
            f"bad rows skipped:   {len(self.bad_rows)}",
            f"duplicates dropped: {self.duplicates_dropped}",
            f"rows written:       {rows_written}",
        ]
        if self.bad_rows:
            by_reason = Counter(bad.kind for bad in self.bad_rows)
            lines += [f"  bad: {count} x {reason}" for reason, count in by_reason.most_common()]
            ids = [bad.index if bad.index is not None else f"{bad.file}#row{bad.row}" for bad in self.bad_rows]
            shown = ", ".join(ids[:MAX_IDS_LISTED])
            more = f" ... and {len(ids) - MAX_IDS_LISTED} more (--bad-rows-out FILE lists them all)"
            lines.append(f"  skipped ids: {shown}{more if len(ids) > MAX_IDS_LISTED else ''}")
        if self.conflicting_answers:
            shown = ", ".join(self.conflicting_answers[:MAX_IDS_LISTED])
            lines.append(
                f"warning: {len(self.conflicting_answers)} problem(s) have duplicates with another ground truth; "
                f"the first occurrence's is kept (ids: {shown})"
            )
        return lines


def split_train_val(count: int, val_size: int, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) positions among ``count`` rows: ``val_size`` drawn with ``seed``, both in input order."""
    if val_size < 0:
        raise DataError(f"--val-size {val_size} is negative")
    if val_size >= count and val_size > 0:
        raise DataError(f"--val-size {val_size} leaves no training rows out of {count}")
    chosen = np.zeros(count, dtype=bool)
    chosen[np.random.default_rng(seed).permutation(count)[:val_size]] = True
    return np.flatnonzero(~chosen).tolist(), np.flatnonzero(chosen).tolist()


class RowCollector:
    """Accumulates ``RowBatch``es, then validates and de-duplicates them (``finish``).

    ``templated``: the texts are prompts in the DAPO template (the problem is extracted from them) rather than
    raw problems.
    """

    def __init__(self, templated: bool, show_progress: bool | None = None) -> None:
        self.templated = templated
        self.show_progress = show_progress
        self._texts: list[pa.Array] = []  # distinct texts, in order of first appearance
        self._answers: list[pa.Array] = []  # distinct ground truths, likewise
        self._text_rows: list[np.ndarray] = []
        self._answer_rows: list[np.ndarray] = []
        self._ids: list[pa.Array] = []
        self._reasons: list[np.ndarray] = []
        self._details: dict[int, str] = {}
        self._pass_rates: list[np.ndarray] = []
        self._has_pass_rate = False
        self._extra: dict[str, list[Any]] = {}
        self._files: list[str] = []
        self._file_starts: list[int] = []
        self._rows = 0

    @staticmethod
    def _encode(values: pa.Array | pa.ChunkedArray, known: list[pa.Array]) -> np.ndarray:
        """Per-row integer codes of ``values`` among the distinct values seen so far (-1 for null).

        ``known`` holds the distinct values in order of first appearance, as arrow chunks, and grows with the new
        ones. All hashing happens in arrow, once per row (``dictionary_encode``) and once per distinct value.
        """
        if len(values) == 0:
            return np.zeros(0, dtype=np.int64)
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        encoded = pc.dictionary_encode(values.cast(pa.string()))
        distinct = encoded.dictionary
        seen = pa.chunked_array(known, type=pa.string())
        mapping = pc.fill_null(pc.index_in(distinct, value_set=seen), -1).to_numpy().astype(np.int64)
        new = mapping < 0
        mapping[new] = len(seen) + np.arange(int(new.sum()))
        if new.any():
            known.append(distinct.filter(pa.array(new)))
        codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        valid = codes >= 0
        codes[valid] = mapping[codes[valid]]
        return codes

    def add(self, batch: RowBatch, file: str) -> None:
        """Take in the rows of ``batch``, which continue (or start) the rows of ``file``."""
        if not self._files or self._files[-1] != file:
            self._files.append(file)
            self._file_starts.append(self._rows)
        self._text_rows.append(self._encode(batch.text, self._texts))
        self._answer_rows.append(self._encode(batch.ground_truth, self._answers))
        ids = batch.ids.combine_chunks() if isinstance(batch.ids, pa.ChunkedArray) else batch.ids
        self._ids.append(ids.cast(pa.string()))
        self._reasons.append(np.asarray(batch.reasons, dtype=np.uint8))
        self._details.update({self._rows + row: text for row, text in batch.details.items()})
        if batch.pass_rate is not None:
            self._has_pass_rate = True
        self._pass_rates.append(batch.pass_rate if batch.pass_rate is not None else np.full(len(batch), np.nan))
        missing = [name for name in self._extra if name not in batch.extra]
        if missing and len(batch):
            raise ValueError(f"{file}: extra_info fields {missing} missing from a batch")
        for name, values in batch.extra.items():
            if name not in self._extra and self._rows:
                raise ValueError(f"{file}: extra_info field {name!r} appears after the first batch")
            self._extra.setdefault(name, []).extend(values)
        self._rows += len(batch)

    def _where(self, row: int) -> tuple[str, int]:
        number = int(np.searchsorted(self._file_starts, row, side="right")) - 1
        return self._files[number], row - self._file_starts[number]

    def _describe_texts(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Per distinct text: its reason code, its normalised-problem code, and the problem itself."""
        reasons = np.zeros(len(texts), dtype=np.uint8)
        norm_codes = np.zeros(len(texts), dtype=np.int64)
        problems: list[str] = []
        norm_index: dict[str, int] = {}
        for code, text in enumerate(progress(texts, self.show_progress, desc="distinct prompts", unit="prompt")):
            problem = extract_problem(text) if self.templated else text
            if problem is None:
                reasons[code] = Reason.EMPTY_PROMPT if not text.strip() else Reason.NOT_TEMPLATED
                problem = ""
            elif not problem.strip():
                reasons[code] = Reason.EMPTY_PROMPT
            problems.append(problem)
            norm_codes[code] = norm_index.setdefault(normalise_problem(problem), len(norm_index))
        return reasons, norm_codes, problems

    def _describe_answers(self, answers: list[str]) -> tuple[np.ndarray, list[str | None]]:
        """Per distinct ground truth: its reason code and, when bad, what math-verify or the check said."""
        reasons = np.zeros(len(answers), dtype=np.uint8)
        details: list[str | None] = []
        for code, answer in enumerate(progress(answers, self.show_progress, desc="distinct answers", unit="answer")):
            problem = ground_truth_problem(answer)
            if problem is None:
                reasons[code] = Reason.OK
            else:
                reasons[code] = Reason.EMPTY_ANSWER if not answer.strip() else Reason.BAD_ANSWER
            details.append(problem)
        return reasons, details

    def finish(self, skip_bad: bool) -> Prepared:
        """Validate, de-duplicate and check ids; raise DataError on bad rows unless ``skip_bad``."""
        text_rows = np.concatenate(self._text_rows) if self._text_rows else np.zeros(0, dtype=np.int64)
        answer_rows = np.concatenate(self._answer_rows) if self._answer_rows else np.zeros(0, dtype=np.int64)
        reasons = np.concatenate(self._reasons) if self._reasons else np.zeros(0, dtype=np.uint8)
        ids = pa.chunked_array(self._ids, type=pa.string())
        answers = pa.chunked_array(self._answers, type=pa.string()).to_pylist()
        text_reasons, text_norm, problems = self._describe_texts(
            pa.chunked_array(self._texts, type=pa.string()).to_pylist()
        )
        answer_reasons, answer_details = self._describe_answers(answers)

        # Later checks fill only rows that earlier ones left clean, so each row reports its first problem.
        def flag(mask: np.ndarray, codes: np.ndarray | int) -> None:
            fill = (reasons == Reason.OK) & mask
            reasons[fill] = codes[fill] if isinstance(codes, np.ndarray) else codes

        has_text = text_rows >= 0
        flag(~has_text, Reason.EMPTY_PROMPT)
        flag(has_text, text_reasons[np.where(has_text, text_rows, 0)] if len(text_reasons) else 0)
        has_answer = answer_rows >= 0
        flag(~has_answer, Reason.NULL_ANSWER)
        flag(has_answer, answer_reasons[np.where(has_answer, answer_rows, 0)] if len(answer_reasons) else 0)
        flag(pc.is_null(ids).to_numpy(zero_copy_only=False), Reason.MISSING_ID)

        good = np.flatnonzero(reasons == Reason.OK)
        _, first_positions, group = np.unique(text_norm[text_rows[good]], return_index=True, return_inverse=True)
        first_of_row = good[first_positions][group]
        kept = np.sort(good[first_positions])
        duplicates = len(good) - len(kept)
        conflicting_rows = np.unique(first_of_row[answer_rows[good] != answer_rows[first_of_row]])

        details = dict(self._details)
        first_row_of_id: dict[str, int] = {}
        duplicate_id_rows: list[int] = []
        for row, index in zip(kept.tolist(), ids.take(pa.array(kept)).to_pylist()):
            if index in first_row_of_id:
                duplicate_id_rows.append(row)
                file, number = self._where(first_row_of_id[index])
                details[row] = f"also the id of {file}, row {number}"
            else:
                first_row_of_id[index] = row
        if duplicate_id_rows:
            reasons[duplicate_id_rows] = Reason.DUPLICATE_ID
            kept = kept[reasons[kept] == Reason.OK]

        bad_rows = self._bad_rows(reasons, ids, details, answer_rows, answer_details)
        if bad_rows and not skip_bad:
            shown = "\n  ".join(bad.describe() for bad in bad_rows[:MAX_ROWS_IN_ERROR])
            more = len(bad_rows) - MAX_ROWS_IN_ERROR
            raise DataError(
                f"{len(bad_rows)} bad row(s):\n  {shown}"
                + (f"\n  ... and {more} more" if more > 0 else "")
                + "\nFix the input, or pass --skip-bad to skip such rows (they are counted and their ids listed)."
            )
        kept_list = kept.tolist()
        pass_rates = None
        if self._has_pass_rate:
            rates = np.concatenate(self._pass_rates)[kept]
            pass_rates = [None if math.isnan(rate) else float(rate) for rate in rates.tolist()]
        return Prepared(
            problems=[problems[code] for code in text_rows[kept].tolist()],
            ground_truths=[answers[code] for code in answer_rows[kept].tolist()],
            ids=ids.take(pa.array(kept, type=pa.int64())).to_pylist(),
            pass_rates=pass_rates,
            extra={name: [values[row] for row in kept_list] for name, values in self._extra.items()},
            rows_read=self._rows,
            duplicates_dropped=duplicates,
            bad_rows=bad_rows,
            conflicting_answers=[str(index) for index in ids.take(pa.array(conflicting_rows)).to_pylist()],
        )

    def _bad_rows(
        self,
        reasons: np.ndarray,
        ids: pa.ChunkedArray,
        details: dict[int, str],
        answer_rows: np.ndarray,
        answer_details: list[str | None],
    ) -> list[BadRow]:
        rows = np.flatnonzero(reasons != Reason.OK)
        bad_ids = ids.take(pa.array(rows, type=pa.int64())).to_pylist()
        bad: list[BadRow] = []
        for row, index in zip(rows.tolist(), bad_ids):
            reason = Reason(int(reasons[row]))
            kind = text = REASON_TEXT[reason]
            if reason == Reason.BAD_ANSWER:
                text = answer_details[answer_rows[row]] or text
            elif row in details:
                text = f"{text}: {details[row]}"
            file, number = self._where(row)
            bad.append(BadRow(file=file, row=number, index=index, kind=kind, reason=text))
        return bad
