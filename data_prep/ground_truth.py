"""The one rule for reading a reference answer (and a response's final answer) as math, shared by the data check
(``data_prep.schema``, ``python -m data_prep.check``) and the reward (``recipe.acpo.reward``), so that a file the
check accepts is a file the reward can score, and the other way round.

The rule (§7): math-verify reads the text as ``\\boxed{text}`` with its LaTeX and expression extractors; when
that yields no math expression, it reads the bare text with both. A text is usable as a ground truth when at least one
candidate is a math expression (a sympy object, not math-verify's fallback string).

This module imports only the standard library (math-verify on first use): the reward's verifier worker processes
import it and must start fast.
"""

from __future__ import annotations

import math
import re
import threading
from functools import lru_cache
from typing import Any

# Answers made only of digits skip math-verify: it parses every such string (tested), in microseconds not milliseconds.
_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
# math-verify's own limit when it can use one (SIGALRM: the main thread only).
PARSE_TIMEOUT_S = 5


def _as_boxed(text: str) -> str:
    return text if "\\boxed" in text else "\\boxed{" + text + "}"


def is_expression(candidate: Any) -> bool:
    """A parsed sympy object, not math-verify's fallback string."""
    return not isinstance(candidate, str)


def parse_math(text: str, parsing_timeout: int | None = None) -> list[Any]:
    """math-verify's candidates for ``text``: its LaTeX or expression read as ``\\boxed{...}``, else as bare text.

    ``parsing_timeout`` is math-verify's own SIGALRM limit in seconds (main thread only); None turns it off, for
    callers with a time limit of their own (the reward's worker processes).
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    targets = (LatexExtractionConfig(), ExprExtractionConfig())
    candidates = parse(_as_boxed(text), targets, parsing_timeout=parsing_timeout)
    if not any(is_expression(candidate) for candidate in candidates):
        candidates = parse(text, targets, parsing_timeout=parsing_timeout) or candidates
    return candidates


def parse_ground_truth(ground_truth: str) -> list[Any]:
    """``parse_math`` of a reference answer with math-verify's time limit where it can have one (the main thread)."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    return parse_math(ground_truth.strip(), parsing_timeout=PARSE_TIMEOUT_S if in_main_thread else None)


def ground_truth_problem(ground_truth: Any) -> str | None:
    """Why ``ground_truth`` is not a usable reference answer, or None when it is one.

    Usable: a non-empty string with a math expression among its ``parse_math`` candidates.
    """
    if ground_truth is None or (isinstance(ground_truth, float) and math.isnan(ground_truth)):
        return "ground truth is missing (null)"
    if not isinstance(ground_truth, str):
        return f"ground truth {ground_truth!r} has type {type(ground_truth).__name__}, not a string"
    return _string_ground_truth_problem(ground_truth)


@lru_cache(maxsize=65536)
def _string_ground_truth_problem(ground_truth: str) -> str | None:
    if not ground_truth.strip():
        return "ground truth is empty"
    if _PLAIN_NUMBER.fullmatch(ground_truth.strip()):
        return None
    try:
        candidates = parse_ground_truth(ground_truth)
    except Exception as err:  # math-verify raises its own timeout and sympy errors
        return f"ground truth {ground_truth!r} makes math-verify fail: {type(err).__name__}: {err}"
    if not any(is_expression(candidate) for candidate in candidates):
        return f"ground truth {ground_truth!r} cannot be parsed by math-verify"
    return None
