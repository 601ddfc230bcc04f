"""Stage 1 -> Stage 2 hand-over: merging the last Stage-1 checkpoint and checking Stage 2's start (§8)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from recipe.acpo.merge import (
    MERGE_RECORD,
    CheckpointError,
    check_stage2_model_path,
    find_stage1_checkpoint,
    main,
    merge_stage1_checkpoint,
)

REPO = Path(__file__).resolve().parents[2]


def _write_actor_checkpoint(root: Path, step: int, model_dir: Path) -> Path:
    """An FSDP actor checkpoint of world size 1 in verl's layout: rank shard, fsdp_config.json, huggingface/."""
    from transformers import AutoModelForCausalLM

    actor = root / f"global_step_{step}" / "actor"
    (actor / "huggingface").mkdir(parents=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.save(model.state_dict(), actor / "model_world_size_1_rank_0.pt")
    (actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": 1}))
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model_dir / name, actor / "huggingface" / name)
    return actor


def test_merge_takes_the_latest_complete_step_and_writes_a_loadable_folder(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from transformers import AutoModelForCausalLM

    checkpoints = tmp_path / "ckpt"
    _write_actor_checkpoint(checkpoints, 1, tiny_model_dir)
    _write_actor_checkpoint(checkpoints, 2, tiny_model_dir)
    # verl writes the tracker once step 2 is complete; step 3 was interrupted mid-save (no shard yet).
    (checkpoints / "global_step_3" / "actor").mkdir(parents=True)
    (checkpoints / "latest_checkpointed_iteration.txt").write_text("2")
    assert find_stage1_checkpoint(checkpoints).step == 2

    target = merge_stage1_checkpoint(checkpoints, tmp_path / "merged")
    record = json.loads((target / MERGE_RECORD).read_text())
    assert record["global_step"] == 2 and record["source"].endswith("global_step_2/actor")
    merged = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    for (name, a), (_, b) in zip(original.state_dict().items(), merged.state_dict().items()):
        # verl's merger stores bfloat16 weights.
        torch.testing.assert_close(a.bfloat16().float(), b, msg=name)
    check_stage2_model_path(OmegaConf.create({"path": str(target)}))
    with pytest.raises(FileExistsError, match="--overwrite"):
        merge_stage1_checkpoint(checkpoints, target)
    (checkpoints / "global_step_1" / "actor" / "optim_world_size_1_rank_0.pt").write_bytes(b"adam")
    assert (checkpoints / "global_step_2" / "actor" / "model_world_size_1_rank_0.pt").is_file()
    args = ["--checkpoint-dir", str(checkpoints), "--target-dir", str(target), "--step", "1", "--overwrite"]
    assert main([*args, "--drop-optimizer-state"]) == 0
    assert json.loads((target / MERGE_RECORD).read_text())["global_step"] == 1
    # Stage 1 is merged: its optimizer shards are gone, its model shards stay.
    assert not (checkpoints / "global_step_1" / "actor" / "optim_world_size_1_rank_0.pt").exists()
    assert (checkpoints / "global_step_1" / "actor" / "model_world_size_1_rank_0.pt").is_file()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no_dir", "does not exist"),
        ("no_steps", "no global_step_N folder"),
        ("bad_tracker", "should hold a step number"),
        ("missing_step", "no actor checkpoint for step 7"),
        ("no_fsdp_config", "fsdp_config.json is missing"),
        ("missing_shard", "missing model shard.*rank_1"),
        ("no_hf_config", "huggingface/config.json"),
    ],
)
def test_missing_or_partial_checkpoints_are_named(tmp_path: Path, damage: str, message: str) -> None:
    root = tmp_path / "ckpt"
    actor = root / "global_step_5" / "actor"
    (actor / "huggingface").mkdir(parents=True)
    (actor / "huggingface" / "config.json").write_text("{}")
    (actor / "fsdp_config.json").write_text(json.dumps({"world_size": 2}))
    for rank in range(2):
        (actor / f"model_world_size_2_rank_{rank}.pt").write_bytes(b"")
    assert find_stage1_checkpoint(root).world_size == 2
    step = None
    if damage == "no_dir":
        root = tmp_path / "elsewhere"
    elif damage == "no_steps":
        shutil.rmtree(root / "global_step_5")
    elif damage == "bad_tracker":
        (root / "latest_checkpointed_iteration.txt").write_text("five")
    elif damage == "missing_step":
        step = 7
    elif damage == "no_fsdp_config":
        (actor / "fsdp_config.json").unlink()
    elif damage == "missing_shard":
        (actor / "model_world_size_2_rank_1.pt").unlink()
    elif damage == "no_hf_config":
        (actor / "huggingface" / "config.json").unlink()
    with pytest.raises(CheckpointError, match=message):
        find_stage1_checkpoint(root, step)
    assert (
        main(
            ["--checkpoint-dir", str(root), "--target-dir", str(tmp_path / "out")]
            + ([] if step is None else ["--step", str(step)])
        )
        == 2
    )
    assert not (tmp_path / "out").exists()


def test_stage2_start_must_be_a_hugging_face_folder(tmp_path: Path, tiny_model_dir: Path) -> None:
    cases: list[tuple[Any, str]] = [
        (OmegaConf.create({"path": "???"}), "merged Stage-1 checkpoint"),
        (OmegaConf.create({"path": None}), "merged Stage-1 checkpoint"),
        (OmegaConf.create({"path": str(tmp_path / "missing")}), "does not exist"),
        (OmegaConf.create({"path": str(tmp_path)}), "no config.json"),
    ]
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text("{}")
    cases.append((OmegaConf.create({"path": str(no_weights)}), "no model weights"))
    for model_config, message in cases:
        with pytest.raises(ValueError, match=message):
            check_stage2_model_path(model_config)
    # A Hugging Face folder that recipe.acpo.merge did not write is accepted with a warning.
    with pytest.warns(UserWarning, match=MERGE_RECORD):
        check_stage2_model_path(OmegaConf.create({"path": str(tiny_model_dir)}))


@pytest.fixture(scope="module")
def compose() -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import recipe.acpo.main_acpo  # noqa: F401  (registers verl's packaged configs on Hydra's search path)

    config_dir = REPO / "recipe" / "acpo" / "config"

    def _compose(name: str, overrides: list[str] | None = None) -> Any:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            return hydra_compose(config_name=name, overrides=overrides or [])

    return _compose


@pytest.mark.parametrize("cpu", [False, True])
def test_stage_configs_follow_spec_section_8(compose: Any, cpu: bool) -> None:
    stage1 = compose("acpo_cpu_stage1" if cpu else "acpo_stage1")
    stage2 = compose("acpo_cpu_stage2" if cpu else "acpo_stage2")
    for config in (stage1, stage2):
        assert config.algorithm.adv_estimator == "acpo"
        assert config.trainer.device == ("cpu" if cpu else "cuda")
        assert config.actor_rollout_ref.actor.strategy == ("fsdp2" if cpu else "fsdp")
        assert not config.algorithm.use_kl_in_reward
    # Stage 1: KL-free (so no reference model), uniform token weights, difficulty-aware sampling on, through the
    # recipe's agent loop, with the temperature mismatch corrected by truncated token-level importance weights.
    assert not stage1.actor_rollout_ref.actor.use_kl_loss
    assert stage1.acpo.stage == 1 and stage1.acpo.curriculum.enable
    assert stage1.actor_rollout_ref.rollout.agent.default_agent_loop == "acpo_curriculum"
    assert (REPO / stage1.actor_rollout_ref.rollout.agent.agent_loop_config_path).is_file()
    assert stage1.algorithm.rollout_correction.rollout_is == "token"
    assert stage1.actor_rollout_ref.rollout.calculate_log_probs
    # Stage 2: K3 KL to the start checkpoint (which must be given), confidence weights, one temperature.
    actor = stage2.actor_rollout_ref.actor
    assert actor.use_kl_loss and actor.kl_loss_type == "low_var_kl" and actor.kl_loss_coef == 0.001
    assert stage2.acpo.stage == 2 and not stage2.acpo.curriculum.enable
    assert stage2.actor_rollout_ref.model.path is None
    assert stage1.trainer.experiment_name != stage2.trainer.experiment_name  # separate checkpoint folders
    # Any recipe config takes a stage as an option of the `stage` group.
    assert compose("acpo_cpu", ["+stage=stage2"]).acpo.stage == 2


def test_acpo_settings_are_checked_before_ray_starts(compose: Any) -> None:
    from recipe.acpo.main_acpo import prepare
    from recipe.acpo.preflight import SetupError, check_acpo_block, check_acpo_trainer

    with pytest.raises(SetupError, match=r"actor_rollout_ref\.model\.path=MERGED"):
        prepare(compose("acpo_cpu_stage2"))
    config = compose("acpo_cpu_stage1", ["critic.enable=true"])
    with pytest.raises(SetupError, match=r"critic\.enable=False"):
        check_acpo_trainer(config, check_acpo_block(config))
    # verl's GRPO (the base config's estimator) is not checked for ACPO settings.
    config = compose("acpo_cpu", ["critic.enable=true"])
    check_acpo_trainer(config, check_acpo_block(config))


def test_scoring_in_the_agent_loop_is_the_cpu_presets_and_needs_the_acpo_manager_and_agent_loop(compose: Any) -> None:
    from recipe.acpo.preflight import SetupError, check_reward_manager
    from recipe.acpo.reward_manager import scores_in_agent_loop
    from recipe.acpo.validation.command import tagging_reward_manager_overrides

    assert scores_in_agent_loop(compose("acpo_cpu_stage1")) and not scores_in_agent_loop(compose("acpo_stage1"))
    check_reward_manager(compose("acpo_cpu_stage1"))
    check_reward_manager(compose("acpo_stage1"))
    key = r"reward\.reward_kwargs\.score_in_agent_loop"
    with pytest.raises(
        SetupError, match=rf"{key}=true scores with the acpo reward, but reward\.reward_manager is naive"
    ):
        check_reward_manager(
            compose("acpo_cpu", ["reward.reward_manager.source=register", "reward.reward_manager.name=naive"])
        )
    with pytest.raises(SetupError, match=rf"{key}=true needs the recipe's agent loop: .*got 'single_turn_agent'"):
        check_reward_manager(
            compose("acpo_cpu", ["actor_rollout_ref.rollout.agent.default_agent_loop=single_turn_agent"])
        )
    with pytest.raises(SetupError, match=rf"{key}='maybe' must be true or false"):
        check_reward_manager(compose("acpo_cpu", ["reward.reward_kwargs.score_in_agent_loop=maybe"]))
    # The validation pass's tagging manager adds its tags in the reward worker, so it turns the agent loop's off.
    config = compose("acpo_cpu")
    tagged = compose("acpo_cpu", tagging_reward_manager_overrides(config, tags=["data_source"]))
    assert not scores_in_agent_loop(tagged)
    check_reward_manager(tagged)


@pytest.mark.parametrize("seed", ["1.5", "'abc'", "true", "null"])
def test_a_rollout_seed_that_is_not_an_integer_is_named_before_ray_starts(compose: Any, seed: str) -> None:
    from recipe.acpo.main_acpo import SetupError, check_rollout_seed, prepare

    check_rollout_seed(compose("acpo_cpu", ["actor_rollout_ref.rollout.seed=7"]))
    with pytest.raises(SetupError, match=r"actor_rollout_ref\.rollout\.seed=.* must be an integer"):
        prepare(compose("acpo_cpu_stage1", [f"actor_rollout_ref.rollout.seed={seed}"]))


def test_a_micro_batch_size_that_does_not_divide_the_batch_is_named_before_ray_starts(compose: Any) -> None:
    from recipe.acpo.main_acpo import SetupError, check_micro_batch_sizes

    # The testbed's sizes (128 responses a step, micro-batches of 128) fit; a smaller batch (2 prompts x 4) does not,
    # and the reference pass (Stage 2) follows the rollout's micro-batch size when that one is lowered.
    check_micro_batch_sizes(compose("acpo_cpu_testbed_stage2"), use_reference_policy=True)
    small = [
        "data.train_batch_size=2",
        "actor_rollout_ref.rollout.n=4",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2",
    ]
    with pytest.raises(SetupError, match=r"ppo_micro_batch_size_per_gpu=128 does not divide the 8 responses"):
        check_micro_batch_sizes(compose("acpo_cpu_testbed_stage2", small), use_reference_policy=True)
    lowered = [
        *small,
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
    ]
    check_micro_batch_sizes(compose("acpo_cpu_testbed_stage2", lowered), use_reference_policy=True)
    with pytest.raises(SetupError, match=r"ref\.log_prob_micro_batch_size_per_gpu=3"):
        check_micro_batch_sizes(
            compose("acpo_cpu_testbed_stage2", [*lowered, "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=3"]),
            use_reference_policy=True,
        )
