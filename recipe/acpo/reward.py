"""Verifiable math reward (§7): answer extraction and math-verify run in worker processes with a time limit.

The answer is the last ``Answer:`` line of the response, else its last balanced ``\\boxed{...}``; it is verified
against the ground truth with math-verify (gold first) and scores 1.0 or 0.0. Both are read as math by
``data_prep.ground_truth.parse_math``, the rule ``data_prep.check`` applies to ground truths.

math-verify's own time limits use ``SIGALRM``, which only works on a process's main thread, and some inputs
(``9^{9^{9}}``, ``(10^{6})!``) keep sympy busy for minutes. Verification therefore runs in a small pool of worker
processes (``spawn`` by default), each item under a per-item time limit enforced twice: an interval timer inside
the worker, and a hard kill from the parent ``kill_grace_s`` later for a worker stuck in C code (the killed worker is
replaced). A timeout, a crashed worker, no answer or an unparsable answer scores 0 and is flagged; scoring one bad
sample never raises.

This module imports neither verl nor torch: verifier workers import it, and must start fast. As with any
``spawn``/``forkserver`` pool, workers also import the parent's ``__main__`` module: a script that scores must keep
its work under ``if __name__ == "__main__":`` (``python -m`` entry points, Ray workers and pytest do). The verl reward
manager lives in :mod:`recipe.acpo.reward_manager`; verl's custom-reward-function hook can use :func:`compute_score`
directly (``reward.custom_reward_function.path=pkg://recipe.acpo.reward``).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import multiprocessing
import os
import re
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Literal

from data_prep.ground_truth import is_expression, parse_math

logger = logging.getLogger(__name__)

__all__ = [
    "REWARD_NO_ANSWER_FRAC",
    "REWARD_TIMEOUT_FRAC",
    "MathAnswerScorer",
    "RewardResult",
    "VerifierPool",
    "VerifierSettings",
    "compute_score",
    "extract_answer",
    "get_scorer",
    "reward_fraction_metrics",
]

# Only the tail of a response is searched: the template puts the answer on the last line, and a 50 kB response
# of garbage must cost no more than a short one.
TAIL_CHARS = 4096
# An "answer" longer than this is not a final answer (the longest MATH-500 answer has 159 characters).
MAX_ANSWER_CHARS = 512
# Kept in the per-sample extra info (verl uses ``pred`` for majority-vote validation metrics).
MAX_PRED_CHARS = 200

REWARD_TIMEOUT_FRAC = "acpo/reward_timeout_frac"
REWARD_NO_ANSWER_FRAC = "acpo/reward_no_answer_frac"

_ANSWER_LINE = re.compile(r"answer\s*:\s*(?:\*\*\s*)?([^\n]*)", re.IGNORECASE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


# ---------------------------------------------------------------------------------------------------------------
# Answer extraction (parent process: cheap, no sympy)
# ---------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------
# Verification (worker processes)
# ---------------------------------------------------------------------------------------------------------------


class _ItemTimeout(BaseException):
    """Raised by the worker's interval timer. A BaseException, so math-verify's ``except Exception`` lets it through."""


def _on_item_alarm(signum: int, frame: Any) -> None:
    raise _ItemTimeout


_GOLD_CACHE: dict[str, list[Any]] = {}


GOLD_UNPARSABLE = "math-verify reads no math expression in the ground truth"


def verify_answer(ground_truth: str, answer: str) -> tuple[bool, bool, str]:
    """Verify ``answer`` against ``ground_truth`` with math-verify (gold first). Runs in a worker process.

    Returns ``(correct, parsed, problem)``: ``parsed`` is whether math-verify read the answer as a math expression;
    ``problem`` is :data:`GOLD_UNPARSABLE` when the ground truth is not read as math (answers are then only compared
    to it as text), else empty.
    """
    from math_verify import verify

    gold = _GOLD_CACHE.get(ground_truth)
    if gold is None:
        gold = parse_math(ground_truth)
        # A GRPO group repeats its ground truth n times; the cache is bounded by the data set's distinct answers.
        if len(_GOLD_CACHE) < 100_000:
            _GOLD_CACHE[ground_truth] = gold
    predicted = parse_math(answer)
    parsed = any(is_expression(candidate) for candidate in predicted)
    problem = "" if any(is_expression(candidate) for candidate in gold) else GOLD_UNPARSABLE
    if not gold or not predicted:
        return False, parsed, problem
    return bool(verify(gold, predicted, timeout_seconds=None)), parsed, problem


def _ignore_parent_signals_and_die_with_parent() -> None:
    # Ctrl-C reaches the whole process group: the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):  # ask to be killed when the parent's dispatcher thread (our parent) dies
        with contextlib.suppress(Exception):
            import ctypes

            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _limit_address_space_growth(memory_limit_mb: int) -> None:
    """Let the worker grow by at most ``memory_limit_mb`` (a ``2^{2^{2^{2^{2^{2}}}}}`` would take gigabytes): a
    MemoryError then scores the item 0. Relative to the current size, which depends on what the parent's
    ``__main__`` imported. Linux only."""
    with contextlib.suppress(Exception):
        import resource

        with open("/proc/self/statm") as statm:
            current = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = current + memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def _worker_main(conn: Connection, use_alarm: bool, memory_limit_mb: int | None) -> None:
    """A verifier worker: receives ``(task_id, ground_truth, answer, time_limit_s)``, replies with the verdict."""
    _ignore_parent_signals_and_die_with_parent()
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns once that its own timeouts are off
    import math_verify  # noqa: F401  (imported before "ready": the first item's time limit excludes sympy's import)

    if memory_limit_mb is not None:
        _limit_address_space_growth(memory_limit_mb)

    if use_alarm:
        signal.signal(signal.SIGALRM, _on_item_alarm)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if message is None:
            return
        task_id, ground_truth, answer, time_limit_s = message
        try:
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, time_limit_s)
            try:
                correct, parsed, problem = verify_answer(ground_truth, answer)
            finally:
                if use_alarm:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            reply: tuple[Any, ...] = ("ok", task_id, correct, parsed, problem)
        except _ItemTimeout:
            reply = ("timeout", task_id, False, False, f"time limit {time_limit_s:g} s")
        except Exception as error:  # MemoryError, RecursionError: this item scores 0, the worker lives on
            reply = ("error", task_id, False, False, f"{type(error).__name__}: {error}"[:500])
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return


# ---------------------------------------------------------------------------------------------------------------
# The worker pool (parent process)
# ---------------------------------------------------------------------------------------------------------------

OutcomeStatus = Literal["ok", "timeout", "error", "crashed"]


@dataclass(frozen=True)
class VerifyOutcome:
    """What the pool returns for one item. ``status`` ``timeout`` covers both the in-worker timer and a hard kill."""

    status: OutcomeStatus
    correct: bool = False
    parsed: bool = False
    detail: str = ""


class VerifierPoolError(RuntimeError):
    """The pool as a whole cannot verify (workers fail to start, or it was shut down): not one bad sample."""


@dataclass
class _Task:
    future: Future[VerifyOutcome]
    ground_truth: str
    answer: str
    time_limit_s: float
    task_id: int = 0


@dataclass
class _Worker:
    process: Any
    conn: Connection
    spawned_at: float
    pid: int | None = None
    task: _Task | None = None
    deadline: float = float("inf")


@dataclass
class _PoolState:
    workers: list[_Worker] = field(default_factory=list)
    consecutive_start_failures: int = 0


class VerifierPool:
    """A small pool of verifier processes with a per-item time limit; thread-safe, callable from any thread.

    Workers are started (``start_method``: ``spawn`` or ``forkserver``) and supervised by one dispatcher thread:
    it hands items to idle workers, kills a worker whose item is not back ``kill_grace_s`` after its time limit and
    starts a replacement. ``submit`` returns a :class:`concurrent.futures.Future` of a :class:`VerifyOutcome`
    (``asyncio.wrap_future`` makes it awaitable).
    """

    START_TIMEOUT_S = 120.0
    MAX_START_FAILURES = 3

    def __init__(
        self,
        num_workers: int = 2,
        *,
        kill_grace_s: float = 1.0,
        start_method: str = "spawn",
        use_alarm: bool | None = None,
        memory_limit_mb: int | None = 4096,
    ) -> None:
        if num_workers < 1:
            raise ValueError(f"VerifierPool needs at least one worker, got num_workers={num_workers}")
        if kill_grace_s < 0:
            raise ValueError(f"kill_grace_s must be >= 0, got {kill_grace_s}")
        if start_method not in ("spawn", "forkserver"):
            # fork would copy the parent's threads and CUDA/Ray state into the workers.
            raise ValueError(f"start_method must be 'spawn' or 'forkserver', got {start_method!r}")
        self.num_workers = num_workers
        self.kill_grace_s = kill_grace_s
        self.use_alarm = hasattr(signal, "setitimer") if use_alarm is None else use_alarm
        self.memory_limit_mb = memory_limit_mb
        self._context = multiprocessing.get_context(start_method)
        if start_method == "forkserver":  # workers then fork from a server that has sympy loaded: fast replacements
            self._context.set_forkserver_preload([__name__, "math_verify"])
        self._lock = threading.Lock()
        self._pending: deque[_Task] = deque()
        self._task_ids = itertools.count()
        self._closed = False
        self._failure: str | None = None
        self._state = _PoolState()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        self._dispatcher = threading.Thread(target=self._dispatch_forever, name="acpo-verifier-pool", daemon=True)
        self._dispatcher.start()
        atexit.register(self.shutdown)

    # -- public API -----------------------------------------------------------------------------------------------

    def submit(self, ground_truth: str, answer: str, time_limit_s: float) -> Future[VerifyOutcome]:
        """Queue one verification; the time limit counts from the moment a worker starts on it."""
        if time_limit_s <= 0:
            raise ValueError(f"time_limit_s must be > 0, got {time_limit_s}")
        future: Future[VerifyOutcome] = Future()
        with self._lock:
            if self._closed or self._failure is not None:
                raise VerifierPoolError(self._failure or "the verifier pool is shut down")
            self._pending.append(_Task(future, ground_truth, answer, time_limit_s, next(self._task_ids)))
            self._wake()
        return future

    def worker_pids(self) -> list[int]:
        """Process ids of the workers that have finished starting."""
        with self._lock:
            return [worker.pid for worker in self._state.workers if worker.pid is not None]

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Stop the dispatcher and every worker; pending items fail with :class:`VerifierPoolError`. Idempotent."""
        with self._lock:
            self._closed = True
            self._wake()
        if self._dispatcher.is_alive() and threading.current_thread() is not self._dispatcher:
            self._dispatcher.join(timeout_s)
        with contextlib.suppress(Exception):
            atexit.unregister(self.shutdown)

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._closed or self._failure is not None

    # -- dispatcher thread ----------------------------------------------------------------------------------------

    def _wake(self) -> None:
        """Interrupt the dispatcher's wait. Called with the lock held."""
        if self._wake_write < 0:
            return
        with contextlib.suppress(BlockingIOError, OSError):  # a full pipe already wakes the dispatcher
            os.write(self._wake_write, b"x")

    def _spawn_worker(self) -> _Worker:
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_worker_main,
            args=(child_conn, self.use_alarm, self.memory_limit_mb),
            name="acpo-verifier",
            daemon=True,
        )
        process.start()
        child_conn.close()
        return _Worker(process=process, conn=parent_conn, spawned_at=time.monotonic())

    def _dispatch_forever(self) -> None:
        state = self._state
        try:
            with self._lock:
                state.workers = [self._spawn_worker() for _ in range(self.num_workers)]
            while True:
                with self._lock:
                    if self._closed or self._failure is not None:
                        break
                self._assign_pending()
                ready = wait(self._waitables(), timeout=self._seconds_to_next_deadline())
                if self._wake_read in ready:
                    with contextlib.suppress(BlockingIOError, OSError):
                        os.read(self._wake_read, 65536)
                for worker in list(state.workers):
                    if worker.conn in ready:
                        self._receive(worker)
                    elif worker.process.sentinel in ready:
                        self._replace(worker, "crashed", f"verifier worker exited ({worker.process.exitcode})")
                self._enforce_deadlines()
        except Exception as error:  # a bug here must not leave callers waiting forever
            logger.exception("acpo verifier pool dispatcher failed")
            with self._lock:
                self._failure = f"verifier pool dispatcher failed: {type(error).__name__}: {error}"
        finally:
            self._stop_workers()

    def _waitables(self) -> list[Any]:
        waitables: list[Any] = [self._wake_read]
        for worker in self._state.workers:
            waitables.extend((worker.conn, worker.process.sentinel))
        return waitables

    def _seconds_to_next_deadline(self) -> float | None:
        deadlines = [worker.deadline for worker in self._state.workers]
        deadlines += [worker.spawned_at + self.START_TIMEOUT_S for worker in self._state.workers if worker.pid is None]
        nearest = min(deadlines, default=float("inf"))
        return None if nearest == float("inf") else max(0.0, nearest - time.monotonic())

    def _assign_pending(self) -> None:
        for worker in self._state.workers:
            if worker.pid is None or worker.task is not None:
                continue
            task = self._next_live_task()
            if task is None:
                return
            try:
                worker.conn.send((task.task_id, task.ground_truth, task.answer, task.time_limit_s))
            except (OSError, ValueError) as error:  # the worker died between two waits
                task.future.set_result(VerifyOutcome("crashed", detail=f"verifier worker unreachable: {error}"))
                self._replace(worker, None, "")
                continue
            worker.task = task
            worker.deadline = time.monotonic() + task.time_limit_s + self.kill_grace_s

    def _next_live_task(self) -> _Task | None:
        with self._lock:
            while self._pending:
                task = self._pending.popleft()
                if task.future.set_running_or_notify_cancel():  # skip items whose caller gave up
                    return task
        return None

    def _receive(self, worker: _Worker) -> None:
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            self._replace(worker, "crashed", f"verifier worker exited ({worker.process.exitcode})")
            return
        if message[0] == "ready":
            with self._lock:
                worker.pid = message[1]
            self._state.consecutive_start_failures = 0
            return
        status, task_id, correct, parsed, detail = message
        task = worker.task
        if task is None or task.task_id != task_id:  # cannot happen: one item per worker at a time
            logger.error("acpo verifier pool: reply for item %s from a worker that is not on it", task_id)
            return
        worker.task, worker.deadline = None, float("inf")
        task.future.set_result(VerifyOutcome(status, bool(correct), bool(parsed), detail))

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for worker in list(self._state.workers):
            if worker.task is not None and now >= worker.deadline:
                limit = worker.task.time_limit_s
                self._replace(worker, "timeout", f"killed after time limit {limit:g} s + grace {self.kill_grace_s:g} s")
            elif worker.pid is None and now >= worker.spawned_at + self.START_TIMEOUT_S:
                self._replace(worker, None, "")

    def _replace(self, worker: _Worker, status: OutcomeStatus | None, detail: str) -> None:
        """Kill ``worker``, resolve its item with ``status`` and start a replacement (unless starts keep failing)."""
        started = worker.pid is not None
        self._kill(worker)
        if worker.task is not None and status is not None:
            if status == "crashed":
                logger.warning("acpo verifier: %s while verifying an answer; it scores 0", detail)
            worker.task.future.set_result(VerifyOutcome(status, detail=detail))
        state = self._state
        if not started:
            state.consecutive_start_failures += 1
            if state.consecutive_start_failures >= self.MAX_START_FAILURES:
                self._fail_pool(
                    f"verifier workers failed to start {state.consecutive_start_failures} times in a row "
                    f"(last exit code {worker.process.exitcode}); is math-verify installed in this environment?"
                )
                return
        with self._lock:
            state.workers[state.workers.index(worker)] = self._spawn_worker()

    def _fail_pool(self, reason: str) -> None:
        logger.error("acpo verifier pool: %s", reason)
        with self._lock:
            self._failure = reason

    @staticmethod
    def _kill(worker: _Worker) -> None:
        with contextlib.suppress(Exception):
            worker.process.kill()
        with contextlib.suppress(Exception):
            worker.process.join(5.0)
        with contextlib.suppress(Exception):
            worker.conn.close()

    def _stop_workers(self) -> None:
        with self._lock:
            reason = self._failure or "the verifier pool is shut down"
            pending, self._pending = list(self._pending), deque()
            workers = list(self._state.workers)
        idle = [worker for worker in workers if worker.pid is not None and worker.task is None]
        for worker in workers:
            if worker.task is not None:
                pending.append(worker.task)
            if worker in idle:
                with contextlib.suppress(Exception):
                    worker.conn.send(None)
            else:  # busy or still starting: it would not read the request to stop
                self._kill(worker)
        for task in pending:
            if not task.future.done():
                with contextlib.suppress(Exception):  # a cancelled future cannot take an exception
                    task.future.set_exception(VerifierPoolError(reason))
        deadline = time.monotonic() + 2.0
        for worker in idle:
            with contextlib.suppress(Exception):
                worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                self._kill(worker)
            with contextlib.suppress(Exception):
                worker.conn.close()
        with self._lock:  # under the lock: a concurrent _wake must not write to a reused descriptor
            for fd in (self._wake_read, self._wake_write):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake_write = -1


# ---------------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RewardResult:
    """One response's reward. ``no_answer``: no answer found, or none math-verify could read as an expression.
    ``timeout``: the verifier gave no verdict (time limit, or its worker crashed)."""

    score: float
    no_answer: bool
    timeout: bool
    pred: str

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
                logger.warning("acpo reward: empty ground truth %r; the response scores 0", ground_truth)
            result.set_result(RewardResult(0.0, no_answer=True, timeout=False, pred=(answer or "")[:MAX_PRED_CHARS]))
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


_WARNED_GROUND_TRUTHS: set[str] = set()


def _warn_once_about_ground_truth(ground_truth: str) -> None:
    if ground_truth not in _WARNED_GROUND_TRUTHS and len(_WARNED_GROUND_TRUTHS) < 1000:
        _WARNED_GROUND_TRUTHS.add(ground_truth)
        logger.warning("acpo reward: %s %r; answers are only compared to it as text", GOLD_UNPARSABLE, ground_truth)


def _resolve(result: Future[RewardResult], done: Future[VerifyOutcome], answer: str, ground_truth: str) -> None:
    error = done.exception()
    if error is not None:
        result.set_exception(error)  # only VerifierPoolError: the pool itself is unusable
        return
    outcome = done.result()
    if outcome.status == "error":
        logger.warning("acpo reward: math-verify failed on answer %r (%s); it scores 0", answer[:80], outcome.detail)
    elif outcome.detail == GOLD_UNPARSABLE:
        _warn_once_about_ground_truth(ground_truth)
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
    """Step metrics ``acpo/reward_timeout_frac`` and ``acpo/reward_no_answer_frac`` from per-sample reward infos.

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
    return {
        REWARD_TIMEOUT_FRAC: sum(flags["timeout"]) / count,
        REWARD_NO_ANSWER_FRAC: sum(flags["no_answer"]) / count,
    }
