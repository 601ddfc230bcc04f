"""End to end on the CPU: GRPO with a KL loss, hence a reference model, on the CPU preset's own micro-batch sizes.

verl builds the reference model in its plain ``ActorRolloutRefWorker`` with pinned CPU offloading, which needs an
accelerator; the CPU plugin (``verl_cpu``) unpins it in every worker. The run sets no micro-batch size: the CPU preset
gives working ones.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 300


def test_one_grpo_step_with_a_kl_reference_model_on_the_cpu_preset_defaults(
    tiny_model_dir: Path, arithmetic_parquets: tuple[Path, Path]
) -> None:
    train, val = arithmetic_parquets
    ray_dir = Path(tempfile.mkdtemp(prefix="acpo_kl_", dir="/tmp"))
    overrides = [
        f"actor_rollout_ref.model.path={tiny_model_dir}",
        f"data.train_files={train}",
        f"data.val_files={val}",
        "data.train_batch_size=2",
        "data.max_prompt_length=128",
        "data.max_response_length=16",
        "actor_rollout_ref.rollout.n=2",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "algorithm.adv_estimator=grpo",
        "actor_rollout_ref.actor.use_kl_loss=True",
        "actor_rollout_ref.actor.kl_loss_coef=0.01",
        "trainer.total_training_steps=1",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        f"trainer.default_local_dir={ray_dir / 'checkpoints'}",
        f"ray_kwargs.ray_init._temp_dir={ray_dir / 'ray'}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_DEDUP_LOGS": "0"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    command = [sys.executable, "-m", "recipe.acpo.main_acpo", "--config-name", "acpo_cpu", *overrides]
    try:
        done = subprocess.run(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-6000:]
    step_lines = [line for line in done.stdout.splitlines() if "step:1 -" in line]
    assert step_lines, done.stdout[-6000:]
    assert "actor/kl_loss:" in step_lines[-1], step_lines[-1]
