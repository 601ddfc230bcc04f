"""§3 packed layout: the K+1 answer copies of a response appended to one sequence ``[q, o, Y^(0..K)]``.

Copy Y^(i) sees q and o_{<c_i} and itself causally, nothing else, and its position ids continue from |q| + c_i, so
each copy is scored exactly as if it followed the truncated response (the naive reference,
:func:`acpo_core.attribution.naive_sequences`). Cost: |q| + T + (K+1)|Y| tokens per response.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from acpo_core.attribution import AttributionBatch, AttributionLengths, check_attribution_batch

__all__ = ["PackedAttributionInputs", "build_packed_inputs", "pack_rows"]


@dataclass(frozen=True)
class PackedAttributionInputs:
    """The packed sequences of §3 for N responses, and where to read the answer log-probs from.

    A row is ``[left padding, q, o_1..o_T, Y^(0), ..., Y^(K), right padding]``; every row's context ``[q, o]`` ends at
    the same column so that all copies of all rows lie in one contiguous tail.
    """

    input_ids: torch.Tensor  # [N, S] long; padding holds pad_token_id
    attention_mask: torch.Tensor  # [N, 1, S, S] bool, True where query S_q may attend to key S_k
    position_ids: torch.Tensor  # [N, S] long; 0 on padding
    predictor_columns: torch.Tensor  # [N, K1, A] long: column whose logits predict answer token j of copy i
    target_ids: torch.Tensor  # [N, A] long: Y, right-padded
    target_mask: torch.Tensor  # [N, K1, A] bool: (i <= K_n) and (j < |Y_n|)
    logit_columns: torch.Tensor  # [U] long, sorted: the union of the valid predictor columns (for logits_to_keep)
    num_real_tokens: int  # tokens that are not padding: sum_n |q| + T + (K+1)|Y|


def pack_rows(batch: AttributionBatch, lengths: AttributionLengths, pad_token_id: int) -> PackedAttributionInputs:
    """Build the packed sequences of already-checked rows, trimmed to these rows' own maximal lengths."""
    prompt_ids, response_ids, boundaries, answer_ids = (
        batch.prompt_ids,
        batch.response_ids,
        batch.boundaries,
        batch.answer_ids,
    )
    device = prompt_ids.device
    prompt_len, response_len, answer_len, steps = lengths.prompt, lengths.response, lengths.answer, lengths.num_steps
    width_p = int(prompt_len.max())
    width_t = int(response_len.max())
    width_a = int(answer_len.max())
    num_copies = int(steps.max()) + 1
    prompt = prompt_ids[:, prompt_ids.shape[1] - width_p :].long()
    response = response_ids[:, :width_t].long()
    answer = answer_ids[:, :width_a].long()
    cuts = boundaries[:, :num_copies].long()

    context_len = prompt_len + response_len  # [N]
    tail_len = (steps + 1) * answer_len  # [N]
    context_end = int(context_len.max())  # X: every row's context ends here, its copies start here
    width = context_end + int(tail_len.max())
    column = torch.arange(width, device=device)[None, :]  # [1, S]

    # Context columns: context index t counts from the row's first prompt token.
    t = column - (context_end - context_len)[:, None]  # [N, S]
    is_context = (column < context_end) & (t >= 0)
    in_prompt = t < prompt_len[:, None]
    joined = torch.cat([prompt, response], dim=1)  # [N, P' + T']: left-padded prompt then right-padded response
    source = torch.where(in_prompt, width_p - prompt_len[:, None] + t, width_p + t - prompt_len[:, None])
    context_tokens = joined.gather(1, source.clamp(0, joined.shape[1] - 1))

    # Tail columns: copy i of Y at offset j.
    r = column - context_end
    is_copy = (r >= 0) & (r < tail_len[:, None])
    copy = torch.where(is_copy, r // answer_len[:, None], 0)
    offset = torch.where(is_copy, r % answer_len[:, None], 0)
    cut = cuts.gather(1, copy)  # c_i of each copy column
    copy_tokens = answer.gather(1, offset)

    input_ids = torch.full_like(t, pad_token_id)
    input_ids = torch.where(is_context, context_tokens, input_ids)
    input_ids = torch.where(is_copy, copy_tokens, input_ids)
    position_ids = torch.where(is_context, t, 0)
    position_ids = torch.where(is_copy, prompt_len[:, None] + cut + offset, position_ids)

    # A query sees the context tokens with index < its visible count (t + 1 for context, |q| + c_i for copy i), the
    # earlier tokens of its own copy, and itself (so that padding rows are never fully masked).
    visible = torch.where(is_context, t + 1, 0)
    visible = torch.where(is_copy, prompt_len[:, None] + cut, visible)
    key_context_index = torch.where(is_context, t, width)  # width: never below any visible count
    group = torch.where(is_copy, copy, -1)  # -1: context and padding
    sees_context = key_context_index[:, None, :] < visible[:, :, None]
    same_copy = is_copy[:, :, None] & (group[:, :, None] == group[:, None, :])
    sees_copy = same_copy & (offset[:, None, :] <= offset[:, :, None])
    itself = torch.eye(width, dtype=torch.bool, device=device)[None]
    attention_mask = (sees_context | sees_copy | itself)[:, None]

    # Answer token j of copy i is predicted by the last visible context token (j = 0) or by copy token j - 1.
    i = torch.arange(num_copies, device=device)[None, :, None]
    j = torch.arange(width_a, device=device)[None, None, :]
    first = (context_end - context_len + prompt_len)[:, None, None] + cuts[:, :, None] - 1
    later = context_end + i * answer_len[:, None, None] + j - 1
    target_mask = (i <= steps[:, None, None]) & (j < answer_len[:, None, None])
    predictor_columns = torch.where(j == 0, first, later).masked_fill(~target_mask, 0)
    logit_columns = torch.unique(predictor_columns[target_mask])
    return PackedAttributionInputs(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        predictor_columns=predictor_columns,
        target_ids=answer,
        target_mask=target_mask,
        logit_columns=logit_columns,
        num_real_tokens=int((context_len + tail_len).sum()),
    )


def build_packed_inputs(batch: AttributionBatch, pad_token_id: int = 0) -> PackedAttributionInputs:
    """§3 packed layout: one sequence ``[q, o_1..o_T, Y^(0), ..., Y^(K)]`` per response.

    Copy Y^(i) attends to q, o_{<c_i} and causally to itself only; its position ids are |q| + c_i + j. Rows are
    trimmed to the batch's own longest prompt, response, answer and step count.

    Args:
        batch: :class:`acpo_core.attribution.AttributionBatch` of N responses.
        pad_token_id: token id written on padding (never attended to by a real token).
    Returns:
        :class:`PackedAttributionInputs` with input_ids [N, S], a boolean attention mask [N, 1, S, S] (True = may
        attend), position_ids [N, S], and the maps predictor_columns [N, K1, A], target_ids [N, A],
        target_mask [N, K1, A] (K1 = max K_n + 1) from which L is gathered.
    Raises:
        ValueError: see :func:`acpo_core.attribution.check_attribution_batch`.
    """
    return pack_rows(batch, check_attribution_batch(batch), pad_token_id)
