"""Prompt polling of verl's replay buffer: a step's generation ends when its last group does, not at the next 2 s tick.

verl 0.9.1's V1 trainer learns that a step's responses are ready by polling TransferQueue: ``ReplayBuffer.sample``
lists the finished groups and, while there are too few, sleeps ``poll_interval`` (2.0 s, fixed, not configurable)
before looking again. On the CPU testbed a step generates in well under a second, so ``timing_s/gen`` and
``timing_s/testing`` read a flat 2.0 s whatever the batch: the trainer sleeps rather than computes.

:func:`poll_promptly` keeps verl's loop and replaces only its sleep: the first look comes ``FIRST_WAIT_S`` after the
previous one, each further wait is ``GROWTH`` times longer, up to ``MAX_WAIT_S``. There is no completion event to wait
on instead (the agent-loop workers publish a group's status in TransferQueue and nothing else), so a wait remains;
it is bounded by ``MAX_WAIT_S``, which is how late the trainer can notice the last group, against one TransferQueue
listing (a local round trip of about a millisecond) per look.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FIRST_WAIT_S", "GROWTH", "MAX_WAIT_S", "poll_promptly"]

FIRST_WAIT_S = 0.01
GROWTH = 1.5
# At most this late after the last group finishes; at most ~10 listings a second once generation runs long.
MAX_WAIT_S = 0.1


def poll_promptly(replay_buffer: Any) -> Any:
    """Make ``replay_buffer`` (verl's ``ReplayBuffer``) look for finished groups with growing, bounded waits.

    Every ``sample`` call starts again from ``FIRST_WAIT_S``. verl's own
    ``_wait_for_next_poll`` still does the waiting (and its periodic progress log) with ``poll_interval`` set to the
    current wait for that one call. Returns the replay buffer.
    """
    ceiling = min(MAX_WAIT_S, float(replay_buffer.poll_interval))
    sample = replay_buffer.sample
    wait_for_next_poll = replay_buffer._wait_for_next_poll
    verl_interval = replay_buffer.poll_interval
    state = {"wait": FIRST_WAIT_S}

    def promptly_sample(*args: Any, **kwargs: Any) -> Any:
        state["wait"] = FIRST_WAIT_S
        return sample(*args, **kwargs)

    def promptly_wait_for_next_poll(partition_id: str, last_debug_time: float) -> float:
        replay_buffer.poll_interval = state["wait"]
        try:
            return wait_for_next_poll(partition_id, last_debug_time)
        finally:
            replay_buffer.poll_interval = verl_interval
            state["wait"] = min(state["wait"] * GROWTH, ceiling)

    replay_buffer.sample = promptly_sample
    replay_buffer._wait_for_next_poll = promptly_wait_for_next_poll
    return replay_buffer
