"""Probe examples: fine-tuning sequences that teach the testbed policy to forecast its final answer from any prefix.

ACPO's attribution (``acpo_core.attribution``) uses the policy as its own judge: after each step boundary c_i (a line
start here) it appends the answer template Y, tokenised on its own, to the response prefix o_{<c_i} at the token
level and scores log p(Y | q, o_{<c_i}). A policy fine-tuned only on whole responses has seen ``Answer:`` only after
the last line, so after a shorter prefix it predicts the last written value, not the final one, and the step credit is
at chance. A probe example is the chat-templated prompt, the first ``lines`` lines of a demonstration (cut at a line
start; or the whole response without its end-of-sequence token), a cue (``Answer now:``) and the value those lines
commit to: the remaining operations applied to the last written value, so after a slip the forecast follows the slip
(the ground truth only when the written chain is right). The loss is on the value's tokens only (not on the cue, the
prefix or an end-of-sequence token), so nothing the policy samples is trained by a probe; the cue is never a target,
so the policy has no reason to write it unprompted.

The ids are built the way attribution concatenates them: the prompt's ids, the response's own ids cut where the
prefix ends (which must be a token boundary), then the ids of ``cue + " " + value`` tokenised separately; the cue's
ids must be a prefix of those (the value's tokens are the rest: ``answer_value_span`` with the template
``cue + " {answer}"`` gives the same span).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from recipe.acpo.testbed.policy import answer_of
from recipe.acpo.testbed.step_check import check_steps
from recipe.acpo.testbed.task import StepProblem, apply_operation

ANSWER_PREFIX = "Answer:"


def cuts(response: str) -> list[int]:
    """Character offsets where a probe may cut ``response``: every line start (0 and after each newline), then its
    end (the complete response) when it does not end with a newline."""
    starts = [0] + [n + 1 for n, char in enumerate(response) if char == "\n"]
    return starts if starts[-1] == len(response) else [*starts, len(response)]


def committed_value(problem: StepProblem, prefix: str) -> tuple[int, int] | None:
    """(the final value ``prefix`` of a response commits to, operations remaining after it), or None.

    After an ``Answer: N`` line the value is N with no operation remaining. Else it is the problem's remaining
    operations applied, in order, to the last written result (the start value when no equation is written yet); an
    inexact division keeps the quotient, as a demonstration does after a slip. None when the prefix writes more
    equations than the problem has operations.
    """
    lines = prefix.splitlines()
    if lines and lines[-1].strip().startswith(ANSWER_PREFIX):
        answer = answer_of(lines[-1])
        return None if answer is None else (answer, 0)
    written = [equation.result for equation in check_steps(prefix).equations]
    if len(written) > len(problem.operations):
        return None
    value = written[-1] if written else problem.start
    remaining = problem.operations[len(written) :]
    for kind, operand in remaining:
        result = apply_operation(value, kind, operand)
        value = value // operand if result is None else result
    return value, len(remaining)


def prefix_ids(tokenizer: Any, response: str, response_ids: Sequence[int], end: int) -> list[int]:
    """The ids of ``response[:end]``: the first ids of ``response_ids`` (the response's own tokenisation).

    Raises:
        ValueError: ``end`` is not a token boundary of ``response_ids`` (the prefix alone tokenises differently).
    """
    ids = list(tokenizer(response[:end], add_special_tokens=False)["input_ids"]) if end else []
    if list(response_ids[: len(ids)]) != ids:
        raise ValueError(f"the cut at character {end} of {response!r} is not a token boundary of its ids")
    return ids


def cue_ids(tokenizer: Any, cue: str, value: int) -> tuple[list[int], int]:
    """(the ids of ``cue + " " + value`` tokenised on its own, where the value's tokens start in them).

    Raises:
        ValueError: the cue's own ids are not a prefix of them (a token would merge the cue with the value).
    """
    head = list(tokenizer(cue, add_special_tokens=False)["input_ids"])
    ids = list(tokenizer(f"{cue} {value}", add_special_tokens=False)["input_ids"])
    if ids[: len(head)] != head or len(ids) == len(head):
        raise ValueError(f"probe_cue {cue!r}: its tokens are not a prefix of those of {f'{cue} {value}'!r}")
    return ids, len(head)


@dataclass(frozen=True)
class Probe:
    """One probe example: its ids, where the loss starts (the value's tokens run to the end), what it forecasts."""

    ids: list[int]
    loss_start: int
    value: int
    remaining: int


def probe_example(
    tokenizer: Any,
    problem: StepProblem,
    response: str,
    sequence: Sequence[int],
    prompt_length: int,
    end: int,
    cue: str,
) -> Probe:
    """The probe of ``response`` cut at character ``end`` (one of :func:`cuts`).

    ``sequence`` and ``prompt_length``: the fine-tuning ids of (problem, response) and its prompt's length, as
    ``policy._encode`` gives them (prompt, response, end-of-sequence token). Returns prompt ids + the response's ids
    up to ``end`` + the ids of ``cue + " " + value``, the loss on the value's tokens only.

    Raises:
        ValueError: ``end`` is not a line start or the response's end, not a token boundary, or the prefix commits to
            no value (see :func:`committed_value`); or the cue merges with the value.
    """
    if end not in cuts(response):
        raise ValueError(f"a probe cuts a response at a line start or its end, not at character {end}")
    committed = committed_value(problem, response[:end])
    if committed is None:
        raise ValueError(f"{response[:end]!r} commits to no value of {problem.text!r}")
    value, remaining = committed
    prompt = list(sequence[:prompt_length])
    prefix = prefix_ids(tokenizer, response, sequence[prompt_length:], end)
    answer, value_start = cue_ids(tokenizer, cue, value)
    ids = prompt + prefix + answer
    return Probe(ids=ids, loss_start=len(prompt) + len(prefix) + value_start, value=value, remaining=remaining)


def draw_probes(
    tokenizer: Any,
    problems: Sequence[StepProblem],
    responses: Sequence[str],
    sequences: Sequence[Sequence[int]],
    prompt_lengths: Sequence[int],
    count: int,
    cue: str,
    seed: int,
) -> list[Probe]:
    """``count`` probes, each of a demonstration and a cut drawn uniformly (``random.Random``, not torch's generator,
    so that drawing none leaves every other draw of a build as it was)."""
    rng = random.Random(f"{seed}:probes")
    probes = []
    for _ in range(count):
        n = rng.randrange(len(problems))
        end = rng.choice(cuts(responses[n]))
        probes.append(probe_example(tokenizer, problems[n], responses[n], sequences[n], prompt_lengths[n], end, cue))
    return probes
