"""acpo_core.micro_batches: token-budgeted micro-batches, the dense mask's S^2 term, equal counts across ranks."""

from __future__ import annotations

import pytest
import torch

from acpo_core.micro_batches import micro_batch_cost, plan_micro_batches


def test_costs_hand_worked() -> None:
    # flex: the sum, padded to whole blocks; sdpa: n * S + n * S^2 / hidden.
    assert micro_batch_cost([100, 60], "flex", hidden_size=64, block_size=128) == 256
    assert micro_batch_cost([100, 60], "sdpa", hidden_size=64, block_size=128) == 2 * 100 + (2 * 100 * 100) // 64
    assert micro_batch_cost([], "flex", hidden_size=64, block_size=128) == 0


def test_plan_respects_the_budget_and_the_row_cap_longest_first() -> None:
    lengths = torch.tensor([100, 400, 300, 50, 250])
    plan = plan_micro_batches(lengths, max_rows=8, token_budget=512, attention="flex", hidden_size=64)
    assert [g.tolist() for g in plan] == [[1], [2], [4, 0, 3]]
    for group in plan:
        cost = micro_batch_cost(lengths[group].tolist(), "flex", 64, 128)
        assert cost <= 512 or len(group) == 1
    capped = plan_micro_batches(lengths, max_rows=2, token_budget=None, attention="flex", hidden_size=64)
    assert [g.tolist() for g in capped] == [[1, 2], [4, 0], [3]]


def test_the_dense_path_pays_for_its_square_mask() -> None:
    lengths = torch.full((8,), 1000)
    flex = plan_micro_batches(lengths, max_rows=8, token_budget=8192, attention="flex", hidden_size=1024)
    sdpa = plan_micro_batches(lengths, max_rows=8, token_budget=8192, attention="sdpa", hidden_size=1024)
    assert len(flex) == 1 and len(sdpa) == 2  # sdpa: 4 rows cost 4 * 1000 + 4 * 1000^2 / 1024 = 7906 tokens


def test_min_count_splits_the_largest_micro_batches_and_refuses_too_few_rows() -> None:
    lengths = torch.tensor([10, 10, 10, 10])
    plan = plan_micro_batches(lengths, max_rows=8, token_budget=None, attention="flex", hidden_size=64, min_count=3)
    assert len(plan) == 3 and sorted(torch.cat(plan).tolist()) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="same number of responses"):
        plan_micro_batches(lengths, max_rows=8, token_budget=None, attention="flex", hidden_size=64, min_count=5)
