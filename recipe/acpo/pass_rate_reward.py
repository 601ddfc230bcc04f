"""The reward manager of the pass-rate pre-pass (``python -m recipe.acpo.pass_rate``).

verl's validation dump does not say which data row a generation came from. The pre-pass numbers the rows in
``extra_info.acpo_pass_rate_row`` of a working copy of the data, and this manager, the recipe's math reward
(:class:`recipe.acpo.reward_manager.ACPORewardManager`, §7) otherwise unchanged, copies that number into each
sample's ``reward_extra_info``, which verl writes next to the score in ``trainer.validation_data_dir``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from verl import DataProto

from data_prep.pass_rate import ROW_KEY
from recipe.acpo.reward_manager import ACPORewardManager

__all__ = ["PassRateRewardManager"]


class PassRateRewardManager(ACPORewardManager):
    """The recipe's reward, with the data row number of each sample in its reward information."""

    async def run_single(self, data: DataProto) -> dict[str, Any]:
        result = await super().run_single(data)
        extra_info = data[len(data) - 1].non_tensor_batch.get("extra_info", None)
        if not isinstance(extra_info, Mapping) or ROW_KEY not in extra_info:
            raise ValueError(f"pass-rate pre-pass: a sample has no extra_info.{ROW_KEY} (extra_info={extra_info!r})")
        result["reward_extra_info"][ROW_KEY] = int(extra_info[ROW_KEY])
        return result
