"""recipe.acpo.testbed.step_check on hand-written responses: right, wrong, wrong then consistent, unparsable."""

from __future__ import annotations

import pytest

from recipe.acpo.testbed.step_check import check_steps

RIGHT = "First, 16 - 11 = 5.\nThen, 5 * 3 = 15.\nAnswer: 15"


def test_a_right_solution_has_every_equation_right_and_chained() -> None:
    check = check_steps(RIGHT, start=16)
    assert check.parsed and check.first_wrong is None and check.all_correct
    assert [e.text for e in check.equations] == ["16 - 11 = 5", "5 * 3 = 15"]
    assert all(e.correct and e.uses_previous for e in check.equations)
    for equation in check.equations:
        assert RIGHT[equation.start : equation.end] == equation.text


def test_the_first_arithmetic_slip_is_the_first_wrong_step() -> None:
    check = check_steps("First, 8 + 4 = 10.\nThen, 10 + 3 = 13.\nThen, 13 - 2 = 12.\nAnswer: 12")
    assert check.first_wrong == 0
    assert [e.correct for e in check.equations] == [False, True, False]
    assert [e.uses_previous for e in check.equations] == [True, True, True]


def test_a_slip_followed_by_steps_consistent_with_it_is_found_at_the_slip() -> None:
    check = check_steps("First, 3 * 4 = 12.\nThen, 12 + 9 = 20.\nThen, 20 - 5 = 15.\nAnswer: 15", start=3)
    assert check.first_wrong == 1
    assert [e.correct for e in check.equations] == [True, False, True]
    assert all(e.uses_previous for e in check.equations)
    assert not check.all_correct


def test_a_hasty_estimate_is_an_equation_checked_like_any_other() -> None:
    check = check_steps("First, 13 + 7 = 20.\nQuick, 20 + 4 ~ 23.\nThen, 23 + 4 = 27.\nAnswer: 27", start=13)
    assert [e.text for e in check.equations] == ["13 + 7 = 20", "20 + 4 ~ 23", "23 + 4 = 27"]
    assert check.first_wrong == 1
    assert check_steps("Quick, 20 + 4 ~ 24.\nAnswer: 24", start=20).all_correct


def test_a_step_that_does_not_use_the_previous_result_is_wrong_even_if_its_arithmetic_is_right() -> None:
    check = check_steps("First, 7 + 2 = 9.\nThen, 8 + 1 = 9.\nAnswer: 9")
    assert check.first_wrong == 1
    assert check.equations[1].correct and not check.equations[1].uses_previous


def test_a_first_equation_that_does_not_start_from_the_problem_start_is_wrong() -> None:
    assert check_steps("First, 7 + 2 = 9.\nAnswer: 9", start=6).first_wrong == 0
    assert check_steps("First, 7 + 2 = 9.\nAnswer: 9", start=7).first_wrong is None
    assert check_steps("First, 7 + 2 = 9.\nAnswer: 9").equations[0].uses_previous


@pytest.mark.parametrize("response", ["", "Answer: 12", "I think it is twelve.", "First, 16 - = 5.", "5 + 3 ="])
def test_an_unparsable_response_is_counted_as_wrong_with_no_wrong_step(response: str) -> None:
    check = check_steps(response)
    assert not check.parsed and check.first_wrong is None and check.equations == ()
    assert not check.all_correct


@pytest.mark.parametrize(
    ("equation", "correct"),
    [("12/4=3", True), ("12 / 5 = 2", False), ("6 x 7 = 42", True), ("9 ÷ 3 = 3", True), ("2 - 5 = -3", True)],
)
def test_operator_spellings_and_inexact_division(equation: str, correct: bool) -> None:
    check = check_steps(equation)
    assert check.parsed and check.equations[0].correct is correct


def test_numbers_inside_longer_tokens_are_not_equations() -> None:
    assert not check_steps("version 1.5 + 2 = 3.5 and x2 + 3 = 5y").parsed
