"""verl's validation pass as a command: ``python -m recipe.acpo.main_acpo ... trainer.val_only=True``.

k samples per prompt of the validation files (``rollout.val_kwargs.n``), scored by the run's reward manager and
dumped by verl with their scores to ``trainer.validation_data_dir``. Shared by the evaluation
(``recipe.acpo.evaluate``: Acc@k on benchmarks) and the pass-rate pre-pass (``recipe.acpo.pass_rate``: p(q) of each
training prompt, §6).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

ENTRY_POINT = "recipe.acpo.main_acpo"


def hydra_string(value: str) -> str:
    """A Hydra override value that stays one string whatever it holds (paths with '=' or ',')."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def hydra_list(values: Iterable[str]) -> str:
    return "[" + ",".join(hydra_string(value) for value in values) + "]"


def validation_only_overrides(
    *,
    model: str | Path,
    train_files: Sequence[str | Path],
    val_files: Sequence[str | Path],
    k: int,
    temperature: float,
    top_p: float,
    top_k: int,
    dump_dir: Path,
) -> list[str]:
    """Overrides that make the entry point sample ``k`` responses per row of ``val_files``, dump them, and stop.

    verl builds a training dataloader and checks the training settings even when it only validates: ``train_files``
    serve that (nothing trains) and the run is one step long.
    """
    return [
        f"actor_rollout_ref.model.path={hydra_string(str(model))}",
        f"data.train_files={hydra_list(str(path) for path in train_files)}",
        f"data.val_files={hydra_list(str(path) for path in val_files)}",
        f"actor_rollout_ref.rollout.val_kwargs.n={k}",
        f"actor_rollout_ref.rollout.val_kwargs.do_sample={temperature > 0}",
        f"actor_rollout_ref.rollout.val_kwargs.temperature={temperature}",
        f"actor_rollout_ref.rollout.val_kwargs.top_p={top_p}",
        f"actor_rollout_ref.rollout.val_kwargs.top_k={top_k}",
        "trainer.val_only=True",
        "trainer.val_before_train=True",
        "trainer.total_training_steps=1",
        "trainer.resume_mode=disable",
        f"trainer.validation_data_dir={hydra_string(str(dump_dir))}",
    ]


def entry_point_command(config_name: str, overrides: Sequence[str]) -> list[str]:
    """``python -m recipe.acpo.main_acpo --config-name NAME overrides...`` with this interpreter."""
    return [sys.executable, "-m", ENTRY_POINT, "--config-name", config_name, *overrides]
