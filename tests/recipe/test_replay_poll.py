"""recipe.acpo.replay_poll: verl's replay buffer looks for finished groups with growing waits bounded by 0.1 s."""

from __future__ import annotations

import pytest

from recipe.acpo.replay_poll import FIRST_WAIT_S, GROWTH, MAX_WAIT_S, poll_promptly


class _ReplayBuffer:
    """verl's ReplayBuffer loop, reduced: look, and wait ``poll_interval`` while fewer than ``ready_after`` looks."""

    def __init__(self, ready_after: int) -> None:
        self.poll_interval = 2.0
        self.ready_after = ready_after
        self.waits: list[float] = []

    def _wait_for_next_poll(self, partition_id: str, last_debug_time: float) -> float:
        self.waits.append(self.poll_interval)  # verl sleeps time.sleep(self.poll_interval) here
        return last_debug_time

    def sample(self, global_steps: int, partition_id: str, batch_size: int) -> list[str]:
        for _ in range(self.ready_after):
            self._wait_for_next_poll(partition_id, 0.0)
        return ["ready"]


def test_waits_grow_from_10_ms_to_at_most_100_ms_and_start_again_at_every_sample() -> None:
    buffer = poll_promptly(_ReplayBuffer(ready_after=10))
    assert buffer.sample(1, "train", 4) == ["ready"]
    expected = [min(FIRST_WAIT_S * GROWTH**i, MAX_WAIT_S) for i in range(10)]
    assert buffer.waits == pytest.approx(expected)
    assert buffer.waits[-1] == MAX_WAIT_S and buffer.poll_interval == 2.0  # verl's value outside the waits
    buffer.waits.clear()
    buffer.sample(2, "val", 4)
    assert buffer.waits[0] == FIRST_WAIT_S


def test_verl_waits_where_poll_promptly_expects() -> None:
    """verl's replay buffers sleep ``poll_interval`` in ``_wait_for_next_poll``, called from within ``sample``."""
    import inspect

    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer, ReplayBufferAsync

    assert "time.sleep(self.poll_interval)" in inspect.getsource(ReplayBuffer._wait_for_next_poll)
    assert "self._wait_for_next_poll(" in inspect.getsource(ReplayBuffer.sample)
    assert "self._wait_for_next_poll(" in inspect.getsource(ReplayBufferAsync.wait_for_sampleable)
    assert "self.wait_for_sampleable(" in inspect.getsource(ReplayBufferAsync.sample)
