"""Every check of a run's config that can fail before Ray starts, each stopping with a message that names the key or
file at fault (``recipe.acpo.main_acpo.prepare`` runs them in order):

- the ``acpo:`` block (``acpo_core.config.ACPOConfig``), parsed here once: the entry point hands the parsed block to
  the trainer;
- for ``algorithm.adv_estimator=acpo``, the settings ``ACPOTrainer`` needs (no critic, verl's old-log-prob pass, logits
  and no sequence parallelism for packed attribution, Stage 2's merged start folder);
- the train and validation parquets (``data_prep.schema.check_data_files``: missing file, no ``prompt``, no
  ``reward_model.ground_truth``, unparsable answers ...);
- the model path (a local Hugging Face folder, or a hub id unless ``HF_HUB_OFFLINE`` is set);
- ``trainer.device=cpu`` without the CPU preset, or the CPU rollout on a GPU run; the synchronous V1 trainer;
- the training model's attention: ``flash_attention_2`` (verl's default) without an importable ``flash_attn``;
- the rollout seed (``actor_rollout_ref.rollout.seed``), from which every request's random stream is derived;
- the micro-batch sizes, each of which must divide the batch a worker splits into micro-batches;
- the reward manager (imported here once, so a typo fails now rather than in a Ray worker), and scoring in the
  agent loop only with the acpo reward manager and the recipe's agent loop.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from acpo_core.config import ACPOConfig, ACPOConfigError
from recipe.acpo.checkpoints import missing_model_files
from recipe.acpo.merge import check_stage2_model_path

CPU_PRESET = "acpo_cpu"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class SetupError(ValueError):
    """The run cannot start: the message names the file or config key at fault."""


def check_acpo_block(config: DictConfig) -> ACPOConfig:
    """The validated ``acpo:`` block (spec defaults for missing keys): the one place a run parses it."""
    try:
        return ACPOConfig.from_dict(config.get("acpo"))
    except ACPOConfigError as err:
        raise SetupError(str(err)) from err


# Ulysses sequence parallel sizes of the actor (the model attribution runs on), in verl 0.9.1's config.
SEQUENCE_PARALLEL_KEYS = (
    "actor_rollout_ref.actor.ulysses_sequence_parallel_size",
    "actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size",
)


def _sequence_parallel(config: DictConfig) -> str:
    """``"KEY=SIZE"`` of the first Ulysses sequence-parallel size above 1, or ``""``."""
    for key in SEQUENCE_PARALLEL_KEYS:
        size = int(OmegaConf.select(config, key, default=1) or 1)
        if size > 1:
            return f"{key}={size}"
    return ""


def check_acpo_trainer(config: DictConfig, acpo_config: ACPOConfig) -> None:
    """For ``algorithm.adv_estimator=acpo``: the settings ``ACPOTrainer`` needs, beside the parsed ``acpo:`` block.

    Raises ``SetupError`` naming the key for: a critic, verl's log-prob bypass mode (no old-policy entropy), fused
    kernels with packed attribution (no logits), sequence parallelism with packed attribution or the look-ahead judge,
    the look-ahead judge on an engine other than FSDP, and a Stage-2 run whose
    ``actor_rollout_ref.model.path`` is not a Hugging Face folder (§8: the merged Stage-1 checkpoint). Other
    estimators run on verl's own trainer and are not checked here.
    """
    from recipe.acpo.advantage_estimator import ACPO_ADV_ESTIMATOR

    if config.algorithm.get("adv_estimator") != ACPO_ADV_ESTIMATOR:
        return
    if config.get("critic", {}).get("enable", False):
        raise SetupError("ACPO is critic-free (its returns are its advantages): set critic.enable=False")
    rollout_correction = config.algorithm.get("rollout_correction", None)
    if rollout_correction is not None and rollout_correction.get("bypass_mode", False):
        raise SetupError(
            "algorithm.rollout_correction.bypass_mode=True skips verl's old-log-prob pass, and with it the entropy "
            "ACPO segments by (§2): set it to False"
        )
    if acpo_config.attribution.mode == "packed" and config.actor_rollout_ref.model.get("use_fused_kernels", False):
        raise SetupError(
            "actor_rollout_ref.model.use_fused_kernels=True gives no logits to the packed attribution pass: set it "
            "to False or acpo.attribution.mode=naive"
        )
    sequence_parallel = _sequence_parallel(config)
    if acpo_config.attribution.mode == "packed" and sequence_parallel:
        raise SetupError(
            f"{sequence_parallel}: packed attribution scores whole sequences on every Ulysses rank (SP times the "
            "cost, none of the memory saving); set it to 1 or acpo.attribution.mode=naive (verl's own "
            "compute_log_prob, which splits sequences across the SP group)"
        )
    if acpo_config.attribution.judge == "lookahead":
        strategy = OmegaConf.select(config, "actor_rollout_ref.actor.strategy", default="fsdp")
        if strategy not in ("fsdp", "fsdp2"):
            raise SetupError(
                f"actor_rollout_ref.actor.strategy={strategy}: the look-ahead judge (acpo.attribution.judge=lookahead) "
                "generates on the actor's FSDP model; use fsdp or fsdp2, or another judge"
            )
        if sequence_parallel:
            raise SetupError(
                f"{sequence_parallel}: the look-ahead judge generates whole sequences on each rank, which Ulysses "
                "sequence parallelism's attention cannot run; set it to 1 or use another judge"
            )
    if acpo_config.stage == 2:
        try:
            check_stage2_model_path(config.actor_rollout_ref.model)
        except ValueError as err:
            raise SetupError(str(err)) from err


def _as_paths(value: Any, key: str) -> list[str]:
    if value is None:
        raise SetupError(f"{key} is not set: give one parquet file or a list of them")
    paths = list(value) if isinstance(value, ListConfig | list | tuple) else [value]
    if not paths:
        raise SetupError(f"{key} is empty: give one parquet file or a list of them")
    return [os.path.expanduser(str(path)) for path in paths]


def check_data_files(config: DictConfig) -> None:
    """Every train and validation parquet exists and is in verl's schema with a parsable ground truth per row."""
    from data_prep.schema import DataError
    from data_prep.schema import check_data_files as check_files

    paths = _as_paths(config.data.train_files, "data.train_files") + _as_paths(config.data.val_files, "data.val_files")
    try:
        check_files(paths)
    except DataError as err:
        raise SetupError(str(err)) from err


def check_model_path(config: DictConfig) -> None:
    """``actor_rollout_ref.model.path`` is a Hugging Face folder (``config.json`` and tokenizer files) or a hub id."""
    key = "actor_rollout_ref.model.path"
    raw = config.actor_rollout_ref.model.get("path")
    if not raw:
        raise SetupError(f"{key} is not set")
    path = Path(os.path.expanduser(str(raw)))
    if path.exists():
        if not path.is_dir():
            raise SetupError(f"{key}={raw}: a file, not a Hugging Face model folder")
        tokenizer_folder = Path(os.path.expanduser(str(config.actor_rollout_ref.model.get("tokenizer_path") or path)))
        missing = missing_model_files(path, weights=False, tokenizer_folder=tokenizer_folder)
        if missing:
            raise SetupError(f"{key}={raw}: not a Hugging Face model folder, it lacks {' and '.join(missing)}")
        return
    if "://" in str(raw):
        return  # hdfs:// and similar are fetched by verl's copy_to_local
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if _HUB_ID.match(str(raw)) and not offline:
        return  # a hub id: transformers downloads it
    raise SetupError(
        f"{key}={raw}: no such folder"
        + (" (HF_HUB_OFFLINE is set, so it cannot be a hub id either)" if offline and _HUB_ID.match(str(raw)) else "")
    )


# Settings without which verl 0.9.1 fails or hangs on the CPU (acpo_cpu.yaml sets all of them): key -> (test, need).
_CPU_REQUIREMENTS: dict[str, tuple[Any, str]] = {
    "actor_rollout_ref.rollout.name": (lambda v: v == "cpu", "cpu"),
    "actor_rollout_ref.actor.strategy": (lambda v: v == "fsdp2", "fsdp2 (FSDP1 does not run on the CPU)"),
    "actor_rollout_ref.model.use_remove_padding": (lambda v: v is False, "false (no flash-attn on the CPU)"),
    "actor_rollout_ref.model.override_config.attn_implementation": (
        lambda v: v in ("sdpa", "eager"),
        "sdpa or eager (verl defaults to flash_attention_2)",
    ),
    "actor_rollout_ref.rollout.tensor_model_parallel_size": (lambda v: v == 1, "1"),
    "ray_kwargs.ray_init.num_gpus": (
        lambda v: v is not None and v >= 1,
        ">= trainer.n_gpus_per_node (verl asks Ray for a GPU slot per training worker)",
    ),
    "ray_kwargs.ray_init.num_cpus": (
        lambda v: v is not None,
        "set (verl's actors need more CPU slots than a small machine detects; the run would hang)",
    ),
}


def check_device(config: DictConfig) -> bool:
    """Whether this is a CPU run; a CPU run must carry the CPU preset's settings, a GPU run must not use them."""
    device = config.trainer.get("device")
    rollout_name = config.actor_rollout_ref.rollout.get("name")
    if device != "cpu":
        if rollout_name == "cpu":
            raise SetupError(
                f"actor_rollout_ref.rollout.name=cpu needs trainer.device=cpu (got trainer.device={device}); "
                f"use --config-name {CPU_PRESET}"
            )
        return False
    wrong = []
    for key, (test, need) in _CPU_REQUIREMENTS.items():
        value = OmegaConf.select(config, key, default=None)
        if not test(value):
            wrong.append(f"{key}={value} (needs {need})")
    gpus = OmegaConf.select(config, "ray_kwargs.ray_init.num_gpus", default=None) or 0
    workers = config.trainer.n_gpus_per_node * config.trainer.nnodes
    if not wrong and gpus < workers:
        wrong.append(f"ray_kwargs.ray_init.num_gpus={gpus} (needs >= trainer.n_gpus_per_node * nnodes = {workers})")
    if wrong:
        raise SetupError(
            f"trainer.device=cpu needs the CPU preset: run with --config-name {CPU_PRESET}. "
            "These settings do not fit a CPU run: " + "; ".join(wrong)
        )
    return True


# The attention the training model (actor and reference) loads with, and verl 0.9.1's choice when it is unset
# (``HFModelConfig.__post_init__`` in verl/workers/config/model.py: ``override_config.get("attn_implementation",
# "flash_attention_2")``, passed to ``AutoConfig.from_pretrained``; the FSDP engine loads the model with that config).
ATTN_IMPLEMENTATION_KEY = "actor_rollout_ref.model.override_config.attn_implementation"
REMOVE_PADDING_KEY = "actor_rollout_ref.model.use_remove_padding"
VERL_DEFAULT_ATTN_IMPLEMENTATION = "flash_attention_2"


def attention_implementation(config: DictConfig) -> str:
    """The attention implementation verl loads the training model with: the override, else verl's default.

    The one place that reads the attention choice (the flash-attn check below, and the CPU preset's check of the
    same key), so that a run, its evaluation and this check all agree on what an unset key means.
    """
    value = OmegaConf.select(config, ATTN_IMPLEMENTATION_KEY, default=None)
    return VERL_DEFAULT_ATTN_IMPLEMENTATION if value is None else str(value)


def sdpa_overrides(config: DictConfig) -> list[str]:
    """The Hydra overrides of the flash-attn-free route (torch's SDPA over padded batches, as the CPU preset runs).

    ``+key=sdpa`` adds the key where the config does not have it (Hydra refuses ``key=sdpa`` then) and ``key=sdpa``
    replaces it where it does (Hydra refuses ``+key`` then).
    """
    has_key = OmegaConf.select(config, ATTN_IMPLEMENTATION_KEY, default=None) is not None
    return [f"{'' if has_key else '+'}{ATTN_IMPLEMENTATION_KEY}=sdpa", f"{REMOVE_PADDING_KEY}=False"]


def flash_attn_import_error() -> str | None:
    """Why ``flash_attn`` cannot be imported here (``None`` when it can).

    A real import rather than a package look-up: a wheel built for another CUDA, torch or Python is found but fails
    to load (an undefined symbol), which is the usual way a flash-attn install goes wrong.
    """
    try:
        importlib.import_module("flash_attn")
    except (ImportError, OSError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def check_attention_backend(config: DictConfig) -> None:
    """A model to be loaded with ``flash_attention_2`` needs ``flash_attn`` importable in this environment.

    Without it, transformers refuses to load the model inside every training worker, minutes after Ray started (and,
    for an evaluation, after training). The message names the overrides of the flash-attn-free route: torch's SDPA
    over padded batches, as the CPU preset runs.
    """
    implementation = attention_implementation(config)
    if implementation != "flash_attention_2":
        return
    error = flash_attn_import_error()
    if error is None:
        return
    unset = OmegaConf.select(config, ATTN_IMPLEMENTATION_KEY, default=None) is None
    where = " (verl's default: the key is unset)" if unset else ""
    raise SetupError(
        f"{ATTN_IMPLEMENTATION_KEY}=flash_attention_2{where} needs the flash_attn package, which cannot be imported "
        f"here ({error}). Install a flash-attn wheel built for this CUDA, torch and Python (README, GPU install), "
        f"or run without it: {' '.join(sdpa_overrides(config))}"
    )


def check_trainer_mode(config: DictConfig) -> None:
    if not config.trainer.get("use_v1", True):
        raise SetupError("trainer.use_v1=false: the ACPO recipe runs on verl's V1 trainer only")
    mode = config.trainer.v1.trainer_mode
    if mode != "sync":
        raise SetupError(f"trainer.v1.trainer_mode={mode}: the ACPO recipe runs the synchronous trainer only (sync)")


ROLLOUT_SEED_KEY = "actor_rollout_ref.rollout.seed"


def check_rollout_seed(config: DictConfig) -> None:
    """``actor_rollout_ref.rollout.seed`` is an integer: seeded rollouts hash it (``verl_cpu.generation.request_seed``).

    A float, a string or a boolean would either fail inside a Ray worker after minutes of start-up or, worse, be
    coerced into a seed the user did not mean; it stops the run here instead.
    """
    seed = OmegaConf.select(config, ROLLOUT_SEED_KEY, default=None)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SetupError(f"{ROLLOUT_SEED_KEY}={seed!r} must be an integer (the seed of every rollout's sampling)")


# (micro-batch key, whether it splits a mini-batch of the update rather than the whole step's batch)
_MICRO_BATCH_KEYS: tuple[tuple[str, bool], ...] = (
    ("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu", True),
    ("actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu", False),
    ("actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu", False),
)


def check_micro_batch_sizes(config: DictConfig, use_reference_policy: bool) -> None:
    """Each fixed micro-batch size divides the batch a worker splits, or the run stops here rather than mid-step.

    Without dynamic batch sizes, verl asserts (in ``prepare_micro_batches``, after rollout) that a worker's batch
    divides into whole micro-batches: the step's ``train_batch_size * rollout.n`` responses for the log-prob passes,
    ``ppo_mini_batch_size * rollout.n`` for the update, each spread over the training workers.
    """
    n = config.actor_rollout_ref.rollout.n
    workers = config.trainer.n_gpus_per_node * config.trainer.nnodes
    batches = {False: config.data.train_batch_size * n, True: config.actor_rollout_ref.actor.ppo_mini_batch_size * n}
    wrong = []
    for key, splits_mini_batch in _MICRO_BATCH_KEYS:
        role = key.split(".")[1]
        if key.startswith("actor_rollout_ref.ref.") and not use_reference_policy:
            continue
        if OmegaConf.select(config, f"actor_rollout_ref.{role}.use_dynamic_bsz", default=False) or OmegaConf.select(
            config, f"actor_rollout_ref.{role}.log_prob_use_dynamic_bsz", default=False
        ):
            continue
        size = OmegaConf.select(config, key, default=None)
        per_worker = batches[splits_mini_batch] // workers
        if size is not None and (size < 1 or per_worker % size):
            batch = "ppo_mini_batch_size" if splits_mini_batch else "data.train_batch_size"
            wrong.append(
                f"{key}={size} does not divide the {per_worker} responses per worker "
                f"({batch} x rollout.n={n} / {workers} workers)"
            )
    if wrong:
        raise SetupError("; ".join(wrong) + ". Set each to a divisor (1 always works).")


def check_reward_manager(config: DictConfig) -> None:
    """The reward manager loads, and ``reward.reward_kwargs.score_in_agent_loop`` is only set where it can act.

    With that key the recipe's agent loop scores with the acpo reward in place of the configured manager
    (:mod:`recipe.acpo.reward_manager`), so another manager would be bypassed silently, and another agent loop would
    leave the key without effect.
    """
    from verl.trainer.ppo.reward import resolve_reward_manager_cls

    from recipe.acpo.agent_loop import AGENT_LOOP_NAME
    from recipe.acpo.reward_manager import SCORE_IN_AGENT_LOOP_KEY, ACPORewardManager, scores_in_agent_loop

    manager = config.reward.reward_manager
    try:
        manager_cls = resolve_reward_manager_cls(config)
    except (ImportError, AttributeError, ValueError, AssertionError) as err:
        raise SetupError(
            f"reward.reward_manager (source={manager.source}, name={manager.name}, "
            f"module.path={manager.module.path}) cannot be loaded: {err}"
        ) from err
    try:
        if not scores_in_agent_loop(config):
            return
    except ValueError as err:
        raise SetupError(str(err)) from err
    key = f"reward.reward_kwargs.{SCORE_IN_AGENT_LOOP_KEY}=true"
    if not (isinstance(manager_cls, type) and issubclass(manager_cls, ACPORewardManager)):
        raise SetupError(
            f"{key} scores with the acpo reward, but reward.reward_manager is {manager.name}: set it to false, or "
            "use the acpo reward manager"
        )
    agent_loop = OmegaConf.select(config, "actor_rollout_ref.rollout.agent.default_agent_loop", default=None)
    if agent_loop != AGENT_LOOP_NAME:
        raise SetupError(
            f"{key} needs the recipe's agent loop: set actor_rollout_ref.rollout.agent.default_agent_loop="
            f"{AGENT_LOOP_NAME} (got {agent_loop!r}), or set it to false"
        )
