"""acpo_core.scoring: the flex and sdpa packed paths both equal the naive reference (§3, 1e-4 in fp32).

One module-scoped model and batch keep flex attention's compilations few (about 5 s for the first shape on this
CPU); the token-budget case adds padded lengths and is marked e2e.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import pytest
import torch

import acpo_core.scoring as scoring
from acpo_core.attribution import AttributionBatch, check_attribution_batch, render_answer_ids
from acpo_core.document_packing import WIDTHS_PER_BUDGET, packed_lengths, padded_width
from acpo_core.scoring import plan_scoring, resolve_attention, score_answer_loglik, score_answer_loglik_naive

MAX_STEPS = 24


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa", dtype=torch.float32)
    return loaded.eval()


@pytest.fixture(scope="module")
def batch(qwen_tokenizer: Any) -> AttributionBatch:
    """Four responses of different lengths: K = 1, K = 24, an empty response, K = 5."""
    rng = random.Random(1)
    text = " ".join(f"So {a} + {b} = {a + b}. Then we continue.\n" for a, b in ((n, 2 * n + 1) for n in range(120)))
    stream = qwen_tokenizer(text, add_special_tokens=False)["input_ids"]
    rows = [("What is 2 + 3?", 40, "5", 1), ("Sum the first ten odd numbers.", 150, "100", MAX_STEPS)]
    rows += [("Simplify 6/12.", 0, "\\frac{1}{2}", 1), ("A train covers 120 km in 1.5 h. Speed?", 75, "80", 5)]
    prompts = [qwen_tokenizer(q, add_special_tokens=False)["input_ids"] for q, *_ in rows]
    answers = [render_answer_ids(qwen_tokenizer, truth, "Answer: {answer}") for _, _, truth, _ in rows]
    n, width_p, width_a = len(rows), max(map(len, prompts)), max(map(len, answers))
    prompt_ids, prompt_mask = torch.zeros(n, width_p, dtype=torch.long), torch.zeros(n, width_p, dtype=torch.long)
    response_ids, response_mask = torch.zeros(n, 150, dtype=torch.long), torch.zeros(n, 150, dtype=torch.long)
    answer_ids, answer_mask = torch.zeros(n, width_a, dtype=torch.long), torch.zeros(n, width_a, dtype=torch.long)
    boundaries = torch.full((n, MAX_STEPS + 1), -1, dtype=torch.long)
    for b, (_, length, _, steps) in enumerate(rows):
        prompt_ids[b, width_p - len(prompts[b]) :] = torch.tensor(prompts[b])
        prompt_mask[b, width_p - len(prompts[b]) :] = 1
        start = rng.randint(0, len(stream) - length)
        response_ids[b, :length] = torch.tensor(stream[start : start + length], dtype=torch.long)
        response_mask[b, :length] = 1
        answer_ids[b, : len(answers[b])] = torch.tensor(answers[b])
        answer_mask[b, : len(answers[b])] = 1
        cuts = [0, 0] if length == 0 else [0, *sorted(rng.sample(range(1, length), steps - 1)), length]
        boundaries[b, : len(cuts)] = torch.tensor(cuts)
    num_steps = torch.tensor([steps for *_, steps in rows])
    return AttributionBatch(
        prompt_ids, prompt_mask, response_ids, response_mask, boundaries, num_steps, answer_ids, answer_mask
    )


@pytest.fixture(scope="module")
def naive(model: Any, batch: AttributionBatch) -> torch.Tensor:
    return score_answer_loglik_naive(model, batch, micro_batch_size=16)


@pytest.mark.parametrize("attention", ["flex", "sdpa"])
def test_packed_paths_equal_the_naive_reference(model: Any, batch: AttributionBatch, naive, attention: str) -> None:
    packed = score_answer_loglik(model, batch, micro_batch_size=4, attention=attention)
    assert (packed - naive).abs().max().item() <= 1e-4
    active = torch.arange(MAX_STEPS + 1)[None, :] <= batch.num_steps[:, None]
    assert (packed[~active] == 0).all() and (packed[active] < 0).all()
    assert packed[1].std() > 1e-3  # context-dependent scores: a layout error could not hide behind constant L
    assert model.config._attn_implementation == "sdpa"  # flex was switched on for the forward only


@pytest.mark.e2e
def test_flex_under_a_token_budget_scores_in_several_forwards_and_still_equals_naive(
    model: Any, batch: AttributionBatch, naive
) -> None:
    lengths = check_attribution_batch(batch)
    budget = int(packed_lengths(lengths).max()) + 1
    plan = plan_scoring(model, batch, lengths, micro_batch_size=4, attention="flex", token_budget=budget)
    assert len(plan) >= 2
    packed = score_answer_loglik(model, batch, micro_batch_size=4, attention="flex", token_budget=budget)
    assert (packed - naive).abs().max().item() <= 1e-4


@pytest.mark.e2e
def test_flex_compiles_once_per_padded_width_under_a_token_budget(model: Any, batch: AttributionBatch, naive) -> None:
    """Micro-batches of 1 to 4 rows under a budget: one compilation per distinct width (<= 8), none on a rerun."""
    from torch._dynamo.utils import counters

    lengths = check_attribution_batch(batch)
    budget = int(packed_lengths(lengths).sum()) + 1  # every plan fits; micro-batch sizes 1, 2, 4 vary the widths
    widths = set()
    for rows in (1, 2, 4):
        for group in plan_scoring(model, batch, lengths, micro_batch_size=rows, attention="flex", token_budget=budget):
            widths.add(padded_width(int(packed_lengths(lengths)[group].sum()), token_budget=budget))
    assert len(widths) <= WIDTHS_PER_BUDGET
    before = counters["stats"]["unique_graphs"]
    for rows in (1, 2, 4):
        packed = score_answer_loglik(model, batch, micro_batch_size=rows, attention="flex", token_budget=budget)
        assert (packed - naive).abs().max().item() <= 1e-4
    compiled = counters["stats"]["unique_graphs"] - before
    assert 1 <= compiled <= len(widths)  # widths compiled by earlier tests of this process are reused
    score_answer_loglik(model, batch, micro_batch_size=1, attention="flex", token_budget=budget)
    assert counters["stats"]["unique_graphs"] - before == compiled


def test_flex_refuses_to_run_uncompiled(model: Any, batch: AttributionBatch, monkeypatch: pytest.MonkeyPatch) -> None:
    """Uncompiled flex would materialise [S, S] scores: a disabled TorchDynamo, or the recompile limit, is an error."""
    with torch._dynamo.config.patch(disable=True), pytest.raises(RuntimeError, match=r"needs torch\.compile"):
        score_answer_loglik(model, batch, micro_batch_size=4, attention="flex")
    # What earlier tests compiled must not decide whether the first call below fits under a limit of one graph.
    torch._dynamo.reset()
    monkeypatch.setattr(scoring, "FLEX_RECOMPILE_LIMIT", 1)
    one_row = batch.select(torch.tensor([0]))
    score_answer_loglik(model, one_row, micro_batch_size=1, attention="flex")  # the one graph the limit allows
    wide = batch.select(torch.tensor([1] * 7))  # a width no other test of this file compiles
    with pytest.raises(RuntimeError, match="would run uncompiled"):
        score_answer_loglik(model, wide, micro_batch_size=7, attention="flex")
    assert model.config._attn_implementation == "sdpa"


def test_auto_attention_is_flex_on_an_accelerator_and_sdpa_on_cpu() -> None:
    assert resolve_attention("auto", "cpu") == "sdpa"
    assert resolve_attention("auto", torch.device("cuda", 0)) == "flex"
    assert resolve_attention("sdpa", "cuda") == "sdpa"
    with pytest.raises(ValueError, match=r"acpo\.attribution\.attention"):
        resolve_attention("flash", "cpu")


# ------------------------------------------------------------------------------------------- the look-ahead judge


def test_lookahead_sequences_insert_each_continuation_before_the_answer(batch: AttributionBatch) -> None:
    from acpo_core.attribution import naive_sequences
    from acpo_core.lookahead import lookahead_sequences

    lengths = check_attribution_batch(batch)
    seen: list[int] = []

    def continue_fn(contexts: list[torch.Tensor]) -> list[list[int]]:
        seen.extend(int(c.numel()) for c in contexts)
        return [[7, 8, 9][: n % 4] for n in range(len(contexts))]

    plain = naive_sequences(batch, lengths)
    looked = lookahead_sequences(batch, lengths, continue_fn)
    open_jobs = [job for job in plain if job[1] < int(lengths.num_steps[job[0]])]
    assert seen == [context_len for *_, context_len in open_jobs]  # called once, on every i < K
    extras = iter([[7, 8, 9][: n % 4] for n in range(len(open_jobs))])
    for (b, i, sequence, context_len), (lb, li, lsequence, lcontext_len) in zip(plain, looked):
        assert (b, i) == (lb, li)
        extra = next(extras) if i < int(lengths.num_steps[b]) else []  # the complete response is not continued
        assert lcontext_len == context_len + len(extra)
        assert lsequence.tolist() == [*sequence[:context_len].tolist(), *extra, *sequence[context_len:].tolist()]
    with pytest.raises(RuntimeError, match="continuations for"):
        lookahead_sequences(batch, lengths, lambda contexts: [])


def test_the_lookahead_judge_without_continuations_is_the_naive_reference(
    model: Any, batch: AttributionBatch, naive: torch.Tensor
) -> None:
    from functools import partial

    from acpo_core.lookahead import lookahead_sequences

    sequences = partial(lookahead_sequences, continue_fn=lambda contexts: [[] for _ in contexts])
    looked = score_answer_loglik_naive(model, batch, micro_batch_size=16, sequences=sequences)
    torch.testing.assert_close(looked, naive, atol=0, rtol=0)


@pytest.mark.parametrize(
    ("tokens", "stop_text", "kept"),
    [
        ([0, 1, 2, 3, 4, 5, 6], "Answer:", [0, 1, 2]),  # cut before the token where the stop text begins
        ([0, 7, 4, 5], "Answer:", [0]),  # a token holding the newline and the stop text's start goes with it
        ([0, 1, 6, 3, 4], "Answer:", [0, 1]),  # nothing after the end token
        ([0, 3, 1], "Answer:", [0, 3, 1]),  # "Answer" alone is not the stop text
        ([0, 1, 2, 3, 4], "", [0, 1, 2, 3, 4]),
    ],
)
def test_continuations_are_cut_before_the_answer_template_and_at_the_end_token(
    tokens: list[int], stop_text: str, kept: list[int]
) -> None:
    from acpo_core.lookahead import cut_at_text

    texts = ["a", "b", "\n", "Answer", ":", " 4", "<eos>", "\nAnswer"]
    assert cut_at_text(tokens, texts, stop_text, end_ids={6}) == kept


def test_greedy_continuations_are_the_models_greedy_tokens_cut_and_without_padding(
    model: Any, qwen_tokenizer: Any
) -> None:
    from acpo_core.lookahead import greedy_continuations

    texts = ["What is 2 + 3? Let us see.", "Sum"]
    contexts = [torch.tensor(qwen_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    pad, eos = qwen_tokenizer.pad_token_id, qwen_tokenizer.eos_token_id
    out = greedy_continuations(model, contexts, pad, {eos}, token_texts=[], stop_text="", max_new_tokens=6)
    # The short context is left-padded in the batch; alone it must continue the same way.
    alone = model.generate(input_ids=contexts[1][None], do_sample=False, max_new_tokens=6, pad_token_id=pad)
    expected = alone[0, contexts[1].numel() :].tolist()
    assert out[1] == (expected[: expected.index(eos)] if eos in expected else expected)
    assert all(len(row) <= 6 and eos not in row for row in out)


def test_remembered_continuations_generate_each_distinct_context_once() -> None:
    from acpo_core.lookahead import RememberedContinuations

    generated: list[list[int]] = []

    def continue_fn(contexts: list[torch.Tensor]) -> list[list[int]]:
        generated.extend(c.tolist() for c in contexts)
        return [[int(c.sum())] for c in contexts]

    remembered = RememberedContinuations(continue_fn)
    a, b = torch.tensor([1, 2]), torch.tensor([3])
    assert remembered([a, b, a.clone()]) == [[3], [3], [3]]
    assert remembered([b, torch.tensor([4, 4])]) == [[3], [8]]
    assert generated == [[1, 2], [3], [4, 4]]


@pytest.mark.parametrize("attention", ["sdpa", "flex"])
def test_the_lookahead_judge_scored_packed_equals_its_naive_reference(
    model: Any, batch: AttributionBatch, attention: str
) -> None:
    from functools import partial

    from acpo_core.lookahead import lookahead_batch, lookahead_sequences, score_lookahead

    # A repeated response (its rows are scored once), and value-only scoring on one row (the mask travels along).
    doubled = batch.select(torch.tensor([0, 0, 1, 2, 3]))
    scored = doubled.answer_scored.clone()
    scored[4, 0] = 0
    doubled = dataclasses.replace(doubled, answer_scored=scored)

    def continue_fn(contexts: list[torch.Tensor]) -> list[list[int]]:
        # Some continuations empty, the others the context's last one or two tokens (a continuation of a context).
        return [context[-(c.numel() % 3) :].tolist() if c.numel() % 3 else [] for c in contexts for context in [c]]

    looked, row_of_job, owners = lookahead_batch(doubled, check_attribution_batch(doubled), continue_fn)
    jobs = int((doubled.num_steps + 1).sum())
    assert owners.shape == (jobs, 2) and row_of_job.shape == (jobs,)
    assert len(looked) < jobs  # row 0's repeat and the prompt-only contexts of identical prompts
    assert (looked.num_steps == 1).all()
    packed = score_lookahead(
        doubled, continue_fn, partial(score_answer_loglik, model, micro_batch_size=8, attention=attention)
    )
    sequences = partial(lookahead_sequences, continue_fn=continue_fn)
    reference = score_answer_loglik_naive(model, doubled, micro_batch_size=16, sequences=sequences)
    assert (packed - reference).abs().max().item() <= 1e-4
    assert torch.equal(packed[0], packed[1])
