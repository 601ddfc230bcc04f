"""A math-verify worker process (§7): one item at a time, each under a per-item time limit and a memory cap.

The process side of :mod:`recipe.acpo.reward.verifier_pool`. math-verify's own time limits use ``SIGALRM``, which
only works on a process's main thread, so verification runs in worker processes: each item runs under an interval
timer here (the parent kills a worker stuck in C code), and the worker's address space may grow by a bounded amount
(a ``2^{2^{2^{2^{2^{2}}}}}`` would take gigabytes). Both sides of a comparison are read as math with
``data_prep.ground_truth.parse_math``, the rule ``data_prep.check`` applies to ground truths.

The protocol on the worker's pipe: it sends ``("ready", pid)`` once, then answers each
``(task_id, ground_truth, answer, time_limit_s)`` with ``(status, task_id, correct, parsed, detail)``, status
``ok``, ``timeout`` or ``error``; ``None`` or a closed pipe ends it. This module imports neither verl nor torch: a
worker imports it and must start fast.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from multiprocessing.connection import Connection
from typing import Any

from data_prep.ground_truth import is_expression, parse_math

__all__ = ["GOLD_UNPARSABLE", "verify_answer", "worker_main"]


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


def worker_main(conn: Connection, use_alarm: bool, memory_limit_mb: int | None) -> None:
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
