"""Acc@k and Pass@k of a model on benchmarks, from verl's validation dump (``recipe.acpo.evaluate``'s results table).

- Acc@k: the mean accuracy over the k samples of a problem, averaged over the problems (the paper's metric);
- Pass@k: the fraction of problems with at least one correct sample (reported alongside).

One row per benchmark (``data_source``), then the macro average over benchmarks. A sample's accuracy and whether it
is correct follow the rule of ``recipe.acpo.validation.generations`` (its ``acc`` when the scorer reports one, else
its score, in [0, 1]; correct above 0). A sample that verl failed to produce counts as wrong, as in verl's own
validation metrics. The benchmark files are checked and counted here too (:func:`inspect_benchmark`), so that the
table can say how many problems each input held.
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recipe.acpo.validation.command import TAGGING_MANAGER_NAME, ValidationRunError
from recipe.acpo.validation.generations import is_correct, sample_accuracy, sample_location

DATA_SOURCE_FIELD = "data_source"
REQUIRED_COLUMNS = ("data_source", "prompt", "reward_model")


class EvaluationError(ValidationRunError):
    """The evaluation cannot run or its output is inconsistent; the message names the file or setting."""


# --------------------------------------------------------------------------------------------------------------
# The benchmark files
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkFile:
    """A benchmark parquet and how many problems it holds per ``data_source``."""

    path: Path
    problems_per_source: dict[str, int]


def inspect_benchmark(path: str | os.PathLike[str]) -> BenchmarkFile:
    """Check that ``path`` is a parquet in verl's RL schema and count its problems per ``data_source``."""
    import pyarrow.parquet as pq

    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise EvaluationError(f"benchmark file not found: {file}")
    try:
        table = pq.read_table(file, columns=None)
    except Exception as err:  # pyarrow raises several types for a file that is not parquet
        raise EvaluationError(f"benchmark file {file} is not a readable parquet file: {err}") from err
    missing = [column for column in REQUIRED_COLUMNS if column not in table.column_names]
    if missing:
        raise EvaluationError(
            f"benchmark file {file} lacks the column(s) {missing}; verl's RL schema needs {list(REQUIRED_COLUMNS)} "
            "(write it with `python -m data_prep.benchmarks`)"
        )
    if table.num_rows == 0:
        raise EvaluationError(f"benchmark file {file} has no rows")
    sources = table.column(DATA_SOURCE_FIELD).to_pylist()
    counts: dict[str, int] = defaultdict(int)
    for row, source in enumerate(sources):
        if not isinstance(source, str) or not source:
            raise EvaluationError(f"benchmark file {file}, row {row}: data_source is {source!r}, expected a name")
        counts[source] += 1
    return BenchmarkFile(path=file, problems_per_source=dict(counts))


# --------------------------------------------------------------------------------------------------------------
# The results table
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkResult:
    """One row of the results table."""

    benchmark: str
    problems: int
    problems_in_data: int | None
    samples: int
    missing_samples: int
    acc_at_k: float
    pass_at_k: float


@dataclass
class EvaluationResult:
    """The table (one row per benchmark, then the macro average) and the settings that produced it."""

    k: int
    rows: list[BenchmarkResult]
    average_acc_at_k: float
    average_pass_at_k: float
    settings: dict[str, Any] = field(default_factory=dict)
    verl_reported: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "benchmarks": [asdict(row) for row in self.rows],
            "average": {"acc_at_k": self.average_acc_at_k, "pass_at_k": self.average_pass_at_k},
            "settings": self.settings,
            "verl_reported": self.verl_reported,
        }

    def to_markdown(self) -> str:
        k = self.k
        lines = [
            f"| Benchmark | Problems | Acc@{k} (%) | Pass@{k} (%) |",
            "|---|---:|---:|---:|",
        ]
        for row in self.rows:
            lines.append(f"| {row.benchmark} | {row.problems} | {100 * row.acc_at_k:.2f} | {100 * row.pass_at_k:.2f} |")
        lines.append(
            f"| **Average** | {sum(row.problems for row in self.rows)} | **{100 * self.average_acc_at_k:.2f}** "
            f"| {100 * self.average_pass_at_k:.2f} |"
        )
        return "\n".join(lines) + "\n"


def problem_id(sample: dict[str, Any], where: str) -> str:
    """The problem a dumped sample answers: verl keys samples ``{uid}_{session}_{index}``."""
    key = sample.get("uid")
    if not isinstance(key, str) or not key:
        raise EvaluationError(f"{where}: no 'uid' key in the dumped sample")
    parts = key.rsplit("_", 2)
    return parts[0] if len(parts) == 3 else key


def compute_table(
    samples: Sequence[dict[str, Any]],
    k: int,
    expected_problems: dict[str, int] | None = None,
    where: str = "generations",
) -> EvaluationResult:
    """Acc@k and Pass@k per ``data_source`` from dumped samples, and their macro average over benchmarks.

    Each problem is scored over ``k`` samples: one missing from the dump counts as wrong. With
    ``expected_problems`` (problems per data source in the input files) the rows follow the input's order, a
    benchmark without any dumped sample is an error, and one with fewer problems than its file (verl dropped
    overlong prompts) gets a warning; each row records both counts.
    """
    if k < 1:
        raise EvaluationError(f"k must be >= 1, got {k}")
    per_problem: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for index, sample in enumerate(samples):
        location = sample_location(where, index)
        source = sample.get(DATA_SOURCE_FIELD)
        if not isinstance(source, str) or not source:
            raise EvaluationError(
                f"{location}: no '{DATA_SOURCE_FIELD}' in the dumped sample; the run's reward manager must be "
                f"recipe.acpo.validation.tagging_reward_manager.{TAGGING_MANAGER_NAME} (set by recipe.acpo.evaluate)"
            )
        per_problem[source][problem_id(sample, location)].append(sample_accuracy(sample, location))

    names = list(expected_problems) if expected_problems else sorted(per_problem)
    missing_sources = [name for name in names if name not in per_problem]
    if missing_sources:
        raise EvaluationError(f"no generation was dumped for benchmark(s) {missing_sources}")
    unexpected = sorted(set(per_problem) - set(names))
    if unexpected:
        raise EvaluationError(f"the dump holds samples of data sources {unexpected} that no input file has")

    rows = []
    for name in names:
        problems = per_problem[name]
        over = {pid: len(accs) for pid, accs in problems.items() if len(accs) > k}
        if over:
            raise EvaluationError(f"benchmark {name}: more than k={k} samples for problems {over}")
        acc = [sum(accs) / k for accs in problems.values()]
        passed = [any(map(is_correct, accs)) for accs in problems.values()]
        samples_seen = sum(len(accs) for accs in problems.values())
        rows.append(
            BenchmarkResult(
                benchmark=name,
                problems=len(problems),
                problems_in_data=expected_problems[name] if expected_problems else None,
                samples=samples_seen,
                missing_samples=len(problems) * k - samples_seen,
                acc_at_k=sum(acc) / len(acc),
                pass_at_k=sum(passed) / len(passed),
            )
        )
        if expected_problems and len(problems) != expected_problems[name]:
            print(
                f"warning: benchmark {name}: {len(problems)} problems evaluated, {expected_problems[name]} in the "
                "input (overlong prompts filtered by data.filter_overlong_prompts?)",
                file=sys.stderr,
            )
    return EvaluationResult(
        k=k,
        rows=rows,
        average_acc_at_k=sum(row.acc_at_k for row in rows) / len(rows),
        average_pass_at_k=sum(row.pass_at_k for row in rows) / len(rows),
    )


def read_verl_reported(metrics_file: Path, sources: Iterable[str], k: int) -> dict[str, float]:
    """verl's own mean@k per benchmark (``val-core/<source>/acc/mean@k``, else ``reward``) from its file logger."""
    if not metrics_file.is_file():
        return {}
    logged: dict[str, Any] = {}
    for line in metrics_file.read_text(encoding="utf-8").splitlines():
        if line.strip():
            logged.update(json.loads(line).get("data", {}))
    reported = {}
    for source in sources:
        for key in (f"val-core/{source}/acc/mean@{k}", f"val-core/{source}/reward/mean@{k}"):
            if isinstance(logged.get(key), int | float):
                reported[source] = float(logged[key])
                break
    return reported
