"""Learning benchmark on the CPU testbed (issue 22): does step credit make RL learn faster or better than GRPO?

Seven arms at an equal budget, all from the same policy, data, steps, responses per step, learning rate, two-stage
schedule and seeds; only what defines an arm differs:

- ``grpo``: (a) verl's GRPO estimator (``grpo_cpu_testbed``: single-turn rollouts, no curriculum, uniform token
  weights); Stage 1 KL-free, Stage 2 adds the K3 (low_var_kl) loss to the merged Stage-1 model, coefficient 0.001 as
  ACPO's.
- ``acpo_noattr``: (b) ACPO with ``acpo.advantage.alpha=0`` (curriculum, stages and confidence weights, no credit).
- ``acpo_spec``: (c) ACPO with the credit as the spec reads it (``acpo.advantage.attr_total=added``; the judge
  switches are at the spec's reading by default).
- ``acpo``: (d) ACPO with the spec's judge and the default redistribution (the attributed term centred per
  response, §4.1): the defaults until the look-ahead judge.
- ``acpo_oracle``: (e) ACPO whose C comes from the step checker (-1 on the first wrong step, +1 elsewhere) through
  the same §4 (``acpo.attribution.judge=oracle``): the ceiling any attribution can reach on this testbed.
- ``acpo_lookahead``: (f) ACPO with the look-ahead judge and value-only scoring (docs/algorithm.md §3.3:
  ``acpo.attribution.judge=lookahead``, ``score_tokens=value``), the testbed's defaults.
- ``acpo_lookahead_flat``: (g) as (f) with the entropy regimes of §4 flattened (``acpo.advantage.beta=0``,
  ``gamma=0``: w = 1 for every step), to tell the judge's credit from the entropy weighting (a diagnostic arm).

The ACPO arms set every credit switch they depend on, so that each stays what it was when the testbed's defaults
change; (b) and (c) use the spec's judge.

Runs are paired by seed: a seed sets the data order (``data.seed``) and every rollout's random stream
(``actor_rollout_ref.rollout.seed``), so the arms of one seed start from the same first rollouts. Each run:
Stage 1 -> ``python -m recipe.acpo.merge`` -> Stage 2 (as ``examples/run_acpo_cpu_demo.sh``), held-out accuracy
(verl's validation, ``trainer.test_freq``; 256 fixed problems x 2 samples at temperature 1) read back by
:mod:`recipe.acpo.testbed.curve`, the rollouts (verl's ``trainer.rollout_data_dir``) for the share of hasty lines,
and for the ACPO arms the step dump for the credit's hit rate (``recipe.acpo.testbed.slips``: the lowest-C step and
the most blamed step against the slip step, against chance 1/K), early (first third of the steps) and late (last
third). A finished run leaves ``WORK/results/<arm>_seed<seed>.json``; ``--resume`` skips it.

The summary prints per arm the accuracy at steps 16, 24, 48 and the end (mean ± standard error over seeds), the first
step with a 10-point gain, the hasty-line share early and late, the credit's hit rates, how hard the ACPO arms'
advantages push from hasty toward careful lines (mean advantage per token on hasty minus careful lines, beside GRPO's
A_base on the same tokens), and each arm's paired
difference to (a) (mean ± standard error of the per-seed differences) and, for the arms with credit, to (b)
(alpha = 0: everything of ACPO but the credit, so that difference is the credit's own effect); it writes
``OUT/bench_learning.json`` and ``OUT/bench_learning.png`` (one curve per arm: the mean and a ± 1 standard error band).

    python benchmarks/bench_learning.py                  # all arms, seeds 0-2
    python benchmarks/bench_learning.py --arms grpo acpo_oracle --seeds 0 1 2 3 4 --resume
    python benchmarks/bench_learning.py --summary-only

The defaults are the CPU demo's budget (48 Stage-1 and 8 Stage-2 steps of 16 x 8 responses, lr 2e-4) on the demo's
task. The testbed's task options (``--num-ops``, ``--max-value``, ...; ``python -m recipe.acpo.testbed.task --help``)
build the policy and the data for another task, one task per ``--work`` folder (``WORK/task.json`` records it; a
folder built for another task is refused)::

    python benchmarks/bench_learning.py --work outputs/bench_learning_4to6 --num-ops 4-6 --arms grpo acpo_oracle
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from data_prep.schema import DataError
from recipe.acpo.testbed.curve import accuracy_points
from recipe.acpo.testbed.slips import credit_hit_rates, line_kind_advantages
from recipe.acpo.testbed.task import TaskSpec, add_task_arguments, task_arguments, task_spec

ARMS = ("grpo", "acpo_noattr", "acpo_spec", "acpo", "acpo_oracle", "acpo_lookahead", "acpo_lookahead_flat")
ARM_LABELS = {
    "grpo": "(a) verl GRPO",
    "acpo_noattr": "(b) ACPO alpha=0",
    "acpo_spec": "(c) ACPO, spec credit",
    "acpo": "(d) ACPO, spec's judge",
    "acpo_oracle": "(e) ACPO, oracle credit",
    "acpo_lookahead": "(f) ACPO, look-ahead judge (default)",
    "acpo_lookahead_flat": "(g) ACPO, look-ahead judge, w = 1",
}
# What defines each ACPO arm, on top of the shared overrides (the GRPO arm runs another config).
# Every credit switch is explicit, so an arm stays what it was when the testbed's defaults change.
SPEC_JUDGE = ("acpo.attribution.judge=policy", "acpo.attribution.score_tokens=all")
# The testbed's default judge; scored by the reference path (naive), as its recorded runs were: equal to the default
# packed scoring within 1e-4 (tests/core/test_scoring_paths.py).
LOOKAHEAD_JUDGE = (
    "acpo.attribution.judge=lookahead",
    "acpo.attribution.score_tokens=value",
    "acpo.attribution.mode=naive",
)
ARM_OVERRIDES = {
    "acpo_noattr": ("acpo.advantage.alpha=0", *SPEC_JUDGE),
    "acpo_spec": ("acpo.advantage.attr_total=added", *SPEC_JUDGE),
    "acpo": SPEC_JUDGE,
    "acpo_oracle": ("acpo.attribution.judge=oracle", "acpo.attribution.score_tokens=all"),
    "acpo_lookahead": LOOKAHEAD_JUDGE,
    "acpo_lookahead_flat": (*LOOKAHEAD_JUDGE, "acpo.advantage.beta=0", "acpo.advantage.gamma=0"),
}
ARM_COLORS = {
    "grpo": "tab:blue",
    "acpo_noattr": "tab:orange",
    "acpo_spec": "tab:purple",
    "acpo": "tab:green",
    "acpo_oracle": "tab:red",
    "acpo_lookahead": "tab:brown",
    "acpo_lookahead_flat": "tab:olive",
}
REPORT_STEPS = (16, 24, 48)
PUSH_KEYS = ("a_final", "a_final_w1", "a_base")
GAIN_POINTS = 10.0
GRPO_STAGE2_KL = (
    "actor_rollout_ref.actor.use_kl_loss=True",
    "actor_rollout_ref.actor.kl_loss_type=low_var_kl",
    "actor_rollout_ref.actor.kl_loss_coef=0.001",
)


# --- analysis (pure) ---------------------------------------------------------------------------------------------


def mean_se(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n)) of the values that are numbers (SE 0 for one; NaN for none)."""
    numbers = [v for v in values if v is not None and not math.isnan(v)]
    if not numbers:
        return float("nan"), float("nan")
    if len(numbers) == 1:
        return numbers[0], 0.0
    return statistics.fmean(numbers), statistics.stdev(numbers) / math.sqrt(len(numbers))


def first_gain_step(points: Sequence[tuple[int, float]], gain: float = GAIN_POINTS / 100) -> int | None:
    """The first step whose accuracy is at least ``gain`` above the first point's (None: never)."""
    if not points:
        return None
    start = points[0][1]
    return next((step for step, acc in points if acc >= start + gain - 1e-12), None)


def accuracy_at(points: Sequence[tuple[int, float]], step: int) -> float | None:
    """The accuracy validated at ``step`` (the last point at or before it when that step was not validated)."""
    before = [acc for s, acc in points if s <= step]
    return before[-1] if before else None


def median_step_seconds(metrics_files: Sequence[Path]) -> float | None:
    """The median of verl's ``timing_s/step`` over a run's training steps (its metrics JSONL files)."""
    from recipe.acpo.testbed.curve import read_rows

    seconds = [
        float(row["timing_s/step"])
        for path in metrics_files
        if path.is_file()
        for row in read_rows(path)
        if isinstance(row.get("timing_s/step"), int | float)
    ]
    return statistics.median(seconds) if seconds else None


def hasty_share_by_phase(rollout_files: Sequence[Path]) -> dict[str, float]:
    """The share of hasty lines among the equation lines of the training rollouts (verl's ``rollout_data_dir``
    JSONL, one file a step, in training order): in the first third of the steps, the last third, and all."""
    from recipe.acpo.testbed.demonstrations import hasty_line_share

    outputs = [[str(row.get("output", "")) for row in read_jsonl(f)] for f in rollout_files]
    third = max(1, len(outputs) // 3)
    return {
        "early": hasty_line_share([o for step in outputs[:third] for o in step]),
        "late": hasty_line_share([o for step in outputs[-third:] for o in step]),
        "all": hasty_line_share([o for step in outputs for o in step]),
    }


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a JSONL file; a line that is not JSON (a write cut short by a killed run) is skipped."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def dump_hit_rates(dump_files: Sequence[Path]) -> dict:
    """Hit statistics and the advantage per token on hasty and careful lines (``line_advantage``) over the first third
    and last third of the dumped training steps (files in training order)."""
    third = max(1, len(dump_files) // 3)
    phases = {"early": dump_files[:third], "late": dump_files[-third:]}
    rates: dict = {"dumped_steps": len(dump_files)}
    for phase, files in phases.items():
        records = [r for f in files for r in read_jsonl(f)]
        rates[phase] = {**credit_hit_rates(records), "line_advantage": line_kind_advantages(records)}
    return rates


def hasty_push(line_advantage: dict | None, key: str) -> float:
    """Mean advantage per token on hasty lines minus careful lines: how hard the advantages push away from hasty lines
    (negative) or toward them (positive); NaN without the figure.

    ``key`` is one of :data:`PUSH_KEYS` (:func:`recipe.acpo.testbed.slips.line_kind_advantages`): ``a_final``, its
    counterfactual with w = 1 ``a_final_w1`` (at the testbed's alpha = 0.5 and redistribution, so for (b) and (c) it
    is what their s would give under those), or GRPO's ``a_base``."""
    if not line_advantage:
        return math.nan
    return line_advantage["hasty"].get(key, math.nan) - line_advantage["careful"].get(key, math.nan)


def _end_accuracy(run: dict) -> float | None:
    return run["points"][-1][1] if run["points"] else None


def paired_differences(arm_runs: Sequence[dict], reference: dict[int, dict]) -> dict:
    """Accuracy minus the ``reference`` arm's run of the same seed, at the end and at REPORT_STEPS (mean ± s.e.)."""
    paired = [r for r in arm_runs if r["seed"] in reference]
    return {
        "end": mean_se([_diff(_end_accuracy(r), _end_accuracy(reference[r["seed"]])) for r in paired]),
        "at": {
            str(s): mean_se(
                [_diff(accuracy_at(r["points"], s), accuracy_at(reference[r["seed"]]["points"], s)) for r in paired]
            )
            for s in REPORT_STEPS
        },
    }


def summarize(runs: Sequence[dict]) -> dict:
    """Per arm: accuracy at REPORT_STEPS and the end, first 10-point gain steps, hasty-line share, credit hit rates
    (each mean ± standard error over seeds), wall time, the paired difference to the GRPO arm and, for the arms with
    credit, to the alpha = 0 arm (everything of ACPO but the credit: the credit's own effect)."""
    summary: dict = {}
    grpo = {r["seed"]: r for r in runs if r["arm"] == "grpo"}
    no_credit = {r["seed"]: r for r in runs if r["arm"] == "acpo_noattr"}
    for arm in ARMS:
        arm_runs = sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["seed"])
        if not arm_runs:
            continue
        entry: dict = {
            "seeds": [r["seed"] for r in arm_runs],
            "acc_start": mean_se([r["points"][0][1] if r["points"] else None for r in arm_runs]),
            "acc_end": mean_se([_end_accuracy(r) for r in arm_runs]),
            "acc_at": {str(s): mean_se([accuracy_at(r["points"], s) for r in arm_runs]) for s in REPORT_STEPS},
            "first_gain_steps": [first_gain_step(r["points"]) for r in arm_runs],
            "wall_s": [r["wall_s"] for r in arm_runs],
            "step_s": mean_se([r.get("median_step_s") for r in arm_runs]),
        }
        hasty = [r["hasty_share"] for r in arm_runs if r.get("hasty_share")]
        for phase in ("early", "late"):
            if hasty:
                entry[f"hasty_{phase}"] = mean_se([h[phase] for h in hasty])
        hits = [r["hit_rates"] for r in arm_runs if r.get("hit_rates")]
        for phase in ("early", "late"):
            if hits:
                entry[f"hit_{phase}"] = mean_se([h[phase]["hit_rate"] for h in hits])
                entry[f"blamed_{phase}"] = mean_se([h[phase].get("most_blamed_hit_rate", math.nan) for h in hits])
                entry[f"chance_{phase}"] = mean_se([h[phase]["chance"] for h in hits])
                entry[f"a_attr_slip_{phase}"] = mean_se([h[phase]["a_attr_on_slip_mean"] for h in hits])
                entry[f"lucky_{phase}"] = mean_se(
                    [h[phase].get("correct_with_wrong_step_frac", float("nan")) for h in hits]
                )
                pushes = {key: [hasty_push(h[phase].get("line_advantage"), key) for h in hits] for key in PUSH_KEYS}
                if any(math.isfinite(v) for v in pushes["a_final"]):  # runs analysed before the figure existed
                    for key, values in pushes.items():
                        entry[f"hasty_push_{key}_{phase}"] = mean_se(values)
        paired = [r for r in arm_runs if r["seed"] in grpo]
        if arm != "grpo" and paired:
            entry["paired_seeds"] = [r["seed"] for r in paired]
            entry["step_s_ratio"] = mean_se(
                [_ratio(r.get("median_step_s"), grpo[r["seed"]].get("median_step_s")) for r in paired]
            )
            differences = paired_differences(paired, grpo)
            entry["diff_end"], entry["diff_at"] = differences["end"], differences["at"]
        if arm not in ("grpo", "acpo_noattr") and any(r["seed"] in no_credit for r in arm_runs):
            differences = paired_differences(arm_runs, no_credit)
            entry["credit_diff_end"], entry["credit_diff_at"] = differences["end"], differences["at"]
        summary[arm] = entry
    return summary


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _pm(pair: Sequence[float], scale: float = 100.0, signed: bool = False) -> str:
    if math.isnan(pair[0]):
        return "-"
    return f"{scale * pair[0]:{'+' if signed else ''}5.1f} ± {scale * pair[1]:4.1f}"


def format_table(summary: dict) -> str:
    """The side-by-side table the benchmark prints (percent; ± one standard error over seeds)."""
    arms = [a for a in ARMS if a in summary]
    rows = [("", [ARM_LABELS[a] for a in arms])]
    rows.append(("seeds", [" ".join(map(str, summary[a]["seeds"])) for a in arms]))
    rows.append(("acc start (%)", [_pm(summary[a]["acc_start"]) for a in arms]))
    for step in REPORT_STEPS:
        rows.append((f"acc step {step} (%)", [_pm(summary[a]["acc_at"][str(step)]) for a in arms]))
    rows.append(("acc end (%)", [_pm(summary[a]["acc_end"]) for a in arms]))
    rows.append(("end - (a), paired (pts)", [_pm(summary[a].get("diff_end", (math.nan,)), signed=True) for a in arms]))
    for step in REPORT_STEPS:
        cells = [_pm(summary[a].get("diff_at", {}).get(str(step), (math.nan,)), signed=True) for a in arms]
        rows.append((f"step {step} - (a), paired", cells))
    if any("credit_diff_end" in summary[a] for a in arms):  # the credit's own effect: against alpha = 0
        rows.append(
            (
                "end - (b), paired (pts)",
                [_pm(summary[a].get("credit_diff_end", (math.nan,)), signed=True) for a in arms],
            )
        )
        for step in REPORT_STEPS:
            cells = [_pm(summary[a].get("credit_diff_at", {}).get(str(step), (math.nan,)), signed=True) for a in arms]
            rows.append((f"step {step} - (b), paired", cells))
    rows.append(
        (
            f"first +{GAIN_POINTS:.0f} pts step",
            [" ".join("-" if s is None else str(s) for s in summary[a]["first_gain_steps"]) for a in arms],
        )
    )
    rows.append(("wall s / run", [" ".join(f"{w:.0f}" for w in summary[a]["wall_s"]) for a in arms]))
    rows.append(("median step s", [_pm(summary[a]["step_s"], scale=1.0) for a in arms]))
    rows.append(("step s / (a)'s, paired", [_pm(summary[a].get("step_s_ratio", (math.nan,)), 1.0) for a in arms]))
    for phase in ("early", "late"):
        rows.append((f"hasty lines {phase} (%)", [_pm(summary[a].get(f"hasty_{phase}", (math.nan,))) for a in arms]))
    for phase in ("early", "late"):
        cells = [
            f"{_pm(summary[a][f'hit_{phase}'])} vs {100 * summary[a][f'chance_{phase}'][0]:.1f}"
            if f"hit_{phase}" in summary[a]
            else "-"
            for a in arms
        ]
        rows.append((f"lowest-C hit {phase} (%)", cells))
    for phase in ("early", "late"):
        cells = [_pm(summary[a][f"blamed_{phase}"]) if f"blamed_{phase}" in summary[a] else "-" for a in arms]
        rows.append((f"most-blamed hit {phase} (%)", cells))
    for phase in ("early", "late"):
        cells = [
            "{:+.2f} ± {:.2f}".format(*summary[a][f"a_attr_slip_{phase}"])
            if f"a_attr_slip_{phase}" in summary[a]
            else "-"
            for a in arms
        ]
        rows.append((f"A_attr on slip {phase}", cells))
    for phase in ("early", "late"):
        cells = [
            "{:+.2f} (w=1 {:+.2f}, A_base {:+.2f})".format(
                *(summary[a][f"hasty_push_{key}_{phase}"][0] for key in PUSH_KEYS)
            )
            if f"hasty_push_a_final_{phase}" in summary[a]
            else "-"
            for a in arms
        ]
        rows.append((f"A/token hasty-careful {phase}", cells))
    width = max(len(c) for _, cells in rows for c in cells) + 2
    return "\n".join(f"{label:<28}" + "".join(f"{c:>{width}}" for c in cells) for label, cells in rows)


def plot(runs: Sequence[dict], out: Path, stage1_steps: int | None = None) -> Path:
    """Accuracy against step: per arm the mean over seeds and a ± 1 standard error band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for arm in ARMS:
        arm_runs = [r for r in runs if r["arm"] == arm and r["points"]]
        by_step: dict[int, list[float]] = {}
        for r in arm_runs:
            for step, acc in r["points"]:
                by_step.setdefault(step, []).append(acc)
        if not by_step:
            continue
        steps = sorted(by_step)
        means, errors = zip(*(mean_se(by_step[s]) for s in steps))
        mean = [100 * m for m in means]
        axes.plot(steps, mean, color=ARM_COLORS[arm], linewidth=2, marker="o", markersize=3,
                  label=f"{ARM_LABELS[arm]} ({len(arm_runs)} seeds)")  # fmt: skip
        axes.fill_between(steps, [m - 100 * e for m, e in zip(mean, errors)],
                          [m + 100 * e for m, e in zip(mean, errors)], color=ARM_COLORS[arm], alpha=0.15)  # fmt: skip
    if stage1_steps:
        axes.axvline(stage1_steps, color="grey", linestyle=":", label="Stage 1 | Stage 2")
    axes.set_xlabel("training step")
    axes.set_ylabel("held-out accuracy (%), mean ± 1 s.e. over seeds")
    axes.set_title("CPU testbed: held-out accuracy against step")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


# --- the runs ------------------------------------------------------------------------------------------------------


def _log(start: float, message: str) -> None:
    print(f"[{time.time() - start:7.0f}s {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _run(cmd: list[str], log: Path, env: dict | None = None, timeout: float | None = None) -> None:
    with log.open("w") as handle:
        proc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, timeout=timeout)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"command failed ({proc.returncode}), see {log}:\n{tail}")


def check_task(work: Path, spec: TaskSpec) -> None:
    """Record in ``WORK/task.json`` the task that WORK's policy and data are built for, and refuse another: runs of two
    tasks must not share a policy, data or results. A folder from before the record holds the default task."""
    record = work / "task.json"
    wanted = json.loads(json.dumps(dataclasses.asdict(spec)))
    if record.is_file():
        built = json.loads(record.read_text())
    elif (work / "policy").exists() or (work / "data").exists():
        built = json.loads(json.dumps(dataclasses.asdict(TaskSpec())))
    else:
        built = wanted
    if built != wanted:
        raise ValueError(f"{work} holds a policy and data built for the task {built}, not {wanted}: use another --work")
    work.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(wanted) + "\n")


def prepare(work: Path, args: argparse.Namespace, start: float) -> tuple[Path, Path, Path]:
    policy, data = work / "policy", work / "data"
    task = task_arguments(args.task)
    if not (policy / "config.json").is_file():
        _log(start, f"building the testbed policy in {policy}")
        _run(
            [sys.executable, "-m", "recipe.acpo.testbed", "build", str(policy), "--seed", "0", *task],
            work / "build.log",
        )
    train, val = data / "arithmetic_steps_train.parquet", data / "arithmetic_steps_val.parquet"
    if not val.is_file():
        _log(start, f"generating {args.train_size} training and {args.val_size} held-out problems in {data}")
        _run(
            [
                *(sys.executable, "-m", "recipe.acpo.testbed.task", "--output-dir", str(data)),
                *("--num-train", str(args.train_size), "--num-val", str(args.val_size), "--seed", "0", *task),
            ],
            work / "data.log",
        )
    return policy, train, val


def stage_command(arm: str, stage: int, model: Path, run_dir: Path, steps: int, seed: int, train: Path, val: Path,
                  args: argparse.Namespace, ray_tmp: str,
                  arm_overrides: Sequence[str] | None = None) -> list[str]:  # fmt: skip
    """One stage of one run; ``arm_overrides`` replaces what defines an ACPO arm (``()``: the config's defaults)."""
    config = "grpo_cpu_testbed" if arm == "grpo" else f"acpo_cpu_testbed_stage{stage}"
    micro = args.batch_size * args.rollout_n
    overrides = [
        f"actor_rollout_ref.model.path={model}",
        f"data.train_files={train}",
        f"data.val_files={val}",
        f"data.train_batch_size={args.batch_size}",
        f"data.seed={seed}",
        f"actor_rollout_ref.rollout.seed={seed}",
        f"actor_rollout_ref.rollout.n={args.rollout_n}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={args.batch_size}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={micro}",
        f"actor_rollout_ref.actor.optim.lr={args.lr}",
        f"actor_rollout_ref.rollout.val_kwargs.n={args.val_n}",
        "actor_rollout_ref.actor.checkpoint.save_contents=[model,extra]",
        f"trainer.total_training_steps={steps}",
        f"trainer.save_freq={steps if stage == 1 else -1}",
        # Stage 2 starts from the model Stage 1 validated at its last step.
        f"trainer.val_before_train={stage == 1}",
        f"trainer.test_freq={args.test_freq}",
        "trainer.resume_mode=disable",
        f"trainer.default_local_dir={run_dir}/stage{stage}/checkpoints",
        "trainer.project_name=bench_learning",
        f"trainer.experiment_name={arm}_seed{seed}_stage{stage}",
        "trainer.logger=[console,file]",
        f"trainer.rollout_data_dir={run_dir}/stage{stage}/rollouts",
        f"ray_kwargs.ray_init._temp_dir={ray_tmp}",
        f"hydra.run.dir={run_dir}/stage{stage}/hydra",
    ]
    if arm == "grpo":
        overrides += ["acpo.curriculum.enable=false", "acpo.dump.enable=false"]
        if stage == 2:
            overrides += list(GRPO_STAGE2_KL)
    else:
        overrides += ["acpo.dump.enable=true", "acpo.dump.every_n_steps=1", f"acpo.dump.max_responses={micro}"]
        overrides += ARM_OVERRIDES[arm] if arm_overrides is None else arm_overrides
    return [sys.executable, "-m", "recipe.acpo.main_acpo", "--config-name", config, *overrides]


def run_dumps(run_dir: Path) -> list[Path]:
    """A run's step dumps in training order (Stage 1, then Stage 2)."""
    return [
        f for stage in (1, 2) for f in sorted((run_dir / f"stage{stage}" / "checkpoints" / "acpo_dump").glob("*.jsonl"))
    ]


def run_rollouts(run_dir: Path) -> list[Path]:
    """A run's training rollouts (verl's ``rollout_data_dir``, ``<step>.jsonl``) in training order."""
    return [
        f
        for stage in (1, 2)
        for f in sorted((run_dir / f"stage{stage}" / "rollouts").glob("*.jsonl"), key=lambda f: int(f.stem))
    ]


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """The seeds, refused unless they are distinct non-negative integers (before any run starts)."""
    if not seeds:
        raise ValueError("--seeds: give at least one seed")
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise ValueError(f"--seeds must be distinct non-negative integers, got {list(seeds)}")
    return list(seeds)


def run_one(arm: str, seed: int, work: Path, policy: Path, train: Path, val: Path, args, start: float) -> dict:
    run_dir = work / "runs" / f"{arm}_seed{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    began = time.time()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", RAY_DEDUP_LOGS="0")
    metrics = []
    model = policy
    for stage, steps in ((1, args.stage1_steps), (2, args.stage2_steps)):
        ray_tmp = tempfile.mkdtemp(prefix="bl.", dir="/tmp")
        try:
            metrics_path = run_dir / f"stage{stage}_metrics.jsonl"
            cmd = stage_command(arm, stage, model, run_dir, steps, seed, train, val, args, ray_tmp)
            _log(start, f"{arm} seed {seed}: Stage {stage}, {steps} steps")
            _run(cmd, run_dir / f"stage{stage}.log", dict(env, VERL_FILE_LOGGER_PATH=str(metrics_path)))
            metrics.append(metrics_path)
        finally:
            shutil.rmtree(ray_tmp, ignore_errors=True)
        if stage == 1:
            model = run_dir / "stage1" / "merged"
            _run(
                [
                    *(sys.executable, "-m", "recipe.acpo.merge"),
                    *("--checkpoint-dir", str(run_dir / "stage1" / "checkpoints"), "--target-dir", str(model)),
                    "--overwrite",
                ],
                run_dir / "merge.log",
                env,
            )
    points = accuracy_points(metrics).get("arithmetic_steps", [])
    dumps, rollouts = run_dumps(run_dir), run_rollouts(run_dir)
    result = {
        "arm": arm,
        "seed": seed,
        "points": points,
        "wall_s": time.time() - began,
        "hit_rates": dump_hit_rates(dumps) if dumps else None,
        "hasty_share": hasty_share_by_phase(rollouts) if rollouts else None,
        "median_step_s": median_step_seconds(metrics),
    }
    # The checkpoints are large next to the results; the merged Stage-1 model and the dumps stay.
    for stage in (1, 2):
        for item in (run_dir / f"stage{stage}" / "checkpoints").glob("global_step_*"):
            shutil.rmtree(item, ignore_errors=True)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/bench_learning.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("docs/learning/arms"), help="where the JSON and PNG go")
    parser.add_argument("--work", type=Path, default=Path("outputs/bench_learning"), help="runs, models, data, logs")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--stage1-steps", type=int, default=48)
    parser.add_argument("--stage2-steps", type=int, default=8)
    parser.add_argument("--test-freq", type=int, default=8, help="validate every N steps (and at each stage's end)")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per step")
    parser.add_argument("--rollout-n", type=int, default=8, help="responses per prompt")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--train-size", type=int, default=1024)
    parser.add_argument("--val-size", type=int, default=256, help="fixed held-out problems")
    parser.add_argument("--val-n", type=int, default=2, help="samples per held-out problem (temperature 1.0)")
    parser.add_argument("--resume", action="store_true", help="skip runs whose results file exists")
    parser.add_argument("--summary-only", action="store_true", help="only summarise the finished runs")
    task_options = parser.add_argument_group(
        "task", "the testbed task the policy is built for and RL trains on (one task per --work folder)"
    )
    add_task_arguments(task_options)
    args = parser.parse_args(argv)
    try:
        args.seeds = check_seeds(args.seeds)
        args.task = task_spec(args)
        check_task(args.work.resolve(), args.task)
    except (ValueError, DataError) as err:
        parser.error(str(err))
    if len(set(args.arms)) != len(args.arms):
        parser.error(f"--arms: each arm once, got {args.arms}")

    start = time.time()
    work = args.work.resolve()
    results_dir = work / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        policy, train, val = prepare(work, args, start)
        for seed in args.seeds:  # seed-major: an interrupted benchmark still compares the arms
            for arm in args.arms:
                result_path = results_dir / f"{arm}_seed{seed}.json"
                if args.resume and result_path.is_file():
                    _log(start, f"{arm} seed {seed}: done before, skipped")
                    continue
                result = run_one(arm, seed, work, policy, train, val, args, start)
                result["budget"] = {k: v for k, v in vars(args).items() if k not in ("out", "work", "task")}
                result_path.write_text(json.dumps(result, indent=1))
                end_acc = 100 * result["points"][-1][1] if result["points"] else float("nan")
                _log(start, f"{arm} seed {seed}: done in {result['wall_s']:.0f}s, final accuracy {end_acc:.1f}%")
    runs = [json.loads(p.read_text()) for p in sorted(results_dir.glob("*_seed*.json"))]
    runs = [r for r in runs if r["arm"] in args.arms and r["seed"] in args.seeds]
    for r in runs:  # the analysis may be newer than the run: recount from the dumps that are still there
        run_dir = work / "runs" / f"{r['arm']}_seed{r['seed']}"
        if dumps := run_dumps(run_dir):
            r["hit_rates"] = dump_hit_rates(dumps)
        if rollouts := run_rollouts(run_dir):
            r["hasty_share"] = hasty_share_by_phase(rollouts)
        if (seconds := median_step_seconds([run_dir / f"stage{s}_metrics.jsonl" for s in (1, 2)])) is not None:
            r["median_step_s"] = seconds
    if not runs:
        print("no finished runs")
        return
    summary = summarize(runs)
    print(format_table(summary))
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"budget": runs[0].get("budget"), "summary": summary, "runs": runs}
    (args.out / "bench_learning.json").write_text(json.dumps(report, indent=1))
    png = plot(runs, args.out / "bench_learning.png", runs[0].get("budget", {}).get("stage1_steps"))
    print(f"wrote {args.out / 'bench_learning.json'} and {png}")


if __name__ == "__main__":
    main()
