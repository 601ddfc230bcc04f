"""ACPOTrainer's config validation (Ray-free): every error names the key to change."""

from __future__ import annotations

from typing import Any

import pytest
from omegaconf import OmegaConf

from recipe.acpo.acpo_trainer import validate_acpo_trainer_config


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
