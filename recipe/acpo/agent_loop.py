"""§6, Stage 1: a single-turn agent loop that samples part of a hard prompt's group at a higher temperature.

verl 0.9.1's V1 trainer hands every field of the submitted batch to the agent loop of each request
(``AgentLoopWorkerTQ._run_prompt`` -> ``_run_agent_loop(..., session_id=i, **prompt)`` -> ``run(sampling_params,
**kwargs)``), and the inference server builds its sampling parameters per request (vLLM: ``SamplingParams(**params)``
in ``vLLMHttpServer.generate``; the recipe's CPU rollout likewise). So the trainer decides, per prompt, how many of
its ``rollout.n`` requests run hot (:class:`recipe.acpo.curriculum.CurriculumMixin` attaches the fields below before
the batch is submitted), and this loop only applies that decision:

- ``acpo_hot_samples`` (int, per prompt): requests with ``session_id < acpo_hot_samples`` are sampled at
  ``acpo_hot_temperature``; the others keep the rollout's own sampling parameters untouched;
- ``acpo_hot_temperature`` (float): the hot temperature (``acpo.curriculum.hard_temperature``).

A batch without these fields (validation, Stage 2, a trainer without the curriculum) samples exactly like verl's
``single_turn_agent``. On the CPU rollout every request also names its random stream (``sampling_params
["sample_stream"]``, :func:`request_stream`; :mod:`recipe.acpo.seeding` explains seeded rollouts), unless its sampling
parameters already carry a ``seed``, and, where the trainer named the request's burst (one CPU server:
``acpo_sample_burst``, ``acpo_sample_burst_size``), the burst the server decodes it with (``sample_burst``,
``sample_burst_size``). Every output records the temperature its request was sampled at in
``extra_fields["acpo_temperature"]``, which the trainer reads back to count hot requests.

With ``reward.reward_kwargs.score_in_agent_loop=true`` the loop also scores its response with the acpo reward
(:func:`recipe.acpo.reward_manager.score_response`) and returns it as ``AgentLoopOutput.reward_score``, with the
manager's ``reward_extra_info``; verl then skips its reward-loop call for that response (the CPU preset's setting:
:mod:`recipe.acpo.reward_manager` says why).

Select it with ``actor_rollout_ref.rollout.agent.default_agent_loop=acpo_curriculum`` and make it known to verl's
agent-loop workers (separate Ray processes) with
``actor_rollout_ref.rollout.agent.agent_loop_config_path=recipe/acpo/config/agent_loops.yaml``.
"""

from __future__ import annotations

import time
from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopOutput, register
from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop

from recipe.acpo.reward_manager import agent_loop_scorer, score_response
from verl_cpu.generation import SAMPLE_BURST_KEY, SAMPLE_BURST_SIZE_KEY, SAMPLE_STREAM_KEY
from verl_cpu.rollout import ROLLOUT_NAME as CPU_ROLLOUT_NAME

__all__ = [
    "AGENT_LOOP_NAME",
    "HOT_SAMPLES_KEY",
    "HOT_TEMPERATURE_KEY",
    "SAMPLE_BURST_FIELD",
    "SAMPLE_BURST_SIZE_FIELD",
    "SAMPLE_STREAM_FIELD",
    "TEMPERATURE_KEY",
    "CurriculumAgentLoop",
    "request_stream",
    "request_temperature",
]

AGENT_LOOP_NAME = "acpo_curriculum"
# Per-prompt fields the trainer attaches to the batch it submits for rollout.
HOT_SAMPLES_KEY = "acpo_hot_samples"
HOT_TEMPERATURE_KEY = "acpo_hot_temperature"
# Key under AgentLoopOutput.extra_fields (stored with each trajectory) holding the temperature actually requested.
TEMPERATURE_KEY = "acpo_temperature"
# Per-prompt field of the batch submitted for rollout: the random-stream name of the prompt's row
# (recipe.acpo.seeding.SampleStreamTagger).
SAMPLE_STREAM_FIELD = "acpo_sample_stream"
# Per-prompt fields of the batch submitted for rollout: the burst the row's requests belong to and how many requests
# that burst sends the (only) CPU server (recipe.acpo.seeding.SampleStreamTagger).
SAMPLE_BURST_FIELD = "acpo_sample_burst"
SAMPLE_BURST_SIZE_FIELD = "acpo_sample_burst_size"


def request_stream(row_stream: Any, global_steps: Any, session_id: Any) -> str | None:
    """The random-stream name of one request: its row's stream and its session (rank in the group of n).

    None without a session: the CPU server then names the stream itself, in arrival order. A row without a tagged
    stream (a batch that did not go through ``recipe.acpo.seeding.seed_rollouts``) is named by its step.
    """
    if session_id is None:
        return None
    prefix = row_stream if row_stream is not None else f"step:{global_steps}"
    return f"{prefix}:{int(session_id)}"


def request_temperature(
    base_temperature: float, session_id: int | None, hot_samples: int, hot_temperature: float | None
) -> float:
    """The temperature of one request: hot for the first ``hot_samples`` requests of the group (§6).

    Args:
        base_temperature: the rollout temperature verl put in the request's sampling parameters.
        session_id: the request's position in its group, 0..n-1 (verl's V1 ``session_id``); may be None only when
            no request of the prompt runs hot.
        hot_samples: how many requests of the group run hot (0 for a normal prompt).
        hot_temperature: the hot temperature; required when ``hot_samples > 0``.

    Returns:
        ``hot_temperature`` when ``session_id < hot_samples``, else ``base_temperature``.
    """
    if hot_samples <= 0:
        return base_temperature
    if session_id is None:
        raise ValueError(
            f"{HOT_SAMPLES_KEY}={hot_samples} needs the request's position in its group (session_id), which verl "
            "passes only on the V1 (TransferQueue) rollout path: set trainer.use_v1=True"
        )
    if hot_temperature is None or not hot_temperature > 0:
        raise ValueError(
            f"{HOT_SAMPLES_KEY}={hot_samples} needs a positive {HOT_TEMPERATURE_KEY}, got {hot_temperature!r}"
        )
    return float(hot_temperature) if session_id < hot_samples else base_temperature


@register(AGENT_LOOP_NAME)
class CurriculumAgentLoop(SingleTurnAgentLoop):
    """verl's single-turn loop with a per-request temperature chosen by :func:`request_temperature`, and optionally
    the response's reward."""

    # One instance may serve every request of a worker (recipe.acpo.agent_loop_worker): run() keeps a request's state
    # in its locals and its output, and what __init__ builds (config, tokenizer wiring, scorer) is the same for all.
    reusable_across_requests = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scorer = agent_loop_scorer(self.config)

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        base_temperature = float(sampling_params["temperature"])
        session_id = kwargs.get("session_id")
        temperature = request_temperature(
            base_temperature,
            session_id=None if session_id is None else int(session_id),
            hot_samples=int(kwargs.get(HOT_SAMPLES_KEY) or 0),
            hot_temperature=kwargs.get(HOT_TEMPERATURE_KEY),
        )
        # The dict is shared by every request of the group: copy it rather than change the siblings' temperature.
        request_params = dict(sampling_params, temperature=temperature)
        # Only the CPU server knows the stream and burst keys (vLLM and SGLang refuse unknown sampling parameters).
        if getattr(self.rollout_config, "name", None) == CPU_ROLLOUT_NAME:
            stream = request_stream(kwargs.get(SAMPLE_STREAM_FIELD), kwargs.get("global_steps"), session_id)
            if stream is not None and request_params.get("seed") is None:
                request_params[SAMPLE_STREAM_KEY] = stream
            if kwargs.get(SAMPLE_BURST_FIELD) is not None:
                request_params[SAMPLE_BURST_KEY] = str(kwargs[SAMPLE_BURST_FIELD])
                request_params[SAMPLE_BURST_SIZE_KEY] = int(kwargs[SAMPLE_BURST_SIZE_FIELD])
        output = await super().run(request_params, **kwargs)
        output.extra_fields[TEMPERATURE_KEY] = temperature
        if self.scorer is not None:
            started = time.perf_counter()
            reward = await score_response(self.scorer, self.tokenizer, output.response_ids, kwargs.get("reward_model"))
            output.reward_score = reward["reward_score"]
            output.extra_fields["reward_extra_info"] = reward["reward_extra_info"]
            output.metrics.compute_score = time.perf_counter() - started
        return output
