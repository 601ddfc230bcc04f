"""The ``acpo`` advantage estimator: how a verl config selects ACPO (``algorithm.adv_estimator=acpo``).

The function registered under ``acpo`` computes GRPO's group-normalised outcome advantage, the A_base of §1, not
ACPO's advantage: a verl advantage estimator only sees ``token_level_rewards``, ``response_mask``, ``index`` (the
prompt uid) and the ``algorithm`` config section, not the entropies and step attributions the step credit needs. So
:func:`compute_grpo_base_advantage` is verl's own ``compute_grpo_outcome_advantage`` (honouring
``algorithm.norm_adv_by_std_in_grpo``, which verl's registry path does not forward), and the trainer's hook
(:meth:`recipe.acpo.acpo_trainer.ACPOTrainer._compute_advantage`) reads those advantages back as A_base and lays the
step credit of §4-5 on top of them in ``acpo_core.step.compute_acpo_step``.

Selecting ``acpo`` with verl's plain trainer would silently train GRPO; ``recipe.acpo.main_acpo.build_trainer``
always builds ``ACPOTrainer`` for this estimator (and only for it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from verl.trainer.ppo import core_algos

ACPO_ADV_ESTIMATOR = "acpo"

__all__ = ["ACPO_ADV_ESTIMATOR", "compute_grpo_base_advantage"]


# Registered as ``acpo`` so that the verl config selects ACPO; what it computes is GRPO's A_base (module docstring).
@core_algos.register_adv_est(ACPO_ADV_ESTIMATOR)
def compute_grpo_base_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    epsilon: float = 1e-6,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """§1: A_base,j = (r_j - mean_g r) / (std_g r + eps) on every valid token, by verl's GRPO function.

    GRPO's advantage, not ACPO's: ``ACPOTrainer._compute_advantage`` lays the step credit (§4-5) on top of it.

    Args:
        token_level_rewards: ``[B, T]`` rewards (verl puts the outcome score on the last valid token).
        response_mask: ``[B, T]`` 1 on valid response tokens.
        index: ``B`` prompt uids; responses with the same uid form a group.
        epsilon: added to the group standard deviation.
        config: the ``algorithm`` section; ``norm_adv_by_std_in_grpo`` (default true) selects GRPO or Dr.GRPO.
        **kwargs: other estimator inputs verl may pass (ignored).

    Returns:
        ``(advantages, returns)``, both ``[B, T]``: exactly verl's GRPO advantages for the same batch.
    """
    if index is None:
        raise ValueError("the acpo advantage estimator needs the prompt uids (index) to form GRPO groups")
    norm_adv_by_std_in_grpo = True if config is None else bool(config.get("norm_adv_by_std_in_grpo", True))
    return core_algos.compute_grpo_outcome_advantage(
        token_level_rewards=token_level_rewards,
        response_mask=response_mask,
        index=index,
        epsilon=epsilon,
        norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo,
        config=config,
    )
