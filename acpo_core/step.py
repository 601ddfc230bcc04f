"""§0 steps 4-6 on one batch: segmentation (§2), attribution (§3), per-token advantages (§4-5), metrics (§9).

:func:`compute_acpo_step` is the whole ACPO advantage step in plain torch. It takes the batch as an
:class:`ACPOBatch` (B rows, trainer padding rows included) and a scoring function that returns L_0..L_K for an
:class:`acpo_core.attribution.AttributionBatch` (the verl workers, or :mod:`acpo_core.scoring` on a local model).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from acpo_core.advantage import ACPOAdvantage, compute_acpo_advantage
from acpo_core.attribution import (
    AnswerBatch,
    AttributionBatch,
    ModelLimits,
    check_attribution_batch,
    check_vocabulary,
    contrast_scores,
    drop_final_special,
    oracle_contributions,
    packed_token_count,
    position_overflow,
    step_contributions,
)
from acpo_core.config import ACPOConfig
from acpo_core.segmentation import StepSegmentation, VocabTables, segment_steps

__all__ = ["SPEC_METRICS", "ACPOBatch", "ACPOStepResult", "ScoreFn", "acpo_step_metrics", "compute_acpo_step"]

ScoreFn = Callable[[AttributionBatch], torch.Tensor]
# The §9 metrics every step logs (subsets such as attr_gain_correct are logged only when not empty).
SPEC_METRICS = (
    "acpo/steps_per_response",
    "acpo/step_tokens_mean",
    "acpo/boundary_marker_frac",
    "acpo/attr_gain",
    "acpo/helpful_frac",
    "acpo/regime1_frac",
    "acpo/regime2_frac",
    "acpo/regime3_frac",
    "acpo/w_mean",
    "acpo/adv_attr_abs_mean",
    "acpo/attr_tokens_ratio",
)


@dataclass
class ACPOBatch:
    """One training batch of B rows as ACPO needs it: prompts left-padded [B, P], responses right-padded [B, T].

    Padding rows (a trainer's synthetic samples, ``is_padding``) keep a zero advantage and are left out of
    segmentation, attribution and every metric; their answer rows may be empty.
    """

    prompt_ids: torch.Tensor  # [B, P] long
    prompt_mask: torch.Tensor  # [B, P] long 0/1
    response_ids: torch.Tensor  # [B, T] long
    response_mask: torch.Tensor  # [B, T] long 0/1
    entropy: torch.Tensor  # [B, T] float32, the old policy's entropy at the rollout temperature
    base_advantages: torch.Tensor  # [B] float32, A_base (the GRPO advantage of the row, §1)
    scores: torch.Tensor  # [B] float32, the outcome score
    is_padding: torch.Tensor  # [B] bool
    uids: list[str]  # the prompt (group) of each row
    answer_ids: torch.Tensor  # [B, A] long: Y (§3, acpo_core.attribution.answer_batch), right-padded
    answer_mask: torch.Tensor  # [B, A] long 0/1
    ground_truths: list[str | None]  # the reference answer rendered into Y; None on padding rows
    # [B, A] 0/1 within answer_mask: the tokens of Y that L_i sums (acpo.attribution.score_tokens); None: all.
    answer_scored: torch.Tensor | None = None
    # Y' of every row, the response's own extracted answer (acpo.attribution.target=contrast); rows without one empty.
    own_answers: AnswerBatch | None = None
    # [B] long: first token of the first wrong step, -1 where none (acpo.attribution.judge=oracle; the step checker).
    first_wrong_token: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.response_ids.shape[0])


@dataclass
class ACPOStepResult:
    """What one ACPO advantage step produced. R = the real (non-padding) rows, in the order of ``real_rows``."""

    token_advantages: torch.Tensor  # [B, T] float32, 0 on padding tokens and padding rows
    metrics: dict[str, float]
    real_rows: torch.Tensor  # [R] long
    segmentation: StepSegmentation  # of the R real rows
    answer_loglik: torch.Tensor  # [R, max_steps + 1] L_i(Y), 0 beyond K (0 throughout with the oracle judge)
    contributions: torch.Tensor  # [R, max_steps] C_i
    advantage: ACPOAdvantage  # of the R real rows: per-step s, u, w, regime, A_attr, A_final; per-token omega


def acpo_step_metrics(
    segmentation: StepSegmentation, advantage_metrics: Mapping[str, float], scored_tokens_ratio: float
) -> dict[str, float]:
    """§9 metrics of the real rows (padding rows excluded). Subsets that are empty are not logged.

    - from ``acpo_core.advantage``: ``acpo/steps_per_response``, ``step_tokens_mean``, ``helpful_frac``,
      ``regime{1,2,3}_frac``, ``w_mean``, ``adv_attr_abs_mean``, ``attr_gain`` (L_K - L_0) and its split
      ``attr_gain_correct`` / ``attr_gain_incorrect`` (outcome score > 0 or not), and a few more;
    - ``acpo/boundary_marker_frac``: kept inner boundaries that came from the transition-marker rule;
    - ``acpo/attr_tokens_ratio``: tokens the attribution pass scores / tokens of the old-log-prob pass (|q| + T).

    :func:`compute_acpo_step` adds ``acpo/textless_token_frac`` (sampled ids beyond the tokenizer, segmented as a
    special token). Entropy by difficulty tier is logged by the curriculum, which owns the tiers.
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


def _score_rows(inputs: AttributionBatch, rows: torch.Tensor, score_fn: ScoreFn) -> torch.Tensor:
    """L [R, max_steps + 1] of the rows ``rows`` ([R] bool) scored by ``score_fn``; 0 on the other rows.

    Raises:
        RuntimeError: ``score_fn`` returned L of the wrong shape.
    """
    loglik = torch.zeros(inputs.boundaries.shape, dtype=torch.float32)
    scored = rows.nonzero().flatten()
    if scored.numel():
        scored_loglik = score_fn(inputs.select(scored)).float().cpu()
        if scored_loglik.shape != (scored.numel(), loglik.shape[1]):
            raise RuntimeError(
                f"attribution returned L of shape {tuple(scored_loglik.shape)}, expected "
                f"{(scored.numel(), loglik.shape[1])} (one row per response, max_steps + 1 columns)"
            )
        loglik[scored.cpu()] = scored_loglik
    return loglik


@contextmanager
def _timed(name: str, timing: dict[str, float] | None) -> Iterator[None]:
    """Add the body's wall-clock seconds to ``timing[name]`` (verl's ``timing_s/<name>`` convention)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if timing is not None:
            timing[name] = timing.get(name, 0.0) + time.perf_counter() - start


def compute_acpo_step(
    batch: ACPOBatch,
    tables: VocabTables,
    cfg: ACPOConfig,
    score_fn: ScoreFn,
    timing: dict[str, float] | None = None,
    limits: ModelLimits | None = None,
    steps: StepSegmentation | None = None,
) -> ACPOStepResult:
    """§2-5 on one batch: segmentation, attribution, per-token advantages and the §9 metrics.

    The credit variants of ``cfg.attribution`` (§3.2) act here: ``final_eos: drop`` scores L_K without a trailing
    special token; ``judge: oracle`` takes C from ``batch.first_wrong_token`` and scores nothing; ``target: contrast``
    scores the wrong responses' own answers ``batch.own_answers`` too and takes C from D = L(Y) - L(Y').

    Args:
        batch: :class:`ACPOBatch` of B rows.
        tables: vocabulary tables of the tokenizer for ``cfg.segmentation.markers``.
        cfg: the ``acpo:`` block.
        score_fn: L [R, max_steps + 1] of the real rows' :class:`acpo_core.attribution.AttributionBatch`.
        timing: seconds are added under ``acpo_segment`` and ``acpo_attribution``.
        limits: the scoring model's vocabulary and positions. The whole attribution batch is checked here, before
            ``score_fn`` dispatches anything; responses past ``max_positions`` are left out of attribution
            (:func:`acpo_core.attribution.position_overflow`).
        steps: given steps of the real rows (labelled traces:
            :func:`acpo_core.segmentation.segmentation_from_boundaries`) in place of §2's segmentation; None: segment.
    Returns:
        :class:`ACPOStepResult`; ``token_advantages`` is 0 on padding rows.
    Raises:
        RuntimeError: ``score_fn`` returned L of the wrong shape. ValueError: malformed rows (naming them).
    """
    real_rows = (~batch.is_padding).nonzero().flatten()
    token_advantages = torch.zeros_like(batch.entropy)
    response_mask = batch.response_mask[real_rows]
    entropy = batch.entropy[real_rows]
    with _timed("acpo_segment", timing):
        response_ids, textless = _ids_with_text(batch.response_ids[real_rows], response_mask, tables)
        if steps is None:
            segmentation = segment_steps(response_ids, entropy, response_mask, tables, cfg.segmentation)
        else:
            segmentation = steps
    inputs = AttributionBatch(
        prompt_ids=batch.prompt_ids[real_rows],
        prompt_mask=batch.prompt_mask[real_rows],
        response_ids=batch.response_ids[real_rows],
        response_mask=response_mask,
        boundaries=segmentation.boundaries,
        num_steps=segmentation.num_steps,
        answer_ids=batch.answer_ids[real_rows],
        answer_mask=batch.answer_mask[real_rows],
        answer_scored=None if batch.answer_scored is None else batch.answer_scored[real_rows],
    )
    limits = limits or ModelLimits()
    lengths = check_attribution_batch(inputs)
    check_vocabulary(inputs, limits.vocab_size)
    overflow = position_overflow(lengths, limits.max_positions)
    attribution = cfg.attribution
    if attribution.final_eos == "drop":
        inputs, _ = drop_final_special(inputs, tables.is_special, tables.vocab_size)
    answer_loglik = torch.zeros(segmentation.boundaries.shape, dtype=torch.float32)
    with _timed("acpo_attribution", timing):
        if attribution.judge == "oracle":
            if batch.first_wrong_token is None:
                raise ValueError(
                    "acpo.attribution.judge=oracle needs each response's first wrong step (the testbed's step "
                    "checker); this batch has none"
                )
            contributions = oracle_contributions(
                segmentation.step_index,
                segmentation.num_steps,
                batch.first_wrong_token[real_rows],
                segmentation.boundaries.shape[1] - 1,
            )
        else:
            answer_loglik = _score_rows(inputs, ~overflow, score_fn)
            credit_loglik = answer_loglik
            if attribution.target == "contrast":
                if batch.own_answers is None:
                    raise ValueError(
                        "acpo.attribution.target=contrast needs each response's own answer; this batch has none"
                    )
                own = batch.own_answers.select(real_rows)
                use_own = own.present & (batch.scores[real_rows] <= 0) & ~overflow
                own_inputs = dataclasses.replace(
                    inputs, answer_ids=own.ids, answer_mask=own.mask, answer_scored=own.scored
                )
                own_loglik = _score_rows(own_inputs, use_own, score_fn)
                credit_loglik = contrast_scores(answer_loglik, own_loglik, use_own)
            contributions = step_contributions(credit_loglik, segmentation.num_steps)
    advantage = compute_acpo_advantage(
        batch.base_advantages[real_rows],
        contributions,
        segmentation.step_index,
        segmentation.num_steps,
        entropy,
        response_mask,
        cfg,
        correct=batch.scores[real_rows] > 0,
    )
    token_advantages[real_rows] = advantage.token_advantages
    counts = packed_token_count(inputs)
    ratio = counts.packed_over_plain if cfg.attribution.mode == "packed" else counts.naive_over_plain
    metrics = acpo_step_metrics(segmentation, advantage.metrics, ratio)
    metrics["acpo/textless_token_frac"] = textless
    metrics["acpo/attr_position_skipped_frac"] = float(overflow.float().mean()) if len(overflow) else 0.0
    return ACPOStepResult(
        token_advantages=token_advantages,
        metrics=metrics,
        real_rows=real_rows,
        segmentation=segmentation,
        answer_loglik=answer_loglik,
        contributions=contributions,
        advantage=advantage,
    )
