"""Where a model lies on disk: verl's checkpoint folders and Hugging Face model folders.

The one place that knows both layouts, for the tools that take a model or a checkpoint (``recipe.acpo.merge``,
``recipe.acpo.evaluate``, the entry point's checks in ``recipe.acpo.main_acpo``):

- verl's checkpoint root (``trainer.default_local_dir``) holds ``global_step_N`` folders, each with the actor's
  shards under ``actor/``, and ``latest_checkpointed_iteration.txt``, which verl writes once a step's checkpoint
  is complete;
- a Hugging Face model folder holds ``config.json``, the weights and (for a policy) the tokenizer files.

Disk (bounded by :func:`drop_optimizer_state` and :func:`prune_step_folders`): an FSDP actor folder holds per rank
``model_world_size_W_rank_R.pt`` (the parameters, fp32 under verl's mixed precision), ``optim_world_size_W_rank_R.pt``
(Adam's two moments, fp32: twice the model shards) and a small ``extra_state`` file. Once a stage is merged the
optimizer shards serve only a resume of that stage; verl's ``trainer.max_actor_ckpt_to_keep`` forgets the folders
saved before a restart (its list of saved paths starts empty), so they are never pruned without
:func:`prune_step_folders`.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

__all__ = [
    "LATEST_STEP_FILE",
    "TOKENIZER_FILES",
    "WEIGHT_PATTERNS",
    "CheckpointError",
    "drop_optimizer_state",
    "find_verl_actor_checkpoint",
    "has_tokenizer_files",
    "has_weights",
    "is_hf_model_folder",
    "latest_step",
    "missing_model_files",
    "prune_step_folders",
    "step_folders",
]

LATEST_STEP_FILE = "latest_checkpointed_iteration.txt"
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_STEP_FOLDER = re.compile(r"^global_step_(\d+)$")
# verl's FSDP checkpoint manager's optimizer shards (verl.utils.checkpoint.fsdp_checkpoint_manager).
_OPTIMIZER_SHARD = re.compile(r"^optim_world_size_\d+_rank_\d+\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing or incomplete; the message names the file or folder."""


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face model folders
# ----------------------------------------------------------------------------------------------------------------


def has_weights(folder: Path) -> bool:
    """``folder`` holds model weights (safetensors, or PyTorch ``.bin`` files)."""
    return any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS)


def has_tokenizer_files(folder: Path) -> bool:
    """``folder`` holds one of the files ``AutoTokenizer`` loads a tokenizer from."""
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def missing_model_files(folder: Path, *, weights: bool = True, tokenizer_folder: Path | None = None) -> list[str]:
    """What ``folder`` lacks to be a Hugging Face model folder, in words: ``config.json``, the weights (unless
    ``weights`` is false) and, when ``tokenizer_folder`` is given, tokenizer files there."""
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    if weights and not has_weights(folder):
        missing.append("model weights (*.safetensors or pytorch_model*.bin)")
    if tokenizer_folder is not None and not has_tokenizer_files(tokenizer_folder):
        missing.append(f"tokenizer files (one of {', '.join(TOKENIZER_FILES)})")
    return missing


def is_hf_model_folder(folder: Path) -> bool:
    """A Hugging Face model folder: ``config.json`` and weights."""
    return not missing_model_files(folder)


# ----------------------------------------------------------------------------------------------------------------
# verl's checkpoint folders
# ----------------------------------------------------------------------------------------------------------------


def step_folders(root: Path) -> dict[int, Path]:
    """The ``global_step_N`` folders of a checkpoint root, by step (empty when ``root`` is no folder)."""
    if not root.is_dir():
        return {}
    return {
        int(match.group(1)): child
        for child in root.iterdir()
        if child.is_dir() and (match := _STEP_FOLDER.match(child.name))
    }


def latest_step(root: Path) -> int | None:
    """The step named in ``latest_checkpointed_iteration.txt``, else the highest ``global_step_N``; None if neither.

    Raises:
        CheckpointError: the file holds something other than a step number.
    """
    latest = root / LATEST_STEP_FILE
    if latest.is_file():
        text = latest.read_text(encoding="utf-8").strip()
        if not text.isdigit():
            raise CheckpointError(f"{latest} should hold a step number, found {text!r}")
        return int(text)
    steps = step_folders(root)
    return max(steps) if steps else None


def find_verl_actor_checkpoint(path: Path) -> Path | None:
    """The ``global_step_N/actor`` folder that ``path`` designates, or None when it is no verl checkpoint.

    Accepted: the actor folder itself, a ``global_step_N`` folder, or the checkpoint root
    (``trainer.default_local_dir``), whose latest step (:func:`latest_step`) is taken, else its highest step with
    an actor folder.
    """
    if path.name == "actor" and _STEP_FOLDER.match(path.parent.name):
        return path
    if _STEP_FOLDER.match(path.name) and (path / "actor").is_dir():
        return path / "actor"
    with_actor = {step: folder / "actor" for step, folder in step_folders(path).items() if (folder / "actor").is_dir()}
    if not with_actor:
        return None
    latest = latest_step(path)
    return with_actor[latest] if latest in with_actor else with_actor[max(with_actor)]


def drop_optimizer_state(root: Path) -> tuple[list[Path], int]:
    """Delete the optimizer shards of every ``global_step_N/actor`` folder under the checkpoint root ``root``.

    The model shards, ``extra_state`` and ``huggingface/`` stay (the folder can still be merged or evaluated, not
    resumed with its optimizer). Returns the files deleted and their bytes. For a stage that is finished and merged
    (``python -m recipe.acpo.merge --drop-optimizer-state``): at 7B this frees two thirds of each checkpoint.
    """
    removed: list[Path] = []
    freed = 0
    for _, folder in sorted(step_folders(root).items()):
        actor = folder / "actor"
        if not actor.is_dir():
            continue
        for shard in sorted(actor.iterdir()):
            if shard.is_file() and _OPTIMIZER_SHARD.match(shard.name):
                freed += shard.stat().st_size
                shard.unlink()
                removed.append(shard)
    return removed, freed


def prune_step_folders(root: Path, keep: int, current_step: int) -> list[Path]:
    """Delete the ``global_step_N`` folders below ``current_step`` beyond the newest ``keep`` (counting the current).

    verl's ``max_actor_ckpt_to_keep`` prunes only what the running process saved; this also catches the folders
    left by an earlier run of the same ``trainer.default_local_dir`` (a restart). Folders above ``current_step`` (a
    run resumed from an earlier step) are left alone. ``keep`` < 1 keeps everything. Returns the folders deleted.
    """
    if keep < 1:
        return []
    older = sorted((step for step in step_folders(root) if step < current_step), reverse=True)
    doomed = [root / f"global_step_{step}" for step in older[keep - 1 :]]
    for folder in doomed:
        shutil.rmtree(folder, ignore_errors=True)
    return doomed
