"""ACPOTrainer: verl 0.9.1's synchronous V1 trainer with ACPO's attributed advantages (spec §0 steps 4-6).

``_compute_advantage`` first runs verl's own pipeline unchanged (KL in reward, rollout correction, the registered
``acpo`` estimator, which is verl's GRPO: the outcome baseline A_base of spec §1). It then reads back from the
TransferQueue what verl already computed (the GRPO advantages, the old policy's entropy) with the prompts, responses,
masks, uids, outcome scores and ground truths, and on the driver:

1. segments every response into steps (spec §2, ``acpo_core.segmentation``);
2. asks the actor workers for the answer log-likelihoods L_0..L_K of every response (spec §3, packed scoring on the
   workers' own FSDP model, or verl's ``compute_log_prob`` on K+1 separate sequences with
   ``acpo.attribution.mode=naive``);
3. computes per-token advantages for ``acpo.stage`` (spec §4-5, ``acpo_core.advantage``);
4. writes ``advantages`` and ``returns`` back (nested, as verl does) and logs the spec §9 metrics with the timings
   ``timing_s/acpo_segment`` and ``timing_s/acpo_attribution``.

verl's ``_balance_batch`` may append synthetic padding samples (tag ``is_padding``, an empty response mask): they keep
a zero advantage and are left out of segmentation, attribution and every metric.

With ``acpo.dump.enable`` the driver also writes, every ``acpo.dump.every_n_steps`` steps, the segmented responses
with their step credit (:mod:`recipe.acpo.step_dump`, read by ``python -m recipe.acpo.report``).

With ``acpo.advantage.alpha = 0`` in Stage 1 the written advantages are verl's GRPO advantages bit for bit.

Diagnostics: with the environment variable ``ACPO_ATTRIBUTION_CROSS_CHECK=1`` (seen by the trainer's Ray process)
every step also scores the batch the other way (packed and naive, spec §3) and logs the largest differences
``acpo/check/answer_loglik_max_abs_diff`` and ``acpo/check/advantage_max_abs_diff``; the configured mode's
advantages are the ones written. It costs a naive attribution pass per step: for checking a setup, not for training.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import ray
import torch
import transfer_queue as tq
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.utils import Role
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils import tensordict_utils as tu
from verl.utils.debug import marked_timer
from verl.workers.utils.padding import response_from_nested, response_to_nested

from acpo_core.advantage import ACPOAdvantage, compute_acpo_advantage
from acpo_core.attribution import packed_token_count, render_answer_ids, step_contributions
from acpo_core.config import ACPOConfig
from acpo_core.segmentation import StepSegmentation, VocabTables, segment_steps
from recipe.acpo.acpo_worker import (
    ANSWER_LOGLIK_KEY,
    ACPOActorRolloutRefWorker,
    AttributionInputs,
    build_naive_log_prob_batch,
    pad_rows_to_multiple,
)
from recipe.acpo.advantage_estimator import ACPO_ADV_ESTIMATOR
from recipe.acpo.curriculum import CurriculumMixin
from recipe.acpo.merge import check_stage2_model_path
from recipe.acpo.step_dump import StepDumper, dump_directory

__all__ = [
    "ACPOStepResult",
    "ACPOTrainer",
    "RolloutView",
    "acpo_step_metrics",
    "compute_acpo_step",
    "validate_acpo_trainer_config",
]

# What _compute_advantage reads back from the TransferQueue.
ACPO_TQ_FIELDS = ("uid", "prompts", "responses", "response_mask", "entropy", "advantages", "rm_scores", "reward_model")
ScoreFn = Callable[[AttributionInputs], torch.Tensor]
CROSS_CHECK_ENV = "ACPO_ATTRIBUTION_CROSS_CHECK"


def _lengths(nested: torch.Tensor) -> torch.Tensor:
    return nested.offsets().diff().long()


def _right_padded(nested: torch.Tensor, padding: float) -> torch.Tensor:
    """A jagged [B, *] tensor as a right-padded dense [B, max_len] one."""
    lengths = _lengths(nested)
    width = int(lengths.max()) if lengths.numel() else 0
    return nested.to_padded_tensor(padding=padding, output_size=(lengths.numel(), width))


def _left_padded(nested: torch.Tensor, padding: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A jagged [B, *] tensor as a left-padded dense [B, max_len] one (verl's prompt layout) and its 0/1 mask."""
    right = _right_padded(nested, padding)
    lengths = _lengths(nested)
    width = right.shape[1]
    column = torch.arange(width)[None, :]
    shift = (width - lengths)[:, None]
    valid = column >= shift
    left = torch.where(valid, right.gather(1, (column - shift).clamp(min=0)), torch.full_like(right, padding))
    return left, valid.long()


def _ground_truth_text(reward_model: Any, uid: str) -> str:
    if not isinstance(reward_model, Mapping) or "ground_truth" not in reward_model:
        raise ValueError(f"prompt uid={uid}: reward_model has no ground_truth ({reward_model!r}); ACPO needs it (§3)")
    truth = reward_model["ground_truth"]
    # Integer or float answers (e.g. AMC's 27.0) are common in math data; anything else is malformed.
    if isinstance(truth, int | float | np.integer | np.floating) and not isinstance(truth, bool):
        truth = str(truth)
    if not isinstance(truth, str) or not truth.strip():
        raise ValueError(f"prompt uid={uid}: ground_truth {truth!r} is not a non-empty string")
    return truth


@dataclass
class RolloutView:
    """A padded, driver-side view of one verl training batch (B rows, synthetic padding rows included).

    Prompts are left-padded [B, P], responses right-padded [B, T] (verl's layout).
    """

    prompt_ids: torch.Tensor  # [B, P] long
    prompt_mask: torch.Tensor  # [B, P] long 0/1
    response_ids: torch.Tensor  # [B, T] long
    response_mask: torch.Tensor  # [B, T] long 0/1
    entropy: torch.Tensor  # [B, T] float32, the old policy's entropy at the rollout temperature
    base_advantages: torch.Tensor  # [B] float32, A_base (verl's GRPO advantage of the row)
    scores: torch.Tensor  # [B] float32, the outcome score (sum of rm_scores)
    is_padding: torch.Tensor  # [B] bool, verl's synthetic padding samples
    uids: list[str]
    ground_truths: list[str | None]  # None on padding rows

    def __len__(self) -> int:
        return int(self.response_ids.shape[0])

    @classmethod
    def from_transfer_queue(cls, data: TensorDict, tags: Sequence[Mapping[str, Any]], pad_token_id: int) -> RolloutView:
        """Build the view from ``tq.kv_batch_get(select_fields=ACPO_TQ_FIELDS)`` and the batch tags."""
        uids = [str(u) for u in tu.get(data, "uid")]
        batch_size = len(uids)
        if len(tags) != batch_size:
            raise ValueError(f"{len(tags)} tags for {batch_size} rows")
        is_padding = torch.tensor([bool(tag.get("is_padding", False)) for tag in tags], dtype=torch.bool)
        response_mask = _right_padded(data["response_mask"], 0).long()
        lengths = response_mask.sum(dim=1)
        prefix = torch.arange(response_mask.shape[1])[None, :] < lengths[:, None]
        not_prefix = (response_mask.bool() != prefix).any(dim=1) & ~is_padding
        if not_prefix.any():
            bad = [uids[i] for i in not_prefix.nonzero().flatten().tolist()[:5]]
            raise ValueError(
                f"ACPO segments single-turn responses; the response mask of uid(s) {bad} has holes (multi-turn or "
                "tool tokens), which steps and attribution do not define"
            )
        advantages = _right_padded(data["advantages"], 0.0).float()
        first = torch.zeros(batch_size, 1, dtype=torch.long)
        has_tokens = lengths > 0
        base = torch.where(has_tokens, advantages.gather(1, first).squeeze(1), torch.zeros(batch_size))
        reward_models = tu.get(data, "reward_model")
        ground_truths: list[str | None] = [
            None if is_padding[i] else _ground_truth_text(reward_models[i], uids[i]) for i in range(batch_size)
        ]
        prompt_ids, prompt_mask = _left_padded(data["prompts"], pad_token_id)
        return cls(
            prompt_ids=prompt_ids.long(),
            prompt_mask=prompt_mask,
            response_ids=_right_padded(data["responses"], pad_token_id).long(),
            response_mask=response_mask,
            entropy=_right_padded(data["entropy"], 0.0).float(),
            base_advantages=base,
            scores=_right_padded(data["rm_scores"], 0.0).float().sum(dim=1),
            is_padding=is_padding,
            uids=uids,
            ground_truths=ground_truths,
        )


@dataclass
class ACPOStepResult:
    """What one ACPO advantage step produced. R = the real (non-padding) rows, in the order of ``real_rows``."""

    token_advantages: torch.Tensor  # [B, T] float32, 0 on padding tokens and padding rows
    metrics: dict[str, float]
    real_rows: torch.Tensor  # [R] long
    segmentation: StepSegmentation  # of the R real rows
    answer_loglik: torch.Tensor  # [R, max_steps + 1] L_i, 0 beyond K
    contributions: torch.Tensor  # [R, max_steps] C_i
    advantage: ACPOAdvantage  # of the R real rows: s, u, w, regime, A_attr per step


def _answer_batch(
    tokenizer: Any, ground_truths: Sequence[str], uids: Sequence[str], template: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Y of every row, right-padded [R, A], tokenised once per prompt (uid)."""
    cache: dict[str, list[int]] = {}
    rows: list[list[int]] = []
    for uid, truth in zip(uids, ground_truths):
        if uid not in cache:
            try:
                cache[uid] = render_answer_ids(tokenizer, truth, template)
            except ValueError as err:
                raise ValueError(f"prompt uid={uid}: {err}") from err
        rows.append(cache[uid])
    width = max(len(r) for r in rows)
    answer_ids = torch.zeros(len(rows), width, dtype=torch.long)
    answer_mask = torch.zeros(len(rows), width, dtype=torch.long)
    for n, ids in enumerate(rows):
        answer_ids[n, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        answer_mask[n, : len(ids)] = 1
    return answer_ids, answer_mask


def acpo_step_metrics(
    segmentation: StepSegmentation, advantage_metrics: Mapping[str, float], scored_tokens_ratio: float
) -> dict[str, float]:
    """Spec §9 metrics of the real rows (padding rows excluded). Subsets that are empty are not logged.

    - from ``acpo_core.advantage``: ``acpo/steps_per_response``, ``step_tokens_mean``, ``helpful_frac``,
      ``regime{1,2,3}_frac``, ``w_mean``, ``adv_attr_abs_mean``, ``attr_gain`` (L_K - L_0) and its split
      ``attr_gain_correct`` / ``attr_gain_incorrect`` (outcome score > 0 or not), and a few more;
    - ``acpo/boundary_marker_frac``: kept inner boundaries that came from the transition-marker rule;
    - ``acpo/attr_tokens_ratio``: tokens the attribution pass scores / tokens of the old-log-prob pass (|q| + T).

    :func:`compute_acpo_step` adds ``acpo/textless_token_frac`` (sampled ids beyond the tokenizer, segmented as a
    special token). Entropy by difficulty tier is logged by the curriculum (``acpo/curriculum/{hard,normal}/entropy``,
    :class:`recipe.acpo.curriculum.CurriculumMixin`), which owns the tiers.
    """
    metrics = dict(advantage_metrics)
    inner = int((segmentation.num_steps - 1).sum())
    metrics["acpo/boundary_marker_frac"] = float(segmentation.marker_boundary.sum()) / inner if inner else 0.0
    metrics["acpo/attr_tokens_ratio"] = scored_tokens_ratio
    return metrics


def _ids_with_text(
    response_ids: torch.Tensor, response_mask: torch.Tensor, tables: VocabTables
) -> tuple[torch.Tensor, float]:
    """Response ids for segmentation, and the fraction of valid tokens the tokenizer has no text for.

    A model's embedding may be larger than its tokenizer (Qwen2.5: 151936 rows, 151665 tokens), and a policy can
    sample the extra ids. They have no text, so segmentation sees them as a special token (which is neither a word nor
    a sentence end); attribution still scores the real ids.
    """
    beyond = (response_ids >= tables.vocab_size) & (response_mask != 0)
    if not beyond.any():
        return response_ids, 0.0
    special = tables.is_special.nonzero().flatten()
    if special.numel() == 0:
        raise ValueError(f"token ids >= the tokenizer size {tables.vocab_size} and no special token to stand for them")
    fraction = float(beyond.sum()) / max(int((response_mask != 0).sum()), 1)
    return response_ids.masked_fill(beyond, int(special[0])), fraction


def compute_acpo_step(
    view: RolloutView,
    tables: VocabTables,
    tokenizer: Any,
    cfg: ACPOConfig,
    score_answers: ScoreFn,
    timing: dict[str, float],
) -> ACPOStepResult:
    """Spec §2-5 on one batch: segmentation, attribution, per-token advantages and the §9 metrics.

    Args:
        view: the batch (:meth:`RolloutView.from_transfer_queue`).
        tables: vocabulary tables of ``tokenizer`` for ``cfg.segmentation.markers``.
        tokenizer: renders and tokenises the answers Y (``cfg.attribution.answer_template``).
        cfg: the ``acpo:`` block.
        score_answers: L [R, max_steps + 1] of the real rows' :class:`AttributionInputs` (the workers, or acpo_core
            scoring on a local model).
        timing: seconds are added under ``acpo_segment`` and ``acpo_attribution``.

    Returns:
        :class:`ACPOStepResult`; ``token_advantages`` is 0 on padding rows.
    """
    real_rows = (~view.is_padding).nonzero().flatten()
    token_advantages = torch.zeros_like(view.entropy)
    with marked_timer("acpo_segment", timing):
        response_ids, textless = _ids_with_text(view.response_ids[real_rows], view.response_mask[real_rows], tables)
        segmentation = segment_steps(
            response_ids, view.entropy[real_rows], view.response_mask[real_rows], tables, cfg.segmentation
        )
    rows = real_rows.tolist()
    with marked_timer("acpo_attribution", timing):
        answer_ids, answer_mask = _answer_batch(
            tokenizer,
            [view.ground_truths[r] for r in rows],
            [view.uids[r] for r in rows],
            cfg.attribution.answer_template,
        )
        inputs = AttributionInputs(
            prompt_ids=view.prompt_ids[real_rows],
            prompt_mask=view.prompt_mask[real_rows],
            response_ids=view.response_ids[real_rows],
            response_mask=view.response_mask[real_rows],
            boundaries=segmentation.boundaries,
            num_steps=segmentation.num_steps,
            answer_ids=answer_ids,
            answer_mask=answer_mask,
        )
        answer_loglik = score_answers(inputs).float().cpu()
    if answer_loglik.shape != segmentation.boundaries.shape:
        raise RuntimeError(
            f"attribution returned L of shape {tuple(answer_loglik.shape)}, expected "
            f"{tuple(segmentation.boundaries.shape)} (one row per response, max_steps + 1 columns)"
        )
    contributions = step_contributions(answer_loglik, segmentation.num_steps)
    advantage = compute_acpo_advantage(
        view.base_advantages[real_rows],
        contributions,
        segmentation.step_index,
        segmentation.num_steps,
        view.entropy[real_rows],
        view.response_mask[real_rows],
        cfg,
        correct=view.scores[real_rows] > 0,
    )
    token_advantages[real_rows] = advantage.token_advantages
    counts = packed_token_count(
        inputs.prompt_mask, inputs.response_mask, inputs.boundaries, inputs.num_steps, inputs.answer_mask
    )
    ratio = counts.packed_over_plain if cfg.attribution.mode == "packed" else counts.naive_over_plain
    metrics = acpo_step_metrics(segmentation, advantage.metrics, ratio)
    metrics["acpo/textless_token_frac"] = textless
    return ACPOStepResult(
        token_advantages=token_advantages,
        metrics=metrics,
        real_rows=real_rows,
        segmentation=segmentation,
        answer_loglik=answer_loglik,
        contributions=contributions,
        advantage=advantage,
    )


def validate_acpo_trainer_config(config: DictConfig) -> ACPOConfig:
    """Check that a full verl config can run ACPO; return the validated ``acpo:`` block.

    Raises ``ValueError`` naming the key for: another advantage estimator, a critic, verl's log-prob bypass mode
    (no old-policy entropy), fused kernels with packed attribution (no logits), a Stage-2 run whose
    ``actor_rollout_ref.model.path`` is not a Hugging Face folder (spec §8: the merged Stage-1 checkpoint), and any
    ``acpo:`` error. Cheap and Ray-free: the entry point calls it before Ray starts.
    """
    block = config.get("acpo")
    # A plain container: ACPOConfig.from_dict takes a DictConfig for a mapping and would keep nested ListConfigs.
    acpo_cfg = ACPOConfig.from_dict(OmegaConf.to_container(block, resolve=True) if block is not None else None)
    estimator = config.algorithm.adv_estimator
    if estimator != ACPO_ADV_ESTIMATOR:
        raise ValueError(
            f"ACPOTrainer needs algorithm.adv_estimator={ACPO_ADV_ESTIMATOR}, got {estimator!r}: the acpo estimator "
            "is the outcome baseline that the attribution overlays"
        )
    if config.get("critic", {}).get("enable", False):
        raise ValueError("ACPO is critic-free (its returns are its advantages): set critic.enable=False")
    rollout_correction = config.algorithm.get("rollout_correction", None)
    if rollout_correction is not None and rollout_correction.get("bypass_mode", False):
        raise ValueError(
            "algorithm.rollout_correction.bypass_mode=True skips verl's old-log-prob pass, and with it the entropy "
            "ACPO segments by (spec §2): set it to False"
        )
    if acpo_cfg.attribution.mode == "packed" and config.actor_rollout_ref.model.get("use_fused_kernels", False):
        raise ValueError(
            "actor_rollout_ref.model.use_fused_kernels=True gives no logits to the packed attribution pass: set it "
            "to False or acpo.attribution.mode=naive"
        )
    if acpo_cfg.stage == 2:
        check_stage2_model_path(config.actor_rollout_ref.model)
    return acpo_cfg


class ACPOTrainer(CurriculumMixin, PPOTrainerSync):
    """verl's synchronous V1 trainer whose advantages are ACPO's (spec §0). Build it from the project's task runner.

    With ``acpo.curriculum.enable`` in Stage 1, :class:`recipe.acpo.curriculum.CurriculumMixin` adds the
    difficulty-aware sampling of spec §6 (pass-rate tiers, hot requests for hard prompts, tier metrics).
    """

    def __init__(self, config: DictConfig):
        self.acpo_config = validate_acpo_trainer_config(config)
        super().__init__(config)
        self.vocab_tables: VocabTables | None = None
        self.cross_check_attribution = os.environ.get(CROSS_CHECK_ENV, "0") == "1"

    # ------------------------------------------------------------------ setup
    def _init_tokenizer(self) -> None:
        super()._init_tokenizer()
        self.vocab_tables = VocabTables.from_tokenizer(self.tokenizer, self.acpo_config.segmentation.markers)
        cfg = self.acpo_config
        directory = dump_directory(cfg.dump, self.config.trainer.default_local_dir)
        self.step_dumper = StepDumper(cfg.dump, directory, cfg.stage, self.tokenizer)

    def _init_resource_pool_mgr(self) -> None:
        """verl's pools and roles, with the actor role played by the ACPO worker (attribution scoring)."""
        super()._init_resource_pool_mgr()
        for role in (Role.Actor, Role.ActorRollout, Role.ActorRolloutRef):
            if role in self.role_worker_mapping:
                self.role_worker_mapping[role] = ray.remote(ACPOActorRolloutRefWorker)

    # ------------------------------------------------------------------ attribution on the workers
    def _actor_dp_size(self) -> int:
        worker_group = self.actor_rollout_wg
        if "actor" not in worker_group._dispatch_info:
            worker_group._dispatch_info["actor"] = worker_group._query_dispatch_info("actor")
        return max(worker_group._dispatch_info["actor"]) + 1

    def _score_answers(self, inputs: AttributionInputs, mode: str) -> torch.Tensor:
        """L [R, max_steps + 1] of spec §3, on the actor workers (the old policy: the actor is not updated yet).

        ``mode`` ``packed``: the workers' packed scoring; ``naive``: verl's ``compute_log_prob`` on K+1 sequences.
        """
        attribution = self.acpo_config.attribution
        temperature = float(self.config.actor_rollout_ref.rollout.temperature)
        dp_size = self._actor_dp_size()
        if mode == "packed":
            request, num_rows = pad_rows_to_multiple(
                inputs.to_tensordict(attribution.micro_batch_size, temperature), dp_size
            )
            output = self.actor_rollout_wg.compute_answer_loglik(request)
            return output[ANSWER_LOGLIK_KEY][:num_rows].float()
        # Reference path: verl's own log-prob pass on K+1 separate sequences per response.
        request, owners = build_naive_log_prob_batch(inputs, temperature)
        rollout = self.config.actor_rollout_ref.rollout
        multiple = dp_size
        if not rollout.get("log_prob_use_dynamic_bsz", False):
            multiple *= int(rollout.log_prob_micro_batch_size_per_gpu)
        request, num_rows = pad_rows_to_multiple(request, multiple)
        output = self.actor_rollout_wg.compute_log_prob(request)
        answer_logprobs = response_from_nested(output["log_probs"], request["response_mask"])
        lengths = _lengths(answer_logprobs)[:num_rows]
        values = answer_logprobs.values()[: int(lengths.sum())].float()
        job = torch.repeat_interleave(torch.arange(num_rows), lengths)
        per_job = torch.zeros(num_rows).index_add_(0, job, values)
        scores = torch.zeros(inputs.boundaries.shape, dtype=torch.float32)
        scores[owners[:, 0], owners[:, 1]] = per_job
        return scores

    # ------------------------------------------------------------------ the advantage step
    def _timing(self) -> dict[str, float]:
        timing = getattr(self, "timing_raw", None)
        if timing is None:
            timing = self.timing_raw = {}
        return timing

    def _read_rollout_view(
        self, batch: KVBatchMeta, tags: Sequence[Mapping[str, Any]]
    ) -> tuple[RolloutView, torch.Tensor]:
        """The padded view of the batch and verl's nested response mask (to write advantages back with)."""
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=list(ACPO_TQ_FIELDS))
        pad_token_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return RolloutView.from_transfer_queue(data, tags, pad_token_id), data["response_mask"]

    def _cross_check(self, view: RolloutView, result: ACPOStepResult) -> dict[str, float]:
        """Score the same batch the other way (packed <-> naive) and report the largest differences."""
        cfg = self.acpo_config
        other_mode = "naive" if cfg.attribution.mode == "packed" else "packed"
        other_cfg = dataclasses.replace(cfg, attribution=dataclasses.replace(cfg.attribution, mode=other_mode))
        scorer = partial(self._score_answers, mode=other_mode)
        other = compute_acpo_step(view, self.vocab_tables, self.tokenizer, other_cfg, scorer, {})
        return {
            "acpo/check/answer_loglik_max_abs_diff": float((result.answer_loglik - other.answer_loglik).abs().max()),
            "acpo/check/advantage_max_abs_diff": float((result.token_advantages - other.token_advantages).abs().max()),
        }

    def _data_sources(self, batch: KVBatchMeta) -> list[str] | None:
        """Each row's ``data_source`` for the step dump, or None when the batch has none."""
        try:
            data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["data_source"])
            return [str(source) for source in tu.get(data, "data_source")]
        except Exception:  # optional metadata of a diagnostic
            return None

    def _compute_advantage(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        tags = list(batch.tags)
        batch = super()._compute_advantage(batch, metrics)
        view, response_mask = self._read_rollout_view(batch, tags)
        cfg = self.acpo_config
        scorer = partial(self._score_answers, mode=cfg.attribution.mode)
        result = compute_acpo_step(view, self.vocab_tables, self.tokenizer, cfg, scorer, self._timing())
        step_metrics = dict(result.metrics)
        if self.cross_check_attribution:
            step_metrics.update(self._cross_check(view, result))
        for name, value in step_metrics.items():
            if not math.isfinite(value):
                raise FloatingPointError(f"{name} = {value} at step {getattr(self, 'global_steps', '?')}")
        metrics.update(step_metrics)
        if self.step_dumper.due(self.global_steps):
            with marked_timer("acpo_dump", self._timing()):
                metrics.update(self.step_dumper.dump(self.global_steps, view, result, self._data_sources(batch)))
        advantages = response_to_nested(result.token_advantages, response_mask)
        output = TensorDict({"advantages": advantages, "returns": advantages.clone()}, batch_size=len(batch))
        return tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=output)
