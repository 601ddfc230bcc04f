"""End to end on the CPU: ``python -m recipe.acpo.main_acpo --config-name acpo_cpu`` with real Ray, verl's V1 trainer,
the CPU rollout and the recipe's math reward; and the checks that stop a bad run before Ray starts.

A tiny random Qwen2 (real Qwen2.5 tokenizer) trains GRPO on a small arithmetic parquet: two steps with validation
and a checkpoint, then a third step resumed from that checkpoint.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from recipe.acpo import main_acpo

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "recipe" / "acpo" / "config"
# A guard against a hung run, not a speed check: a run takes about a minute, several on a machine under load.
RUN_TIMEOUT_S = 600
_STEP_LINE = re.compile(r"step:(\d+) - (.*)$")


@dataclass
class Run:
    returncode: int
    output: str
    metrics: dict[int, dict[str, float]]
    seconds: float


def _parse_value(text: str) -> float | None:
    match = re.fullmatch(r"np\.\w+\((.*)\)", text.strip())
    try:
        value = ast.literal_eval(match.group(1) if match else text.strip())
    except (ValueError, SyntaxError):
        return None
    return float(value) if isinstance(value, int | float) else None


def _step_metrics(output: str) -> dict[int, dict[str, float]]:
    """The per-step metrics verl's console logger prints: ``step:N - key:value - key:value ...``."""
    metrics: dict[int, dict[str, float]] = {}
    for line in output.splitlines():
        match = _STEP_LINE.search(line)
        if not match:
            continue
        step = metrics.setdefault(int(match.group(1)), {})
        for item in match.group(2).split(" - "):
            key, _, raw = item.partition(":")
            value = _parse_value(raw)
            if value is not None:
                step[key.strip()] = value
    return metrics


def _overrides(model: Path, train: Path, val: Path, checkpoints: Path, ray_dir: Path, steps: int) -> list[str]:
    return [
        f"actor_rollout_ref.model.path={model}",
        f"data.train_files={train}",
        f"data.val_files={val}",
        "data.train_batch_size=2",
        "data.max_prompt_length=128",
        "data.max_response_length=16",
        "actor_rollout_ref.rollout.n=4",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.actor.optim.lr=1e-3",
        # A random policy never answers correctly, so every GRPO advantage is 0: the entropy bonus gives each update
        # a real gradient, so that the weights synced to the rollout after every step have really changed.
        "actor_rollout_ref.actor.entropy_coeff=0.01",
        f"trainer.total_training_steps={steps}",
        "trainer.val_before_train=False",
        "trainer.test_freq=2",
        "trainer.save_freq=2",
        "trainer.resume_mode=auto",
        f"trainer.default_local_dir={checkpoints}",
        "trainer.project_name=acpo_e2e",
        "trainer.experiment_name=cpu_grpo",
        f"ray_kwargs.ray_init._temp_dir={ray_dir}",
    ]


def _run_main(overrides: list[str], marker: str, timeout: float = RUN_TIMEOUT_S) -> Run:
    env = {**os.environ, "ACPO_E2E_RUN": marker, "HF_HUB_OFFLINE": "1", "RAY_DEDUP_LOGS": "0"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    command = [sys.executable, "-m", "recipe.acpo.main_acpo", "--config-name", "acpo_cpu", *overrides]
    start = time.monotonic()
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
    )
    return Run(done.returncode, done.stdout, _step_metrics(done.stdout), time.monotonic() - start)


def _processes_carrying(marker: str) -> list[str]:
    """Processes whose environment holds ``marker``: everything a run started inherits it, Ray's daemons included."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker.encode() in (proc / "environ").read_bytes():
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{proc.name}: {command[:120]}")
        except OSError:
            continue
    return found


def _wait_until_gone(marker: str, timeout: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout
    left = _processes_carrying(marker)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = _processes_carrying(marker)
    return left


@dataclass
class GRPORuns:
    first: Run
    resumed: Run
    checkpoints: Path
    leftover_after_first: list[str]
    leftover_after_resumed: list[str]


@pytest.fixture(scope="module")
def grpo_runs(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, arithmetic_parquets: tuple[Path, Path]
) -> Iterator[GRPORuns]:
    train, val = arithmetic_parquets
    checkpoints = tmp_path_factory.mktemp("e2e") / "checkpoints"
    # Ray's socket paths must stay under 107 characters: a short private folder, not pytest's deep tmp_path.
    ray_dir = Path(tempfile.mkdtemp(prefix="acpo_e2e_", dir="/tmp"))
    marker = f"acpo-e2e-{uuid.uuid4().hex}"
    try:
        # The first run scores in verl's reward-loop workers (the GPU configs' path), the resumed one in the recipe's
        # agent loop (the CPU preset's).
        verl_reward_loop = "reward.reward_kwargs.score_in_agent_loop=false"
        first = _run_main(
            [*_overrides(tiny_model_dir, train, val, checkpoints, ray_dir, steps=2), verl_reward_loop], marker
        )
        leftover_first = _wait_until_gone(marker)
        resumed = _run_main(_overrides(tiny_model_dir, train, val, checkpoints, ray_dir, steps=3), marker)
        leftover_resumed = _wait_until_gone(marker)
        yield GRPORuns(first, resumed, checkpoints, leftover_first, leftover_resumed)
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)


def test_two_grpo_steps_then_a_resumed_third_step_all_exit_cleanly(grpo_runs: GRPORuns) -> None:
    assert grpo_runs.first.returncode == 0, grpo_runs.first.output[-6000:]
    assert grpo_runs.resumed.returncode == 0, grpo_runs.resumed.output[-6000:]
    assert sorted(grpo_runs.first.metrics) == [1, 2]
    # Resumed from global_step_2: the second run trains step 3 only.
    assert sorted(grpo_runs.resumed.metrics) == [3]
    first, resumed = grpo_runs.first.seconds, grpo_runs.resumed.seconds
    print(f"first run (2 steps) {first:.0f} s, resumed run (1 step) {resumed:.0f} s")
    for step, values in {**grpo_runs.first.metrics, **grpo_runs.resumed.metrics}.items():
        print(f"step {step}: {values['timing_s/step']:.1f} s (gen {values['timing_s/gen']:.1f} s)")


def test_every_step_updates_the_policy_with_a_nonzero_gradient(grpo_runs: GRPORuns) -> None:
    for step, values in {**grpo_runs.first.metrics, **grpo_runs.resumed.metrics}.items():
        assert values["actor/grad_norm"] > 0, f"step {step}"
        assert values["response_length/mean"] > 0, f"step {step}"


def test_rollout_log_probs_match_the_trainer_after_every_weight_update(grpo_runs: GRPORuns) -> None:
    # Steps 2 and 3 sample from weights the trainer changed and synced: a missed sync would show here.
    for step, values in {**grpo_runs.first.metrics, **grpo_runs.resumed.metrics}.items():
        assert values["training/rollout_probs_diff_valid"] == 1.0, f"step {step}"
        assert values["training/rollout_probs_diff_max"] < 1e-3, f"step {step}"
        assert abs(values["rollout_corr/log_ppl_diff"]) < 1e-3, f"step {step}"


def test_validation_runs_with_the_math_reward_and_checkpoints_are_written(grpo_runs: GRPORuns) -> None:
    # Scored by verl's reward-loop workers (the first run) and by the recipe's agent loop (the resumed run's last
    # step): both hand verl the same extra information.
    for validated in (grpo_runs.first.metrics[2], grpo_runs.resumed.metrics[3]):
        validation = {k: v for k, v in validated.items() if k.startswith("val-")}
        assert "val-core/arithmetic/acc/mean@1" in validation
        assert 0.0 <= validation["val-aux/arithmetic/no_answer/mean@1"] <= 1.0
    for step in (2, 3):
        actor = grpo_runs.checkpoints / f"global_step_{step}" / "actor"
        assert (actor / "model_world_size_1_rank_0.pt").is_file()
        assert (actor / "optim_world_size_1_rank_0.pt").is_file()
        assert (actor / "huggingface" / "config.json").is_file()
    assert (grpo_runs.checkpoints / "latest_checkpointed_iteration.txt").read_text().strip() == "3"


def test_no_ray_process_is_left_behind(grpo_runs: GRPORuns) -> None:
    assert grpo_runs.leftover_after_first == []
    assert grpo_runs.leftover_after_resumed == []


# ------------------------------------------------------------------------------------- checks before Ray starts


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name=config_name, overrides=overrides)


def _valid_overrides(model: Path, train: Path, val: Path) -> list[str]:
    return [f"actor_rollout_ref.model.path={model}", f"data.train_files={train}", f"data.val_files={val}"]


def test_a_missing_data_file_stops_the_cli_before_ray_starts(tmp_path: Path, tiny_model_dir: Path) -> None:
    missing = tmp_path / "missing.parquet"
    ray_dir = Path(tempfile.mkdtemp(prefix="acpo_pre_", dir="/tmp"))
    try:
        overrides = [*_valid_overrides(tiny_model_dir, missing, missing), f"ray_kwargs.ray_init._temp_dir={ray_dir}"]
        run = _run_main(overrides, marker=f"acpo-pre-{uuid.uuid4().hex}", timeout=120)
        assert run.returncode == 2
        assert f"acpo: error: data check failed:\n  {missing}: no such file" in run.output
        assert list(ray_dir.iterdir()) == []  # Ray never started
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)


@pytest.mark.parametrize(
    ("drop", "expected"),
    [("prompt", r"missing column\(s\) \['prompt'\]"), ("ground_truth", "ground truth is missing")],
)
def test_data_without_prompt_or_ground_truth_is_rejected_naming_the_file(
    tmp_path: Path, tiny_model_dir: Path, arithmetic_parquets: tuple[Path, Path], drop: str, expected: str
) -> None:
    train, val = arithmetic_parquets
    frame = pd.read_parquet(train)
    if drop == "prompt":
        frame = frame.drop(columns=["prompt"])
    else:
        frame["reward_model"] = [{"style": "rule"} for _ in range(len(frame))]
    broken = tmp_path / f"no_{drop}.parquet"
    frame.to_parquet(broken)
    config = _compose("acpo_cpu", _valid_overrides(tiny_model_dir, broken, val))
    with pytest.raises(main_acpo.SetupError, match=expected) as failure:
        main_acpo.prepare(config)
    assert str(broken) in str(failure.value)


def test_a_model_path_that_is_not_a_hugging_face_folder_is_rejected(
    tmp_path: Path, arithmetic_parquets: tuple[Path, Path]
) -> None:
    train, val = arithmetic_parquets
    (tmp_path / "weights.bin").write_bytes(b"")
    config = _compose("acpo_cpu", _valid_overrides(tmp_path, train, val))
    with pytest.raises(main_acpo.SetupError, match=r"actor_rollout_ref\.model\.path=.*lacks config\.json"):
        main_acpo.prepare(config)
    config = _compose("acpo_cpu", _valid_overrides(tmp_path / "nowhere", train, val))
    with pytest.raises(main_acpo.SetupError, match="no such folder"):
        main_acpo.prepare(config)


def test_cpu_device_without_the_cpu_preset_is_rejected_naming_the_keys(
    tiny_model_dir: Path, arithmetic_parquets: tuple[Path, Path]
) -> None:
    train, val = arithmetic_parquets
    config = _compose("acpo_trainer", [*_valid_overrides(tiny_model_dir, train, val), "trainer.device=cpu"])
    with pytest.raises(main_acpo.SetupError, match="--config-name acpo_cpu") as failure:
        main_acpo.prepare(config)
    for key in ("actor_rollout_ref.rollout.name", "actor_rollout_ref.actor.strategy", "ray_kwargs.ray_init.num_gpus"):
        assert key in str(failure.value)
    gpu_with_cpu_rollout = _compose("acpo_cpu", [*_valid_overrides(tiny_model_dir, train, val), "trainer.device=cuda"])
    with pytest.raises(main_acpo.SetupError, match=r"rollout\.name=cpu needs trainer\.device=cpu"):
        main_acpo.prepare(gpu_with_cpu_rollout)


def test_the_cpu_preset_satisfies_every_cpu_requirement_and_carries_the_acpo_block() -> None:
    config = _compose("acpo_cpu", [])
    assert main_acpo.check_device(config) is True
    acpo = main_acpo.check_acpo_block(config)
    assert acpo.advantage.alpha == 0.5
    assert acpo.segmentation.markers[-1] == "step"


def test_an_out_of_range_acpo_value_is_rejected_naming_the_key(
    tiny_model_dir: Path, arithmetic_parquets: tuple[Path, Path]
) -> None:
    train, val = arithmetic_parquets
    config = _compose("acpo_cpu", [*_valid_overrides(tiny_model_dir, train, val), "acpo.advantage.alpha=-1"])
    with pytest.raises(main_acpo.SetupError, match=r"acpo\.advantage\.alpha"):
        main_acpo.prepare(config)
