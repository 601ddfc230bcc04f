"""acpo_core.packing (§3): the packed layout, worked out by hand."""

from __future__ import annotations

import torch

from acpo_core.attribution import AttributionBatch
from acpo_core.packing import build_packed_inputs


def test_packed_layout_hand_worked():
    # Row 0: q = [11, 12], o = [21, 22, 23], c = (0, 2, 3), Y = [31, 32].
    # Row 1: q = [13], o = [24], c = (0, 1), Y = [33]. Its context is shifted to end at the same column (5).
    prompt_ids = torch.tensor([[0, 11, 12], [0, 0, 13]])
    prompt_mask = torch.tensor([[0, 1, 1], [0, 0, 1]])
    response_ids = torch.tensor([[21, 22, 23], [24, 0, 0]])
    response_mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    boundaries = torch.tensor([[0, 2, 3], [0, 1, -1]])
    num_steps = torch.tensor([2, 1])
    answer_ids = torch.tensor([[31, 32], [33, 0]])
    answer_mask = torch.tensor([[1, 1], [1, 0]])
    packed = build_packed_inputs(
        AttributionBatch(
            prompt_ids, prompt_mask, response_ids, response_mask, boundaries, num_steps, answer_ids, answer_mask
        ),
        99,
    )
    #                 |  q  |    o     | Y(0)  | Y(1)  | Y(2)  |
    assert packed.input_ids.tolist() == [
        [11, 12, 21, 22, 23, 31, 32, 31, 32, 31, 32],
        [99, 99, 99, 13, 24, 33, 33, 99, 99, 99, 99],
    ]
    # Copy i continues from |q| + c_i: row 0 copies at 2 + 0, 2 + 2, 2 + 3; row 1 copies at 1 + 0, 1 + 1.
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 2, 3, 4, 5, 5, 6], [0, 0, 0, 0, 1, 1, 2, 0, 0, 0, 0]]
    attends = [[row.nonzero().flatten().tolist() for row in packed.attention_mask[b, 0]] for b in range(2)]
    assert attends[0] == [
        [0],
        [0, 1],
        [0, 1, 2],
        [0, 1, 2, 3],
        [0, 1, 2, 3, 4],
        [0, 1, 5],  # Y(0): q only
        [0, 1, 5, 6],
        [0, 1, 2, 3, 7],  # Y(1): q, o_1, o_2
        [0, 1, 2, 3, 7, 8],
        [0, 1, 2, 3, 4, 9],  # Y(2): q and the whole response
        [0, 1, 2, 3, 4, 9, 10],
    ]
    assert attends[1] == [[0], [1], [2], [3], [3, 4], [3, 5], [3, 4, 6], [7], [8], [9], [10]]
    # Y_1 of copy i is predicted by the last visible context token, Y_j (j > 0) by copy token j - 1.
    assert packed.predictor_columns[0].tolist() == [[1, 5], [3, 7], [4, 9]]
    assert packed.predictor_columns[1, :2, 0].tolist() == [3, 4]
    assert packed.target_mask.tolist() == [
        [[True, True], [True, True], [True, True]],
        [[True, False], [True, False], [False, False]],
    ]
    assert packed.logit_columns.tolist() == [1, 3, 4, 5, 7, 9]
    assert packed.num_real_tokens == (2 + 3 + 3 * 2) + (1 + 1 + 2 * 1)
