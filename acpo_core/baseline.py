"""§1: the outcome baseline A_base (verl's GRPO), and the grouping of responses by prompt it rests on.

:func:`group_labels` is the one place where group labels (verl's ``uid``, a prompt id) become contiguous group
numbers; the advantage and the curriculum's pass-rate tracker both use it.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import torch

from acpo_core.checks import require_finite

__all__ = ["group_index", "group_labels", "grpo_outcome_advantage"]


def group_labels(group_ids: Sequence[Hashable] | np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The distinct labels of ``B`` group labels, sorted, and the group number of each label (``np.unique``).

    Labels are compared by value, as verl's dict of groups does; they must be mutually orderable (all strings or all
    numbers), which verl's uuid strings are.

    Returns:
        ``(unique, inverse)``: ``unique`` ``[G]`` the sorted labels, ``inverse`` ``[B]`` int64 with
        ``unique[inverse] == labels``.
    Raises:
        ValueError: not one label per response, or labels that cannot be ordered together.
    """
    labels = np.asarray(group_ids.cpu() if isinstance(group_ids, torch.Tensor) else group_ids)
    if labels.ndim != 1:
        raise ValueError(f"group ids must be one label per response, got an array of shape {labels.shape}")
    if labels.size == 0:
        return labels, np.zeros(0, dtype=np.int64)
    try:
        unique, inverse = np.unique(labels, return_inverse=True)
    except TypeError as err:
        raise ValueError(
            f"group ids must be mutually comparable (all strings or all numbers), got {labels.dtype} labels: {err}"
        ) from err
    return unique, inverse.reshape(-1).astype(np.int64)


def group_index(group_ids: Sequence[Hashable] | np.ndarray | torch.Tensor) -> tuple[np.ndarray, int]:
    """Map ``B`` group labels (verl's ``uid``) to contiguous group numbers, vectorised with ``np.unique``.

    Labels are compared by value, as verl's dict of groups does; they must be mutually orderable (all strings or all
    numbers), which verl's uuid strings are.

    Returns:
        ``(inverse, num_groups)``: ``inverse`` ``[B]`` int64 group number of each label.
    """
    unique, inverse = group_labels(group_ids)
    return inverse, len(unique)


def grpo_outcome_advantage(
    scores: torch.Tensor,
    group_ids: Sequence[Hashable] | np.ndarray | torch.Tensor,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
) -> torch.Tensor:
    """§1: A_base,j = (r_j - mean_g r) / (std_g r + eps), the numbers of verl's ``compute_grpo_outcome_advantage``.

    Vectorised over the batch (scatter sums per group) but following verl's arithmetic on CPU, where its driver
    computes advantages: the group mean is ``torch.mean`` (a float sum divided by the count) and the unbiased
    ``torch.std`` is a two-pass sum of squared deviations in float64 from that mean, rounded to the score dtype at
    the end; a singleton group has mean 0 and std 1. The result is identical bit for bit whenever every group's
    score sum is exact in the score dtype -- always the case for verifiable 0/1 rewards (§7) and any rewards on
    a binary grid (multiples of 1/2^m). For arbitrary float rewards torch's own summation order differs from a
    scatter sum and the mean can differ in its last bit.

    Args:
        scores: ``[B]`` floating outcome score of each response (verl: ``token_level_rewards.sum(-1)``).
        group_ids: ``B`` prompt uids; responses with the same uid form a group.
        epsilon: added to the group standard deviation.
        norm_adv_by_std_in_grpo: divide by the standard deviation (GRPO) or not (Dr.GRPO).

    Returns:
        ``[B]`` advantages in the dtype of ``scores``; 0 for every response of a zero-variance group.
    """
    if scores.dim() != 1 or not scores.dtype.is_floating_point:
        raise ValueError(f"scores must be a floating [B] tensor, got {scores.dtype} of shape {tuple(scores.shape)}")
    if len(group_ids) != scores.shape[0]:
        raise ValueError(f"scores has {scores.shape[0]} responses but {len(group_ids)} group ids were given")
    require_finite("scores", scores)
    inverse, num_groups = group_index(group_ids)
    if num_groups == 0:
        return scores.clone()
    device, dtype = scores.device, scores.dtype
    group = torch.as_tensor(inverse, dtype=torch.long, device=device)
    count = torch.bincount(group, minlength=num_groups)
    # Summing in float64 makes the sum exact (then rounded once), which is what torch.sum gives whenever it is exact.
    total = torch.zeros(num_groups, dtype=torch.float64, device=device).index_add_(0, group, scores.double())
    mean = total.to(dtype) / count.to(dtype)
    deviation = scores.double() - mean.double()[group]
    sq_sum = torch.zeros(num_groups, dtype=torch.float64, device=device).index_add_(0, group, deviation * deviation)
    std = (sq_sum / (count - 1).clamp(min=1).double()).sqrt().to(dtype)
    singleton = count == 1
    mean = torch.where(singleton, torch.zeros_like(mean), mean)
    std = torch.where(singleton, torch.ones_like(std), std)
    centred = scores - mean[group]
    if norm_adv_by_std_in_grpo:
        return centred / (std + epsilon)[group]
    return centred
