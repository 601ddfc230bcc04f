"""Seconds per Stage-1 step of the CPU demo (16 prompts x 8 responses on the testbed) under several settings, paired.

    python benchmarks/bench_testbed_step.py [--steps 24] [--repeats 2] \
        [--variant NAME OVERRIDE [OVERRIDE ...]] ...

Every variant is the demo's Stage-1 run (``acpo_cpu_testbed_stage1`` with the demo's sizes, seed 0, ACPO's step dump
every step, no validation) plus its own Hydra overrides; the baseline has none. Runs alternate baseline, variants,
then the reverse order, ``--repeats`` times, so that a machine whose load drifts favours none. Rollouts are seeded,
so step k of every run samples the same responses from the same policy (up to the last-bit drift README's "Seeded
runs" describes): the benchmark prints, per timer, each variant's median over its steps and the median of its
per-step differences to the baseline at the same step and repeat, the paired figure that run-to-run noise moves
least. The first ``--warmup`` steps of each run are left out.

Without ``--variant`` it compares the CPU preset (the recipe's agent loop scores each response) with verl's
reward-loop workers (``reward.reward_kwargs.score_in_agent_loop=false``). The policy and data are built in
``--work`` as ``bench_learning.py`` builds them (about 3 minutes the first time).

An override ``env:NAME=VALUE`` sets the environment variable NAME for that variant's runs instead (the launcher's
environment reaches every Ray worker), e.g. ``--variant no_gc_freeze env:ACPO_GC_FREEZE=0``; the baseline runs with the
launcher's environment as it is.

``--floor`` also times, in this process and between the runs (before the first and after each), the same step's work
as plain torch computations on the built policy (``benchmarks/step_floor.py``), and prints their medians as one more
row: what separates verl's timers from it is the work around the computation and waiting. With ``--floor`` and no
``--variant``, only the baseline runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_learning import _log, _run, check_task, prepare, stage_command
from step_floor import FLOOR_TIMERS, measure_step_floor

from recipe.acpo.testbed.task import TaskSpec

BASELINE = "baseline"
FLOOR = "plain torch floor"
TIMERS = FLOOR_TIMERS
DEFAULT_VARIANTS = {"verl reward workers": ["reward.reward_kwargs.score_in_agent_loop=false"]}
# The demo's run, less what a timing run does not need.
TIMING_ONLY = (
    "trainer.val_before_train=False",
    "trainer.test_freq=-1",
    "trainer.save_freq=-1",
    "trainer.rollout_data_dir=null",
)


ENV_PREFIX = "env:"


def split_env_overrides(overrides: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """A variant's Hydra overrides, and the environment its ``env:NAME=VALUE`` overrides set."""
    hydra_overrides = [override for override in overrides if not override.startswith(ENV_PREFIX)]
    env = dict(override[len(ENV_PREFIX) :].split("=", 1) for override in overrides if override.startswith(ENV_PREFIX))
    return hydra_overrides, env


def with_overrides(command: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """``command`` with each ``key=value`` of ``overrides`` replacing the override of the same key (Hydra refuses a
    key given twice), or appended."""
    keys = {override.split("=", 1)[0].lstrip("+") for override in overrides}
    kept = [part for part in command if part.split("=", 1)[0].lstrip("+") not in keys]
    return [*kept, *overrides]


def step_timers(metrics_file: Path, warmup: int) -> dict[int, dict[str, float]]:
    """``{step: {timer: seconds}}`` of one run's metrics file, the first ``warmup`` steps left out."""
    timers: dict[int, dict[str, float]] = {}
    for line in metrics_file.read_text().splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        if entry["step"] > warmup:
            data = entry["data"]
            timers[entry["step"]] = {t: float(data[f"timing_s/{t}"]) for t in TIMERS if f"timing_s/{t}" in data}
    return timers


def paired_summary(runs: dict[str, list[dict[int, dict[str, float]]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per variant and timer: the median over its steps and the median per-step difference to the baseline.

    Args:
        runs: ``{variant: [step_timers of repeat 0, of repeat 1, ...]}``, the baseline under ``BASELINE``.

    Returns:
        ``{variant: {timer: {"median": s, "paired_diff": s, "pairs": n}}}``; the baseline has no ``paired_diff``.
    """
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for variant, repeats in runs.items():
        summary[variant] = {}
        for timer in TIMERS:
            values = [steps[s][timer] for steps in repeats for s in steps if timer in steps[s]]
            if not values:
                continue
            entry = {"median": statistics.median(values)}
            if variant != BASELINE:
                diffs = [
                    steps[s][timer] - base[s][timer]
                    for steps, base in zip(repeats, runs[BASELINE])
                    for s in steps
                    if s in base and timer in steps[s] and timer in base[s]
                ]
                entry.update(paired_diff=statistics.median(diffs), pairs=len(diffs))
            summary[variant][timer] = entry
    return summary


def format_summary(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    width = max(len(name) for name in summary) + 2
    lines = [f"{'':<{width}}" + "".join(f"{timer:>22}" for timer in TIMERS)]
    for variant, timers in summary.items():
        cells = []
        for timer in TIMERS:
            entry = timers.get(timer)
            if entry is None:
                cells.append(f"{'-':>22}")
            elif "paired_diff" in entry:
                cells.append(f"{entry['median']:>9.3f} ({entry['paired_diff']:+.3f})".rjust(22))
            else:
                cells.append(f"{entry['median']:>9.3f}".rjust(22))
        lines.append(f"{variant:<{width}}" + "".join(cells))
    lines.append("median seconds per step; in brackets the median per-step difference to the baseline, paired by step")
    return "\n".join(lines)


def parse_variants(raw: Sequence[Sequence[str]] | None, floor: bool = False) -> dict[str, list[str]]:
    if not raw:
        return {} if floor else dict(DEFAULT_VARIANTS)
    variants: dict[str, list[str]] = {}
    for name, *overrides in raw:
        if name == BASELINE or name in variants:
            raise ValueError(f"--variant {name!r}: each variant needs its own name, other than {BASELINE!r}")
        malformed = [override for override in overrides if "=" not in override or override.startswith(ENV_PREFIX + "=")]
        if not overrides or malformed:
            raise ValueError(f"--variant {name!r} needs KEY=VALUE or env:NAME=VALUE overrides, got {overrides}")
        variants[name] = overrides
    return variants


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and each option's default."""


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/bench_testbed_step.py",
        description=__doc__,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--work", type=Path, default=Path("outputs/bench_learning"), help="policy, data and runs")
    parser.add_argument("--steps", type=int, default=24, help="training steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="steps left out at the start of each run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per variant")
    parser.add_argument(
        "--variant",
        nargs="+",
        action="append",
        metavar=("NAME", "OVERRIDE"),
        help="a named set of Hydra overrides (KEY=VALUE) and environment variables (env:NAME=VALUE)",
    )
    parser.add_argument("--floor", action="store_true", help="also time the step as plain torch computations")
    args = parser.parse_args(argv)
    try:
        variants = parse_variants(args.variant, args.floor)
    except ValueError as err:
        parser.error(str(err))
    if args.steps <= args.warmup:
        parser.error(f"--steps {args.steps} leaves nothing after --warmup {args.warmup}")
    # The demo's sizes, as bench_learning.py runs them.
    args.task, args.batch_size, args.rollout_n, args.lr, args.val_n = TaskSpec(), 16, 8, 2e-4, 1
    args.train_size, args.val_size, args.test_freq = 1024, 16, -1

    start = time.time()
    work = args.work.resolve()
    check_task(work, args.task)
    policy, train, val = prepare(work, args, start)
    order = [BASELINE, *variants]
    runs: dict[str, list[dict[int, dict[str, float]]]] = {name: [] for name in order}
    all_overrides = {BASELINE: [], **variants}
    floors: list[dict[str, float]] = []

    def time_floor() -> None:
        if args.floor:
            _log(start, "plain torch floor")
            floors.append(measure_step_floor(policy, args.batch_size, args.rollout_n))

    time_floor()
    for repeat in range(args.repeats):
        for name in order if repeat % 2 == 0 else order[::-1]:
            run_dir = work / "step_time" / f"{name.replace(' ', '_')}_{repeat}"
            with tempfile.TemporaryDirectory(prefix="acpo_step_", dir="/tmp") as ray_tmp:
                # The demo's config as it is: no arm's switches (bench_learning's arms name their judge).
                command = stage_command("acpo", 1, policy, run_dir, args.steps, 0, train, val, args, ray_tmp, ())
                hydra_overrides, variant_env = split_env_overrides(all_overrides[name])
                command = with_overrides(command, [*TIMING_ONLY, *hydra_overrides])
                metrics = run_dir / "stage1_metrics.jsonl"
                metrics.unlink(missing_ok=True)
                run_dir.mkdir(parents=True, exist_ok=True)
                _log(start, f"{name}, run {repeat + 1} of {args.repeats}")
                env = {**os.environ, **variant_env, "VERL_FILE_LOGGER_PATH": str(metrics)}
                _run(command, run_dir / "stage1.log", env=env)
            runs[name].append(step_timers(metrics, args.warmup))
            time_floor()
    summary = paired_summary(runs)
    if floors:
        summary[FLOOR] = {key: {"median": statistics.median(f[key] for f in floors)} for key in floors[0]}
    print(f"\n{args.steps - args.warmup} steps x {args.repeats} runs per variant, 128 responses a step")
    print(format_summary(summary))
    if floors:
        shape = summary[FLOOR]
        print(
            f"{FLOOR}: {len(floors)} measurements between the runs, on the policy as built: "
            f"{shape['responses']['median']:.0f} responses of {shape['response_tokens_mean']['median']:.1f} tokens, "
            f"{shape['prefixes']['median']:.0f} prefixes continued by the look-ahead judge"
        )
    out = work / "step_time" / "bench_testbed_step.json"
    out.write_text(json.dumps({"variants": all_overrides, "summary": summary}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
