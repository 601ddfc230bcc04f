"""Answer extraction (§7): the final answer of a response, found cheaply in the parent process (no sympy).

The answer is the last ``Answer:`` line of the response, else its last balanced ``\\boxed{...}``. Verification of
the extracted answer lives in :mod:`recipe.acpo.reward.verifier_worker`; scoring in :mod:`recipe.acpo.reward.scorer`.
"""

from __future__ import annotations

import re

# Only the tail of a response is searched: the template puts the answer on the last line, and a 50 kB response
# of garbage must cost no more than a short one.
TAIL_CHARS = 4096
# An "answer" longer than this is not a final answer (the longest MATH-500 answer has 159 characters).
MAX_ANSWER_CHARS = 512

_ANSWER_LINE = re.compile(r"answer\s*:\s*(?:\*\*\s*)?([^\n]*)", re.IGNORECASE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _clean_answer(answer: str) -> str:
    """Strip what surrounds an answer on its line: whitespace, markdown bold, ``$`` delimiters, a final period."""
    answer = answer.strip()
    previous = None
    while answer != previous:
        previous = answer
        answer = answer.strip().strip("*").strip()
        if answer.endswith("."):
            answer = answer[:-1]
        if len(answer) >= 2 and answer.startswith("$") and answer.endswith("$"):
            answer = answer.strip("$")
    return answer


def _last_balanced_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) whose braces balance, else ``None``. Linear time."""
    closing_of: dict[int, int] = {}
    open_positions: list[int] = []
    for position, char in enumerate(text):
        if char == "{":
            open_positions.append(position)
        elif char == "}" and open_positions:
            closing_of[open_positions.pop()] = position
    for match in reversed(list(_BOXED.finditer(text))):
        brace = match.end() - 1
        if brace in closing_of:
            return text[brace + 1 : closing_of[brace]]
    return None


def extract_answer(solution_str: str, tail_chars: int = TAIL_CHARS) -> str | None:
    """The final answer of a response (§7), or ``None`` when it gives none.

    The last non-empty ``Answer:`` line wins (case-insensitive, markdown bold and ``$`` delimiters stripped); without
    one, the content of the last balanced ``\\boxed{...}``. Only the last ``tail_chars`` characters are searched.
    """
    tail = solution_str[-tail_chars:]
    for match in reversed(list(_ANSWER_LINE.finditer(tail))):
        answer = _clean_answer(match.group(1))
        if answer:
            return answer
    boxed = _last_balanced_boxed(tail)
    if boxed is None:
        return None
    return _clean_answer(boxed) or None
