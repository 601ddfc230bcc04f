"""recipe.acpo.testbed.demonstrations: careful lines are right, hasty lines slip at the rate asked, the rest follows."""

from __future__ import annotations

import pytest

from data_prep.arithmetic import evaluate
from recipe.acpo.testbed.demonstrations import HASTY_LEAD, HASTY_RELATION, demonstration, hasty_line_share
from recipe.acpo.testbed.policy import answer_of
from recipe.acpo.testbed.step_check import check_steps
from recipe.acpo.testbed.task import TaskSpec, generate

PROBLEMS = generate(400, TaskSpec(num_ops=(2, 3)), seed=5, pool="policy")


def test_with_no_hasty_lines_a_demonstration_is_the_reference_solution() -> None:
    assert all(demonstration(p, hasty_rate=0.0, slip_rate=1.0) == p.solution for p in PROBLEMS)


def test_only_hasty_lines_slip_and_every_later_line_and_the_answer_follow_from_the_slip() -> None:
    slipped = wrong_answers = 0
    for problem in PROBLEMS:
        response = demonstration(problem, hasty_rate=0.5, slip_rate=0.5, seed=1)
        check = check_steps(response, start=problem.start)
        lines = response.splitlines()
        assert check.parsed and len(check.equations) == len(problem.operations)
        if check.first_wrong is None:
            assert answer_of(response) == problem.answer
            continue
        slipped += 1
        assert lines[check.first_wrong].startswith(f"{HASTY_LEAD}, ")
        assert f" {HASTY_RELATION} " in lines[check.first_wrong]
        # The slip is the only arithmetic error before it; the lines after it chain from the wrong value.
        wrong = check.equations[check.first_wrong]
        assert 1 <= abs(wrong.result - evaluate(wrong.left, wrong.operator, wrong.right)) <= 2
        for equation in check.equations[check.first_wrong + 1 :]:
            assert equation.uses_previous
        assert answer_of(response) == check.equations[-1].result
        wrong_answers += answer_of(response) != problem.answer
    # Each line slips with probability 0.25: a 2-3 line solution slips with probability about 0.5.
    assert 0.35 < slipped / len(PROBLEMS) < 0.65
    # Two slips can cancel out, but seldom.
    assert wrong_answers > 0.9 * slipped


def test_careful_lines_write_an_equals_sign_and_hasty_lines_the_estimate_sign() -> None:
    for problem in PROBLEMS[:100]:
        for line in demonstration(problem, hasty_rate=0.5, slip_rate=0.5).splitlines()[:-1]:
            hasty = line.startswith(f"{HASTY_LEAD}, ")
            assert (f" {HASTY_RELATION} " in line) == hasty
            assert (" = " in line) != hasty


def test_the_hasty_relation_can_be_the_equals_sign_of_the_second_policy() -> None:
    for problem in PROBLEMS[:100]:
        with_estimates = demonstration(problem, hasty_rate=0.5, slip_rate=0.5)
        with_equals = demonstration(problem, hasty_rate=0.5, slip_rate=0.5, hasty_relation="=")
        assert with_equals == with_estimates.replace(f" {HASTY_RELATION} ", " = ")
    with pytest.raises(ValueError, match="hasty_relation"):
        demonstration(PROBLEMS[0], 0.5, 0.5, hasty_relation="<")


def test_the_hasty_share_of_lines_follows_the_rate() -> None:
    responses = [demonstration(p, hasty_rate=0.4, slip_rate=0.5) for p in PROBLEMS]
    assert hasty_line_share(responses) == pytest.approx(0.4, abs=0.05)
    assert hasty_line_share([p.solution for p in PROBLEMS]) == 0.0
    # A sampled line may mix the lead and the sign: either makes it hasty.
    assert hasty_line_share(["First, 1 + 1 ~ 2.\nQuick, 2 + 1 = 3.\nThen, 3 + 1 = 4.\nAnswer: 4"]) == 2 / 3
    assert hasty_line_share(["no equations here"]) != hasty_line_share(["no equations here"])  # NaN


def test_demonstrations_are_deterministic_in_the_seed() -> None:
    first = [demonstration(p, 0.4, 0.5, seed=0) for p in PROBLEMS]
    assert first == [demonstration(p, 0.4, 0.5, seed=0) for p in PROBLEMS]
    assert first != [demonstration(p, 0.4, 0.5, seed=1) for p in PROBLEMS]


@pytest.mark.parametrize(("hasty_rate", "slip_rate"), [(-0.1, 0.5), (0.4, 1.5)])
def test_rates_outside_zero_one_are_refused(hasty_rate: float, slip_rate: float) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        demonstration(PROBLEMS[0], hasty_rate, slip_rate)
