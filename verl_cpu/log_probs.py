"""Token log-probabilities for verl's FSDP engine on the ``cpu`` platform, vectorised in bounded chunks.

verl's engine turns logits into the log-probabilities of the sampled tokens with
``verl.utils.torch_functional.logprobs_from_logits``, which picks a kernel by platform: flash-attn's cross-entropy on
CUDA, torch_npu's on Ascend, and otherwise ``logprobs_from_logits_v2``. That fallback loops over the rows in Python
(one ``logsumexp`` per token) to keep a GPU's peak memory low. verl hands it the packed ``(total_tokens, vocab)``
logits, so on a CPU it runs one small kernel per token, and the backward pass one autograd node per token: for a
testbed step (128 responses, about 7,800 tokens) that is 7,800 Python iterations in each log-prob pass and 7,800
nodes in the update's backward.

:func:`token_log_probs` computes the same quantity, ``logits[label] - logsumexp(logits)``, over chunks of rows whose
size keeps the extra memory under ``chunk_elements`` floats (one chunk for the testbed's 349-token vocabulary, a few
hundred rows a chunk for a 150k vocabulary), so memory stays bounded the way the loop bounds it. The plugin installs
it as the FSDP engine's kernel on the ``cpu`` platform only (``verl_cpu._vectorise_log_probs``).
"""

from __future__ import annotations

import torch

# Extra floats one chunk may hold (64 MiB of float32): the softmax the backward pass builds has the chunk's size.
DEFAULT_CHUNK_ELEMENTS = 1 << 24


def token_log_probs(
    logits: torch.Tensor, labels: torch.Tensor, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
) -> torch.Tensor:
    """log softmax(logits)[label] for every position, computed chunk by chunk over the rows.

    Args:
        logits: ``(..., vocab)`` scores.
        labels: ``(...)`` token ids, one per row of ``logits``.
        chunk_elements: at most this many logits (``rows x vocab``) are reduced at once; at least one row.

    Returns:
        ``(...)`` log-probabilities in ``logits.dtype``. Low-precision logits (bfloat16, float16) are reduced in
        float32, where ``logsumexp`` is stable.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} need labels of shape {tuple(logits.shape[:-1])}")
    vocab = logits.shape[-1]
    if labels.numel() == 0:
        return logits.new_zeros(labels.shape)
    flat_logits = logits.reshape(-1, vocab)
    flat_labels = labels.reshape(-1, 1)
    rows = max(1, chunk_elements // max(vocab, 1))
    compute_dtype = logits.dtype if logits.dtype in (torch.float32, torch.float64) else torch.float32
    parts = []
    for chunk, chunk_labels in zip(flat_logits.split(rows), flat_labels.split(rows)):
        chunk = chunk.to(compute_dtype)
        parts.append(chunk.gather(-1, chunk_labels).squeeze(-1) - torch.logsumexp(chunk, dim=-1))
    return torch.cat(parts).to(logits.dtype).reshape(labels.shape)
