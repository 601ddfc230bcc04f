"""Agent-loop workers that build an agent loop once, not once per request, where the loop allows it.

verl 0.9.1's agent-loop worker builds a new agent loop object for every request it serves
(``AgentLoopWorker._run_agent_loop`` calls ``hydra.utils.instantiate`` with the worker's config, tokenizer, server
client, dataset class and tools). Hydra wraps those arguments in a config and merges it into the loop's (OmegaConf
node copies), and the new loop wires its tokenizer (a continuous-token builder): on the CPU testbed, 4-5 ms of a
worker's time per request, about 0.3 s of every step's generation for 128 requests, all of it before a request
reaches the generation server. verl's log also gets one "No model-specific Continuous Token builder" warning per
request, from that wiring.

An agent loop that keeps every request's state in its ``run`` call (locals and the returned output) can serve every
request of a worker. It says so with a class attribute of its own, ``reusable_across_requests = True`` (the recipe's
:class:`recipe.acpo.agent_loop.CurriculumAgentLoop` does; a subclass is not reused unless it declares it too, since
it may keep state of its own). :class:`ReusingAgentLoopWorker` then builds it once, with the same arguments verl
passes, on its first request. Agent loops without the attribute (verl's own, tool-calling loops that keep a
conversation's state on the object) are built per request by verl's code, unchanged.

Select it with ``actor_rollout_ref.rollout.agent.agent_loop_manager_class=recipe.acpo.agent_loop_worker.
ACPOAgentLoopManager`` (the CPU preset does): verl 0.9.1's entry points and :func:`recipe.acpo.main_acpo.
build_agent_loop_manager` create the manager named there, which starts these workers instead of verl's.
"""

from __future__ import annotations

from typing import Any

import hydra
import ray
import transfer_queue as tq
from verl.experimental.agent_loop.agent_loop import (
    AgentLoopBase,
    AgentLoopWorker,
    DictConfigWrap,
    ToolListWrap,
    _agent_loop_registry,
)
from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopManagerTQ, AgentLoopWorkerTQ
from verl.utils.rollout_trace import rollout_trace_attr

from recipe.acpo.gc_freeze import freeze_startup_objects

__all__ = ["REUSABLE_ATTRIBUTE", "TQ_WORKER_METHODS", "ACPOAgentLoopManager", "ReusingAgentLoopWorker", "is_reusable"]

# Class attribute by which an agent loop declares that one instance may serve many requests, concurrently.
REUSABLE_ATTRIBUTE = "reusable_across_requests"

# verl's TransferQueue worker: a Ray actor class, whose plain class Ray keeps as ``__ray_actor_class__``.
_TQ_WORKER = AgentLoopWorkerTQ.__ray_actor_class__
# The methods AgentLoopWorkerTQ adds to (or overrides in) the plain AgentLoopWorker, besides ``__init__``.
TQ_WORKER_METHODS = ("generate_sequences", "_run_prompt", "_agent_loop_postprocess")


def is_reusable(agent_loop_config: Any) -> bool:
    """Whether the agent loop a registry entry (``{"_target_": "pkg.Class", ...}``) builds is an ``AgentLoopBase``
    class that declares itself reusable in its own body.

    A target that is a factory function, or that does not import, is not reusable: verl's per-request path then
    builds it, or reports the error, as it would without this worker.
    """
    target = agent_loop_config.get("_target_") if hasattr(agent_loop_config, "get") else None
    if not isinstance(target, str):
        return False
    try:
        agent_loop_class = hydra.utils.get_class(target)
    except (ImportError, ValueError):
        return False
    return issubclass(agent_loop_class, AgentLoopBase) and vars(agent_loop_class).get(REUSABLE_ATTRIBUTE) is True


class ReusingAgentLoopWorker(AgentLoopWorker):
    """verl's TransferQueue agent-loop worker (``AgentLoopWorkerTQ``), serving reusable agent loops from one instance.

    ``AgentLoopWorkerTQ`` is declared as a Ray actor class, and Ray cannot start a subclass of one: the subclass
    travels to its process with a copy of the parent, whose zero-argument ``super()`` then fails. So this class
    subclasses the plain worker, as ``AgentLoopWorkerTQ`` does, and takes ``AgentLoopWorkerTQ``'s methods as they
    are (:data:`TQ_WORKER_METHODS`; a test checks that it lists everything ``AgentLoopWorkerTQ`` defines and that
    ``__init__`` below adds what ``AgentLoopWorkerTQ.__init__`` does).
    """

    generate_sequences = _TQ_WORKER.generate_sequences
    _run_prompt = _TQ_WORKER._run_prompt
    _agent_loop_postprocess = _TQ_WORKER._agent_loop_postprocess

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # What AgentLoopWorkerTQ.__init__ adds to the plain worker.
        tq.init()
        self.background_tasks: set = set()
        self.reused_agent_loops: dict[str, AgentLoopBase] = {}
        self._reusable: dict[str, bool] = {}
        freeze_startup_objects("agent-loop worker")

    async def _run_agent_loop(
        self,
        sampling_params: dict[str, Any],
        trajectory: dict[str, Any],
        *,
        agent_name: str,
        trace: bool = True,
        **kwargs: Any,
    ) -> Any:
        """verl's ``_run_agent_loop``, with the agent loop from :meth:`reused_agent_loop` where it is reusable."""
        if not self._is_reusable(agent_name):
            return await super()._run_agent_loop(
                sampling_params, trajectory, agent_name=agent_name, trace=trace, **kwargs
            )
        with rollout_trace_attr(
            step=trajectory["step"],
            sample_index=trajectory["sample_index"],
            rollout_n=trajectory["rollout_n"],
            validate=trajectory["validate"],
            name="agent_loop",
            trace=trace,
        ):
            output = await self.reused_agent_loop(agent_name).run(sampling_params, **kwargs)
            return await self._agent_loop_postprocess(output, trajectory["validate"], **kwargs)

    def _is_reusable(self, agent_name: str) -> bool:
        if agent_name not in self._reusable:
            # An unknown name goes to verl's path, which refuses it with the list of registered loops.
            config = _agent_loop_registry.get(agent_name)
            self._reusable[agent_name] = config is not None and is_reusable(config)
        return self._reusable[agent_name]

    def reused_agent_loop(self, agent_name: str) -> AgentLoopBase:
        """The worker's one instance of a reusable agent loop, built on first use with the arguments verl passes."""
        if agent_name not in self.reused_agent_loops:
            self.reused_agent_loops[agent_name] = hydra.utils.instantiate(
                config=_agent_loop_registry[agent_name],
                trainer_config=DictConfigWrap(config=self.config),
                server_manager=self.llm_client,
                tokenizer=self.tokenizer,
                processor=self.processor,
                hf_model_type=self.hf_model_type,
                dataset_cls=self.dataset_cls,
                data_config=DictConfigWrap(self.config.data),
                tools=ToolListWrap(self.tools),
            )
        return self.reused_agent_loops[agent_name]


class ACPOAgentLoopManager(AgentLoopManagerTQ):
    """verl's TransferQueue agent-loop manager, starting :class:`ReusingAgentLoopWorker` workers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # After super(): AgentLoopManagerTQ.__init__ sets its own worker class first. The workers start in ``create``
        # (``_init_agent_loop_workers``), after this.
        self.agent_loop_workers_class = ray.remote(ReusingAgentLoopWorker)
