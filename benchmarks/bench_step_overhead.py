"""What ACPO adds to a training step: plain GRPO and ACPO side by side on the same tiny CPU configuration.

    python benchmarks/bench_step_overhead.py [--steps 3] [--warmup 1] [--repeats 2] [--response-length 128]

Runs ``python -m recipe.acpo.main_acpo --config-name acpo_cpu`` (verl's GRPO trainer) and ``--config-name
acpo_cpu_stage1`` (ACPOTrainer, spec defaults: packed attribution, min_step_tokens 16) with the same model, data,
batch and seed, ``--warmup + --steps`` training steps each, alternating GRPO and ACPO ``--repeats`` times. The first
``--warmup`` steps of every run are left out; runs alternate GRPO, ACPO, ACPO, GRPO, ... so that a machine whose load
drifts favours neither. Prints, per trainer, the mean seconds of verl's timers (gen = rollout, old_log_prob,
acpo_segment, acpo_attribution, adv, update_actor, step), the step-time ratio ACPO / GRPO, the same ratio computed
from ACPO's own timers only (1 + (acpo_segment + acpo_attribution) / GRPO step: what the ratio would be on a quiet
machine, since the other phases do the same work in both trainers) and ACPO's ``acpo/attr_tokens_ratio`` (tokens the
attribution pass scores / tokens of the old-log-prob pass).

Targets on the 2-core CPU machine: ratio <= 1.25, attr_tokens_ratio <= 1.2. The model is the tiny random Qwen2 with
the real Qwen2.5 tokenizer (``recipe.acpo.offline_models``) unless ``--model`` names a Hugging Face folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TIMERS = ("gen", "old_log_prob", "acpo_segment", "acpo_attribution", "adv", "update_actor", "step")
TRAINERS = {"grpo": "acpo_cpu", "acpo": "acpo_cpu_stage1"}


def _prepare_inputs(workdir: Path, model: str | None) -> tuple[Path, Path, Path]:
    data = workdir / "data"
    command = [sys.executable, "-m", "data_prep.arithmetic", "--output-dir", str(data)]
    command += ["--num-train", "256", "--num-val", "4", "--num-ops", "2-3", "--seed", "0"]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    if model is None:
        from recipe.acpo.offline_models import build_tiny_qwen2

        model_dir = build_tiny_qwen2(workdir / "tiny_qwen2")
    else:
        model_dir = Path(model)
    return model_dir, data / "arithmetic_train.parquet", data / "arithmetic_val.parquet"


def _run(
    trainer: str, args: argparse.Namespace, inputs: tuple[Path, Path, Path], workdir: Path, tag: str
) -> list[dict]:
    model, train, val = inputs
    log_path = workdir / f"{tag}.jsonl"
    overrides = [
        f"actor_rollout_ref.model.path={model}",
        f"data.train_files={train}",
        f"data.val_files={val}",
        f"data.train_batch_size={args.batch_size}",
        "data.max_prompt_length=256",
        f"data.max_response_length={args.response_length}",
        f"actor_rollout_ref.rollout.n={args.n}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={args.batch_size}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={args.batch_size * args.n}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={args.batch_size * args.n}",
        f"trainer.total_training_steps={args.warmup + args.steps}",
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        "trainer.logger=[console,file]",
        f"trainer.default_local_dir={workdir / tag / 'checkpoints'}",
        f"ray_kwargs.ray_init._temp_dir={workdir / 'ray'}",
        f"hydra.run.dir={workdir / tag / 'hydra'}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VERL_FILE_LOGGER_PATH": str(log_path)}
    command = [sys.executable, "-m", "recipe.acpo.main_acpo", "--config-name", TRAINERS[trainer], *overrides]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{trainer} run failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    entries = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    return [entry["data"] for entry in sorted(entries, key=lambda e: e["step"])][args.warmup :]


def _mean(steps: list[dict[str, Any]], key: str) -> float | None:
    values = [float(step[key]) for step in steps if key in step]
    return statistics.fmean(values) if values else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="measured steps per run (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="steps left out at the start of each run (default 1)")
    parser.add_argument("--repeats", type=int, default=2, help="GRPO/ACPO run pairs, alternating (default 2)")
    parser.add_argument("--batch-size", type=int, default=4, help="prompts per step (default 4)")
    parser.add_argument("--n", type=int, default=2, help="responses per prompt (default 2)")
    parser.add_argument("--response-length", type=int, default=128, help="max response tokens (default 128)")
    parser.add_argument("--model", default=None, help="a Hugging Face folder (default: the tiny random Qwen2)")
    args = parser.parse_args(argv)

    # A short private folder: Ray's socket paths must stay under 107 characters.
    workdir = Path(tempfile.mkdtemp(prefix="acpo_bench_", dir="/tmp"))
    try:
        inputs = _prepare_inputs(workdir, args.model)
        runs: dict[str, list[list[dict]]] = {"grpo": [], "acpo": []}
        for repeat in range(args.repeats):
            order = ("grpo", "acpo") if repeat % 2 == 0 else ("acpo", "grpo")
            for trainer in order:
                runs[trainer].append(_run(trainer, args, inputs, workdir, f"{trainer}_{repeat}"))
        steps = {trainer: [step for run in trainer_runs for step in run] for trainer, trainer_runs in runs.items()}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"\n{args.steps} measured steps x {args.repeats} run(s) per trainer, {args.batch_size} prompts x {args.n} "
        f"responses, responses up to {args.response_length} tokens (mean seconds per step)"
    )
    print(f"{'timer':<18}{'GRPO':>10}{'ACPO':>10}")
    for timer in TIMERS:
        cells = [_mean(steps[t], f"timing_s/{timer}") for t in ("grpo", "acpo")]
        print(f"{timer:<18}" + "".join(f"{'-' if c is None else f'{c:.3f}':>10}" for c in cells))
    for trainer in ("grpo", "acpo"):
        per_run = ", ".join(f"{_mean(run, 'timing_s/step'):.2f}" for run in runs[trainer])
        print(f"{trainer.upper()} mean step per run (s): {per_run}")
    grpo_step, acpo_step = _mean(steps["grpo"], "timing_s/step"), _mean(steps["acpo"], "timing_s/step")
    own = (_mean(steps["acpo"], "timing_s/acpo_segment") or 0.0) + (
        _mean(steps["acpo"], "timing_s/acpo_attribution") or 0.0
    )
    tokens_ratio = _mean(steps["acpo"], "acpo/attr_tokens_ratio")
    steps_per_response = _mean(steps["acpo"], "acpo/steps_per_response")
    print(f"\nstep-time ratio ACPO / GRPO:            {acpo_step / grpo_step:.3f} (target <= 1.25)")
    print(f"ratio from ACPO's own timers:           {1 + own / grpo_step:.3f}")
    print(f"acpo/attr_tokens_ratio:                 {tokens_ratio:.3f} (target <= 1.2)")
    print(f"acpo/steps_per_response:                {steps_per_response:.2f}")


if __name__ == "__main__":
    main()
