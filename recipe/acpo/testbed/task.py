"""The testbed task: chains of integer operations whose reference solutions are written one step per line.

A problem is a start value and a few operations::

    prompt:    Step by step: Start at 16, subtract 11, multiply by 3.
    solution:  First, 16 - 11 = 5.
               Then, 5 * 3 = 15.
               Answer: 15

Every step of a response can be checked on its own (``recipe.acpo.testbed.step_check``), and the reward (the last
``Answer:`` line, math-verify) scores the final line. Difficulty knobs: the number of operations, the operand and value
ranges, and which operations occur. Every intermediate value stays an integer in [0, max_value]; divisions are exact.

Problems are split for good between two pools by a hash of their text: ``policy`` problems are the ones the testbed
policy is fine-tuned on (``recipe.acpo.testbed``), ``rl`` problems the ones RL trains and is evaluated on, so the
held-out figures never measure memorised problems.

``python -m recipe.acpo.testbed.task --output-dir DIR`` writes ``DIR/arithmetic_steps_train.parquet`` and
``DIR/arithmetic_steps_val.parquet`` in verl's RL schema (``data_prep.schema``); the same arguments give the same
files, and train and validation share no problem.
"""

from __future__ import annotations

import argparse
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from data_prep.arithmetic import draw_distinct, evaluate, parse_num_ops
from data_prep.cli import run_tool
from data_prep.schema import DataError, build_row, write_rows

DATA_SOURCE = "arithmetic_steps"
PROMPT_TEMPLATE = "Step by step: {problem}"
OPERATIONS = ("add", "sub", "mul", "div")
_SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
_WORDS = {"add": "add {}", "sub": "subtract {}", "mul": "multiply by {}", "div": "divide by {}"}
_MAX_ATTEMPTS_PER_PROBLEM = 10_000
Pool = Literal["policy", "rl"]
# One problem in four (by hash of its text) belongs to the policy's fine-tuning pool.
_POLICY_POOL_BUCKETS = 64


def apply_operation(value: int, kind: str, operand: int) -> int | None:
    """``value`` after the operation ``(kind, operand)``; None for a division that is not exact."""
    return evaluate(value, _SYMBOLS[kind], operand)


@dataclass(frozen=True)
class TaskSpec:
    """The difficulty knobs: operations per problem, the start/operand ranges, the value ceiling, the operations."""

    num_ops: tuple[int, int] = (2, 3)
    max_start: int = 20
    max_operand: int = 9
    max_factor: int = 5
    max_value: int = 50
    operations: tuple[str, ...] = ("add", "sub")

    def __post_init__(self) -> None:
        unknown = set(self.operations) - set(OPERATIONS)
        if unknown or not self.operations:
            raise DataError(f"operations must be a non-empty subset of {OPERATIONS}, got {self.operations}")
        if not 1 <= self.num_ops[0] <= self.num_ops[1]:
            raise DataError(f"num_ops must be 1 <= MIN <= MAX, got {self.num_ops}")
        if min(self.max_start, self.max_operand) < 2 or self.max_factor < 2 or self.max_value < self.max_start:
            raise DataError(f"ranges too small: {self}")


@dataclass(frozen=True)
class StepProblem:
    """A start value and its operations ``(kind, operand)``; the text, the reference steps and the answer follow."""

    start: int
    operations: tuple[tuple[str, int], ...] = field(default_factory=tuple)

    @property
    def text(self) -> str:
        words = ", ".join(_WORDS[kind].format(operand) for kind, operand in self.operations)
        return f"Start at {self.start}, {words}."

    @property
    def values(self) -> list[int]:
        """The start value and every intermediate result, the last being the answer."""
        values = [self.start]
        for kind, operand in self.operations:
            result = apply_operation(values[-1], kind, operand)
            assert result is not None, f"inexact division in {self.operations}"
            values.append(result)
        return values

    @property
    def answer(self) -> int:
        return self.values[-1]

    @property
    def solution(self) -> str:
        """The reference response: one ``a OP b = c.`` line per operation, then ``Answer: N``."""
        return render_solution(self, self.values[1:])

    @property
    def prompt(self) -> str:
        return render_prompt(self.text)


def render_solution(
    problem: StepProblem,
    results: Sequence[int],
    leads: Sequence[str] | None = None,
    relations: Sequence[str] | None = None,
) -> str:
    """A response to ``problem`` that writes ``results[n]`` as the result of operation ``n``, chaining each line
    from the result written before it, then ``Answer:`` the last result.

    ``leads``: each line's first word (default ``First`` then ``Then``); ``relations``: each line's sign between the
    operation and its result (default ``=``; a hasty estimate writes ``~``). The reference solution passes the true
    results; a demonstration with a slip (``recipe.acpo.testbed.demonstrations``) passes a wrong one, and every later
    line and the answer follow from it.
    """
    if len(results) != len(problem.operations):
        raise ValueError(f"{len(results)} results for {len(problem.operations)} operations")
    leads = leads or ["First" if n == 0 else "Then" for n in range(len(results))]
    relations = relations or ["="] * len(results)
    lefts = [problem.start, *results[:-1]]
    lines = [
        f"{lead}, {left} {_SYMBOLS[kind]} {operand} {relation} {result}."
        for lead, relation, left, (kind, operand), result in zip(leads, relations, lefts, problem.operations, results)
    ]
    return "\n".join([*lines, f"Answer: {results[-1]}"])


def render_prompt(problem: str) -> str:
    """The user message of a testbed problem (short: the testbed policy has a small context)."""
    return PROMPT_TEMPLATE.format(problem=problem)


def pool_of(problem_text: str) -> Pool:
    """Which pool a problem belongs to, for good: a hash of its text (see the module docstring)."""
    return "policy" if hashlib.sha1(problem_text.encode()).digest()[0] < _POLICY_POOL_BUCKETS else "rl"


def make_problem(rng: random.Random, spec: TaskSpec) -> StepProblem:
    """A random problem with ``spec``'s knobs; every intermediate value is an integer in [0, spec.max_value]."""
    value = rng.randint(2, spec.max_start)
    start = value
    operations: list[tuple[str, int]] = []
    for _ in range(rng.randint(*spec.num_ops)):
        divisors = [d for d in range(2, spec.max_factor + 1) if value % d == 0 and value > 0]
        allowed = {
            "add": value + 1 <= spec.max_value,
            "sub": value >= 1,
            "mul": 0 < value * 2 <= spec.max_value,
            "div": bool(divisors),
        }
        kind = rng.choice([kind for kind in spec.operations if allowed[kind]] or ["sub"])
        if kind == "add":
            operand = rng.randint(1, min(spec.max_operand, spec.max_value - value))
        elif kind == "sub":
            operand = rng.randint(1, min(spec.max_operand, value))
        elif kind == "mul":
            operand = rng.randint(2, min(spec.max_factor, spec.max_value // value))
        else:
            operand = rng.choice(divisors)
        operations.append((kind, operand))
        value = apply_operation(value, kind, operand)  # type: ignore[assignment]
    return StepProblem(start=start, operations=tuple(operations))


def generate(
    count: int, spec: TaskSpec, seed: int, pool: Pool = "rl", exclude: set[str] | None = None
) -> list[StepProblem]:
    """``count`` distinct problems of ``pool`` (none whose text is in ``exclude``), deterministic in ``seed``."""
    rng = random.Random(seed)
    return draw_distinct(
        count,
        lambda: make_problem(rng, spec),
        f"{pool!r} problems with {spec}",
        exclude,
        accept=lambda problem: pool_of(problem.text) == pool,
        max_attempts=_MAX_ATTEMPTS_PER_PROBLEM,
    )


def build_rows(problems: Sequence[StepProblem], split: str, first: int) -> list[dict[str, Any]]:
    """Schema rows: the testbed's short prompt; ``extra_info`` carries the start value and the reference steps."""
    rows = []
    for n, problem in enumerate(problems):
        row = build_row(
            DATA_SOURCE,
            problem.text,
            str(problem.answer),
            f"{DATA_SOURCE}-{first + n}",
            split,
            {"num_ops": len(problem.operations), "start": problem.start, "solution": problem.solution},
        )
        row["prompt"] = [{"content": problem.prompt, "role": "user"}]
        rows.append(row)
    return rows


def write_dataset(
    output_dir: str | Path, num_train: int, num_val: int, spec: TaskSpec = TaskSpec(), seed: int = 0
) -> tuple[Path, Path | None]:
    """Write the RL train and validation files (``rl`` pool problems); returns their paths (val None if 0 rows)."""
    if num_train < 1 or num_val < 0:
        raise DataError("--num-train must be at least 1 and --num-val at least 0")
    problems = generate(num_train + num_val, spec, seed, pool="rl")
    out_dir = Path(output_dir).expanduser()
    train = write_rows(build_rows(problems[:num_train], "train", 0), out_dir / f"{DATA_SOURCE}_train.parquet")
    val = None
    if num_val:
        val = write_rows(build_rows(problems[num_train:], "val", num_train), out_dir / f"{DATA_SOURCE}_val.parquet")
    return train, val


def add_task_arguments(parser: argparse._ActionsContainer) -> None:
    """The difficulty knobs as options (shared with ``recipe.acpo.testbed``)."""
    default = TaskSpec()
    parser.add_argument(
        "--num-ops",
        type=parse_num_ops,
        # A string default goes through ``type`` too, and reads in --help as the user writes it.
        default=f"{default.num_ops[0]}-{default.num_ops[1]}",
        metavar="N|MIN-MAX",
        help="operations per problem: N, or a range drawn per problem (default %(default)s)",
    )
    parser.add_argument(
        "--max-start", type=int, default=default.max_start, help="largest start value (default %(default)s)"
    )
    parser.add_argument(
        "--max-operand", type=int, default=default.max_operand, help="largest operand of + and - (default %(default)s)"
    )
    parser.add_argument(
        "--max-factor", type=int, default=default.max_factor, help="largest factor of * and / (default %(default)s)"
    )
    parser.add_argument(
        "--max-value", type=int, default=default.max_value, help="largest intermediate value (default %(default)s)"
    )
    parser.add_argument(
        "--operations",
        default=",".join(default.operations),
        help=f"comma-separated subset of {','.join(OPERATIONS)} (default %(default)s)",
    )


def task_spec(args: argparse.Namespace) -> TaskSpec:
    operations = tuple(op.strip() for op in args.operations.split(",") if op.strip())
    return TaskSpec(args.num_ops, args.max_start, args.max_operand, args.max_factor, args.max_value, operations)


def task_arguments(spec: TaskSpec) -> list[str]:
    """The options of :func:`add_task_arguments` that give ``spec`` back (for a tool that runs the testbed's)."""
    low, high = spec.num_ops
    return [
        *("--num-ops", f"{low}-{high}", "--max-start", str(spec.max_start)),
        *("--max-operand", str(spec.max_operand), "--max-factor", str(spec.max_factor)),
        *("--max-value", str(spec.max_value), "--operations", ",".join(spec.operations)),
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recipe.acpo.testbed.task",
        description="Generate the testbed task: chains of integer operations whose reference solutions are written "
        "one step per line ('First, 16 - 11 = 5.' ... 'Answer: 15'), in verl's RL parquet (data_source "
        f"{DATA_SOURCE}; extra_info carries start, num_ops and solution). Writes DIR/{DATA_SOURCE}_train.parquet "
        f"and DIR/{DATA_SOURCE}_val.parquet; train and validation share no problem, and neither shares one with "
        "the testbed policy's fine-tuning set; the same arguments give the same files.",
        epilog="Example: python -m recipe.acpo.testbed.task --output-dir /tmp/data --num-train 512 --num-val 64",
    )
    parser.add_argument("--output-dir", required=True, help="folder for the parquet files")
    parser.add_argument("--num-train", type=int, default=1024, help="training problems (default 1024)")
    parser.add_argument("--num-val", type=int, default=128, help="validation problems (default 128; 0: no val file)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_task_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> None:
    spec = task_spec(args)
    train, val = write_dataset(args.output_dir, args.num_train, args.num_val, spec, args.seed)
    print(f"{DATA_SOURCE}: {spec}, seed {args.seed}")
    print(f"  wrote {args.num_train} rows to {train}")
    if val is not None:
        print(f"  wrote {args.num_val} rows to {val}")


def main(argv: Sequence[str] | None = None) -> None:
    run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    main()
