"""acpo_core.advantage: spec §1 (GRPO baseline), §4 (attributed advantage), §5 (token weights)."""

from __future__ import annotations

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
    compute_acpo_advantage,
    grpo_outcome_advantage,
    signed_step_importance,
    step_uncertainty,
    step_weights,
    token_confidence_weights,
)
from acpo_core.config import ACPOConfig, AdvantageConfig


def _steps_from_lengths(step_lengths: list[list[int]], width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """step_index [B, width], num_steps [B], response_mask [B, width] from each response's step lengths."""
    rows, masks = [], []
    for lengths in step_lengths:
        idx = [i for i, n in enumerate(lengths) for _ in range(n)]
        rows.append(idx + [-1] * (width - len(idx)))
        masks.append([1] * len(idx) + [0] * (width - len(idx)))
    num_steps = torch.tensor([max(len(lengths), 1) for lengths in step_lengths])
    return torch.tensor(rows), num_steps, torch.tensor(masks)


def _grpo_batch() -> tuple[torch.Tensor, np.ndarray]:
    # Group a: mixed outcomes; b: all correct (zero variance); c: singleton; d: mixed, 3 responses.
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    uids = np.array(["a", "a", "a", "a", "b", "b", "c", "d", "d", "d"], dtype=object)
    return scores, uids


@pytest.mark.parametrize("norm_by_std", [True, False])
def test_grpo_outcome_advantage_equals_verl(norm_by_std: bool) -> None:
    scores, uids = _grpo_batch()
    width = 5
    token_rewards = torch.zeros(len(scores), width)
    token_rewards[:, 2] = scores
    mask = torch.ones(len(scores), width)
    verl_adv, _ = compute_grpo_outcome_advantage(token_rewards, mask, uids, norm_adv_by_std_in_grpo=norm_by_std)
    ours = grpo_outcome_advantage(scores, uids, norm_adv_by_std_in_grpo=norm_by_std)
    assert torch.equal(ours, verl_adv[:, 0])


def test_alpha_zero_stage1_is_verl_grpo_bit_for_bit() -> None:
    scores, uids = _grpo_batch()
    lengths = [[3, 4], [7], [2, 2, 2], [5, 1], [6], [1, 5], [3, 3], [], [4, 2], [1]]
    step_index, num_steps, mask = _steps_from_lengths(lengths, width=8)
    token_rewards = torch.zeros(mask.shape)
    last = (mask.sum(1) - 1).clamp(min=0)
    token_rewards[torch.arange(len(scores)), last] = scores
    verl_adv, _ = compute_grpo_outcome_advantage(token_rewards, mask.float(), uids)
    a_base = verl_adv.gather(1, torch.zeros(len(scores), 1, dtype=torch.long)).squeeze(1)
    generator = torch.Generator().manual_seed(0)
    contributions = torch.randn(len(scores), 3, generator=generator)
    entropy = torch.rand(mask.shape, generator=generator) * 3
    cfg = ACPOConfig.from_dict({"advantage": {"alpha": 0.0}})
    out = compute_acpo_advantage(a_base, contributions, step_index, num_steps, entropy, mask, cfg)
    assert torch.equal(out.token_advantages, verl_adv)


def test_zero_variance_group_gets_zero_advantage() -> None:
    a_base = grpo_outcome_advantage(torch.tensor([1.0, 1.0, 1.0]), ["g", "g", "g"])
    assert torch.equal(a_base, torch.zeros(3))
    step_index, num_steps, mask = _steps_from_lengths([[2, 2], [4], [1, 3]], width=4)
    out = compute_acpo_advantage(
        a_base,
        torch.tensor([[0.5, -0.2], [1.0, 0.0], [0.1, 0.1]]),
        step_index,
        num_steps,
        torch.ones(3, 4),
        mask,
        ACPOConfig(),
    )
    assert torch.equal(out.token_advantages, torch.zeros(3, 4))


def test_signed_importance_normalises_mean_abs_to_one() -> None:
    cfg = AdvantageConfig(eps=0.0)
    # C = [1, -1, 2] -> sum|C| = 4, K = 3 -> s = 3 * C / 4 = [0.75, -0.75, 1.5]; mean |s| = 1.
    s = signed_step_importance(torch.tensor([[1.0, -1.0, 2.0, 9.0]]), torch.tensor([3]), cfg)
    assert torch.allclose(s, torch.tensor([[0.75, -0.75, 1.5, 0.0]]))
    assert torch.isclose(s[0, :3].abs().mean(), torch.tensor(1.0))


def test_signed_importance_is_clipped() -> None:
    # C = [10, 0.1, 0.1, 0.1] -> s_0 = 4 * 10 / 10.3 = 3.88 > s_clip = 3.
    s = signed_step_importance(torch.tensor([[10.0, 0.1, 0.1, 0.1]]), torch.tensor([4]), AdvantageConfig())
    assert s[0, 0].item() == pytest.approx(3.0)
    assert s[0, 1].item() == pytest.approx(4 * 0.1 / 10.3, rel=1e-5)


def test_step_uncertainty_divides_by_the_batch_mean_and_clips() -> None:
    cfg = AdvantageConfig(eps=0.0, u_clip=3.0)
    # Row 0: steps of entropies [1, 1] and [4]; row 1: one step [1, 1, 1, 1]... (padding 0).
    step_index = torch.tensor([[0, 0, 1, -1], [0, 0, 0, 0]])
    entropy = torch.tensor([[1.0, 1.0, 4.0, 99.0], [1.0, 1.0, 1.0, 1.0]])
    u, step_mean = step_uncertainty(entropy, step_index, torch.tensor([2, 1]), 2, cfg)
    # Step means: 1, 4, 1 -> batch mean over steps 2 -> u = 0.5, 2.0, 0.5.
    assert torch.allclose(step_mean, torch.tensor([[1.0, 4.0], [1.0, 0.0]]))
    assert torch.allclose(u, torch.tensor([[0.5, 2.0], [0.5, 0.0]]))
    u_clipped, _ = step_uncertainty(
        entropy * torch.tensor([[1.0, 1.0, 10.0, 1.0], [1.0] * 4]), step_index, torch.tensor([2, 1]), 2, cfg
    )
    # Step means 1, 40, 1 -> mean 14 -> 40/14 = 2.86 (< 3, kept); 1/14.
    assert u_clipped[0, 1].item() == pytest.approx(40 / 14, rel=1e-5)
    u_hot, _ = step_uncertainty(torch.tensor([[0.1, 100.0]]), torch.tensor([[0, 1]]), torch.tensor([2]), 2, cfg)
    # Step means 0.1, 100 -> mean 50.05 -> 100 / 50.05 = 1.998; raise u_clip to check clipping with a lower cap.
    assert u_hot[0, 1].item() == pytest.approx(100 / 50.05, rel=1e-5)
    u_capped, _ = step_uncertainty(
        torch.tensor([[0.1, 100.0]]), torch.tensor([[0, 1]]), torch.tensor([2]), 2, AdvantageConfig(u_clip=1.5)
    )
    assert u_capped[0, 1].item() == pytest.approx(1.5)


def test_weight_regimes_hand_worked() -> None:
    cfg = AdvantageConfig(beta=0.5, gamma=0.5, theta=1.0)
    s = torch.tensor([[1.5, 0.4, -0.8, 0.0, 2.0]])
    u = torch.tensor([[2.0, 1.0, 1.0, 3.0, 0.5]])
    valid = torch.tensor([[True, True, True, True, False]])
    w, regime = step_weights(s, u, valid, cfg)
    # Step 0: helpful and important (1.5 >= theta): w = 1 + 0.5 * 2 = 2.
    # Step 1: helpful, unimportant (0.4 < theta): w = max(0, 1 - 0.5 * 1) = 0.5.
    # Step 2: harmful (s <= 0): w = max(0, 1 - 0.5 * 1) = 0.5.
    # Step 3: s = 0 counts as harmful; 1 - 0.5 * 3 < 0 -> w = 0.
    # Step 4: not a step: w = 0, regime 0.
    assert torch.allclose(w, torch.tensor([[2.0, 0.5, 0.5, 0.0, 0.0]]))
    assert regime.tolist() == [
        [REGIME_HELPFUL_IMPORTANT, REGIME_HELPFUL_MINOR, REGIME_HARMFUL, REGIME_HARMFUL, REGIME_INVALID]
    ]


def test_attributed_advantage_follows_the_step_sign_hand_worked() -> None:
    cfg = ACPOConfig(advantage=AdvantageConfig(eps=0.0))
    # One correct response (A_base = +1) and one wrong (A_base = -1), two steps of 2 tokens each, entropy 1
    # everywhere -> u = 1 for every step.
    step_index, num_steps, mask = _steps_from_lengths([[2, 2], [2, 2]], width=4)
    entropy = torch.ones(2, 4)
    a_base = torch.tensor([1.0, -1.0])
    # C = [3, -1]: s = 2 * C / 4 = [1.5, -0.5]. Step 0: regime 1, w = 1 + 0.5 = 1.5; step 1: regime 3, w = 0.5.
    contributions = torch.tensor([[3.0, -1.0], [3.0, -1.0]])
    out = compute_acpo_advantage(a_base, contributions, step_index, num_steps, entropy, mask, cfg)
    # A_attr = |A_base| * s * w = [2.25, -0.25] for both rows; A_final = A_base + 0.5 * A_attr.
    assert torch.allclose(out.step_advantages, torch.tensor([[2.125, 0.875], [0.125, -1.125]]))
    assert torch.allclose(
        out.token_advantages, torch.tensor([[2.125, 2.125, 0.875, 0.875], [0.125, 0.125, -1.125, -1.125]])
    )
    # The helpful step gains credit in the correct response and loses blame in the wrong one.
    assert out.token_advantages[0, 0] > 1.0 and out.token_advantages[1, 0] > -1.0
    assert out.metrics["acpo/regime1_frac"] == pytest.approx(0.5)
    assert out.metrics["acpo/regime3_frac"] == pytest.approx(0.5)
    assert out.metrics["acpo/helpful_frac"] == pytest.approx(0.5)
    assert out.metrics["acpo/steps_per_response"] == pytest.approx(2.0)
    assert out.metrics["acpo/step_tokens_mean"] == pytest.approx(2.0)
    assert out.metrics["acpo/w_mean"] == pytest.approx(1.0)
    assert out.metrics["acpo/adv_attr_abs_mean"] == pytest.approx(1.25)


def test_stage2_confidence_weights_keep_each_step_mean_at_one() -> None:
    step_index = torch.tensor([[0, 0, 0, 1, 1, -1]])
    entropy = torch.tensor([[0.1, 1.0, 2.0, 0.5, 0.5, 7.0]])
    omega = token_confidence_weights(entropy, step_index, stage=2, tau=1.0)
    assert omega[0, 5] == 0
    assert omega[0, :3].mean().item() == pytest.approx(1.0)
    assert omega[0, 3:5].tolist() == pytest.approx([1.0, 1.0])
    # Lower entropy, higher confidence, more weight: 3 * softmax([-0.1, -1, -2]).
    expected = 3 * torch.softmax(torch.tensor([-0.1, -1.0, -2.0]), 0)
    assert torch.allclose(omega[0, :3], expected)
    assert torch.equal(
        token_confidence_weights(entropy, step_index, stage=1, tau=1.0), torch.tensor([[1.0, 1, 1, 1, 1, 0]])
    )


def test_stage2_keeps_each_step_total_credit() -> None:
    step_index, num_steps, mask = _steps_from_lengths([[3, 2]], width=6)
    entropy = torch.tensor([[0.1, 1.0, 2.0, 0.3, 0.9, 0.0]])
    contributions = torch.tensor([[1.0, -0.5]])
    stage1 = compute_acpo_advantage(
        torch.tensor([0.8]), contributions, step_index, num_steps, entropy, mask, ACPOConfig(stage=1)
    )
    stage2 = compute_acpo_advantage(
        torch.tensor([0.8]), contributions, step_index, num_steps, entropy, mask, ACPOConfig(stage=2)
    )
    for sl in (slice(0, 3), slice(3, 5)):
        assert stage2.token_advantages[0, sl].sum().item() == pytest.approx(stage1.token_advantages[0, sl].sum().item())
    assert not torch.allclose(stage2.token_advantages, stage1.token_advantages)


def test_empty_response_is_one_empty_step_with_zero_advantage() -> None:
    step_index, num_steps, mask = _steps_from_lengths([[], [2, 2]], width=4)
    out = compute_acpo_advantage(
        torch.tensor([0.7, -0.7]),
        torch.tensor([[0.0, 0.0], [1.0, 1.0]]),
        step_index,
        num_steps,
        torch.ones(2, 4),
        mask,
        ACPOConfig(stage=2),
    )
    assert torch.equal(out.token_advantages[0], torch.zeros(4))
    assert torch.isfinite(out.token_advantages).all()


@pytest.mark.parametrize(
    ("field", "row"),
    [("entropy", 1), ("contributions", 0), ("step_index", 1)],
)
def test_bad_input_names_the_row(field: str, row: int) -> None:
    step_index, num_steps, mask = _steps_from_lengths([[2, 2], [3, 1]], width=4)
    entropy = torch.ones(2, 4)
    contributions = torch.ones(2, 2)
    if field == "entropy":
        entropy[row, 1] = float("nan")
    elif field == "contributions":
        contributions[row, 1] = float("inf")
    else:
        step_index[row, 0] = 5
    with pytest.raises(ValueError, match=rf"{field}.*\[{row}\]"):
        compute_acpo_advantage(torch.ones(2), contributions, step_index, num_steps, entropy, mask, ACPOConfig())


def test_nan_entropy_on_padding_is_ignored() -> None:
    step_index, num_steps, mask = _steps_from_lengths([[2], [1]], width=3)
    entropy = torch.tensor([[1.0, 1.0, float("nan")], [1.0, float("nan"), float("inf")]])
    out = compute_acpo_advantage(
        torch.tensor([1.0, -1.0]), torch.ones(2, 1), step_index, num_steps, entropy, mask, ACPOConfig(stage=2)
    )
    assert torch.isfinite(out.token_advantages).all()


def test_mismatched_shapes_raise() -> None:
    step_index, num_steps, mask = _steps_from_lengths([[2]], width=3)
    with pytest.raises(ValueError, match="entropy"):
        compute_acpo_advantage(
            torch.ones(1), torch.ones(1, 1), step_index, num_steps, torch.ones(1, 4), mask, ACPOConfig()
        )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.integers(1, 6), min_size=0, max_size=5), min_size=1, max_size=6),
    st.integers(0, 2**31 - 1),
    st.sampled_from([1, 2]),
)
def test_properties_hold_for_random_batches(step_lengths: list[list[int]], seed: int, stage: int) -> None:
    width = max([sum(lengths) for lengths in step_lengths] + [1]) + 2
    step_index, num_steps, mask = _steps_from_lengths(step_lengths, width)
    generator = torch.Generator().manual_seed(seed)
    kmax = int(num_steps.max())
    contributions = torch.randn(len(step_lengths), kmax, generator=generator)
    entropy = torch.rand(mask.shape, generator=generator) * 4
    a_base = torch.randn(len(step_lengths), generator=generator)
    cfg = ACPOConfig(stage=stage)
    out = compute_acpo_advantage(a_base, contributions, step_index, num_steps, entropy, mask, cfg)
    assert torch.isfinite(out.token_advantages).all()
    assert torch.equal(out.token_advantages[mask == 0], torch.zeros(int((mask == 0).sum())))
    valid_steps = torch.arange(kmax).unsqueeze(0) < num_steps.unsqueeze(1)
    assert (out.signed_importance.abs() <= cfg.advantage.s_clip + 1e-6).all()
    assert (out.weights >= 0).all() and (out.weights <= 1 + cfg.advantage.beta * cfg.advantage.u_clip + 1e-6).all()
    assert (out.regime[valid_steps] > 0).all() and (out.regime[~valid_steps] == 0).all()
    # |A_final - A_base| <= alpha * |A_base| * s_clip * w_max.
    bound = cfg.advantage.alpha * a_base.abs() * cfg.advantage.s_clip * (1 + cfg.advantage.beta * cfg.advantage.u_clip)
    assert ((out.step_advantages - a_base.unsqueeze(1)).abs() <= bound.unsqueeze(1) + 1e-5).all()
