"""The CPU preset's agent-loop workers: a reusable agent loop is built once per worker, others per request as verl does.

The worker runs here in-process against the CPU rollout server (no Ray, no TransferQueue): its TransferQueue write
(``_agent_loop_postprocess``, verl's code) is replaced by a list that collects the outputs. Under Ray, with
TransferQueue, every CPU-preset run goes through these workers (the testbed end-to-end tests).
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopWorkerTQ

from recipe.acpo.agent_loop import AGENT_LOOP_NAME, SAMPLE_STREAM_FIELD, CurriculumAgentLoop
from recipe.acpo.agent_loop_worker import TQ_WORKER_METHODS, ACPOAgentLoopManager, ReusingAgentLoopWorker, is_reusable

CONFIG_DIR = Path(__file__).resolve().parents[2] / "recipe" / "acpo" / "config"
MESSAGES = [{"role": "user", "content": "What is 2 + 3? Answer: "}]
GROUP = 6


def test_the_worker_carries_every_method_verls_transfer_queue_worker_adds() -> None:
    tq_worker = AgentLoopWorkerTQ.__ray_actor_class__
    added = {name for name, value in vars(tq_worker).items() if inspect.isfunction(value) and name != "__init__"}
    assert added == set(TQ_WORKER_METHODS)
    for name in TQ_WORKER_METHODS:
        assert getattr(ReusingAgentLoopWorker, name) is getattr(tq_worker, name)
    assert "_run_agent_loop" in vars(ReusingAgentLoopWorker)


def test_only_agent_loops_that_declare_it_are_reusable() -> None:
    assert is_reusable(_agent_loop_registry[AGENT_LOOP_NAME])
    assert not is_reusable(_agent_loop_registry["single_turn_agent"])  # verl's, built per request
    assert not is_reusable({"name": "no_target"})
    assert not is_reusable({"_target_": "recipe.acpo.agent_loop_worker.ReusingAgentLoopWorker"})  # not an agent loop


def test_the_cpu_preset_selects_the_manager_and_the_manager_starts_these_workers() -> None:
    preset = OmegaConf.load(CONFIG_DIR / "acpo_cpu.yaml")
    fqn = preset.actor_rollout_ref.rollout.agent.agent_loop_manager_class
    assert fqn == f"{ACPOAgentLoopManager.__module__}.{ACPOAgentLoopManager.__name__}"
    # __init__ only records its arguments; the workers start later, in create().
    manager = ACPOAgentLoopManager(config=_trainer_config(), llm_client=None)
    assert manager.agent_loop_workers_class.__ray_actor_class__ is ReusingAgentLoopWorker


@pytest.fixture(scope="module")
def cpu_server(tiny_model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM
    from verl.workers.config import HFModelConfig, RolloutConfig

    from verl_cpu.rollout import CPURolloutServer

    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    rollout = RolloutConfig(name="cpu", tensor_model_parallel_size=1, prompt_length=64, response_length=8)
    return CPURolloutServer(rollout, HFModelConfig(path=str(tiny_model_dir)), model=policy)


def _trainer_config() -> Any:
    rollout = {"name": "cpu", "prompt_length": 64, "response_length": 8}
    return OmegaConf.create({"actor_rollout_ref": {"rollout": rollout, "model": {}}, "data": {}, "reward": {}})


def _worker(client: Any, qwen_tokenizer: Any) -> tuple[ReusingAgentLoopWorker, list[Any]]:
    """A worker with the state ``AgentLoopWorker.__init__`` gives it (which needs Ray and TransferQueue), and the list
    its TransferQueue writes go to."""
    worker = ReusingAgentLoopWorker.__new__(ReusingAgentLoopWorker)
    worker.config = _trainer_config()
    worker.llm_client = client
    worker.tokenizer, worker.processor, worker.hf_model_type = qwen_tokenizer, None, "qwen2"
    worker.dataset_cls, worker.tools = None, []
    worker.reused_agent_loops, worker._reusable = {}, {}
    written: list[Any] = []

    async def collect(output: Any, validate: bool, **kwargs: Any) -> None:
        written.append((kwargs["session_id"], output))

    worker._agent_loop_postprocess = collect
    return worker, written


def _serve_groups(worker: ReusingAgentLoopWorker, agent_name: str, groups: int) -> None:
    """One prompt's GROUP requests through the worker, concurrently, ``groups`` times one after the other, in one event
    loop as in a worker's life (the outputs go to its TransferQueue writes)."""
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": False}

    async def serve_group() -> None:
        await asyncio.gather(
            *(
                worker._run_agent_loop(
                    params,
                    {"step": 3, "sample_index": 0, "rollout_n": session, "validate": False},
                    agent_name=agent_name,
                    trace=False,
                    raw_prompt=MESSAGES,
                    session_id=session,
                    global_steps=3,
                    **{SAMPLE_STREAM_FIELD: "train:3:0"},
                )
                for session in range(GROUP)
            )
        )

    async def serve() -> None:
        for _ in range(groups):
            await serve_group()

    asyncio.run(serve())


class _PerRequestAgentLoop(CurriculumAgentLoop):
    """The recipe's loop without the declaration, counting how often it is built."""

    reusable_across_requests = False
    built = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        type(self).built += 1


class _CountedAgentLoop(CurriculumAgentLoop):
    built = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        type(self).built += 1


@pytest.fixture
def registered_loops() -> Any:
    names = {"test_reused": _CountedAgentLoop, "test_per_request": _PerRequestAgentLoop}
    for name, loop in names.items():
        loop.built = 0
        _agent_loop_registry[name] = {"_target_": f"{__name__}.{loop.__name__}"}
    yield names
    for name in names:
        del _agent_loop_registry[name]


def test_a_reusable_loop_is_built_once_and_answers_a_concurrent_group_as_loops_built_per_request_do(
    cpu_server: Any, server_client: Any, qwen_tokenizer: Any, registered_loops: dict
) -> None:
    reusing, reused_writes = _worker(server_client(cpu_server), qwen_tokenizer)
    _serve_groups(reusing, "test_reused", groups=2)
    assert _CountedAgentLoop.built == 1
    assert list(reusing.reused_agent_loops) == ["test_reused"]

    per_request, per_request_writes = _worker(server_client(cpu_server), qwen_tokenizer)
    _serve_groups(per_request, "test_per_request", groups=1)
    assert _PerRequestAgentLoop.built == GROUP  # verl's path: one loop per request
    assert per_request.reused_agent_loops == {}

    # Every request was written once, and the same request gives the same response either way (seeded streams).
    assert sorted(session for session, _ in reused_writes) == sorted(list(range(GROUP)) * 2)
    responses = {session: output.response_ids for session, output in per_request_writes}
    assert len(responses) == GROUP and len({tuple(r) for r in responses.values()}) > 1
    for session, output in reused_writes:
        assert output.response_ids == responses[session]
        assert output.prompt_ids == per_request_writes[0][1].prompt_ids
