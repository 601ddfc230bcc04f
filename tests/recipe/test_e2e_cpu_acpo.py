"""End to end on the CPU with real Ray and verl: ACPO Stage 1 (2 steps) -> merge -> Stage 2 (1 step).

Each stage is ``python -m recipe.acpo.main_acpo --config-name acpo_cpu_stage{1,2}`` on the tiny random Qwen2 with
the real Qwen2.5 tokenizer and a small arithmetic parquet. Stage 1 runs with ``ACPO_ATTRIBUTION_CROSS_CHECK=1``: every
step is also scored the naive way (verl's own ``compute_log_prob`` on K+1 separate sequences), so packed and naive
attribution are compared on the same batches.

A random model never answers right, and all-zero rewards would make every advantage, gradient and KL zero. The runs
therefore use verl's ``naive`` reward manager with :func:`hashed_outcome`, a reward in {0, 0.5, 1} drawn from a hash
of the response (the recipe's math reward has its own tests).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from acpo_core.step import SPEC_METRICS as STEP_METRICS

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
RESPONSE_LENGTH = 48
MIN_STEP_TOKENS = 4
TOLERANCE = 1e-4
SPEC_METRICS = (*STEP_METRICS, "timing_s/acpo_segment", "timing_s/acpo_attribution")


def hashed_outcome(data_source: str, solution_str: str, ground_truth: str, extra_info: Any = None, **_: Any) -> float:
    """verl custom reward for these runs: 0, 0.5 or 1 from a CRC of the response text (outcome variance)."""
    return (zlib.crc32(solution_str.encode("utf-8")) % 3) / 2


@pytest.fixture(scope="module")
def arithmetic_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("arithmetic")
    command = [sys.executable, "-m", "data_prep.arithmetic", "--output-dir", str(out)]
    command += ["--num-train", "8", "--num-val", "2", "--num-ops", "2", "--seed", "0"]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, timeout=300)
    return out / "arithmetic_train.parquet", out / "arithmetic_val.parquet"


@pytest.fixture(scope="module")
def ray_temp_dir() -> Iterator[Path]:
    # Ray's socket paths must stay under 107 characters: a short private folder, not pytest's deep tmp_path.
    path = Path(tempfile.mkdtemp(prefix="acpo_e2e_ray_", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _run_stage(
    config_name: str, overrides: list[str], log_path: Path, extra_env: dict[str, str] | None = None
) -> dict[int, dict[str, Any]]:
    """Run one stage; return the metrics logged at each step (verl's file logger)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VERL_FILE_LOGGER_PATH": str(log_path), **(extra_env or {})}
    command = [sys.executable, "-m", "recipe.acpo.main_acpo", "--config-name", config_name, *overrides]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{config_name} failed:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    steps = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    return {entry["step"]: entry["data"] for entry in steps}


def _common_overrides(model: Path, data: tuple[Path, Path], ray_dir: Path, checkpoints: Path) -> list[str]:
    return [
        f"actor_rollout_ref.model.path={model}",
        f"data.train_files={data[0]}",
        f"data.val_files={data[1]}",
        "data.train_batch_size=2",
        "data.max_prompt_length=256",
        f"data.max_response_length={RESPONSE_LENGTH}",
        "actor_rollout_ref.rollout.n=4",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
        # Short responses of random text: small steps and many entropy peaks, so responses get several steps.
        f"acpo.segmentation.min_step_tokens={MIN_STEP_TOKENS}",
        "acpo.segmentation.entropy_top_ratio=0.5",
        "reward.reward_manager.source=register",
        "reward.reward_manager.name=naive",
        f"reward.custom_reward_function.path={Path(__file__).resolve()}",
        "reward.custom_reward_function.name=hashed_outcome",
        # verl's reward workers score with it: the CPU preset's scoring in the agent loop is the acpo reward's.
        "reward.reward_kwargs.score_in_agent_loop=false",
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        "trainer.logger=[console,file]",
        f"trainer.default_local_dir={checkpoints}",
        f"ray_kwargs.ray_init._temp_dir={ray_dir}",
        # Hydra's run folder next to the checkpoints, not under the repository's outputs/.
        f"hydra.run.dir={checkpoints}_hydra",
    ]


def test_stage1_merge_stage2_on_cpu(
    tiny_model_dir: Path, arithmetic_data: tuple[Path, Path], ray_temp_dir: Path, tmp_path: Path
) -> None:
    from recipe.acpo.merge import MERGE_RECORD, merge_stage1_checkpoint
    from recipe.acpo.report.load import read_dump

    assert RESPONSE_LENGTH > 2 * MIN_STEP_TOKENS
    stage1_dir = tmp_path / "stage1"
    stage1 = _run_stage(
        "acpo_cpu_stage1",
        [
            *_common_overrides(tiny_model_dir, arithmetic_data, ray_temp_dir, stage1_dir),
            "trainer.total_training_steps=2",
            "trainer.save_freq=2",
        ],
        tmp_path / "stage1.jsonl",
        {"ACPO_ATTRIBUTION_CROSS_CHECK": "1"},
    )
    assert sorted(stage1) == [1, 2]
    for step, metrics in stage1.items():
        # Entropy by difficulty tier comes with the Stage-1 curriculum (no prompt of this data is hard).
        for name in (*SPEC_METRICS, "acpo/curriculum/normal/entropy"):
            assert name in metrics, f"step {step}: {name} not logged"
        for name, value in metrics.items():
            if name.startswith("acpo/"):
                assert math.isfinite(value), f"step {step}: {name} = {value}"
        assert metrics["acpo/steps_per_response"] >= 1.0
        # Packed and naive attribution agree on the same batch (fp32).
        assert metrics["acpo/check/answer_loglik_max_abs_diff"] <= TOLERANCE
        assert metrics["acpo/check/advantage_max_abs_diff"] <= TOLERANCE
        assert "actor/kl_loss" not in metrics  # Stage 1 is KL-free
    assert max(m["acpo/steps_per_response"] for m in stage1.values()) > 1.0
    # Some groups had outcome variance, so the advantages (and the cross-check above) were not all zero.
    assert max(m["acpo/adv_attr_abs_mean"] for m in stage1.values()) > 0
    assert max(m["actor/grad_norm"] for m in stage1.values()) > 0
    # The CPU preset dumps every step (acpo.dump, under trainer.default_local_dir): all 8 responses of each step.
    dump = read_dump(stage1_dir / "acpo_dump")
    assert (dump.files, len(dump.records), dump.skipped_lines) == (2, 16, 0)
    assert {r["global_step"] for r in dump.records} == {1, 2}
    assert all(m["acpo/dump/write_failures"] == 0 and m["acpo/dump/responses"] == 8 for m in stage1.values())

    merged = merge_stage1_checkpoint(stage1_dir, tmp_path / "merged")
    assert json.loads((merged / MERGE_RECORD).read_text())["global_step"] == 2

    stage2 = _run_stage(
        "acpo_cpu_stage2",
        [
            *_common_overrides(merged, arithmetic_data, ray_temp_dir, tmp_path / "stage2"),
            "trainer.total_training_steps=1",
            "trainer.save_freq=-1",
            # Two passes over the batch with a large step: the second pass sees a policy that has left the reference.
            "actor_rollout_ref.actor.ppo_epochs=2",
            "actor_rollout_ref.actor.optim.lr=1e-2",
        ],
        tmp_path / "stage2.jsonl",
    )
    metrics = stage2[1]
    for name in SPEC_METRICS:
        assert name in metrics, f"stage 2: {name} not logged"
    assert metrics["actor/kl_coef"] == pytest.approx(0.001)
    assert math.isfinite(metrics["actor/kl_loss"]) and metrics["actor/kl_loss"] > 0
