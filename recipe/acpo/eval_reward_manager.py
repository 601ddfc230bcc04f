"""The reward manager of ``python -m recipe.acpo.evaluate``: the run's own reward manager, plus the sample's benchmark.

verl's validation dump (``trainer.validation_data_dir``) keeps each sample's score and reward extra info but not its
``data_source``, so a dump of several benchmarks cannot be split per benchmark. The evaluation tool therefore
configures this manager (``reward.reward_manager.source=importlib``,
``module.path=pkg://recipe.acpo.eval_reward_manager``, ``name=DataSourceTaggingRewardManager``) and moves the run's
own manager spec to the top-level config block ``acpo_eval.reward_manager``. Scoring is left entirely to that inner
manager (for the recipe: math-verify through ``recipe.acpo.reward_manager``); this one only adds ``data_source`` to
each sample's ``reward_extra_info``. verl skips string-valued extra info when it computes validation metrics, so the
metrics are unchanged.

verl calls ``assemble_rm_scores`` on the configured class, so this one keeps ``RewardManagerBase``'s (the score on
the last response token); no reward manager of verl 0.9.1 or of the recipe overrides it.
"""

from __future__ import annotations

import copy
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from verl import DataProto
from verl.experimental.reward_loop.reward_manager.base import RawRewardFn, RewardManagerBase
from verl.trainer.ppo.reward import resolve_reward_manager_cls

INNER_MANAGER_KEY = "acpo_eval.reward_manager"
DATA_SOURCE_FIELD = "data_source"


def inner_manager_config(config: DictConfig) -> DictConfig:
    """A copy of ``config`` whose ``reward.reward_manager`` is the run's own manager (``acpo_eval.reward_manager``)."""
    inner_spec = OmegaConf.select(config, INNER_MANAGER_KEY)
    if inner_spec is None:
        raise ValueError(
            f"DataSourceTaggingRewardManager needs the wrapped manager under {INNER_MANAGER_KEY} "
            "(set by python -m recipe.acpo.evaluate)"
        )
    inner = copy.deepcopy(config)
    OmegaConf.set_readonly(inner, False)
    with open_dict(inner):
        inner.reward.reward_manager = copy.deepcopy(inner_spec)
    return inner


class DataSourceTaggingRewardManager(RewardManagerBase):
    """Delegates every sample to the manager named in ``acpo_eval.reward_manager``; adds its ``data_source``."""

    def __init__(self, config: DictConfig, tokenizer: Any, compute_score: RawRewardFn = None, **kwargs: Any) -> None:
        super().__init__(config, tokenizer, compute_score)
        inner_config = inner_manager_config(config)
        inner_cls = resolve_reward_manager_cls(inner_config)
        if issubclass(inner_cls, DataSourceTaggingRewardManager):
            raise ValueError(f"{INNER_MANAGER_KEY} names DataSourceTaggingRewardManager itself")
        self.inner = inner_cls(config=inner_config, tokenizer=tokenizer, compute_score=compute_score, **kwargs)

    async def run_single(self, data: DataProto) -> dict[str, Any]:
        result = await self.inner.run_single(data)
        data_source = data.non_tensor_batch[DATA_SOURCE_FIELD][-1]
        extra_info = dict(result.get("reward_extra_info") or {})
        extra_info[DATA_SOURCE_FIELD] = str(data_source)
        return {**result, "reward_extra_info": extra_info}
