"""Turn the last Stage-1 checkpoint into the Hugging Face folder Stage 2 starts from (§8).

    python -m recipe.acpo.merge --checkpoint-dir CHECKPOINTS --target-dir MERGED [--step N] [--overwrite]
        [--drop-optimizer-state]

``CHECKPOINTS`` is Stage 1's ``trainer.default_local_dir``. By default the step named in
``latest_checkpointed_iteration.txt`` (written by verl once a checkpoint is complete) is merged, else the highest
``global_step_N``. The FSDP shards of ``global_step_N/actor`` are merged by verl's own model merger
(``verl.model_merger``, FSDP backend), which writes the weights in bfloat16 with the config, generation config and
tokenizer of ``global_step_N/actor/huggingface``. A missing directory, a step without an actor checkpoint, or a
partial one (a missing rank shard, no ``fsdp_config.json``, no ``huggingface/config.json``) is a clear error before
anything is written. The merged folder gets an ``acpo_merge.json`` naming its source, which the Stage-2 check reads.
``--drop-optimizer-state`` (off by default): once the merge is written, delete the optimizer shards of every
``global_step_N/actor`` in ``CHECKPOINTS`` (:func:`recipe.acpo.checkpoints.drop_optimizer_state`; at 7B about 61 GB
of each 91 GB checkpoint); the stage can then no longer be resumed with its optimizer state.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipe.acpo.checkpoints import CheckpointError, drop_optimizer_state, latest_step, missing_model_files

__all__ = [
    "MERGE_RECORD",
    "CheckpointError",
    "StageOneCheckpoint",
    "check_stage2_model_path",
    "find_stage1_checkpoint",
    "merge_stage1_checkpoint",
]

MERGE_RECORD = "acpo_merge.json"


@dataclass(frozen=True)
class StageOneCheckpoint:
    """A complete FSDP actor checkpoint: ``<checkpoint_dir>/global_step_<step>/actor``."""

    actor_dir: Path
    step: int
    world_size: int


def find_stage1_checkpoint(checkpoint_dir: str | Path, step: int | None = None) -> StageOneCheckpoint:
    """Locate and check the actor checkpoint to merge (the latest step unless ``step`` is given).

    Raises:
        CheckpointError: the directory or step is missing, or the actor checkpoint is partial (naming what is missing).
    """
    root = Path(checkpoint_dir)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint directory {root} does not exist")
    chosen = latest_step(root) if step is None else step
    if chosen is None:
        raise CheckpointError(f"no global_step_N folder in {root} (Stage 1's trainer.default_local_dir?)")
    actor_dir = root / f"global_step_{chosen}" / "actor"
    if not actor_dir.is_dir():
        raise CheckpointError(f"{actor_dir} does not exist: no actor checkpoint for step {chosen} in {root}")
    fsdp_config = actor_dir / "fsdp_config.json"
    if not fsdp_config.is_file():
        raise CheckpointError(
            f"{fsdp_config} is missing: {actor_dir} is not a complete FSDP checkpoint (Megatron checkpoints are "
            "merged with python -m verl.model_merger merge --backend megatron)"
        )
    try:
        world_size = int(json.loads(fsdp_config.read_text(encoding="utf-8"))["world_size"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{fsdp_config} has no valid world_size ({err})") from err
    missing = [
        f"model_world_size_{world_size}_rank_{rank}.pt"
        for rank in range(world_size)
        if not (actor_dir / f"model_world_size_{world_size}_rank_{rank}.pt").is_file()
    ]
    if missing:
        raise CheckpointError(f"partial checkpoint {actor_dir}: missing model shard(s) {', '.join(missing)}")
    if not (actor_dir / "huggingface" / "config.json").is_file():
        raise CheckpointError(f"partial checkpoint {actor_dir}: huggingface/config.json (model config) is missing")
    return StageOneCheckpoint(actor_dir=actor_dir, step=chosen, world_size=world_size)


def merge_stage1_checkpoint(
    checkpoint_dir: str | Path,
    target_dir: str | Path,
    step: int | None = None,
    overwrite: bool = False,
    drop_optimizer: bool = False,
) -> Path:
    """Merge the Stage-1 actor checkpoint into a Hugging Face folder ``target_dir``; return it.

    ``drop_optimizer``: after the merge is written (record last), delete the optimizer shards of every step of
    ``checkpoint_dir`` (:func:`recipe.acpo.checkpoints.drop_optimizer_state`), bounding the disk Stage 2 runs beside.

    Raises:
        CheckpointError: see :func:`find_stage1_checkpoint`.
        FileExistsError: ``target_dir`` exists and is not empty, and ``overwrite`` is false.
    """
    checkpoint = find_stage1_checkpoint(checkpoint_dir, step)
    target = Path(target_dir)
    if target.exists() and any(target.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{target} is not empty: pass --overwrite to replace it")
        shutil.rmtree(target)

    from verl.model_merger.base_model_merger import ModelMergerConfig
    from verl.model_merger.fsdp_model_merger import FSDPModelMerger

    config = ModelMergerConfig(
        operation="merge",
        backend="fsdp",
        local_dir=str(checkpoint.actor_dir),
        target_dir=str(target),
        hf_model_config_path=str(checkpoint.actor_dir / "huggingface"),
    )
    target.mkdir(parents=True, exist_ok=True)
    merger = FSDPModelMerger(config)
    merger.merge_and_save()
    merger.cleanup()
    record = {
        "source": str(checkpoint.actor_dir.resolve()),
        "global_step": checkpoint.step,
        "world_size": checkpoint.world_size,
    }
    (target / MERGE_RECORD).write_text(json.dumps(record, indent=1), encoding="utf-8")
    if drop_optimizer:
        removed, freed = drop_optimizer_state(Path(checkpoint_dir))
        print(f"dropped {len(removed)} optimizer shard(s) of {checkpoint_dir} ({freed / 1e9:.1f} GB)")
    return target


def check_stage2_model_path(model_config: Any) -> None:
    """§8: Stage 2 starts from the merged Stage-1 checkpoint, which is also its KL reference.

    ``model_config`` is the ``actor_rollout_ref.model`` section. Raises ``ValueError`` when ``path`` is unset or is
    not a local Hugging Face folder (``config.json`` and weights); warns when the folder was not written by
    ``python -m recipe.acpo.merge`` (no ``acpo_merge.json``). Remote paths (``hdfs://...``) are left to verl.
    """
    from omegaconf import OmegaConf

    hint = "merge Stage 1 first: python -m recipe.acpo.merge --checkpoint-dir STAGE1_CKPTS --target-dir MERGED"
    if OmegaConf.is_config(model_config) and OmegaConf.is_missing(model_config, "path"):
        raise ValueError(f"Stage 2 needs actor_rollout_ref.model.path=MERGED, the merged Stage-1 checkpoint; {hint}")
    raw = model_config.get("path") if hasattr(model_config, "get") else None
    if not raw:
        raise ValueError(f"Stage 2 needs actor_rollout_ref.model.path=MERGED, the merged Stage-1 checkpoint; {hint}")
    if "://" in str(raw):
        return
    path = Path(str(raw)).expanduser()
    if not path.is_dir():
        raise ValueError(f"actor_rollout_ref.model.path={raw} does not exist: {hint}")
    missing = missing_model_files(path)
    if missing:
        raise ValueError(
            f"actor_rollout_ref.model.path={raw} is not a Hugging Face folder (no {' and no '.join(missing)}): {hint}"
        )
    if not (path / MERGE_RECORD).is_file():
        warnings.warn(
            f"{path} has no {MERGE_RECORD}: it was not written by recipe.acpo.merge; Stage 2 expects the merged "
            "final Stage-1 checkpoint as its start and KL reference",
            stacklevel=2,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recipe.acpo.merge",
        description="Merge the last Stage-1 FSDP checkpoint into the Hugging Face folder Stage 2 starts from.",
    )
    parser.add_argument("--checkpoint-dir", required=True, help="Stage 1's trainer.default_local_dir")
    parser.add_argument("--target-dir", required=True, help="the Hugging Face folder to write")
    parser.add_argument("--step", type=int, default=None, help="merge global_step_STEP (default: the latest)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty target directory")
    parser.add_argument(
        "--drop-optimizer-state",
        action="store_true",
        help="after merging, delete the optimizer shards (optim_world_size_*_rank_*.pt) of every global_step_N/actor "
        "in --checkpoint-dir: about 61 of each 91 GB at 7B; the stage can no longer be resumed with its optimizer",
    )
    args = parser.parse_args(argv)
    try:
        target = merge_stage1_checkpoint(
            args.checkpoint_dir, args.target_dir, args.step, args.overwrite, args.drop_optimizer_state
        )
    except (CheckpointError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"merged Stage-1 checkpoint into {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
