"""acpo_core.groups: group labels (verl's uid, a prompt id) as contiguous group numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from acpo_core.groups import group_labels


def test_group_labels_map_labels_by_value() -> None:
    unique, inverse = group_labels(np.array([7, 3, 7, 9]))
    assert unique.tolist() == [3, 7, 9] and inverse.tolist() == [1, 0, 1, 2]
    unique, inverse = group_labels(["x", "y", "x"])
    assert len(unique) == 2 and inverse[0] == inverse[2] != inverse[1]
    unique, inverse = group_labels(torch.tensor([2, 2, 5]))
    assert unique.tolist() == [2, 5] and inverse.tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="mutually comparable"):
        group_labels(np.array(["a", 1], dtype=object))
