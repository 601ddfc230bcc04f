"""``python -m recipe.acpo.main_acpo`` without ``--config-name`` runs ACPO Stage 1, and ``--help`` names the configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "recipe" / "acpo" / "config"


def _main_acpo(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run(
        [sys.executable, "-m", "recipe.acpo.main_acpo", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_no_config_name_composes_acpo_stage1() -> None:
    # --cfg job prints the composed config and exits before any check or Ray start.
    done = _main_acpo("--cfg", "job")
    assert done.returncode == 0, done.stderr[-3000:]
    config = yaml.safe_load(done.stdout)
    assert config["algorithm"]["adv_estimator"] == "acpo", "with no --config-name the entry point must not train GRPO"
    assert config["acpo"]["stage"] == 1


def test_help_lists_every_config_and_the_main_keys() -> None:
    done = _main_acpo("--help")
    assert done.returncode == 0, done.stderr[-3000:]
    configs = sorted(path.stem for path in CONFIG_DIR.glob("*.yaml") if path.stem != "agent_loops")
    assert configs, CONFIG_DIR
    for name in configs:
        assert name in done.stdout, f"--help does not mention the config {name}:\n{done.stdout}"
    for key in ("actor_rollout_ref.model.path", "data.train_files", "data.val_files", "trainer.total_training_steps"):
        assert key in done.stdout, f"--help does not mention {key}:\n{done.stdout}"
    assert "default" in done.stdout and "acpo_stage1" in done.stdout
