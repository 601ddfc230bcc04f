"""The testbed through verl: a (small) built policy loads in the CPU preset with the testbed config and trains."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from data_prep.arithmetic_steps import write_dataset
from recipe.acpo.testbed import PolicySpec, build_policy

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
SMALL = PolicySpec(hidden_size=32, num_layers=1, num_heads=2, sft_problems=400, sft_steps=20, eval_problems=4)


def _run_stage1(policy: Path, train: Path, val: Path, out: Path, ray_dir: Path) -> tuple[int, str, list[dict]]:
    metrics = out / "metrics.jsonl"
    env = {
        **os.environ,
        "ACPO_E2E_RUN": f"acpo-e2e-{uuid.uuid4().hex}",
        "HF_HUB_OFFLINE": "1",
        "RAY_DEDUP_LOGS": "0",
        "VERL_FILE_LOGGER_PATH": str(metrics),
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p),
    }
    overrides = [
        f"actor_rollout_ref.model.path={policy}",
        f"data.train_files={train}",
        f"data.val_files={val}",
        "data.train_batch_size=2",
        "actor_rollout_ref.rollout.n=4",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
        "trainer.total_training_steps=1",
        "trainer.save_freq=-1",
        "trainer.test_freq=1",
        "trainer.val_before_train=False",
        "trainer.logger=[console,file]",
        f"trainer.default_local_dir={out / 'checkpoints'}",
        f"ray_kwargs.ray_init._temp_dir={ray_dir}",
        f"hydra.run.dir={out / 'hydra'}",
    ]
    command = [sys.executable, "-m", "recipe.acpo.main_acpo", "--config-name", "acpo_cpu_testbed_stage1", *overrides]
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=400
    )
    rows = [json.loads(line)["data"] for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    return done.returncode, done.stdout, rows


def test_a_built_policy_trains_one_acpo_step_with_the_testbed_config(tmp_path: Path) -> None:
    policy = build_policy(tmp_path / "policy", seed=0, policy=SMALL, log=lambda _: None)
    train, val = write_dataset(tmp_path / "data", num_train=16, num_val=4, seed=0)
    ray_dir = Path(tempfile.mkdtemp(prefix="acpo_tb_", dir="/tmp"))
    try:
        returncode, output, rows = _run_stage1(Path(policy.out_dir), train, val, tmp_path / "run", ray_dir)
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert returncode == 0, output[-6000:]
    steps = [row for row in rows if "acpo/steps_per_response" in row]
    assert len(steps) == 1, rows
    step = steps[0]
    assert step["actor/grad_norm"] > 0
    assert 0 < step["response_length/mean"] <= 80
    assert step["acpo/steps_per_response"] >= 1
    assert "val-core/arithmetic_steps/acc/mean@1" in {key for row in rows for key in row}
