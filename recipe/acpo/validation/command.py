"""verl's validation pass as a command: ``python -m recipe.acpo.main_acpo ... trainer.val_only=True``.

k samples per prompt of the validation files (``rollout.val_kwargs.n``), scored by the run's reward manager and
dumped by verl with their scores to ``trainer.validation_data_dir``. Shared by the evaluation
(``recipe.acpo.evaluate``: Acc@k on benchmarks) and the pass-rate pre-pass (``recipe.acpo.pass_rate``: p(q) of each
training prompt, §6). verl's dump does not say where a sample came from, so both wrap the run's reward manager in
``recipe.acpo.validation.tagging_reward_manager``, which copies the fields they need (the benchmark, the row number)
into each sample's reward information (:func:`tagging_reward_manager_overrides`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from recipe.acpo.config_search_path import CONFIG_DIR
from recipe.acpo.reward import SCORE_IN_AGENT_LOOP_KEY

ENTRY_POINT = "recipe.acpo.main_acpo"
# The tagging reward manager (recipe/acpo/validation/tagging_reward_manager.py) and the config keys it reads.
TAGGING_MANAGER_NAME = "TaggingRewardManager"
TAGGING_MANAGER_MODULE = "pkg://recipe.acpo.validation.tagging_reward_manager"
INNER_MANAGER_KEY = "acpo_validation.reward_manager"
TAGS_KEY = "acpo_validation.tags"
PROJECT_ROOT = Path(__file__).resolve().parents[3]


class ValidationRunError(RuntimeError):
    """The validation pass cannot be set up; the message names the config or setting at fault."""


def hydra_string(value: str) -> str:
    """A Hydra override value that stays one string whatever it holds (paths with '=' or ',')."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def hydra_list(values: Iterable[str]) -> str:
    return "[" + ",".join(hydra_string(value) for value in values) + "]"


def compose_run_config(config_name: str, overrides: Sequence[str]) -> Any:
    """The run's configuration as ``recipe.acpo.main_acpo`` composes it (a bad override fails here, before Ray)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    if not (CONFIG_DIR / f"{config_name}.yaml").is_file():
        raise ValidationRunError(f"no config named {config_name!r} in {CONFIG_DIR}")
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            return compose(config_name=config_name, overrides=list(overrides))
    except HydraException as err:
        raise ValidationRunError(f"the overrides do not compose with --config-name {config_name}: {err}") from err


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


def training_size_overrides(config: Any) -> list[str]:
    """verl checks the micro-batch settings even when it only validates: set those the config leaves unset to 1
    (with dynamic batch sizes verl ignores them)."""
    if config.actor_rollout_ref.actor.get("use_dynamic_bsz"):
        return []
    sections = {
        "actor_rollout_ref.actor": "ppo_micro_batch_size",
        "actor_rollout_ref.rollout": "log_prob_micro_batch_size",
        "actor_rollout_ref.ref": "log_prob_micro_batch_size",
    }
    overrides = []
    for section, key in sections.items():
        node = OmegaConf.select(config, section)
        if node is not None and node.get(key) is None and node.get(f"{key}_per_gpu") is None:
            overrides.append(f"{section}.{key}_per_gpu=1")
    return overrides


def tagging_reward_manager_overrides(config: Any, tags: Sequence[str]) -> list[str]:
    """Overrides that put the run's own reward manager under ``acpo_validation.reward_manager`` and the tagging one
    in its place, copying ``tags`` (``field`` or ``extra_info.key`` of the data row) into each sample's dumped
    reward information (``recipe.acpo.validation.tagging_reward_manager``)."""
    spec = OmegaConf.to_container(config.reward.reward_manager, resolve=True)
    if spec.get("name") == TAGGING_MANAGER_NAME:
        raise ValidationRunError(f"reward.reward_manager already is the validation pass's {TAGGING_MANAGER_NAME}")

    def leaves(node: dict[str, Any], prefix: str) -> Iterable[str]:
        for key, value in node.items():
            if key == "_target_":
                continue
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}.{key}")
            else:
                yield f"+{prefix}.{key}=" + ("null" if value is None else hydra_string(str(value)))

    return [
        *leaves(spec, INNER_MANAGER_KEY),
        f"+{TAGS_KEY}={hydra_list(tags)}",
        "reward.reward_manager.source=importlib",
        f"reward.reward_manager.name={TAGGING_MANAGER_NAME}",
        f"reward.reward_manager.module.path={TAGGING_MANAGER_MODULE}",
        # The tags are added by the manager, so the agent loop must leave the scoring to it.
        f"++reward.reward_kwargs.{SCORE_IN_AGENT_LOOP_KEY}=false",
    ]


def entry_point_command(config_name: str, overrides: Sequence[str]) -> list[str]:
    """``python -m recipe.acpo.main_acpo --config-name NAME overrides...`` with this interpreter."""
    return [sys.executable, "-m", ENTRY_POINT, "--config-name", config_name, *overrides]


def entry_point_env() -> dict[str, str]:
    """This process's environment with the project root on ``PYTHONPATH``, so that ``recipe.acpo`` imports in Ray's
    workers wherever the tool is started."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    return env
