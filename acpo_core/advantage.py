"""§1, §4, §5: from outcome rewards and step contributions to per-token advantages.

A_base is GRPO's group-normalised outcome advantage (§1), an input here (verl computes it). Each step i of a response
gets a signed importance s_i from its contribution C_i, an uncertainty u_i from its mean entropy, and a weight w_i
from the three entropy-regulation regimes; A_final,i = A_base + alpha * |A_base| * s_i * w_i (§4). Stage 2 spreads a
step's credit over its tokens by confidence, omega_t = |S_i| * softmax_{t in S_i}(-H_t / tau) (§5). The advantage
written back to verl is A_t = omega_t * A_final,step(t), 0 on padding.

Shapes: B responses, T response positions (right-padded), Kmax step slots (>= every response's K). Step tensors come
from :mod:`acpo_core.segmentation` (``step_index`` [B, T], -1 on padding; ``num_steps`` [B], K >= 1, an empty response
being one empty step) and :mod:`acpo_core.attribution` (contributions C [B, Kmax], 0 beyond K).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from acpo_core.checks import fail_rows, require_finite, require_integer
from acpo_core.config import ACPOConfig, AdvantageConfig

__all__ = [
    "REGIME_HARMFUL",
    "REGIME_HELPFUL_IMPORTANT",
    "REGIME_HELPFUL_MINOR",
    "REGIME_INVALID",
    "ACPOAdvantage",
    "attributed_step_advantage",
    "compute_acpo_advantage",
    "redistribute_attribution",
    "signed_step_importance",
    "step_attribution_advantage",
    "step_uncertainty",
    "step_weights",
    "token_confidence_weights",
]

# Regime of each step slot (§4); 0 marks slots beyond a response's K.
REGIME_INVALID = 0
REGIME_HELPFUL_IMPORTANT = 1  # s > 0 and |s| >= theta: w = 1 + beta * u
REGIME_HELPFUL_MINOR = 2  # s > 0 and |s| < theta: w = max(0, 1 - gamma * u)
REGIME_HARMFUL = 3  # s <= 0: w = max(0, 1 - gamma * u)


def _valid_steps(num_steps: torch.Tensor, kmax: int) -> torch.Tensor:
    """[B, Kmax] bool: slot i is one of the response's K steps."""
    return torch.arange(kmax, device=num_steps.device).unsqueeze(0) < num_steps.unsqueeze(1)


def signed_step_importance(contributions: torch.Tensor, num_steps: torch.Tensor, cfg: AdvantageConfig) -> torch.Tensor:
    """§4: s_i = K * C_i / (sum_k |C_k| + eps), clipped to [-s_clip, s_clip].

    Before clipping (and up to eps) the mean of |s_i| over a response's K steps is 1, whatever the scale of C and
    whatever the sign of the telescoped total sum_i C_i = L_K - L_0: each step's sign is its own.

    Args:
        contributions: ``[B, Kmax]`` step contributions C_i (ignored beyond each response's K).
        num_steps: ``[B]`` integer K >= 1 of each response.
        cfg: ``eps`` and ``s_clip``.

    Returns:
        ``[B, Kmax]`` signed importance, 0 on step slots beyond K.
    """
    valid = _valid_steps(num_steps, contributions.shape[1])
    require_finite("contributions", contributions, valid, "on a step")
    c = torch.where(valid, contributions, torch.zeros_like(contributions))
    total = c.abs().sum(dim=1, keepdim=True)
    s = num_steps.unsqueeze(1).to(c.dtype) * c / (total + cfg.eps)
    return torch.where(valid, s.clamp(-cfg.s_clip, cfg.s_clip), torch.zeros_like(s))


def _step_slots(step_index: torch.Tensor, kmax: int) -> torch.Tensor:
    """[B, T] flat slot ``b * Kmax + step`` of each token; padding (step -1) is routed to its row's slot 0."""
    rows = torch.arange(step_index.shape[0], device=step_index.device).unsqueeze(1)
    return rows * kmax + step_index.clamp(min=0)


def _step_token_counts(step_index: torch.Tensor, kmax: int) -> torch.Tensor:
    """[B, Kmax] number of tokens in each step slot."""
    slot = _step_slots(step_index, kmax)
    return torch.bincount(slot[step_index >= 0], minlength=step_index.shape[0] * kmax).view(-1, kmax)


def _step_sums(
    values: torch.Tensor, step_index: torch.Tensor, kmax: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat [B * Kmax] per-step sums of ``values`` [B, T] and token counts, and the flat slot [B, T] of each token.

    Padding adds 0 to its row's slot 0, so no boolean gather is needed.
    """
    valid = step_index >= 0
    slot = _step_slots(step_index, kmax)
    size = step_index.shape[0] * kmax
    masked = torch.where(valid, values, torch.zeros_like(values))
    sums = torch.zeros(size, dtype=values.dtype, device=values.device).index_add_(0, slot.flatten(), masked.flatten())
    counts = torch.zeros(size, dtype=values.dtype, device=values.device).index_add_(
        0, slot.flatten(), valid.flatten().to(values.dtype)
    )
    return sums, counts, slot


def step_uncertainty(
    entropy: torch.Tensor,
    step_index: torch.Tensor,
    num_steps: torch.Tensor,
    kmax: int,
    cfg: AdvantageConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """§4: u_i = mean_{t in step i} H_t / (mean over all steps of the batch + eps), clipped to [0, u_clip].

    The batch mean is over the non-empty steps of every response (each step counts once, whatever its length). Empty
    steps (the single step of an empty response) and slots beyond K get u = 0.

    Args:
        entropy: ``[B, T]`` token entropies (anything on padding is ignored).
        step_index: ``[B, T]`` step of each token, -1 on padding.
        num_steps: ``[B]`` integer K of each response.
        kmax: number of step slots.
        cfg: ``eps`` and ``u_clip``.

    Returns:
        ``(u, step_mean_entropy)``, both float32 ``[B, Kmax]``; 0 for empty steps and slots beyond K.
    """
    valid_tok = step_index >= 0
    require_finite("entropy", entropy, valid_tok, "on a valid token")
    batch = entropy.shape[0]
    sums, counts, _ = _step_sums(entropy.to(torch.float32), step_index, kmax)
    non_empty = (counts.view(batch, kmax) > 0) & _valid_steps(num_steps, kmax)
    step_mean = torch.where(non_empty, (sums / counts.clamp(min=1)).view(batch, kmax), 0.0)
    num_non_empty = non_empty.sum()
    batch_mean = step_mean.sum() / num_non_empty.clamp(min=1)
    u = (step_mean / (batch_mean + cfg.eps)).clamp(0.0, cfg.u_clip)
    return torch.where(non_empty, u, torch.zeros_like(u)), step_mean


def step_weights(
    signed_importance: torch.Tensor, uncertainty: torch.Tensor, valid_steps: torch.Tensor, cfg: AdvantageConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """§4: the entropy-regulation weight w_i of each step and its regime.

    Regime 1, helpful and important (s > 0, |s| >= theta): w = 1 + beta * u, uncertain crucial steps get more credit.
    Regime 2, helpful but unimportant (s > 0, |s| < theta), and regime 3, harmful (s <= 0): w = max(0, 1 - gamma * u).
    Regime 0 and w = 0 on slots that are not steps.

    Args:
        signed_importance: ``[B, Kmax]`` s.
        uncertainty: ``[B, Kmax]`` u.
        valid_steps: ``[B, Kmax]`` bool, slots that are real steps.
        cfg: ``beta``, ``gamma`` and ``theta``.

    Returns:
        ``(w, regime)``: float ``[B, Kmax]`` and long ``[B, Kmax]`` (the ``REGIME_*`` constants).
    """
    helpful = signed_importance > 0
    important = signed_importance.abs() >= cfg.theta
    explore = 1.0 + cfg.beta * uncertainty
    damp = (1.0 - cfg.gamma * uncertainty).clamp(min=0.0)
    w = torch.where(helpful & important, explore, damp)
    w = torch.where(valid_steps, w, torch.zeros_like(w))
    regime = torch.where(
        helpful & important,
        REGIME_HELPFUL_IMPORTANT,
        torch.where(helpful, REGIME_HELPFUL_MINOR, REGIME_HARMFUL),
    )
    regime = torch.where(valid_steps, regime, REGIME_INVALID).to(torch.long)
    return w, regime


def step_attribution_advantage(
    a_base: torch.Tensor, signed_importance: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """§4: A_attr,i = |A_base| * s_i * w_i. The sign follows the step, not the outcome.

    Args:
        a_base: ``[B]``.
        signed_importance: ``[B, Kmax]`` s.
        weights: ``[B, Kmax]`` w.

    Returns:
        ``[B, Kmax]`` A_attr.
    """
    return a_base.abs().unsqueeze(1) * signed_importance * weights


def redistribute_attribution(attributed: torch.Tensor, step_tokens: torch.Tensor) -> torch.Tensor:
    """§4.1 (ours, ``attr_total: redistributed``): A_attr centred so that its sum over each response's tokens is 0.

    A_attr,i - (sum_k n_k A_attr,k) / (sum_k n_k), with n_k the tokens of step k. The attributed term then moves
    credit between the steps of a response and leaves the response's total advantage as GRPO's (the Stage-2 token
    weights keep each step's total, so this holds in both stages). A response with one non-empty step gets 0.

    Args:
        attributed: ``[B, Kmax]`` A_attr (0 on slots that are not steps).
        step_tokens: ``[B, Kmax]`` tokens of each step slot (0 on empty steps and unused slots).
    Returns:
        ``[B, Kmax]`` centred A_attr, 0 on slots without tokens.
    """
    weights = step_tokens.to(attributed.dtype)
    mean = (attributed * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True).clamp(min=1.0)
    return torch.where(step_tokens > 0, attributed - mean, torch.zeros_like(attributed))


def attributed_step_advantage(
    a_base: torch.Tensor, signed_importance: torch.Tensor, weights: torch.Tensor, alpha: float
) -> torch.Tensor:
    """§4: A_final,i = A_base + alpha * |A_base| * s_i * w_i.

    With ``alpha = 0`` this is ``A_base + 0.0``, i.e. exactly ``A_base``.

    Args:
        a_base: ``[B]``.
        signed_importance: ``[B, Kmax]`` s.
        weights: ``[B, Kmax]`` w.
        alpha: the weight of the attributed term.

    Returns:
        ``[B, Kmax]`` A_final of each step slot.
    """
    return a_base.unsqueeze(1) + alpha * step_attribution_advantage(a_base, signed_importance, weights)


def token_confidence_weights(
    entropy: torch.Tensor, step_index: torch.Tensor, stage: int, tau: float, kmax: int | None = None
) -> torch.Tensor:
    """§5: omega_t = 1 in Stage 1; omega_t = |S_i| * softmax_{t in S_i}(-H_t / tau) in Stage 2.

    The Stage-2 softmax is a segment softmax over each step's tokens (scatter max, exp, scatter sum), shifted by the
    step's largest logit for numerical stability. The mean of omega over each non-empty step is 1, so a step's total
    credit is unchanged; lower-entropy (more confident) tokens get more of it.

    Args:
        entropy: ``[B, T]`` token entropies (anything on padding is ignored).
        step_index: ``[B, T]`` step of each token, -1 on padding.
        stage: 1 or 2.
        tau: softmax temperature (> 0).
        kmax: number of step slots; computed from ``step_index`` when omitted.

    Returns:
        float32 ``[B, T]`` weights, 0 on padding.
    """
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage!r}")
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau!r}")
    valid = step_index >= 0
    if stage == 1:
        return valid.to(torch.float32)
    require_finite("entropy", entropy, valid, "on a valid token")
    batch = entropy.shape[0]
    if kmax is None:
        kmax = int(step_index.max().item()) + 1 if valid.any() else 1
    logits = torch.where(valid, -entropy.to(torch.float32) / tau, float("-inf"))
    slot = _step_slots(step_index, kmax)
    counts = _step_token_counts(step_index, kmax).flatten().to(torch.float32)
    step_max = torch.full((batch * kmax,), -torch.inf, device=entropy.device).scatter_reduce(
        0, slot.flatten(), logits.flatten(), reduce="amax"
    )
    shifted = torch.where(valid, logits - step_max[slot], torch.zeros_like(logits))
    exp = torch.where(valid, shifted.exp(), torch.zeros_like(logits))
    denominator = torch.zeros(batch * kmax, device=entropy.device).index_add_(0, slot.flatten(), exp.flatten())
    # Every valid token's step holds its own exp(0) = 1 term, so the denominator of a valid token is >= 1.
    omega = counts[slot] * exp / denominator[slot].clamp(min=1.0)
    return torch.where(valid, omega, torch.zeros_like(omega))


@dataclass
class ACPOAdvantage:
    """Everything §4-5 computes for a batch; per-step tensors are ``[B, Kmax]``, per-token ``[B, T]``.

    Attributes:
        token_advantages: A_t = omega_t * A_final,step(t), 0 on padding: what replaces verl's ``advantages``.
        signed_importance: s_i.
        uncertainty: u_i.
        step_mean_entropy: mean H over each step's tokens (0 for empty steps and unused slots).
        weights: w_i.
        regime: 1, 2, 3 (``REGIME_*``), 0 on unused slots.
        attributed_advantages: A_attr,i = |A_base| * s_i * w_i (centred per response when redistributed, §4.1).
        step_advantages: A_final,i = A_base + alpha * A_attr,i.
        token_weights: omega_t.
        metrics: the §9 step statistics (see :func:`compute_acpo_advantage`).
    """

    token_advantages: torch.Tensor
    signed_importance: torch.Tensor
    uncertainty: torch.Tensor
    step_mean_entropy: torch.Tensor
    weights: torch.Tensor
    regime: torch.Tensor
    attributed_advantages: torch.Tensor
    step_advantages: torch.Tensor
    token_weights: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


def _check_inputs(
    a_base: torch.Tensor,
    contributions: torch.Tensor,
    step_index: torch.Tensor,
    num_steps: torch.Tensor,
    entropy: torch.Tensor,
    response_mask: torch.Tensor,
    correct: torch.Tensor | None,
) -> None:
    if a_base.dim() != 1 or not a_base.dtype.is_floating_point:
        raise ValueError(f"a_base must be a floating [B] tensor, got {a_base.dtype} of shape {tuple(a_base.shape)}")
    batch = a_base.shape[0]
    if contributions.dim() != 2 or contributions.shape[0] != batch or contributions.shape[1] < 1:
        raise ValueError(f"contributions must be [B={batch}, Kmax>=1], got {tuple(contributions.shape)}")
    if response_mask.dim() != 2 or response_mask.shape[0] != batch:
        raise ValueError(f"response_mask must be [B={batch}, T], got {tuple(response_mask.shape)}")
    for name, tensor in (("step_index", step_index), ("entropy", entropy)):
        if tensor.shape != response_mask.shape:
            raise ValueError(
                f"{name} must have the shape of response_mask {tuple(response_mask.shape)}, got {tuple(tensor.shape)}"
            )
    if num_steps.shape != (batch,):
        raise ValueError(f"num_steps must be [B={batch}], got {tuple(num_steps.shape)}")
    if correct is not None and correct.shape != (batch,):
        raise ValueError(f"correct must be [B={batch}], got {tuple(correct.shape)}")
    require_integer("step_index", step_index)
    require_integer("num_steps", num_steps)
    kmax = contributions.shape[1]
    fail_rows((num_steps < 1) | (num_steps > kmax), f"num_steps must lie in [1, Kmax={kmax}]")
    fail_rows((response_mask != 0) & (response_mask != 1), "response_mask must hold only 0 and 1")
    valid = response_mask != 0
    require_finite("a_base", a_base)
    require_finite("contributions", contributions, _valid_steps(num_steps, kmax), "on a step")
    require_finite("entropy", entropy, valid, "on a valid token")
    fail_rows(
        valid & ((step_index < 0) | (step_index >= num_steps.unsqueeze(1))),
        "step_index is outside [0, num_steps) on a valid response token",
    )
    fail_rows(~valid & (step_index != -1), "step_index is not -1 on a padding token")


def compute_acpo_advantage(
    a_base: torch.Tensor,
    contributions: torch.Tensor,
    step_index: torch.Tensor,
    num_steps: torch.Tensor,
    entropy: torch.Tensor,
    response_mask: torch.Tensor,
    cfg: ACPOConfig,
    correct: torch.Tensor | None = None,
) -> ACPOAdvantage:
    """§4-5: per-token advantages A_t = omega_t * (A_base + alpha * |A_base| * s_step(t) * w_step(t)).

    Args:
        a_base: ``[B]`` outcome advantage (verl's GRPO numbers, §1). A zero-variance group has A_base = 0 and so
            A_t = 0 on all its tokens.
        contributions: ``[B, Kmax]`` step contributions C_i = L_{i+1} - L_i (§3).
        step_index: ``[B, T]`` integer step of each valid token, -1 on padding.
        num_steps: ``[B]`` integer K >= 1 of each response (an empty response is one empty step).
        entropy: ``[B, T]`` old-policy entropy of each response token.
        response_mask: ``[B, T]`` 1 on valid response tokens, 0 on padding.
        cfg: the ``acpo:`` block; ``cfg.stage`` picks the token weights.
        correct: optional ``[B]`` bool outcome, to split ``acpo/attr_gain`` by correct and incorrect responses.

    Returns:
        :class:`ACPOAdvantage`. ``token_advantages`` is float32 ``[B, T]``, 0 on padding. With ``alpha = 0`` in Stage 1
        it is ``a_base`` broadcast over valid tokens times the mask, exactly verl's GRPO advantage bit for bit.
        ``metrics`` (§9) are statistics over the non-empty steps of the batch: ``acpo/steps_per_response``,
        ``acpo/step_tokens_mean``, ``acpo/helpful_frac`` (s > 0), ``acpo/regime{1,2,3}_frac``, ``acpo/w_mean``,
        ``acpo/u_mean``, ``acpo/s_clip_frac`` and ``acpo/u_clip_frac`` (steps at the clip bound),
        ``acpo/adv_attr_abs_mean`` (mean |A_attr|), ``acpo/zero_adv_frac`` (responses with A_base = 0),
        ``acpo/attr_gain`` (mean sum_i C_i = L_K - L_0 per response) and, with ``correct``,
        ``acpo/attr_gain_correct`` / ``acpo/attr_gain_incorrect`` (when the split is non-empty).

    Raises:
        ValueError: mismatched shapes or dtypes; NaN or infinite a_base, C (on real steps) or entropy (on valid
            tokens); K outside [1, Kmax]; a step index outside [0, K) on a valid token or not -1 on padding. The
            message names the offending rows.
    """
    _check_inputs(a_base, contributions, step_index, num_steps, entropy, response_mask, correct)
    adv_cfg = cfg.advantage
    kmax = contributions.shape[1]
    valid_steps = _valid_steps(num_steps, kmax)
    s = signed_step_importance(contributions.to(torch.float32), num_steps, adv_cfg)
    u, step_mean_entropy = step_uncertainty(entropy, step_index, num_steps, kmax, adv_cfg)
    w, regime = step_weights(s, u, valid_steps, adv_cfg)
    base = a_base.to(torch.float32)
    a_attr = step_attribution_advantage(base, s, w)
    if adv_cfg.attr_total == "redistributed":
        a_attr = redistribute_attribution(a_attr, _step_token_counts(step_index, kmax))
    a_final = base.unsqueeze(1) + adv_cfg.alpha * a_attr
    omega = token_confidence_weights(entropy, step_index, cfg.stage, cfg.confidence.tau, kmax=kmax)
    # omega is 0 on padding and exactly 1 on valid tokens in Stage 1, so with alpha = 0 this is A_base * mask, the
    # very product verl's GRPO function returns (down to the sign of the zeros on padding).
    token_advantages = omega * a_final.gather(1, step_index.clamp(min=0))
    metrics = _step_metrics(
        contributions, s, u, w, regime, a_attr, base, num_steps, valid_steps, step_index, adv_cfg, correct
    )
    return ACPOAdvantage(
        token_advantages=token_advantages,
        signed_importance=s,
        uncertainty=u,
        step_mean_entropy=step_mean_entropy,
        weights=w,
        regime=regime,
        attributed_advantages=a_attr,
        step_advantages=a_final,
        token_weights=omega,
        metrics=metrics,
    )


def _step_metrics(
    contributions: torch.Tensor,
    s: torch.Tensor,
    u: torch.Tensor,
    w: torch.Tensor,
    regime: torch.Tensor,
    a_attr: torch.Tensor,
    a_base: torch.Tensor,
    num_steps: torch.Tensor,
    valid_steps: torch.Tensor,
    step_index: torch.Tensor,
    cfg: AdvantageConfig,
    correct: torch.Tensor | None,
) -> dict[str, float]:
    """§9 statistics; step averages are over non-empty steps (an empty response's empty step carries nothing)."""
    batch, kmax = s.shape
    if batch == 0:
        return {}
    tokens = _step_token_counts(step_index, kmax)
    steps = valid_steps & (tokens > 0)
    num = max(int(steps.sum()), 1)

    def step_mean(values: torch.Tensor) -> float:
        return float(torch.where(steps, values.to(torch.float32), 0.0).sum()) / num

    gain = torch.where(valid_steps, contributions, torch.zeros_like(contributions)).sum(dim=1).to(torch.float32)
    metrics = {
        "acpo/steps_per_response": float(num_steps.to(torch.float32).mean()),
        "acpo/step_tokens_mean": float(tokens.sum()) / num,
        "acpo/helpful_frac": step_mean(s > 0),
        "acpo/regime1_frac": step_mean(regime == REGIME_HELPFUL_IMPORTANT),
        "acpo/regime2_frac": step_mean(regime == REGIME_HELPFUL_MINOR),
        "acpo/regime3_frac": step_mean(regime == REGIME_HARMFUL),
        "acpo/w_mean": step_mean(w),
        "acpo/u_mean": step_mean(u),
        "acpo/s_clip_frac": step_mean(s.abs() >= cfg.s_clip),
        "acpo/u_clip_frac": step_mean(u >= cfg.u_clip),
        "acpo/adv_attr_abs_mean": step_mean(a_attr.abs()),
        "acpo/zero_adv_frac": float((a_base == 0).to(torch.float32).mean()),
        "acpo/attr_gain": float(gain.mean()),
    }
    if correct is not None:
        is_correct = correct.to(torch.bool)
        for name, rows in (("acpo/attr_gain_correct", is_correct), ("acpo/attr_gain_incorrect", ~is_correct)):
            if rows.any():
                metrics[name] = float(gain[rows].mean())
    return metrics
