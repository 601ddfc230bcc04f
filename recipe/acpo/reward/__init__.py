"""Verifiable math reward (§7), split by purpose.

- :mod:`recipe.acpo.reward.extract`: the final answer of a response (last ``Answer:`` line, else last ``\\boxed``).
- :mod:`recipe.acpo.reward.verifier_worker`: math-verify in one worker process, each item under a time limit.
- :mod:`recipe.acpo.reward.verifier_pool`: a killable pool of those workers, with a hard per-item deadline.
- :mod:`recipe.acpo.reward.scorer`: :func:`compute_score` (verl's custom-reward-function hook,
  ``reward.custom_reward_function.path=pkg://recipe.acpo.reward``), the shared scorer and the step metrics.

The verl reward manager lives in :mod:`recipe.acpo.reward_manager`. Nothing here imports verl or torch.
"""

from recipe.acpo.reward.extract import MAX_ANSWER_CHARS, TAIL_CHARS, extract_answer
from recipe.acpo.reward.scorer import (
    MAX_PRED_CHARS,
    REWARD_EMPTY_GROUND_TRUTH_FRAC,
    REWARD_NO_ANSWER_FRAC,
    REWARD_TIMEOUT_FRAC,
    SCORE_IN_AGENT_LOOP_KEY,
    MathAnswerScorer,
    RewardResult,
    VerifierSettings,
    compute_score,
    get_scorer,
    reward_fraction_metrics,
)
from recipe.acpo.reward.verifier_pool import VerifierPool, VerifierPoolError, VerifyOutcome
from recipe.acpo.reward.verifier_worker import GOLD_UNPARSABLE, verify_answer

__all__ = [
    "GOLD_UNPARSABLE",
    "MAX_ANSWER_CHARS",
    "MAX_PRED_CHARS",
    "REWARD_EMPTY_GROUND_TRUTH_FRAC",
    "REWARD_NO_ANSWER_FRAC",
    "REWARD_TIMEOUT_FRAC",
    "SCORE_IN_AGENT_LOOP_KEY",
    "TAIL_CHARS",
    "MathAnswerScorer",
    "RewardResult",
    "VerifierPool",
    "VerifierPoolError",
    "VerifierSettings",
    "VerifyOutcome",
    "compute_score",
    "extract_answer",
    "get_scorer",
    "reward_fraction_metrics",
    "verify_answer",
]
