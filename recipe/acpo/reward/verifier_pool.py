"""math-verify in a killable pool of worker processes, each item under a per-item time limit (§7).

Some inputs (``9^{9^{9}}``, ``(10^{6})!``) keep sympy busy for minutes, so verification runs in a small pool of
worker processes (``spawn`` by default; the worker is :mod:`recipe.acpo.reward.verifier_worker`), each item under a
per-item time limit enforced twice: an interval timer inside the worker, and a hard kill from the parent
``kill_grace_s`` later for a worker stuck in C code (the killed worker is replaced).

This module imports neither verl nor torch. As with any ``spawn``/``forkserver`` pool, workers also import the
parent's ``__main__`` module: a script that scores must keep its work under ``if __name__ == "__main__":``
(``python -m`` entry points, Ray workers and pytest do).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Literal

from recipe.acpo.reward import verifier_worker

__all__ = ["OutcomeStatus", "VerifierPool", "VerifierPoolError", "VerifyOutcome"]

logger = logging.getLogger(__name__)


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
            self._context.set_forkserver_preload([verifier_worker.__name__, "math_verify"])
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
            target=verifier_worker.worker_main,
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
