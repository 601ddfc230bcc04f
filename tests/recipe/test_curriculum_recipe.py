"""The recipe side of the Stage-1 curriculum (§6): the hot-sampling agent loop (which also scores its responses when
asked) and the trainer mixin.

The agent loop runs against the CPU rollout's real generation server (in-process) on a tiny random Qwen2, so a
temperature is checked where it matters: in the log-probs the sampler returns. The mixin runs on a real verl
``PPOTrainerSync`` built from the recipe's CPU config (no Ray), reading real parquets through verl's own dataloader;
only the actor worker group, a GPU-side component, is replaced by a stand-in that writes and reads checkpoint files.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from transfer_queue import KVBatchMeta
from verl.experimental.agent_loop.agent_loop import AgentLoopOutput, DictConfigWrap, _agent_loop_registry
from verl.trainer.ppo.v1 import PPOTrainerSync
from verl.utils import tensordict_utils as tu

from acpo_core.curriculum import PassRateTracker
from data_prep.pass_rate import ROW_KEY as PASS_RATE_ROW_KEY
from data_prep.pass_rate import add_row_numbers, write_pass_rates
from data_prep.schema import DataError, build_row, write_rows
from recipe.acpo import config_search_path  # noqa: F401  (registers verl's packaged configs on Hydra's search path)
from recipe.acpo.agent_loop import (
    AGENT_LOOP_NAME,
    HOT_SAMPLES_KEY,
    HOT_TEMPERATURE_KEY,
    TEMPERATURE_KEY,
    CurriculumAgentLoop,
    request_temperature,
)
from recipe.acpo.curriculum import (
    CURRICULUM_STATE_FILE,
    HARD_KEY,
    PROMPT_ID_KEY,
    CurriculumMixin,
    prompt_id,
)
from recipe.acpo.preflight import check_acpo_block
from recipe.acpo.validation.generations import GenerationsError
from recipe.acpo.validation.pass_rate import pass_rates_from_dump, validation_command

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "recipe" / "acpo" / "config"
GROUP = 4
MESSAGES = [{"role": "user", "content": "What is 2 + 3? Answer: "}]


# ------------------------------------------------------------------------------------------------ the agent loop


def test_the_first_hot_samples_of_a_group_get_the_hot_temperature() -> None:
    temperatures = [request_temperature(1.0, session, hot_samples=2, hot_temperature=1.2) for session in range(4)]
    assert temperatures == [1.2, 1.2, 1.0, 1.0]
    assert [request_temperature(0.7, s, hot_samples=4, hot_temperature=1.3) for s in range(4)] == [1.3] * 4


def test_a_prompt_without_hot_samples_keeps_the_rollout_temperature_even_without_a_session() -> None:
    assert request_temperature(0.8, None, hot_samples=0, hot_temperature=None) == 0.8
    assert [request_temperature(1.0, s, hot_samples=0, hot_temperature=1.2) for s in range(3)] == [1.0] * 3


def test_hot_samples_need_the_session_id_and_a_positive_hot_temperature() -> None:
    with pytest.raises(ValueError, match=r"session_id.*use_v1"):
        request_temperature(1.0, None, hot_samples=1, hot_temperature=1.2)
    with pytest.raises(ValueError, match="positive acpo_hot_temperature"):
        request_temperature(1.0, 0, hot_samples=1, hot_temperature=0.0)


def test_the_agent_loop_is_registered_and_listed_for_verls_workers() -> None:
    assert _agent_loop_registry[AGENT_LOOP_NAME]["_target_"] == "recipe.acpo.agent_loop.CurriculumAgentLoop"
    listed = (CONFIG_DIR / "agent_loops.yaml").read_text()
    assert f"name: {AGENT_LOOP_NAME}" in listed and "_target_: recipe.acpo.agent_loop.CurriculumAgentLoop" in listed


@pytest.fixture(scope="module")
def policy(tiny_model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def cpu_server(tiny_model_dir: Path, policy: Any) -> Any:
    """The CPU rollout's generation server, in-process, serving ``policy``."""
    from verl.workers.config import HFModelConfig, RolloutConfig

    from verl_cpu.rollout import CPURolloutServer

    rollout = RolloutConfig(name="cpu", tensor_model_parallel_size=1, prompt_length=64, response_length=8)
    return CPURolloutServer(rollout, HFModelConfig(path=str(tiny_model_dir)), model=policy)


@pytest.fixture(scope="module")
def cpu_client(cpu_server: Any, server_client: Any) -> Any:
    return server_client(cpu_server)


def _run_group(
    client: Any,
    qwen_tokenizer: Any,
    sampling_params: dict,
    rollout: dict | None = None,
    reward: dict | None = None,
    **prompt_fields: Any,
) -> list[AgentLoopOutput]:
    """One prompt's group of GROUP requests through CurriculumAgentLoop and the CPU rollout server, concurrently."""
    from omegaconf import OmegaConf

    rollout_config = {"prompt_length": 64, "response_length": 8, **(rollout or {})}
    trainer_config = OmegaConf.create({"actor_rollout_ref": {"rollout": rollout_config}, "reward": reward or {}})

    async def run() -> list[AgentLoopOutput]:
        # AgentLoopBase binds the running event loop when built, as verl's workers build it inside theirs.
        loops = [
            CurriculumAgentLoop(
                trainer_config=DictConfigWrap(trainer_config),
                server_manager=client,
                tokenizer=qwen_tokenizer,
                processor=None,
                dataset_cls=None,
                data_config=DictConfigWrap(OmegaConf.create({})),
                hf_model_type="qwen2",
            )
            for _ in range(GROUP)
        ]
        return await asyncio.gather(
            *(
                loop.run(sampling_params, raw_prompt=MESSAGES, session_id=session, **prompt_fields)
                for session, loop in enumerate(loops)
            )
        )

    return asyncio.run(run())


def _log_probs_at(policy: Any, output: AgentLoopOutput, temperature: float) -> torch.Tensor:
    ids = torch.tensor([output.prompt_ids + output.response_ids])
    with torch.no_grad():
        logits = policy(input_ids=ids).logits[0, len(output.prompt_ids) - 1 : -1] / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(output.response_ids)[:, None]).squeeze(-1)


def test_hot_requests_reach_the_cpu_sampler_at_the_hot_temperature(
    cpu_server: Any, cpu_client: Any, policy: Any, qwen_tokenizer: Any
) -> None:
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True, "repetition_penalty": 1.0}
    batches_before = len(cpu_server.batch_sizes)
    outputs = _run_group(cpu_client, qwen_tokenizer, params, **{HOT_SAMPLES_KEY: 2, HOT_TEMPERATURE_KEY: 1.2})
    assert [o.extra_fields[TEMPERATURE_KEY] for o in outputs] == [1.2, 1.2, 1.0, 1.0]
    assert params["temperature"] == 1.0  # the group's shared dict is left as verl built it
    # Still one batch: per-request temperatures do not split a group.
    assert cpu_server.batch_sizes[batches_before:] == [GROUP]
    for output, sampled_at in zip(outputs, [1.2, 1.2, 1.0, 1.0]):
        returned = torch.tensor(output.response_logprobs)
        other = 1.0 if sampled_at == 1.2 else 1.2
        torch.testing.assert_close(returned, _log_probs_at(policy, output, sampled_at), atol=1e-4, rtol=0)
        assert (returned - _log_probs_at(policy, output, other)).abs().mean() > 1e-3


def test_without_curriculum_fields_every_request_keeps_the_rollout_temperature(
    cpu_server: Any, cpu_client: Any, policy: Any, qwen_tokenizer: Any
) -> None:
    params = {"temperature": 0.9, "top_p": 1.0, "top_k": -1, "logprobs": True}
    outputs = _run_group(cpu_client, qwen_tokenizer, params)
    assert [o.extra_fields[TEMPERATURE_KEY] for o in outputs] == [0.9] * GROUP
    for output in outputs:
        torch.testing.assert_close(
            torch.tensor(output.response_logprobs), _log_probs_at(policy, output, 0.9), atol=1e-4, rtol=0
        )


def test_on_the_cpu_rollout_each_request_names_its_stream_and_a_group_is_reproducible(
    cpu_server: Any, cpu_client: Any, qwen_tokenizer: Any
) -> None:
    from recipe.acpo.agent_loop import SAMPLE_STREAM_FIELD, request_stream

    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": False}
    fields = {SAMPLE_STREAM_FIELD: "train:3:0", "global_steps": 3}
    group = _run_group(cpu_client, qwen_tokenizer, params, {"name": "cpu"}, **fields)
    again = _run_group(cpu_client, qwen_tokenizer, params, {"name": "cpu"}, **fields)
    assert [o.response_ids for o in group] == [o.response_ids for o in again]
    assert len({tuple(o.response_ids) for o in group}) == GROUP  # one stream per session
    other_row = _run_group(
        cpu_client, qwen_tokenizer, params, {"name": "cpu"}, **{**fields, SAMPLE_STREAM_FIELD: "val:3:0"}
    )
    assert all(a.response_ids != b.response_ids for a, b in zip(group, other_row))
    # A request that carries its own seed keeps it: the whole group draws the same response.
    seeded = _run_group(cpu_client, qwen_tokenizer, {**params, "seed": 5}, {"name": "cpu"}, **fields)
    assert len({tuple(o.response_ids) for o in seeded}) == 1

    assert request_stream("train:3:1", 3, 2) == "train:3:1:2"
    assert request_stream(None, 3, 0) == "step:3:0"  # a batch that was not tagged: named by its step
    assert request_stream("train:3:1", 3, None) is None  # no session: the server names the stream


def test_on_the_cpu_rollout_a_group_of_a_named_burst_reaches_the_server_whole_with_its_own_streams(
    cpu_server: Any, cpu_client: Any, qwen_tokenizer: Any
) -> None:
    from recipe.acpo.agent_loop import SAMPLE_BURST_FIELD, SAMPLE_BURST_SIZE_FIELD, SAMPLE_STREAM_FIELD

    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True}
    fields = {SAMPLE_STREAM_FIELD: "train:4:0", "global_steps": 4}
    unnamed = _run_group(cpu_client, qwen_tokenizer, params, {"name": "cpu"}, **fields)
    batches_before = len(cpu_server.batch_sizes)
    burst = {SAMPLE_BURST_FIELD: "train:4:0", SAMPLE_BURST_SIZE_FIELD: GROUP}
    named = _run_group(cpu_client, qwen_tokenizer, params, {"name": "cpu"}, **fields, **burst)
    assert cpu_server.batch_sizes[batches_before:] == [GROUP]
    # The burst changes how requests are batched, not what each samples: its stream decides that.
    assert [o.response_ids for o in named] == [o.response_ids for o in unnamed]


def test_with_scoring_in_the_agent_loop_each_response_carries_the_acpo_reward(
    cpu_server: Any, cpu_client: Any, qwen_tokenizer: Any
) -> None:
    from recipe.acpo.reward import get_scorer

    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": False}
    truth = {"ground_truth": "5"}
    plain = _run_group(cpu_client, qwen_tokenizer, params, reward_model=truth)
    assert all(o.reward_score is None and "reward_extra_info" not in o.extra_fields for o in plain)

    reward = {"reward_kwargs": {"score_in_agent_loop": True}}
    scored = _run_group(cpu_client, qwen_tokenizer, params, reward=reward, reward_model=truth)
    scorer = get_scorer()
    for output in scored:
        expected = scorer.score(qwen_tokenizer.decode(output.response_ids, skip_special_tokens=True), "5")
        assert output.reward_score == expected.score
        assert output.extra_fields["reward_extra_info"] == expected.as_dict()
        assert output.metrics.compute_score > 0  # verl reports it as agent_loop/compute_score
    with pytest.raises(ValueError, match=r"no reward_model\.ground_truth \(reward_model=None\)"):
        _run_group(cpu_client, qwen_tokenizer, params, reward=reward)


# ------------------------------------------------------------------------------------------------ the mixin


class _CurriculumTrainer(CurriculumMixin, PPOTrainerSync):
    """verl's synchronous trainer with the curriculum, as ACPOTrainer inherits it (given the parsed ``acpo:`` block)."""

    def __init__(self, config: DictConfig) -> None:
        self.acpo_config = check_acpo_block(config)
        super().__init__(config)


class _ActorCheckpoints:
    """Stands in for the actor worker group (GPU side): writes and reads a marker file where verl says."""

    def __init__(self) -> None:
        self.loaded: list[str] = []

    def save_checkpoint(self, local_path: str, *args: Any, **kwargs: Any) -> None:
        Path(local_path).mkdir(parents=True, exist_ok=True)
        (Path(local_path) / "weights.txt").write_text("actor")

    def load_checkpoint(self, local_path: str, **kwargs: Any) -> None:
        assert (Path(local_path) / "weights.txt").read_text() == "actor"
        self.loaded.append(local_path)


@pytest.fixture(scope="module")
def curriculum_parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 prompts: ids 0-1 seeded hard (pass rate 0 and 0.25), 2 seeded easy (0.9), 3-7 without a pass rate."""
    rates: list[float | None] = [0.0, 0.25, 0.9, None, None, None, None, None]
    rows = [
        build_row(
            "arithmetic", f"What is {n} + {n}?", str(2 * n), index=str(n), split="train", extra_info={"pass_rate": r}
        )
        for n, r in enumerate(rates)
    ]
    return write_rows(rows, tmp_path_factory.mktemp("curriculum") / "train.parquet")


def _config(model: Path, data: Path, checkpoints: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(
            config_name="acpo_cpu",
            overrides=[
                f"actor_rollout_ref.model.path={model}",
                f"data.train_files={data}",
                f"data.val_files={data}",
                "data.train_batch_size=8",
                "data.shuffle=False",
                f"actor_rollout_ref.rollout.n={GROUP}",
                f"actor_rollout_ref.rollout.agent.default_agent_loop={AGENT_LOOP_NAME}",
                f"trainer.default_local_dir={checkpoints}",
                *overrides,
            ],
        )


def _trainer(config: DictConfig, tokenizer: Any) -> _CurriculumTrainer:
    trainer = _CurriculumTrainer(config)
    # What _init_tokenizer would load from the tiny model's folder: the same Qwen2.5 tokenizer, loaded once.
    trainer.tokenizer, trainer.processor = tokenizer, None
    trainer._init_dataloader()
    trainer.global_steps = 1
    trainer.actor_rollout_wg = _ActorCheckpoints()
    return trainer


def test_marking_seeds_from_the_data_and_attaches_tier_and_hot_sample_fields(
    tiny_model_dir: Path, curriculum_parquet: Path, tmp_path: Path, qwen_tokenizer: Any
) -> None:
    trainer = _trainer(_config(tiny_model_dir, curriculum_parquet, tmp_path), qwen_tokenizer)
    batch = trainer.mark_hard_prompts(trainer._next_train_batch())
    assert tu.get(batch, PROMPT_ID_KEY) == [f"arithmetic/{n}" for n in range(8)]
    assert tu.get(batch, HARD_KEY) == [True, True, False, False, False, False, False, False]
    assert tu.get(batch, HOT_SAMPLES_KEY) == [2, 2, 0, 0, 0, 0, 0, 0]  # ceil(0.5 * 4) for the hard prompts
    assert tu.get(batch, HOT_TEMPERATURE_KEY) == 1.2
    tracker = trainer.pass_rate_tracker
    assert len(tracker) == 3 and tracker.pass_rate("arithmetic/2") == 0.9 and "arithmetic/3" not in tracker
    # A later batch never overwrites an estimate with the data's seed.
    tracker.update(["arithmetic/0"] * GROUP, [1.0, 1.0, 1.0, 0.0])
    batch = trainer.mark_hard_prompts(trainer._next_train_batch())
    assert tracker.pass_rate("arithmetic/0") == pytest.approx(0.375)
    assert tu.get(batch, HARD_KEY)[:2] == [False, True]


def test_the_hard_fraction_and_hot_temperature_come_from_the_acpo_block(
    tiny_model_dir: Path, curriculum_parquet: Path, tmp_path: Path, qwen_tokenizer: Any
) -> None:
    config = _config(
        tiny_model_dir,
        curriculum_parquet,
        tmp_path,
        "acpo.curriculum.hard_fraction=0.3",
        "acpo.curriculum.hard_temperature=1.5",
        "acpo.curriculum.hard_pass_rate=0.1",
    )
    trainer = _trainer(config, qwen_tokenizer)
    batch = trainer.mark_hard_prompts(trainer._next_train_batch())
    assert tu.get(batch, HOT_SAMPLES_KEY)[:3] == [2, 0, 0]  # only pass rate 0 is <= 0.1; ceil(0.3 * 4) = 2
    assert tu.get(batch, HOT_TEMPERATURE_KEY) == 1.5


@pytest.mark.parametrize("override", ["acpo.stage=2", "acpo.curriculum.enable=false"])
def test_stage_two_or_a_disabled_curriculum_has_no_tiers_and_saves_no_state(
    tiny_model_dir: Path, curriculum_parquet: Path, tmp_path: Path, override: str, qwen_tokenizer: Any
) -> None:
    # Stage 2 runs verl's default agent loop: one temperature for every request.
    config = _config(
        tiny_model_dir,
        curriculum_parquet,
        tmp_path,
        override,
        "actor_rollout_ref.rollout.agent.default_agent_loop=single_turn_agent",
    )
    trainer = _trainer(config, qwen_tokenizer)
    assert trainer.curriculum_active is False
    trainer._save_checkpoint()
    assert (tmp_path / "global_step_1" / "actor" / "weights.txt").is_file()
    assert not (tmp_path / "global_step_1" / CURRICULUM_STATE_FILE).exists()


def test_stage_one_without_the_curriculum_agent_loop_is_rejected_naming_the_key(
    tiny_model_dir: Path, curriculum_parquet: Path, tmp_path: Path
) -> None:
    config = _config(
        tiny_model_dir,
        curriculum_parquet,
        tmp_path,
        "actor_rollout_ref.rollout.agent.default_agent_loop=single_turn_agent",
    )
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.rollout\.agent\.default_agent_loop=acpo_curriculum"):
        _CurriculumTrainer(config)


def _trajectories(
    batch_fields: dict[str, Sequence[Any]],
    scores: Sequence[float],
    temperatures: Sequence[float],
    response_lengths: Sequence[int],
    gaps: Sequence[float],
) -> tuple[Any, list[str]]:
    """Trajectories as verl's agent-loop worker stores them (``AgentLoopOutput.as_dict()`` + the prompt's fields),
    with the old log-probs and entropy the trainer adds; one prompt per GROUP consecutive rows."""
    rows, keys = [], []
    for row, (score, temperature, length, gap) in enumerate(zip(scores, temperatures, response_lengths, gaps)):
        prompt, session = divmod(row, GROUP)
        output = AgentLoopOutput(
            prompt_ids=[1, 2, 3],
            response_ids=list(range(10, 10 + length)),
            response_mask=[1] * length,
            response_logprobs=[-1.0] * length,
            reward_score=score,
            num_turns=2,
            metrics={},
            extra_fields={TEMPERATURE_KEY: temperature, "turn_scores": []},
        )
        field = output.as_dict()
        field.update({key: values[prompt] for key, values in batch_fields.items()}, session_id=session)
        field["old_log_probs"] = torch.full((length,), -1.0 - gap)
        field["entropy"] = torch.full((length,), 2.0 if batch_fields[HARD_KEY][prompt] else 1.0)
        rows.append(field)
        keys.append(f"uid{prompt}_{session}_0")
    return tu.list_of_dict_to_tensordict(rows), keys


def test_update_counts_hot_requests_and_folds_group_accuracy_into_the_tracker(
    tiny_model_dir: Path, curriculum_parquet: Path, tmp_path: Path, qwen_tokenizer: Any
) -> None:
    trainer = _trainer(_config(tiny_model_dir, curriculum_parquet, tmp_path), qwen_tokenizer)
    trainer.pass_rate_tracker.seed("p0", 0.0)
    fields = {
        PROMPT_ID_KEY: ["p0", "p1"],
        HARD_KEY: [True, False],
        HOT_SAMPLES_KEY: [2, 0],
        HOT_TEMPERATURE_KEY: [1.2] * 2,
    }
    data, keys = _trajectories(
        fields,
        scores=[1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0],
        temperatures=[1.2, 1.2, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        response_lengths=[4, 6, 8, 2, 3, 3, 3, 3],
        gaps=[0.05, 0.05, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    )
    metrics = trainer.update_curriculum_from_data(data, keys)
    assert metrics["acpo/curriculum/hot_requests"] == 2.0
    assert metrics["acpo/curriculum/hot_requests_planned"] == 2.0
    assert metrics["acpo/curriculum/hard_prompt_frac"] == 0.5
    assert metrics["acpo/curriculum/hard/acc"] == 0.25 and metrics["acpo/curriculum/normal/acc"] == 0.75
    assert (
        metrics["acpo/curriculum/hard/response_length"] == 5.0
        and metrics["acpo/curriculum/normal/response_length"] == 3.0
    )
    assert metrics["acpo/curriculum/hard/entropy"] == 2.0 and metrics["acpo/curriculum/normal/entropy"] == 1.0
    assert metrics["acpo/curriculum/logprob_gap/hot"] == pytest.approx(0.05)
    assert metrics["acpo/curriculum/logprob_gap/cold"] == pytest.approx(0.0, abs=1e-7)
    # EMA 0.5 from the seed 0 for p0; an unseen prompt takes its first accuracy.
    assert trainer.pass_rate_tracker.pass_rate("p0") == pytest.approx(0.125)
    assert trainer.pass_rate_tracker.pass_rate("p1") == pytest.approx(0.75)
    assert metrics["acpo/curriculum/tracked_prompts"] == 2.0


def test_update_rejects_trajectories_the_curriculum_agent_loop_did_not_generate(
    tiny_model_dir: Path, curriculum_parquet: Path, tmp_path: Path, qwen_tokenizer: Any
) -> None:
    trainer = _trainer(_config(tiny_model_dir, curriculum_parquet, tmp_path), qwen_tokenizer)
    fields = {PROMPT_ID_KEY: ["p0"], HARD_KEY: [True], HOT_SAMPLES_KEY: [2], HOT_TEMPERATURE_KEY: [1.2]}
    data, keys = _trajectories(fields, [0.0] * GROUP, [1.0] * GROUP, [2] * GROUP, [0.0] * GROUP)
    data.set("extra_fields", tu.list_of_dict_to_tensordict([{"x": {"turn_scores": []}}] * GROUP)["x"])
    with pytest.raises(RuntimeError, match=r"uid0_0_0 carries no 'acpo_temperature'.*default_agent_loop"):
        trainer.update_curriculum_from_data(data, keys)


def test_update_skips_verls_padding_samples(
    tiny_model_dir: Path, curriculum_parquet: Path, tmp_path: Path, qwen_tokenizer: Any
) -> None:
    trainer = _trainer(_config(tiny_model_dir, curriculum_parquet, tmp_path), qwen_tokenizer)
    metrics: dict[str, float] = {}
    padding_only = KVBatchMeta(keys=["pad_0_0", "pad_1_0"], tags=[{"is_padding": True}] * 2, partition_id="train")
    trainer.update_curriculum(padding_only, metrics)  # would need the TransferQueue if it read anything
    assert metrics == {} and len(trainer.pass_rate_tracker) == 0


def _state_of(tracker: PassRateTracker) -> dict[str, Any]:
    return json.loads(json.dumps(tracker.state_dict()))


@pytest.mark.parametrize("resume_mode", ["auto", "resume_path"])
def test_the_tracker_is_saved_with_every_checkpoint_and_restored_on_resume(
    tiny_model_dir: Path, curriculum_parquet: Path, tmp_path: Path, resume_mode: str, qwen_tokenizer: Any
) -> None:
    trainer = _trainer(_config(tiny_model_dir, curriculum_parquet, tmp_path), qwen_tokenizer)
    trainer.pass_rate_tracker.seed("arithmetic/0", 0.0)
    trainer.pass_rate_tracker.update(["arithmetic/0", "arithmetic/5", "arithmetic/5"], [1.0, 0.0, 1.0])
    trainer.global_steps = 3
    trainer._save_checkpoint()  # verl's own _save_checkpoint underneath
    saved = _state_of(trainer.pass_rate_tracker)
    state_file = tmp_path / "global_step_3" / CURRICULUM_STATE_FILE
    assert json.loads(state_file.read_text())["tracker"] == saved
    assert (tmp_path / "latest_checkpointed_iteration.txt").read_text() == "3"

    overrides = ["trainer.resume_mode=" + resume_mode]
    if resume_mode == "resume_path":
        overrides.append(f"trainer.resume_from_path={tmp_path / 'global_step_3'}")
    resumed = _trainer(_config(tiny_model_dir, curriculum_parquet, tmp_path, *overrides), qwen_tokenizer)
    assert len(resumed.pass_rate_tracker) == 0
    resumed._load_checkpoint()  # verl's own _load_checkpoint underneath
    assert resumed.global_steps == 3 and resumed.actor_rollout_wg.loaded == [str(tmp_path / "global_step_3" / "actor")]
    assert _state_of(resumed.pass_rate_tracker) == saved
    assert resumed.pass_rate_tracker.pass_rate("arithmetic/0") == 0.5
    # The restored estimate wins over the data's seed when the prompt comes round again.
    batch = resumed.mark_hard_prompts(resumed._next_train_batch())
    assert tu.get(batch, HARD_KEY)[0] is False


def test_resuming_a_checkpoint_without_curriculum_state_warns_and_starts_from_the_data(
    tiny_model_dir: Path,
    curriculum_parquet: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    qwen_tokenizer: Any,
) -> None:
    trainer = _trainer(_config(tiny_model_dir, curriculum_parquet, tmp_path), qwen_tokenizer)
    trainer.global_steps = 2
    trainer._save_checkpoint()
    (tmp_path / "global_step_2" / CURRICULUM_STATE_FILE).unlink()
    resumed = _trainer(
        _config(tiny_model_dir, curriculum_parquet, tmp_path, "trainer.resume_mode=auto"), qwen_tokenizer
    )
    with caplog.at_level(logging.WARNING, logger="recipe.acpo.curriculum"):
        resumed._load_checkpoint()
    assert resumed.global_steps == 2
    assert f"without {CURRICULUM_STATE_FILE}" in caplog.text
    assert len(resumed.pass_rate_tracker) == 0


def test_a_corrupt_curriculum_state_fails_naming_the_file(
    tiny_model_dir: Path, curriculum_parquet: Path, tmp_path: Path, qwen_tokenizer: Any
) -> None:
    trainer = _trainer(_config(tiny_model_dir, curriculum_parquet, tmp_path), qwen_tokenizer)
    trainer.global_steps = 2
    trainer._save_checkpoint()
    state_file = tmp_path / "global_step_2" / CURRICULUM_STATE_FILE
    state_file.write_text('{"tracker": {"version": 1, "pass_rates": {"p": 7.0}, "observations": {}}}')
    resumed = _trainer(
        _config(tiny_model_dir, curriculum_parquet, tmp_path, "trainer.resume_mode=auto"), qwen_tokenizer
    )
    with pytest.raises(ValueError, match=re.escape(str(state_file)) + ".*pass_rate for prompt 'p'"):
        resumed._load_checkpoint()


def test_prompt_ids_use_the_data_index_else_a_hash_of_the_messages() -> None:
    assert prompt_id("math_dapo", {"index": "abc"}, MESSAGES) == "math_dapo/abc"
    hashed = prompt_id("math_dapo", {"index": None}, MESSAGES)
    assert hashed.startswith("math_dapo/sha1:") and hashed == prompt_id("math_dapo", {}, list(MESSAGES))
    assert hashed != prompt_id("math_dapo", {}, [{"role": "user", "content": "other"}])


# ------------------------------------------------------------------------------------------ the pass-rate pre-pass


def test_row_numbers_and_pass_rates_round_trip_through_extra_info(curriculum_parquet: Path) -> None:
    table = pq.read_table(curriculum_parquet)
    numbered = add_row_numbers(table)
    assert [info[PASS_RATE_ROW_KEY] for info in numbered.column("extra_info").to_pylist()] == list(range(8))
    rates = [0.5, None, 1.0, 0.0, 0.25, None, 0.75, 0.125]
    written = write_pass_rates(numbered, rates)
    infos = written.column("extra_info").to_pylist()
    assert [info["pass_rate"] for info in infos] == rates  # the data's own pass rates are replaced
    assert all(PASS_RATE_ROW_KEY not in info for info in infos)
    assert [info["index"] for info in infos] == [str(n) for n in range(8)]
    assert written.drop(["extra_info"]).equals(table.drop(["extra_info"]))
    with pytest.raises(DataError, match=PASS_RATE_ROW_KEY):
        add_row_numbers(numbered)


def test_pass_rates_are_the_share_of_correct_samples_per_row() -> None:
    outcomes = [(0, 1.0), (0, 0.0), (2, 1.0), (2, 1.0), (0, 1.0), (0, 0.0)]
    dump = [{PASS_RATE_ROW_KEY: row, "score": score, "output": "..."} for row, score in outcomes]
    rates = pass_rates_from_dump(dump, num_rows=3)
    assert rates.rates == [0.5, None, 1.0] and rates.samples == [4, 0, 2]
    summary = rates.summary(k=4, hard_pass_rate=0.5)
    assert "without (no sample came back): 1" in summary and "fewer than k=4 samples: 1" in summary
    assert "rows at or below 0.5 (hard" in summary and ": 1 (50.0%)" in summary


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"score": 1.0}, "acpo_pass_rate_row=None"),
        ({PASS_RATE_ROW_KEY: 9, "score": 1.0}, "acpo_pass_rate_row=9 is not a row of the 3-row"),
    ],
)
def test_a_dump_record_without_a_valid_row_is_rejected(record: dict, message: str) -> None:
    with pytest.raises(GenerationsError, match=f"0.jsonl, sample 0: {re.escape(message)}"):
        pass_rates_from_dump([record], num_rows=3, where="0.jsonl")


def test_a_sample_is_correct_by_the_evaluations_rule_its_acc_else_its_score_in_0_1() -> None:
    dump = [
        {PASS_RATE_ROW_KEY: 0, "score": 0.0, "acc": True},
        {PASS_RATE_ROW_KEY: 0, "score": 1.0, "acc": 0.0},
        {PASS_RATE_ROW_KEY: 1, "score": 1.0},
    ]
    assert pass_rates_from_dump(dump, num_rows=2).rates == [0.5, 1.0]
    with pytest.raises(GenerationsError, match=r"sample 0 \(row 1\): accuracy -1.0 is not a number in \[0, 1\]"):
        pass_rates_from_dump([{PASS_RATE_ROW_KEY: 1, "score": -1.0}], num_rows=2)


def test_the_pre_pass_command_line_documents_itself_and_builds_verls_validation_run(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "recipe.acpo.pass_rate", "--help"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0
    for text in ("extra_info.pass_rate", "--k", "trainer.val_only=True", "validation_data_dir", "--config-name"):
        assert text in done.stdout
    command = validation_command(
        tmp_path / "d.parquet", "m", 8, 1.0, tmp_path / "g", tmp_path / "r", "acpo_cpu", ["data.val_batch_size=4"]
    )
    settings = (
        "trainer.val_only=True",
        "actor_rollout_ref.rollout.val_kwargs.n=8",
        f"data.val_files=['{tmp_path}/d.parquet']",
        # the run's reward manager, wrapped to dump each sample's row number
        "reward.reward_manager.name=TaggingRewardManager",
        "+acpo_validation.reward_manager.name='ACPORewardManager'",
        "+acpo_validation.tags=['extra_info.acpo_pass_rate_row']",
    )
    for setting in settings:
        assert setting in command
    # the caller's overrides come after the tool's settings; only what is composed from them (the wrapped reward
    # manager) comes later
    assert command.index("data.val_batch_size=4") > command.index("trainer.val_only=True")
    assert command.index("data.val_batch_size=4") < command.index("reward.reward_manager.name=TaggingRewardManager")
