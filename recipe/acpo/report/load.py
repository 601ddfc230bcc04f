"""What a run leaves, read for the report: verl's metrics JSONL and the ACPO step dump (``acpo.dump``).

Both readers are tolerant by design: a report is read after (or during) a run, and a run killed mid-write leaves a
truncated last line. Such lines, and any line that is not a JSON object of the expected shape, are skipped and
counted; the report states the counts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recipe.acpo.step_dump import DUMP_FILE_PATTERN

__all__ = [
    "DumpData",
    "MetricsData",
    "find_dump_dir",
    "find_metrics_file",
    "read_dump",
    "read_metrics",
]

# What read_dump needs to draw a response; other fields are optional.
REQUIRED_RECORD_FIELDS = ("global_step", "tokens", "boundaries", "steps", "correct")


@dataclass
class MetricsData:
    """Scalar metrics by training step; lines logged at the same step (training and validation) are merged."""

    path: Path | None = None
    by_step: dict[int, dict[str, float]] = field(default_factory=dict)
    skipped_lines: int = 0

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one metric, in step order, over the steps that logged it."""
        steps = [s for s in sorted(self.by_step) if key in self.by_step[s]]
        return steps, [self.by_step[s][key] for s in steps]

    def keys(self) -> set[str]:
        return {key for values in self.by_step.values() for key in values}


@dataclass
class DumpData:
    """The dumped responses of every step file, in step order."""

    directory: Path | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    files: int = 0
    skipped_lines: int = 0


def _json_lines(path: Path) -> Iterator[tuple[int, Any | None]]:
    """(line number, parsed object or None when the line is not valid JSON); blank lines are ignored."""
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError:
                yield number, None


def _is_metrics_line(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("step"), int) and isinstance(obj.get("data"), dict)


def read_metrics(path: Path) -> MetricsData:
    """Read verl's file logger output (``VERL_FILE_LOGGER_PATH``): one ``{"step": int, "data": {...}}`` per line."""
    metrics = MetricsData(path=path)
    for _, obj in _json_lines(path):
        if not _is_metrics_line(obj):
            metrics.skipped_lines += 1
            continue
        values = metrics.by_step.setdefault(obj["step"], {})
        for key, value in obj["data"].items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                values[str(key)] = float(value)
    return metrics


def _is_dump_record(obj: Any) -> bool:
    return isinstance(obj, dict) and all(key in obj for key in REQUIRED_RECORD_FIELDS)


def read_dump(directory: Path) -> DumpData:
    """Read every ``step_*.jsonl`` under ``directory`` (not recursive), in file-name (= step) order."""
    dump = DumpData(directory=directory)
    for path in sorted(directory.glob(DUMP_FILE_PATTERN)):
        dump.files += 1
        for _, obj in _json_lines(path):
            if _is_dump_record(obj):
                dump.records.append(obj)
            else:
                dump.skipped_lines += 1
    return dump


def _first_line_is_metrics(path: Path) -> bool:
    try:
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            first = handle.readline()
        return _is_metrics_line(json.loads(first))
    except (OSError, json.JSONDecodeError):
        return False


def find_metrics_file(run_dir: Path) -> Path | None:
    """``RUN_DIR/metrics.jsonl``, else the newest ``*.jsonl`` under RUN_DIR whose first line is a verl metrics line."""
    preferred = run_dir / "metrics.jsonl"
    if preferred.is_file():
        return preferred
    candidates = [
        p
        for p in run_dir.rglob("*.jsonl")
        if p.is_file() and not p.name.startswith("step_") and _first_line_is_metrics(p)
    ]
    return max(candidates, key=os.path.getmtime) if candidates else None


def find_dump_dir(run_dir: Path) -> Path | None:
    """``RUN_DIR/acpo_dump``, else the shallowest folder under RUN_DIR holding ``step_*.jsonl`` files."""
    preferred = run_dir / "acpo_dump"
    if preferred.is_dir() and any(preferred.glob(DUMP_FILE_PATTERN)):
        return preferred
    folders = sorted({p.parent for p in run_dir.rglob(DUMP_FILE_PATTERN)}, key=lambda p: (len(p.parts), str(p)))
    return folders[0] if folders else None
