"""Bounded checkpoint disk: dropping a merged stage's optimizer shards, and retention across restarts (fake folders)."""

from __future__ import annotations

from pathlib import Path

from recipe.acpo.checkpoints import drop_optimizer_state, prune_step_folders, step_folders


def _fake_checkpoint(root: Path, step: int, world: int = 2) -> Path:
    actor = root / f"global_step_{step}" / "actor"
    (actor / "huggingface").mkdir(parents=True)
    for rank in range(world):
        (actor / f"model_world_size_{world}_rank_{rank}.pt").write_bytes(b"m" * 10)
        (actor / f"optim_world_size_{world}_rank_{rank}.pt").write_bytes(b"o" * 20)
        (actor / f"extra_state_world_size_{world}_rank_{rank}.pt").write_bytes(b"e")
    (root / f"global_step_{step}" / "data.pt").write_bytes(b"d")
    return actor


def test_drop_optimizer_state_keeps_the_model_shards(tmp_path: Path) -> None:
    actors = [_fake_checkpoint(tmp_path, step) for step in (50, 100)]
    (tmp_path / "global_step_150").mkdir()  # a step folder verl already emptied of actor/
    removed, freed = drop_optimizer_state(tmp_path)
    assert len(removed) == 4 and freed == 80
    for actor in actors:
        names = sorted(p.name for p in actor.iterdir())
        assert names == [
            "extra_state_world_size_2_rank_0.pt",
            "extra_state_world_size_2_rank_1.pt",
            "huggingface",
            "model_world_size_2_rank_0.pt",
            "model_world_size_2_rank_1.pt",
        ]
    assert drop_optimizer_state(tmp_path) == ([], 0)


def test_prune_step_folders_covers_folders_from_before_a_restart(tmp_path: Path) -> None:
    for step in (50, 100, 150, 200, 250):  # 50..150 from a run before the restart, which verl no longer knows
        _fake_checkpoint(tmp_path, step)
    pruned = prune_step_folders(tmp_path, keep=2, current_step=200)
    assert sorted(p.name for p in pruned) == ["global_step_100", "global_step_50"]
    # The current step and the newest older one stay; a step above the current (resumed earlier) is left alone.
    assert sorted(step_folders(tmp_path)) == [150, 200, 250]
    assert prune_step_folders(tmp_path, keep=0, current_step=250) == []
    assert [p.name for p in prune_step_folders(tmp_path, keep=1, current_step=250)] == [
        "global_step_200",
        "global_step_150",
    ]
    assert sorted(step_folders(tmp_path)) == [250]
