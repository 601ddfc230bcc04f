"""AIME 2024, AIME 2025, AMC 2023 and MATH-500 to verl parquet, in the training prompt template.

``python -m data_prep.benchmarks --name amc2023 --input amc23.jsonl --output data/amc2023.parquet``. Each set's own
fields are mapped into the shared schema (``data_prep.schema``); every row's ``data_source`` is the benchmark's name
so that verl reports accuracy per benchmark. Field names are matched case-insensitively (``Problem`` = ``problem``).

- AIME (``HuggingFaceH4/aime_2024``: id, problem, answer; ``math-ai/aime25``: id, problem, answer): integer answers,
  stored as strings or numbers. AIME 2024 in the DAPO format (``BytedTsinghua-SIA/AIME-2024``: templated prompt,
  each problem repeated 32 times) is recognised by its ``prompt`` column and de-duplicated.
- AMC 2023 (``math-ai/amc23``: id, question, answer): float answers such as ``27.0`` become ``"27"``.
- MATH-500 (``HuggingFaceH4/MATH-500``): LaTeX answers kept exactly; ``subject``, ``level`` and ``unique_id`` go to
  ``extra_info`` (``unique_id`` is also the row's ``index``).
"""

from __future__ import annotations

import argparse
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_prep.cli import add_common_arguments, print_counts, run_tool
from data_prep.dapo17k import collect_dapo
from data_prep.pipeline import Prepared, Reason, RowBatch, RowCollector, coerce_id
from data_prep.record_rows import RecordRows, records_have_pass_rate
from data_prep.schema import DataError, write_rows
from data_prep.sources import MalformedLine, Source, column_names, read_records, resolve_sources


@dataclass(frozen=True)
class BenchmarkSpec:
    """How one benchmark's published fields map into the schema."""

    name: str
    hub_name: str
    hub_split: str
    problem_fields: tuple[str, ...]
    integer_answers: bool  # answers are integers, possibly stored as numbers (27.0) rather than strings
    id_fields: tuple[str, ...] = ("id",)
    extra_fields: tuple[str, ...] = ()  # copied into extra_info as they are
    answer_field: str = "answer"


BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in (
        BenchmarkSpec("aime2024", "HuggingFaceH4/aime_2024", "train", ("problem",), integer_answers=True),
        BenchmarkSpec("aime2025", "math-ai/aime25", "test", ("problem", "question"), integer_answers=True),
        BenchmarkSpec("amc2023", "math-ai/amc23", "test", ("question", "problem"), integer_answers=True),
        BenchmarkSpec(
            "math500",
            "HuggingFaceH4/MATH-500",
            "test",
            ("problem",),
            integer_answers=False,
            id_fields=("unique_id",),
            extra_fields=("subject", "level", "unique_id"),
        ),
    )
}


def answer_to_ground_truth(value: Any, integer_answers: bool) -> tuple[str | None, Reason, str | None]:
    """(ground truth, reason, detail) for a published answer.

    Strings are kept exactly (LaTeX untouched). With ``integer_answers``, ints and integral floats become their
    integer string (``27.0`` -> ``"27"``); a fractional float is rejected rather than guessed at.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, Reason.OK, None  # the collector reports the missing answer
    if isinstance(value, str):
        return value, Reason.OK, None
    if integer_answers and isinstance(value, int) and not isinstance(value, bool):
        return str(value), Reason.OK, None
    if integer_answers and isinstance(value, float):
        if value.is_integer():
            return str(int(value)), Reason.OK, None
        return None, Reason.NON_INTEGER_ANSWER, repr(value)
    return None, Reason.NON_STRING_ANSWER, f"{value!r} has type {type(value).__name__}"


def _field(names: Sequence[str], wanted: Sequence[str]) -> str | None:
    """The first of ``wanted`` present in ``names``, matched case-insensitively (returns the name as stored)."""
    lower = {name.lower(): name for name in names}
    return next((lower[name] for name in wanted if name in lower), None)


def benchmark_batch(records: Sequence[Any], spec: BenchmarkSpec, file: str, first_row: int) -> RowBatch:
    """The rows of one file of ``spec``'s flat schema; ``first_row`` numbers generated ids across files."""
    names = column_names(records)
    problem_field = _field(names, spec.problem_fields)
    answer_field = _field(names, (spec.answer_field,))
    if problem_field is None or answer_field is None:
        wanted = [f"one of {list(spec.problem_fields)}" if problem_field is None else None]
        wanted.append(repr(spec.answer_field) if answer_field is None else None)
        raise DataError(
            f"{file}: missing column(s) {[w for w in wanted if w]} for {spec.name}; found {names} "
            f"(published schema of {spec.hub_name})"
        )
    id_field = _field(names, spec.id_fields)
    extra_fields = {name: _field(names, (name,)) for name in spec.extra_fields}
    rate_field = _field(names, ("pass_rate",))
    rows = RecordRows(len(records), rate_field is not None or records_have_pass_rate(records), spec.extra_fields)
    for row, raw in enumerate(records):
        record = raw if isinstance(raw, dict) else {}
        reason, detail = Reason.OK, None
        if isinstance(raw, MalformedLine):
            reason, detail = Reason.MALFORMED_ROW, f"line {raw.line_number}: {raw.error}"
        elif not isinstance(raw, dict):
            reason, detail = Reason.MALFORMED_ROW, f"a JSON {type(raw).__name__}"
        problem = record.get(problem_field)
        if reason == Reason.OK and problem is not None and not isinstance(problem, str):
            reason, detail = Reason.NON_STRING_PROBLEM, f"{problem!r} has type {type(problem).__name__}"
        answer, answer_reason, answer_detail = answer_to_ground_truth(record.get(answer_field), spec.integer_answers)
        if reason == Reason.OK and answer_reason != Reason.OK:
            reason, detail = answer_reason, answer_detail
        info = record.get("extra_info") if isinstance(record.get("extra_info"), dict) else {}
        rows.add(
            problem if isinstance(problem, str) else None,
            answer,
            coerce_id(record.get(id_field)) if id_field else f"{spec.name}-{first_row + row}",
            record.get(rate_field) if rate_field else info.get("pass_rate"),
            reason,
            detail,
            {name: record.get(stored) if stored else None for name, stored in extra_fields.items()},
        )
    return rows.batch()


def _is_dapo_format(source: Source) -> bool:
    if source.table is not None:
        return "prompt" in source.table.column_names
    assert source.path is not None
    if source.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return "prompt" in pq.read_schema(source.path).names
        except Exception:  # not parquet: reading it reports that properly
            return False
    return "prompt" in column_names(read_records(source)[:100])


def collect_benchmark(
    spec: BenchmarkSpec, sources: Sequence[Source], skip_bad: bool, show_progress: bool | None = None
) -> Prepared:
    """Validate and de-duplicate one benchmark read from ``sources``."""
    if sources and all(_is_dapo_format(source) for source in sources):
        return collect_dapo(sources, skip_bad=skip_bad, show_progress=show_progress)
    collector = RowCollector(templated=False, show_progress=show_progress)
    rows = 0
    for source in sources:
        records = read_records(source)
        collector.add(benchmark_batch(records, spec, source.name, rows), source.name)
        rows += len(records)
    return collector.finish(skip_bad=skip_bad)


def build_parser() -> argparse.ArgumentParser:
    lines = [f"  {spec.name:9s} {spec.hub_name} (split {spec.hub_split})" for spec in BENCHMARKS.values()]
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.benchmarks",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Turn an evaluation benchmark into verl RL parquet with the training prompt template. data_source is "
            "the benchmark's name (verl reports accuracy per data_source). AIME/AMC answers stored as numbers become "
            "integer strings (27.0 -> 27); MATH-500's LaTeX answers are kept exactly, with subject, level and "
            "unique_id in extra_info; extra_info.pass_rate is kept when present. Duplicate problems are dropped "
            "(first kept). Prints rows read, bad rows, duplicates dropped and rows written. Bad rows (null, empty, "
            "non-string or unparseable answers, empty problems, duplicate ids, malformed rows) stop the run with the "
            "file and row unless --skip-bad."
        )
        + "\n\nbenchmarks and their default hub sources:\n"
        + "\n".join(lines),
        epilog="Example: python -m data_prep.benchmarks --name math500 --input MATH-500/test.jsonl "
        "--output ~/data/acpo/math500.parquet",
    )
    parser.add_argument("--name", required=True, choices=sorted(BENCHMARKS), help="which benchmark")
    parser.add_argument(
        "--input",
        help="a local parquet/jsonl/json file, a folder of them, or a hub name (default: the benchmark's hub source "
        "above; needs network: offline, pass a local path)",
    )
    parser.add_argument("--split", help="hub split (default: the benchmark's, above); ignored for local files")
    parser.add_argument("--output", required=True, help="parquet file to write")
    parser.add_argument("--data-source", help="data_source of every row (default: the benchmark's name)")
    add_common_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> None:
    spec = BENCHMARKS[args.name]
    sources = resolve_sources(args.input or spec.hub_name, split=args.split or spec.hub_split)
    prepared = collect_benchmark(spec, sources, skip_bad=args.skip_bad, show_progress=args.progress)
    if not len(prepared):
        raise DataError(f"{args.input or spec.hub_name}: no usable rows")
    rows = prepared.rows(args.data_source or spec.name, range(len(prepared)), "test")
    path = write_rows(rows, Path(args.output).expanduser())
    print_counts(prepared, {str(path): len(rows)}, args.bad_rows_out)


def main(argv: Sequence[str] | None = None) -> None:
    run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    main()
