"""acpo_core.step.compute_acpo_step on hand-built batches (no Ray): verl's GRPO at alpha = 0, §4-5 elsewhere.

The batches are laid out as verl's TransferQueue holds them (jagged per-sample fields, uid and reward_model as
non-tensor data, a synthetic padding sample as ``_balance_batch`` appends it). The workers' scoring call is replaced
by acpo_core's packed scoring on the tiny model, or by hand-chosen log-likelihoods where exact numbers are needed.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from verl.protocol import DataProto
from verl.trainer.config import AlgoConfig
from verl.trainer.ppo.core_algos import AdvantageEstimator
from verl.trainer.ppo.ray_trainer import compute_advantage
from verl.utils import tensordict_utils as tu
from verl.workers.utils.padding import response_to_nested

from acpo_core.attribution import AttributionBatch, ModelLimits
from acpo_core.config import ACPOConfig, AttributionConfig
from acpo_core.scoring import score_answer_loglik
from acpo_core.segmentation import VocabTables
from acpo_core.step import SPEC_METRICS, ACPOBatch, compute_acpo_step
from recipe.acpo.advantage_estimator import ACPO_ADV_ESTIMATOR
from recipe.acpo.rollout_batch import read_acpo_batch

PROMPT = "Double the sum of three and four."
# Row texts: two groups of two responses; " Then" and " So" open sentences and carry the planted entropy peaks.
TEXTS = [
    "We first add three and four to get seven. Then we double the seven to get fourteen. So the answer is fourteen.",
    "We add three and four and the sum is eight. Then we double it and obtain sixteen here. So the answer is sixteen.",
    "We first add three and four to get seven. Then we double the seven to get fourteen. So the answer is fourteen.",
    "We add three and four and the sum is eight. Then we double it and obtain sixteen here. So the answer is sixteen.",
]
UIDS = ["a", "a", "b", "b"]
SCORES = [1.0, 0.0, 0.0, 0.0]  # group a: one right, one wrong; group b: no variance (A_base = 0)
GROUND_TRUTH = "14"
PEAK_ENTROPY = 5.0
HOT_STEP_ENTROPY = 4.0  # the last step of row 1: uncertain enough that u_i clips to u_clip


def _cfg(stage: int = 1, **advantage: float) -> ACPOConfig:
    """§4 as the spec reads it (``attr_total: added``): the hand-written formulas below are that form."""
    return ACPOConfig.from_dict(
        {"stage": stage, "segmentation": {"min_step_tokens": 4}, "advantage": {"attr_total": "added", **advantage}}
    )


def _planted_peaks(tokenizer: Any, ids: list[int]) -> list[int]:
    tokens = tokenizer.convert_ids_to_tokens(ids)
    return [t for t, token in enumerate(tokens) if token in ("ĠThen", "ĠSo")]


@pytest.fixture(scope="module")
def tables(qwen_tokenizer: Any) -> VocabTables:
    return VocabTables.from_tokenizer(qwen_tokenizer)


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa", dtype=torch.float32)
    return model.eval()


class Batch:
    """One hand-built training batch in verl's TransferQueue layout, plus its dense GRPO reference."""

    def __init__(self, tokenizer: Any, with_padding_row: bool = True) -> None:
        eos = tokenizer.eos_token_id
        prompt = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
        self.responses = [tokenizer(t, add_special_tokens=False)["input_ids"] + [eos] for t in TEXTS]
        self.peaks = [_planted_peaks(tokenizer, ids) for ids in self.responses]
        self.entropies: list[torch.Tensor] = []
        for row, ids in enumerate(self.responses):
            # Distinct low entropies (so Stage-2 weights are not uniform), a peak opening each planted step.
            entropy = 0.3 + 0.02 * (torch.arange(len(ids)) % 7).float()
            if row == 1:
                entropy[self.peaks[row][1] :] = HOT_STEP_ENTROPY
            entropy[self.peaks[row]] = PEAK_ENTROPY
            self.entropies.append(entropy)
        prompts = [torch.tensor(prompt)] * len(TEXTS)
        responses = [torch.tensor(r) for r in self.responses]
        masks = [torch.ones(len(r), dtype=torch.long) for r in self.responses]
        rm_scores = [
            torch.zeros(len(r)).index_fill_(0, torch.tensor([len(r) - 1]), s) for r, s in zip(responses, SCORES)
        ]
        uids = list(UIDS)
        tags: list[dict[str, Any]] = [{} for _ in TEXTS]
        reward_models = [{"ground_truth": GROUND_TRUTH, "style": "rule"} for _ in TEXTS]
        if with_padding_row:
            # What verl's upsample_batch_to_divisible_size appends: 127 eos prompt, one eos response, empty mask.
            prompts.append(torch.full((127,), eos))
            responses.append(torch.tensor([eos]))
            masks.append(torch.zeros(1, dtype=torch.long))
            rm_scores.append(torch.zeros(1))
            self.entropies.append(torch.tensor([2.0]))
            uids.append("pad0")
            tags.append({"is_padding": True})
            reward_models.append(reward_models[0])
        self.tags = tags
        self.grpo = self._verl_advantages(AdvantageEstimator.GRPO, masks, rm_scores, uids)
        self.acpo_baseline = self._verl_advantages(ACPO_ADV_ESTIMATOR, masks, rm_scores, uids)
        jagged = lambda ts: torch.nested.as_nested_tensor(ts, layout=torch.jagged)  # noqa: E731
        mask_nested = jagged(masks)
        self.data = tu.get_tensordict(
            {
                "uid": uids,
                "prompts": jagged(prompts),
                "responses": jagged(responses),
                "response_mask": mask_nested,
                "entropy": jagged(self.entropies),
                "advantages": response_to_nested(self.acpo_baseline, mask_nested),
                "rm_scores": jagged(rm_scores),
                "reward_model": reward_models,
            }
        )

    @staticmethod
    def _verl_advantages(estimator: Any, masks: list, rm_scores: list, uids: list[str]) -> torch.Tensor:
        """verl's compute_advantage on the dense batch, as PPOTrainer._compute_advantage runs it."""
        width = max(m.numel() for m in masks)
        mask = torch.zeros(len(masks), width, dtype=torch.long)
        rewards = torch.zeros(len(masks), width)
        for i, (m, r) in enumerate(zip(masks, rm_scores)):
            mask[i, : m.numel()] = m
            rewards[i, : r.numel()] = r
        data = DataProto.from_dict(
            tensors={"response_mask": mask, "token_level_rewards": rewards},
            non_tensors={"uid": np.array(uids, dtype=object)},
        )
        config = AlgoConfig(adv_estimator=str(estimator))
        out = compute_advantage(data, adv_estimator=estimator, norm_adv_by_std_in_grpo=True, config=config)
        return out.batch["advantages"]

    def view(self, tokenizer: Any) -> ACPOBatch:
        return read_acpo_batch(self.data, self.tags, tokenizer, AttributionConfig())


def _model_scorer(model: Any) -> Any:
    def score(inputs: AttributionBatch) -> torch.Tensor:
        return score_answer_loglik(model, inputs, micro_batch_size=3, temperature=1.0)

    return score


# Hand-chosen L_0..L_3 per real row: C = L[i+1] - L[i].
HAND_L = [
    [-10.0, -8.0, -9.0, -5.0],  # C = [2, -1, 4]
    [-10.0, -10.5, -10.2, -12.0],  # C = [-0.5, 0.3, -1.8]
    [-7.0, -6.0, -6.5, -6.0],
    [-7.0, -7.2, -6.0, -6.1],
]


def _hand_scorer(inputs: AttributionBatch) -> torch.Tensor:
    scores = torch.zeros(inputs.boundaries.shape)
    for n, k in enumerate(inputs.num_steps.tolist()):
        scores[n, : k + 1] = torch.tensor(HAND_L[n][: k + 1])
    return scores


def _spec_advantages(batch: Batch, view: ACPOBatch, boundaries: list[list[int]], cfg: ACPOConfig) -> list[list[float]]:
    """§4-5 written out step by step in floats, independently of acpo_core (the test's oracle)."""
    adv_cfg = cfg.advantage
    step_means: list[list[float]] = []
    for row, cuts in enumerate(boundaries):
        h = batch.entropies[row].tolist()
        step_means.append([sum(h[a:b]) / (b - a) for a, b in itertools.pairwise(cuts)])
    batch_mean = sum(sum(m) for m in step_means) / sum(len(m) for m in step_means)
    result: list[list[float]] = []
    for row, cuts in enumerate(boundaries):
        k = len(cuts) - 1
        a_base = float(view.base_advantages[row])
        c = [HAND_L[row][i + 1] - HAND_L[row][i] for i in range(k)]
        total = sum(abs(x) for x in c)
        h = batch.entropies[row].tolist()
        tokens: list[float] = []
        for i in range(k):
            s = max(-adv_cfg.s_clip, min(adv_cfg.s_clip, k * c[i] / (total + adv_cfg.eps)))
            u = max(0.0, min(adv_cfg.u_clip, step_means[row][i] / (batch_mean + adv_cfg.eps)))
            w = 1 + adv_cfg.beta * u if s > 0 and abs(s) >= adv_cfg.theta else max(0.0, 1 - adv_cfg.gamma * u)
            a_final = a_base + adv_cfg.alpha * abs(a_base) * s * w
            span = h[cuts[i] : cuts[i + 1]]
            if cfg.stage == 1:
                omega = [1.0] * len(span)
            else:
                exp = [math.exp(-x / cfg.confidence.tau) for x in span]
                omega = [len(span) * e / sum(exp) for e in exp]
            tokens.extend(o * a_final for o in omega)
        result.append(tokens)
    return result


def test_acpo_estimator_is_verl_grpo_with_and_without_std_normalisation() -> None:
    rewards = torch.zeros(6, 5)
    rewards[:, -1] = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    mask = torch.ones(6, 5, dtype=torch.long)
    mask[1, 3:] = 0
    uids = np.array(["p", "p", "p", "q", "q", "q"], dtype=object)
    for norm in (True, False):
        results = []
        for estimator in (AdvantageEstimator.GRPO, ACPO_ADV_ESTIMATOR):
            data = DataProto.from_dict(
                tensors={"response_mask": mask, "token_level_rewards": rewards}, non_tensors={"uid": uids}
            )
            config = AlgoConfig(adv_estimator=str(estimator), norm_adv_by_std_in_grpo=norm)
            results.append(
                compute_advantage(data, estimator, norm_adv_by_std_in_grpo=norm, config=config).batch["advantages"]
            )
        assert torch.equal(results[0], results[1]), f"norm_adv_by_std_in_grpo={norm}"
    # Dr.GRPO (no std) differs from GRPO on this batch, so the flag really reached the estimator.
    assert not torch.equal(
        results[0],
        compute_advantage(
            DataProto.from_dict(
                tensors={"response_mask": mask, "token_level_rewards": rewards}, non_tensors={"uid": uids}
            ),
            AdvantageEstimator.GRPO,
        ).batch["advantages"],
    )


def test_alpha_zero_writes_verl_grpo_advantages_bit_for_bit(
    qwen_tokenizer: Any, tables: VocabTables, tiny_model: Any
) -> None:
    batch = Batch(qwen_tokenizer)
    view = batch.view(qwen_tokenizer)
    result = compute_acpo_step(view, tables, _cfg(alpha=0.0), _model_scorer(tiny_model))
    assert torch.equal(result.token_advantages, batch.grpo)
    # The attribution really ran on the model: non-trivial contributions, several steps per response.
    assert (result.segmentation.num_steps > 1).all()
    assert result.contributions.abs().sum() > 0


def test_planted_entropy_peaks_become_the_step_boundaries(qwen_tokenizer: Any, tables: VocabTables) -> None:
    batch = Batch(qwen_tokenizer)
    result = compute_acpo_step(batch.view(qwen_tokenizer), tables, _cfg(), _hand_scorer)
    for n, row in enumerate(result.real_rows.tolist()):
        k = int(result.segmentation.num_steps[n])
        expected = [0, *batch.peaks[row], len(batch.responses[row])]
        assert result.segmentation.boundaries[n, : k + 1].tolist() == expected


def test_default_advantages_follow_the_spec_and_differ_from_grpo_only_on_credited_steps(
    qwen_tokenizer: Any, tables: VocabTables
) -> None:
    batch = Batch(qwen_tokenizer)
    view = batch.view(qwen_tokenizer)
    cfg = _cfg()
    result = compute_acpo_step(view, tables, cfg, _hand_scorer)
    boundaries = [[0, *batch.peaks[r], len(batch.responses[r])] for r in range(len(TEXTS))]
    expected = _spec_advantages(batch, view, boundaries, cfg)
    for row, tokens in enumerate(expected):
        got = result.token_advantages[row, : len(tokens)]
        torch.testing.assert_close(got, torch.tensor(tokens), rtol=1e-5, atol=1e-6)
        assert (result.token_advantages[row, len(tokens) :] == 0).all()
    differs = result.token_advantages != batch.grpo
    # Group a (rows 0, 1) has outcome variance: every step with non-zero s_i * w_i moves off GRPO ...
    for row in (0, 1):
        cuts = boundaries[row]
        for i, (start, stop) in enumerate(itertools.pairwise(cuts)):
            credited = result.contributions[row, i] != 0 and not (row == 1 and i == 2)
            assert bool(differs[row, start:stop].all()) is credited, (row, i)
    # ... except row 1's last step: harmful and so uncertain (u = u_clip) that w = max(0, 1 - gamma u) = 0.
    assert result.token_advantages[1, boundaries[1][2]] == batch.grpo[1, boundaries[1][2]]
    # Group b has no outcome variance (A_base = 0) and the padding row no tokens: both stay exactly GRPO's 0.
    assert not differs[2:].any()
    assert (result.token_advantages[2:] == 0).all()


def test_stage2_spreads_each_step_credit_by_confidence(qwen_tokenizer: Any, tables: VocabTables) -> None:
    batch = Batch(qwen_tokenizer)
    view = batch.view(qwen_tokenizer)
    cfg1, cfg2 = _cfg(), _cfg(stage=2)
    stage1 = compute_acpo_step(view, tables, cfg1, _hand_scorer)
    stage2 = compute_acpo_step(view, tables, cfg2, _hand_scorer)
    boundaries = [[0, *batch.peaks[r], len(batch.responses[r])] for r in range(len(TEXTS))]
    expected = _spec_advantages(batch, view, boundaries, cfg2)
    torch.testing.assert_close(
        stage2.token_advantages[0, : len(expected[0])], torch.tensor(expected[0]), rtol=1e-5, atol=1e-6
    )
    for row in (0, 1):
        cuts = boundaries[row]
        for start, stop in itertools.pairwise(cuts):
            # The step's total credit is unchanged; the confident (low-entropy) tokens carry more of it.
            torch.testing.assert_close(
                stage2.token_advantages[row, start:stop].sum(), stage1.token_advantages[row, start:stop].sum()
            )
            magnitude = stage2.token_advantages[row, start:stop].abs()
            entropy = batch.entropies[row][start:stop]
            if magnitude.max() > 0:
                assert magnitude[entropy.argmin()] > magnitude[entropy.argmax()]


def test_padding_rows_get_zero_advantage_and_stay_out_of_the_metrics(qwen_tokenizer: Any, tables: VocabTables) -> None:
    padded = Batch(qwen_tokenizer, with_padding_row=True)
    plain = Batch(qwen_tokenizer, with_padding_row=False)
    with_pad = compute_acpo_step(padded.view(qwen_tokenizer), tables, _cfg(), _hand_scorer)
    without = compute_acpo_step(plain.view(qwen_tokenizer), tables, _cfg(), _hand_scorer)
    assert (with_pad.token_advantages[-1] == 0).all()
    assert with_pad.real_rows.tolist() == [0, 1, 2, 3]
    width = without.token_advantages.shape[1]
    assert torch.equal(with_pad.token_advantages[:4, :width], without.token_advantages)
    assert with_pad.metrics == without.metrics


def test_metrics_cover_spec_section_9_and_time_both_phases(qwen_tokenizer: Any, tables: VocabTables) -> None:
    batch = Batch(qwen_tokenizer)
    view = batch.view(qwen_tokenizer)
    timing: dict[str, float] = {}
    result = compute_acpo_step(view, tables, _cfg(), _hand_scorer, timing)
    required = [*SPEC_METRICS, "acpo/attr_gain_correct", "acpo/attr_gain_incorrect"]
    for name in required:
        assert name in result.metrics and math.isfinite(result.metrics[name]), name
    assert set(timing) == {"acpo_segment", "acpo_attribution"} and all(v >= 0 for v in timing.values())
    assert result.metrics["acpo/steps_per_response"] == 3.0
    # The per-step quantities of the real rows travel with the result (the step dump reads them).
    assert result.advantage.regime.shape == result.contributions.shape == (4, 24)
    on_step = torch.arange(24)[None, :] < result.segmentation.num_steps[:, None]
    assert (result.advantage.regime[on_step] > 0).all() and (result.advantage.regime[~on_step] == 0).all()
    # Row 0 is the only correct response: its gain is L_K - L_0 = -5 - (-10).
    assert result.metrics["acpo/attr_gain_correct"] == pytest.approx(5.0)
    assert result.metrics["acpo/attr_gain_incorrect"] == pytest.approx((-2.0 + 1.0 + 0.9) / 3)
    prompt_tokens = int(view.prompt_mask[0].sum())
    lengths = [len(r) for r in batch.responses]
    answer_tokens = len(qwen_tokenizer("Answer: 14", add_special_tokens=False)["input_ids"])
    plain = sum(prompt_tokens + t for t in lengths)
    assert result.metrics["acpo/attr_tokens_ratio"] == pytest.approx((plain + 4 * 4 * answer_tokens) / plain)


def test_rollout_view_names_the_prompt_without_a_ground_truth(qwen_tokenizer: Any) -> None:
    batch = Batch(qwen_tokenizer, with_padding_row=False)
    models = [{"ground_truth": GROUND_TRUTH}] * 3 + [{"style": "rule"}]
    batch.data["reward_model"] = tu.get_tensordict({"x": models})["x"]
    with pytest.raises(ValueError, match=r"uid=b.*ground_truth"):
        batch.view(qwen_tokenizer)


def test_rollout_view_rejects_responses_with_masked_holes(qwen_tokenizer: Any) -> None:
    batch = Batch(qwen_tokenizer, with_padding_row=False)
    masks = [torch.ones(len(r), dtype=torch.long) for r in batch.responses]
    masks[2][3] = 0  # a tool-output token inside the response (multi-turn)
    batch.data["response_mask"] = torch.nested.as_nested_tensor(masks, layout=torch.jagged)
    with pytest.raises(ValueError, match=r"uid\(s\) \['b'\].*holes"):
        batch.view(qwen_tokenizer)


def test_sampled_ids_beyond_the_tokenizer_are_segmented_as_text_free(qwen_tokenizer: Any, tables: VocabTables) -> None:
    # Qwen2.5's embedding has 151936 rows for 151665 tokens: a policy can sample an id the tokenizer has no text for.
    batch = Batch(qwen_tokenizer)
    responses = [torch.tensor(r) for r in batch.responses] + [torch.tensor([qwen_tokenizer.eos_token_id])]
    responses[2][3] = tables.vocab_size + 100
    batch.data["responses"] = torch.nested.as_nested_tensor(responses, layout=torch.jagged)
    result = compute_acpo_step(batch.view(qwen_tokenizer), tables, _cfg(), _hand_scorer)
    assert result.metrics["acpo/textless_token_frac"] == pytest.approx(1 / sum(len(r) for r in batch.responses))
    k = int(result.segmentation.num_steps[2])
    assert result.segmentation.boundaries[2, : k + 1].tolist() == [0, *batch.peaks[2], len(batch.responses[2])]


def test_the_whole_attribution_batch_is_checked_before_anything_is_dispatched(
    qwen_tokenizer: Any, tables: VocabTables
) -> None:
    batch = Batch(qwen_tokenizer)
    view = batch.view(qwen_tokenizer)
    view.answer_ids[2, 0] = 10**6  # beyond the model's vocabulary: the worker would fail on one rank only
    calls: list[int] = []

    def scorer(inputs: AttributionBatch) -> torch.Tensor:
        calls.append(len(inputs))
        return _hand_scorer(inputs)

    with pytest.raises(ValueError, match=r"answer_ids holds a token id >= the model's vocabulary \(151936\): row 2"):
        compute_acpo_step(view, tables, _cfg(), scorer, limits=ModelLimits(vocab_size=151936))
    assert calls == []


def test_responses_past_the_trained_positions_keep_the_outcome_advantage_and_are_counted(
    qwen_tokenizer: Any, tables: VocabTables
) -> None:
    batch = Batch(qwen_tokenizer)
    view = batch.view(qwen_tokenizer)
    prompt = int(view.prompt_mask[0].sum())
    answer = int(view.answer_mask[0].sum())
    lengths = [len(r) for r in batch.responses]
    # Rows 0 and 2 share the longest response; a limit one below their last copy position leaves them out.
    limit = prompt + max(lengths) + answer - 1
    over = [n for n in range(4) if prompt + lengths[n] + answer > limit]
    scored_rows: list[int] = []

    def scorer(inputs: AttributionBatch) -> torch.Tensor:
        scored_rows.append(len(inputs))
        return torch.full(inputs.boundaries.shape, -1.0) * torch.arange(inputs.boundaries.shape[1])

    result = compute_acpo_step(view, tables, _cfg(), scorer, limits=ModelLimits(max_positions=limit))
    assert over and scored_rows == [4 - len(over)]
    assert result.metrics["acpo/attr_position_skipped_frac"] == pytest.approx(len(over) / 4)
    for n in over:
        assert (result.answer_loglik[n] == 0).all() and (result.contributions[n] == 0).all()
        valid = view.response_mask[n] != 0
        torch.testing.assert_close(result.token_advantages[n][valid], batch.acpo_baseline[n][valid])
