"""Estimate each training prompt's pass rate with the initial policy and write it to ``extra_info.pass_rate``.

§6: Stage 1's curriculum seeds its pass-rate estimate p(q) from ``extra_info.pass_rate`` when the data has it,
so hard prompts are sampled hot from the first epoch instead of after their first group. This optional pre-pass
computes it the way training will see it: k samples per prompt through verl's own validation path
(``recipe.acpo.validation.command``: ``python -m recipe.acpo.main_acpo ... trainer.val_only=True`` with the training
parquet as validation data, ``rollout.val_kwargs.n=k`` at the rollout temperature), scored by the recipe's math
reward, dumped by verl to ``trainer.validation_data_dir`` and read back. p(q) = correct samples / samples of the prompt,
a sample being correct as in the evaluation (``recipe.acpo.validation.generations``: its ``acc``, else its score, in
[0, 1] and above 0).

verl's dump does not say which data row a generation came from, so the pre-pass adds a row number to
``extra_info`` (``acpo_pass_rate_row``) of a working copy of the input and wraps the run's reward manager in
``recipe.acpo.validation.tagging_reward_manager``, which echoes that number into the per-sample reward information
verl dumps (the data side is ``data_prep.pass_rate``). The output is the input, row for row and column for column,
with ``extra_info.pass_rate`` added (or replaced). A row verl could not sample (e.g. a prompt longer than
``data.max_prompt_length``, which verl's dataset drops) keeps a null pass rate and is counted in the summary. The
run's output goes to the console and to ``validation.log`` in the work folder, which a failed run leaves in place.

Example (GPU node; on a CPU add ``--config-name acpo_cpu``)::

    python -m recipe.acpo.pass_rate --input train.parquet --output train_pass_rate.parquet \\
        --model Qwen/Qwen2.5-Math-7B --k 8 -- trainer.n_gpus_per_node=8 data.max_response_length=3072
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from data_prep.cli import module_parser
from data_prep.pass_rate import ROW_KEY, add_row_numbers, write_pass_rates
from data_prep.schema import DataError
from recipe.acpo.validation.command import (
    PROJECT_ROOT,
    ValidationRunError,
    compose_run_config,
    entry_point_command,
    entry_point_env,
    tagging_reward_manager_overrides,
    training_size_overrides,
    validation_only_overrides,
)
from recipe.acpo.validation.generations import (
    GenerationsError,
    is_correct,
    read_generations,
    sample_accuracy,
    sample_location,
)
from recipe.acpo.validation.runner import RunFailedError, run_logged, shell_line

EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 3
# What the tagging reward manager copies into each dumped sample: the row number of the working copy.
ROW_TAG = f"extra_info.{ROW_KEY}"

__all__ = ["ROW_TAG", "PassRates", "main", "pass_rates_from_dump", "validation_command"]


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
    """The ``recipe.acpo.main_acpo`` command that samples ``k`` responses per row of ``data`` and dumps them.

    Raises:
        ValidationRunError: ``config_name`` is no recipe config or ``overrides`` do not compose with it.
    """
    run_config = compose_run_config(config_name, overrides)
    settings = [
        *validation_only_overrides(
            model=model,
            train_files=[data],
            val_files=[data],
            k=k,
            temperature=temperature,
            top_p=1.0,
            top_k=-1,
            dump_dir=dump_dir,
        ),
        f"ray_kwargs.ray_init._temp_dir={ray_dir}",
        "trainer.logger=[console]",
    ]
    # The settings composed from the caller's overrides come last: a caller's reward manager gets wrapped rather than
    # replacing the wrapper.
    composed = [*tagging_reward_manager_overrides(run_config, tags=[ROW_TAG]), *training_size_overrides(run_config)]
    return entry_point_command(config_name, [*settings, *overrides, *composed])


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


def pass_rates_from_dump(samples: Iterable[Mapping[str, Any]], num_rows: int, where: str = "generations") -> PassRates:
    """Pass rate of each data row from verl's validation dump ``where``: the share of its samples that are correct.

    Raises:
        GenerationsError: a sample without a valid ``acpo_pass_rate_row`` or accuracy (naming ``where`` and the
            sample).
    """
    correct = [0] * num_rows
    counts = [0] * num_rows
    for index, sample in enumerate(samples):
        location = sample_location(where, index)
        row = sample.get(ROW_KEY)
        if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < num_rows:
            raise GenerationsError(f"{location}: {ROW_KEY}={row!r} is not a row of the {num_rows}-row input")
        counts[row] += 1
        correct[row] += is_correct(sample_accuracy(sample, f"{location} (row {row})"))
    rates = [c / n if n else None for c, n in zip(correct, counts)]
    return PassRates(rates=rates, samples=counts)


def _parser() -> argparse.ArgumentParser:
    parser = module_parser("recipe.acpo.pass_rate", __doc__)
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
        "--work-dir",
        type=Path,
        help="keep the working copy, verl's dump and the run's log here (default: a temp dir, kept if the run fails)",
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
    work = (args.work_dir or Path(tempfile.mkdtemp(prefix="acpo_pass_rate_"))).resolve()  # verl runs from the root
    work.mkdir(parents=True, exist_ok=True)
    log_file = work / "validation.log"
    keep_work = args.work_dir is not None
    # Ray's socket paths must stay under 107 characters: a short private folder of its own.
    ray_dir = Path(tempfile.mkdtemp(prefix="acpo_pr_ray_", dir="/tmp"))
    try:
        table = pq.read_table(args.input)
        working_copy = work / "input_with_rows.parquet"
        pq.write_table(add_row_numbers(table), working_copy)
        dump_dir = work / "generations"
        if dump_dir.exists():
            shutil.rmtree(dump_dir)
        log_file.unlink(missing_ok=True)
        command = validation_command(
            working_copy, args.model, args.k, args.temperature, dump_dir, ray_dir, args.config_name, args.overrides
        )
        if args.dry_run:
            print(shell_line(command))
            return 0
        try:
            run_logged(command, entry_point_env(), log_file, "the validation run", cwd=PROJECT_ROOT)
        except RunFailedError as err:
            keep_work = True  # the log and what verl dumped, for reading after the failure
            print(f"pass_rate: error: {err}", file=sys.stderr)
            return EXIT_RUN_FAILED
        generations = read_generations(dump_dir)
        rates = pass_rates_from_dump(generations.samples, table.num_rows, where=str(generations.file))
        args.output.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(write_pass_rates(table, rates.rates), args.output)
        print(rates.summary(args.k, args.hard_pass_rate))
        print(f"wrote {args.output}")
        return 0
    except DataError as err:
        print(f"pass_rate: error: {args.input}: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValidationRunError as err:
        print(f"pass_rate: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
