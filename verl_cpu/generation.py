"""Batched token-in/token-out generation for a Hugging Face causal LM on the CPU, with per-request sampling.

This is the compute core of the CPU rollout (``verl_cpu.rollout``); it knows nothing about Ray or verl.
Requests that are pending together are decoded together: prompts are left-padded into one batch, decoding
shares one KV cache, and rows that finish (eos or their own token budget) are dropped from the batch.

Each request carries its own temperature, top-k, top-p and token budget. The log-prob returned for a token is the
one of the distribution it was sampled from (vLLM's ``processed_logprobs``): ``log_softmax(logits / T)``
restricted to the top-k / top-p set and renormalised; for greedy requests (``T == 0``) ``log_softmax(logits)``.
With top-k and top-p off this is exactly what verl's actor computes for the same tokens at temperature ``T``.

Seeded sampling: each request may bring its own ``torch.Generator`` (``generate_batch``'s ``generator``, one per
prompt), from which it draws exactly one uniform number per sampled token, whatever else is in the batch. A
request's tokens then depend only on its own stream, its prompt and the weights: not on which requests it was batched
with, in which order they arrived, or how many servers share the work. :func:`request_seed` derives the stream's
seed (the server calls it).

What is and is not reproducible: with the same seed, weights, torch version, machine type and thread count, a
request's response is the same token for token. Batching changes the left padding and the batch shape, which may
change the logits in their last bits (float sums in another order); a token can flip only when its uniform draw lands
within that rounding of a boundary of the cumulative distribution, which is rare but not impossible. The returned
log-probs carry those last-bit differences (about 1e-9), and so does whatever uses them (verl's rollout-vs-trainer
diagnostics, the importance weights of a rollout correction). So the server (``verl_cpu.rollout``) can take batching
out of the picture: requests that name their burst (``SAMPLE_BURST_KEY``, ``SAMPLE_BURST_SIZE_KEY``) are decoded a
whole burst at a time in a fixed order, and then even the log-probs are the same bits in every run. Across torch
versions, CPU types (vector instructions) or thread counts the logits may differ in the same way, so runs agree
closely but are not guaranteed to be identical.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

# Sampling-params key naming the random stream of a request (a string, e.g. ``"train:3:0:5"``): the server seeds the
# request with ``request_seed(run_seed, stream, prompt_ids)``. Set by the caller that knows the request's identity
# (the ACPO agent loop: pass, step, duplicate rank and session); an explicit ``seed`` wins over it.
SAMPLE_STREAM_KEY = "sample_stream"
# Sampling-params keys naming the burst a request belongs to (a string, e.g. ``"train:3:0"``: the requests one
# submission sends) and how many requests that burst sends this server (a positive integer). The server then decodes
# the whole burst together, in an order of its own (``verl_cpu.rollout``), so the batches, and with them the last bits
# of every logit, do not depend on when each request arrived. Set by the caller that knows the burst (the ACPO agent
# loop, when the server is the only one).
SAMPLE_BURST_KEY = "sample_burst"
SAMPLE_BURST_SIZE_KEY = "sample_burst_size"

# Keys of verl's per-request ``sampling_params`` dict that this backend honours or may safely ignore.
SUPPORTED_SAMPLING_KEYS = frozenset(
    {
        "temperature",
        "top_p",
        "top_k",
        "max_tokens",
        "max_new_tokens",
        "ignore_eos",
        "logprobs",
        "repetition_penalty",
        "seed",
        SAMPLE_STREAM_KEY,
        SAMPLE_BURST_KEY,
        SAMPLE_BURST_SIZE_KEY,
    }
)

# torch.Generator.manual_seed takes seeds below 2**64; keep derived seeds in the signed 64-bit range as well.
_SEED_BITS = 63


def request_seed(run_seed: int, stream: str, prompt_ids: Sequence[int]) -> int:
    """The seed of one request's random stream: a hash of the run's seed, the stream's name and the prompt's tokens.

    ``seed = int.from_bytes(blake2b(f"{run_seed}\\0{stream}\\0".encode() + int64_le(prompt_ids), digest_size=8),
    "little") >> 1`` (63 bits).
    The hash is computed in pure Python (no torch or numpy), so the same inputs give the same seed on every machine
    and version. The stream names the pass (training step or validation pass) and the request's rank among the
    identical prompts of that pass; with the prompt's tokens in the hash, different prompts get unrelated streams.
    """
    if isinstance(run_seed, bool) or not isinstance(run_seed, int):
        raise TypeError(f"the run's seed must be an integer, got {run_seed!r}")
    digest = hashlib.blake2b(f"{run_seed}\0{stream}\0".encode(), digest_size=8)
    digest.update(struct.pack(f"<{len(prompt_ids)}q", *prompt_ids))
    return int.from_bytes(digest.digest(), "little") >> (64 - _SEED_BITS)


def explicit_seed(params: dict) -> int | None:
    """The request's own ``seed`` sampling parameter (vLLM's per-request seed), or None; a non-integer raises."""
    seed = params.get("seed")
    if seed is None:
        return None
    if isinstance(seed, bool) or not (isinstance(seed, int) or (isinstance(seed, float) and seed.is_integer())):
        raise ValueError(f"sampling parameter seed must be an integer, got {seed!r}")
    return int(seed) % (1 << 64)


@dataclass(frozen=True)
class SamplingSpec:
    """Sampling parameters of one request. ``temperature == 0`` means greedy; ``top_k <= 0`` disables top-k."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int):
            raise ValueError(f"top_k must be an integer (-1 or 0 to disable), got {self.top_k!r}")


@dataclass(frozen=True)
class GenerationResult:
    """Generated token ids, the log-prob of each under its sampling distribution, and why generation stopped."""

    token_ids: list[int]
    log_probs: list[float]
    finish_reason: str  # "stop" (an eos token was generated, and kept) or "length" (the token budget ran out)


def sampling_spec_from_params(params: dict, default_max_tokens: int) -> SamplingSpec:
    """Build a ``SamplingSpec`` from verl's per-request ``sampling_params`` dict (the vLLM/SGLang key names).

    Unknown keys and a repetition penalty other than 1 raise ``ValueError``: silently ignoring a sampling
    parameter would make the rollout differ from what the caller asked for.
    """
    unknown = sorted(set(params) - SUPPORTED_SAMPLING_KEYS)
    if unknown:
        raise ValueError(
            f"the CPU rollout does not support sampling parameter(s) {unknown}; "
            f"supported: {sorted(SUPPORTED_SAMPLING_KEYS)}"
        )
    repetition_penalty = params.get("repetition_penalty", 1.0)
    if repetition_penalty is not None and float(repetition_penalty) != 1.0:
        raise ValueError(f"the CPU rollout supports repetition_penalty=1.0 only, got {repetition_penalty!r}")
    max_tokens = params.get("max_tokens", params.get("max_new_tokens"))
    top_k = params.get("top_k", -1)
    return SamplingSpec(
        max_tokens=int(default_max_tokens if max_tokens is None else max_tokens),
        temperature=float(params.get("temperature", 1.0)),
        top_p=float(params.get("top_p", 1.0)),
        top_k=-1 if top_k is None else int(top_k),
        ignore_eos=bool(params.get("ignore_eos", False)),
    )


def sample_next_tokens(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row with that row's own temperature, top-k and top-p.

    Args:
        logits: ``[batch, vocab]`` next-token logits (any float dtype; computed in fp32).
        temperature: ``[batch]``; ``0`` selects greedy decoding for that row.
        top_k: ``[batch]`` long; ``<= 0`` or ``>= vocab`` disables top-k for that row.
        top_p: ``[batch]``; ``1.0`` disables nucleus truncation for that row.
        generator: the random generator to sample with (reproducible runs): one shared by all rows, or one per row
            (each sampled row then draws one number from its own; greedy rows draw nothing).

    Returns:
        ``(tokens [batch] long, log_probs [batch] fp32)``: the log-prob of each token under the distribution it
        was drawn from (tempered, truncated, renormalised; raw ``log_softmax`` for greedy rows).
    """
    logits = logits.float()
    batch, vocab = logits.shape
    greedy = temperature <= 0
    scaled = logits / torch.where(greedy, torch.ones_like(temperature), temperature).unsqueeze(-1)

    sampled_rows = ~greedy
    use_top_k = sampled_rows & (top_k > 0) & (top_k < vocab)
    if bool(use_top_k.any()):
        k_max = int(top_k[use_top_k].max())
        kth_values = torch.topk(scaled, k_max, dim=-1).values
        k_index = (top_k.clamp(min=1, max=k_max) - 1).unsqueeze(-1)
        threshold = kth_values.gather(-1, k_index)
        scaled = torch.where(use_top_k.unsqueeze(-1) & (scaled < threshold), float("-inf"), scaled)

    use_top_p = sampled_rows & (top_p < 1.0)
    if bool(use_top_p.any()):
        sorted_logits, sorted_index = torch.sort(scaled, dim=-1, descending=True)
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        # A token is kept while the mass of the tokens ranked above it is below top_p: the first always is.
        drop_sorted = (mass_before >= top_p.unsqueeze(-1)) & use_top_p.unsqueeze(-1)
        drop = torch.zeros_like(drop_sorted).scatter(-1, sorted_index, drop_sorted)
        scaled = scaled.masked_fill(drop, float("-inf"))

    log_probs = torch.log_softmax(scaled, dim=-1)
    tokens = torch.empty(batch, dtype=torch.long, device=logits.device)
    # argmax and sampling each touch the whole vocabulary: run each on the rows that need it only.
    if bool(greedy.any()):
        tokens[greedy] = torch.argmax(logits[greedy], dim=-1)
    if bool(sampled_rows.any()):
        uniform = _uniforms(sampled_rows, generator, device=logits.device)
        tokens[sampled_rows] = _inverse_cdf_sample(log_probs[sampled_rows].exp(), uniform)
    token_log_probs = log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return tokens, token_log_probs


def _uniforms(
    rows: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator] | None, device: torch.device
) -> torch.Tensor:
    """``[rows.sum(), 1]`` uniform numbers in ``[0, 1)`` for the selected rows, from a shared or a per-row generator."""
    count = int(rows.sum())
    if generator is None or isinstance(generator, torch.Generator):
        return torch.rand((count, 1), generator=generator, device=device)
    if len(generator) != rows.shape[0]:
        raise ValueError(f"got {len(generator)} generators for {rows.shape[0]} rows")
    chosen = [generator[i] for i in rows.nonzero().squeeze(-1).tolist()]
    return torch.cat([torch.rand((1, 1), generator=g, device=device) for g in chosen])


def _inverse_cdf_sample(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One index per row of ``probs [rows, vocab]`` by inverting the cumulative distribution at ``uniform [rows, 1]``.

    Several times faster than ``torch.multinomial`` on a 150k vocabulary on the CPU. ``u = 1 - uniform`` lies in
    ``(0, 1]``, so the first index whose cumulative mass reaches ``u * total`` always has a positive probability.
    """
    cumulative = probs.cumsum(dim=-1)
    targets = (1.0 - uniform) * cumulative[:, -1:]
    return torch.searchsorted(cumulative, targets).squeeze(-1).clamp(max=probs.shape[-1] - 1)


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids [batch, max_len], attention_mask [batch, max_len])`` with every prompt right-aligned."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt must contain at least one token")
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
        attention_mask[row, width - len(prompt) :] = 1
    return input_ids, attention_mask


@torch.inference_mode()
def generate_batch(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    specs: Sequence[SamplingSpec],
    eos_token_ids: Collection[int],
    pad_token_id: int,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> list[GenerationResult]:
    """Generate continuations of all ``prompts`` together, each with its own ``SamplingSpec``.

    Prompts are left-padded into one batch; position ids count real tokens only, so a row's tokens see exactly
    what they would see alone. Rows leave the batch (and the KV cache) as soon as they finish.

    Args:
        model: a Hugging Face causal LM (``forward(input_ids, attention_mask, position_ids, past_key_values,
            use_cache, logits_to_keep)``), in eval mode.
        prompts: ``batch`` lists of prompt token ids.
        specs: one ``SamplingSpec`` per prompt.
        eos_token_ids: tokens that end a response (kept in the output) unless the spec says ``ignore_eos``.
        pad_token_id: the token used for left padding (masked out, never attended to).
        generator: random generator for the sampled rows: one shared by the batch, or one per prompt (seeded
            sampling: a prompt's tokens then do not depend on the rest of the batch).

    Returns:
        One ``GenerationResult`` per prompt, in the input order.
    """
    if len(prompts) != len(specs):
        raise ValueError(f"got {len(prompts)} prompts but {len(specs)} sampling specs")
    if not prompts:
        return []
    per_row = generator is not None and not isinstance(generator, torch.Generator)
    if per_row and len(generator) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(generator)} generators")
    device = next(model.parameters()).device
    batch = len(prompts)
    input_ids, attention_mask = left_pad(prompts, pad_token_id)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)

    temperature = torch.tensor([s.temperature for s in specs], dtype=torch.float32, device=device)
    top_k = torch.tensor([s.top_k for s in specs], dtype=torch.long, device=device)
    top_p = torch.tensor([s.top_p for s in specs], dtype=torch.float32, device=device)
    max_tokens = torch.tensor([s.max_tokens for s in specs], dtype=torch.long, device=device)
    stops_at_eos = torch.tensor([not s.ignore_eos for s in specs], dtype=torch.bool, device=device)
    eos = torch.tensor(sorted(set(eos_token_ids)), dtype=torch.long, device=device)

    tokens_out = torch.zeros((batch, int(max_tokens.max())), dtype=torch.long)
    log_probs_out = torch.zeros((batch, int(max_tokens.max())), dtype=torch.float32)
    lengths = torch.zeros(batch, dtype=torch.long)
    hit_eos = torch.zeros(batch, dtype=torch.bool)

    active = torch.arange(batch, device=device)  # original row index of each row still in the batch
    outputs = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        logits_to_keep=1,
    )
    cache = outputs.past_key_values
    next_position = position_ids[:, -1:] + 1
    step = 0
    while True:
        rows = active.cpu()
        row_generator = [generator[i] for i in rows.tolist()] if per_row else generator
        tokens, token_log_probs = sample_next_tokens(
            outputs.logits[:, -1, :], temperature[active], top_k[active], top_p[active], row_generator
        )
        tokens_out[rows, step] = tokens.cpu()
        log_probs_out[rows, step] = token_log_probs.cpu()
        lengths[rows] = step + 1
        ended_by_eos = stops_at_eos[active] & torch.isin(tokens, eos)
        hit_eos[rows] = ended_by_eos.cpu()
        keep = ~ended_by_eos & (max_tokens[active] > step + 1)
        step += 1
        if not bool(keep.any()):
            break
        if not bool(keep.all()):
            kept = keep.nonzero().squeeze(-1)
            cache.batch_select_indices(kept)
            active, tokens = active[kept], tokens[kept]
            attention_mask, next_position = attention_mask[kept], next_position[kept]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((attention_mask.shape[0], 1))], dim=-1)
        outputs = model(
            input_ids=tokens.unsqueeze(-1),
            attention_mask=attention_mask,
            position_ids=next_position,
            past_key_values=cache,
            use_cache=True,
        )
        cache = outputs.past_key_values
        next_position = next_position + 1

    return [
        GenerationResult(
            token_ids=tokens_out[row, : lengths[row]].tolist(),
            log_probs=log_probs_out[row, : lengths[row]].tolist(),
            finish_reason="stop" if bool(hit_eos[row]) else "length",
        )
        for row in range(batch)
    ]
