"""Responses grouped by prompt: :func:`group_labels` is the one place where group labels (verl's ``uid``, a prompt
id) become contiguous group numbers. The curriculum's pass-rate tracker (§6) uses it.

GRPO's outcome advantage over these groups (§1) is verl's own ``compute_grpo_outcome_advantage``, which the recipe
registers as the ``acpo`` estimator (``recipe.acpo.advantage_estimator``); acpo_core does not compute it.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import torch

__all__ = ["group_labels"]


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
