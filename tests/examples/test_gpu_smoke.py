"""examples/run_gpu_smoke.sh on CPU: its dry run prints the one-GPU pipeline, each training run composes (FSDP2,
vLLM, one GPU, flex attribution, the cross-check on), and its report reads verl's metrics files. The GPU run itself
needs a CUDA device and is not part of this suite."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from recipe.acpo import smoke_report

REPO = Path(__file__).resolve().parents[2]


ATTN_KEY = "++actor_rollout_ref.model.override_config.attn_implementation"
REMOVE_PADDING_KEY = "actor_rollout_ref.model.use_remove_padding"


def _dry_run(smoke_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO / "examples" / "run_gpu_smoke.sh"), "--dry-run", "trainer.logger=[console]"],
        env={**os.environ, "SMOKE_DIR": str(smoke_dir), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _printed(done: subprocess.CompletedProcess[str]) -> list[list[str]]:
    assert done.returncode == 0, done.stderr
    return [shlex.split(line[2:]) for line in done.stdout.splitlines() if line.startswith("+ ")]


@pytest.fixture(scope="module")
def commands(tmp_path_factory: pytest.TempPathFactory) -> list[list[str]]:
    smoke_dir = tmp_path_factory.mktemp("smoke")
    printed = _printed(_dry_run(smoke_dir))
    assert not list(smoke_dir.iterdir()), "a dry run writes nothing"
    return printed


def _module(command: list[str]) -> str:
    start = command.index("python")
    assert command[start + 1] == "-m", command
    return command[start + 2]


def test_dry_run_prints_model_data_stage1_merge_stage2_merge_evaluate_report(commands: list[list[str]]) -> None:
    pipeline = [_module(c) for c in commands]
    assert pipeline[:3] == ["recipe.acpo.offline_models", "data_prep.arithmetic", "data_prep.check"]
    assert pipeline[3:7] == ["recipe.acpo.main_acpo", "recipe.acpo.merge"] * 2  # Stage 1, merge, Stage 2, merge
    assert pipeline[7:] == ["recipe.acpo.evaluate", "recipe.acpo.smoke_report"]
    assert commands[0][3] == "smollm2"  # an offline model: nothing from the hub
    for train in (commands[3], commands[5]):
        assert train[:2] == ["env", "ACPO_ATTRIBUTION_CROSS_CHECK=1"]
        assert train[-1] == "trainer.logger=[console]"
    evaluate = commands[7]
    assert evaluate[evaluate.index("--device") + 1] == "gpu" and evaluate[evaluate.index("--n-gpus") + 1] == "1"
    assert evaluate[-1] == "trainer.logger=[console]"  # the user's overrides reach the evaluation too, last


def _settings(command: list[str]) -> dict[str, str]:
    return dict(part.split("=", 1) for part in command if "=" in part and not part.startswith("-"))


@pytest.mark.parametrize(("attention", "remove_padding"), [(None, "True"), ("sdpa", "False"), ("eager", "False")])
def test_the_evaluation_loads_the_model_with_the_training_runs_attention(
    tmp_path: Path, attention: str | None, remove_padding: str
) -> None:
    printed = _printed(_dry_run(tmp_path, **({"SMOKE_ATTN": attention} if attention else {})))
    stage1, stage2, evaluate = printed[3], printed[5], printed[7]
    for command in (stage1, stage2, evaluate):
        settings = _settings(command)
        assert settings[ATTN_KEY] == (attention or "flash_attention_2")
        assert settings[REMOVE_PADDING_KEY] == remove_padding


def test_an_unknown_attention_is_refused_naming_the_variable(tmp_path: Path) -> None:
    done = _dry_run(tmp_path, SMOKE_ATTN="flash")
    assert done.returncode == 2 and "SMOKE_ATTN must be flash_attention_2" in done.stderr
    assert "+ " not in done.stdout  # refused before any command


@pytest.mark.e2e  # starts verl, a fresh interpreter or a training run: slow on 2 cores
@pytest.mark.parametrize("run", [3, 5])
def test_each_training_run_composes_on_one_gpu_with_fsdp2_vllm_and_flex_attribution(
    commands: list[list[str]], run: int
) -> None:
    command = commands[run]
    python = command.index("python")
    done = subprocess.run(
        [sys.executable, *command[python + 1 :], "--cfg", "job", "--resolve"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    actor_rollout_ref = config["actor_rollout_ref"]
    assert actor_rollout_ref["actor"]["strategy"] == "fsdp2"
    assert actor_rollout_ref["rollout"]["name"] == "vllm"
    assert actor_rollout_ref["rollout"]["tensor_model_parallel_size"] == 1
    assert actor_rollout_ref["model"]["override_config"]["attn_implementation"] == "flash_attention_2"
    assert (config["trainer"]["n_gpus_per_node"], config["trainer"]["nnodes"]) == (1, 1)
    assert config["acpo"]["attribution"]["attention"] == "flex"
    assert config["acpo"]["stage"] == (1 if run == 3 else 2)
    assert config["trainer"]["total_training_steps"] == (2 if run == 3 else 1)


def test_report_prints_the_differences_and_peak_memory_and_fails_without_the_cross_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "stage1_metrics.jsonl"
    rows = [
        {
            "step": 1,
            "data": {
                smoke_report.CHECKS[0]: 2.5e-3,
                smoke_report.CHECKS[1]: 1e-4,
                **{"perf/max_memory_allocated_gb": 12.25},
            },
        },
        {"step": 2, "data": {smoke_report.CHECKS[0]: 3e-3, smoke_report.CHECKS[1]: 2e-4}},
    ]
    good.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert smoke_report.main([str(good)]) == 0
    out = capsys.readouterr().out
    assert "0.0025" in out and "12.2" in out
    bad = tmp_path / "stage2_metrics.jsonl"
    bad.write_text(json.dumps({"step": 1, "data": {"perf/max_memory_allocated_gb": 3.0}}) + "\n")
    assert smoke_report.main([str(good), str(bad)]) == 1
    assert "ACPO_ATTRIBUTION_CROSS_CHECK=1 not seen" in capsys.readouterr().err
    assert smoke_report.main([str(tmp_path / "missing.jsonl")]) == 1
