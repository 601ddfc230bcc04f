"""Scoring (§7): extract the answer, verify it in the shared pool, and report 1.0 or 0.0 with flags.

:func:`compute_score` is verl's custom-reward-function hook
(``reward.custom_reward_function.path=pkg://recipe.acpo.reward``); the verl reward manager that uses the same scorer
lives in :mod:`recipe.acpo.reward_manager`. A timeout, a crashed worker, no answer or an unparsable answer scores 0
and is flagged; scoring one bad sample never raises.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from recipe.acpo.reward.extract import MAX_ANSWER_CHARS, extract_answer
from recipe.acpo.reward.verifier_pool import VerifierPool, VerifyOutcome
from recipe.acpo.reward.verifier_worker import GOLD_UNPARSABLE

logger = logging.getLogger(__name__)

# Kept in the per-sample extra info (verl uses ``pred`` for majority-vote validation metrics).
MAX_PRED_CHARS = 200

REWARD_TIMEOUT_FRAC = "acpo/reward_timeout_frac"
REWARD_NO_ANSWER_FRAC = "acpo/reward_no_answer_frac"
REWARD_EMPTY_GROUND_TRUTH_FRAC = "acpo/reward_empty_ground_truth_frac"
# Key of reward.reward_kwargs beside the verifier settings: the recipe's agent loop scores its responses itself
# (recipe.acpo.reward_manager.scores_in_agent_loop).
SCORE_IN_AGENT_LOOP_KEY = "score_in_agent_loop"


# ---------------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RewardResult:
    """One response's reward. ``no_answer``: no answer found, or none math-verify could read as an expression.
    ``timeout``: the verifier gave no verdict (time limit, or its worker crashed). ``empty_ground_truth``: the
    sample's ground truth was missing or blank (the response scores 0)."""

    score: float
    no_answer: bool
    timeout: bool
    pred: str
    empty_ground_truth: bool = False

    @property
    def acc(self) -> float:
        return self.score

    def as_dict(self) -> dict[str, Any]:
        """verl's reward dict: ``score`` is the reward; every key becomes per-sample reward extra info."""
        return {
            "score": self.score,
            "acc": self.acc,
            "no_answer": self.no_answer,
            "timeout": self.timeout,
            "pred": self.pred,
            "empty_ground_truth": self.empty_ground_truth,
        }


@dataclass(frozen=True)
class VerifierSettings:
    """Verifier settings; in verl they come from ``reward.reward_kwargs`` (manager) or
    ``reward.custom_reward_function.reward_kwargs`` (custom function), under the same names."""

    verify_time_limit_s: float = 10.0
    verify_workers: int = 2
    verify_kill_grace_s: float = 1.0
    verify_start_method: str = "spawn"

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None) -> VerifierSettings:
        """Settings from ``raw``, ignoring keys that belong to others (``reward_kwargs`` is shared with verl's DAPO)."""
        raw = raw or {}
        settings = cls(
            verify_time_limit_s=float(raw.get("verify_time_limit_s", cls.verify_time_limit_s)),
            verify_workers=int(raw.get("verify_workers", cls.verify_workers)),
            verify_kill_grace_s=float(raw.get("verify_kill_grace_s", cls.verify_kill_grace_s)),
            verify_start_method=str(raw.get("verify_start_method", cls.verify_start_method)),
        )
        if settings.verify_time_limit_s <= 0:
            raise ValueError(f"verify_time_limit_s must be > 0, got {settings.verify_time_limit_s}")
        if settings.verify_workers < 1:
            raise ValueError(f"verify_workers must be >= 1, got {settings.verify_workers}")
        return settings


class MathAnswerScorer:
    """Scores responses against ground truths: extraction here, verification in a shared :class:`VerifierPool`."""

    def __init__(self, settings: VerifierSettings | None = None, pool: VerifierPool | None = None) -> None:
        self.settings = settings or VerifierSettings()
        self._pool = pool

    @property
    def pool(self) -> VerifierPool:
        if self._pool is None or self._pool.closed:
            self._pool = _shared_pool(
                self.settings.verify_workers, self.settings.verify_kill_grace_s, self.settings.verify_start_method
            )
        return self._pool

    def submit(self, solution_str: str, ground_truth: Any) -> Future[RewardResult]:
        """Score one response asynchronously; the future never fails for a bad response."""
        result: Future[RewardResult] = Future()
        answer = extract_answer(solution_str if isinstance(solution_str, str) else str(solution_str))
        gold = _ground_truth_text(ground_truth)
        if answer is None or len(answer) > MAX_ANSWER_CHARS or gold is None:
            if gold is None:
                _warn_once("empty ground truth %r; its responses score 0", ground_truth)
            result.set_result(
                RewardResult(
                    0.0,
                    no_answer=True,
                    timeout=False,
                    pred=(answer or "")[:MAX_PRED_CHARS],
                    empty_ground_truth=gold is None,
                )
            )
            return result
        outcome = self.pool.submit(gold, answer, self.settings.verify_time_limit_s)
        outcome.add_done_callback(lambda done: _resolve(result, done, answer, gold))
        return result

    def score(self, solution_str: str, ground_truth: Any) -> RewardResult:
        """Score one response (blocking; any thread)."""
        return self.submit(solution_str, ground_truth).result()

    def score_batch(self, pairs: Iterable[tuple[str, Any]]) -> list[RewardResult]:
        """Score ``(solution_str, ground_truth)`` pairs in parallel across the pool's workers."""
        futures = [self.submit(solution_str, ground_truth) for solution_str, ground_truth in pairs]
        return [future.result() for future in futures]


def _ground_truth_text(ground_truth: Any) -> str | None:
    if ground_truth is None:
        return None
    text = ground_truth if isinstance(ground_truth, str) else str(ground_truth)
    text = text.strip()
    return text or None


# (message, value) pairs already warned about: a data set with one bad ground truth repeated over thousands of
# samples logs it once; bounded so that a stream of distinct bad values cannot grow it without end.
_WARNED: set[tuple[str, str]] = set()
_MAX_WARNED = 1000


def _warn_once(message: str, value: Any) -> None:
    """Log ``message % value`` once per distinct value (``repr``), for the first ``_MAX_WARNED`` values."""
    key = (message, repr(value))
    if key not in _WARNED and len(_WARNED) < _MAX_WARNED:
        _WARNED.add(key)
        logger.warning("acpo reward: " + message, value)


def _resolve(result: Future[RewardResult], done: Future[VerifyOutcome], answer: str, ground_truth: str) -> None:
    error = done.exception()
    if error is not None:
        result.set_exception(error)  # only VerifierPoolError: the pool itself is unusable
        return
    outcome = done.result()
    if outcome.status == "error":
        logger.warning("acpo reward: math-verify failed on answer %r (%s); it scores 0", answer[:80], outcome.detail)
    elif outcome.detail == GOLD_UNPARSABLE:
        _warn_once(f"{GOLD_UNPARSABLE} %r; answers are only compared to it as text", ground_truth)
    correct = outcome.status == "ok" and outcome.correct
    result.set_result(
        RewardResult(
            score=1.0 if correct else 0.0,
            no_answer=outcome.status in ("ok", "error") and not correct and not outcome.parsed,
            timeout=outcome.status in ("timeout", "crashed"),
            pred=answer[:MAX_PRED_CHARS],
        )
    )


_POOLS: dict[tuple[int, float, str], VerifierPool] = {}
_SCORERS: dict[VerifierSettings, MathAnswerScorer] = {}
_REGISTRY_LOCK = threading.Lock()


def _shared_pool(num_workers: int, kill_grace_s: float, start_method: str) -> VerifierPool:
    """The process-wide pool for these settings, started on first use and shut down at exit."""
    key = (num_workers, kill_grace_s, start_method)
    with _REGISTRY_LOCK:
        pool = _POOLS.get(key)
        if pool is None or pool.closed:
            pool = VerifierPool(num_workers, kill_grace_s=kill_grace_s, start_method=start_method)
            _POOLS[key] = pool
        return pool


def get_scorer(settings: VerifierSettings | None = None) -> MathAnswerScorer:
    """The process-wide scorer for ``settings`` (pools are shared between scorers with the same pool settings)."""
    settings = settings or VerifierSettings()
    with _REGISTRY_LOCK:
        scorer = _SCORERS.get(settings)
        if scorer is None:
            scorer = _SCORERS[settings] = MathAnswerScorer(settings)
        return scorer


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """verl custom reward function (``reward.custom_reward_function.{path,name}``): 1.0 if the answer is right.

    Keyword arguments (from ``reward.custom_reward_function.reward_kwargs``): ``verify_time_limit_s`` (10),
    ``verify_workers`` (2), ``verify_kill_grace_s`` (1), ``verify_start_method`` ("spawn"); others are ignored.
    Returns ``{"score", "acc", "no_answer", "timeout", "pred"}``. Safe to call from any thread.
    """
    return get_scorer(VerifierSettings.from_mapping(kwargs)).score(solution_str, ground_truth).as_dict()


def reward_fraction_metrics(reward_extra_infos: Sequence[Mapping[str, Any] | None]) -> dict[str, float]:
    """Step metrics ``acpo/reward_timeout_frac``, ``acpo/reward_no_answer_frac`` and
    ``acpo/reward_empty_ground_truth_frac`` from per-sample reward infos (the last flag is optional in an info).

    ``reward_extra_infos[i]`` is sample i's ``reward_extra_info``, or the dict that holds it under that key: verl
    0.9.1's V1 trainer keeps it in TransferQueue as ``extra_fields[i]["reward_extra_info"]`` and never logs it for
    training samples. Pass real samples only (not the rows verl adds as padding). Raises ``KeyError`` naming the
    row when a sample was not scored by this module.
    """
    if len(reward_extra_infos) == 0:
        return {}
    flags: dict[str, list[bool]] = {"timeout": [], "no_answer": []}
    for row, entry in enumerate(reward_extra_infos):
        info = entry.get("reward_extra_info", entry) if isinstance(entry, Mapping) else None
        for key, values in flags.items():
            if not isinstance(info, Mapping) or key not in info:
                keys = sorted(info) if isinstance(info, Mapping) else info
                raise KeyError(
                    f"row {row}: reward extra info has no {key!r} ({keys!r}); was it scored by recipe.acpo.reward?"
                )
            values.append(bool(info[key]))
    count = len(reward_extra_infos)
    empty = sum(
        bool(entry.get("reward_extra_info", entry).get("empty_ground_truth", False))  # type: ignore[union-attr]
        for entry in reward_extra_infos
    )
    return {
        REWARD_TIMEOUT_FRAC: sum(flags["timeout"]) / count,
        REWARD_NO_ANSWER_FRAC: sum(flags["no_answer"]) / count,
        REWARD_EMPTY_GROUND_TRUTH_FRAC: empty / count,
    }
