"""recipe.acpo.seeding: the stream name each prompt row submitted for rollout gets (training and validation)."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf
from transfer_queue import KVBatchMeta
from verl.utils import tensordict_utils as tu

from recipe.acpo.agent_loop import SAMPLE_BURST_FIELD, SAMPLE_BURST_SIZE_FIELD
from recipe.acpo.seeding import SAMPLE_STREAM_FIELD, SampleStreamTagger, cpu_rollout_servers, seed_rollouts


def _batch(prompts: list[str], global_steps: int, validate: bool = False) -> Any:
    batch = tu.get_tensordict({"raw_prompt": [[{"role": "user", "content": p}] for p in prompts]})
    tu.assign_non_tensor_data(batch, "global_steps", global_steps)
    if validate:
        tu.assign_non_tensor_data(batch, "validate", True)
    return batch


def test_rows_are_named_by_pass_step_and_rank_among_identical_prompts() -> None:
    tag = SampleStreamTagger()
    streams = tu.get(tag(_batch(["a", "b", "a"], 3)), SAMPLE_STREAM_FIELD)
    assert list(streams) == ["train:3:0", "train:3:0", "train:3:1"]
    # A validation pass of the same step has its own streams; its batches count duplicates across the whole pass.
    assert list(tu.get(tag(_batch(["a"], 3, validate=True)), SAMPLE_STREAM_FIELD)) == ["val:3:0"]
    assert list(tu.get(tag(_batch(["a", "c"], 3, validate=True)), SAMPLE_STREAM_FIELD)) == ["val:3:1", "val:3:0"]
    # The next step starts counting afresh.
    assert list(tu.get(tag(_batch(["a"], 4)), SAMPLE_STREAM_FIELD)) == ["train:4:0"]


def test_batches_are_tagged_and_sampled_back_in_submission_order() -> None:
    class Manager:
        def __init__(self) -> None:
            self.seen: list[list[str]] = []

        def generate_sequences(self, batch: Any) -> None:
            self.seen.append(list(tu.get(batch, SAMPLE_STREAM_FIELD)))

    class ReplayBuffer:
        def __init__(self, keys: list[str]) -> None:
            self.keys = keys

        def sample(self, global_steps: int, partition_id: str, batch_size: int) -> tuple[KVBatchMeta, dict]:
            return KVBatchMeta(keys=self.keys, tags=[{"key": k} for k in self.keys], partition_id=partition_id), {}

    # Trajectories as they finished generating: uid-b's before uid-a's, sessions out of order.
    finished = ["uid-b_1_0", "uid-a_1_0", "uid-b_0_0", "uid-a_0_0", "uid-a_10_0", "uid-a_2_0"]
    trainer = type("Trainer", (), {"replay_buffer": ReplayBuffer(finished)})()
    manager = seed_rollouts(trainer, Manager())
    batch = _batch(["x", "x"], 1)
    tu.assign_non_tensor_stack(batch, "uid", ["uid-a", "uid-b"])
    manager.generate_sequences(batch)
    assert manager.seen == [["train:1:0", "train:1:1"]]
    meta, _ = trainer.replay_buffer.sample(global_steps=1, partition_id="train", batch_size=2)
    assert meta.keys == ["uid-a_0_0", "uid-a_1_0", "uid-a_2_0", "uid-a_10_0", "uid-b_0_0", "uid-b_1_0"]
    assert [t["key"] for t in meta.tags] == meta.keys and meta.partition_id == "train"


def test_each_submission_is_named_a_burst_of_its_rows_times_n_when_asked() -> None:
    tag = SampleStreamTagger(requests_per_prompt=(8, 4))
    train = tag(_batch(["a", "b", "a"], 3))
    assert list(tu.get(train, SAMPLE_BURST_FIELD)) == ["train:3:0"] * 3
    assert list(tu.get(train, SAMPLE_BURST_SIZE_FIELD)) == [24] * 3
    # A validation pass in two batches: two bursts of rows x val n; verl's per-row n (__rollout_n__) counts as given.
    first = tag(_batch(["a", "c"], 3, validate=True))
    second = _batch(["d", "e"], 3, validate=True)
    tu.assign_non_tensor_stack(second, "__rollout_n__", [1, 2])
    second = tag(second)
    assert list(tu.get(first, SAMPLE_BURST_FIELD)) == ["val:3:0"] * 2 and list(
        tu.get(first, SAMPLE_BURST_SIZE_FIELD)
    ) == [8, 8]
    assert list(tu.get(second, SAMPLE_BURST_FIELD)) == ["val:3:1"] * 2
    assert list(tu.get(second, SAMPLE_BURST_SIZE_FIELD)) == [3, 3]
    # The next step's first submission is burst 0 again; without requests_per_prompt no burst is named.
    assert list(tu.get(tag(_batch(["a"], 4)), SAMPLE_BURST_FIELD)) == ["train:4:0"]
    assert SAMPLE_BURST_FIELD not in SampleStreamTagger()(_batch(["a"], 4))


def _config(name: str, workers: int) -> Any:
    rollout = {"name": name, "n": 8, "val_kwargs": {"n": 4}}
    return OmegaConf.create(
        {"actor_rollout_ref": {"rollout": rollout}, "trainer": {"nnodes": 1, "n_gpus_per_node": workers}}
    )


def test_bursts_are_named_only_for_the_one_cpu_rollout_server() -> None:
    assert cpu_rollout_servers(_config("cpu", 1)) == 1
    assert cpu_rollout_servers(_config("cpu", 2)) == 2
    assert cpu_rollout_servers(_config("vllm", 1)) is None

    class Manager:
        def __init__(self) -> None:
            self.seen: list[Any] = []

        def generate_sequences(self, batch: Any) -> None:
            self.seen.append(batch)

    for config, named in ((_config("cpu", 1), True), (_config("cpu", 2), False), (_config("vllm", 1), False)):
        trainer = type("Trainer", (), {"config": config})()
        manager = seed_rollouts(trainer, Manager())
        manager.generate_sequences(_batch(["x", "y"], 1))
        batch = manager.seen[-1]
        assert (SAMPLE_BURST_FIELD in batch) is named
        if named:
            assert list(tu.get(batch, SAMPLE_BURST_SIZE_FIELD)) == [16, 16]
