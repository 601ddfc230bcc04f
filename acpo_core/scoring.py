"""Spec §3 scoring: the answer log-likelihoods L_0..L_K of every response under a Hugging Face causal LM.

Two ways, equal to 1e-4 in fp32:

- :func:`score_answer_loglik` (production, "packed"): one forward per micro-batch over the packed sequences of
  :mod:`acpo_core.packing`, with a custom attention mask and ``logits_to_keep`` restricted to the columns that
  predict answer tokens.
- :func:`score_answer_loglik_naive` (the reference): K+1 plain forward passes ``[q, o_{<c_i}, Y]`` per response
  (:func:`acpo_core.attribution.naive_sequences`), with the model's own causal mask and position ids.

Log-probabilities are those of ``logits / temperature`` (what verl's old-log-prob pass computes), in float32. The
model's ``forward`` must accept ``position_ids``, ``logits_to_keep`` and, for the packed path, a 4D attention mask
(used as-is by ``transformers.masking_utils``): attention implementations ``sdpa`` and ``eager``. Nothing here
changes the model's train/eval mode: callers disable dropout as for any log-prob pass.
"""

from __future__ import annotations

from typing import Any

import torch

from acpo_core.attribution import AttributionBatch, check_attribution_batch, naive_sequences
from acpo_core.checks import fail_rows
from acpo_core.packing import pack_rows

__all__ = ["SUPPORTED_ATTENTION", "score_answer_loglik", "score_answer_loglik_naive"]

SUPPORTED_ATTENTION = ("sdpa", "eager")


def _attention_implementation(model: Any) -> str:
    implementation = getattr(model.config, "_attn_implementation", None)
    if implementation not in SUPPORTED_ATTENTION:
        raise ValueError(
            f"packed attribution needs a custom 4D attention mask, which attention implementation "
            f"{implementation!r} does not take: load the model with attn_implementation='sdpa' or 'eager'"
        )
    return implementation


def _check_scoring_args(model: Any, batch: AttributionBatch, micro_batch_size: int, temperature: float) -> None:
    if not isinstance(micro_batch_size, int) or isinstance(micro_batch_size, bool) or micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be a positive integer, got {micro_batch_size!r}")
    if not (isinstance(temperature, int | float) and temperature > 0 and temperature != float("inf")):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    embeddings = model.get_input_embeddings()
    vocab = getattr(embeddings, "num_embeddings", None)
    if vocab is not None:
        for name in ("prompt_ids", "response_ids", "answer_ids"):
            tensor = getattr(batch, name)
            fail_rows((tensor >= vocab).any(dim=1), f"{name} holds a token id >= the model's vocabulary ({vocab})")


def _answer_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / temperature)[target] in float32. logits [M, V], targets [M] -> [M]."""
    scaled = logits.float() / temperature
    return scaled.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(scaled, dim=1)


@torch.no_grad()
def score_answer_loglik(
    model: Any, batch: AttributionBatch, micro_batch_size: int, temperature: float = 1.0
) -> torch.Tensor:
    """Spec §3, packed (production) path: L_i = sum_y log pi(y | q, o_{<c_i}, Y_{<y}) for every response and i = 0..K.

    Responses are sorted by packed length and scored ``micro_batch_size`` at a time, each micro-batch trimmed to its
    own longest row; one forward per micro-batch with the 4D mask of :func:`acpo_core.packing.build_packed_inputs`
    and ``logits_to_keep`` restricted to the columns that predict answer tokens. No gradient.

    Args:
        model: a Hugging Face causal LM (attention ``sdpa`` or ``eager``), on the inputs' device.
        batch: :class:`acpo_core.attribution.AttributionBatch` of B responses.
        micro_batch_size: responses per forward pass.
        temperature: log-probs are those of ``logits / temperature`` (verl's old-log-prob convention).
    Returns:
        L: [B, Kmax+1] float32; 0 beyond K_b.
    Raises:
        ValueError: see :func:`acpo_core.attribution.check_attribution_batch`; also a token id outside the model's
        vocabulary, an attention implementation that takes no 4D mask, a bad micro-batch size or temperature.
    """
    lengths = check_attribution_batch(batch)
    _check_scoring_args(model, batch, micro_batch_size, temperature)
    implementation = _attention_implementation(model)
    device = batch.prompt_ids.device
    batch_size = len(batch)
    scores = torch.zeros(batch_size, batch.boundaries.shape[1], dtype=torch.float32, device=device)
    # Similar lengths share a micro-batch, so trimming to the longest row wastes little.
    packed_len = lengths.prompt + lengths.response + (lengths.num_steps + 1) * lengths.answer
    order = torch.argsort(packed_len, descending=True, stable=True)
    for start in range(0, batch_size, micro_batch_size):
        rows = order[start : start + micro_batch_size]
        packed = pack_rows(batch.select(rows), lengths.select(rows), pad_token_id=0)
        if implementation == "eager":
            # eager attention adds the mask to the scores; sdpa takes the boolean mask directly.
            dtype = model.dtype
            mask = torch.zeros(packed.attention_mask.shape, dtype=dtype, device=device)
            mask = mask.masked_fill(~packed.attention_mask, torch.finfo(dtype).min)
        else:
            mask = packed.attention_mask
        logits = model(
            input_ids=packed.input_ids,
            attention_mask=mask,
            position_ids=packed.position_ids,
            logits_to_keep=packed.logit_columns,
            use_cache=False,
        ).logits  # [n, U, V]
        row, copy, offset = packed.target_mask.nonzero(as_tuple=True)
        kept = torch.searchsorted(packed.logit_columns, packed.predictor_columns[row, copy, offset])
        logprobs = _answer_logprobs(logits[row, kept], packed.target_ids[row, offset], temperature)
        micro_scores = torch.zeros(rows.numel(), packed.target_mask.shape[1], dtype=torch.float32, device=device)
        micro_scores.index_put_((row, copy), logprobs, accumulate=True)
        scores[rows, : micro_scores.shape[1]] = micro_scores
    return scores


@torch.no_grad()
def score_answer_loglik_naive(
    model: Any, batch: AttributionBatch, micro_batch_size: int, temperature: float = 1.0
) -> torch.Tensor:
    """Spec §3, the reference: K_b + 1 separate plain forward passes ``[q, o_{<c_i}, Y]`` per response.

    The sequences (:func:`acpo_core.attribution.naive_sequences`) are right-padded in micro-batches of
    ``micro_batch_size`` and run with the model's own causal mask (a 2D padding mask) and default position ids. Same
    arguments, returns and errors as :func:`score_answer_loglik` (attention implementation: any). No gradient.

    Returns:
        L: [B, Kmax+1] float32; 0 beyond K_b.
    """
    lengths = check_attribution_batch(batch)
    _check_scoring_args(model, batch, micro_batch_size, temperature)
    device = batch.prompt_ids.device
    scores = torch.zeros(len(batch), batch.boundaries.shape[1], dtype=torch.float32, device=device)
    jobs = naive_sequences(batch, lengths)
    for start in range(0, len(jobs), micro_batch_size):
        chunk = jobs[start : start + micro_batch_size]
        width = max(sequence.numel() for _, _, sequence, _ in chunk)
        input_ids = torch.zeros(len(chunk), width, dtype=torch.long, device=device)
        attention_mask = torch.zeros(len(chunk), width, dtype=torch.long, device=device)
        for n, (_, _, sequence, _) in enumerate(chunk):
            input_ids[n, : sequence.numel()] = sequence
            attention_mask[n, : sequence.numel()] = 1
        # The logits at column p predict the token at p + 1: answer tokens are predicted from context_len - 1 on.
        wanted = [
            (n, context_len - 1 + j, int(sequence[context_len + j]))
            for n, (_, _, sequence, context_len) in enumerate(chunk)
            for j in range(sequence.numel() - context_len)
        ]
        columns = torch.tensor(sorted({column for _, column, _ in wanted}), dtype=torch.long, device=device)
        logits = model(
            input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=columns, use_cache=False
        ).logits
        row = torch.tensor([n for n, _, _ in wanted], device=device)
        kept = torch.searchsorted(columns, torch.tensor([c for _, c, _ in wanted], device=device))
        targets = torch.tensor([y for _, _, y in wanted], device=device)
        logprobs = _answer_logprobs(logits[row, kept], targets, temperature)
        for n, (b, i, _, _) in enumerate(chunk):
            scores[b, i] = logprobs[row == n].sum()
    return scores
