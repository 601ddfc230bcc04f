"""acpo_core.advantage: §4 (attributed advantage), §5 (token weights), on top of §1's GRPO baseline.

A_base comes from verl's own ``compute_grpo_outcome_advantage``, the one GRPO reference (the recipe's ``acpo``
estimator is that function)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

from acpo_core.advantage import (
    REGIME_HARMFUL,
    REGIME_HELPFUL_IMPORTANT,
    REGIME_HELPFUL_MINOR,
    REGIME_INVALID,
    attributed_step_advantage,
    compute_acpo_advantage,
    signed_step_importance,
    step_attribution_advantage,
    step_uncertainty,
    step_weights,
    token_confidence_weights,
)
from acpo_core.attribution import step_contributions
from acpo_core.config import ACPOConfig, AdvantageConfig, ConfidenceConfig


def _steps_from_lengths(step_lengths: list[list[int]], width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """step_index [B, width], num_steps [B], response_mask [B, width] from each response's step lengths.

    An empty list is an empty response: one empty step.
    """
    rows, masks = [], []
    for lengths in step_lengths:
        idx = [i for i, n in enumerate(lengths) for _ in range(n)]
        rows.append(idx + [-1] * (width - len(idx)))
        masks.append([1] * len(idx) + [0] * (width - len(idx)))
    num_steps = torch.tensor([max(len(lengths), 1) for lengths in step_lengths])
    return torch.tensor(rows), num_steps, torch.tensor(masks)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float32 tensor: equal bits means equal numbers, signs of zeros included."""
    return t.to(torch.float32).contiguous().view(torch.int32)


def _verl_grpo(scores: torch.Tensor, uids: np.ndarray, mask: torch.Tensor, norm_by_std: bool = True) -> torch.Tensor:
    """verl's own GRPO advantage [B, T], with the outcome reward on the last valid token as verl places it."""
    token_rewards = torch.zeros(mask.shape, dtype=torch.float32)
    last = (mask.sum(1) - 1).clamp(min=0).long()
    token_rewards[torch.arange(len(scores)), last] = scores
    advantages, _ = compute_grpo_outcome_advantage(token_rewards, mask, uids, norm_adv_by_std_in_grpo=norm_by_std)
    return advantages


def _a_base(scores: torch.Tensor, uids: np.ndarray | list[str], norm_by_std: bool = True) -> torch.Tensor:
    """§1's A_base [B] by verl's GRPO: one outcome score per response (a one-token response each)."""
    return _verl_grpo(scores, np.asarray(uids, dtype=object), torch.ones(len(scores), 1), norm_by_std)[:, 0]


def _grpo_batch() -> tuple[torch.Tensor, np.ndarray]:
    # Group a: 2 of 4 correct; b: all correct (zero variance); c: a singleton; d: 2 of 3 correct, interleaved with the
    # others so that groups are not contiguous.
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    uids = np.array(["a", "d", "a", "b", "a", "b", "c", "d", "a", "d"], dtype=object)
    return scores, uids


# ---------------------------------------------------------------------------------------------------------- §1 GRPO


def test_grpo_baseline_hand_worked() -> None:
    scores, uids = _grpo_batch()
    a_base = _a_base(scores, uids)
    # Group a holds rows 0, 2, 4, 8 with scores [1, 0, 1, 1]: mean 0.75,
    # unbiased std = sqrt((0.0625 * 3 + 0.5625) / 3) = sqrt(0.25) = 0.5 -> [0.5, -1.5, 0.5, 0.5].
    assert a_base[[0, 2, 4, 8]].tolist() == pytest.approx([0.5, -1.5, 0.5, 0.5], rel=1e-5)
    # Group b = [1, 1]: zero variance -> 0 / (0 + eps) = 0. Group c: a singleton, mean 0 and std 1 as in verl -> 1.
    assert a_base[[3, 5]].tolist() == [0.0, 0.0]
    assert a_base[6].item() == pytest.approx(1.0, rel=1e-5)
    # Group d = rows 1, 7, 9 with [0, 0, 1]: mean 1/3, std = sqrt((1/9 + 1/9 + 4/9) / 2) = sqrt(1/3).
    assert a_base[[1, 7, 9]].tolist() == pytest.approx([-(3**-0.5), -(3**-0.5), 2 * 3**-0.5], rel=1e-5)


def test_grpo_zero_variance_groups_give_zero_advantage() -> None:
    a_base = _a_base(torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0]), ["g", "g", "g", "h", "h"])
    assert torch.equal(a_base, torch.zeros(5))


# ------------------------------------------------------------------------------------------- §4 signed importance


def test_signed_importance_normalises_mean_abs_to_one() -> None:
    cfg = AdvantageConfig(eps=0.0)
    # C = [1, -1, 2] (slot 3 is beyond K = 3) -> sum|C| = 4 -> s = 3 * C / 4 = [0.75, -0.75, 1.5]; mean |s| = 1.
    s = signed_step_importance(torch.tensor([[1.0, -1.0, 2.0, 9.0]]), torch.tensor([3]), cfg)
    assert torch.allclose(s, torch.tensor([[0.75, -0.75, 1.5, 0.0]]))
    assert s[0, :3].abs().mean().item() == pytest.approx(1.0)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(-50, 50, allow_subnormal=False), min_size=1, max_size=12))
def test_signed_importance_mean_abs_is_one_when_unclipped(contributions: list[float]) -> None:
    c = torch.tensor([contributions], dtype=torch.float64)
    k = len(contributions)
    if c.abs().sum() < 1e-2:
        c = c + 1.0  # an all-zero response has s = 0 everywhere, covered separately
    cfg = AdvantageConfig(eps=1e-12, s_clip=float(k))  # |s_i| <= K always, so nothing is clipped
    s = signed_step_importance(c, torch.tensor([k]), cfg)
    assert s.abs().mean().item() == pytest.approx(1.0, rel=1e-9)
    assert torch.equal(torch.sign(s), torch.sign(c))


def test_signed_importance_is_clipped() -> None:
    # C = [10, 0.1, 0.1, 0.1] -> s_0 = 4 * 10 / 10.3 = 3.88 > s_clip = 3 -> 3; s_1 = 4 * 0.1 / 10.3 = 0.0388.
    s = signed_step_importance(torch.tensor([[10.0, 0.1, 0.1, 0.1]]), torch.tensor([4]), AdvantageConfig())
    assert s[0, 0].item() == pytest.approx(3.0)
    assert s[0, 1].item() == pytest.approx(4 * 0.1 / 10.3, rel=1e-5)
    s_neg = signed_step_importance(torch.tensor([[-10.0, 0.1, 0.1, 0.1]]), torch.tensor([4]), AdvantageConfig())
    assert s_neg[0, 0].item() == pytest.approx(-3.0)


def test_signed_importance_of_a_response_whose_steps_change_nothing_is_zero() -> None:
    s = signed_step_importance(torch.zeros(1, 3), torch.tensor([3]), AdvantageConfig())
    assert torch.equal(s, torch.zeros(1, 3))


def test_each_step_keeps_its_own_sign_whatever_the_telescoped_total() -> None:
    cfg = AdvantageConfig(eps=0.0)
    # Row 0: C = [2, -1], total gain L_K - L_0 = +1; row 1: C = [2, -3], total -1. Step 0 raised the answer's
    # likelihood in both, so it is helpful in both (s = 2 * 2 / 3 = 1.33 and 2 * 2 / 5 = 0.8); step 1 is harmful.
    s = signed_step_importance(torch.tensor([[2.0, -1.0], [2.0, -3.0]]), torch.tensor([2, 2]), cfg)
    assert s[:, 0].tolist() == pytest.approx([4 / 3, 0.8])
    assert s[:, 1].tolist() == pytest.approx([-2 / 3, -1.2])


def test_step_credit_depends_on_the_split_not_only_on_the_telescoped_total() -> None:
    # L = [0, 1, 1] and [0, 0, 1] have the same total gain L_K - L_0 = 1 but credit different steps.
    contributions = step_contributions(torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]), torch.tensor([2, 2]))
    s = signed_step_importance(contributions, torch.tensor([2, 2]), AdvantageConfig(eps=0.0))
    assert s.tolist() == [[2.0, 0.0], [0.0, 2.0]]


def test_signed_importance_ignores_the_offset_and_scale_of_the_log_likelihoods() -> None:
    # How likely the answer is from the prompt alone (L_0) or the unit of L must not move credit between steps.
    cfg = AdvantageConfig(eps=0.0)
    num_steps = torch.tensor([3])
    loglik = torch.tensor([[-9.0, -7.5, -8.0, -4.0]])
    s = signed_step_importance(step_contributions(loglik, num_steps), num_steps, cfg)
    s_shifted = signed_step_importance(step_contributions(2.5 * loglik - 40.0, num_steps), num_steps, cfg)
    assert torch.allclose(s, s_shifted)


# ------------------------------------------------------------------------------------------------ §4 uncertainty


def test_step_uncertainty_divides_by_the_mean_over_steps_of_the_batch() -> None:
    cfg = AdvantageConfig(eps=0.0)
    # Row 0: steps [1, 1] and [4] (padding 99 ignored); row 1: one step [1, 1, 1, 1].
    step_index = torch.tensor([[0, 0, 1, -1], [0, 0, 0, 0]])
    entropy = torch.tensor([[1.0, 1.0, 4.0, 99.0], [1.0, 1.0, 1.0, 1.0]])
    u, step_mean = step_uncertainty(entropy, step_index, torch.tensor([2, 1]), 2, cfg)
    # Step means 1, 4, 1 -> mean over steps 2 (each step once; the token mean would be 10 / 7) -> u = 0.5, 2, 0.5.
    assert torch.allclose(step_mean, torch.tensor([[1.0, 4.0], [1.0, 0.0]]))
    assert torch.allclose(u, torch.tensor([[0.5, 2.0], [0.5, 0.0]]))


def test_step_uncertainty_is_clipped_at_u_clip() -> None:
    step_index = torch.tensor([[0, 1, 2, 3]])
    entropy = torch.tensor([[0.1, 0.1, 0.1, 10.0]])
    # Step means 0.1, 0.1, 0.1, 10 -> mean 2.575 -> u = 0.0388, ..., 10 / 2.575 = 3.88 -> clipped to 3.
    u, _ = step_uncertainty(entropy, step_index, torch.tensor([4]), 4, AdvantageConfig(eps=0.0))
    assert u[0, :3].tolist() == pytest.approx([0.1 / 2.575] * 3, rel=1e-5)
    assert u[0, 3].item() == pytest.approx(3.0)
    u_low_cap, _ = step_uncertainty(entropy, step_index, torch.tensor([4]), 4, AdvantageConfig(eps=0.0, u_clip=1.5))
    assert u_low_cap[0, 3].item() == pytest.approx(1.5)


def test_empty_steps_get_zero_uncertainty_and_do_not_count_in_the_batch_mean() -> None:
    # Row 0 is an empty response (one empty step); row 1 has steps of mean entropy 1 and 3 -> batch mean 2.
    step_index = torch.tensor([[-1, -1], [0, 1]])
    u, step_mean = step_uncertainty(
        torch.tensor([[5.0, 5.0], [1.0, 3.0]]), step_index, torch.tensor([1, 2]), 2, AdvantageConfig(eps=0.0)
    )
    assert u.tolist() == [[0.0, 0.0], [0.5, 1.5]]
    assert step_mean.tolist() == [[0.0, 0.0], [1.0, 3.0]]


# -------------------------------------------------------------------------------------------------- §4 weights


def test_weight_regimes_hand_worked() -> None:
    cfg = AdvantageConfig(beta=0.5, gamma=0.5, theta=1.0)
    s = torch.tensor([[1.5, 1.0, 0.4, -0.8, -2.0, 0.0, 2.0]])
    u = torch.tensor([[2.0, 0.0, 1.0, 1.0, 0.4, 3.0, 0.5]])
    valid = torch.tensor([[True, True, True, True, True, True, False]])
    w, regime = step_weights(s, u, valid, cfg)
    # Step 0: helpful and important (1.5 >= theta): w = 1 + 0.5 * 2 = 2.
    # Step 1: s = 1.0 = theta counts as important: w = 1 + 0.5 * 0 = 1.
    # Step 2: helpful, unimportant (0.4 < theta): w = max(0, 1 - 0.5 * 1) = 0.5.
    # Step 3: harmful (s < 0): w = max(0, 1 - 0.5 * 1) = 0.5.
    # Step 4: harmful however large |s|: w = max(0, 1 - 0.5 * 0.4) = 0.8.
    # Step 5: s = 0 counts as harmful; 1 - 0.5 * 3 = -0.5 < 0 -> w = 0.
    # Step 6: not a step: w = 0, regime 0.
    assert torch.allclose(w, torch.tensor([[2.0, 1.0, 0.5, 0.5, 0.8, 0.0, 0.0]]))
    assert regime.tolist() == [
        [
            REGIME_HELPFUL_IMPORTANT,
            REGIME_HELPFUL_IMPORTANT,
            REGIME_HELPFUL_MINOR,
            REGIME_HARMFUL,
            REGIME_HARMFUL,
            REGIME_HARMFUL,
            REGIME_INVALID,
        ]
    ]


def test_attributed_step_advantage_hand_worked() -> None:
    a_base = torch.tensor([0.5, -2.0])
    s = torch.tensor([[2.0, -1.0], [2.0, -1.0]])
    w = torch.tensor([[1.5, 0.5], [1.5, 0.5]])
    # A_attr = |A_base| * s * w: row 0: 0.5 * [3, -0.5] = [1.5, -0.25]; row 1: 2 * [3, -0.5] = [6, -1].
    assert step_attribution_advantage(a_base, s, w).tolist() == [[1.5, -0.25], [6.0, -1.0]]
    # A_final = A_base + 0.5 * A_attr: row 0: [1.25, 0.375]; row 1: [1.0, -2.5].
    assert attributed_step_advantage(a_base, s, w, alpha=0.5).tolist() == [[1.25, 0.375], [1.0, -2.5]]


def test_attributed_advantage_follows_the_step_sign_hand_worked() -> None:
    cfg = ACPOConfig(advantage=AdvantageConfig(eps=0.0, attr_total="added"))
    # One correct response (A_base = +1) and one wrong (A_base = -1), two steps of 2 tokens each, entropy 1
    # everywhere -> every step mean is 1, the batch mean is 1 -> u = 1 for every step.
    step_index, num_steps, mask = _steps_from_lengths([[2, 2], [2, 2]], width=4)
    entropy = torch.ones(2, 4)
    a_base = torch.tensor([1.0, -1.0])
    # C = [3, -1]: s = 2 * C / 4 = [1.5, -0.5]. Step 0: regime 1, w = 1 + 0.5 * 1 = 1.5; step 1: regime 3,
    # w = 1 - 0.5 * 1 = 0.5.
    contributions = torch.tensor([[3.0, -1.0], [3.0, -1.0]])
    out = compute_acpo_advantage(
        a_base, contributions, step_index, num_steps, entropy, mask, cfg, correct=torch.tensor([True, False])
    )
    # A_attr = |A_base| * s * w = [2.25, -0.25] in both rows; A_final = A_base + 0.5 * A_attr.
    assert torch.allclose(out.attributed_advantages, torch.tensor([[2.25, -0.25], [2.25, -0.25]]))
    assert torch.allclose(out.step_advantages, torch.tensor([[2.125, 0.875], [0.125, -1.125]]))
    expected_tokens = torch.tensor([[2.125, 2.125, 0.875, 0.875], [0.125, 0.125, -1.125, -1.125]])
    assert torch.allclose(out.token_advantages, expected_tokens)
    # The helpful step gains credit in the correct response and loses blame in the wrong one; the harmful step the
    # opposite.
    assert out.token_advantages[0, 0] > 1.0 and out.token_advantages[1, 0] > -1.0
    assert out.token_advantages[0, 2] < 1.0 and out.token_advantages[1, 2] < -1.0
    metrics = out.metrics
    assert metrics["acpo/regime1_frac"] == pytest.approx(0.5)
    assert metrics["acpo/regime2_frac"] == 0.0
    assert metrics["acpo/regime3_frac"] == pytest.approx(0.5)
    assert metrics["acpo/helpful_frac"] == pytest.approx(0.5)
    assert metrics["acpo/steps_per_response"] == pytest.approx(2.0)
    assert metrics["acpo/step_tokens_mean"] == pytest.approx(2.0)
    assert metrics["acpo/w_mean"] == pytest.approx(1.0)  # (1.5 + 0.5) / 2
    assert metrics["acpo/u_mean"] == pytest.approx(1.0)
    assert metrics["acpo/adv_attr_abs_mean"] == pytest.approx(1.25)  # (2.25 + 0.25) / 2
    assert metrics["acpo/attr_gain"] == pytest.approx(2.0)  # sum C = 3 - 1
    assert metrics["acpo/attr_gain_correct"] == pytest.approx(2.0)
    assert metrics["acpo/attr_gain_incorrect"] == pytest.approx(2.0)
    assert metrics["acpo/zero_adv_frac"] == 0.0


# -------------------------------------------------------------------------------------------- alpha = 0 is GRPO


@pytest.mark.parametrize("norm_by_std", [True, False])
def test_alpha_zero_stage1_is_verl_grpo_bit_for_bit(norm_by_std: bool) -> None:
    scores, uids = _grpo_batch()
    # Row 7 is an empty response; rows differ in length and number of steps.
    lengths = [[3, 4], [7], [2, 2, 2], [5, 1], [6], [1, 5], [3, 3], [], [4, 2], [1]]
    step_index, num_steps, mask = _steps_from_lengths(lengths, width=8)
    verl_adv = _verl_grpo(scores, uids, mask.float(), norm_by_std)
    a_base = _a_base(scores, uids, norm_by_std)
    generator = torch.Generator().manual_seed(0)
    contributions = torch.randn(len(scores), 3, generator=generator)
    entropy = torch.rand(mask.shape, generator=generator) * 3
    cfg = ACPOConfig.from_dict({"advantage": {"alpha": 0.0}})
    out = compute_acpo_advantage(a_base, contributions, step_index, num_steps, entropy, mask, cfg)
    assert torch.equal(_bits(out.token_advantages), _bits(verl_adv))
    # The attributed term was computed (and is not zero); alpha = 0 alone removes it.
    assert out.attributed_advantages.abs().sum() > 0


def test_zero_variance_group_gets_zero_advantage() -> None:
    a_base = _a_base(torch.tensor([1.0, 1.0, 1.0]), ["g", "g", "g"])
    step_index, num_steps, mask = _steps_from_lengths([[2, 2], [4], [1, 3]], width=4)
    for stage in (1, 2):
        out = compute_acpo_advantage(
            a_base,
            torch.tensor([[0.5, -0.2], [1.0, 0.0], [0.1, 0.1]]),
            step_index,
            num_steps,
            torch.rand(3, 4) * 2,
            mask,
            ACPOConfig(stage=stage, advantage=AdvantageConfig(alpha=1.0)),
        )
        assert torch.equal(out.token_advantages, torch.zeros(3, 4))
        assert out.metrics["acpo/zero_adv_frac"] == 1.0


# ----------------------------------------------------------------------------------------------- §5 token weights


def test_stage2_confidence_weights_hand_worked() -> None:
    step_index = torch.tensor([[0, 0, 0, 1, 1, -1]])
    entropy = torch.tensor([[0.1, 1.0, 2.0, 0.5, 0.5, 7.0]])
    omega = token_confidence_weights(entropy, step_index, stage=2, tau=1.0)
    # Step 0: 3 * softmax([-0.1, -1, -2]) = [1.84, 0.75, 0.28] (lower entropy, more weight); mean 1.
    # Step 1: equal entropies -> 2 * [0.5, 0.5] = [1, 1]. Padding: 0.
    assert torch.allclose(omega[0, :3], 3 * torch.softmax(torch.tensor([-0.1, -1.0, -2.0]), 0))
    assert omega[0, :3].mean().item() == pytest.approx(1.0)
    assert omega[0, 3:].tolist() == pytest.approx([1.0, 1.0, 0.0])
    # tau = 2 halves the logits: 3 * softmax([-0.05, -0.5, -1]).
    omega_warm = token_confidence_weights(entropy, step_index, stage=2, tau=2.0)
    assert torch.allclose(omega_warm[0, :3], 3 * torch.softmax(torch.tensor([-0.05, -0.5, -1.0]), 0))


def test_stage1_token_weights_are_one_on_valid_tokens() -> None:
    omega = token_confidence_weights(torch.rand(1, 4), torch.tensor([[0, 0, 1, -1]]), stage=1, tau=1.0)
    assert omega.tolist() == [[1.0, 1.0, 1.0, 0.0]]


def test_stage2_weights_are_stable_for_extreme_entropies() -> None:
    # exp(-H / tau) underflows to 0 for every token without the per-step shift.
    step_index = torch.tensor([[0, 0, 1, 1]])
    entropy = torch.tensor([[5000.0, 5001.0, 90.0, 90.0]])
    omega = token_confidence_weights(entropy, step_index, stage=2, tau=0.01)
    assert torch.isfinite(omega).all()
    assert torch.allclose(omega, torch.tensor([[2.0, 0.0, 1.0, 1.0]]))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.integers(1, 6), min_size=0, max_size=5), min_size=1, max_size=5),
    st.integers(0, 2**31 - 1),
    st.floats(0.05, 5.0),
)
def test_stage2_weights_average_one_per_step_and_keep_step_credit(
    step_lengths: list[list[int]], seed: int, tau: float
) -> None:
    width = max([sum(lengths) for lengths in step_lengths] + [1]) + 1
    step_index, num_steps, mask = _steps_from_lengths(step_lengths, width)
    generator = torch.Generator().manual_seed(seed)
    entropy = torch.rand(mask.shape, generator=generator) * 6
    kmax = int(num_steps.max())
    omega = token_confidence_weights(entropy, step_index, stage=2, tau=tau)
    assert (omega >= 0).all() and torch.equal(omega[mask == 0], torch.zeros(int((mask == 0).sum())))
    contributions = torch.randn(len(step_lengths), kmax, generator=generator)
    a_base = torch.randn(len(step_lengths), generator=generator)
    stage1 = compute_acpo_advantage(a_base, contributions, step_index, num_steps, entropy, mask, ACPOConfig(stage=1))
    cfg2 = ACPOConfig(stage=2, confidence=ConfidenceConfig(tau=tau))
    stage2 = compute_acpo_advantage(a_base, contributions, step_index, num_steps, entropy, mask, cfg2)
    for row, lengths in enumerate(step_lengths):
        for step in range(len(lengths)):
            in_step = step_index[row] == step
            assert omega[row, in_step].mean().item() == pytest.approx(1.0, rel=1e-5)
            assert stage2.token_advantages[row, in_step].sum().item() == pytest.approx(
                stage1.token_advantages[row, in_step].sum().item(), rel=1e-4, abs=1e-5
            )
    # Token weights change nothing per step: same step advantages in both stages.
    assert torch.equal(stage1.step_advantages, stage2.step_advantages)


# ----------------------------------------------------------------------------------------------- empty responses


def test_empty_response_is_one_empty_step_with_zero_advantage() -> None:
    step_index, num_steps, mask = _steps_from_lengths([[], [2, 2]], width=4)
    for stage in (1, 2):
        out = compute_acpo_advantage(
            torch.tensor([0.7, -0.7]),
            torch.tensor([[0.0, 0.0], [1.0, 1.0]]),
            step_index,
            num_steps,
            torch.ones(2, 4),
            mask,
            ACPOConfig(stage=stage),
        )
        assert torch.equal(out.token_advantages[0], torch.zeros(4))
        assert torch.isfinite(out.token_advantages).all()
        assert out.uncertainty[0].tolist() == [0.0, 0.0]
        # The empty step is not counted in the per-step statistics: 2 steps of 2 tokens.
        assert out.metrics["acpo/step_tokens_mean"] == pytest.approx(2.0)


def test_batch_of_only_empty_responses_does_not_crash() -> None:
    step_index, num_steps, mask = _steps_from_lengths([[], []], width=3)
    out = compute_acpo_advantage(
        torch.tensor([1.0, -1.0]),
        torch.zeros(2, 1),
        step_index,
        num_steps,
        torch.zeros(2, 3),
        mask,
        ACPOConfig(stage=2),
    )
    assert torch.equal(out.token_advantages, torch.zeros(2, 3))
    assert out.metrics["acpo/steps_per_response"] == 1.0


# -------------------------------------------------------------------------------------------------- bad inputs


def _bad_batch(kind: str, row: int) -> dict[str, torch.Tensor]:
    step_index, num_steps, mask = _steps_from_lengths([[2, 2], [3, 1], [1, 1]], width=4)
    inputs = {
        "a_base": torch.ones(3),
        "contributions": torch.ones(3, 2),
        "step_index": step_index,
        "num_steps": num_steps,
        "entropy": torch.ones(3, 4),
        "response_mask": mask,
    }
    if kind == "entropy_nan":
        inputs["entropy"][row, 1] = float("nan")
    elif kind == "entropy_inf":
        inputs["entropy"][row, 0] = float("inf")
    elif kind == "contributions_inf":
        inputs["contributions"][row, 1] = float("-inf")
    elif kind == "a_base_nan":
        inputs["a_base"][row] = float("nan")
    elif kind == "step_beyond_k":
        inputs["step_index"][row, 0] = 2
    elif kind == "step_below_minus_one":
        inputs["step_index"][row, 0] = -2
    elif kind == "minus_one_on_valid_token":
        inputs["step_index"][row, 0] = -1
    elif kind == "step_on_padding":
        inputs["step_index"][row, 3] = 0
    elif kind == "num_steps_zero":
        inputs["num_steps"][row] = 0
    elif kind == "num_steps_beyond_kmax":
        inputs["num_steps"][row] = 3
    return inputs


@pytest.mark.parametrize(
    ("kind", "row", "message"),
    [
        ("entropy_nan", 1, "entropy is NaN or infinite on a valid token: row 1"),
        ("entropy_inf", 2, "entropy is NaN or infinite on a valid token: row 2"),
        ("contributions_inf", 0, "contributions is NaN or infinite on a step: row 0"),
        ("a_base_nan", 2, "a_base is NaN or infinite: row 2"),
        ("step_beyond_k", 1, r"step_index is outside \[0, num_steps\) on a valid response token: row 1"),
        ("step_below_minus_one", 0, r"step_index is outside \[0, num_steps\) on a valid response token: row 0"),
        ("minus_one_on_valid_token", 2, r"step_index is outside \[0, num_steps\) on a valid response token: row 2"),
        ("step_on_padding", 2, "step_index is not -1 on a padding token: row 2"),
        ("num_steps_zero", 1, r"num_steps must lie in \[1, Kmax=2\]: row 1"),
        ("num_steps_beyond_kmax", 0, r"num_steps must lie in \[1, Kmax=2\]: row 0"),
    ],
)
def test_bad_input_names_the_row(kind: str, row: int, message: str) -> None:
    inputs = _bad_batch(kind, row)
    with pytest.raises(ValueError, match=f"^{message}$"):
        compute_acpo_advantage(**inputs, cfg=ACPOConfig())


def test_nan_on_padding_and_beyond_k_is_ignored() -> None:
    step_index, num_steps, mask = _steps_from_lengths([[2], [1]], width=3)
    entropy = torch.tensor([[1.0, 1.0, float("nan")], [1.0, float("nan"), float("inf")]])
    contributions = torch.tensor([[1.0, float("nan")], [-1.0, float("inf")]])
    out = compute_acpo_advantage(
        torch.tensor([1.0, -1.0]), contributions, step_index, num_steps, entropy, mask, ACPOConfig(stage=2)
    )
    assert torch.isfinite(out.token_advantages).all()
    assert math.isfinite(out.metrics["acpo/attr_gain"])


@pytest.mark.parametrize(
    ("name", "shape", "message"),
    [
        ("entropy", (2, 4), "entropy must have the shape of response_mask"),
        ("step_index", (2, 2), "step_index must have the shape of response_mask"),
        ("contributions", (3, 2), "contributions must be"),
        ("num_steps", (3,), "num_steps must be"),
        ("a_base", (2, 1), "a_base must be"),
    ],
)
def test_mismatched_shapes_raise_naming_the_tensor(name: str, shape: tuple[int, ...], message: str) -> None:
    step_index, num_steps, mask = _steps_from_lengths([[2, 1], [1]], width=3)
    inputs = {
        "a_base": torch.ones(2),
        "contributions": torch.ones(2, 2),
        "step_index": step_index,
        "num_steps": num_steps,
        "entropy": torch.ones(2, 3),
        "response_mask": mask,
    }
    dtype = inputs[name].dtype
    inputs[name] = torch.zeros(shape, dtype=dtype)
    with pytest.raises(ValueError, match=message):
        compute_acpo_advantage(**inputs, cfg=ACPOConfig())


def test_float_step_index_is_rejected() -> None:
    step_index, num_steps, mask = _steps_from_lengths([[2]], width=2)
    with pytest.raises(ValueError, match="step_index must be an integer tensor"):
        compute_acpo_advantage(
            torch.ones(1), torch.ones(1, 1), step_index.float(), num_steps, torch.ones(1, 2), mask, ACPOConfig()
        )


# -------------------------------------------------------------------------------------------------- properties


_batches = st.lists(st.lists(st.integers(1, 6), min_size=0, max_size=5), min_size=1, max_size=6)


def _random_inputs(
    step_lengths: list[list[int]], seed: int, extra_width: int = 0, extra_slots: int = 0
) -> dict[str, torch.Tensor]:
    width = max([sum(lengths) for lengths in step_lengths] + [1]) + 1
    step_index, num_steps, mask = _steps_from_lengths(step_lengths, width)
    generator = torch.Generator().manual_seed(seed)
    kmax = int(num_steps.max())
    contributions = torch.randn(len(step_lengths), kmax, generator=generator)
    entropy = torch.rand(mask.shape, generator=generator) * 4
    a_base = torch.randn(len(step_lengths), generator=generator)
    if extra_width:
        step_index = torch.cat([step_index, torch.full((len(step_lengths), extra_width), -1)], dim=1)
        mask = torch.cat([mask, torch.zeros(len(step_lengths), extra_width, dtype=mask.dtype)], dim=1)
        entropy = torch.cat([entropy, torch.full((len(step_lengths), extra_width), 123.0)], dim=1)
    if extra_slots:
        contributions = torch.cat([contributions, torch.full((len(step_lengths), extra_slots), 77.0)], dim=1)
    return {
        "a_base": a_base,
        "contributions": contributions,
        "step_index": step_index,
        "num_steps": num_steps,
        "entropy": entropy,
        "response_mask": mask,
    }


@settings(max_examples=60, deadline=None)
@given(_batches, st.integers(0, 2**31 - 1), st.sampled_from([1, 2]))
def test_advantages_are_bounded_and_zero_on_padding(step_lengths: list[list[int]], seed: int, stage: int) -> None:
    inputs = _random_inputs(step_lengths, seed)
    cfg = ACPOConfig(stage=stage)
    out = compute_acpo_advantage(**inputs, cfg=cfg)
    mask, a_base = inputs["response_mask"], inputs["a_base"]
    adv = cfg.advantage
    assert torch.isfinite(out.token_advantages).all()
    assert torch.equal(out.token_advantages[mask == 0], torch.zeros(int((mask == 0).sum())))
    kmax = inputs["contributions"].shape[1]
    valid_steps = torch.arange(kmax).unsqueeze(0) < inputs["num_steps"].unsqueeze(1)
    assert (out.signed_importance.abs() <= adv.s_clip + 1e-6).all()
    assert ((out.uncertainty >= 0) & (out.uncertainty <= adv.u_clip)).all()
    assert (out.weights >= 0).all() and (out.weights <= 1 + adv.beta * adv.u_clip + 1e-6).all()
    assert (out.regime[valid_steps] > 0).all() and (out.regime[~valid_steps] == 0).all()
    # |A_final - A_base| <= alpha * |A_base| * s_clip * w_max.
    bound = adv.alpha * a_base.abs() * adv.s_clip * (1 + adv.beta * adv.u_clip)
    assert ((out.step_advantages - a_base.unsqueeze(1)).abs() <= bound.unsqueeze(1) + 1e-5).all()
    fractions = [out.metrics[f"acpo/regime{r}_frac"] for r in (1, 2, 3)]
    assert sum(fractions) == pytest.approx(1.0) or all(len(lengths) == 0 for lengths in step_lengths)


@settings(max_examples=30, deadline=None)
@given(_batches, st.integers(0, 2**31 - 1), st.sampled_from([1, 2]), st.integers(1, 5), st.integers(1, 3))
def test_extra_padding_changes_nothing(
    step_lengths: list[list[int]], seed: int, stage: int, extra_width: int, extra_slots: int
) -> None:
    cfg = ACPOConfig(stage=stage)
    plain = compute_acpo_advantage(**_random_inputs(step_lengths, seed), cfg=cfg)
    padded = compute_acpo_advantage(**_random_inputs(step_lengths, seed, extra_width, extra_slots), cfg=cfg)
    width, kmax = plain.token_advantages.shape[1], plain.step_advantages.shape[1]
    # Equal up to float rounding (sums run over wider tensors); A_base + alpha * A_attr can cancel, hence atol.
    assert torch.allclose(padded.signed_importance[:, :kmax], plain.signed_importance, rtol=1e-6, atol=1e-7)
    assert torch.allclose(padded.uncertainty[:, :kmax], plain.uncertainty, rtol=1e-6, atol=1e-7)
    assert torch.allclose(padded.token_advantages[:, :width], plain.token_advantages, rtol=1e-5, atol=1e-5)
    assert torch.equal(padded.token_advantages[:, width:], torch.zeros_like(padded.token_advantages[:, width:]))
    assert torch.allclose(padded.step_advantages[:, :kmax], plain.step_advantages, rtol=1e-5, atol=1e-5)
    # Means over the batch, summed in another order: 1.6e-6 relative seen on acpo/attr_gain.
    assert padded.metrics == pytest.approx(plain.metrics, rel=1e-5, abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(_batches, st.integers(0, 2**31 - 1), st.sampled_from([1, 2]))
def test_reordering_the_batch_reorders_the_advantages(step_lengths: list[list[int]], seed: int, stage: int) -> None:
    inputs = _random_inputs(step_lengths, seed)
    order = torch.randperm(len(step_lengths), generator=torch.Generator().manual_seed(seed))
    cfg = ACPOConfig(stage=stage)
    out = compute_acpo_advantage(**inputs, cfg=cfg)
    shuffled = compute_acpo_advantage(**{k: v[order] for k, v in inputs.items()}, cfg=cfg)
    assert torch.allclose(shuffled.token_advantages, out.token_advantages[order], atol=1e-6)
