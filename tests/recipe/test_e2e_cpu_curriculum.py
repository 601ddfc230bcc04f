"""End to end on the CPU: the Stage-1 curriculum (§6) in ``python -m recipe.acpo.main_acpo --config-name
acpo_cpu_stage1`` with real Ray, verl's V1 trainer, the ACPO trainer, the CPU rollout and the recipe's math reward;
and the pass-rate pre-pass ``python -m recipe.acpo.pass_rate`` through verl's validation path.

The training data has four prompts, two per step in order: prompts 0 and 2 are marked hard in the data
(``extra_info.pass_rate = 0``), prompts 1 and 3 have no pass rate (unknown: normal tier). With ``rollout.n = 4`` and
``hard_fraction = 0.5`` each hard prompt sends 2 of its 4 requests at ``hard_temperature``, so steps 1 and 2 sample
exactly 2 requests hot. The tiny random policy never answers right, so after step 1 prompt 1's online estimate is 0:
hard. Step 3, resumed from the step-2 checkpoint, sees prompts 0 and 1 again and samples 4 requests hot, which it
can only do if the resume restored the tracker (a fresh tracker would not know prompt 1).

"Reached the sampler hot" is read from the rollout's own log-probs: the CPU rollout returns them at the temperature it
sampled at and verl recomputes them at the rollout temperature, so the per-token gap is 0 (numerics) for cold
requests and clearly not for hot ones.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from data_prep.schema import build_row, write_rows
from recipe.acpo.curriculum import CURRICULUM_STATE_FILE

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 600
GROUP = 4
HOT_PER_HARD_PROMPT = 2  # ceil(hard_fraction 0.5 * n 4)
DATA_PASS_RATES: list[float | None] = [0.0, None, 0.0, None]


def _rows(pass_rates: list[float | None], split: str) -> list[dict[str, Any]]:
    return [
        build_row(
            "arithmetic",
            f"What is {n + 2} + {2 * n + 5}?",
            str(3 * n + 7),
            index=f"{split}-{n}",
            split=split,
            extra_info={"pass_rate": rate},
        )
        for n, rate in enumerate(pass_rates)
    ]


@pytest.fixture(scope="module")
def curriculum_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("curriculum_data")
    train = write_rows(_rows(DATA_PASS_RATES, "train"), folder / "train.parquet")
    val = write_rows(_rows([None, None], "test"), folder / "val.parquet")
    return train, val


@pytest.fixture(scope="module")
def ray_dir() -> Iterator[Path]:
    # Ray's socket paths must stay under 107 characters: a short private folder, not pytest's deep tmp_path.
    path = Path(tempfile.mkdtemp(prefix="acpo_cur_ray_", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_DEDUP_LOGS": "0", **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def _train(overrides: list[str], log_path: Path) -> dict[int, dict[str, Any]]:
    """One Stage-1 run; the metrics of each step, from verl's file logger."""
    command = [sys.executable, "-m", "recipe.acpo.main_acpo", "--config-name", "acpo_cpu_stage1", *overrides]
    done = subprocess.run(
        command,
        cwd=REPO,
        env=_env(VERL_FILE_LOGGER_PATH=str(log_path)),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert done.returncode == 0, f"Stage 1 failed:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    entries = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    return {entry["step"]: entry["data"] for entry in entries}


def _overrides(model: Path, data: tuple[Path, Path], checkpoints: Path, ray_dir: Path, steps: int) -> list[str]:
    return [
        f"actor_rollout_ref.model.path={model}",
        f"data.train_files={data[0]}",
        f"data.val_files={data[1]}",
        "data.shuffle=False",
        "data.train_batch_size=2",
        "data.max_prompt_length=256",
        "data.max_response_length=16",
        f"actor_rollout_ref.rollout.n={GROUP}",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
        "acpo.segmentation.min_step_tokens=4",
        f"trainer.total_training_steps={steps}",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        "trainer.save_freq=2",
        "trainer.resume_mode=auto",
        "trainer.logger=[console,file]",
        f"trainer.default_local_dir={checkpoints}",
        f"ray_kwargs.ray_init._temp_dir={ray_dir}",
    ]


@dataclass
class CurriculumRuns:
    first: dict[int, dict[str, Any]]
    resumed: dict[int, dict[str, Any]]
    checkpoints: Path

    @property
    def steps(self) -> dict[int, dict[str, Any]]:
        return {**self.first, **self.resumed}


@pytest.fixture(scope="module")
def curriculum_runs(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, curriculum_data: tuple[Path, Path], ray_dir: Path
) -> CurriculumRuns:
    out = tmp_path_factory.mktemp("curriculum_runs")
    checkpoints = out / "checkpoints"
    first = _train(_overrides(tiny_model_dir, curriculum_data, checkpoints, ray_dir, steps=2), out / "first.jsonl")
    resumed = _train(_overrides(tiny_model_dir, curriculum_data, checkpoints, ray_dir, steps=3), out / "resumed.jsonl")
    return CurriculumRuns(first, resumed, checkpoints)


def test_exactly_the_planned_requests_of_hard_prompts_are_sampled_hot(curriculum_runs: CurriculumRuns) -> None:
    assert sorted(curriculum_runs.first) == [1, 2] and sorted(curriculum_runs.resumed) == [3]
    expected = {1: (1, 0.5), 2: (1, 0.5), 3: (2, 1.0)}  # step: (hard prompts, hard_prompt_frac)
    for step, (hard_prompts, fraction) in expected.items():
        metrics = curriculum_runs.steps[step]
        assert metrics["acpo/curriculum/hard_prompt_frac"] == fraction, f"step {step}"
        assert metrics["acpo/curriculum/hot_requests_planned"] == hard_prompts * HOT_PER_HARD_PROMPT, f"step {step}"
        assert metrics["acpo/curriculum/hot_requests"] == hard_prompts * HOT_PER_HARD_PROMPT, f"step {step}"


def test_hot_requests_were_sampled_at_another_temperature_than_verl_recomputes(
    curriculum_runs: CurriculumRuns,
) -> None:
    for step, metrics in curriculum_runs.steps.items():
        cold, hot = metrics["acpo/curriculum/logprob_gap/cold"], metrics["acpo/curriculum/logprob_gap/hot"]
        print(f"step {step}: |rollout - old| log-prob per token, cold {cold:.2e}, hot {hot:.2e}")
        assert cold < 1e-4, f"step {step}"  # same temperature, fp32 on both sides
        assert hot > 100 * max(cold, 1e-6), f"step {step}"


def test_stage_one_corrects_the_mismatch_with_token_level_truncated_importance_weights(
    curriculum_runs: CurriculumRuns,
) -> None:
    for step, metrics in curriculum_runs.steps.items():
        assert 0.0 < metrics["rollout_corr/rollout_is_mean"] <= 2.0, f"step {step}"
        assert metrics["rollout_corr/rollout_is_max"] <= 2.0, f"step {step}"  # truncated at rollout_is_threshold
        # Hot tokens move the weights off 1 (cold ones stay at 1 up to numerics).
        assert metrics["rollout_corr/rollout_is_std"] > 1e-3, f"step {step}"


def test_tier_metrics_are_logged_per_step(curriculum_runs: CurriculumRuns) -> None:
    for step, metrics in curriculum_runs.steps.items():
        for name in ("acc", "entropy", "response_length"):
            assert f"acpo/curriculum/hard/{name}" in metrics, f"step {step}: hard/{name}"
        if metrics["acpo/curriculum/hard_prompt_frac"] < 1.0:
            assert "acpo/curriculum/normal/entropy" in metrics, f"step {step}"
        assert metrics["acpo/curriculum/hard/acc"] == 0.0  # a random policy never answers right


def test_the_tracker_is_checkpointed_and_the_resumed_run_continues_from_it(curriculum_runs: CurriculumRuns) -> None:
    state = json.loads((curriculum_runs.checkpoints / "global_step_2" / CURRICULUM_STATE_FILE).read_text())
    tracker = state["tracker"]
    ids = [f"arithmetic/train-{n}" for n in range(4)]
    assert sorted(tracker["pass_rates"]) == ids
    # Seeded hard prompts stay at 0; unknown prompts take their first group's accuracy (0); one update each.
    assert tracker["pass_rates"] == dict.fromkeys(ids, 0.0)
    assert tracker["observations"] == dict.fromkeys(ids, 1)
    assert curriculum_runs.first[2]["acpo/curriculum/tracked_prompts"] == 4.0
    # The resumed run started from those 4 estimates: prompt 1 is hard in step 3 (see test 1).
    assert curriculum_runs.resumed[3]["acpo/curriculum/tracked_prompts"] == 4.0
    assert curriculum_runs.resumed[3]["acpo/curriculum/seeded_prompts"] == 0.0
    final = json.loads((curriculum_runs.checkpoints / "global_step_3" / CURRICULUM_STATE_FILE).read_text())
    assert final["tracker"]["observations"] == {ids[0]: 2, ids[1]: 2, ids[2]: 1, ids[3]: 1}


# ------------------------------------------------------------------------------------- the pass-rate pre-pass


def test_the_pass_rate_pre_pass_writes_a_rate_for_every_row_through_verls_validation(
    tiny_model_dir: Path, curriculum_data: tuple[Path, Path], ray_dir: Path, tmp_path: Path
) -> None:
    train, _ = curriculum_data
    output = tmp_path / "train_pass_rate.parquet"
    command = [sys.executable, "-m", "recipe.acpo.pass_rate", "--config-name", "acpo_cpu", "--input", str(train)]
    command += ["--output", str(output), "--model", str(tiny_model_dir), "--k", "2", "--work-dir", str(tmp_path / "w")]
    command += [
        "--",
        "data.max_prompt_length=256",
        "data.max_response_length=8",
        f"ray_kwargs.ray_init._temp_dir={ray_dir}",
    ]
    done = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    assert "rows: 4, with a pass rate: 4" in done.stdout and "rows with fewer than k=2 samples: 0" in done.stdout

    before, after = pq.read_table(train), pq.read_table(output)
    assert after.column_names == before.column_names
    assert after.drop(["extra_info"]).equals(before.drop(["extra_info"]))
    infos_before, infos_after = before.column("extra_info").to_pylist(), after.column("extra_info").to_pylist()
    for old, new in zip(infos_before, infos_after):
        assert {k: v for k, v in new.items() if k != "pass_rate"} == {k: v for k, v in old.items() if k != "pass_rate"}
        assert new["pass_rate"] == 0.0  # the random policy answers none of its 2 samples right
    generations = list((tmp_path / "w" / "generations").glob("*.jsonl"))
    assert len(generations) == 1 and len(generations[0].read_text().splitlines()) == 4 * 2
