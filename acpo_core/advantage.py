"""Spec §1, §4, §5: from outcome rewards and step contributions to per-token advantages.

A_base is GRPO's group-normalised outcome advantage. Each step i of a response gets a signed importance s_i from its
contribution C_i, an uncertainty u_i from its mean entropy, and a weight w_i from the three entropy-regulation regimes;
A_final,i = A_base + alpha * |A_base| * s_i * w_i. Stage 2 spreads a step's credit over its tokens by confidence.

Shapes: B responses, T response positions (right-padded), Kmax step slots (>= every response's K).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from acpo_core.config import ACPOConfig, AdvantageConfig

__all__ = [
    "ACPOAdvantage",
    "attributed_step_advantage",
    "compute_acpo_advantage",
    "grpo_outcome_advantage",
    "signed_step_importance",
    "step_uncertainty",
    "step_weights",
    "token_confidence_weights",
]

REGIME_INVALID, REGIME_HELPFUL_IMPORTANT, REGIME_HELPFUL_MINOR, REGIME_HARMFUL = 0, 1, 2, 3


def _bad_rows(mask: torch.Tensor) -> list[int]:
    rows = mask.reshape(mask.shape[0], -1).any(dim=1) if mask.dim() > 1 else mask
    return rows.nonzero().flatten().tolist()


def _require_finite(name: str, values: torch.Tensor, where: torch.Tensor | None = None) -> None:
    bad = ~torch.isfinite(values)
    if where is not None:
        bad = bad & where
    if bad.any():
        raise ValueError(f"{name} has NaN or infinite values in row(s) {_bad_rows(bad)[:10]}")


def _valid_steps(num_steps: torch.Tensor, kmax: int) -> torch.Tensor:
    return torch.arange(kmax, device=num_steps.device).unsqueeze(0) < num_steps.unsqueeze(1)


def grpo_outcome_advantage(
    scores: torch.Tensor,
    group_ids: Sequence[Hashable] | np.ndarray,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
) -> torch.Tensor:
    """Spec §1: A_base,j = (r_j - mean_g r) / (std_g r + eps), the numbers of verl's ``compute_grpo_outcome_advantage``.

    Args:
        scores: ``[B]`` outcome score of each response.
        group_ids: ``B`` hashable prompt ids (verl's ``uid``); responses with the same id form a group.
        epsilon: added to the group standard deviation.
        norm_adv_by_std_in_grpo: divide by the standard deviation (GRPO) or not (Dr.GRPO).

    Returns:
        ``[B]`` advantages. A singleton group has mean 0 and std 1, as in verl; std is unbiased (``torch.std``).
    """
    if scores.dim() != 1 or len(group_ids) != scores.shape[0]:
        raise ValueError(
            f"scores must be [B] with one group id per response, got {tuple(scores.shape)} and {len(group_ids)} ids"
        )
    _require_finite("scores", scores)
    if scores.numel() == 0:
        return scores.clone()
    _, inverse = np.unique(np.asarray(list(group_ids), dtype=object).astype(str), return_inverse=True)
    group = torch.as_tensor(inverse, dtype=torch.long, device=scores.device)
    num_groups = int(group.max()) + 1
    count = torch.zeros(num_groups, dtype=scores.dtype, device=scores.device).index_add_(
        0, group, torch.ones_like(scores)
    )
    total = torch.zeros_like(count).index_add_(0, group, scores)
    mean = total / count
    sq_dev = (scores - mean[group]) ** 2
    var = torch.zeros_like(count).index_add_(0, group, sq_dev) / (count - 1).clamp(min=1)
    std = var.sqrt()
    singleton = count == 1
    mean = torch.where(singleton, torch.zeros_like(mean), mean)
    std = torch.where(singleton, torch.ones_like(std), std)
    centred = scores - mean[group]
    if norm_adv_by_std_in_grpo:
        return centred / (std[group] + epsilon)
    return centred


def signed_step_importance(contributions: torch.Tensor, num_steps: torch.Tensor, cfg: AdvantageConfig) -> torch.Tensor:
    """Spec §4: s_i = K * C_i / (sum_k |C_k| + eps), clipped to [-s_clip, s_clip]; mean |s_i| = 1 before clipping.

    Args:
        contributions: ``[B, Kmax]`` step contributions C_i (ignored beyond each response's K).
        num_steps: ``[B]`` K of each response.

    Returns:
        ``[B, Kmax]`` signed importance, 0 on step slots beyond K.
    """
    valid = _valid_steps(num_steps, contributions.shape[1])
    c = torch.where(valid, contributions, torch.zeros_like(contributions))
    total = c.abs().sum(dim=1, keepdim=True)
    s = num_steps.unsqueeze(1).to(c.dtype) * c / (total + cfg.eps)
    return s.clamp(-cfg.s_clip, cfg.s_clip) * valid


def step_uncertainty(
    entropy: torch.Tensor,
    step_index: torch.Tensor,
    num_steps: torch.Tensor,
    kmax: int,
    cfg: AdvantageConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spec §4: u_i = mean_{t in step i} H_t / (mean over all steps of the batch + eps), clipped to [0, u_clip].

    Args:
        entropy: ``[B, T]`` token entropies.
        step_index: ``[B, T]`` step of each token, -1 on padding.
        num_steps: ``[B]``.
        kmax: number of step slots.

    Returns:
        ``(u, step_mean_entropy)``, both ``[B, Kmax]``; 0 for empty steps and slots beyond K.
    """
    batch = entropy.shape[0]
    valid_tok = step_index >= 0
    flat = (torch.arange(batch, device=entropy.device).unsqueeze(1) * kmax + step_index.clamp(min=0))[valid_tok]
    ent = entropy[valid_tok].to(torch.float32)
    sums = torch.zeros(batch * kmax, dtype=torch.float32, device=entropy.device).index_add_(0, flat, ent)
    counts = torch.zeros_like(sums).index_add_(0, flat, torch.ones_like(ent))
    step_mean = (sums / counts.clamp(min=1)).view(batch, kmax)
    non_empty = (counts.view(batch, kmax) > 0) & _valid_steps(num_steps, kmax)
    batch_mean = step_mean[non_empty].mean() if non_empty.any() else step_mean.new_zeros(())
    u = (step_mean / (batch_mean + cfg.eps)).clamp(0.0, cfg.u_clip)
    return u * non_empty, step_mean * non_empty


def step_weights(
    signed_importance: torch.Tensor, uncertainty: torch.Tensor, valid_steps: torch.Tensor, cfg: AdvantageConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spec §4: the entropy-regulation weight w_i of each step and its regime.

    Regime 1 (s > 0, |s| >= theta): w = 1 + beta * u. Regime 2 (s > 0, |s| < theta) and regime 3 (s <= 0):
    w = max(0, 1 - gamma * u). Regime 0 and w = 0 on invalid step slots.

    Args:
        signed_importance: ``[B, Kmax]`` s.
        uncertainty: ``[B, Kmax]`` u.
        valid_steps: ``[B, Kmax]`` bool, slots that are real steps.

    Returns:
        ``(w, regime)``: float ``[B, Kmax]`` and long ``[B, Kmax]``.
    """
    helpful = signed_importance > 0
    important = signed_importance.abs() >= cfg.theta
    explore = 1.0 + cfg.beta * uncertainty
    damp = (1.0 - cfg.gamma * uncertainty).clamp(min=0.0)
    w = torch.where(helpful & important, explore, damp) * valid_steps
    regime = torch.full_like(signed_importance, REGIME_HARMFUL, dtype=torch.long)
    regime = torch.where(
        helpful & important, REGIME_HELPFUL_IMPORTANT, torch.where(helpful, REGIME_HELPFUL_MINOR, regime)
    )
    regime = torch.where(valid_steps, regime, torch.full_like(regime, REGIME_INVALID))
    return w, regime


def attributed_step_advantage(
    a_base: torch.Tensor, signed_importance: torch.Tensor, weights: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spec §4: A_attr,i = |A_base| * s_i * w_i and A_final,i = A_base + alpha * A_attr,i.

    Args:
        a_base: ``[B]``. signed_importance, weights: ``[B, Kmax]``.

    Returns:
        ``(a_final, a_attr)``, both ``[B, Kmax]``.
    """
    a_attr = a_base.abs().unsqueeze(1) * signed_importance * weights
    return a_base.unsqueeze(1) + alpha * a_attr, a_attr


def token_confidence_weights(entropy: torch.Tensor, step_index: torch.Tensor, stage: int, tau: float) -> torch.Tensor:
    """Spec §5: omega_t = 1 in Stage 1; omega_t = |S_i| * softmax_{t in S_i}(-H_t / tau) in Stage 2.

    The mean of omega over each step is 1, so a step's total credit is unchanged.

    Args:
        entropy: ``[B, T]``. step_index: ``[B, T]`` (-1 on padding).

    Returns:
        ``[B, T]`` weights, 0 on padding.
    """
    valid = step_index >= 0
    if stage == 1:
        return valid.to(torch.float32)
    batch = entropy.shape[0]
    kmax = int(step_index.max().item()) + 1 if valid.any() else 1
    flat = torch.arange(batch, device=entropy.device).unsqueeze(1) * kmax + step_index.clamp(min=0)
    logits = torch.where(
        valid, -entropy.to(torch.float32) / tau, torch.full_like(entropy, -torch.inf, dtype=torch.float32)
    )
    step_max = torch.full((batch * kmax,), -torch.inf, device=entropy.device).scatter_reduce(
        0, flat.flatten(), logits.flatten(), reduce="amax"
    )
    exp = torch.where(valid, (logits - step_max[flat]).exp(), torch.zeros_like(logits))
    denom = torch.zeros(batch * kmax, device=entropy.device).index_add_(0, flat.flatten(), exp.flatten())
    size = torch.zeros(batch * kmax, device=entropy.device).index_add_(0, flat.flatten(), valid.flatten().float())
    return torch.where(valid, size[flat] * exp / denom[flat].clamp(min=1e-30), torch.zeros_like(exp))


@dataclass
class ACPOAdvantage:
    """Everything spec §4-5 computes for a batch; per-step tensors are ``[B, Kmax]``, per-token ``[B, T]``."""

    token_advantages: torch.Tensor
    signed_importance: torch.Tensor
    uncertainty: torch.Tensor
    weights: torch.Tensor
    regime: torch.Tensor
    step_advantages: torch.Tensor
    attributed: torch.Tensor
    token_weights: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


def _check_inputs(
    a_base: torch.Tensor,
    contributions: torch.Tensor,
    step_index: torch.Tensor,
    num_steps: torch.Tensor,
    entropy: torch.Tensor,
    response_mask: torch.Tensor,
) -> None:
    batch = a_base.shape[0]
    if a_base.dim() != 1:
        raise ValueError(f"a_base must be [B], got {tuple(a_base.shape)}")
    if contributions.dim() != 2 or contributions.shape[0] != batch:
        raise ValueError(f"contributions must be [B={batch}, Kmax], got {tuple(contributions.shape)}")
    if num_steps.shape != (batch,):
        raise ValueError(f"num_steps must be [B={batch}], got {tuple(num_steps.shape)}")
    for name, tensor in (("step_index", step_index), ("entropy", entropy)):
        if tensor.shape != response_mask.shape or tensor.shape[0] != batch:
            raise ValueError(f"{name} must match response_mask {tuple(response_mask.shape)}, got {tuple(tensor.shape)}")
    if (num_steps > contributions.shape[1]).any():
        raise ValueError(
            f"num_steps exceeds the {contributions.shape[1]} contribution slots in row(s) "
            f"{_bad_rows(num_steps > contributions.shape[1])[:10]}"
        )
    valid = response_mask.bool()
    _require_finite("a_base", a_base)
    _require_finite("contributions", contributions, _valid_steps(num_steps, contributions.shape[1]))
    _require_finite("entropy", entropy, valid)
    outside = valid & ((step_index < 0) | (step_index >= num_steps.unsqueeze(1)))
    outside |= ~valid & (step_index != -1)
    if outside.any():
        raise ValueError(
            f"step_index is outside [0, num_steps) on a valid token, or not -1 on padding, in row(s) "
            f"{_bad_rows(outside)[:10]}"
        )


def compute_acpo_advantage(
    a_base: torch.Tensor,
    contributions: torch.Tensor,
    step_index: torch.Tensor,
    num_steps: torch.Tensor,
    entropy: torch.Tensor,
    response_mask: torch.Tensor,
    cfg: ACPOConfig,
) -> ACPOAdvantage:
    """Spec §4-5: per-token advantages A_t = omega_t * (A_base + alpha * |A_base| * s_step(t) * w_step(t)).

    Args:
        a_base: ``[B]`` outcome advantage (verl's GRPO numbers).
        contributions: ``[B, Kmax]`` step contributions C_i = L_{i+1} - L_i.
        step_index: ``[B, T]`` step of each valid token, -1 on padding.
        num_steps: ``[B]`` K >= 1 of each response (an empty response is one empty step).
        entropy: ``[B, T]`` old-policy entropy of each response token.
        response_mask: ``[B, T]`` 1 on valid response tokens.
        cfg: the ``acpo:`` block; ``cfg.stage`` picks the token weights.

    Returns:
        :class:`ACPOAdvantage` with ``token_advantages`` ``[B, T]`` (0 on padding) and the spec §9 metrics.
        With ``alpha = 0`` in Stage 1 the token advantages are exactly ``a_base`` on every valid token.
    """
    _check_inputs(a_base, contributions, step_index, num_steps, entropy, response_mask)
    adv_cfg = cfg.advantage
    kmax = contributions.shape[1]
    valid_steps = _valid_steps(num_steps, kmax)
    valid_tok = response_mask.bool()
    entropy = torch.where(valid_tok, entropy, torch.zeros_like(entropy))
    s = signed_step_importance(contributions.to(torch.float32), num_steps, adv_cfg)
    u, _ = step_uncertainty(entropy, step_index, num_steps, kmax, adv_cfg)
    w, regime = step_weights(s, u, valid_steps, adv_cfg)
    a_final, a_attr = attributed_step_advantage(a_base.to(torch.float32), s, w, adv_cfg.alpha)
    omega = token_confidence_weights(entropy, step_index, cfg.stage, cfg.confidence.tau)
    # With alpha = 0 and omega = 1 (Stage 1) this is A_base + 0.0 exactly: verl's GRPO advantage bit for bit.
    per_token = a_final.gather(1, step_index.clamp(min=0))
    token_advantages = torch.where(valid_tok, omega * per_token, torch.zeros_like(per_token))
    metrics = _step_metrics(s, w, regime, a_attr, valid_steps, num_steps, valid_tok)
    return ACPOAdvantage(
        token_advantages=token_advantages,
        signed_importance=s,
        uncertainty=u,
        weights=w,
        regime=regime,
        step_advantages=a_final,
        attributed=a_attr,
        token_weights=omega,
        metrics=metrics,
    )


def _step_metrics(
    s: torch.Tensor,
    w: torch.Tensor,
    regime: torch.Tensor,
    a_attr: torch.Tensor,
    valid_steps: torch.Tensor,
    num_steps: torch.Tensor,
    valid_tok: torch.Tensor,
) -> dict[str, float]:
    n_steps = int(valid_steps.sum())
    if n_steps == 0:
        return {}
    lengths = valid_tok.sum(dim=1)
    return {
        "acpo/steps_per_response": float(num_steps.float().mean()),
        "acpo/step_tokens_mean": float(lengths.sum()) / n_steps,
        "acpo/helpful_frac": float((s > 0)[valid_steps].float().mean()),
        "acpo/regime1_frac": float((regime == REGIME_HELPFUL_IMPORTANT).sum()) / n_steps,
        "acpo/regime2_frac": float((regime == REGIME_HELPFUL_MINOR).sum()) / n_steps,
        "acpo/regime3_frac": float((regime == REGIME_HARMFUL).sum()) / n_steps,
        "acpo/w_mean": float(w[valid_steps].mean()),
        "acpo/adv_attr_abs_mean": float(a_attr[valid_steps].abs().mean()),
    }
