"""The slip and blame marks of the testbed: where a response first goes wrong, and which step the credit blames most.

These are the one definition of both that the report, the oracle judge, ``benchmarks/bench_credit.py``,
``benchmarks/bench_learning.py`` and README use:

- the **slip step** of a wrong response is the step holding the first token of its first wrong equation;
- the **most blamed** step is the one with the most negative attributed advantage A_attr,i (docs/algorithm.md §4),
  none when no step's A_attr is negative; a **blame hit** is a most-blamed step that is the slip step. (The lowest-C
  step, argmin_i C_i, is a different figure, always named "lowest C".)

The testbed's step checker (``recipe.acpo.testbed.step_check.check_steps``) finds the first wrong equation of a response
as character offsets; these functions turn it into token indices of the response, so it can be matched with ACPO's steps
(the step holding the equation's first token is the slip step).
"""

from __future__ import annotations

import bisect
import itertools
import logging
import statistics
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from recipe.acpo.testbed.demonstrations import is_hasty_line
from recipe.acpo.testbed.step_check import check_steps

__all__ = [
    "TESTBED_DATA_SOURCES",
    "annotate_first_wrong",
    "credit_hit_rates",
    "first_wrong_mark",
    "first_wrong_token_span",
    "first_wrong_tokens",
    "line_kind_advantages",
    "most_blamed_step",
]

logger = logging.getLogger(__name__)

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


def most_blamed_step(attributed: Sequence[float]) -> int | None:
    """The step with the most negative A_attr,i (the first on a tie); None when no step's A_attr is negative."""
    if not attributed:
        return None
    worst = min(range(len(attributed)), key=attributed.__getitem__)
    return worst if attributed[worst] < 0 else None


def _step_starts(record: dict[str, Any]) -> list[int]:
    """The first token of every step of a dumped response: its ``boundaries`` c_0..c_{K-1}, else the steps' starts."""
    if "boundaries" in record:
        return list(record["boundaries"][:-1]) or [0]
    return [int(step["start"]) for step in record["steps"]] or [0]


def first_wrong_mark(record: dict[str, Any], checker: StepChecker = check_steps) -> dict[str, Any] | None:
    """The first wrong equation of one dumped response (``recipe.acpo.step_dump``) as token and step indices, or None
    when it has none.

    Returns ``{"text", "token_start", "token_end" (exclusive), "step", "most_blamed_step", "blame_hit"}``: ``step`` is
    the slip step, ``most_blamed_step`` as :func:`most_blamed_step` over the steps' ``a_attr`` (0 where missing).
    """
    span = first_wrong_token_span(record["tokens"], checker)
    if span is None:
        return None
    token_start, token_end, text = span
    step = max(bisect.bisect_right(_step_starts(record), token_start) - 1, 0)
    step = min(step, len(record["steps"]) - 1)
    most_blamed = most_blamed_step([s.get("a_attr", 0.0) for s in record["steps"]])
    return {
        "text": text,
        "token_start": token_start,
        "token_end": token_end,
        "step": step,
        "most_blamed_step": most_blamed,
        "blame_hit": most_blamed == step,
    }


def annotate_first_wrong(records: list[dict[str, Any]], checker: StepChecker = check_steps) -> int:
    """Add ``first_wrong`` (:func:`first_wrong_mark`) to every testbed record with a wrong equation; return how many.

    A checker failure on one response is logged and leaves that response unmarked.
    """
    marked = 0
    for record in records:
        if record.get("data_source") not in TESTBED_DATA_SOURCES:
            continue
        try:
            mark = first_wrong_mark(record, checker)
        except Exception:  # the checker reads model output: one odd response must not stop the report
            logger.exception("step checker failed on uid=%s step=%s", record.get("uid"), record.get("global_step"))
            continue
        if mark is not None:
            record["first_wrong"] = mark
            marked += 1
    return marked


def credit_hit_rates(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Over the wrong responses of dumped records (``recipe.acpo.step_dump``) with a slip step: how often the lowest-C
    step (``hit_rate``) and the most blamed step (``most_blamed_hit_rate``) are the slip step, against chance (the
    mean of 1/K); the mean A_attr on the slip step; and the share of right responses reached through a wrong equation
    (outcome reward credits their slip too)."""
    hits = blame_hits = total = 0
    chance = 0.0
    a_attr_on_slip: list[float] = []
    correct = correct_with_slip = 0
    for record in records:
        steps = record.get("steps") or []
        if record.get("correct"):
            correct += 1
            correct_with_slip += check_steps("".join(record.get("tokens") or [])).first_wrong is not None
            continue
        if len(steps) < 1:
            continue
        mark = first_wrong_mark(record)
        if mark is None:
            continue
        k = mark["step"]
        contributions = [step["C"] for step in steps]
        lowest = min(range(len(steps)), key=lambda i: contributions[i])
        hits += int(lowest == k)
        blame_hits += int(mark["blame_hit"])
        total += 1
        chance += 1.0 / len(steps)
        if steps[k].get("a_attr") is not None:
            a_attr_on_slip.append(float(steps[k]["a_attr"]))
    return {
        "responses": total,
        "hit_rate": hits / total if total else float("nan"),
        "most_blamed_hit_rate": blame_hits / total if total else float("nan"),
        "chance": chance / total if total else float("nan"),
        "a_attr_on_slip_mean": statistics.fmean(a_attr_on_slip) if a_attr_on_slip else float("nan"),
        "a_attr_on_slip_negative_frac": (
            sum(v < 0 for v in a_attr_on_slip) / len(a_attr_on_slip) if a_attr_on_slip else float("nan")
        ),
        "correct_responses": correct,
        "correct_with_wrong_step_frac": correct_with_slip / correct if correct else float("nan"),
    }


def line_kind_advantages(records: Iterable[dict[str, Any]], alpha: float = 0.5) -> dict[str, dict[str, float]]:
    """The mean advantage per token on hasty and on careful steps of dumped records (``recipe.acpo.step_dump``): ACPO's
    A_final,i and, for the same tokens, GRPO's A_base. What RL has to learn on the testbed is to write careful lines
    rather than hasty ones; ``a_final`` hasty minus careful is how hard a run's advantages push toward that, and
    ``a_base`` the same under outcome credit alone.

    A step is hasty when its text holds a hasty line (:func:`recipe.acpo.testbed.demonstrations.is_hasty_line`),
    careful when it holds an equation and no hasty line; the answer line and responses of zero-variance groups
    (A_base = 0: no signal) are left out. ``a_final_w1`` is the counterfactual with §4's entropy weights flattened
    (w = 1): from the same dumped s_i, A_final,i = A_base + alpha (|A_base| s_i - the response's token mean of it),
    the default redistribution (§4.1), 0 for a one-step response. Returns per kind ``a_final``, ``a_final_w1``,
    ``a_base`` (NaN without such tokens) and ``tokens``.
    """
    sums = {kind: [0.0, 0.0, 0.0, 0] for kind in ("hasty", "careful")}
    for record in records:
        a_base = float(record.get("a_base") or 0.0)
        tokens = record.get("tokens") or []
        steps = record.get("steps") or []
        if a_base == 0.0 or not steps:
            continue
        lengths = [step["end"] - step["start"] for step in steps]
        flat = [abs(a_base) * float(step["s"]) for step in steps]
        centre = sum(n * a for n, a in zip(lengths, flat)) / max(sum(lengths), 1)
        flat = [alpha * (a - centre) if len(steps) > 1 else 0.0 for a in flat]
        for step, n, attr in zip(steps, lengths, flat):
            lines = "".join(tokens[step["start"] : step["end"]]).splitlines()
            if any(is_hasty_line(line) for line in lines):
                kind = "hasty"
            elif any("=" in line for line in lines):
                kind = "careful"
            else:
                continue
            sums[kind][0] += n * float(step["a_final"])
            sums[kind][1] += n * (a_base + attr)
            sums[kind][2] += n * a_base
            sums[kind][3] += n
    return {
        kind: {
            "a_final": a_final / n if n else float("nan"),
            "a_final_w1": a_final_w1 / n if n else float("nan"),
            "a_base": a_base / n if n else float("nan"),
            "tokens": n,
        }
        for kind, (a_final, a_final_w1, a_base, n) in sums.items()
    }
