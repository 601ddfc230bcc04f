"""Batched token-in/token-out generation for a Hugging Face causal LM on the CPU, with per-request sampling.

This is the compute core of the CPU rollout (``verl_cpu.rollout``); it knows nothing about Ray or verl.
Requests that are pending together are decoded together: prompts are left-padded into one batch, decoding
shares one KV cache, and rows that finish (eos or their own token budget) are dropped from the batch.

Each request carries its own temperature, top-k, top-p and token budget. The log-prob returned for a token is the
one of the distribution it was sampled from (vLLM's ``processed_logprobs``): ``log_softmax(logits / T)``
restricted to the top-k / top-p set and renormalised; for greedy requests (``T == 0``) ``log_softmax(logits)``.
With top-k and top-p off this is exactly what verl's actor computes for the same tokens at temperature ``T``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

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
    }
)


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
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row with that row's own temperature, top-k and top-p.

    Args:
        logits: ``[batch, vocab]`` next-token logits (any float dtype; computed in fp32).
        temperature: ``[batch]``; ``0`` selects greedy decoding for that row.
        top_k: ``[batch]`` long; ``<= 0`` or ``>= vocab`` disables top-k for that row.
        top_p: ``[batch]``; ``1.0`` disables nucleus truncation for that row.
        generator: the random generator to sample with (reproducible runs).

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
        tokens[sampled_rows] = _inverse_cdf_sample(log_probs[sampled_rows].exp(), generator)
    token_log_probs = log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return tokens, token_log_probs


def _inverse_cdf_sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row of ``probs [rows, vocab]`` by inverting the cumulative distribution.

    Several times faster than ``torch.multinomial`` on a 150k vocabulary on the CPU. ``u`` lies in ``(0, total]``,
    so the first index whose cumulative mass reaches it always has a positive probability.
    """
    cumulative = probs.cumsum(dim=-1)
    uniform = 1.0 - torch.rand((probs.shape[0], 1), generator=generator, device=probs.device)
    targets = uniform * cumulative[:, -1:]
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
    generator: torch.Generator | None = None,
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
        generator: random generator for the sampled rows.

    Returns:
        One ``GenerationResult`` per prompt, in the input order.
    """
    if len(prompts) != len(specs):
        raise ValueError(f"got {len(prompts)} prompts but {len(specs)} sampling specs")
    if not prompts:
        return []
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
        tokens, token_log_probs = sample_next_tokens(
            outputs.logits[:, -1, :], temperature[active], top_k[active], top_p[active], generator
        )
        rows = active.cpu()
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
