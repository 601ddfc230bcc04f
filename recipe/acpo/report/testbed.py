"""Marks, on the arithmetic testbed, the first wrong equation of each dumped response (the testbed's step checker).

The checker is ``recipe.acpo.testbed.step_check.check_steps`` (the arithmetic testbed); it is imported lazily, so the
report works, without the marks, in an installation that lacks it. The mark says which tokens hold the first wrong
equation, which step they fall in, and whether that step is the one the attribution blamed most: the question "does ACPO
blame the wrong step?" read off one response.
"""

from __future__ import annotations

import bisect
import logging
from typing import Any

from recipe.acpo.testbed.slips import TESTBED_DATA_SOURCES, StepChecker, first_wrong_token_span

__all__ = ["TESTBED_DATA_SOURCES", "annotate_first_wrong", "first_wrong_mark", "load_step_checker"]

logger = logging.getLogger(__name__)


def load_step_checker() -> StepChecker | None:
    """``recipe.acpo.testbed.step_check.check_steps``, or None when this installation has no testbed checker."""
    try:
        from recipe.acpo.testbed.step_check import check_steps
    except ImportError:
        return None
    return check_steps


def first_wrong_mark(record: dict[str, Any], check_steps: StepChecker) -> dict[str, Any] | None:
    """The first wrong equation of one dumped response as token and step indices, or None when there is none.

    Returns ``{"text", "token_start", "token_end" (exclusive), "step", "most_blamed_step", "blame_hit"}``;
    ``most_blamed_step`` is the step with the most negative attributed advantage (None when no step has one).
    """
    span = first_wrong_token_span(record["tokens"], check_steps)
    if span is None:
        return None
    token_start, token_end, text = span
    boundaries: list[int] = record["boundaries"]
    step = max(bisect.bisect_right(boundaries, token_start) - 1, 0)
    step = min(step, len(record["steps"]) - 1)
    attributed = [s.get("a_attr", 0.0) for s in record["steps"]]
    most_blamed = min(range(len(attributed)), key=attributed.__getitem__) if attributed else None
    if most_blamed is not None and attributed[most_blamed] >= 0:
        most_blamed = None
    return {
        "text": text,
        "token_start": token_start,
        "token_end": token_end,
        "step": step,
        "most_blamed_step": most_blamed,
        "blame_hit": most_blamed == step,
    }


def annotate_first_wrong(records: list[dict[str, Any]], check_steps: StepChecker | None) -> int:
    """Add ``first_wrong`` to every testbed record the checker finds a wrong equation in; return how many.

    A checker failure on one response is logged and leaves that response unmarked.
    """
    if check_steps is None:
        return 0
    marked = 0
    for record in records:
        if record.get("data_source") not in TESTBED_DATA_SOURCES:
            continue
        try:
            mark = first_wrong_mark(record, check_steps)
        except Exception:  # the checker reads model output: one odd response must not stop the report
            logger.exception("step checker failed on uid=%s step=%s", record.get("uid"), record.get("global_step"))
            continue
        if mark is not None:
            record["first_wrong"] = mark
            marked += 1
    return marked
