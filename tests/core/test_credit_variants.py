"""The credit variants of docs/algorithm.md §3.2 and §4.1, each on hand-made tensors, and through compute_acpo_step.

End-token fix (``final_eos: drop``), value-only scoring (``score_tokens: value``), the contrast target, the oracle
judge and the redistributed attributed term. The defaults are the spec's reading; each test would fail if its variant
did something else (or nothing).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from acpo_core.advantage import compute_acpo_advantage, redistribute_attribution
from acpo_core.attribution import (
    AttributionBatch,
    answer_value_span,
    check_attribution_batch,
    contrast_scores,
    drop_final_special,
    oracle_contributions,
    render_answer_batch,
)
from acpo_core.config import ACPOConfig, ACPOConfigError
from acpo_core.scoring import score_answer_loglik, score_answer_loglik_naive
from acpo_core.segmentation import VocabTables
from acpo_core.step import ACPOBatch, compute_acpo_step

# ---------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("attribution.judge", "human"),
        ("attribution.target", "own"),
        ("attribution.score_tokens", "answer"),
        ("attribution.final_eos", True),
        ("advantage.attr_total", "centred"),
    ],
)
def test_unknown_variant_values_are_refused_naming_the_key(key: str, value: Any) -> None:
    section, name = key.split(".")
    with pytest.raises(ACPOConfigError, match=rf"acpo\.{section}\.{name}"):
        ACPOConfig.from_dict({section: {name: value}})


def test_defaults_are_the_spec_judge_with_the_redistributed_total() -> None:
    cfg = ACPOConfig()
    assert (cfg.attribution.judge, cfg.attribution.target) == ("policy", "ground_truth")
    assert (cfg.attribution.score_tokens, cfg.attribution.final_eos) == ("all", "keep")
    assert cfg.advantage.attr_total == "redistributed"


# ---------------------------------------------------------------------------------------------------- value only


@pytest.mark.parametrize(
    ("template", "fixed"),
    [("Answer: {answer}", "Answer"), ("Answer now: {answer}", "now"), ("\\boxed{{{answer}}}", "boxed")],
)
def test_value_span_scores_the_value_and_not_the_template_text(qwen_tokenizer: Any, template: str, fixed: str) -> None:
    ids = qwen_tokenizer(template.format(answer="-147"), add_special_tokens=False)["input_ids"]
    start, end = answer_value_span(qwen_tokenizer, "-147", template)
    assert 0 < start < end <= len(ids)
    scored = qwen_tokenizer.decode(ids[start:end])
    assert "147" in scored and fixed not in scored
    assert fixed in qwen_tokenizer.decode(ids[:start])


def test_render_answer_batch_marks_scored_tokens_within_the_answer(qwen_tokenizer: Any) -> None:
    answers = render_answer_batch(qwen_tokenizer, ["14", None, "2.5"], ["a", "pad", "b"], "Answer: {answer}", "value")
    assert answers.present.tolist() == [True, False, True]
    assert bool(((answers.scored == 1) <= (answers.mask == 1)).all())
    assert (answers.scored.sum(dim=1) < answers.mask.sum(dim=1))[[0, 2]].all()
    everything = render_answer_batch(qwen_tokenizer, ["14"], ["a"], "Answer: {answer}", "all")
    assert torch.equal(everything.scored, everything.mask)


def _random_batch(scored_from: int) -> AttributionBatch:
    generator = torch.Generator().manual_seed(3)
    return AttributionBatch(
        prompt_ids=torch.randint(1, 200, (2, 5), generator=generator),
        prompt_mask=torch.ones(2, 5, dtype=torch.long),
        response_ids=torch.randint(1, 200, (2, 7), generator=generator),
        response_mask=torch.tensor([[1] * 7, [1] * 5 + [0] * 2]),
        boundaries=torch.tensor([[0, 3, 7], [0, 5, -1]]),
        num_steps=torch.tensor([2, 1]),
        answer_ids=torch.randint(1, 200, (2, 4), generator=generator),
        answer_mask=torch.ones(2, 4, dtype=torch.long),
        answer_scored=(torch.arange(4) >= scored_from).long().expand(2, 4).clone(),
    )


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa", dtype=torch.float32).eval()


def test_scoring_sums_only_the_scored_answer_tokens_on_both_paths(tiny_model: Any) -> None:
    whole, value, fixed = _random_batch(0), _random_batch(2), _random_batch(0)
    fixed = dataclasses.replace(fixed, answer_scored=1 - _random_batch(2).answer_scored)
    packed = {name: score_answer_loglik(tiny_model, b, 2) for name, b in (("all", whole), ("v", value), ("f", fixed))}
    naive = score_answer_loglik_naive(tiny_model, value, 2)
    torch.testing.assert_close(packed["v"], naive, atol=1e-4, rtol=0)
    # log p(Y) = log p(fixed text) + log p(value | fixed text): the two masks split the whole sum.
    torch.testing.assert_close(packed["v"] + packed["f"], packed["all"], atol=1e-4, rtol=0)
    assert not torch.allclose(packed["v"], packed["all"])


def test_a_scored_mask_outside_the_answer_or_empty_is_refused() -> None:
    batch = _random_batch(0)
    with pytest.raises(ValueError, match="marks no answer token"):
        check_attribution_batch(dataclasses.replace(batch, answer_scored=torch.zeros(2, 4, dtype=torch.long)))
    short = dataclasses.replace(batch, answer_mask=torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="outside the answer: row 0"):
        check_attribution_batch(short)


# ---------------------------------------------------------------------------------------------------- end token


def test_drop_final_special_moves_c_k_before_a_trailing_special_token() -> None:
    is_special = torch.zeros(10, dtype=torch.bool)
    is_special[9] = True
    batch = AttributionBatch(
        prompt_ids=torch.ones(4, 2, dtype=torch.long),
        prompt_mask=torch.ones(4, 2, dtype=torch.long),
        # row 0 ends with the special 9; row 1 does not (truncated); row 2's last step is the 9 alone; row 3 is "9".
        response_ids=torch.tensor([[1, 2, 3, 9], [1, 2, 3, 4], [1, 2, 3, 9], [9, 0, 0, 0]]),
        response_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 0]]),
        boundaries=torch.tensor([[0, 2, 4], [0, 2, 4], [0, 3, 4], [0, 1, -1]]),
        num_steps=torch.tensor([2, 2, 2, 1]),
        answer_ids=torch.ones(4, 1, dtype=torch.long),
        answer_mask=torch.ones(4, 1, dtype=torch.long),
    )
    scored, dropped = drop_final_special(batch, is_special, vocab_size=10)
    assert dropped.tolist() == [True, False, False, True]
    assert scored.boundaries.tolist() == [[0, 2, 3], [0, 2, 4], [0, 3, 4], [0, 0, -1]]
    assert scored.response_mask.sum(dim=1).tolist() == [3, 4, 4, 0]
    check_attribution_batch(scored)


# ---------------------------------------------------------------------------------------------------- contrast, oracle


def test_contrast_subtracts_the_own_answer_only_where_asked() -> None:
    truth = torch.tensor([[-9.0, -8.0, -2.0], [-9.0, -8.0, -2.0]])
    own = torch.tensor([[-6.0, -4.0, -1.0], [0.0, 0.0, 0.0]])
    d = contrast_scores(truth, own, torch.tensor([True, False]))
    assert d.tolist() == [[-3.0, -4.0, -1.0], [-9.0, -8.0, -2.0]]


def test_oracle_blames_the_step_of_the_first_wrong_token_and_credits_the_rest() -> None:
    step_index = torch.tensor([[0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, -1], [0, 0, 0, 0, -1, -1]])
    c = oracle_contributions(step_index, torch.tensor([3, 2, 1]), torch.tensor([3, -1, 0]), kmax=3)
    assert c.tolist() == [[1.0, -1.0, 1.0], [1.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="beyond the response"):
        oracle_contributions(step_index, torch.tensor([3, 2, 1]), torch.tensor([3, 5, 0]), kmax=3)


# ---------------------------------------------------------------------------------------------------- redistribution


def test_redistribution_centres_the_attributed_term_over_each_response_tokens() -> None:
    attributed = torch.tensor([[1.0, -0.5, 2.0], [0.7, 0.0, 0.0]])
    tokens = torch.tensor([[2, 4, 2], [5, 0, 0]])
    centred = redistribute_attribution(attributed, tokens)
    assert torch.allclose((centred * tokens).sum(dim=1), torch.zeros(2), atol=1e-6)
    # The order of the steps' credit is kept: only the response's net credit is removed.
    assert centred[0].argsort().tolist() == attributed[0].argsort().tolist()
    assert centred[1].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("stage", [1, 2])
def test_redistributed_advantage_keeps_each_response_total_at_grpo(stage: int) -> None:
    step_index = torch.tensor([[0, 0, 1, 1, 1, 2], [0, 0, 0, 1, 1, -1]])
    mask = (step_index >= 0).long()
    entropy = torch.tensor([[0.1, 2.0, 0.3, 0.2, 1.5, 0.4], [1.0, 0.2, 0.3, 2.2, 0.1, 0.0]])
    a_base = torch.tensor([1.2, -0.8])
    contributions = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 1.0, 0.0]])
    for total, equal in (("redistributed", True), ("added", False)):
        cfg = ACPOConfig.from_dict({"stage": stage, "advantage": {"attr_total": total}})
        out = compute_acpo_advantage(a_base, contributions, step_index, torch.tensor([3, 2]), entropy, mask, cfg)
        sums = out.token_advantages.sum(dim=1)
        assert torch.allclose(sums, a_base * mask.sum(dim=1), atol=1e-5) is equal
        assert not torch.allclose(out.token_advantages, a_base[:, None] * mask)


# ---------------------------------------------------------------------------------------------------- the step


@pytest.fixture(scope="module")
def tables(qwen_tokenizer: Any) -> VocabTables:
    return VocabTables.from_tokenizer(qwen_tokenizer)


def _step_batch(tokenizer: Any) -> ACPOBatch:
    """Two responses to one prompt, one right and one wrong (with an extracted answer), each ending in EOS."""
    texts = ["First add three and four to get seven.\nAnswer: 7", "First add three and four to get eight.\nAnswer: 8"]
    responses = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    width = max(map(len, responses))
    response_ids = torch.zeros(2, width, dtype=torch.long)
    response_mask = torch.zeros(2, width, dtype=torch.long)
    for row, ids in enumerate(responses):
        response_ids[row, : len(ids)] = torch.tensor(ids)
        response_mask[row, : len(ids)] = 1
    prompt = torch.tensor([tokenizer("Add three and four.", add_special_tokens=False)["input_ids"]] * 2)
    truth = render_answer_batch(tokenizer, ["7", "7"], ["a", "a"], "Answer: {answer}", "value")
    own = render_answer_batch(tokenizer, ["7", "8"], ["a", "a"], "Answer: {answer}", "value")
    entropy = torch.full((2, width), 0.2)
    entropy[:, 9] = 3.0  # the second line opens a step
    return ACPOBatch(
        prompt_ids=prompt,
        prompt_mask=torch.ones_like(prompt),
        response_ids=response_ids,
        response_mask=response_mask,
        entropy=entropy * response_mask,
        base_advantages=torch.tensor([0.7071, -0.7071]),
        scores=torch.tensor([1.0, 0.0]),
        is_padding=torch.tensor([False, False]),
        uids=["a", "a"],
        answer_ids=truth.ids,
        answer_mask=truth.mask,
        ground_truths=["7", "7"],
        answer_scored=truth.scored,
        own_answers=own,
    )


class RecordingScorer:
    """Hand L values per scored row, -10 + slope * i, the slope 1 on the first call (Y) and 2 on later ones (Y')."""

    def __init__(self) -> None:
        self.calls: list[AttributionBatch] = []

    def __call__(self, inputs: AttributionBatch) -> torch.Tensor:
        slope = 1.0 if not self.calls else 2.0
        self.calls.append(inputs)
        steps = torch.arange(inputs.boundaries.shape[1], dtype=torch.float32)
        return -10.0 + slope * steps[None, :] * (steps[None, :] <= inputs.num_steps[:, None])


def _cfg(**attribution: str) -> ACPOConfig:
    return ACPOConfig.from_dict(
        {"segmentation": {"min_step_tokens": 3, "entropy_top_ratio": 0.1}, "attribution": attribution}
    )


def test_step_passes_the_value_mask_and_drops_the_final_eos(qwen_tokenizer: Any, tables: VocabTables) -> None:
    batch = _step_batch(qwen_tokenizer)
    scorer = RecordingScorer()
    compute_acpo_step(batch, tables, _cfg(final_eos="drop", score_tokens="value"), scorer)
    (scored,) = scorer.calls
    assert torch.equal(scored.answer_scored, batch.answer_scored)
    lengths = batch.response_mask.sum(dim=1)
    assert torch.equal(scored.response_mask.sum(dim=1), lengths - 1)
    assert torch.equal(scored.boundaries.gather(1, scored.num_steps[:, None]).squeeze(1), lengths - 1)


def test_step_contrast_scores_the_own_answer_of_wrong_responses_only(qwen_tokenizer: Any, tables: VocabTables) -> None:
    batch = _step_batch(qwen_tokenizer)
    scorer = RecordingScorer()
    result = compute_acpo_step(batch, tables, _cfg(target="contrast"), scorer)
    truth_call, own_call = scorer.calls
    assert len(truth_call) == 2 and len(own_call) == 1
    assert torch.equal(own_call.answer_ids, batch.own_answers.ids[1:])  # type: ignore[union-attr]
    k = int(result.segmentation.num_steps[1])
    # L(Y) rises by 1 a step and L(Y') by 2 in this scorer, so every C of the wrong response is -1; the right one +1.
    assert result.contributions[1, :k].tolist() == [-1.0] * k
    assert result.contributions[0, : int(result.segmentation.num_steps[0])].tolist() == [1.0] * int(
        result.segmentation.num_steps[0]
    )
    with pytest.raises(ValueError, match="own answer"):
        compute_acpo_step(dataclasses.replace(batch, own_answers=None), tables, _cfg(target="contrast"), scorer)


def test_step_oracle_scores_nothing_and_blames_the_labelled_step(qwen_tokenizer: Any, tables: VocabTables) -> None:
    batch = dataclasses.replace(_step_batch(qwen_tokenizer), first_wrong_token=torch.tensor([-1, 10]))
    scorer = RecordingScorer()
    result = compute_acpo_step(batch, tables, _cfg(judge="oracle"), scorer)
    assert scorer.calls == []
    slip_step = int(result.segmentation.step_index[1, 10])
    assert float(result.contributions[1, slip_step]) == -1.0
    assert float(result.advantage.attributed_advantages[1, slip_step]) < 0
    with pytest.raises(ValueError, match="first wrong step"):
        compute_acpo_step(dataclasses.replace(batch, first_wrong_token=None), tables, _cfg(judge="oracle"), scorer)
