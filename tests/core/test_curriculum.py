"""acpo_core.curriculum: §6 pass-rate tracking, tiers and hot sampling."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from acpo_core.config import ACPOConfig, CurriculumConfig
from acpo_core.curriculum import PassRateTracker, group_positions, hot_response_count


def test_first_observation_sets_the_estimate_then_ema_follows() -> None:
    tracker = PassRateTracker(ema=0.5)
    # Batch 1: q1 answered [1, 0, 0, 0] -> accuracy 0.25; unseen and unseeded, so p = 0.25 exactly.
    tracker.update(["q1"] * 4, [1, 0, 0, 0])
    assert tracker.pass_rate("q1") == 0.25
    # Batch 2: q1 answered [1, 1, 1, 0] -> 0.75; p = 0.5 * 0.25 + 0.5 * 0.75 = 0.5.
    tracker.update(["q1"] * 4, [1, 1, 1, 0])
    assert tracker.pass_rate("q1") == pytest.approx(0.5)
    # Batch 3: all correct -> 1.0; p = 0.5 * 0.5 + 0.5 * 1.0 = 0.75.
    tracker.update(["q1"] * 4, torch.ones(4))
    assert tracker.pass_rate("q1") == pytest.approx(0.75)
    assert tracker.observations("q1") == 3


def test_ema_weight_is_the_weight_of_the_old_estimate() -> None:
    tracker = PassRateTracker(ema=0.8)
    tracker.seed("q", 0.5)
    # p = 0.8 * 0.5 + 0.2 * 0.0 = 0.4; then 0.8 * 0.4 + 0.2 * 1.0 = 0.52.
    tracker.update(["q", "q"], [0, 0])
    assert tracker.pass_rate("q") == pytest.approx(0.4)
    tracker.update(["q", "q"], [1, 1])
    assert tracker.pass_rate("q") == pytest.approx(0.52)


def test_update_groups_interleaved_responses_by_prompt() -> None:
    tracker = PassRateTracker()
    accuracy = tracker.update(
        np.array(["a", "b", "a", "c", "b", "a"]), np.array([1.0, 0.0, 0.0, 1.0, 0.0, 1.0], dtype=np.float32)
    )
    assert accuracy == pytest.approx({"a": 2 / 3, "b": 0.0, "c": 1.0})
    assert tracker.pass_rate("a") == pytest.approx(2 / 3)
    assert tracker.pass_rate("b") == 0.0
    assert tracker.pass_rate("c") == 1.0


def test_seed_sets_an_unknown_prompt_and_never_overwrites() -> None:
    tracker = PassRateTracker()
    assert tracker.seed("q", 0.1) is True
    assert tracker.pass_rate("q") == 0.1 and tracker.observations("q") == 0
    # The loader seeds the same prompt again next epoch: the estimate stays.
    assert tracker.seed("q", 0.9) is False
    assert tracker.pass_rate("q") == 0.1
    # The first update of a seeded prompt is an EMA step from the seed: 0.5 * 0.1 + 0.5 * 0.5 = 0.3.
    tracker.update(["q", "q"], [1, 0])
    assert tracker.pass_rate("q") == pytest.approx(0.3)
    # A prompt already observed keeps its estimate too.
    tracker.update(["r"], [1])
    assert tracker.seed("r", 0.0) is False
    assert tracker.pass_rate("r") == 1.0


def test_seed_many_skips_prompts_without_a_pass_rate() -> None:
    tracker = PassRateTracker()
    used = tracker.seed_many(["a", "b", "c", "a"], [0.2, None, 0.6, 0.9])
    assert used == 2
    assert tracker.pass_rate("a") == 0.2 and tracker.pass_rate("b") is None and tracker.pass_rate("c") == 0.6


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan"), float("inf"), "0.3", True])
def test_seed_rejects_pass_rates_outside_the_unit_interval_naming_the_prompt(bad: object) -> None:
    tracker = PassRateTracker()
    with pytest.raises(ValueError, match="pass_rate for prompt 'prompt-17'"):
        tracker.seed("prompt-17", bad)  # type: ignore[arg-type]
    assert "prompt-17" not in tracker


def test_update_rejects_bad_scores_naming_the_prompt() -> None:
    tracker = PassRateTracker()
    with pytest.raises(ValueError, match=r"score of prompt 'b' \(response 2\) must lie in \[0, 1\]"):
        tracker.update(["a", "a", "b", "b"], [1.0, 0.0, 2.0, float("nan")])
    with pytest.raises(ValueError, match="3 prompt ids but scores of shape"):
        tracker.update(["a", "a", "b"], [1.0, 0.0])
    # Nothing was applied by the failed calls.
    assert len(tracker) == 0


def test_unseen_prompts_are_unknown_and_in_the_normal_tier() -> None:
    tracker = PassRateTracker(hard_pass_rate=0.25)
    assert tracker.pass_rate("never") is None
    assert tracker.is_hard("never") is False
    assert tracker.observations("never") == 0
    assert tracker.tiers(["never", "never"]).tolist() == [False, False]
    assert not tracker.hot_sample_mask(["never"] * 4).any()


def test_tiers_are_hard_at_or_below_the_threshold() -> None:
    tracker = PassRateTracker(hard_pass_rate=0.25)
    tracker.seed("easy", 0.8)
    tracker.seed("edge", 0.25)
    tracker.seed("hard", 0.0)
    tracker.seed("just_above", 0.2500001)
    tiers = tracker.tiers(np.array(["easy", "edge", "hard", "just_above", "unknown", "hard"], dtype=object))
    assert tiers.dtype == torch.bool
    assert tiers.tolist() == [False, True, True, False, False, True]
    # A hard prompt that becomes easy leaves the tier: 0.5 * 0 + 0.5 * 1 = 0.5 > 0.25.
    tracker.update(["hard"] * 2, [1, 1])
    assert tracker.is_hard("hard") is False


def test_prompt_ids_are_compared_as_strings() -> None:
    tracker = PassRateTracker()
    tracker.update(np.array([7, 7, 8]), [0, 0, 1])
    assert tracker.pass_rate("7") == 0.0 and tracker.pass_rate(7) == 0.0
    assert tracker.is_hard(7) and not tracker.is_hard("8")


def test_state_round_trips_through_json() -> None:
    tracker = PassRateTracker(ema=0.5)
    tracker.seed("seeded", 0.1)
    tracker.update(["a", "a", "b", "seeded"], [1, 0, 1, 1])
    restored = PassRateTracker(ema=0.5)
    restored.load_state_dict(json.loads(json.dumps(tracker.state_dict())))
    for key in ("seeded", "a", "b", "unknown"):
        assert restored.pass_rate(key) == tracker.pass_rate(key)
        assert restored.observations(key) == tracker.observations(key)
    assert restored.pass_rate("seeded") == pytest.approx(0.55)  # 0.5 * 0.1 + 0.5 * 1
    # The restored tracker continues exactly as the original.
    tracker.update(["a", "a"], [1, 1])
    restored.update(["a", "a"], [1, 1])
    assert restored.state_dict() == tracker.state_dict()


def test_load_state_dict_replaces_everything() -> None:
    tracker = PassRateTracker()
    tracker.update(["old"], [1])
    tracker.load_state_dict({"version": 1, "pass_rates": {"new": 0.4}, "observations": {"new": 2}})
    assert tracker.pass_rate("old") is None
    assert tracker.pass_rate("new") == 0.4 and tracker.observations("new") == 2
    assert len(tracker) == 1


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"version": 1, "pass_rates": {"q9": 1.2}, "observations": {}}, "pass_rate for prompt 'q9'"),
        ({"version": 1, "pass_rates": {"q9": None}, "observations": {}}, "pass_rate for prompt 'q9'"),
        ({"version": 1, "pass_rates": {"q9": 0.5}, "observations": {"q9": -1}}, "prompt 'q9'"),
        ({"version": 1, "pass_rates": {}, "observations": {"ghost": 1}}, "prompt 'ghost'"),
        ({"version": 2, "pass_rates": {}}, "version 1"),
        ({"version": 1}, "needs mappings"),
    ],
)
def test_load_state_dict_rejects_malformed_state(state: dict, message: str) -> None:
    tracker = PassRateTracker()
    tracker.update(["kept"], [1])
    with pytest.raises(ValueError, match=message):
        tracker.load_state_dict(state)
    assert tracker.pass_rate("kept") == 1.0


def test_from_config_uses_the_curriculum_block() -> None:
    cfg = ACPOConfig.from_dict({"curriculum": {"ema": 0.9, "hard_pass_rate": 0.1, "hard_fraction": 0.25}})
    tracker = PassRateTracker.from_config(cfg.curriculum)
    assert (tracker.ema, tracker.hard_pass_rate, tracker.hard_fraction) == (0.9, 0.1, 0.25)
    default = PassRateTracker.from_config(CurriculumConfig())
    assert (default.ema, default.hard_pass_rate, default.hard_fraction) == (0.5, 0.25, 0.5)


def test_constructor_rejects_out_of_range_settings() -> None:
    with pytest.raises(ValueError, match="ema"):
        PassRateTracker(ema=1.5)
    with pytest.raises(ValueError, match="hard_pass_rate"):
        PassRateTracker(hard_pass_rate=-0.1)


def test_hot_response_count_is_the_ceiling_of_the_fraction() -> None:
    assert hot_response_count(8, 0.5) == 4
    assert hot_response_count(5, 0.5) == 3  # ceil(2.5)
    assert hot_response_count(25, 0.28) == 7  # 0.28 * 25 = 7.000000000000001 in floating point, still 7
    assert hot_response_count(8, 0.01) == 1  # any positive fraction samples at least one response hot
    assert hot_response_count(8, 0.0) == 0
    assert hot_response_count(8, 1.0) == 8
    assert hot_response_count(np.array([1, 4, 7]), 0.5).tolist() == [1, 2, 4]


def test_group_positions_rank_responses_within_their_group_in_batch_order() -> None:
    positions, sizes = group_positions(["u1", "u2", "u1", "u3", "u2", "u1"])
    assert positions.tolist() == [0, 0, 1, 0, 1, 2]
    assert sizes.tolist() == [3, 2, 3, 1, 2, 3]


def test_hot_sample_mask_takes_the_first_responses_of_hard_groups() -> None:
    tracker = PassRateTracker(hard_pass_rate=0.25, hard_fraction=0.5)
    tracker.seed("hard", 0.1)
    tracker.seed("easy", 0.9)
    # verl repeats each prompt G = 4 times, interleaved: [hard x4, easy x4, unknown x4].
    prompts = ["hard"] * 4 + ["easy"] * 4 + ["unknown"] * 4
    uids = ["u0"] * 4 + ["u1"] * 4 + ["u2"] * 4
    mask = tracker.hot_sample_mask(prompts, uids)
    assert mask.tolist() == [True, True, False, False] + [False] * 8
    # A whole hard group hot with hard_fraction = 1; none with 0.
    assert tracker.hot_sample_mask(prompts, uids, hard_fraction=1.0).tolist() == [True] * 4 + [False] * 8
    assert not tracker.hot_sample_mask(prompts, uids, hard_fraction=0.0).any()


def test_hot_samples_per_prompt_agree_with_the_mask_after_the_repeat() -> None:
    tracker = PassRateTracker(hard_fraction=0.5)
    tracker.seed("hard", 0.2)
    tracker.seed("easy", 0.7)
    prompts = ["hard", "easy", "unknown", "hard"]
    # G = 5: ceil(0.5 * 5) = 3 hot requests for each hard prompt, none for the others.
    counts = tracker.hot_samples(prompts, group_size=5)
    assert counts.dtype == torch.int64 and counts.tolist() == [3, 0, 0, 3]
    assert tracker.hot_samples(prompts, group_size=5, hard_fraction=0.2).tolist() == [1, 0, 0, 1]
    # verl repeats every prompt G times, interleaved; the first counts[p] requests of each group are hot.
    repeated = [p for p in prompts for _ in range(5)]
    uids = [f"u{i}" for i in range(len(prompts)) for _ in range(5)]
    mask = tracker.hot_sample_mask(repeated, uids)
    expected = torch.arange(5).repeat(len(prompts)) < counts.repeat_interleave(5)
    assert torch.equal(mask, expected)


def test_hot_sample_mask_groups_by_uid_when_a_prompt_appears_twice() -> None:
    tracker = PassRateTracker()
    tracker.seed("hard", 0.0)
    # The same prompt drawn twice in a batch: two groups (uids), each gets its own ceil(0.5 * 2) = 1 hot response.
    mask = tracker.hot_sample_mask(["hard"] * 4, ["u0", "u1", "u0", "u1"])
    assert mask.tolist() == [True, True, False, False]
    # Grouped by prompt id alone they are one group of 4: the first 2 are hot.
    assert tracker.hot_sample_mask(["hard"] * 4).tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match="4 prompt ids but 3 group ids"):
        tracker.hot_sample_mask(["hard"] * 4, ["u0", "u1", "u0"])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 9), st.booleans()), min_size=1, max_size=8),
    st.floats(0.0, 1.0),
    st.integers(0, 2**31 - 1),
)
def test_each_hard_group_gets_exactly_its_hot_count(groups: list[tuple[int, bool]], fraction: float, seed: int) -> None:
    tracker = PassRateTracker(hard_fraction=fraction)
    prompts: list[str] = []
    for g, (size, hard) in enumerate(groups):
        tracker.seed(f"p{g}", 0.0 if hard else 1.0)
        prompts += [f"p{g}"] * size
    order = np.random.default_rng(seed).permutation(len(prompts))
    shuffled = np.array(prompts)[order]
    mask = tracker.hot_sample_mask(shuffled).numpy()
    for g, (size, hard) in enumerate(groups):
        in_group = shuffled == f"p{g}"
        expected = hot_response_count(size, fraction) if hard else 0
        assert int(mask[in_group].sum()) == expected
        # The hot ones come first within the group, in batch order.
        assert not mask[in_group][expected:].any()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from([0.0, 1.0]), min_size=1, max_size=8), min_size=1, max_size=6))
def test_estimates_stay_in_the_unit_interval_and_equal_a_manual_ema(batches: list[list[float]]) -> None:
    tracker = PassRateTracker(ema=0.5)
    expected: float | None = None
    for scores in batches:
        tracker.update(["q"] * len(scores), scores)
        accuracy = sum(scores) / len(scores)
        expected = accuracy if expected is None else 0.5 * expected + 0.5 * accuracy
        assert tracker.pass_rate("q") == pytest.approx(expected)
        assert 0.0 <= tracker.pass_rate("q") <= 1.0  # type: ignore[operator]
