"""Print what a GPU smoke run measured (examples/run_gpu_smoke.sh): packed-vs-naive attribution and peak memory.

Reads the metrics files verl's ``file`` logger writes (``VERL_FILE_LOGGER_PATH``, one JSON object per step with
``step`` and ``data``) and, optionally, the evaluation's ``results.json``. Per step it prints the largest differences
between packed and naive attribution (``acpo/check/*``, logged with ``ACPO_ATTRIBUTION_CROSS_CHECK=1``), the
attribution time, and the peak GPU memory torch saw on the actor (``perf/max_memory_{allocated,reserved}_gb``).

Exit status 1 when a file is missing or empty, or a step lacks the cross-check metrics (the check did not run).

    python -m recipe.acpo.smoke_report outputs/gpu_smoke/logs/stage1_metrics.jsonl ... [--results results.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

CHECKS = ("acpo/check/answer_loglik_max_abs_diff", "acpo/check/advantage_max_abs_diff")
COLUMNS = (
    ("L diff", CHECKS[0]),
    ("A diff", CHECKS[1]),
    ("attr s", "timing_s/acpo_attribution"),
    ("peak alloc GB", "perf/max_memory_allocated_gb"),
    ("peak reserved GB", "perf/max_memory_reserved_gb"),
    ("skipped (pos)", "acpo/attr_position_skipped_frac"),
)


def read_steps(path: Path) -> list[dict]:
    """The ``data`` of every step logged in ``path``; raises ValueError naming the file when it holds none."""
    if not path.is_file():
        raise ValueError(f"{path}: no metrics file (did the run start?)")
    steps = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not steps:
        raise ValueError(f"{path}: no step was logged")
    return [{"step": row.get("step"), **row.get("data", {})} for row in steps]


def format_value(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, int | float) and math.isfinite(value) else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics", nargs="+", type=Path, help="metrics files of the training runs (JSON lines)")
    parser.add_argument("--results", type=Path, help="the evaluation's results.json")
    args = parser.parse_args(argv)
    problems = []
    print(f"{'run':<24} {'step':>4} " + " ".join(f"{name:>16}" for name, _ in COLUMNS))
    for path in args.metrics:
        try:
            steps = read_steps(path)
        except ValueError as err:
            problems.append(str(err))
            continue
        for row in steps:
            print(
                f"{path.stem:<24} {row['step']!s:>4} " + " ".join(f"{format_value(row.get(k)):>16}" for _, k in COLUMNS)
            )
            missing = [key for key in CHECKS if not isinstance(row.get(key), int | float)]
            if missing:
                problems.append(f"{path} step {row['step']}: no {missing} (ACPO_ATTRIBUTION_CROSS_CHECK=1 not seen)")
    if args.results is not None:
        if args.results.is_file():
            average = json.loads(args.results.read_text())["average"]
            print(f"evaluation: Acc@k {100 * average['acc_at_k']:.2f}%, Pass@k {100 * average['pass_at_k']:.2f}%")
        else:
            problems.append(f"{args.results}: no evaluation results")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
