"""acpo_core.attribution (§3) and the offline models it is tested with (recipe.acpo.offline_models).

The exactness tests score a batch with the packed path and with K+1 separate forward passes per response, on a small
random Qwen2 built offline with the real Qwen2.5 tokenizer, for both attention implementations that take a 4D mask.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from acpo_core.attribution import (
    AttributionBatch,
    check_attribution_batch,
    packed_token_count,
    render_answer_ids,
    step_contributions,
)
from acpo_core.scoring import score_answer_loglik, score_answer_loglik_naive
from recipe.acpo.offline_models import build_tiny_qwen2, load_qwen25_tokenizer

MAX_STEPS = 24  # acpo.segmentation.max_steps default
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tokenizer():
    return load_qwen25_tokenizer()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_qwen2(tmp_path_factory.mktemp("tiny_qwen2"), seed=0)


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request, tiny_model_dir):
    loaded = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, dtype=torch.float32, attn_implementation=request.param
    )
    return loaded.eval()


def _pad(rows: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), 7, dtype=torch.long)  # 7: arbitrary filler, masked out
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, row in enumerate(rows):
        if row:
            span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
            ids[b, span] = torch.tensor(row)
            mask[b, span] = 1
    return ids, mask


def _random_boundaries(rng: random.Random, length: int, steps: int) -> list[int]:
    if length == 0:
        return [0, 0]
    return [0, *sorted(rng.sample(range(1, length), steps - 1)), length]


def _batch(tokenizer, rows: list[tuple[str, int, str, int]]) -> AttributionBatch:
    """rows: (question, response length, ground truth, steps). Real text through the real tokenizer."""
    rng = random.Random(0)
    text = " ".join(
        f"So {a} + {b} = {a + b}. Then, because {a} is {'odd' if a % 2 else 'even'}, we continue.\n"
        for a, b in ((rng.randint(1, 99), rng.randint(1, 99)) for _ in range(200))
    )
    stream = tokenizer(text, add_special_tokens=False)["input_ids"]
    prompts, responses, answers, cuts = [], [], [], []
    for question, length, truth, steps in rows:
        chat = [{"role": "user", "content": question}]
        prompts.append(tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
        start = rng.randint(0, len(stream) - length)
        responses.append(stream[start : start + length])
        answers.append(render_answer_ids(tokenizer, truth, "Answer: {answer}"))
        cuts.append(_random_boundaries(rng, length, steps))
    prompt_ids, prompt_mask = _pad([tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts], "left")
    response_ids, response_mask = _pad(responses, "right")
    answer_ids, answer_mask = _pad(answers, "right")
    boundaries = torch.full((len(rows), MAX_STEPS + 1), -1, dtype=torch.long)
    for b, row_cuts in enumerate(cuts):
        boundaries[b, : len(row_cuts)] = torch.tensor(row_cuts)
    num_steps = torch.tensor([steps for *_, steps in rows])
    return AttributionBatch(
        prompt_ids, prompt_mask, response_ids, response_mask, boundaries, num_steps, answer_ids, answer_mask
    )


@pytest.fixture(scope="module")
def batch(tokenizer) -> AttributionBatch:
    # Different prompt, response and answer lengths; K = 1, K = max_steps, an empty response (one empty step).
    return _batch(
        tokenizer,
        [
            ("What is 2 + 3?", 40, "5", 1),
            ("Compute the sum of the first ten odd numbers, then halve it.", 120, "50", MAX_STEPS),
            ("Simplify 6/12.", 0, "\\frac{1}{2}", 1),
            ("A train covers 120 km in 1.5 hours. What is its average speed in km/h?", 75, "80", 5),
        ],
    )


@pytest.fixture(scope="module")
def packed_scores(model, batch) -> torch.Tensor:
    # One micro-batch: every row is padded and shifted to the longest one.
    return score_answer_loglik(model, batch, micro_batch_size=4)


def test_packed_scores_equal_naive_forward_passes(model, batch, packed_scores):
    naive = score_answer_loglik_naive(model, batch, micro_batch_size=3)
    num_steps = batch.num_steps
    assert packed_scores.shape == naive.shape == (4, MAX_STEPS + 1)
    assert packed_scores.dtype == torch.float32
    assert (packed_scores - naive).abs().max().item() <= 1e-4
    active = torch.arange(MAX_STEPS + 1)[None, :] <= num_steps[:, None]
    assert torch.all(packed_scores[~active] == 0)
    assert torch.all(packed_scores[active] < 0)
    # The scores depend on the context: a layout error could not hide behind constant L.
    assert packed_scores[1].std() > 1e-3


def test_packed_scores_do_not_depend_on_micro_batching(model, batch, packed_scores):
    one_at_a_time = score_answer_loglik(model, batch, micro_batch_size=1)
    assert (one_at_a_time - packed_scores).abs().max().item() <= 1e-5


def test_packed_scores_are_logprobs_at_the_given_temperature(model, batch, packed_scores):
    cold = score_answer_loglik(model, batch, micro_batch_size=2, temperature=0.6)
    cold_naive = score_answer_loglik_naive(model, batch, micro_batch_size=8, temperature=0.6)
    assert (cold - cold_naive).abs().max().item() <= 1e-4
    assert (cold - packed_scores).abs().max().item() > 1e-2


def test_empty_response_scores_the_same_context_twice_and_contributes_nothing(batch, packed_scores):
    contributions = step_contributions(packed_scores, batch.num_steps)
    assert packed_scores[2, 0] == packed_scores[2, 1]
    assert torch.all(contributions[2] == 0)


def test_contributions_telescope_to_last_minus_first_score(batch, packed_scores):
    num_steps = batch.num_steps
    contributions = step_contributions(packed_scores, num_steps)
    assert contributions.shape == (4, MAX_STEPS)
    last = packed_scores.gather(1, num_steps[:, None]).squeeze(1)
    torch.testing.assert_close(contributions.sum(dim=1), last - packed_scores[:, 0], atol=1e-5, rtol=0)
    for b, steps in enumerate(num_steps.tolist()):
        torch.testing.assert_close(contributions[b, :steps], packed_scores[b, 1 : steps + 1] - packed_scores[b, :steps])
        assert torch.all(contributions[b, steps:] == 0)


def test_step_contributions_hand_worked():
    scores = torch.tensor([[-5.0, -4.0, -1.5, 0.0], [-3.0, -3.5, 0.0, 0.0]])
    # Row 0: K = 3, C = (-4 + 5, -1.5 + 4, 0 + 1.5) = (1, 2.5, 1.5). Row 1: K = 1, C = (-3.5 + 3) = -0.5.
    expected = torch.tensor([[1.0, 2.5, 1.5], [-0.5, 0.0, 0.0]])
    torch.testing.assert_close(step_contributions(scores, torch.tensor([3, 1])), expected)


def test_token_counts_hand_worked():
    prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    response_mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    boundaries = torch.tensor([[0, 1, 4], [0, 5, -1]])
    num_steps = torch.tensor([2, 1])
    answer_mask = torch.tensor([[1, 1], [1, 0]])
    counts = packed_token_count(
        AttributionBatch(
            prompt_mask, prompt_mask, response_mask, response_mask, boundaries, num_steps, answer_mask, answer_mask
        )
    )
    assert counts.plain_forward == (2 + 4) + (3 + 5)
    assert counts.packed == (2 + 4 + 3 * 2) + (3 + 5 + 2 * 1)
    # naive: sum over i of |q| + c_i + |Y| = (4 + 5 + 8) + (4 + 9).
    assert counts.naive == (2 + 0 + 2) + (2 + 1 + 2) + (2 + 4 + 2) + (3 + 0 + 1) + (3 + 5 + 1)
    assert counts.packed_over_plain == pytest.approx(22 / 14)


def test_render_answer_ids_uses_the_template(tokenizer):
    ids = render_answer_ids(tokenizer, " 42 ", "Answer: {answer}")
    assert tokenizer.decode(ids) == "Answer: 42"
    assert tokenizer.decode(render_answer_ids(tokenizer, "7", "\\boxed{{{answer}}}")) == "\\boxed{7}"


@pytest.mark.parametrize("truth", ["", "   ", None])
def test_render_answer_ids_rejects_an_empty_answer_naming_it(tokenizer, truth):
    with pytest.raises(ValueError, match=re.escape(repr(truth))):
        render_answer_ids(tokenizer, truth, "Answer: {answer}")


def _small_batch() -> dict[str, torch.Tensor]:
    return {
        "prompt_ids": torch.tensor([[0, 11, 12], [13, 14, 15]]),
        "prompt_mask": torch.tensor([[0, 1, 1], [1, 1, 1]]),
        "response_ids": torch.tensor([[21, 22, 23, 0], [24, 25, 26, 27]]),
        "response_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]),
        "boundaries": torch.tensor([[0, 2, 3], [0, 4, -1]]),
        "num_steps": torch.tensor([2, 1]),
        "answer_ids": torch.tensor([[31, 32], [33, 0]]),
        "answer_mask": torch.tensor([[1, 1], [1, 0]]),
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prompt_mask": torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])}, "prompt_ids and prompt_mask"),
        ({"num_steps": torch.tensor([2, 1, 1])}, "batch sizes differ"),
        ({"boundaries": torch.tensor([[0, 2, 5], [0, 4, -1]])}, "outside the response: row 0"),
        ({"boundaries": torch.tensor([[0, 2, 3], [0, 4, 4]])}, "after c_K must be -1: row 1"),
        ({"boundaries": torch.tensor([[0, 3, 3], [0, 4, -1]])}, "increase strictly.*row 0"),
        ({"boundaries": torch.tensor([[1, 2, 3], [0, 4, -1]])}, "c_0 = 0: row 0"),
        ({"boundaries": torch.tensor([[0, 2, 3], [0, 3, -1]])}, "c_K must equal the response length T: row 1"),
        ({"num_steps": torch.tensor([2, 3])}, r"num_steps must lie in \[1, 2\]: row 1"),
        ({"answer_mask": torch.tensor([[1, 1], [0, 0]])}, "empty answer: row 1"),
        ({"prompt_mask": torch.tensor([[1, 1, 0], [1, 1, 1]])}, "left-padded.*row 0"),
        ({"response_mask": torch.tensor([[1, 0, 1, 0], [1, 1, 1, 1]])}, "right-padded.*row 0"),
        ({"prompt_mask": torch.tensor([[0, 0, 0], [1, 1, 1]])}, "empty prompt.*row 0"),
        ({"boundaries": torch.tensor([[0.0, 2.0, 3.0], [0.0, 4.0, -1.0]])}, "boundaries must be an integer"),
    ],
)
def test_bad_input_raises_naming_the_row(change, message):
    inputs = {**_small_batch(), **change}
    with pytest.raises(ValueError, match=message):
        check_attribution_batch(AttributionBatch(**inputs))


def test_scoring_rejects_token_ids_outside_the_vocabulary(model):
    inputs = _small_batch()
    inputs["answer_ids"] = torch.tensor([[31, 32], [model.config.vocab_size, 0]])
    with pytest.raises(ValueError, match=r"answer_ids holds a token id >= the model's vocabulary.*row 1"):
        score_answer_loglik(model, AttributionBatch(**inputs), micro_batch_size=2)


def test_step_contributions_rejects_non_finite_scores_naming_the_row():
    scores = torch.tensor([[-1.0, -2.0, 0.0], [-1.0, float("nan"), 0.0]])
    with pytest.raises(ValueError, match="NaN or infinite: row 1"):
        step_contributions(scores, torch.tensor([2, 1]))


def test_tiny_qwen2_loads_with_the_qwen25_tokenizer(tiny_model_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    saved = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = model.config
    assert (config.model_type, config.hidden_size, config.num_hidden_layers) == ("qwen2", 64, 2)
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    assert config.vocab_size >= len(tokenizer) == len(saved) == 151665
    assert (saved.eos_token, saved.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert (config.eos_token_id, config.pad_token_id) == (151645, 151643)
    chat = [{"role": "user", "content": "What is $3.5 + 1$?"}]
    text = saved.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nWhat is $3.5 + 1$?<|im_end|>\n<|im_start|>assistant\n"
    ids = saved(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == 151644 and ids[-3:] == [151644, 77091, 198]  # <|im_start|> assistant \n
    assert saved.decode(ids) == text
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_offline_models_cli_builds_the_tokenizer(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "recipe.acpo.offline_models", "tokenizer", str(tmp_path / "tok")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "wrote tokenizer" in result.stdout
    assert len(AutoTokenizer.from_pretrained(tmp_path / "tok")) == 151665
