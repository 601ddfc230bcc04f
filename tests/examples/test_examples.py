"""examples/run_acpo_qwen7b.sh and run_grpo_qwen7b.sh: their dry runs print every command, each training run's Hydra
configuration composes on CPU with the script's overrides (``main_acpo --cfg job``), the evaluation's composes too,
and the GRPO baseline matches ACPO's data, model, batch sizes, budget and evaluation; the CPU demo's ``--help``."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from recipe.acpo.validation import evaluate as ev
from recipe.acpo.validation.command import TAGGING_MANAGER_NAME

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = ("aime2024", "aime2025", "amc2023", "math500")
STAGE1_STEPS, STAGE2_STEPS = 7, 5


def _dry_run(script: str, env: dict[str, str], *args: str) -> list[list[str]]:
    done = subprocess.run(
        ["bash", str(REPO / "examples" / script), "--dry-run", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [shlex.split(line[2:]) for line in done.stdout.splitlines() if line.startswith("+ ")]


def _module(command: list[str]) -> str:
    assert command[:2] == ["python", "-m"], command
    return command[2]


def _value(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def _overrides(command: list[str]) -> dict[str, str]:
    return dict(part.split("=", 1) for part in command if "=" in part and not part.startswith("-"))


def _compose(command: list[str]) -> dict[str, Any]:
    """The job configuration ``main_acpo`` would run with: ``--cfg job --resolve``, nothing started."""
    assert _module(command) == "recipe.acpo.main_acpo"
    cfg_job = [sys.executable, *command[1:], "--cfg", "job", "--resolve"]
    done = subprocess.run(cfg_job, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return yaml.safe_load(done.stdout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data_dir = tmp_path_factory.mktemp("data")
    runs_dir = tmp_path_factory.mktemp("runs")
    env = {
        "DATA_DIR": str(data_dir),
        "RUNS_DIR": str(runs_dir),
        "MODEL_PATH": "/models/Qwen2.5-Math-7B",
        "STAGE1_STEPS": str(STAGE1_STEPS),
        "STAGE2_STEPS": str(STAGE2_STEPS),
    }
    user_override = "trainer.logger=[console]"
    acpo = _dry_run("run_acpo_qwen7b.sh", env, user_override)
    grpo = _dry_run("run_grpo_qwen7b.sh", env, user_override)
    return {"acpo": acpo, "grpo": grpo, "env": env, "data_dir": data_dir, "runs_dir": runs_dir}


def test_acpo_dry_run_prints_check_stage1_merge_stage2_merge_evaluate(runs: dict[str, Any]) -> None:
    acpo = runs["acpo"]
    assert [_module(c) for c in acpo] == [
        "data_prep.check",
        "recipe.acpo.main_acpo",
        "recipe.acpo.merge",
        "recipe.acpo.main_acpo",
        "recipe.acpo.merge",
        "recipe.acpo.evaluate",
    ]
    check, stage1, merge1, stage2, merge2, evaluate = acpo
    data_dir = runs["data_dir"]
    assert check[3:] == [
        f"{data_dir}/dapo17k_train.parquet",
        f"{data_dir}/dapo17k_val.parquet",
        *(f"{data_dir}/{b}.parquet" for b in BENCHMARKS),
    ]
    assert _value(stage1, "--config-name") == "acpo_stage1" and _value(stage2, "--config-name") == "acpo_stage2"
    s1, s2 = _overrides(stage1), _overrides(stage2)
    # Stage 1's checkpoints are merged, Stage 2 starts from the merged folder, and the final model is evaluated.
    assert _value(merge1, "--checkpoint-dir") == s1["trainer.default_local_dir"]
    assert s2["actor_rollout_ref.model.path"] == _value(merge1, "--target-dir")
    assert _value(merge2, "--checkpoint-dir") == s2["trainer.default_local_dir"]
    assert _value(evaluate, "--model") == _value(merge2, "--target-dir")
    assert (s1["trainer.total_training_steps"], s2["trainer.total_training_steps"]) == (
        str(STAGE1_STEPS),
        str(STAGE2_STEPS),
    )
    # Overrides given on the command line reach both stages, after the script's own.
    assert stage1[-1] == stage2[-1] == "trainer.logger=[console]"


def test_grpo_baseline_has_the_same_data_model_sizes_budget_and_evaluation(runs: dict[str, Any]) -> None:
    acpo, grpo = runs["acpo"], runs["grpo"]
    assert [_module(c) for c in grpo] == [
        "data_prep.check",
        "recipe.acpo.main_acpo",
        "recipe.acpo.merge",
        "recipe.acpo.evaluate",
    ]
    assert grpo[0] == acpo[0]
    train, stage1 = _overrides(grpo[1]), _overrides(acpo[1])
    run_specific = {"trainer.experiment_name", "trainer.default_local_dir", "trainer.total_training_steps"}
    run_specific.add("actor_rollout_ref.rollout.agent.agent_loop_config_path")  # Stage 1's curriculum agent loop
    shared = {k: v for k, v in stage1.items() if k not in run_specific}
    assert {k: train[k] for k in shared} == shared
    assert int(train["trainer.total_training_steps"]) == STAGE1_STEPS + STAGE2_STEPS
    assert train["algorithm.adv_estimator"] == "grpo"
    assert _value(grpo[2], "--checkpoint-dir") == train["trainer.default_local_dir"]
    assert _value(grpo[3], "--model") == _value(grpo[2], "--target-dir")

    def evaluation(command: list[str]) -> list[str]:
        drop = {"--model", "--output-dir", "--name"}
        kept, skip = [], False
        for part in command:
            if skip:
                skip = False
            elif part in drop:
                skip = True
            else:
                kept.append(part)
        return kept

    assert evaluation(grpo[3]) == evaluation(acpo[5])


ATTN_KEY = "++actor_rollout_ref.model.override_config.attn_implementation"
REMOVE_PADDING_KEY = "actor_rollout_ref.model.use_remove_padding"


def test_the_evaluation_loads_the_model_as_training_did_with_the_users_overrides(runs: dict[str, Any]) -> None:
    for train, evaluate in ((runs["acpo"][1], runs["acpo"][5]), (runs["acpo"][3], runs["acpo"][5])):
        trained, evaluated = _overrides(train), _overrides(evaluate)
        assert trained[ATTN_KEY] == evaluated[ATTN_KEY] == "flash_attention_2"  # verl's default, made explicit
        assert trained[REMOVE_PADDING_KEY] == evaluated[REMOVE_PADDING_KEY] == "True"
    assert runs["acpo"][5][-1] == runs["grpo"][3][-1] == "trainer.logger=[console]"


@pytest.mark.parametrize("script", ["run_acpo_qwen7b.sh", "run_grpo_qwen7b.sh"])
def test_sdpa_without_flash_attn_reaches_every_training_run_and_the_evaluation(
    runs: dict[str, Any], script: str
) -> None:
    user = "+actor_rollout_ref.model.override_config.foo=1"
    commands = _dry_run(script, {**runs["env"], "ATTN_IMPLEMENTATION": "sdpa"}, user)
    loading = [c for c in commands if _module(c) in ("recipe.acpo.main_acpo", "recipe.acpo.evaluate")]
    assert [_module(c) for c in loading][-1] == "recipe.acpo.evaluate" and len(loading) >= 2
    for command in loading:
        settings = _overrides(command)
        assert (settings[ATTN_KEY], settings[REMOVE_PADDING_KEY]) == ("sdpa", "False")
        assert command[-1] == user


def test_an_unknown_attention_is_refused_naming_the_variable(runs: dict[str, Any]) -> None:
    done = subprocess.run(
        ["bash", str(REPO / "examples" / "run_acpo_qwen7b.sh"), "--dry-run"],
        env={**os.environ, **runs["env"], "ATTN_IMPLEMENTATION": "flash-attn"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "ATTN_IMPLEMENTATION must be flash_attention_2" in done.stderr
    assert "+ " not in done.stdout


def test_evaluation_arguments_parse_with_the_tool_and_merge_flags_exist(runs: dict[str, Any]) -> None:
    evaluate = runs["acpo"][5]
    args = ev.build_parser().parse_args(evaluate[3:])
    assert (args.k, args.temperature, args.max_response_length) == (8, 1.0, 3072)
    assert args.data == [f"{runs['data_dir']}/{b}.parquet" for b in BENCHMARKS]
    merge_help = subprocess.run(
        [sys.executable, "-m", "recipe.acpo.merge", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    ).stdout
    for merge in (runs["acpo"][2], runs["acpo"][4], runs["grpo"][2]):
        for flag in (part for part in merge if part.startswith("--")):
            assert flag in merge_help


@pytest.mark.e2e  # starts verl, a fresh interpreter or a training run: slow on 2 cores
@pytest.mark.parametrize("run", ["stage1", "stage2", "grpo"])
def test_each_training_run_composes_with_the_scripts_overrides(runs: dict[str, Any], run: str) -> None:
    command = {"stage1": runs["acpo"][1], "stage2": runs["acpo"][3], "grpo": runs["grpo"][1]}[run]
    config = _compose(command)
    actor = config["actor_rollout_ref"]["actor"]
    rollout = config["actor_rollout_ref"]["rollout"]
    # the script's shared settings
    assert (rollout["name"], rollout["n"], rollout["temperature"]) == ("vllm", 8, 1.0)
    assert (config["data"]["train_batch_size"], actor["ppo_mini_batch_size"]) == (128, 32)
    assert config["data"]["max_response_length"] == 3072
    assert config["trainer"]["n_gpus_per_node"] == 8 and config["trainer"]["logger"] == ["console"]
    # the tested engine (FSDP2, as every CPU test), and checkpoints of about 91 GB each kept to the last two
    assert actor["strategy"] == "fsdp2" and config["actor_rollout_ref"]["ref"]["strategy"] == "fsdp2"
    assert config["trainer"]["max_actor_ckpt_to_keep"] == 2
    agent_loops = rollout["agent"]["agent_loop_config_path"]
    if run == "stage1":
        # absolute: a Ray worker on another node resolves it against its own working directory
        assert Path(agent_loops).is_absolute() and Path(agent_loops) == REPO / "recipe/acpo/config/agent_loops.yaml"
        assert rollout["agent"]["default_agent_loop"] == "acpo_curriculum"
        assert config["algorithm"]["adv_estimator"] == "acpo"
        assert actor["use_kl_loss"] is False
        assert config["acpo"]["stage"] == 1 and config["acpo"]["curriculum"]["enable"] is True
        assert config["actor_rollout_ref"]["model"]["path"] == "/models/Qwen2.5-Math-7B"
        assert config["trainer"]["total_training_steps"] == STAGE1_STEPS
    elif run == "stage2":
        assert config["algorithm"]["adv_estimator"] == "acpo"
        assert (actor["use_kl_loss"], actor["kl_loss_type"], actor["kl_loss_coef"]) == (True, "low_var_kl", 0.001)
        assert config["acpo"]["stage"] == 2 and config["acpo"]["curriculum"]["enable"] is False
        assert config["actor_rollout_ref"]["model"]["path"].endswith("stage1_merged_hf")
        assert config["trainer"]["total_training_steps"] == STAGE2_STEPS
    else:
        assert config["algorithm"]["adv_estimator"] == "grpo"
        assert (actor["use_kl_loss"], actor["kl_loss_type"], actor["kl_loss_coef"]) == (True, "low_var_kl", 0.001)
        assert config["trainer"]["total_training_steps"] == STAGE1_STEPS + STAGE2_STEPS


@pytest.mark.e2e  # starts verl, a fresh interpreter or a training run: slow on 2 cores
def test_the_scripts_evaluation_composes_as_a_validation_only_run(runs: dict[str, Any], tiny_model_dir: Path) -> None:
    # The evaluation's own dry run (files in place) prints the verl command it would run; that command composes.
    data_dir = runs["data_dir"]
    for name in BENCHMARKS:
        pd.DataFrame(
            {
                "data_source": [name],
                "prompt": [[{"role": "user", "content": "1+1?"}]],
                "reward_model": [{"ground_truth": "2", "style": "rule"}],
                "extra_info": [{"index": f"{name}-0"}],
            }
        ).to_parquet(data_dir / f"{name}.parquet")
    evaluate = runs["acpo"][5]
    args = [*evaluate[3:], "--dry-run"]
    args[args.index("--model") + 1] = str(tiny_model_dir)
    done = subprocess.run(
        [sys.executable, "-m", "recipe.acpo.evaluate", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = [shlex.split(line[2:]) for line in done.stdout.splitlines() if line.startswith("+ ")]
    assert len(printed) == 1
    command = ["python", *printed[0][1:]]
    assert _value(command, "--config-name") == "acpo_trainer"
    config = _compose(command)
    trainer = config["trainer"]
    assert (trainer["val_only"], trainer["val_before_train"], trainer["resume_mode"]) == (True, True, "disable")
    assert trainer["n_gpus_per_node"] == 8
    val_kwargs = config["actor_rollout_ref"]["rollout"]["val_kwargs"]
    assert (val_kwargs["n"], val_kwargs["do_sample"], val_kwargs["temperature"]) == (8, True, 1.0)
    assert config["actor_rollout_ref"]["rollout"]["tensor_model_parallel_size"] == 2
    assert config["data"]["val_files"] == [str(data_dir / f"{b}.parquet") for b in BENCHMARKS]
    assert config["reward"]["reward_manager"]["name"] == TAGGING_MANAGER_NAME
    assert config["acpo_validation"]["reward_manager"]["name"] == "ACPORewardManager"
    assert config["acpo_validation"]["tags"] == ["data_source"]


def test_the_cpu_demo_explains_itself_with_help_and_refuses_an_argument(tmp_path: Path) -> None:
    env = dict(os.environ, DEMO_DIR=str(tmp_path / "demo"))
    script = str(REPO / "examples" / "run_acpo_cpu_demo.sh")
    helped = subprocess.run(["bash", script, "--help"], capture_output=True, text=True, timeout=30, env=env)
    assert helped.returncode == 0
    assert "DEMO_SEED" in helped.stdout and "Usage: bash examples/run_acpo_cpu_demo.sh" in helped.stdout
    assert "set -euo" not in helped.stdout and not helped.stdout.startswith("!")
    refused = subprocess.run(["bash", script, "--seed=3"], capture_output=True, text=True, timeout=30, env=env)
    assert refused.returncode == 2 and "'--seed=3'" in refused.stderr
    assert not (tmp_path / "demo").exists()  # nothing installed, nothing written
