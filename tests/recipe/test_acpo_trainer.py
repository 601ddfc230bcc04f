"""ACPOTrainer's config validation (Ray-free): every error names the key to change."""

from __future__ import annotations

from typing import Any

import pytest
from omegaconf import OmegaConf

from recipe.acpo.acpo_trainer import attribution_token_budget, validate_acpo_trainer_config


def _verl_config(**overrides: Any) -> Any:
    config = OmegaConf.create(
        {
            "algorithm": {"adv_estimator": "acpo", "rollout_correction": {"bypass_mode": False}},
            "critic": {"enable": False},
            "actor_rollout_ref": {"model": {"path": "/nonexistent", "use_fused_kernels": False}},
            "acpo": {"stage": 1},
        }
    )
    for key, value in overrides.items():
        OmegaConf.update(config, key, value)
    return config


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("algorithm.adv_estimator", "grpo", "algorithm.adv_estimator=acpo"),
        ("algorithm.rollout_correction.bypass_mode", True, "bypass_mode"),
        ("critic.enable", True, "critic.enable"),
        ("actor_rollout_ref.model.use_fused_kernels", True, "use_fused_kernels"),
        ("acpo.advantage.alpha", -1.0, "acpo.advantage.alpha"),
        ("acpo.stage", 2, "actor_rollout_ref.model.path"),
    ],
)
def test_trainer_config_errors_name_the_key(key: str, value: Any, message: str) -> None:
    assert validate_acpo_trainer_config(_verl_config()).stage == 1
    with pytest.raises(ValueError, match=message):
        validate_acpo_trainer_config(_verl_config(**{key: value}))


@pytest.mark.parametrize(
    "key",
    [
        "actor_rollout_ref.actor.ulysses_sequence_parallel_size",
        "actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size",
    ],
)
def test_packed_attribution_refuses_sequence_parallel_naming_the_key(key: str) -> None:
    with pytest.raises(ValueError, match=rf"{key}=2: packed attribution"):
        validate_acpo_trainer_config(_verl_config(**{key: 2}))
    # verl's own compute_log_prob (naive mode) splits sequences across the SP group: allowed.
    assert validate_acpo_trainer_config(_verl_config(**{key: 2, "acpo.attribution.mode": "naive"})).stage == 1


def test_token_budget_defaults_to_the_log_prob_pass_when_its_dynamic_batch_size_is_on() -> None:
    config = _verl_config(
        **{
            "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz": False,
            "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu": 24576,
        }
    )
    assert attribution_token_budget(config, validate_acpo_trainer_config(config)) is None
    OmegaConf.update(config, "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz", True)
    assert attribution_token_budget(config, validate_acpo_trainer_config(config)) == 24576
    OmegaConf.update(config, "acpo.attribution.max_tokens_per_micro_batch", 8192)
    assert attribution_token_budget(config, validate_acpo_trainer_config(config)) == 8192
