"""Where a testbed response first goes wrong, in tokens: the label the credit benchmark, the oracle judge and the
report compare step credit with.

The testbed's step checker (``recipe.acpo.testbed.step_check.check_steps``) finds the first wrong equation of a response
as character offsets; these functions turn it into token indices of the response, so it can be matched with ACPO's steps
(the step holding the equation's first token is the slip step).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch

from recipe.acpo.testbed.step_check import check_steps

__all__ = ["TESTBED_DATA_SOURCES", "first_wrong_token_span", "first_wrong_tokens"]

# data_source values of the arithmetic testbed, whose responses the step checker can read.
TESTBED_DATA_SOURCES = frozenset({"arithmetic_steps"})

StepChecker = Callable[[str], Any]


def _token_of_char(token_starts: Sequence[int], char: int) -> int:
    """Index of the token holding character ``char`` (``token_starts``: each token's first character)."""
    return max(bisect.bisect_right(token_starts, char) - 1, 0)


def first_wrong_token_span(tokens: Sequence[str], checker: StepChecker = check_steps) -> tuple[int, int, str] | None:
    """The first wrong equation of the response ``"".join(tokens)``: (first token, end token exclusive, its text).

    None when the response has no wrong equation or none the checker can read (an unparsable response is wrong with
    no step identified).
    """
    response = "".join(tokens)
    check = checker(response)
    if not check.parsed or check.first_wrong is None:
        return None
    equation = check.equations[check.first_wrong]
    token_starts = [0, *itertools.accumulate(len(t) for t in tokens)][:-1] if tokens else [0]
    token_start = _token_of_char(token_starts, int(equation.start))
    token_end = _token_of_char(token_starts, max(int(equation.end) - 1, int(equation.start))) + 1
    return token_start, token_end, str(equation.text)


def first_wrong_tokens(
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    token_texts: Sequence[str],
    data_sources: Sequence[str],
) -> torch.Tensor:
    """[B] long: the first token of each response's first wrong equation, -1 where there is none.

    Args:
        response_ids: [B, T] right-padded.
        response_mask: [B, T] 0/1.
        token_texts: the text of every token id (``recipe.acpo.step_dump.token_text_table``); ids beyond it are "".
        data_sources: each row's ``data_source``.
    Raises:
        ValueError: a row whose data source the step checker cannot read (naming it): labels exist only on the testbed.
    """
    unknown = sorted({str(source) for source in data_sources} - TESTBED_DATA_SOURCES)
    if unknown:
        raise ValueError(
            f"first wrong steps are labelled only on the testbed (data_source in {sorted(TESTBED_DATA_SOURCES)}); "
            f"this batch has data_source {unknown}"
        )
    lengths = (response_mask != 0).sum(dim=1).tolist()
    vocab = len(token_texts)
    first = torch.full((response_ids.shape[0],), -1, dtype=torch.long)
    for row, length in enumerate(lengths):
        tokens = [token_texts[i] if 0 <= i < vocab else "" for i in response_ids[row, :length].tolist()]
        span = first_wrong_token_span(tokens)
        if span is not None:
            first[row] = span[0]
    return first
