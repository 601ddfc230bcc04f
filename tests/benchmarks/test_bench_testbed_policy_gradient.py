"""The verl-free policy-gradient control of benchmarks/bench_testbed_policy_gradient.py: its step has the right sign."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_testbed_policy_gradient.py"
_SPEC = importlib.util.spec_from_file_location("bench_testbed_policy_gradient", _PATH)
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def _response_logprob(model, sequences: torch.Tensor, attention_mask: torch.Tensor, width: int) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=sequences, attention_mask=attention_mask).logits[:, width - 1 : -1]
        logprobs = torch.log_softmax(logits, -1).gather(-1, sequences[:, width:].unsqueeze(-1)).squeeze(-1)
    return (logprobs * attention_mask[:, width:]).sum(-1)


def test_a_policy_gradient_step_raises_the_response_with_positive_advantage_and_lowers_the_other() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    model = LlamaForCausalLM(config)
    width = 4
    sequences = torch.randint(0, 32, (2, 10))
    sequences[:, :width] = sequences[0, :width]  # one prompt, two responses
    attention_mask = torch.ones_like(sequences)
    response_mask = torch.ones(2, 10 - width, dtype=torch.bool)
    response_mask[1, -2:] = False  # the second response ended two tokens early
    attention_mask[1, -2:] = 0
    before = _response_logprob(model, sequences, attention_mask, width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    advantages = torch.tensor([1.0, -1.0])
    grad_norm = bench.policy_gradient_step(
        model, optimizer, sequences, attention_mask, response_mask, advantages, width
    )
    after = _response_logprob(model, sequences, attention_mask, width)
    assert grad_norm > 0
    assert after[0] > before[0]
    assert after[1] < before[1]


def test_held_out_breakdown_splits_accuracy_by_whether_a_response_has_a_hasty_line() -> None:
    from recipe.acpo.testbed.task import TaskSpec, generate

    problem = generate(1, TaskSpec(num_ops=(2, 2)), seed=0, pool="rl")[0]
    answer = problem.answer
    careful_right = f"First, 1 + 1 = 2.\nThen, 2 + 1 = 3.\nAnswer: {answer}"
    hasty_wrong = f"Quick, 1 + 1 = 3.\nThen, 3 + 1 = 4.\nAnswer: {answer + 1}"
    hasty_right = f"First, 1 + 1 = 2.\nQuick, 2 + 1 = 3.\nAnswer: {answer}"
    breakdown = bench.held_out_breakdown([careful_right, hasty_wrong, hasty_right], [problem])
    assert breakdown["accuracy"] == 2 / 3
    assert breakdown["accuracy_without_hasty_line"] == 1.0
    assert breakdown["accuracy_with_hasty_line"] == 0.5
    assert breakdown["responses_with_hasty_line"] == 2 / 3
    assert breakdown["hasty_line_share"] == 2 / 6
