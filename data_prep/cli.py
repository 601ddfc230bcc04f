"""Command-line pieces shared by the data tools: the common options, error handling and the printed counts."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from data_prep.pipeline import Prepared
from data_prep.schema import DataError

EXIT_BAD_INPUT = 2


def module_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of ``python -m module``: its ``--help`` opens with the module's docstring ``doc``."""
    return argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=(doc or "").replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--skip-bad, --bad-rows-out and --progress/--no-progress."""
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip bad rows (null, empty, non-string or unparseable answers, empty prompts, duplicate ids, "
        "malformed rows) instead of stopping at them; how many and which ids are printed",
    )
    parser.add_argument(
        "--bad-rows-out",
        metavar="FILE",
        help="with --skip-bad, also write every skipped row (file, row, id, reason) to this jsonl file",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars on stderr (default: only when stderr is a terminal)",
    )


def write_bad_rows(prepared: Prepared, path: str | None) -> None:
    if path is None:
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for bad in prepared.bad_rows:
            record = {"file": bad.file, "row": bad.row, "id": bad.index, "kind": bad.kind, "reason": bad.reason}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def print_counts(prepared: Prepared, written: dict[str, int], bad_rows_out: str | None) -> None:
    """Print rows read / bad / duplicates / written (and where), and write the skipped rows if asked."""
    for line in prepared.count_lines(sum(written.values())):
        print(line)
    for path, count in written.items():
        print(f"  wrote {count} rows to {path}")
    write_bad_rows(prepared, bad_rows_out)
    if bad_rows_out is not None:
        print(f"  skipped rows listed in {bad_rows_out}")


def run_tool(
    parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], None], argv: Sequence[str] | None
) -> None:
    """Parse ``argv`` and run ``body``; bad input ends the program with its message and exit status 2."""
    args = parser.parse_args(argv)
    if getattr(args, "bad_rows_out", None) and not getattr(args, "skip_bad", False):
        parser.error("--bad-rows-out needs --skip-bad")
    try:
        body(args)
    except DataError as err:
        sys.stdout.flush()
        parser.exit(EXIT_BAD_INPUT, f"{parser.prog}: error: {err}\n")
