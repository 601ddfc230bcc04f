"""§6 in verl's V1 trainer: the recipe side of the difficulty-aware curriculum.

:class:`CurriculumMixin` goes in front of the trainer class (``class ACPOTrainer(CurriculumMixin, PPOTrainerSync)``)
and hooks four of verl's ``PPOTrainer`` methods; it is active in Stage 1 with ``acpo.curriculum.enable=true`` and a
pass-through otherwise (Stage 2: no tiers, one temperature).

1. ``_submit_batch_to_rollout`` (before generation): each prompt's id is seeded into the
   :class:`acpo_core.curriculum.PassRateTracker` from ``extra_info.pass_rate`` (when the data has one and the prompt
   has no estimate yet), its tier is read from the tracker, and four fields are attached to the batch for the agent
   loop (:mod:`recipe.acpo.agent_loop`) and for the update below: ``acpo_prompt_id``, ``acpo_hard``,
   ``acpo_hot_samples`` (``ceil(hard_fraction * n)`` for a hard prompt, else 0) and ``acpo_hot_temperature``. verl
   stores every submitted field with each trajectory in the TransferQueue.
2. ``_compute_old_log_prob`` (after the reward, which verl's streaming reward loop computes during rollout, and after
   the old-policy entropy): :meth:`CurriculumMixin.update_curriculum` folds each group's accuracy (score > 0) into
   the tracker and logs the curriculum metrics.
3. ``_save_checkpoint``: the tracker's state goes to ``global_step_N/acpo_curriculum.json``, written before verl's
   own checkpoint so that ``latest_checkpointed_iteration.txt`` never points at a step without it.
4. ``_load_checkpoint``: on resume the state is read back from the checkpoint verl resumed from.

Prompt ids are ``"{data_source}/{extra_info.index}"``, or a hash of the prompt's messages for data without an index,
so the same prompt keeps its estimate across epochs.

Metrics (``acpo/curriculum/...``, padding samples excluded): ``hard_prompt_frac`` (prompts of the batch in the hard
tier), ``hot_requests`` (trajectories whose request was sampled at a temperature other than the rollout's, as
recorded by the agent loop) and ``hot_requests_planned``, per tier ``{hard,normal}/acc``, ``/entropy`` (mean token
entropy of the old policy at the rollout temperature), ``/response_length``, ``/prompts``, then
``logprob_gap/{hot,cold}`` (mean |rollout log-prob - old log-prob| per token: the size of the temperature mismatch
that verl's rollout correction weighs, 0 up to numerics for cold samples), ``tracked_prompts`` and
``seeded_prompts`` (seeds taken from the data so far).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import transfer_queue as tq
from omegaconf import DictConfig
from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from verl.utils import tensordict_utils as tu
from verl.utils.checkpoint.checkpoint_manager import find_latest_ckpt_path

from acpo_core.config import ACPOConfig, CurriculumConfig
from acpo_core.curriculum import PassRateTracker, hot_response_count
from recipe.acpo.agent_loop import AGENT_LOOP_NAME, HOT_SAMPLES_KEY, HOT_TEMPERATURE_KEY, TEMPERATURE_KEY
from recipe.acpo.rollout_batch import right_padded

__all__ = [
    "CURRICULUM_STATE_FILE",
    "HARD_KEY",
    "PROMPT_ID_KEY",
    "CurriculumMixin",
    "curriculum_active",
    "curriculum_metrics",
    "prompt_id",
]

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "INFO"))

CURRICULUM_STATE_FILE = "acpo_curriculum.json"
PROMPT_ID_KEY = "acpo_prompt_id"
HARD_KEY = "acpo_hard"
_TEMPERATURE_TOLERANCE = 1e-6
# What update_curriculum reads back per trajectory (verl stores every submitted field with each trajectory).
CURRICULUM_TQ_FIELDS = (
    PROMPT_ID_KEY,
    HARD_KEY,
    HOT_SAMPLES_KEY,
    "session_id",
    "rm_scores",
    "response_mask",
    "extra_fields",
    "entropy",
)


def prompt_id(data_source: Any, extra_info: Any, raw_prompt: Any) -> str:
    """The tracker's key of one prompt: ``"{data_source}/{extra_info.index}"``, else a hash of its messages."""
    index = extra_info.get("index") if isinstance(extra_info, Mapping) else None
    if index is not None and not (isinstance(index, float) and math.isnan(index)):
        return f"{data_source}/{index}"
    messages = raw_prompt.tolist() if isinstance(raw_prompt, np.ndarray) else raw_prompt
    text = json.dumps(messages, sort_keys=True, ensure_ascii=False, default=str)
    return f"{data_source}/sha1:{hashlib.sha1(text.encode()).hexdigest()}"


def _data_pass_rate(extra_info: Any) -> float | None:
    """``extra_info.pass_rate``, None when absent or null (NaN, as pandas writes a missing float)."""
    rate = extra_info.get("pass_rate") if isinstance(extra_info, Mapping) else None
    if rate is None or (isinstance(rate, float) and math.isnan(rate)):
        return None
    return rate


def curriculum_active(acpo_config: ACPOConfig) -> bool:
    """§6/§8: tiers and hot sampling exist in Stage 1 with ``acpo.curriculum.enable`` only."""
    return acpo_config.stage == 1 and acpo_config.curriculum.enable


def _rows(data: TensorDict, key: str, default: Any = None) -> list[Any]:
    """One value per row of a TensorDict's field (a field equal for all rows may be stored once); ``default`` for
    every row when the field is absent."""
    if key not in data:
        return [default] * len(data)
    value = tu.get(data, key)
    if isinstance(value, torch.Tensor):
        values = value.tolist()
    elif isinstance(value, list | tuple | np.ndarray):
        values = list(value)
    else:
        values = [value] * len(data)
    if len(values) != len(data):
        raise ValueError(f"field {key!r} has {len(values)} values for {len(data)} rows")
    return values


def _tier_mean(values: torch.Tensor, weights: torch.Tensor) -> float | None:
    total = weights.sum()
    return float((values * weights).sum() / total) if total > 0 else None


def curriculum_metrics(
    hard: torch.Tensor,
    correct: torch.Tensor,
    response_mask: torch.Tensor,
    entropy: torch.Tensor | None,
    temperatures: torch.Tensor,
    base_temperature: float,
    prompt_ids: Sequence[str],
    planned_hot: int,
    log_prob_gap: torch.Tensor | None = None,
) -> dict[str, float]:
    """The step's curriculum metrics over N real trajectories (no padding). Empty subsets are not logged.

    Args:
        hard: [N] bool, the prompt's tier when it was submitted.
        correct: [N] bool, outcome score > 0.
        response_mask: [N, T] 0/1.
        entropy: [N, T] the old policy's token entropy, or None when verl did not compute it.
        temperatures: [N] the temperature each request was sampled at (agent loop's record).
        base_temperature: the rollout temperature.
        prompt_ids: N prompt ids (hard_prompt_frac counts prompts, not trajectories).
        planned_hot: hot requests the trainer asked for.
        log_prob_gap: [N, T] |rollout log-prob - old log-prob|, or None without rollout log-probs.
    """
    mask = response_mask.float()
    hot = (temperatures - base_temperature).abs() > _TEMPERATURE_TOLERANCE
    tier_of_prompt = dict(zip(prompt_ids, hard.tolist()))
    metrics = {
        "acpo/curriculum/hard_prompt_frac": sum(tier_of_prompt.values()) / max(len(tier_of_prompt), 1),
        "acpo/curriculum/hot_requests": float(hot.sum()),
        "acpo/curriculum/hot_requests_planned": float(planned_hot),
    }
    lengths = mask.sum(dim=1)
    for name, tier in (("hard", hard), ("normal", ~hard)):
        if not bool(tier.any()):
            continue
        hard_tier = name == "hard"
        metrics[f"acpo/curriculum/{name}/prompts"] = float(sum(h == hard_tier for h in tier_of_prompt.values()))
        metrics[f"acpo/curriculum/{name}/acc"] = float(correct[tier].float().mean())
        metrics[f"acpo/curriculum/{name}/response_length"] = float(lengths[tier].mean())
        if entropy is not None:
            value = _tier_mean(entropy[tier], mask[tier])
            if value is not None:
                metrics[f"acpo/curriculum/{name}/entropy"] = value
    if log_prob_gap is not None:
        for name, subset in (("hot", hot), ("cold", ~hot)):
            value = _tier_mean(log_prob_gap[subset], mask[subset]) if bool(subset.any()) else None
            if value is not None:
                metrics[f"acpo/curriculum/logprob_gap/{name}"] = value
    return metrics


class CurriculumMixin:
    """§6 for a verl V1 ``PPOTrainer`` subclass: put it first in the bases. See the module docstring.

    The subclass sets ``acpo_config`` (the ``acpo:`` block ``recipe.acpo.preflight`` parsed) before calling
    ``__init__``.
    """

    config: DictConfig
    global_steps: int
    acpo_config: ACPOConfig

    def __init__(self, config: DictConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        acpo_config = self.acpo_config
        self.curriculum_config: CurriculumConfig = acpo_config.curriculum
        self.curriculum_active = curriculum_active(acpo_config)
        self.pass_rate_tracker = PassRateTracker.from_config(acpo_config.curriculum)
        self.curriculum_seeded_prompts = 0
        if self.curriculum_active:
            agent_loop = config.actor_rollout_ref.rollout.agent.get("default_agent_loop")
            if agent_loop != AGENT_LOOP_NAME:
                raise ValueError(
                    f"the Stage-1 curriculum samples hard prompts hot through the {AGENT_LOOP_NAME!r} agent loop: set "
                    f"actor_rollout_ref.rollout.agent.default_agent_loop={AGENT_LOOP_NAME} and "
                    "actor_rollout_ref.rollout.agent.agent_loop_config_path=recipe/acpo/config/agent_loops.yaml "
                    f"(got default_agent_loop={agent_loop!r}), or acpo.curriculum.enable=false"
                )

    # ------------------------------------------------------------------ before rollout
    def mark_hard_prompts(self, batch: TensorDict) -> TensorDict:
        """Seed unseen prompts from ``extra_info.pass_rate``, then attach the tier and hot-sample fields (in place)."""
        extra_infos = _rows(batch, "extra_info")
        ids = [
            prompt_id(source, info, messages)
            for source, info, messages in zip(
                _rows(batch, "data_source", "unknown"), extra_infos, _rows(batch, "raw_prompt")
            )
        ]
        self.curriculum_seeded_prompts += self.pass_rate_tracker.seed_many(
            ids, [_data_pass_rate(info) for info in extra_infos]
        )
        hard = self.pass_rate_tracker.tiers(ids).tolist()
        default_n = int(self.config.actor_rollout_ref.rollout.n)
        group_sizes = [default_n if n is None else int(n) for n in _rows(batch, "__rollout_n__")]
        fraction = self.curriculum_config.hard_fraction
        hot_samples = [int(hot_response_count(n, fraction)) if h else 0 for h, n in zip(hard, group_sizes)]
        tu.assign_non_tensor_stack(batch, PROMPT_ID_KEY, ids)
        tu.assign_non_tensor_stack(batch, HARD_KEY, hard)
        tu.assign_non_tensor_stack(batch, HOT_SAMPLES_KEY, hot_samples)
        tu.assign_non_tensor_data(batch, HOT_TEMPERATURE_KEY, float(self.curriculum_config.hard_temperature))
        return batch

    def _submit_batch_to_rollout(self, batch: TensorDict) -> int:
        if self.curriculum_active:
            self.mark_hard_prompts(batch)
        return super()._submit_batch_to_rollout(batch)

    # ------------------------------------------------------------------ after the reward
    def update_curriculum(self, batch: KVBatchMeta, metrics: dict[str, float]) -> None:
        """Fold each group's accuracy into the tracker and log the curriculum metrics (padding samples excluded)."""
        keys = [key for key, tag in zip(batch.keys, batch.tags) if not tag.get("is_padding", False)]
        if not keys:
            return
        fields = list(CURRICULUM_TQ_FIELDS)
        if self.config.actor_rollout_ref.rollout.get("calculate_log_probs", False):
            fields += ["rollout_log_probs", "old_log_probs"]
        data = tq.kv_batch_get(keys=keys, partition_id=batch.partition_id, select_fields=fields)
        metrics.update(self.update_curriculum_from_data(data, keys))

    def update_curriculum_from_data(self, data: TensorDict, keys: Sequence[str]) -> dict[str, float]:
        """:meth:`update_curriculum` on trajectories already read from the TransferQueue.

        Args:
            data: ``CURRICULUM_TQ_FIELDS`` (+ ``rollout_log_probs`` and ``old_log_probs`` when verl keeps rollout
                log-probs) of N real trajectories, response fields jagged or right-padded.
            keys: their TransferQueue keys, for error messages.

        Returns:
            The step's ``acpo/curriculum/*`` metrics.
        """
        ids = [str(p) for p in _rows(data, PROMPT_ID_KEY)]
        hard = torch.tensor([bool(h) for h in _rows(data, HARD_KEY)], dtype=torch.bool)
        correct = right_padded(data["rm_scores"]).float().sum(dim=1) > 0
        temperatures = []
        for key, extra in zip(keys, _rows(data, "extra_fields")):
            if not isinstance(extra, Mapping) or TEMPERATURE_KEY not in extra:
                raise RuntimeError(
                    f"trajectory {key} carries no {TEMPERATURE_KEY!r}: it was not generated by the {AGENT_LOOP_NAME!r} "
                    "agent loop, so hard prompts were not sampled hot; check "
                    "actor_rollout_ref.rollout.agent.default_agent_loop and the data's agent_name column"
                )
            temperatures.append(float(extra[TEMPERATURE_KEY]))
        # A request is planned hot when its position in the group is below its prompt's hot-sample count.
        hot_samples = _rows(data, HOT_SAMPLES_KEY)
        sessions = _rows(data, "session_id")
        planned_hot = sum(int(session) < int(count) for session, count in zip(sessions, hot_samples))
        gap = None
        if "rollout_log_probs" in data and "old_log_probs" in data:
            gap = (right_padded(data["rollout_log_probs"]).float() - right_padded(data["old_log_probs"]).float()).abs()
        metrics = curriculum_metrics(
            hard=hard,
            correct=correct,
            response_mask=right_padded(data["response_mask"]).long(),
            entropy=right_padded(data["entropy"]).float() if "entropy" in data else None,
            temperatures=torch.tensor(temperatures, dtype=torch.float64),
            base_temperature=float(self.config.actor_rollout_ref.rollout.temperature),
            prompt_ids=ids,
            planned_hot=planned_hot,
            log_prob_gap=gap,
        )
        self.pass_rate_tracker.update(ids, correct.float())
        metrics["acpo/curriculum/tracked_prompts"] = float(len(self.pass_rate_tracker))
        metrics["acpo/curriculum/seeded_prompts"] = float(self.curriculum_seeded_prompts)
        return metrics

    def _compute_old_log_prob(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        batch = super()._compute_old_log_prob(batch, metrics)
        if self.curriculum_active:
            self.update_curriculum(batch, metrics)
        return batch

    # ------------------------------------------------------------------ checkpoints
    def curriculum_state_path(self, global_step_folder: str | os.PathLike[str]) -> str:
        return os.path.join(os.fspath(global_step_folder), CURRICULUM_STATE_FILE)

    def _save_checkpoint(self) -> None:
        if self.curriculum_active:
            folder = os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}")
            os.makedirs(folder, exist_ok=True)
            path = self.curriculum_state_path(folder)
            state = {
                "global_steps": self.global_steps,
                "curriculum": dataclasses.asdict(self.curriculum_config),
                "tracker": self.pass_rate_tracker.state_dict(),
            }
            # Write then rename: a crash mid-write never leaves a truncated state behind.
            with open(path + ".tmp", "w", encoding="utf-8") as handle:
                json.dump(state, handle)
            os.replace(path + ".tmp", path)
        super()._save_checkpoint()

    def _resumed_checkpoint_folder(self) -> str | None:
        """The ``global_step_N`` folder verl's ``_load_checkpoint`` resumed from (its own rules), or None."""
        trainer = self.config.trainer
        if trainer.resume_mode == "resume_path":
            folder = str(trainer.resume_from_path)
        elif trainer.resume_mode == "auto":
            folder = find_latest_ckpt_path(str(trainer.default_local_dir))
            if folder is None:
                return None
        else:
            return None
        return folder if os.path.isabs(folder) else os.path.join(os.getcwd(), folder)

    def _load_checkpoint(self) -> None:
        super()._load_checkpoint()
        if not self.curriculum_active or self.global_steps == 0:
            return
        folder = self._resumed_checkpoint_folder()
        if folder is None:
            return
        path = self.curriculum_state_path(folder)
        if not os.path.exists(path):
            logger.warning(
                "resuming from %s without %s (a checkpoint of a run without the Stage-1 curriculum): pass rates "
                "start again from the data's extra_info.pass_rate and the online estimates",
                folder,
                CURRICULUM_STATE_FILE,
            )
            return
        with open(path, encoding="utf-8") as handle:
            try:
                state = json.load(handle)
                self.pass_rate_tracker.load_state_dict(state["tracker"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{path}: not a curriculum state written by CurriculumMixin ({err})") from err
        logger.info("restored %d prompt pass rates from %s", len(self.pass_rate_tracker), path)
