"""The ``acpo`` reward manager for verl 0.9.1's reward loop (§7).

Importing this module registers :class:`ACPORewardManager` as ``acpo`` in verl's reward-loop registry
(``verl.experimental.reward_loop.reward_manager``), the one the V1 trainer resolves ``reward.reward_manager.name``
in. verl builds reward managers inside ``RewardLoopWorker`` Ray actors, fresh processes that have not imported the
recipe: make the registration visible there in one of two ways.

- ``reward.reward_manager.name=acpo`` with ``VERL_USE_EXTERNAL_MODULES=recipe.acpo.reward_manager`` in the
  environment of the driver and of every Ray worker (``ray_kwargs.ray_init.runtime_env.env_vars``); ``import verl``
  imports the modules it lists (comma-separated).
- Or let verl import the class itself: ``reward.reward_manager.source=importlib``,
  ``reward.reward_manager.module.path=pkg://recipe.acpo.reward_manager``,
  ``reward.reward_manager.name=ACPORewardManager``.

Settings come from ``reward.reward_kwargs`` (``verify_time_limit_s``, ``verify_workers``, ``verify_kill_grace_s``,
``verify_start_method``; see :class:`recipe.acpo.reward.VerifierSettings`). Each reward-loop worker (there are
``reward.num_workers`` of them) owns one pool of ``verify_workers`` verifier processes.

verl calls ``run_single`` once per sample and runs those calls concurrently (``RewardLoopWorker.compute_score_batch``
gathers them; the agent loop streams them); each call awaits its item in the shared pool, so a batch is verified in
parallel across the pool's processes. :meth:`ACPORewardManager.score_batch` does the same for a whole ``DataProto``.

With ``reward.reward_kwargs.score_in_agent_loop=true`` (the CPU preset's setting) the recipe's agent loop
(:class:`recipe.acpo.agent_loop.CurriculumAgentLoop`) scores each response itself with :func:`score_response`, the
same code as :meth:`ACPORewardManager.run_single`, and hands verl the result as ``AgentLoopOutput.reward_score``;
verl then skips its per-response call to a reward-loop worker (``AgentLoopWorker._compute_score``). On a small CPU
machine that call (a Ray round trip that pickles a ``DataProto`` for every response) costs more than the
verification; on a GPU cluster the reward-loop workers are verl's usual path, and the default.

Per-sample ``reward_extra_info`` is ``{"score", "acc", "no_answer", "timeout", "pred", "empty_ground_truth"}``.
verl 0.9.1 turns it into
validation metrics only (``val-aux/<data_source>/timeout/mean@<n>``, ``val-aux/<data_source>/no_answer/mean@<n>``,
``val-core/<data_source>/acc/mean@<n>``); the V1 trainer keeps training samples' extra info in TransferQueue
(``extra_fields[i]["reward_extra_info"]``) without logging it, and
:func:`recipe.acpo.reward.reward_fraction_metrics` turns it into the step metrics ``acpo/reward_timeout_frac``,
``acpo/reward_no_answer_frac`` and ``acpo/reward_empty_ground_truth_frac``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from verl import DataProto
from verl.experimental.reward_loop.reward_manager import register
from verl.experimental.reward_loop.reward_manager.base import RawRewardFn, RewardManagerBase

from recipe.acpo.reward import (
    SCORE_IN_AGENT_LOOP_KEY,
    MathAnswerScorer,
    RewardResult,
    VerifierSettings,
    compute_score,
    get_scorer,
)

logger = logging.getLogger(__name__)

__all__ = [
    "REWARD_MANAGER_NAME",
    "SCORE_IN_AGENT_LOOP_KEY",
    "ACPORewardManager",
    "agent_loop_scorer",
    "compute_score",
    "score_response",
    "scores_in_agent_loop",
]

REWARD_MANAGER_NAME = "acpo"


async def score_response(
    scorer: MathAnswerScorer, tokenizer: Any, response_ids: Sequence[int], reward_model: Any
) -> dict[str, Any]:
    """One response's reward as verl's reward loop returns it: ``{"reward_score", "reward_extra_info"}``.

    Args:
        scorer: the process's shared scorer (:func:`recipe.acpo.reward.get_scorer`).
        tokenizer: the policy's tokenizer; the response is decoded without special tokens.
        response_ids: the response's token ids, without padding.
        reward_model: the data row's ``reward_model`` field, ``{"ground_truth": ...}``.

    Raises:
        ValueError: the row has no ``reward_model.ground_truth`` (a data set error, not a bad response: a bad
            response scores 0 and never raises).
    """
    if not isinstance(reward_model, Mapping) or "ground_truth" not in reward_model:
        raise ValueError(
            f"acpo reward: sample has no reward_model.ground_truth (reward_model={reward_model!r}); "
            "every row of the data set needs reward_model: {ground_truth: ...}"
        )
    loop = asyncio.get_running_loop()
    # Off the event loop: a long response takes a while to decode, and the loop serves every other request.
    response_str = await loop.run_in_executor(None, lambda: tokenizer.decode(response_ids, skip_special_tokens=True))
    result: RewardResult = await asyncio.wrap_future(scorer.submit(response_str, reward_model["ground_truth"]))
    return {"reward_score": result.score, "reward_extra_info": result.as_dict()}


def scores_in_agent_loop(config: Any) -> bool:
    """Whether ``reward.reward_kwargs.score_in_agent_loop`` is set in the trainer's ``config`` (absent: false).

    Raises:
        ValueError: the key is set to something other than a boolean.
    """
    enabled = _reward_kwargs(config).get(SCORE_IN_AGENT_LOOP_KEY, False)
    if not isinstance(enabled, bool):
        raise ValueError(f"reward.reward_kwargs.{SCORE_IN_AGENT_LOOP_KEY}={enabled!r} must be true or false")
    return enabled


def agent_loop_scorer(config: Any) -> MathAnswerScorer | None:
    """The scorer the agent loop uses when :func:`scores_in_agent_loop`, else None.

    ``config`` is the trainer's config (verl hands it to every agent loop). The verifier settings are the reward
    manager's (``reward.reward_kwargs``), so both paths verify alike; the pool is this process's own and starts on
    the first response.
    """
    if not scores_in_agent_loop(config):
        return None
    return get_scorer(VerifierSettings.from_mapping(_reward_kwargs(config)))


def _reward_kwargs(config: Any) -> Mapping[str, Any]:
    return (config.get("reward", None) or {}).get("reward_kwargs", None) or {}


@register(REWARD_MANAGER_NAME)
class ACPORewardManager(RewardManagerBase):
    """Math-answer reward with math-verify in a process pool: 1.0 / 0.0, never failing on a bad response.

    It always scores with :mod:`recipe.acpo.reward`; the ``compute_score`` verl passes in (its default scorer, or
    ``reward.custom_reward_function``) is not used.
    """

    def __init__(
        self,
        config: Any,
        tokenizer: Any,
        compute_score: RawRewardFn = None,
        reward_router_address: str | None = None,
        reward_model_tokenizer: Any = None,
    ) -> None:
        super().__init__(config, tokenizer, compute_score)
        reward_config = config.get("reward", None) or {}
        custom_path = (reward_config.get("custom_reward_function", None) or {}).get("path", None)
        if custom_path and "recipe.acpo.reward" not in str(custom_path).replace("/", "."):
            logger.warning(
                "reward.custom_reward_function.path=%s is ignored: the acpo reward manager scores with "
                "recipe.acpo.reward",
                custom_path,
            )
        self.settings = VerifierSettings.from_mapping(reward_config.get("reward_kwargs", None))
        self.scorer: MathAnswerScorer = get_scorer(self.settings)

    async def run_single(self, data: DataProto) -> dict[str, Any]:
        """Score one sample (the last row of ``data``, as verl's managers do for multi-turn outputs)."""
        data_item = data[len(data) - 1]
        response_ids = data_item.batch["responses"]
        valid_length = int(data_item.batch["attention_mask"][-response_ids.shape[-1] :].sum())
        reward_model = data_item.non_tensor_batch.get("reward_model", None)
        return await score_response(self.scorer, self.tokenizer, response_ids[:valid_length], reward_model)

    async def score_batch(self, data: DataProto) -> list[dict[str, Any]]:
        """Score every row of ``data`` concurrently: ``[{"reward_score", "reward_extra_info"}, ...]`` in row order."""
        return list(await asyncio.gather(*(self.run_single(data[index : index + 1]) for index in range(len(data)))))
