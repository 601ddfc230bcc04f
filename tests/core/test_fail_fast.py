"""acpo_core.fail_fast: one rank's failure stops every rank at the next agreement, with that rank's error.

Two CPU ranks (gloo, spawned processes) run a loop shaped like FSDP scoring: every ``run`` holds a collective (an
all-reduce standing in for a parameter gather), so a rank that left the loop alone would leave the other blocked in
it. A failure injected on rank 1, in ``prepare`` or after ``run``'s collective, must make both ranks raise within
seconds, the healthy rank naming rank 1's error. The gloo timeout (20 s) turns a hang into a failure, not a stall.
"""

from __future__ import annotations

import datetime
import importlib
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from acpo_core.fail_fast import RankFailure, agree_on_failure, run_in_lockstep

WORLD = 2
MICRO_BATCHES = 4
FAILING_RANK, FAILING_STEP = 1, 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, where: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=20))
    steps_run: list[int] = []

    def prepare(step: int) -> int:
        if where == "prepare" and rank == FAILING_RANK and step == FAILING_STEP:
            raise MemoryError(f"injected failure preparing micro-batch {step}")
        return step

    def run(step: int, prepared: int) -> None:
        gathered = torch.ones(1)
        dist.all_reduce(gathered)  # the forward's collective: every rank must join it
        steps_run.append(step)
        if where == "run" and rank == FAILING_RANK and step == FAILING_STEP:
            raise RuntimeError(f"injected out of memory reading the logits of micro-batch {step}")

    try:
        run_in_lockstep(range(MICRO_BATCHES), prepare, run, group=dist.group.WORLD, what="attribution scoring")
        outcome = "finished"
    except RankFailure as err:
        outcome = f"RankFailure after {steps_run}: {err}"
    except Exception as err:  # a hang turned into a gloo timeout, or the wrong error
        outcome = f"{type(err).__name__}: {err}"
    Path(out, f"rank{rank}.txt").write_text(outcome, encoding="utf-8")
    # Both ranks leave the group together: a rank that tore gloo down while the other was still finishing the
    # traceback exchange made the other abort at exit ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()
    # And leave without the interpreter's teardown: gloo's threads may still abort it at exit (seen once in CI,
    # "terminate called without an active exception", SIGABRT after both outcomes were written).
    os._exit(0)


@pytest.mark.parametrize("where", ["prepare", "run"])
def test_one_rank_failing_stops_both_with_its_error(
    tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Spawned children unpickle the worker by module name: import this file as a top-level module they can find
    # (pytest's importlib mode names it tests.core.test_fail_fast, which is no package).
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    worker = importlib.import_module(Path(__file__).stem)._worker
    start = time.monotonic()
    mp.spawn(worker, args=(_free_port(), where, str(tmp_path)), nprocs=WORLD, join=True)
    elapsed = time.monotonic() - start
    outcomes = [Path(tmp_path, f"rank{rank}.txt").read_text(encoding="utf-8") for rank in range(WORLD)]
    expected_steps = [0, 1] if where == "prepare" else [0, 1, 2]  # nobody enters the collective after the failure
    injected = "injected failure preparing" if where == "prepare" else "injected out of memory"
    for rank, outcome in enumerate(outcomes):
        assert outcome.startswith(f"RankFailure after {expected_steps}"), outcome
        assert "failed on rank(s) [1]" in outcome and f"this is rank {rank}" in outcome
        assert injected in outcome, outcome  # the healthy rank 0 names rank 1's error
    assert elapsed < 60


def test_without_a_process_group_the_error_is_raised_as_it_is() -> None:
    error = ValueError("alone")
    with pytest.raises(ValueError, match="alone") as raised:
        agree_on_failure(error, group=None)
    assert raised.value is error
    done: list[int] = []

    def run(step: int, _: int) -> None:
        done.append(step)
        if step == 1:
            raise KeyError(step)

    with pytest.raises(KeyError):
        run_in_lockstep([0, 1, 2], lambda step: step, run)
    assert done == [0, 1]
