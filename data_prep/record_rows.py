"""A ``RowBatch`` built row by row from records read from json / jsonl (Python values of any type).

The data tools read parquet column-wise (vectorised, ``data_prep.pipeline``); records from json and jsonl files are
Python values of any shape, so each reader (``data_prep.dapo17k``, ``data_prep.benchmarks``) looks at them one by one
and hands every row's problem text, ground truth, id, raw pass rate and what it found wrong to ``RecordRows``, which
checks the pass rate the same way for both and assembles the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from data_prep.pipeline import Reason, RowBatch, coerce_pass_rate

__all__ = ["RecordRows", "records_have_pass_rate"]


def records_have_pass_rate(records: Sequence[Any]) -> bool:
    """Some record has ``extra_info.pass_rate`` (then the output keeps a pass-rate field for every row)."""
    return any(
        isinstance(record, dict) and isinstance(record.get("extra_info"), dict) and "pass_rate" in record["extra_info"]
        for record in records
    )


class RecordRows:
    """Collects the rows of ``size`` records, in order, into one ``RowBatch``."""

    def __init__(self, size: int, has_pass_rate: bool, extra_fields: Sequence[str] = ()) -> None:
        self.has_pass_rate = has_pass_rate
        self.reasons = np.zeros(size, dtype=np.uint8)
        self.details: dict[int, str] = {}
        self.texts: list[str | None] = []
        self.answers: list[str | None] = []
        self.ids: list[str | None] = []
        self.rates = np.full(size, np.nan)
        self.extra: dict[str, list[Any]] = {name: [] for name in extra_fields}

    def add(
        self,
        text: str | None,
        answer: str | None,
        row_id: str | None,
        raw_pass_rate: Any,
        reason: Reason,
        detail: str | None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """The next row; an invalid pass rate is the row's fault unless reading already found one."""
        row = len(self.texts)
        self.rates[row], rate_ok = coerce_pass_rate(raw_pass_rate)
        if reason == Reason.OK and not rate_ok:
            reason, detail = Reason.BAD_PASS_RATE, repr(raw_pass_rate)
        self.reasons[row] = reason
        if detail:
            self.details[row] = detail
        self.texts.append(text)
        self.answers.append(answer)
        self.ids.append(row_id)
        for name, values in self.extra.items():
            values.append((extra or {}).get(name))

    def batch(self) -> RowBatch:
        return RowBatch(
            text=pa.array(self.texts, type=pa.string()),
            ground_truth=pa.array(self.answers, type=pa.string()),
            ids=pa.array(self.ids, type=pa.string()),
            reasons=self.reasons,
            details=self.details,
            pass_rate=self.rates if self.has_pass_rate else None,
            extra=self.extra,
        )
