"""acpo_core.checks: the shared input checks name the offending rows."""

from __future__ import annotations

import pytest
import torch

from acpo_core.checks import describe_rows, fail_rows, mask_lengths, require_finite, require_integer


def test_describe_rows_lists_at_most_eight_rows() -> None:
    assert describe_rows(torch.tensor([False, True, False])) == "row 1"
    many = torch.ones(11, dtype=torch.bool)
    assert describe_rows(many) == "rows 0, 1, 2, 3, 4, 5, 6, 7 (and 3 more)"


def test_fail_rows_reduces_per_row_and_passes_clean_or_empty_batches() -> None:
    with pytest.raises(ValueError, match=r"^bad: rows 0, 2$"):
        fail_rows(torch.tensor([[True, False], [False, False], [False, True]]), "bad")
    fail_rows(torch.zeros(3, 4, dtype=torch.bool), "never")
    fail_rows(torch.zeros(0, 4, dtype=torch.bool), "never")


@pytest.mark.parametrize(
    ("mask", "side", "lengths"),
    [([[0, 1, 1], [1, 1, 1], [0, 0, 0]], "left", [2, 3, 0]), ([[1, 1, 0], [1, 0, 0]], "right", [2, 1])],
)
def test_mask_lengths_counts_a_suffix_or_prefix(mask: list, side: str, lengths: list) -> None:
    assert mask_lengths(torch.tensor(mask), "m", side).tolist() == lengths


def test_mask_lengths_rejects_holes_and_non_binary_values_naming_the_row() -> None:
    with pytest.raises(ValueError, match=r"m is not a prefix of ones \(must be right-padded\): row 1"):
        mask_lengths(torch.tensor([[1, 0], [0, 1]]), "m", "right")
    with pytest.raises(ValueError, match=r"m must hold only 0 and 1: row 0"):
        mask_lengths(torch.tensor([[2, 0], [1, 0]]), "m", "right")


def test_require_integer_and_finite() -> None:
    require_integer("ids", torch.tensor([1]))
    for bad in (torch.tensor([1.0]), torch.tensor([True])):
        with pytest.raises(ValueError, match="ids must be an integer tensor"):
            require_integer("ids", bad)
    values = torch.tensor([[0.0, float("nan")], [float("inf"), 1.0]])
    with pytest.raises(ValueError, match=r"x is NaN or infinite on a token: row 1$"):
        require_finite("x", values, torch.tensor([[True, False], [True, True]]), "on a token")
