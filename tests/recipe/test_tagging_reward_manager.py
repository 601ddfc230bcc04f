"""recipe.acpo.validation.tagging_reward_manager: the validation passes' reward manager (the run's own plus tags)."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf
from verl import DataProto

from recipe.acpo.validation.command import TAGGING_MANAGER_NAME, tagging_reward_manager_overrides
from recipe.acpo.validation.tagging_reward_manager import inner_manager_config, read_tag, tag_key


def _sample(**non_tensors: object) -> DataProto:
    return DataProto.from_dict(
        non_tensors={name: np.array([value], dtype=object) for name, value in non_tensors.items()}
    )


def test_tagging_manager_config_puts_the_runs_own_manager_back_in_place() -> None:
    config = OmegaConf.create(
        {
            "reward": {"reward_manager": {"source": "importlib", "name": TAGGING_MANAGER_NAME}},
            "acpo_validation": {"reward_manager": {"source": "register", "name": "naive"}, "tags": ["data_source"]},
        }
    )
    inner = inner_manager_config(config)
    assert OmegaConf.to_container(inner.reward.reward_manager) == {"source": "register", "name": "naive"}
    assert config.reward.reward_manager.name == TAGGING_MANAGER_NAME  # the original is left alone
    with pytest.raises(ValueError, match=r"needs the wrapped manager under acpo_validation\.reward_manager"):
        inner_manager_config(OmegaConf.create({"reward": {"reward_manager": {"name": "x"}}}))


def test_tags_read_a_row_field_or_a_field_of_extra_info_as_plain_values() -> None:
    sample = _sample(data_source=np.str_("aime"), extra_info={"acpo_pass_rate_row": np.int64(7), "index": 3})
    assert read_tag(sample, "data_source") == "aime" and type(read_tag(sample, "data_source")) is str
    row = read_tag(sample, "extra_info.acpo_pass_rate_row")
    assert row == 7 and type(row) is int
    assert tag_key("extra_info.acpo_pass_rate_row") == "acpo_pass_rate_row" and tag_key("data_source") == "data_source"
    with pytest.raises(ValueError, match=r"no 'uid' field"):
        read_tag(sample, "uid")
    with pytest.raises(ValueError, match=r"no extra_info\.missing \(extra_info="):
        read_tag(sample, "extra_info.missing")


def test_overrides_move_the_runs_manager_aside_and_refuse_to_wrap_twice() -> None:
    config = OmegaConf.create(
        {"reward": {"reward_manager": {"source": "importlib", "name": "M", "module": {"path": "pkg://x.y"}}}}
    )
    overrides = tagging_reward_manager_overrides(config, tags=["data_source", "extra_info.row"])
    assert "+acpo_validation.reward_manager.name='M'" in overrides
    assert "+acpo_validation.reward_manager.module.path='pkg://x.y'" in overrides
    assert "+acpo_validation.tags=['data_source','extra_info.row']" in overrides
    assert f"reward.reward_manager.name={TAGGING_MANAGER_NAME}" in overrides
    wrapped = OmegaConf.create({"reward": {"reward_manager": {"name": TAGGING_MANAGER_NAME}}})
    with pytest.raises(RuntimeError, match="already is the validation pass's TaggingRewardManager"):
        tagging_reward_manager_overrides(wrapped, tags=["data_source"])
