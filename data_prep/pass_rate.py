"""Estimate each training prompt's pass rate with the initial policy and write it to ``extra_info.pass_rate``.

Spec §6: Stage 1's curriculum seeds its pass-rate estimate p(q) from ``extra_info.pass_rate`` when the data has it,
so hard prompts are sampled hot from the first epoch instead of after their first group. This optional pre-pass
computes it the way training will see it: k samples per prompt through verl's own validation path
(``python -m recipe.acpo.main_acpo ... trainer.val_only=True`` with the training parquet as validation data,
``rollout.val_kwargs.n=k`` at the rollout temperature), scored by the recipe's math reward, dumped by verl to
``trainer.validation_data_dir`` and read back here. p(q) = correct samples / samples of the prompt.

verl's dump does not say which data row a generation came from, so the pre-pass adds a row number to
``extra_info`` (``acpo_pass_rate_row``) of a working copy of the input and scores with
``recipe.acpo.pass_rate_reward.PassRateRewardManager``, the recipe's reward manager that also echoes that number into
the per-sample reward information verl dumps. The output is the input, row for row and column for column, with
``extra_info.pass_rate`` added (or replaced). A row verl could not sample (e.g. a prompt longer than
``data.max_prompt_length``, which verl's dataset drops) keeps a null pass rate and is counted in the summary.

Example (GPU node; on a CPU add ``--config-name acpo_cpu``)::

    python -m data_prep.pass_rate --input train.parquet --output train_pass_rate.parquet \\
        --model Qwen/Qwen2.5-Math-7B --k 8 -- trainer.n_gpus_per_node=8 data.max_response_length=3072
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.schema import DataError

ROW_KEY = "acpo_pass_rate_row"
PASS_RATE_KEY = "pass_rate"
EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 3
_REPO_ROOT = Path(__file__).resolve().parents[1]
# The recipe's reward manager plus the row number (recipe/acpo/pass_rate_reward.py), as verl's importlib source.
REWARD_MANAGER = ("pkg://recipe.acpo.pass_rate_reward", "PassRateRewardManager")

__all__ = [
    "PASS_RATE_KEY",
    "REWARD_MANAGER",
    "ROW_KEY",
    "PassRates",
    "add_row_numbers",
    "main",
    "pass_rates_from_dump",
    "validation_command",
    "write_pass_rates",
]


# ----------------------------------------------------------------------------------------------------------------
# The working copy and the output
# ----------------------------------------------------------------------------------------------------------------


def _extra_info_children(table: pa.Table) -> tuple[list[pa.Array], list[str]]:
    if "extra_info" not in table.column_names:
        return [], []
    column = table.column("extra_info").combine_chunks()
    if not pa.types.is_struct(column.type):
        raise DataError(f"extra_info is {column.type}, not a struct: the pass rate cannot be stored in it")
    names = [column.type.field(i).name for i in range(column.type.num_fields)]
    # flatten() applies the struct's own null mask to its children.
    return list(column.flatten()), names


def _with_extra_info(table: pa.Table, children: Sequence[pa.Array], names: Sequence[str]) -> pa.Table:
    extra_info = pa.StructArray.from_arrays(list(children), names=list(names))
    if "extra_info" in table.column_names:
        return table.set_column(table.column_names.index("extra_info"), "extra_info", extra_info)
    return table.append_column("extra_info", extra_info)


def add_row_numbers(table: pa.Table) -> pa.Table:
    """``table`` with ``extra_info.acpo_pass_rate_row`` = 0..n-1 (an ``extra_info`` struct is created if missing)."""
    children, names = _extra_info_children(table)
    if ROW_KEY in names:
        raise DataError(f"extra_info already has a field {ROW_KEY!r}: is this a working copy of the pre-pass?")
    return _with_extra_info(table, [*children, pa.array(range(table.num_rows), type=pa.int64())], [*names, ROW_KEY])


def write_pass_rates(table: pa.Table, rates: Sequence[float | None]) -> pa.Table:
    """``table`` with ``extra_info.pass_rate`` set to ``rates`` (float64, null where None), replacing any there."""
    if len(rates) != table.num_rows:
        raise ValueError(f"{len(rates)} pass rates for {table.num_rows} rows")
    children, names = _extra_info_children(table)
    kept = [(child, name) for child, name in zip(children, names) if name not in (PASS_RATE_KEY, ROW_KEY)]
    return _with_extra_info(
        table,
        [child for child, _ in kept] + [pa.array(list(rates), type=pa.float64())],
        [name for _, name in kept] + [PASS_RATE_KEY],
    )


# ----------------------------------------------------------------------------------------------------------------
# Reading verl's generations dump
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PassRates:
    """Per-row pass rates (None: no sample came back) and the sample counts behind them."""

    rates: list[float | None]
    samples: list[int]

    def summary(self, k: int, hard_pass_rate: float) -> str:
        estimated = [r for r in self.rates if r is not None]
        short = sum(0 < n < k for n in self.samples)
        lines = [
            f"rows: {len(self.rates)}, with a pass rate: {len(estimated)}, without (no sample came back): "
            f"{len(self.rates) - len(estimated)}",
            f"rows with fewer than k={k} samples: {short}",
        ]
        if estimated:
            hard = sum(r <= hard_pass_rate for r in estimated)
            lines.append(
                f"mean pass rate: {sum(estimated) / len(estimated):.4f}; rows at or below {hard_pass_rate} (hard in "
                f"Stage 1 with acpo.curriculum.hard_pass_rate={hard_pass_rate}): {hard} ({hard / len(estimated):.1%})"
            )
        return "\n".join(lines)


def pass_rates_from_dump(records: Iterable[Mapping[str, Any]], num_rows: int) -> PassRates:
    """Pass rate of each data row from verl's validation dump (one record per generation, ``score`` > 0: correct).

    Raises:
        DataError: a record without a valid ``acpo_pass_rate_row`` or ``score`` (naming the record).
    """
    correct = [0] * num_rows
    samples = [0] * num_rows
    for number, record in enumerate(records):
        row, score = record.get(ROW_KEY), record.get("score")
        if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < num_rows:
            raise DataError(f"generation record {number}: {ROW_KEY}={row!r} is not a row of the {num_rows}-row input")
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise DataError(f"generation record {number} (row {row}): score {score!r} is not a number")
        samples[row] += 1
        correct[row] += score > 0
    rates = [c / n if n else None for c, n in zip(correct, samples)]
    return PassRates(rates=rates, samples=samples)


def read_dump(folder: Path) -> list[dict[str, Any]]:
    """The generations verl dumped to ``trainer.validation_data_dir`` (one ``<step>.jsonl``)."""
    files = sorted(folder.glob("*.jsonl"))
    if len(files) != 1:
        raise DataError(f"{folder}: expected one generations file from verl's validation, found {len(files)}")
    with open(files[0], encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


# ----------------------------------------------------------------------------------------------------------------
# The validation run
# ----------------------------------------------------------------------------------------------------------------


def validation_command(
    data: Path,
    model: str,
    k: int,
    temperature: float,
    dump_dir: Path,
    ray_dir: Path,
    config_name: str,
    overrides: Sequence[str] = (),
) -> list[str]:
    """The ``recipe.acpo.main_acpo`` command that samples ``k`` responses per row of ``data`` and dumps them."""
    return [
        sys.executable,
        "-m",
        "recipe.acpo.main_acpo",
        "--config-name",
        config_name,
        f"actor_rollout_ref.model.path={model}",
        f"data.train_files={data}",
        f"data.val_files={data}",
        "trainer.val_only=True",
        "trainer.val_before_train=True",
        "trainer.resume_mode=disable",
        f"trainer.validation_data_dir={dump_dir}",
        f"actor_rollout_ref.rollout.val_kwargs.n={k}",
        f"actor_rollout_ref.rollout.val_kwargs.temperature={temperature}",
        "actor_rollout_ref.rollout.val_kwargs.top_p=1.0",
        "actor_rollout_ref.rollout.val_kwargs.top_k=-1",
        "actor_rollout_ref.rollout.val_kwargs.do_sample=True",
        "reward.reward_manager.source=importlib",
        f"reward.reward_manager.module.path={REWARD_MANAGER[0]}",
        f"reward.reward_manager.name={REWARD_MANAGER[1]}",
        f"ray_kwargs.ray_init._temp_dir={ray_dir}",
        # verl checks the training settings even when it only validates; nothing is trained, so any valid values do
        # (the overrides below, e.g. the training run's own, replace them).
        "trainer.total_training_steps=1",
        "trainer.logger=[console]",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=1",
        *overrides,
    ]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.pass_rate",
        description=__doc__.replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input", required=True, type=Path, help="training parquet in verl's RL schema")
    parser.add_argument(
        "--output", required=True, type=Path, help="parquet to write (the input + extra_info.pass_rate)"
    )
    parser.add_argument("--model", required=True, help="the initial policy: a Hugging Face folder (or hub id)")
    parser.add_argument("--k", type=int, default=8, help="samples per prompt (default 8, the paper's group size)")
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="sampling temperature: the rollout temperature (default 1.0)"
    )
    parser.add_argument(
        "--config-name",
        default="acpo_trainer",
        help="recipe config to run with: acpo_trainer (GPUs, default) or acpo_cpu (no GPU)",
    )
    parser.add_argument(
        "--hard-pass-rate", type=float, default=0.25, help="only for the printed summary: the hard-tier threshold"
    )
    parser.add_argument(
        "--work-dir", type=Path, help="keep the working copy and verl's dump here (default: a temp dir)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the validation command and stop")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for recipe.acpo.main_acpo (after '--')")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.k < 1:
        _parser().error(f"--k must be >= 1, got {args.k}")
    if not args.input.is_file():
        print(f"pass_rate: error: {args.input}: no such file", file=sys.stderr)
        return EXIT_BAD_INPUT
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="acpo_pass_rate_"))
    work.mkdir(parents=True, exist_ok=True)
    # Ray's socket paths must stay under 107 characters: a short private folder of its own.
    ray_dir = Path(tempfile.mkdtemp(prefix="acpo_pr_ray_", dir="/tmp"))
    try:
        table = pq.read_table(args.input)
        working_copy = work / "input_with_rows.parquet"
        pq.write_table(add_row_numbers(table), working_copy)
        dump_dir = work / "generations"
        if dump_dir.exists():
            shutil.rmtree(dump_dir)
        command = validation_command(
            working_copy, args.model, args.k, args.temperature, dump_dir, ray_dir, args.config_name, args.overrides
        )
        print("running:", shlex.join(command), flush=True)
        if args.dry_run:
            return 0
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        done = subprocess.run(command, cwd=_REPO_ROOT, env=env, check=False)
        if done.returncode != 0:
            print(f"pass_rate: error: the validation run exited with status {done.returncode}", file=sys.stderr)
            return EXIT_RUN_FAILED
        rates = pass_rates_from_dump(read_dump(dump_dir), table.num_rows)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(write_pass_rates(table, rates.rates), args.output)
        print(rates.summary(args.k, args.hard_pass_rate))
        print(f"wrote {args.output}")
        return 0
    except DataError as err:
        print(f"pass_rate: error: {args.input}: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
