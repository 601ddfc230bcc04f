"""One ground-truth rule: ``data_prep.check`` accepts exactly the reference answers the reward reads as math."""

from __future__ import annotations

import pytest

from data_prep.schema import ground_truth_problem
from recipe.acpo.reward import GOLD_UNPARSABLE, verify_answer

# Each side of the old split: "10%" was rejected by data_prep (LaTeX only) but read by the reward (LaTeX, then
# expression, then text); the others agree and must keep agreeing.
GROUND_TRUTHS = [
    "10%",
    "34",
    "-7",
    "\\frac{14}{3}",
    "\\text{Evelyn}",
    "p - q",
    "sqrt(2)",
    "x**2",
    "\\frac{",
    "\\text{}",
    "\\boxed{3}",
    "(1,2]",
]


@pytest.mark.parametrize("ground_truth", GROUND_TRUTHS)
def test_data_check_and_reward_give_a_ground_truth_the_same_verdict(ground_truth: str) -> None:
    accepted_by_check = ground_truth_problem(ground_truth) is None
    _, _, problem = verify_answer(ground_truth, ground_truth)
    read_by_reward = problem != GOLD_UNPARSABLE
    assert accepted_by_check == read_by_reward, (
        f"{ground_truth!r}: data_prep.check {'accepts' if accepted_by_check else 'rejects'} it, "
        f"the reward {'reads' if read_by_reward else 'does not read'} it as math"
    )


def test_a_percentage_is_a_usable_ground_truth() -> None:
    assert ground_truth_problem("10%") is None
    assert verify_answer("10%", "10\\%")[0]
