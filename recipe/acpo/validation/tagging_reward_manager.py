"""The reward manager of the validation passes: the run's own reward manager, plus where each sample came from.

verl's validation dump (``trainer.validation_data_dir``) keeps each sample's score and reward extra info, but neither
its ``data_source`` nor the data row it answers. The validation pass (``recipe.acpo.validation.command``, shared by
``python -m recipe.acpo.evaluate`` and ``python -m recipe.acpo.pass_rate``) therefore configures this manager
(``reward.reward_manager.source=importlib``, ``module.path=pkg://recipe.acpo.validation.tagging_reward_manager``,
``name=TaggingRewardManager``), moves the run's own manager spec to ``acpo_validation.reward_manager`` and lists in
``acpo_validation.tags`` what to copy into each sample's ``reward_extra_info``:

- a field of the data row, e.g. ``data_source`` (the evaluation's benchmark);
- a field of the row's ``extra_info``, e.g. ``extra_info.acpo_pass_rate_row`` (the pre-pass's row number); it is
  dumped under its last name (``acpo_pass_rate_row``).

Scoring is left entirely to the inner manager (for the recipe: math-verify through ``recipe.acpo.reward_manager``,
§7). verl skips string-valued extra info when it computes validation metrics, so a tag like ``data_source`` leaves
them unchanged. verl calls ``assemble_rm_scores`` on the configured class, so this one keeps ``RewardManagerBase``'s
(the score on the last response token); no reward manager of verl 0.9.1 or of the recipe overrides it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from verl import DataProto
from verl.experimental.reward_loop.reward_manager.base import RawRewardFn, RewardManagerBase
from verl.trainer.ppo.reward import resolve_reward_manager_cls

from recipe.acpo.validation.command import INNER_MANAGER_KEY, TAGGING_MANAGER_NAME, TAGS_KEY

__all__ = ["TaggingRewardManager", "inner_manager_config", "read_tag", "tag_key"]


def inner_manager_config(config: DictConfig) -> DictConfig:
    """A copy of ``config`` whose ``reward.reward_manager`` is the run's own manager (``acpo_validation``)."""
    inner_spec = OmegaConf.select(config, INNER_MANAGER_KEY)
    if inner_spec is None:
        raise ValueError(
            f"{TAGGING_MANAGER_NAME} needs the wrapped manager under {INNER_MANAGER_KEY} "
            "(set by recipe.acpo.validation.command)"
        )
    inner = copy.deepcopy(config)
    OmegaConf.set_readonly(inner, False)
    with open_dict(inner):
        inner.reward.reward_manager = copy.deepcopy(inner_spec)
    return inner


def tag_key(tag: str) -> str:
    """The key a tag is dumped under: its last name (``extra_info.acpo_pass_rate_row`` -> ``acpo_pass_rate_row``)."""
    return tag.rpartition(".")[2]


def read_tag(data: DataProto, tag: str) -> Any:
    """The value of ``tag`` (``field`` or ``field.key``) for the sample ``data`` holds, as a plain Python value."""
    field, _, key = tag.partition(".")
    column = data.non_tensor_batch.get(field)
    if column is None:
        raise ValueError(f"{TAGGING_MANAGER_NAME}: a sample has no {field!r} field to tag it with {tag!r}")
    value = column[-1]
    if key:
        if not isinstance(value, Mapping) or key not in value:
            raise ValueError(f"{TAGGING_MANAGER_NAME}: a sample has no {tag} ({field}={value!r})")
        value = value[key]
    # numpy scalars (a parquet row's ints and strings) become Python ones, which verl's JSONL dump writes.
    return value.item() if hasattr(value, "item") else value


class TaggingRewardManager(RewardManagerBase):
    """Delegates every sample to the manager in ``acpo_validation.reward_manager``; adds ``acpo_validation.tags``."""

    def __init__(self, config: DictConfig, tokenizer: Any, compute_score: RawRewardFn = None, **kwargs: Any) -> None:
        super().__init__(config, tokenizer, compute_score)
        inner_config = inner_manager_config(config)
        inner_cls = resolve_reward_manager_cls(inner_config)
        if issubclass(inner_cls, TaggingRewardManager):
            raise ValueError(f"{INNER_MANAGER_KEY} names {TAGGING_MANAGER_NAME} itself")
        tags = OmegaConf.select(config, TAGS_KEY)
        if not tags:
            raise ValueError(f"{TAGGING_MANAGER_NAME} needs the fields to tag samples with under {TAGS_KEY}")
        self.tags = [str(tag) for tag in tags]
        self.inner = inner_cls(config=inner_config, tokenizer=tokenizer, compute_score=compute_score, **kwargs)

    async def run_single(self, data: DataProto) -> dict[str, Any]:
        result = await self.inner.run_single(data)
        extra_info = dict(result.get("reward_extra_info") or {})
        for tag in self.tags:
            extra_info[tag_key(tag)] = read_tag(data, tag)
        return {**result, "reward_extra_info": extra_info}
