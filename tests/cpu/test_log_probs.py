"""The plugin's log-prob kernel: verl's quantity, vectorised in bounded chunks, for the ``cpu`` platform."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from verl.utils.torch_functional import logprobs_from_logits_v2

from verl_cpu.log_probs import token_log_probs


@pytest.mark.parametrize("chunk_elements", [1, 7 * 349, 1 << 24])
def test_log_probs_and_their_gradient_equal_verls_row_loop_for_any_chunk_size(chunk_elements: int) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 41, 349, generator=generator, requires_grad=True)
    labels = torch.randint(0, 349, (3, 41), generator=generator)
    expected = logprobs_from_logits_v2(logits, labels)
    got = token_log_probs(logits, labels, chunk_elements=chunk_elements)
    assert got.shape == (3, 41)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    (expected_grad,) = torch.autograd.grad(expected.sum(), logits)
    (got_grad,) = torch.autograd.grad(got.sum(), logits)
    torch.testing.assert_close(got_grad, expected_grad, atol=1e-6, rtol=0)


def test_low_precision_logits_are_reduced_in_float32_and_returned_in_their_dtype() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = (8 * torch.randn(64, 1000, generator=generator)).to(torch.bfloat16)
    labels = torch.randint(0, 1000, (64,), generator=generator)
    got = token_log_probs(logits, labels)
    reference = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels[:, None]).squeeze(-1)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), reference, atol=0.07, rtol=0.01)  # bfloat16 keeps 8 bits


def test_mismatched_labels_are_refused_and_no_tokens_give_no_log_probs() -> None:
    with pytest.raises(ValueError, match=r"logits \(4, 10\) need labels of shape \(4,\)"):
        token_log_probs(torch.zeros(4, 10), torch.zeros(5, dtype=torch.long))
    assert token_log_probs(torch.zeros(0, 10), torch.zeros(0, dtype=torch.long)).shape == (0,)


# What verl's FSDP engine calls: transformer_impl.logprobs_from_logits, on a fresh interpreter.
_PROBE = """
import torch, verl
from verl.workers.engine.fsdp import transformer_impl
kernel = transformer_impl.logprobs_from_logits
logits, labels = torch.randn(5, 17), torch.randint(0, 17, (5,))
got = kernel(logits, labels)
from verl_cpu.log_probs import token_log_probs  # imported last: importing verl_cpu registers the plugin
print(getattr(kernel, "__verl_cpu_wrapped__", False), torch.equal(got, token_log_probs(logits, labels)))
"""


@pytest.mark.e2e  # starts a fresh interpreter that imports verl: slow on 2 cores
@pytest.mark.parametrize(("plugin", "expected"), [(True, "True True"), (False, "False True")])
def test_the_plugin_gives_verls_engine_the_kernel_on_the_cpu_platform(
    plugin_probe: Callable[[str, bool], str], plugin: bool, expected: str
) -> None:
    # Without the plugin the engine keeps verl's own function (equal results here: the same formula).
    assert plugin_probe(_PROBE, plugin).strip().splitlines()[-1] == expected
