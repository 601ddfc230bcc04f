"""DAPO-Math-17k (as published: about 1.79M rows, about 17.4k distinct prompts) to de-duplicated verl parquet.

``python -m data_prep.dapo17k --input dapo-math-17k.parquet --output-dir DIR --val-size 512 --seed 0`` writes
``DIR/dapo17k_train.parquet`` (and ``DIR/dapo17k_val.parquet``). Rows are de-duplicated by normalised problem text
(the problem is extracted from the DAPO prompt template and re-rendered with the shared one) keeping the first
occurrence and its id; output rows keep the input order, and ``extra_info.pass_rate`` when present. Prints rows
read, bad rows, duplicates dropped and rows written. Bad rows (null/empty/non-string/unparseable ground truths,
empty prompts, prompts outside the template, duplicate ids, malformed rows) stop the run with the file and row
unless ``--skip-bad``. The DAPO-schema readers here also serve ``data_prep.benchmarks`` for AIME 2024 in the DAPO
format.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_prep.cli import add_common_arguments, module_parser, print_counts, run_tool
from data_prep.pipeline import (
    Prepared,
    Reason,
    RowBatch,
    RowCollector,
    coerce_id,
    progress_bar,
    split_train_val,
)
from data_prep.record_rows import RecordRows, records_have_pass_rate
from data_prep.schema import DataError, write_rows
from data_prep.sources import MalformedLine, Source, open_parquet, read_records, resolve_sources

HUB_NAME = "BytedTsinghua-SIA/DAPO-Math-17k"
HUB_SPLIT = "train"
DATA_SOURCE = "math_dapo"
DAPO_COLUMNS = ("prompt", "reward_model", "extra_info")
BATCH_ROWS = 131072


def _is_string(data_type: pa.DataType) -> bool:
    return pa.types.is_string(data_type) or pa.types.is_large_string(data_type)


def _struct_child(schema: pa.Schema, column: str, child: str, file: str) -> pa.DataType:
    data_type = schema.field(column).type
    if not pa.types.is_struct(data_type) or data_type.get_field_index(child) < 0:
        raise DataError(f"{file}: column {column!r} has type {data_type}; the DAPO schema has a struct with {child!r}")
    return data_type.field(child).type


def check_dapo_schema(schema: pa.Schema, file: str) -> list[str]:
    """The parquet columns to read (nested paths), or a DataError naming what the file lacks."""
    missing = [column for column in DAPO_COLUMNS if column not in schema.names]
    if missing:
        raise DataError(
            f"{file}: missing column(s) {missing}; found {schema.names}; the DAPO schema has "
            "prompt (chat messages), reward_model.ground_truth and extra_info.index"
        )
    prompt_type = schema.field("prompt").type
    is_list = pa.types.is_list(prompt_type) or pa.types.is_large_list(prompt_type)
    message_type = prompt_type.value_type if is_list else None
    if message_type is None or not pa.types.is_struct(message_type) or message_type.get_field_index("content") < 0:
        raise DataError(f"{file}: column 'prompt' has type {prompt_type}; expected a list of chat messages")
    if not _is_string(message_type.field("content").type):
        raise DataError(f"{file}: prompt messages have content of type {message_type.field('content').type}")
    _struct_child(schema, "reward_model", "ground_truth", file)
    index_type = _struct_child(schema, "extra_info", "index", file)
    if not (_is_string(index_type) or pa.types.is_integer(index_type) or pa.types.is_null(index_type)):
        raise DataError(f"{file}: extra_info.index has type {index_type}; expected strings or integers")
    columns = ["prompt", "reward_model.ground_truth", "extra_info.index"]
    extra_info_type = schema.field("extra_info").type
    if extra_info_type.get_field_index("pass_rate") >= 0:
        rate_type = extra_info_type.field("pass_rate").type
        if not (pa.types.is_integer(rate_type) or pa.types.is_floating(rate_type) or pa.types.is_null(rate_type)):
            raise DataError(f"{file}: extra_info.pass_rate has type {rate_type}; expected numbers")
        columns.append("extra_info.pass_rate")
    return columns


def arrow_dapo_batch(batch: pa.RecordBatch) -> RowBatch:
    """The rows of a DAPO-schema record batch (schema already checked), vectorised: no Python loop over rows."""
    rows = batch.num_rows
    reasons = np.zeros(rows, dtype=np.uint8)
    prompt = batch.column("prompt")
    lengths = pc.fill_null(pc.list_value_length(prompt), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    messages = pc.list_flatten(prompt)
    single = lengths == 1
    content, role = pc.struct_field(messages, "content"), None
    if messages.type.get_field_index("role") >= 0:
        role = pc.struct_field(messages, "role")
    if not single.all():  # messages no longer line up with rows: pick each row's message (null where not one)
        first_message = pa.array(np.cumsum(lengths) - lengths, type=pa.int64(), mask=~single)
        content = content.take(first_message)
        role = role.take(first_message) if role is not None else None
    usable = single.copy()
    if role is not None:
        usable &= pc.fill_null(pc.equal(role, "user"), False).to_numpy(zero_copy_only=False)
    reasons[lengths == 0] = Reason.EMPTY_PROMPT
    reasons[(lengths > 0) & ~usable] = Reason.PROMPT_SHAPE
    text = content if usable.all() else pc.if_else(pa.array(usable), content, pa.scalar(None, type=content.type))

    answer = pc.struct_field(batch.column("reward_model"), "ground_truth")
    details: dict[int, str] = {}
    if not (_is_string(answer.type) or pa.types.is_null(answer.type)):
        non_null = np.flatnonzero(pc.is_valid(answer).to_numpy(zero_copy_only=False))
        reasons[non_null[reasons[non_null] == Reason.OK]] = Reason.NON_STRING_ANSWER
        details = {int(row): f"the file stores ground truths as {answer.type}" for row in non_null}
        answer = pa.nulls(rows, type=pa.string())
    ids = pc.struct_field(batch.column("extra_info"), "index")
    ids = ids.cast(pa.string()) if not pa.types.is_null(ids.type) else pa.nulls(rows, type=pa.string())

    pass_rate = None
    if _has_pass_rate(batch):
        rates = pc.struct_field(batch.column("extra_info"), "pass_rate").cast(pa.float64())
        pass_rate = rates.to_numpy(zero_copy_only=False)
        invalid = ~np.isnan(pass_rate) & ((pass_rate < 0.0) | (pass_rate > 1.0))
        reasons[invalid & (reasons == Reason.OK)] = Reason.BAD_PASS_RATE
        pass_rate = np.where(invalid, np.nan, pass_rate)
    return RowBatch(text=text, ground_truth=answer, ids=ids, reasons=reasons, details=details, pass_rate=pass_rate)


def _has_pass_rate(batch: pa.RecordBatch) -> bool:
    return batch.schema.field("extra_info").type.get_field_index("pass_rate") >= 0


def _record_fields(record: Any) -> tuple[str | None, Any, Any, Any, Reason, str | None]:
    """(prompt content, ground truth, id, pass rate, reason, detail) of one DAPO-schema record."""
    if isinstance(record, MalformedLine):
        return None, None, None, None, Reason.MALFORMED_ROW, f"line {record.line_number}: {record.error}"
    if not isinstance(record, dict):
        return None, None, None, None, Reason.MALFORMED_ROW, f"a JSON {type(record).__name__}"
    info = record.get("extra_info") if isinstance(record.get("extra_info"), dict) else {}
    reward_model = record.get("reward_model")
    answer = reward_model.get("ground_truth") if isinstance(reward_model, dict) else None
    index, pass_rate = info.get("index"), info.get("pass_rate")
    prompt = record.get("prompt")
    if prompt is None or prompt == []:
        return None, answer, index, pass_rate, Reason.EMPTY_PROMPT, None
    message = prompt[0] if isinstance(prompt, list) and len(prompt) == 1 else None
    if not isinstance(message, dict) or message.get("role", "user") != "user":
        return None, answer, index, pass_rate, Reason.PROMPT_SHAPE, None
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        return None, answer, index, pass_rate, Reason.NON_STRING_PROBLEM, f"content has type {type(content).__name__}"
    return content, answer, index, pass_rate, Reason.OK, None


def record_dapo_batch(records: Sequence[Any], has_pass_rate: bool) -> RowBatch:
    """The rows of DAPO-schema records read from json / jsonl (Python values, any types)."""
    rows = RecordRows(len(records), has_pass_rate)
    for record in records:
        content, answer, index, pass_rate, reason, detail = _record_fields(record)
        if reason == Reason.OK and answer is not None and not isinstance(answer, str):
            reason, detail = Reason.NON_STRING_ANSWER, f"{answer!r} has type {type(answer).__name__}"
        rows.add(content, answer if isinstance(answer, str) else None, coerce_id(index), pass_rate, reason, detail)
    return rows.batch()


def dapo_batches(source: Source, show_progress: bool | None) -> Iterator[RowBatch]:
    """Every row of a DAPO-schema source, in batches (parquet and hub tables are streamed, never loaded whole)."""
    if source.table is not None or source.suffix == ".parquet":
        if source.table is not None:
            check_dapo_schema(source.table.schema, source.name)
            batches = source.table.select(["prompt", "reward_model", "extra_info"]).to_batches(BATCH_ROWS)
            total = source.table.num_rows
        else:
            assert source.path is not None
            parquet = open_parquet(source.path)
            columns = check_dapo_schema(parquet.schema_arrow, source.name)
            batches = parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns)
            total = parquet.metadata.num_rows
        with progress_bar(total, show_progress, desc=f"reading {Path(source.name).name}", unit="row") as bar:
            for batch in batches:
                yield arrow_dapo_batch(batch)
                bar.update(batch.num_rows)
        return
    records = read_records(source)
    names = {name for record in records if isinstance(record, dict) for name in record}
    missing = [column for column in DAPO_COLUMNS if column not in names]
    if missing:
        raise DataError(f"{source.name}: missing column(s) {missing}; found {sorted(names)}")
    yield record_dapo_batch(records, records_have_pass_rate(records))


def collect_dapo(sources: Sequence[Source], skip_bad: bool, show_progress: bool | None = None) -> Prepared:
    """Validate and de-duplicate DAPO-schema sources (see ``RowCollector``)."""
    collector = RowCollector(templated=True, show_progress=show_progress)
    for source in sources:
        for batch in dapo_batches(source, show_progress):
            collector.add(batch, source.name)
    return collector.finish(skip_bad=skip_bad)


def build_parser() -> argparse.ArgumentParser:
    parser = module_parser("data_prep.dapo17k", __doc__)
    parser.add_argument(
        "--input",
        default=HUB_NAME,
        help=f"a local parquet/jsonl/json file, a folder of them, or a hub name (default {HUB_NAME}; needs network: "
        "offline, pass a local path)",
    )
    parser.add_argument("--split", default=HUB_SPLIT, help=f"hub split (default {HUB_SPLIT}); ignored for local files")
    parser.add_argument("--output-dir", required=True, help="folder for PREFIX_train.parquet and PREFIX_val.parquet")
    parser.add_argument("--prefix", default="dapo17k", help="output file name prefix (default dapo17k)")
    parser.add_argument(
        "--val-size", type=int, default=0, help="distinct problems held out for validation (default 0: no val file)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation draw (default 0)")
    parser.add_argument(
        "--data-source", default=DATA_SOURCE, help=f"data_source of every output row (default {DATA_SOURCE})"
    )
    add_common_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> None:
    sources = resolve_sources(args.input, split=args.split)
    prepared = collect_dapo(sources, skip_bad=args.skip_bad, show_progress=args.progress)
    if not len(prepared):
        raise DataError(f"{args.input}: no usable rows")
    train, val = split_train_val(len(prepared), args.val_size, args.seed)
    out_dir = Path(args.output_dir).expanduser()
    written: dict[str, int] = {}
    for split, positions in (("train", train), ("val", val)):
        if positions:
            rows = prepared.rows(args.data_source, positions, split)
            written[str(write_rows(rows, out_dir / f"{args.prefix}_{split}.parquet"))] = len(positions)
    print_counts(prepared, written, args.bad_rows_out)
    stale = out_dir / f"{args.prefix}_val.parquet"
    if not val and stale.exists():
        print(f"note: {stale} is from an earlier run (no validation set this time); delete it if it is not wanted")


def main(argv: Sequence[str] | None = None) -> None:
    run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    main()
