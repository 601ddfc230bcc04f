"""The checks of an ``algorithm.adv_estimator=acpo`` run's settings (Ray-free): every error names the key to change."""

from __future__ import annotations

from typing import Any

import pytest
from omegaconf import OmegaConf

from acpo_core.config import ACPOConfig
from recipe.acpo.preflight import SetupError, check_acpo_block, check_acpo_trainer


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


def _check(config: Any) -> ACPOConfig:
    """What the entry point checks of the ACPO settings before Ray starts; the parsed ``acpo:`` block."""
    acpo_config = check_acpo_block(config)
    check_acpo_trainer(config, acpo_config)
    return acpo_config


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("algorithm.rollout_correction.bypass_mode", True, "bypass_mode"),
        ("critic.enable", True, "critic.enable"),
        ("actor_rollout_ref.model.use_fused_kernels", True, "use_fused_kernels"),
        ("acpo.advantage.alpha", -1.0, "acpo.advantage.alpha"),
        ("acpo.stage", 2, "actor_rollout_ref.model.path"),
    ],
)
def test_trainer_config_errors_name_the_key(key: str, value: Any, message: str) -> None:
    assert _check(_verl_config()).stage == 1
    with pytest.raises(SetupError, match=message):
        _check(_verl_config(**{key: value}))


def test_another_estimator_runs_verls_trainer_and_is_not_checked_for_acpo_settings() -> None:
    _check(_verl_config(**{"algorithm.adv_estimator": "grpo", "critic.enable": True}))


@pytest.mark.parametrize(
    "key",
    [
        "actor_rollout_ref.actor.ulysses_sequence_parallel_size",
        "actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size",
    ],
)
def test_packed_attribution_refuses_sequence_parallel_naming_the_key(key: str) -> None:
    with pytest.raises(SetupError, match=rf"{key}=2: packed attribution"):
        _check(_verl_config(**{key: 2}))
    # verl's own compute_log_prob (naive mode) splits sequences across the SP group: allowed.
    assert _check(_verl_config(**{key: 2, "acpo.attribution.mode": "naive"})).stage == 1


LOOKAHEAD = {"acpo.attribution.judge": "lookahead", "acpo.attribution.mode": "naive"}


def test_the_lookahead_judge_needs_an_fsdp_actor_without_sequence_parallelism() -> None:
    assert _check(_verl_config(**LOOKAHEAD, **{"actor_rollout_ref.actor.strategy": "fsdp2"})).attribution.judge == (
        "lookahead"
    )
    with pytest.raises(SetupError, match=r"actor_rollout_ref.actor.strategy=megatron: the look-ahead judge"):
        _check(_verl_config(**LOOKAHEAD, **{"actor_rollout_ref.actor.strategy": "megatron"}))
    key = "actor_rollout_ref.actor.ulysses_sequence_parallel_size"
    with pytest.raises(SetupError, match=rf"{key}=2: the look-ahead judge"):
        _check(_verl_config(**LOOKAHEAD, **{key: 2}))
