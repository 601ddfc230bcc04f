"""The testbed policy's fine-tuning demonstrations: reference solutions in which some lines are written hastily.

A demonstration writes each line of a problem's solution either carefully (``First, ...`` / ``Then, ...``, always
right) or hastily (``Quick, ...``) with probability ``hasty_rate``; a hasty line gets its result wrong by 1 or 2 with
probability ``slip_rate``, and every later line and the answer follow from the wrong value::

    First, 13 + 7 = 20.
    Quick, 20 + 4 = 23.     <- the slip: the rest is consistent with it
    Then, 23 + 4 = 27.
    Answer: 27

Why: a policy fine-tuned on reference solutions alone learns the task only as far as its size allows, and its
mistakes (misread operands, wrong sums) have no common cause RL could remove in a few dozen steps on a CPU. One
fine-tuned on these demonstrations also imitates a *choice* (careful or hasty line, at the line's first token, a
high-entropy token) with a known cost (a hasty line slips half the time, and a slip is a single wrong step that decides
the outcome). That is the situation step-level credit is meant for: the crucial step is identifiable
(``data_prep.step_check`` finds it), and a policy that learns to avoid it gains accuracy. Every RL method compared
starts from the same policy; nothing here knows which method trains it. docs/learning.md has the measurements.

Deterministic: the choices for a problem depend only on its text, the rates and the seed.
"""

from __future__ import annotations

import random

from data_prep.arithmetic_steps import StepProblem, apply_operation, render_solution

HASTY_LEAD = "Quick"
_SLIPS = (-2, -1, 1, 2)


def demonstration(problem: StepProblem, hasty_rate: float, slip_rate: float, seed: int = 0) -> str:
    """A fine-tuning response to ``problem``: its reference steps, each line hasty with probability ``hasty_rate``
    and a hasty line's result off by 1 or 2 with probability ``slip_rate``; later lines chain from
    the written results. With ``hasty_rate`` 0 it is ``problem.solution``.
    """
    if not (0.0 <= hasty_rate <= 1.0 and 0.0 <= slip_rate <= 1.0):
        raise ValueError(f"hasty_rate and slip_rate must lie in [0, 1], got {hasty_rate} and {slip_rate}")
    rng = random.Random(f"{seed}:{problem.text}")
    results: list[int] = []
    leads: list[str] = []
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
        results.append(result)
        value = result
    return render_solution(problem, results, leads)


def hasty_line_share(responses: list[str]) -> float:
    """The share of equation lines in ``responses`` that begin with the hasty lead (NaN when there are none)."""
    lines = [line.lstrip() for response in responses for line in response.splitlines() if "=" in line]
    if not lines:
        return float("nan")
    return sum(line.startswith(HASTY_LEAD) for line in lines) / len(lines)
