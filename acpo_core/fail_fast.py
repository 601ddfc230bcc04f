"""Fail fast across ranks: one rank's error stops every rank at the next agreed point, with that rank's message.

Under FSDP every forward pass gathers parameters collectively, so a rank that raises between two forwards (packing
its inputs, building a mask, reading the logits out) and simply leaves would leave the other ranks blocked in the
next forward's collective until the NCCL watchdog fires (10 minutes), with the error only in the failed rank's log.
:func:`run_in_lockstep` runs a loop of steps (one micro-batch each) so that this cannot happen:

    for item: prepare(item) -> agree -> run(prepared)      then agree once more after the loop

``agree`` (:func:`agree_on_failure`) is one all-reduce of an error flag (MAX) that every rank joins; a failed rank
stops doing work and joins the next agreement with its error. When any flag is set, the ranks exchange their
messages (one ``all_gather_object``) and every rank raises :class:`RankFailure` naming each failed rank and its
error. Agreements are only placed where no rank is inside a collective, so both kinds of failure are covered:

- in ``prepare``: the agreement right after it stops every rank before the forward;
- in ``run`` after its last collective (the logits' log-softmax running out of memory): the failed rank skips to
  the next agreement, which the others reach after their ``prepare``.

An error raised inside a forward between two of its own collectives (an out-of-memory in a middle layer) cannot be
agreed on this way: the other ranks wait in that layer's collective, which no flag reaches. Works with any backend
whose process group supports all-reduce and ``all_gather_object`` (gloo on CPU, nccl on GPU: ``device`` is then the
rank's CUDA device). ``group`` None (or no initialised process group): the loop runs alone and an error is
re-raised as it is; pass ``torch.distributed.group.WORLD`` for the default group.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = ["RankFailure", "agree_on_failure", "run_in_lockstep"]

Item = TypeVar("Item")
Prepared = TypeVar("Prepared")
# Characters of a failed rank's formatted traceback that travel to the other ranks.
MESSAGE_CHARS = 4000


class RankFailure(RuntimeError):
    """One or more ranks failed: raised on every rank, the message names each failed rank and its error."""


def _distributed(group: Any) -> bool:
    return group is not None and dist.is_available() and dist.is_initialized()


def agree_on_failure(
    error: BaseException | None, group: Any = None, device: torch.device | str = "cpu", what: str = "step"
) -> None:
    """Agree across the ranks of ``group`` whether any failed; raise :class:`RankFailure` on every rank if so.

    Every rank of ``group`` must call this at the same point (it is a collective; None: no collective, this
    process alone). ``error``: this rank's failure, or None. ``device``: where the flag tensor lives (the backend's
    device: CPU for gloo, the rank's GPU for nccl). ``what``: the work in words, for the message. Without a
    process group: re-raises ``error`` unchanged.
    """
    if not _distributed(group):
        if error is not None:
            raise error
        return
    flag = torch.tensor([0 if error is None else 1], dtype=torch.long, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
    if int(flag.item()) == 0:
        return
    mine = None if error is None else "".join(traceback.format_exception(error)).strip()[-MESSAGE_CHARS:]
    messages: list[str | None] = [None] * dist.get_world_size(group)
    dist.all_gather_object(messages, mine, group=group)
    ranks = [dist.get_global_rank(group, i) for i in range(len(messages))]
    failed = [(rank, message) for rank, message in zip(ranks, messages, strict=True) if message is not None]
    here = dist.get_rank()
    lines = "\n".join(f"--- rank {rank} ---\n{message}" for rank, message in failed)
    summary = (
        f"{what} failed on rank(s) {[rank for rank, _ in failed]} (this is rank {here}); every rank stops here "
        f"rather than wait in a collective the failed rank(s) will not join:\n{lines}"
    )
    raise RankFailure(summary) from error


def run_in_lockstep(
    items: Sequence[Item],
    prepare: Callable[[Item], Prepared],
    run: Callable[[Item, Prepared], None],
    group: Any = None,
    device: torch.device | str = "cpu",
    what: str = "step",
) -> None:
    """Run ``run(item, prepare(item))`` for every item, agreeing on failure before each ``run`` and at the end.

    ``prepare`` must hold no collective (it is where a rank may fail alone before the forward); ``run`` holds the
    collectives (the forward), the same number on every rank. ``len(items)`` must be equal on all ranks. Raises
    :class:`RankFailure` on every rank when any rank failed (see the module docstring), else nothing.
    """
    error: BaseException | None = None
    for item in items:
        prepared = None
        if error is None:
            try:
                prepared = prepare(item)
            except Exception as err:  # any failure must reach the other ranks
                error = err
        agree_on_failure(error, group, device, what)
        try:
            run(item, prepared)
        except Exception as err:  # reported at the next agreement
            error = err
    agree_on_failure(error, group, device, what)
