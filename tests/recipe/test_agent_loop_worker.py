"""The CPU preset's agent-loop workers: a reusable agent loop is built once per worker, others per request as verl does.

The worker runs here in-process against the CPU rollout server (no Ray, no TransferQueue): its TransferQueue write
(``_agent_loop_postprocess``, verl's code) is replaced by a list that collects the outputs. Under Ray, with
TransferQueue, every CPU-preset run goes through these workers (the testbed end-to-end tests).
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import textwrap
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


def test_the_worker_carries_everything_verls_transfer_queue_worker_adds() -> None:
    tq_worker = AgentLoopWorkerTQ.__ray_actor_class__
    defined = {name for name in vars(tq_worker) if not (name.startswith("__") and name.endswith("__"))}
    assert defined == set(TQ_WORKER_METHODS)  # functions only: no new method, property or class attribute
    for name in TQ_WORKER_METHODS:
        assert getattr(ReusingAgentLoopWorker, name) is getattr(tq_worker, name)
    assert "_run_agent_loop" in vars(ReusingAgentLoopWorker)
    # AgentLoopWorkerTQ.__init__ is super().__init__(...), tq.init() and an empty set of background tasks, which
    # ReusingAgentLoopWorker.__init__ repeats.
    statements = ast.parse(textwrap.dedent(inspect.getsource(tq_worker.__init__))).body[0].body
    assert [ast.unparse(statement) for statement in statements] == [
        "super().__init__(*args, **kwargs)",
        "tq.init()",
        "self.background_tasks = set()",
    ]


def _not_an_agent_loop() -> None:
    return None


class _UndeclaredSubclass(CurriculumAgentLoop):
    """A subclass of a reusable loop that does not declare itself: it may keep state of its own."""


def test_only_agent_loop_classes_that_declare_it_themselves_are_reusable() -> None:
    assert is_reusable(_agent_loop_registry[AGENT_LOOP_NAME])
    assert not is_reusable(_agent_loop_registry["single_turn_agent"])  # verl's, built per request
    assert not is_reusable({"_target_": f"{__name__}._UndeclaredSubclass"})
    assert not is_reusable({"name": "no_target"})
    assert not is_reusable({"_target_": "recipe.acpo.agent_loop_worker.ReusingAgentLoopWorker"})  # not an agent loop
    assert not is_reusable({"_target_": f"{__name__}._not_an_agent_loop"})  # a factory function: verl builds it
    assert not is_reusable({"_target_": "recipe.acpo.no_such_module.Loop"})  # verl's path reports the import error


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
        written.append((kwargs["session_id"], validate, output))

    worker._agent_loop_postprocess = collect
    return worker, written


def _serve_groups(worker: ReusingAgentLoopWorker, agent_name: str, validate: list[bool]) -> None:
    """One prompt's GROUP requests through the worker, concurrently, once per entry of ``validate`` (a training or a
    validation pass), one after the other, in one event loop as in a worker's life (the outputs go to its
    TransferQueue writes)."""
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": False}

    async def serve_group(validation: bool) -> None:
        await asyncio.gather(
            *(
                worker._run_agent_loop(
                    params,
                    {"step": 3, "sample_index": 0, "rollout_n": session, "validate": validation},
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
        for validation in validate:
            await serve_group(validation)

    asyncio.run(serve())


class _CountedAgentLoop(CurriculumAgentLoop):
    """The recipe's loop, declared reusable in its own body, counting how often it is built."""

    reusable_across_requests = True
    built = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        type(self).built += 1


class _PerRequestAgentLoop(_CountedAgentLoop):
    """The same loop declared not reusable, with a count of its own."""

    reusable_across_requests = False
    built = 0


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
    _serve_groups(reusing, "test_reused", validate=[False, True])
    assert _CountedAgentLoop.built == 1
    assert list(reusing.reused_agent_loops) == ["test_reused"]

    per_request, per_request_writes = _worker(server_client(cpu_server), qwen_tokenizer)
    _serve_groups(per_request, "test_per_request", validate=[False])
    assert _PerRequestAgentLoop.built == GROUP  # verl's path: one loop per request
    assert per_request.reused_agent_loops == {}

    # Every request was written once, for its own pass, and the same request gives the same response either way
    # (seeded streams: the stream names the row, not the pass, in this test).
    assert sorted((session, validate) for session, validate, _ in reused_writes) == sorted(
        [(session, validate) for session in range(GROUP) for validate in (False, True)]
    )
    responses = {session: output.response_ids for session, _, output in per_request_writes}
    assert len(responses) == GROUP and len({tuple(r) for r in responses.values()}) > 1
    for session, _, output in reused_writes:
        assert output.response_ids == responses[session]
        assert output.prompt_ids == per_request_writes[0][2].prompt_ids


def test_an_unknown_agent_loop_is_refused_by_verls_path_with_the_registered_names(
    cpu_server: Any, server_client: Any, qwen_tokenizer: Any
) -> None:
    worker, written = _worker(server_client(cpu_server), qwen_tokenizer)
    with pytest.raises(AssertionError, match="Agent loop no_such_loop not registered"):
        _serve_groups(worker, "no_such_loop", validate=[False])
    assert written == [] and worker.reused_agent_loops == {}
