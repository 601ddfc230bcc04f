"""Seeded synthetic multi-step arithmetic word problems with integer answers, in verl's RL parquet schema.

``python -m data_prep.arithmetic --output-dir DIR --num-train 256 --num-val 32 --num-ops 2-3 --seed 0`` writes
``DIR/arithmetic_train.parquet`` and ``DIR/arithmetic_val.parquet`` (``--data-source`` names the rows and files),
prompts in the shared template. A problem starts from a quantity and applies ``--num-ops`` operations (add, take
away, multiply, share out evenly) told as sentences, then asks for the final quantity: every intermediate value is a
non-negative integer, so the answer is one. More operations make a harder problem (the difficulty knob, recorded in
``extra_info.num_ops``). The same arguments give the same rows in the same order; train and validation never share
a problem. Used by the CPU demo and the tests.
"""

from __future__ import annotations

import argparse
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from data_prep.cli import module_parser, run_tool
from data_prep.pipeline import progress
from data_prep.schema import DataError, build_row, write_rows

DATA_SOURCE = "arithmetic"
NAMES = ("Ava", "Ben", "Chloe", "Dan", "Emma", "Finn", "Grace", "Hugo", "Iris", "Jack", "Kira", "Leo", "Maya", "Noah")
ITEMS = ("apples", "marbles", "stickers", "coins", "books", "pencils", "shells", "cards", "stamps", "cookies")
_MAX_ATTEMPTS_PER_PROBLEM = 1000


@dataclass(frozen=True)
class ArithmeticProblem:
    """One word problem, its integer answer and how many operations it takes."""

    text: str
    answer: int
    num_ops: int


def parse_num_ops(text: str) -> tuple[int, int]:
    """``"3"`` -> (3, 3); ``"2-4"`` -> (2, 4): the range the number of operations per problem is drawn from."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not N or MIN-MAX")
    low = int(match.group(1))
    high = int(match.group(2) or low)
    if low < 1 or high < low:
        raise argparse.ArgumentTypeError(f"{text!r}: need 1 <= MIN <= MAX")
    return low, high


def evaluate(left: int, operator: str, right: int) -> int | None:
    """``left OP right`` in integers; None for a division that is not exact (or by zero)."""
    if operator == "+":
        return left + right
    if operator == "-":
        return left - right
    if operator == "*":
        return left * right
    if right == 0 or left % right:
        return None
    return left // right


def make_problem(rng: random.Random, num_ops: int, max_start: int = 50, max_value: int = 1000) -> ArithmeticProblem:
    """A problem with exactly ``num_ops`` operations; every value along the way is an integer in [1, max_value]."""
    name, items = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(2, max_start)
    sentences = [f"{name} has {value} {items}."]
    for _ in range(num_ops):
        divisors = [parts for parts in range(2, 10) if value % parts == 0]
        possible = [
            kind
            for kind, allowed in (
                ("add", value < max_value),
                ("sub", value >= 2),
                ("mul", value * 2 <= max_value),
                ("div", bool(divisors)),
            )
            if allowed
        ]
        kind = rng.choice(possible)
        if kind == "add":
            amount = rng.randint(1, min(max_start, max_value - value))
            value += amount
            sentences.append(rng.choice([f"Then {name} gets {amount} more.", f"A friend gives {name} {amount} more."]))
        elif kind == "sub":
            amount = rng.randint(1, value - 1)
            value -= amount
            sentences.append(rng.choice([f"{name} gives away {amount}.", f"{name} loses {amount} of them."]))
        elif kind == "mul":
            factor = rng.randint(2, min(5, max_value // value))
            value *= factor
            sentences.append(f"Then the number of {items} {name} has becomes {factor} times as large.")
        else:
            parts = rng.choice(divisors)
            value //= parts
            sentences.append(f"{name} shares them equally among {parts} boxes and keeps one box.")
    sentences.append(f"How many {items} does {name} have now?")
    return ArithmeticProblem(text=" ".join(sentences), answer=value, num_ops=num_ops)


class _Problem(Protocol):
    text: str


ProblemT = TypeVar("ProblemT", bound=_Problem)


def draw_distinct(
    count: int,
    draw: Callable[[], ProblemT],
    what: str,
    exclude: set[str] | None = None,
    accept: Callable[[ProblemT], bool] | None = None,
    show_progress: bool | None = False,
    max_attempts: int = _MAX_ATTEMPTS_PER_PROBLEM,
) -> list[ProblemT]:
    """``count`` problems from ``draw`` with distinct texts, none in ``exclude``, each one ``accept`` takes
    (``max_attempts`` draws at most per problem).

    Raises:
        DataError: ``draw`` keeps repeating itself (``what`` names the problems asked for).
    """
    seen = set(exclude or ())
    problems: list[ProblemT] = []
    for _ in progress(range(count), show_progress, desc="problems", unit="problem"):
        for _attempt in range(max_attempts):
            problem = draw()
            if problem.text not in seen and (accept is None or accept(problem)):
                break
        else:
            raise DataError(f"cannot draw {count} distinct {what}: ask for fewer")
        seen.add(problem.text)
        problems.append(problem)
    return problems


def generate(
    count: int, num_ops: tuple[int, int], seed: int, exclude: set[str] | None = None, show_progress: bool | None = None
) -> list[ArithmeticProblem]:
    """``count`` distinct problems (none of whose texts is in ``exclude``), deterministic in ``seed``."""
    rng = random.Random(seed)
    return draw_distinct(
        count,
        lambda: make_problem(rng, rng.randint(*num_ops)),
        f"problems with {num_ops} operations",
        exclude,
        show_progress=show_progress,
    )


def build_rows(problems: Sequence[ArithmeticProblem], data_source: str, split: str, first: int) -> list[dict[str, Any]]:
    """Schema rows for ``problems``; ids ``{data_source}-{n}`` numbered from ``first``."""
    return [
        build_row(
            data_source,
            problem.text,
            str(problem.answer),
            f"{data_source}-{first + n}",
            split,
            {"num_ops": problem.num_ops},
        )
        for n, problem in enumerate(problems)
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = module_parser("data_prep.arithmetic", __doc__)
    parser.add_argument("--output-dir", required=True, help="folder for the parquet files")
    parser.add_argument("--num-train", type=int, default=1024, help="training problems (default 1024)")
    parser.add_argument("--num-val", type=int, default=128, help="validation problems (default 128; 0: no val file)")
    parser.add_argument(
        "--num-ops",
        type=parse_num_ops,
        default=(2, 2),
        metavar="N|MIN-MAX",
        help="operations per problem, the difficulty knob: N, or a range drawn uniformly per problem (default 2)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--data-source",
        default=DATA_SOURCE,
        help=f"data_source of every row and file name prefix (default {DATA_SOURCE})",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: only when stderr is a terminal)",
    )
    return parser


def run(args: argparse.Namespace) -> None:
    if args.num_train < 1 or args.num_val < 0:
        raise DataError("--num-train must be at least 1 and --num-val at least 0")
    problems = generate(args.num_train + args.num_val, args.num_ops, args.seed, show_progress=args.progress)
    out_dir = Path(args.output_dir).expanduser()
    splits = {"train": problems[: args.num_train], "val": problems[args.num_train :]}
    print(f"problems generated: {len(problems)} ({args.num_ops[0]}-{args.num_ops[1]} operations, seed {args.seed})")
    first = 0
    for split, chosen in splits.items():
        if chosen:
            path = write_rows(
                build_rows(chosen, args.data_source, split, first), out_dir / f"{args.data_source}_{split}.parquet"
            )
            print(f"  wrote {len(chosen)} rows to {path}")
        first += len(chosen)


def main(argv: Sequence[str] | None = None) -> None:
    run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    main()
