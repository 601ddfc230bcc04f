"""The ACPO worker's protocol: attention switching for the packed mask, dispatch padding, the naive request, and the
driver's scoring message (``score_answers``) against a stand-in worker group."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu
from verl.workers.utils.padding import response_from_nested

from acpo_core.attribution import AttributionBatch
from acpo_core.config import ACPOConfig
from acpo_core.lookahead import (
    RememberedContinuations,
    greedy_continuations,
    greedy_generate,
    lookahead_sequences,
)
from acpo_core.scoring import attention_implementation, score_answer_loglik, score_answer_loglik_naive
from recipe.acpo.acpo_worker import (
    ANSWER_LOGLIK_KEY,
    CONTEXTS_KEY,
    CONTINUATIONS_KEY,
    LOOKAHEAD_DEFAULTS,
    attribution_batch_from_request,
    attribution_request,
    attribution_token_budget,
    build_naive_log_prob_batch,
    continue_on_workers,
    pad_rows_to_multiple,
    score_answers,
)

PROMPTS = ["What is two plus two?", "Compute six times seven, then halve it."]
RESPONSES = [
    "Two plus two is four. So the answer is four.",
    "Six times seven is forty two. Half of that is twenty one. Thus twenty one.",
]
ANSWERS = ["Answer: 4", "Answer: 21"]


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa", dtype=torch.float32)
    return loaded.eval()


def _inputs(tokenizer: Any) -> AttributionBatch:
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    responses = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in RESPONSES]
    answers = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in ANSWERS]
    width_p, width_t, width_a = (max(map(len, x)) for x in (prompts, responses, answers))
    n = len(PROMPTS)
    prompt_ids = torch.zeros(n, width_p, dtype=torch.long)
    prompt_mask = torch.zeros(n, width_p, dtype=torch.long)
    response_ids = torch.zeros(n, width_t, dtype=torch.long)
    response_mask = torch.zeros(n, width_t, dtype=torch.long)
    answer_ids = torch.zeros(n, width_a, dtype=torch.long)
    answer_mask = torch.zeros(n, width_a, dtype=torch.long)
    boundaries = torch.full((n, 4), -1, dtype=torch.long)
    num_steps = torch.zeros(n, dtype=torch.long)
    for i in range(n):
        prompt_ids[i, width_p - len(prompts[i]) :] = torch.tensor(prompts[i])
        prompt_mask[i, width_p - len(prompts[i]) :] = 1
        response_ids[i, : len(responses[i])] = torch.tensor(responses[i])
        response_mask[i, : len(responses[i])] = 1
        answer_ids[i, : len(answers[i])] = torch.tensor(answers[i])
        answer_mask[i, : len(answers[i])] = 1
        # Two steps for the first response, three for the second.
        cuts = [0, 6, len(responses[i])] if i == 0 else [0, 5, 11, len(responses[i])]
        boundaries[i, : len(cuts)] = torch.tensor(cuts)
        num_steps[i] = len(cuts) - 1
    return AttributionBatch(
        prompt_ids, prompt_mask, response_ids, response_mask, boundaries, num_steps, answer_ids, answer_mask
    )


def test_flash_attention_model_is_scored_with_sdpa_and_restored(model: Any, qwen_tokenizer: Any) -> None:
    inputs = _inputs(qwen_tokenizer)
    reference = score_answer_loglik(model, inputs, micro_batch_size=2)
    # The configuration verl's FSDP engine loads on a GPU with use_remove_padding (flash-attn kernels not needed:
    # the packed forward must not use them).
    model.config._attn_implementation_internal = "flash_attention_2"
    try:
        with attention_implementation(model, "sdpa") as implementation:
            assert implementation == model.config._attn_implementation == "sdpa"
        assert model.config._attn_implementation == "flash_attention_2"
        scores = score_answer_loglik(model, inputs, micro_batch_size=2, attention="sdpa")
        assert model.config._attn_implementation == "flash_attention_2"
        assert all(not hasattr(m.config, "_attn_was_changed") for m in model.modules() if hasattr(m, "config"))
    finally:
        model.config._attn_implementation_internal = "sdpa"
    torch.testing.assert_close(scores, reference)


def test_eager_and_sdpa_models_are_left_as_they_are(model: Any) -> None:
    for implementation in ("sdpa", "eager"):
        model.config._attn_implementation_internal = implementation
        with attention_implementation(model, "sdpa") as used:
            assert used == model.config._attn_implementation == implementation
    model.config._attn_implementation_internal = "sdpa"


def test_attribution_request_pads_to_the_data_parallel_multiple(qwen_tokenizer: Any) -> None:
    inputs = _inputs(qwen_tokenizer)
    request = attribution_request(inputs, micro_batch_size=3, temperature=0.7, attention="flex", token_budget=4096)
    padded, num_rows = pad_rows_to_multiple(request, 4)
    assert num_rows == 2 and len(padded) == 4
    assert torch.equal(padded["prompt_ids"][2], padded["prompt_ids"][1])
    assert tu.get_non_tensor_data(padded, "micro_batch_size", None) == 3
    assert tu.get_non_tensor_data(padded, "temperature", None) == 0.7
    assert tu.get_non_tensor_data(padded, "attention", None) == "flex"
    assert tu.get_non_tensor_data(padded, "token_budget", None) == 4096
    round_trip = attribution_batch_from_request(padded[:num_rows])
    assert all(torch.equal(a, b) for a, b in zip(round_trip.as_dict().values(), inputs.as_dict().values()))
    same, rows = pad_rows_to_multiple(request, 2)
    assert same is request and rows == 2
    with pytest.raises(KeyError, match="answer_mask"):
        attribution_batch_from_request(TensorDict({"prompt_ids": inputs.prompt_ids}, batch_size=[2]))


def _verl_style_log_probs(model: Any, request: TensorDict) -> torch.Tensor:
    """What verl's compute_log_prob returns for a no-padding request: log p(token t+1 | <= t) per position."""
    rows = []
    for ids in request["input_ids"].unbind():
        logits = model(input_ids=ids[None]).logits[0].float()
        rolled = torch.roll(ids, shifts=-1)
        rows.append(torch.log_softmax(logits, dim=-1).gather(1, rolled[:, None]).squeeze(1))
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


@torch.no_grad()
def test_naive_request_in_verl_layout_reproduces_acpo_core_scores(model: Any, qwen_tokenizer: Any) -> None:
    inputs = _inputs(qwen_tokenizer)
    request, owners = build_naive_log_prob_batch(inputs, temperature=1.0)
    assert owners.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2], [1, 3]]
    assert tu.get_non_tensor_data(request, "calculate_entropy", None) is False
    lengths = request["input_ids"].offsets().diff()
    assert torch.equal(lengths, request["prompts"].offsets().diff() + request["responses"].offsets().diff())
    answer_logprobs = response_from_nested(_verl_style_log_probs(model, request), request["response_mask"])
    scores = torch.zeros(inputs.boundaries.shape)
    for (row, step), values in zip(owners.tolist(), answer_logprobs.unbind()):
        scores[row, step] = values.sum()
    naive = score_answer_loglik_naive(model, inputs, micro_batch_size=4)
    packed = score_answer_loglik(model, inputs, micro_batch_size=4)
    torch.testing.assert_close(scores, naive, atol=1e-4, rtol=0)
    torch.testing.assert_close(scores, packed, atol=1e-4, rtol=0)


def test_token_budget_defaults_to_the_log_prob_pass_when_its_dynamic_batch_size_is_on() -> None:
    config = OmegaConf.create(
        {"actor_rollout_ref": {"rollout": {"log_prob_use_dynamic_bsz": False, "log_prob_max_token_len_per_gpu": 24576}}}
    )
    assert attribution_token_budget(config, ACPOConfig()) is None
    OmegaConf.update(config, "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz", True)
    assert attribution_token_budget(config, ACPOConfig()) == 24576
    budget = ACPOConfig.from_dict({"attribution": {"max_tokens_per_micro_batch": 8192}})
    assert attribution_token_budget(config, budget) == 8192


class _ActorWorkers:
    """Stands in for the actor worker group: three data-parallel ranks that score on ``model`` in this process."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self._dispatch_info: dict[str, list[int]] = {}
        self.requests: list[TensorDict] = []

    def _query_dispatch_info(self, mesh_name: str) -> list[int]:
        assert mesh_name == "actor"
        return [0, 1, 2]

    def compute_answer_loglik(self, request: TensorDict) -> TensorDict:
        self.requests.append(request)
        inputs = attribution_batch_from_request(request)
        size = tu.get_non_tensor_data(request, "micro_batch_size", None)
        scores = score_answer_loglik(self.model, inputs, micro_batch_size=size)
        return TensorDict({ANSWER_LOGLIK_KEY: scores}, batch_size=[len(request)])

    def compute_log_prob(self, request: TensorDict) -> TensorDict:
        self.requests.append(request)
        return TensorDict({"log_probs": _verl_style_log_probs(self.model, request)}, batch_size=[len(request)])

    def generate_lookahead(self, request: TensorDict) -> TensorDict:
        self.requests.append(request)
        settings = {key: tu.get_non_tensor_data(request, key, None) for key in LOOKAHEAD_DEFAULTS}
        out = greedy_generate(
            self.model,
            list(request[CONTEXTS_KEY].unbind()),
            settings["pad_id"],
            [int(token) for token in settings["end_ids"].split(",")],
            settings["max_new_tokens"],
            settings["micro_batch_size"],
        )
        return TensorDict({CONTINUATIONS_KEY: out}, batch_size=[len(request)])


def _three_per_micro_batch() -> Any:
    """A run config whose log-prob pass takes 3 sequences a micro-batch (the naive request's multiple)."""
    rollout = {"temperature": 1.0, "log_prob_use_dynamic_bsz": False, "log_prob_micro_batch_size_per_gpu": 3}
    return OmegaConf.create({"actor_rollout_ref": {"rollout": rollout}})


@torch.no_grad()
@pytest.mark.parametrize("mode", ["packed", "naive"])
def test_score_answers_sends_a_padded_request_and_returns_the_real_rows(
    model: Any, qwen_tokenizer: Any, mode: str
) -> None:
    inputs, workers, config = _inputs(qwen_tokenizer), _ActorWorkers(model), _three_per_micro_batch()
    acpo_config = ACPOConfig.from_dict({"attribution": {"micro_batch_size": 1}})
    scores = score_answers(workers, inputs, mode, config, acpo_config)
    # Packed: 2 responses padded to the 3 ranks. Naive: 7 sequences padded to 3 ranks x 3 per micro-batch.
    assert [len(request) for request in workers.requests] == [3 if mode == "packed" else 9]
    assert workers._dispatch_info == {"actor": [0, 1, 2]}
    torch.testing.assert_close(scores, score_answer_loglik_naive(model, inputs, micro_batch_size=4), atol=1e-4, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("mode", ["packed", "naive"])
def test_the_lookahead_judge_generates_on_the_workers_then_scores_either_way(
    model: Any, qwen_tokenizer: Any, mode: str
) -> None:
    from functools import partial

    from recipe.acpo.step_dump import token_text_table

    inputs, workers, config = _inputs(qwen_tokenizer), _ActorWorkers(model), _three_per_micro_batch()
    acpo_config = ACPOConfig.from_dict({"attribution": {"judge": "lookahead", "mode": mode}})
    pad, eos = qwen_tokenizer.pad_token_id, qwen_tokenizer.eos_token_id
    cut = {"token_texts": token_text_table(qwen_tokenizer), "stop_text": "Answer:", "max_new_tokens": 6}
    continue_fn = partial(continue_on_workers, workers, pad_id=pad, end_ids=[eos], micro_batch_size=2, **cut)
    scores = score_answers(workers, inputs, mode, config, acpo_config, RememberedContinuations(continue_fn))
    # The 5 open prefixes (2 + 3 steps) padded to the 3 ranks; then the 7 look-ahead contexts, packed: as 7 one-step
    # responses padded to 3 ranks, naive: 7 sequences padded to 3 ranks x 3 per micro-batch.
    assert [len(request) for request in workers.requests] == [6, 9]
    reference = partial(greedy_continuations, model, pad_id=pad, end_ids={eos}, micro_batch_size=2, **cut)
    continuations = reference([s[:n] for _, _, s, n in _open_jobs(inputs)])
    assert any(continuations), "no prefix was continued: the comparison would be the naive judge's"
    sequences = partial(lookahead_sequences, continue_fn=reference)
    expected = score_answer_loglik_naive(model, inputs, micro_batch_size=4, sequences=sequences)
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=0)


def _open_jobs(inputs: AttributionBatch) -> list[Any]:
    from acpo_core.attribution import check_attribution_batch, naive_sequences

    lengths = check_attribution_batch(inputs)
    return [job for job in naive_sequences(inputs, lengths) if job[1] < int(lengths.num_steps[job[0]])]
