"""benchmarks/step_floor.py: a step's work as plain torch computations, timed phase by phase."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "step_floor.py"
_SPEC = importlib.util.spec_from_file_location("step_floor", _PATH)
floor = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(floor)


def test_rows_are_padded_on_the_right_with_a_mask_of_their_tokens() -> None:
    ids, mask = floor.right_padded([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_token_log_probs_and_entropies_are_those_of_the_next_token_distribution(tiny_policy: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_policy, dtype=torch.float32).eval()
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        log_probs, entropy = floor.token_log_probs(model, ids, torch.ones_like(ids))
        expected = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    assert log_probs[0].tolist() == pytest.approx(expected[torch.arange(3), ids[0, 1:]].tolist(), abs=1e-5)
    assert entropy[0].tolist() == pytest.approx((-(expected.exp() * expected).sum(-1)).tolist(), abs=1e-5)


def test_the_floor_times_every_phase_and_the_step_is_their_sum(tiny_policy: Path) -> None:
    figures = floor.measure_step_floor(tiny_policy, problems=2, samples=2, repeats=1)
    phases = [name for name in floor.FLOOR_TIMERS if name != "step"]
    assert all(figures[name] > 0 for name in phases)
    assert figures["step"] == pytest.approx(sum(figures[name] for name in phases))
    assert figures["responses"] == 4
    # The judge continues the two prompts at least, plus every line start inside a response.
    assert figures["prefixes"] >= 2 and figures["response_tokens_mean"] >= 1
