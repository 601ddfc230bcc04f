"""The testbed policy's fine-tuning demonstrations: reference solutions in which some lines are written hastily.

A demonstration writes each line of a problem's solution either carefully (``First, ... = ...`` /
``Then, ... = ...``, always right) or hastily (``Quick, ... ~ ...``, an estimate) with probability ``hasty_rate``;
a hasty line gets its result wrong by 1 or 2 with probability ``slip_rate``, and every later line and the answer
follow from the wrong value::

    First, 13 + 7 = 20.
    Quick, 20 + 4 ~ 23.     <- the slip: the rest is consistent with it
    Then, 23 + 4 = 27.
    Answer: 27

Why: a policy fine-tuned on reference solutions alone learns the task only as far as its size allows, and its
mistakes (misread operands, wrong sums) have no common cause RL could remove in a few dozen steps on a CPU. One
fine-tuned on these demonstrations also imitates a *choice* (careful or hasty line, at the line's first token, a
high-entropy token) with a known cost (a hasty line slips half the time, and a slip is a single wrong step that
decides the outcome). That is the situation step-level credit is meant for: the crucial step is identifiable
(``recipe.acpo.testbed.step_check`` finds it), and a policy that learns to avoid it gains accuracy.

The estimate sign ``~`` sits right before the result it governs. With ``=`` there as well, a policy of this size
(2 layers) did not tie its slips to the lead five tokens back, and at temperature 1 its careful lines slipped about
as often as its hasty ones (docs/learning.md), so the choice hardly mattered. Every RL method compared starts from
the same policy; nothing here knows which method trains it. docs/learning.md has the measurements.

Deterministic: the choices for a problem depend only on its text, the rates and the seed.
"""

from __future__ import annotations

import random

from recipe.acpo.testbed.task import StepProblem, apply_operation, render_solution

HASTY_LEAD = "Quick"
HASTY_RELATION = "~"
HASTY_RELATIONS = (HASTY_RELATION, "=")
_SLIPS = (-2, -1, 1, 2)


def demonstration(
    problem: StepProblem, hasty_rate: float, slip_rate: float, seed: int = 0, hasty_relation: str = HASTY_RELATION
) -> str:
    """A fine-tuning response to ``problem``: its reference steps, each line hasty with probability ``hasty_rate``
    and a hasty line's result off by 1 or 2 with probability ``slip_rate``; later lines chain from
    the written results. With ``hasty_rate`` 0 it is ``problem.solution``. ``hasty_relation``: the sign a hasty line
    writes before its result (``=`` builds the second policy of docs/learning.md).
    """
    if not (0.0 <= hasty_rate <= 1.0 and 0.0 <= slip_rate <= 1.0):
        raise ValueError(f"hasty_rate and slip_rate must lie in [0, 1], got {hasty_rate} and {slip_rate}")
    if hasty_relation not in HASTY_RELATIONS:
        raise ValueError(f"hasty_relation must be one of {HASTY_RELATIONS}, got {hasty_relation!r}")
    rng = random.Random(f"{seed}:{problem.text}")
    results: list[int] = []
    leads: list[str] = []
    relations: list[str] = []
    value = problem.start
    for n, (kind, operand) in enumerate(problem.operations):
        result = apply_operation(value, kind, operand)
        if result is None:  # a later line after a slip may meet an inexact division: keep the quotient
            result = value // operand
        hasty = rng.random() < hasty_rate
        if hasty and rng.random() < slip_rate:
            # Never below 0 unless a slip earlier in the line's chain already took the value there.
            result += rng.choice([slip for slip in _SLIPS if result + slip >= 0] or _SLIPS)
        leads.append(HASTY_LEAD if hasty else ("First" if n == 0 else "Then"))
        relations.append(hasty_relation if hasty else "=")
        results.append(result)
        value = result
    return render_solution(problem, results, leads, relations)


def is_hasty_line(line: str) -> bool:
    """A line written hastily: the hasty lead, or the estimate sign (a sampled line may mix the two)."""
    return line.lstrip().startswith(HASTY_LEAD) or f" {HASTY_RELATION} " in line


def hasty_line_share(responses: list[str]) -> float:
    """The share of equation lines in ``responses`` that are hasty (NaN when there are none)."""
    lines = [line for response in responses for line in response.splitlines() if "=" in line or HASTY_RELATION in line]
    if not lines:
        return float("nan")
    return sum(map(is_hasty_line, lines)) / len(lines)
