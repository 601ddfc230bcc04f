"""Learning benchmark on the CPU testbed (issue 10, item 4): verl's GRPO against ACPO without and with attribution.

Three arms at an equal budget (same policy, data, steps, responses per step, learning rate, two-stage schedule and
seeds); only what defines an arm differs:

- ``grpo``: verl's GRPO estimator (``grpo_cpu_testbed``: single-turn rollouts, no curriculum, uniform token weights);
  Stage 1 KL-free, Stage 2 adds the K3 (low_var_kl) loss to the merged Stage-1 model, coefficient 0.001 as ACPO's.
- ``acpo_noattr``: ACPO with ``acpo.advantage.alpha=0`` (curriculum, stages and confidence weights, no attribution).
- ``acpo``: ACPO as specified.

Each run: Stage 1 -> ``python -m recipe.acpo.merge`` -> Stage 2 (as ``examples/run_acpo_cpu_demo.sh``), with
held-out accuracy (verl's validation, ``trainer.test_freq``) on a fixed problem set read back by
:mod:`recipe.acpo.testbed.curve`. A finished run leaves ``OUT/runs/<arm>_seed<seed>.json``; ``--resume`` skips it.
The summary prints accuracy at start and end (mean ± std over seeds), the first step with a 10-point gain, wall time,
and for the ACPO arms the attribution's hit rate on wrong responses (is the lowest-C step the one holding the first
wrong equation?) against chance (1/K), early and late; it writes ``OUT/bench_learning.json`` and
``OUT/bench_learning.png``.

    python benchmarks/bench_learning.py          # all arms, seeds 0-2: about an hour
    python benchmarks/bench_learning.py --summary-only

The defaults are the CPU demo's budget (48 Stage-1 and 8 Stage-2 steps of 16 x 8 responses, lr 2e-4).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from recipe.acpo.testbed.curve import accuracy_points
from recipe.acpo.testbed.slips import first_wrong_mark
from recipe.acpo.testbed.step_check import check_steps

ARMS = ("grpo", "acpo_noattr", "acpo")
ARM_LABELS = {"grpo": "(a) verl GRPO", "acpo_noattr": "(b) ACPO alpha=0", "acpo": "(c) ACPO"}
GAIN_POINTS = 10.0
GRPO_STAGE2_KL = (
    "actor_rollout_ref.actor.use_kl_loss=True",
    "actor_rollout_ref.actor.kl_loss_type=low_var_kl",
    "actor_rollout_ref.actor.kl_loss_coef=0.001",
)


# --- analysis (pure) ---------------------------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of the values that are numbers (0 for one; NaN, NaN for none)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def first_gain_step(points: Sequence[tuple[int, float]], gain: float = GAIN_POINTS / 100) -> int | None:
    """The first step whose accuracy is at least ``gain`` above the first point's (None: never)."""
    if not points:
        return None
    start = points[0][1]
    return next((step for step, acc in points if acc >= start + gain - 1e-12), None)


def hit_stats(records: Iterable[dict]) -> dict:
    """Over wrong responses with an identified slip (``recipe.acpo.testbed.slips``): how often the lowest-C step
    (``hit_rate``) and the most blamed step (``most_blamed_hit_rate``) are the slip step, against chance (1/K)."""
    hits = blame_hits = total = 0
    chance = 0.0
    a_attr_on_slip: list[float] = []
    correct = correct_with_slip = 0
    for record in records:
        steps = record.get("steps") or []
        if record.get("correct"):
            # A right answer reached through a wrong equation: outcome reward credits the slip too.
            correct += 1
            correct_with_slip += check_steps("".join(record.get("tokens") or [])).first_wrong is not None
            continue
        if len(steps) < 1:
            continue
        mark = first_wrong_mark(record)
        if mark is None:
            continue
        k = mark["step"]
        contributions = [step["C"] for step in steps]
        lowest = min(range(len(steps)), key=lambda i: contributions[i])
        hits += int(lowest == k)
        blame_hits += int(mark["blame_hit"])
        total += 1
        chance += 1.0 / len(steps)
        if steps[k].get("a_attr") is not None:
            a_attr_on_slip.append(float(steps[k]["a_attr"]))
    return {
        "responses": total,
        "hit_rate": hits / total if total else float("nan"),
        "most_blamed_hit_rate": blame_hits / total if total else float("nan"),
        "chance": chance / total if total else float("nan"),
        "a_attr_on_slip_mean": statistics.fmean(a_attr_on_slip) if a_attr_on_slip else float("nan"),
        "a_attr_on_slip_negative_frac": (
            sum(v < 0 for v in a_attr_on_slip) / len(a_attr_on_slip) if a_attr_on_slip else float("nan")
        ),
        "correct_responses": correct,
        "correct_with_wrong_step_frac": correct_with_slip / correct if correct else float("nan"),
    }


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def dump_hit_rates(dump_files: Sequence[Path]) -> dict:
    """Hit statistics over the first third and last third of the dumped training steps (files in training order)."""
    third = max(1, len(dump_files) // 3)
    early = [r for f in dump_files[:third] for r in read_jsonl(f)]
    late = [r for f in dump_files[-third:] for r in read_jsonl(f)]
    return {"dumped_steps": len(dump_files), "early": hit_stats(early), "late": hit_stats(late)}


def summarize(runs: Sequence[dict]) -> dict:
    """Per arm: accuracy at start/end (mean, std over seeds), first 10-point gain steps, wall time, hit rates."""
    summary: dict = {}
    for arm in ARMS:
        arm_runs = sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["seed"])
        if not arm_runs:
            continue
        starts = [r["points"][0][1] for r in arm_runs if r["points"]]
        ends = [r["points"][-1][1] for r in arm_runs if r["points"]]
        entry = {
            "seeds": [r["seed"] for r in arm_runs],
            "acc_start": mean_std(starts),
            "acc_end": mean_std(ends),
            "first_gain_steps": [first_gain_step(r["points"]) for r in arm_runs],
            "wall_s": [r["wall_s"] for r in arm_runs],
        }
        hits = [r["hit_rates"] for r in arm_runs if r.get("hit_rates")]
        for phase in ("early", "late"):
            if hits:
                entry[f"hit_{phase}"] = mean_std([h[phase]["hit_rate"] for h in hits])
                entry[f"blamed_{phase}"] = mean_std([h[phase].get("most_blamed_hit_rate", math.nan) for h in hits])
                entry[f"chance_{phase}"] = mean_std([h[phase]["chance"] for h in hits])
                entry[f"a_attr_slip_{phase}"] = mean_std([h[phase]["a_attr_on_slip_mean"] for h in hits])
                entry[f"lucky_{phase}"] = mean_std(
                    [h[phase].get("correct_with_wrong_step_frac", float("nan")) for h in hits]
                )
        summary[arm] = entry
    return summary


def _pm(pair: Sequence[float], scale: float = 100.0) -> str:
    return f"{scale * pair[0]:5.1f} ± {scale * pair[1]:4.1f}"


def format_table(summary: dict) -> str:
    """The side-by-side table the benchmark prints."""
    arms = [a for a in ARMS if a in summary]
    rows = [("", [ARM_LABELS[a] for a in arms])]
    rows.append(("seeds", [" ".join(map(str, summary[a]["seeds"])) for a in arms]))
    rows.append(("acc start (%)", [_pm(summary[a]["acc_start"]) for a in arms]))
    rows.append(("acc end (%)", [_pm(summary[a]["acc_end"]) for a in arms]))
    rows.append(
        (
            f"first +{GAIN_POINTS:.0f} pts step",
            [" ".join("-" if s is None else str(s) for s in summary[a]["first_gain_steps"]) for a in arms],
        )
    )
    rows.append(("wall s / run", [" ".join(f"{w:.0f}" for w in summary[a]["wall_s"]) for a in arms]))
    for phase in ("early", "late"):
        cells = []
        for a in arms:
            entry = summary[a]
            cells.append(
                f"{_pm(entry[f'hit_{phase}'])} vs {100 * entry[f'chance_{phase}'][0]:.1f}"
                if f"hit_{phase}" in entry
                else "-"
            )
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
        cells = [_pm(summary[a][f"lucky_{phase}"]) if f"lucky_{phase}" in summary[a] else "-" for a in arms]
        rows.append((f"right w/ wrong step {phase} (%)", cells))
    width = max(len(c) for _, cells in rows for c in cells) + 2
    return "\n".join(f"{label:<30}" + "".join(f"{c:>{width}}" for c in cells) for label, cells in rows)


def plot(runs: Sequence[dict], out: Path, stage1_steps: int | None = None) -> Path:
    """Accuracy against step: one thin line per run, the seed mean thick, one colour per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"grpo": "tab:blue", "acpo_noattr": "tab:orange", "acpo": "tab:green"}
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for arm in ARMS:
        arm_runs = [r for r in runs if r["arm"] == arm and r["points"]]
        for r in arm_runs:
            steps, accs = zip(*r["points"])
            axes.plot(steps, [100 * a for a in accs], color=colors[arm], alpha=0.3, linewidth=1)
        by_step: dict[int, list[float]] = {}
        for r in arm_runs:
            for step, acc in r["points"]:
                by_step.setdefault(step, []).append(acc)
        if by_step:
            steps = sorted(by_step)
            axes.plot(
                steps,
                [100 * statistics.fmean(by_step[s]) for s in steps],
                color=colors[arm],
                linewidth=2.5,
                marker="o",
                label=f"{ARM_LABELS[arm]} (mean of {len(arm_runs)})",
            )
    if stage1_steps:
        axes.axvline(stage1_steps, color="grey", linestyle=":", label="Stage 1 | Stage 2")
    axes.set_xlabel("training step")
    axes.set_ylabel("held-out accuracy (%)")
    axes.set_title("CPU testbed: held-out accuracy against step")
    axes.grid(alpha=0.3)
    axes.legend()
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


def prepare(work: Path, args: argparse.Namespace, start: float) -> tuple[Path, Path, Path]:
    policy, data = work / "policy", work / "data"
    if not (policy / "config.json").is_file():
        _log(start, f"building the testbed policy in {policy}")
        _run([sys.executable, "-m", "recipe.acpo.testbed", "build", str(policy), "--seed", "0"], work / "build.log")
    train, val = data / "arithmetic_steps_train.parquet", data / "arithmetic_steps_val.parquet"
    if not val.is_file():
        _log(start, f"generating {args.train_size} training and {args.val_size} held-out problems in {data}")
        _run(
            [
                *(sys.executable, "-m", "recipe.acpo.testbed.task", "--output-dir", str(data)),
                *("--num-train", str(args.train_size), "--num-val", str(args.val_size), "--seed", "0"),
            ],
            work / "data.log",
        )
    return policy, train, val


def stage_command(arm: str, stage: int, model: Path, run_dir: Path, steps: int, seed: int, train: Path, val: Path,
                  args: argparse.Namespace, ray_tmp: str) -> list[str]:  # fmt: skip
    config = "grpo_cpu_testbed" if arm == "grpo" else f"acpo_cpu_testbed_stage{stage}"
    micro = args.batch_size * args.rollout_n
    overrides = [
        f"actor_rollout_ref.model.path={model}",
        f"data.train_files={train}",
        f"data.val_files={val}",
        f"data.train_batch_size={args.batch_size}",
        f"data.seed={seed}",
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
        f"ray_kwargs.ray_init._temp_dir={ray_tmp}",
        f"hydra.run.dir={run_dir}/stage{stage}/hydra",
    ]
    if arm == "grpo":
        overrides += ["acpo.curriculum.enable=false", "acpo.dump.enable=false"]
        if stage == 2:
            overrides += list(GRPO_STAGE2_KL)
    else:
        overrides += ["acpo.dump.enable=true", "acpo.dump.every_n_steps=1", f"acpo.dump.max_responses={micro}"]
        if arm == "acpo_noattr":
            overrides.append("acpo.advantage.alpha=0")
    return [sys.executable, "-m", "recipe.acpo.main_acpo", "--config-name", config, *overrides]


def run_dumps(run_dir: Path) -> list[Path]:
    """A run's step dumps in training order (Stage 1, then Stage 2)."""
    return [
        f for stage in (1, 2) for f in sorted((run_dir / f"stage{stage}" / "checkpoints" / "acpo_dump").glob("*.jsonl"))
    ]


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
    dumps = run_dumps(run_dir)
    result = {
        "arm": arm,
        "seed": seed,
        "points": points,
        "wall_s": time.time() - began,
        "hit_rates": dump_hit_rates(dumps) if dumps else None,
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
    parser.add_argument(
        "--out", type=Path, default=Path("docs/learning/current_policy/demo_budget"), help="where the JSON and PNG go"
    )
    parser.add_argument("--work", type=Path, default=Path("outputs/bench_learning"), help="runs, models, data, logs")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--stage1-steps", type=int, default=48)
    parser.add_argument("--stage2-steps", type=int, default=8)
    parser.add_argument("--test-freq", type=int, default=4, help="validate every N steps (and at each stage's end)")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per step")
    parser.add_argument("--rollout-n", type=int, default=8, help="responses per prompt")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--train-size", type=int, default=1024)
    parser.add_argument("--val-size", type=int, default=128, help="fixed held-out problems")
    parser.add_argument("--val-n", type=int, default=1, help="samples per held-out problem (temperature 1.0)")
    parser.add_argument("--resume", action="store_true", help="skip runs whose results file exists")
    parser.add_argument("--summary-only", action="store_true", help="only summarise the finished runs")
    args = parser.parse_args(argv)

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
                result["budget"] = {k: v for k, v in vars(args).items() if k not in ("out", "work")}
                result_path.write_text(json.dumps(result, indent=1))
                end_acc = 100 * result["points"][-1][1] if result["points"] else float("nan")
                _log(start, f"{arm} seed {seed}: done in {result['wall_s']:.0f}s, final accuracy {end_acc:.1f}%")
    runs = [json.loads(p.read_text()) for p in sorted(results_dir.glob("*_seed*.json"))]
    runs = [r for r in runs if r["arm"] in args.arms and r["seed"] in args.seeds]
    for r in runs:  # the analysis may be newer than the run: recount from the dumps that are still there
        dumps = run_dumps(work / "runs" / f"{r['arm']}_seed{r['seed']}")
        if dumps:
            r["hit_rates"] = dump_hit_rates(dumps)
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
