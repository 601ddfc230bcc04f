"""``python -m data_prep.check FILE...``: validate parquet files against the schema and print a summary of each.

The same check (``data_prep.schema.check_data_files``) runs in the training entry point before Ray starts.
Exit status: 0 when every file passes, 1 when a file has bad rows or cannot be read.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from data_prep.schema import DataCheckError, check_parquet

EXIT_FAILED = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.check",
        description="Check verl RL parquet files: the columns data_source, prompt and reward_model exist; every row "
        "has a data_source, a prompt of chat messages with a non-empty user message, a ground truth that math-verify "
        "parses (the reward's parser), a unique extra_info.index and, if present, an extra_info.pass_rate in [0, 1]. "
        "Prints per file: rows, rows per data_source, distinct ground truths, prompts in the shared template, rows "
        "with a pass rate, prompt lengths, and the bad rows (0-based). Exit status 1 if any file fails.",
        epilog="Example: python -m data_prep.check ~/data/acpo/dapo17k_train.parquet ~/data/acpo/aime2024.parquet",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="parquet files to check")
    parser.add_argument("--max-bad", type=int, default=20, help="bad rows listed per file (default 20)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    failed = 0
    for path in args.files:
        try:
            report = check_parquet(path)
        except DataCheckError as err:
            print(f"{path}: FAILED: {err}")
            failed += 1
            continue
        print(report.summary(max_problems=args.max_bad))
        failed += not report.ok
    print(f"{len(args.files) - failed} of {len(args.files)} file(s) passed")
    if failed:
        parser.exit(EXIT_FAILED)


if __name__ == "__main__":
    main()
