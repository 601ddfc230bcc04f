"""Check a worked arithmetic solution one equation at a time: which step is the first to go wrong.

The testbed task (``recipe.acpo.testbed.task``) asks for a solution written one operation per line::

    First, 16 - 11 = 5.
    Then, 5 * 3 = 15.
    Answer: 15

``check_steps`` finds every equation ``a OP b = c`` (integers, OP one of ``+ - * /``; ``x`` and ``×`` read as ``*``,
``÷`` as ``/``; ``a OP b ~ c``, the testbed's hasty estimate, is an equation checked the same way) in a response, in
order, and says of each whether it is arithmetically right and whether its first operand is the result of the
equation before it (the chain a step-by-step solution must keep). The first equation that is wrong or breaks the
chain is the first wrong step. When ``start`` (the problem's starting value) is given, the first equation must also
start from it.

A response in which no equation can be found is unparsable: ``parsed`` is False and ``first_wrong`` None, so it
counts as a wrong response with no wrong step identified; nothing here raises on any string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from data_prep.arithmetic import evaluate

__all__ = ["Equation", "StepCheck", "check_steps"]

_OPERATORS = {"+": "+", "-": "-", "*": "*", "x": "*", "×": "*", "/": "/", "÷": "/"}
# An integer, an operator, an integer, '=' (or '~'), an integer. The minus of a negative operand must touch its digits
# ("5 - -3"); the operator may have spaces around it or none ("5-3").
_EQUATION = re.compile(
    r"(?<![\w.])(?P<left>-?\d+)\s*(?P<op>[-+*/x×÷])\s*(?P<right>-?\d+)\s*[=~]\s*(?P<result>-?\d+)(?![\w])"
)


@dataclass(frozen=True)
class Equation:
    """One equation found in a response; ``start``/``end`` are character offsets into the response."""

    start: int
    end: int
    text: str
    correct: bool
    uses_previous: bool
    left: int = 0
    operator: str = "+"
    right: int = 0
    result: int = 0


@dataclass(frozen=True)
class StepCheck:
    """Every equation of a response, in order, and the index of the first wrong one (None: all fine or none)."""

    equations: tuple[Equation, ...]
    first_wrong: int | None
    parsed: bool

    @property
    def all_correct(self) -> bool:
        """At least one equation, and every one right and chained to the one before."""
        return self.parsed and self.first_wrong is None


def check_steps(response: str, start: int | None = None) -> StepCheck:
    """The equations of ``response`` and its first wrong step (see the module docstring).

    ``start``: the problem's starting value; when given, the first equation's first operand must equal it.
    """
    equations: list[Equation] = []
    first_wrong: int | None = None
    previous = start
    for match in _EQUATION.finditer(response):
        left, right, result = int(match["left"]), int(match["right"]), int(match["result"])
        operator = _OPERATORS[match["op"]]
        correct = evaluate(left, operator, right) == result
        uses_previous = previous is None or left == previous
        if first_wrong is None and not (correct and uses_previous):
            first_wrong = len(equations)
        equations.append(
            Equation(match.start(), match.end(), match.group(0), correct, uses_previous, left, operator, right, result)
        )
        previous = result
    return StepCheck(equations=tuple(equations), first_wrong=first_wrong, parsed=bool(equations))
