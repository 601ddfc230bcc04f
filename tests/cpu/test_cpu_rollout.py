"""The CPU rollout backend: batched generation, per-request sampling, log-probs, the server, and the verl plugin."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from verl_cpu.generation import (
    SAMPLE_BURST_KEY,
    SAMPLE_BURST_SIZE_KEY,
    SAMPLE_STREAM_KEY,
    SamplingSpec,
    generate_batch,
    request_seed,
    sample_next_tokens,
    sampling_spec_from_params,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
EOS = 151645  # <|im_end|>
PAD = 151643  # <|endoftext|>
PROMPTS = [list(range(1000, 1012)), [42, 7], list(range(5000, 5031)), [9, 9, 9, 9, 9, 9, 9]]


@pytest.fixture(scope="module")
def policy(tiny_model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()


def _forward_log_probs(model: Any, prompt: list[int], response: list[int], temperature: float) -> torch.Tensor:
    """Log-probs of ``response`` under ``model`` at ``temperature``: one unpadded forward pass, as the trainer does."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    log_probs = torch.log_softmax(logits / temperature, dim=-1)
    return log_probs.gather(-1, torch.tensor(response).unsqueeze(-1)).squeeze(-1)


def test_batched_generation_equals_one_at_a_time_under_greedy(policy: Any) -> None:
    specs = [SamplingSpec(max_tokens=n, temperature=0.0, ignore_eos=True) for n in (12, 5, 9, 16)]
    batched = generate_batch(policy, PROMPTS, specs, {EOS}, PAD)
    for prompt, spec, together in zip(PROMPTS, specs, batched):
        alone = generate_batch(policy, [prompt], [spec], {EOS}, PAD)[0]
        assert together.token_ids == alone.token_ids
        assert len(together.token_ids) == spec.max_tokens
        torch.testing.assert_close(torch.tensor(together.log_probs), torch.tensor(alone.log_probs), atol=1e-4, rtol=0)


def test_returned_log_probs_equal_a_forward_pass_of_the_policy(policy: Any) -> None:
    temperatures = [1.0, 0.7, 1.5, 0.0]
    specs = [SamplingSpec(max_tokens=10, temperature=t, ignore_eos=True) for t in temperatures]
    results = generate_batch(policy, PROMPTS, specs, {EOS}, PAD, generator=torch.Generator().manual_seed(3))
    for prompt, temperature, result in zip(PROMPTS, temperatures, results):
        # Greedy rows report the untempered log-prob, sampled rows the log-prob at their own temperature.
        expected = _forward_log_probs(policy, prompt, result.token_ids, temperature or 1.0)
        torch.testing.assert_close(torch.tensor(result.log_probs), expected, atol=1e-4, rtol=0)


def test_each_row_is_sampled_at_its_own_temperature() -> None:
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    temperatures = torch.tensor([0.0, 0.5, 1.0, 3.0])
    draws = 4000
    rows = temperatures.repeat_interleave(draws)
    tokens, log_probs = sample_next_tokens(
        logits.expand(len(rows), -1),
        rows,
        torch.full((len(rows),), -1),
        torch.ones(len(rows)),
        torch.Generator().manual_seed(0),
    )
    for index, temperature in enumerate(temperatures.tolist()):
        drawn = tokens[index * draws : (index + 1) * draws]
        frequencies = torch.bincount(drawn, minlength=4).float() / draws
        if temperature == 0.0:
            assert torch.equal(drawn, torch.zeros_like(drawn))
            expected_log_probs = torch.log_softmax(logits, -1)[drawn]
        else:
            expected = torch.softmax(logits / temperature, -1)
            torch.testing.assert_close(frequencies, expected, atol=0.03, rtol=0)
            expected_log_probs = torch.log_softmax(logits / temperature, -1)[drawn]
        torch.testing.assert_close(log_probs[index * draws : (index + 1) * draws], expected_log_probs)


def test_top_k_and_top_p_restrict_and_renormalise_the_sampling_distribution() -> None:
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0]).expand(3000, -1)
    generator = torch.Generator().manual_seed(1)
    ones = torch.ones(3000)
    tokens, log_probs = sample_next_tokens(logits, ones, torch.full((3000,), 2), ones, generator)
    assert set(tokens.tolist()) == {0, 1}
    torch.testing.assert_close(log_probs, torch.log_softmax(logits[0, :2], -1)[tokens])

    # top_p = 0.7: token 0 holds 0.64 of the mass, so tokens 0 and 1 (mass before token 1 is 0.64 < 0.7) remain.
    tokens, log_probs = sample_next_tokens(logits, ones, torch.full((3000,), -1), torch.full((3000,), 0.7), generator)
    assert set(tokens.tolist()) == {0, 1}
    torch.testing.assert_close(log_probs, torch.log_softmax(logits[0, :2], -1)[tokens])


# 99.9% quantiles of the chi-square distribution by degrees of freedom: a correct sampler fails 1 seeded run in 1000.
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52}


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"),
    [(1.0, -1, 1.0), (0.7, 3, 1.0), (1.4, -1, 0.8)],
    ids=["plain", "top_k", "top_p"],
)
def test_seeded_sampling_draws_from_the_models_distribution(temperature: float, top_k: int, top_p: float) -> None:
    """Every row sampled from its own seeded stream: the frequencies pass a chi-square test against the tempered,
    truncated and renormalised distribution, computed here independently of the sampler (seeded: deterministic)."""
    logits = torch.tensor([1.5, 1.0, 0.3, 0.0, -0.5, -2.0], dtype=torch.float64)
    draws = 6000
    generators = [torch.Generator().manual_seed(request_seed(0, f"chi2:{i}", [1, 2, 3])) for i in range(draws)]
    tokens, _ = sample_next_tokens(
        logits.float().expand(draws, -1),
        torch.full((draws,), temperature),
        torch.full((draws,), top_k),
        torch.full((draws,), top_p),
        generators,
    )
    probs = torch.softmax(logits / temperature, -1)
    keep = torch.ones_like(probs, dtype=torch.bool)
    if top_k > 0:
        keep &= probs >= probs.sort(descending=True).values[top_k - 1]
    if top_p < 1.0:
        order = probs.argsort(descending=True)
        mass_before = probs[order].cumsum(0) - probs[order]
        keep &= torch.zeros_like(keep).scatter(0, order, mass_before < top_p)
    expected = torch.where(keep, probs, 0.0)
    expected = expected / expected.sum() * draws
    observed = torch.bincount(tokens, minlength=len(logits)).double()
    assert torch.all(observed[~keep] == 0), "a token outside the top-k / top-p set was drawn"
    chi2 = float(((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    assert chi2 < CHI2_999[int(keep.sum()) - 1], (chi2, observed.tolist(), expected.tolist())


def test_a_row_with_its_own_generator_draws_the_same_token_in_any_batch() -> None:
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(0))

    def draw(rows: list[int]) -> list[int]:
        generators = [torch.Generator().manual_seed(100 + r) for r in rows]
        ones = torch.ones(len(rows))
        return sample_next_tokens(logits[rows], ones, torch.full((len(rows),), -1), ones, generators)[0].tolist()

    together = draw([0, 1, 2, 3, 4])
    assert [draw([r])[0] for r in range(5)] == together
    assert draw([4, 2, 0]) == [together[4], together[2], together[0]]


def test_generation_stops_at_eos_and_at_each_requests_own_budget(policy: Any) -> None:
    free = generate_batch(policy, PROMPTS[:1], [SamplingSpec(max_tokens=8, temperature=0.0)], {EOS}, PAD)[0]
    stop_token = free.token_ids[2]
    first_stop = free.token_ids.index(stop_token)
    stopped = generate_batch(policy, PROMPTS[:1], [SamplingSpec(max_tokens=8, temperature=0.0)], {stop_token}, PAD)[0]
    assert stopped.token_ids == free.token_ids[: first_stop + 1]
    assert stopped.finish_reason == "stop"
    ignored = SamplingSpec(max_tokens=8, temperature=0.0, ignore_eos=True)
    assert generate_batch(policy, PROMPTS[:1], [ignored], {stop_token}, PAD)[0].token_ids == free.token_ids

    budgets = [SamplingSpec(max_tokens=n, temperature=1.0, ignore_eos=True) for n in (1, 4, 2, 7)]
    results = generate_batch(policy, PROMPTS, budgets, {EOS}, PAD)
    assert [len(r.token_ids) for r in results] == [1, 4, 2, 7]
    assert all(r.finish_reason == "length" for r in results)


def test_sampling_params_from_verl_are_honoured_or_rejected_by_name() -> None:
    spec = sampling_spec_from_params(
        {"temperature": 1.2, "top_p": 0.9, "top_k": 20, "max_tokens": 7, "logprobs": True, "repetition_penalty": 1.0},
        default_max_tokens=64,
    )
    assert spec == SamplingSpec(max_tokens=7, temperature=1.2, top_p=0.9, top_k=20)
    assert sampling_spec_from_params({"temperature": 0}, default_max_tokens=64).max_tokens == 64
    with pytest.raises(ValueError, match="presence_penalty"):
        sampling_spec_from_params({"presence_penalty": 0.5}, default_max_tokens=64)
    with pytest.raises(ValueError, match="repetition_penalty"):
        sampling_spec_from_params({"repetition_penalty": 1.1}, default_max_tokens=64)


# ------------------------------------------------------------------------------------------------ the server


def _server(tiny_model_dir: Path, policy: Any | None = None, **rollout: Any) -> Any:
    from verl.workers.config import HFModelConfig, RolloutConfig

    from verl_cpu.rollout import CPURolloutServer

    config = RolloutConfig(
        name="cpu", tensor_model_parallel_size=1, prompt_length=64, response_length=16, load_format="auto", **rollout
    )
    return CPURolloutServer(config, HFModelConfig(path=str(tiny_model_dir)), model=policy)


def test_concurrent_requests_are_decoded_together_with_their_own_parameters(tiny_model_dir: Path, policy: Any) -> None:
    server = _server(tiny_model_dir, policy)
    temperatures = [0.0, 0.5, 1.0, 1.5] * 4

    async def burst() -> list[Any]:
        return await asyncio.gather(
            *[
                server.generate(
                    prompt_ids=PROMPTS[i % 4],
                    sampling_params={"temperature": t, "max_tokens": 3 + i % 5, "logprobs": i % 2 == 0},
                    request_id=f"r{i}",
                )
                for i, t in enumerate(temperatures)
            ]
        )

    outputs = asyncio.run(burst())
    assert server.batch_sizes == [16]
    for i, (temperature, output) in enumerate(zip(temperatures, outputs)):
        assert output.stop_reason == "completed"
        assert len(output.token_ids) <= 3 + i % 5
        if i % 2:
            assert output.log_probs is None
        else:
            expected = _forward_log_probs(policy, PROMPTS[i % 4], output.token_ids, temperature or 1.0)
            torch.testing.assert_close(torch.tensor(output.log_probs), expected, atol=1e-4, rtol=0)


def _seeded_burst(server: Any, requests: list[tuple[list[int], dict[str, Any]]], order: list[int]) -> list[list[int]]:
    """Send ``requests`` concurrently in ``order``; return each request's tokens, in the requests' own order."""

    async def burst() -> list[Any]:
        return await asyncio.gather(
            *[
                server.generate(prompt_ids=requests[i][0], sampling_params=requests[i][1], request_id=f"r{i}")
                for i in order
            ]
        )

    by_request = dict(zip(order, asyncio.run(burst())))
    return [by_request[i].token_ids for i in range(len(requests))]


def test_a_requests_response_depends_on_its_stream_not_on_arrival_order_batching_or_server(
    tiny_model_dir: Path, policy: Any
) -> None:
    base = {"temperature": 1.0, "max_tokens": 8, "ignore_eos": True}
    # Four prompts, four requests each (a group of n = 4): streams named as the ACPO agent loop names them.
    requests = [(PROMPTS[i % 4], {**base, SAMPLE_STREAM_KEY: f"train:1:0:{i // 4}"}) for i in range(16)]
    one_burst = _server(tiny_model_dir, policy)
    reference = _seeded_burst(one_burst, requests, list(range(16)))
    assert one_burst.batch_sizes == [16]
    # Another server (another replica), requests arriving in reverse order and decoded three at a time.
    small_batches = _server(tiny_model_dir, policy, max_num_seqs=3)
    assert _seeded_burst(small_batches, requests, list(range(15, -1, -1))) == reference
    assert len(small_batches.batch_sizes) == 6
    # The group of a prompt is n different responses; another run seed gives other responses.
    assert len({tuple(reference[i]) for i in range(0, 16, 4)}) == 4
    other_seed = _server(tiny_model_dir, policy, seed=1)
    assert _seeded_burst(other_seed, requests, list(range(16))) != reference

    # A request's own seed wins over the stream: same seed, same tokens, whatever the stream or the run seed.
    seeded = [(PROMPTS[0], {**base, "seed": 1234, SAMPLE_STREAM_KEY: f"s{i}"}) for i in range(2)]
    assert (
        len({tuple(t) for t in _seeded_burst(other_seed, seeded, [0, 1]) + _seeded_burst(one_burst, seeded, [1, 0])})
        == 1
    )
    with pytest.raises(ValueError, match="seed must be an integer"):
        asyncio.run(one_burst.generate(prompt_ids=[1, 2], sampling_params={**base, "seed": 0.5}, request_id="bad"))
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.rollout\.seed must be an integer"):
        _server(tiny_model_dir, policy, seed="7")

    # Without a named stream, identical prompts take ranks in arrival order, counted per step: a fresh server at the
    # same step repeats the group (as a whole), the next step draws a new one.
    unnamed = [(PROMPTS[1], dict(base)) for _ in range(3)]
    fresh = [_server(tiny_model_dir, policy) for _ in range(2)]
    groups = [_seeded_burst(server, unnamed, [0, 1, 2]) for server in fresh]
    assert groups[0] == groups[1] and len({tuple(t) for t in groups[0]}) == 3
    asyncio.run(fresh[0].set_global_steps(2))
    assert _seeded_burst(fresh[0], unnamed, [0, 1, 2]) != groups[0]


def _staggered_burst(server: Any, requests: list[tuple[list[int], dict[str, Any]]], order: list[int]) -> list[Any]:
    """Send ``requests`` in ``order``, 15 ms apart (longer than the server's 5 ms gathering window for unnamed
    requests); return each request's output, in the requests' own order."""

    async def one(rank: int, i: int) -> Any:
        await asyncio.sleep(0.015 * rank)
        return await server.generate(prompt_ids=requests[i][0], sampling_params=requests[i][1], request_id=f"r{i}")

    async def burst() -> list[Any]:
        return await asyncio.gather(*[one(rank, i) for rank, i in enumerate(order)])

    by_request = dict(zip(order, asyncio.run(burst())))
    return [by_request[i] for i in range(len(requests))]


def test_a_named_burst_is_decoded_whole_in_a_fixed_order_whatever_the_arrival(
    tiny_model_dir: Path, policy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    base = {"temperature": 1.0, "max_tokens": 6, "ignore_eos": True, "logprobs": True}
    streams = [(PROMPTS[i % 4], {**base, SAMPLE_STREAM_KEY: f"train:1:0:{i // 4}"}) for i in range(8)]
    named = [
        (prompt, {**params, SAMPLE_BURST_KEY: "train:1:0", SAMPLE_BURST_SIZE_KEY: 8}) for prompt, params in streams
    ]
    orders = [list(range(8)), [5, 2, 7, 0, 3, 6, 1, 4]]

    # Unnamed, the staggered requests are decoded in several batches, as they arrive.
    unnamed_server = _server(tiny_model_dir, policy)
    _staggered_burst(unnamed_server, streams, orders[0])
    assert len(unnamed_server.batch_sizes) > 1

    # Named, the server waits for the whole burst: one batch, the same tokens and bit-identical log-probs in any order.
    outputs = []
    for order in orders:
        server = _server(tiny_model_dir, policy)
        outputs.append(_staggered_burst(server, named, order))
        assert server.batch_sizes == [8]
    assert [o.token_ids for o in outputs[0]] == [o.token_ids for o in outputs[1]]
    assert [o.log_probs for o in outputs[0]] == [o.log_probs for o in outputs[1]]
    # A burst larger than max_num_seqs is cut the same way whatever the order: 3 + 3 + 2, bit-identical again.
    small = []
    for order in orders:
        server = _server(tiny_model_dir, policy, max_num_seqs=3)
        small.append(_staggered_burst(server, named, order))
        assert server.batch_sizes == [3, 3, 2]
    assert [o.log_probs for o in small[0]] == [o.log_probs for o in small[1]]
    assert [o.token_ids for o in small[0]] == [o.token_ids for o in outputs[0]]

    # burst_wait_ms = 0 turns it off: the named requests are batched as they arrive.
    eager = _server(tiny_model_dir, policy, engine_kwargs={"cpu": {"burst_wait_ms": 0}})
    _staggered_burst(eager, named, orders[0])
    assert len(eager.batch_sizes) > 1

    # A burst whose requests do not all come is decoded after burst_wait_ms, with a warning naming it.
    patient = _server(tiny_model_dir, policy, engine_kwargs={"cpu": {"burst_wait_ms": 100}})
    with caplog.at_level("WARNING", logger="verl_cpu.rollout"):
        partial = _staggered_burst(patient, named[:3], [0, 1, 2])
    assert patient.batch_sizes == [3] and all(o.stop_reason == "completed" for o in partial)
    assert "burst train:1:0: 3 of its 8 requests" in caplog.text

    # Bad burst parameters are refused, naming the key.
    for params in ({SAMPLE_BURST_KEY: "b", SAMPLE_BURST_SIZE_KEY: 0}, {SAMPLE_BURST_KEY: "b"}):
        with pytest.raises(ValueError, match=SAMPLE_BURST_SIZE_KEY):
            asyncio.run(patient.generate(prompt_ids=[1, 2], sampling_params={**base, **params}, request_id="bad"))
    with pytest.raises(ValueError, match=r"unknown key\(s\) under actor_rollout_ref\.rollout\.engine_kwargs\.cpu"):
        _server(tiny_model_dir, policy, engine_kwargs={"cpu": {"burst_wait": 1}})


def test_weight_updates_replace_the_served_policy_and_reject_foreign_weights(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    server = _server(tiny_model_dir)
    updated = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    with torch.no_grad():
        for parameter in updated.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    # The trainer sends its full state dict: the tied LM head comes under its own name as well.
    asyncio.run(server.load_weights(dict(updated.state_dict()), global_steps=7))

    params = {"temperature": 1.0, "max_tokens": 6, "logprobs": True, "ignore_eos": True}
    output = asyncio.run(server.generate(prompt_ids=PROMPTS[0], sampling_params=params, request_id="after"))
    expected = _forward_log_probs(updated.eval(), PROMPTS[0], output.token_ids, 1.0)
    torch.testing.assert_close(torch.tensor(output.log_probs), expected, atol=1e-4, rtol=0)
    assert output.extra_fields["global_steps"] == 7
    assert server.weight_updates == 1

    with pytest.raises(KeyError, match="does not have"):
        asyncio.run(server.load_weights({"not.a.weight": torch.zeros(1)}))
    partial = {k: v for k, v in updated.state_dict().items() if "layers.1." not in k}
    with pytest.raises(KeyError, match="unset"):
        asyncio.run(server.load_weights(partial))


def test_a_server_started_from_dummy_weights_refuses_to_generate(tiny_model_dir: Path) -> None:
    from verl.workers.config import HFModelConfig, RolloutConfig

    from verl_cpu.rollout import CPURolloutServer

    config = RolloutConfig(name="cpu", tensor_model_parallel_size=1, prompt_length=64, response_length=16)
    server = CPURolloutServer(config, HFModelConfig(path=str(tiny_model_dir)))
    with pytest.raises(RuntimeError, match="no weights yet"):
        asyncio.run(server.generate(prompt_ids=[1, 2], sampling_params={}, request_id="early"))


# ------------------------------------------------------------------------------------------------ the plugin

_PLUGIN_PROBE = textwrap.dedent(
    """
    import torch.distributed as dist
    import verl
    from verl.utils.device import get_device_name, get_torch_device
    from verl.workers.engine import EngineRegistry
    from verl.workers.rollout.base import get_rollout_class
    from verl.workers.rollout.replica import get_rollout_replica_class
    from verl.utils.distributed import initialize_global_process_group_ray

    assert get_device_name() == "cpu"
    assert get_torch_device().current_device() == "cpu"
    print(EngineRegistry.get_engine_cls("language_model", "fsdp2").__name__)
    print(get_rollout_class("cpu").__name__)
    print(get_rollout_replica_class("cpu").__name__)
    initialize_global_process_group_ray()
    print(dist.get_backend())
    dist.destroy_process_group()
    """
)


@pytest.mark.e2e  # starts verl, a fresh interpreter or a training run: slow on 2 cores
def test_verl_loads_the_cpu_plugin_through_its_external_module_hook() -> None:
    env = {
        **os.environ,
        "VERL_USE_EXTERNAL_MODULES": "verl_cpu",
        "VERL_PLATFORM": "cpu",
        "PYTHONPATH": str(REPO_ROOT),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29531",
        "RANK": "0",
        "WORLD_SIZE": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", _PLUGIN_PROBE], env=env, cwd="/", capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["FSDPEngineWithLMHead", "CPUServerAdapter", "CPURolloutReplica", "gloo"]
