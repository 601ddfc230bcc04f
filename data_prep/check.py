"""``python -m data_prep.check FILE...``: validate verl RL parquet files against the schema and summarise each.

Checked: the columns data_source, prompt and reward_model exist; every row has a data_source, a prompt of chat
messages with a non-empty user message, a ground truth that math-verify parses (the reward's parser), a unique
extra_info.index and, if present, an extra_info.pass_rate in [0, 1]. Printed per file: rows, rows per data_source,
distinct ground truths, prompts in the shared template, rows with a pass rate, prompt lengths, and the bad rows
(0-based). The same check (``data_prep.schema.check_data_files``) runs in the training entry point before Ray starts.
Exit status: 0 when every file passes, 1 when a file has bad rows or cannot be read.

Example: ``python -m data_prep.check ~/data/acpo/dapo17k_train.parquet ~/data/acpo/aime2024.parquet``
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from data_prep.cli import module_parser
from data_prep.schema import DataCheckError, check_parquet

EXIT_FAILED = 1


def build_parser() -> argparse.ArgumentParser:
    parser = module_parser("data_prep.check", __doc__)
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
