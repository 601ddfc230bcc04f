"""§3 packed layout for flex attention: every response of a micro-batch in ONE sequence, no S x S mask.

The rows ``[q_n, o_n, Y_n^(0), ..., Y_n^(K_n)]`` of :mod:`acpo_core.packing` are laid end to end as documents of one
sequence of length S, padded by :func:`padded_width` (whole attention blocks; under a token budget, one of
``WIDTHS_PER_BUDGET`` widths up to the budget, else at most 8 lengths per doubling) so that the number of distinct
shapes ``torch.compile`` sees, one compiled flex kernel each, stays small. Who may attend to whom is a function of five
per-token vectors, never a materialised [S, S] tensor:

- ``document``: the row n of the token (-1 on padding);
- ``context_index``: the token's index t in its row's context ``[q, o]`` (S on copies and padding: never visible);
- ``visible``: how many context tokens the token sees (t + 1 in the context, |q| + c_i in copy i, 0 on padding);
- ``copy``: the copy i of the token (-1 in the context, -2 on padding);
- ``offset``: the token's index j in its copy.

A query sees the keys of its own document that are visible context tokens or earlier tokens of its own copy, and
itself. :func:`block_mask` turns the vectors into a flex-attention ``BlockMask``: which (query block, key block) pairs
hold any allowed pair is read from per-block summaries ([S / block, S / block] at most), and blocks lying inside one
document's context below the diagonal are marked full (no mask evaluation). Position ids are those of
:mod:`acpo_core.packing` (copy i continues from |q| + c_i), so each copy is scored as if it followed o_{<c_i}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from acpo_core.attribution import AttributionBatch, AttributionLengths

__all__ = [
    "BLOCK_SIZE",
    "WIDTHS_PER_BUDGET",
    "PackedDocuments",
    "block_mask",
    "pack_documents",
    "packed_lengths",
    "padded_width",
]

# flex attention's default block size: the packed length is padded to a multiple of it.
BLOCK_SIZE = 128
# Under a token budget, the padded widths up to the budget: budget / 8 and its multiples (one compilation each).
WIDTHS_PER_BUDGET = 8


@dataclass(frozen=True)
class PackedDocuments:
    """N responses packed as documents of one sequence of length S (a multiple of the block size)."""

    input_ids: torch.Tensor  # [1, S] long; padding holds pad_token_id
    position_ids: torch.Tensor  # [1, S] long
    document: torch.Tensor  # [S] long
    context_index: torch.Tensor  # [S] long
    visible: torch.Tensor  # [S] long
    copy: torch.Tensor  # [S] long
    offset: torch.Tensor  # [S] long
    predictor_columns: torch.Tensor  # [N, K1, A] long: column whose logits predict answer token j of copy i
    target_ids: torch.Tensor  # [N, A] long
    target_mask: torch.Tensor  # [N, K1, A] bool
    logit_columns: torch.Tensor  # [U] long, sorted
    num_real_tokens: int  # sum_n |q| + T + (K+1)|Y|


def padded_width(real_tokens: int, block_size: int = BLOCK_SIZE, token_budget: int | None = None) -> int:
    """The sequence length ``real_tokens`` are padded to (whole blocks), from a small set of widths.

    Flex attention runs with static shapes, so every distinct width is one ``torch.compile`` of the kernel (tens of
    seconds each, on every rank at once): the set of widths, not the padding, is what this bounds.

    - ``token_budget`` given: widths up to the budget are the multiples of ``step``, the budget over
      ``WIDTHS_PER_BUDGET`` rounded up to whole blocks, the last one capped at the budget (rounded up to a block), so
      at most ``WIDTHS_PER_BUDGET`` widths; at the 7B shapes (budget 12,288) they are 1536, 3072, ..., 12288. Padding
      adds less than ``step`` tokens; a micro-batch planned under the budget never exceeds it. A row over the budget
      on its own (scored alone) falls back to the rule below, past the budget.
    - otherwise: up to 8 blocks every block count is its own length; beyond, the count is rounded up to a multiple
      of 2^(floor(log2 blocks) - 3): padding adds less than 1/8, at most 8 lengths per doubling.
    """
    blocks = max(-(-real_tokens // block_size), 1)
    if token_budget is not None and token_budget > 0:
        budget_blocks = -(-token_budget // block_size)
        if blocks <= budget_blocks:
            step = -(-budget_blocks // WIDTHS_PER_BUDGET)
            return min(-(-blocks // step) * step, budget_blocks) * block_size
    if blocks > 8:
        step = 1 << (blocks.bit_length() - 4)
        blocks = -(-blocks // step) * step
    return blocks * block_size


def packed_lengths(lengths: AttributionLengths) -> torch.Tensor:
    """[N] long: |q| + T + (K+1)|Y|, the tokens of each response's packed row."""
    return lengths.prompt + lengths.response + (lengths.num_steps + 1) * lengths.answer


def pack_documents(
    batch: AttributionBatch,
    lengths: AttributionLengths,
    pad_token_id: int = 0,
    block_size: int = BLOCK_SIZE,
    token_budget: int | None = None,
) -> PackedDocuments:
    """Lay already-checked rows end to end in one sequence (see the module docstring). Vectorised over S tokens.

    ``token_budget``: the micro-batch planner's budget, which sets the widths S is padded to (:func:`padded_width`).
    """
    device = batch.prompt_ids.device
    prompt_len, answer_len, steps = lengths.prompt, lengths.answer, lengths.num_steps
    context_len = prompt_len + lengths.response
    row_len = packed_lengths(lengths)
    ends = row_len.cumsum(0)
    starts = ends - row_len
    real = int(ends[-1])
    width = padded_width(real, block_size, token_budget)
    column = torch.arange(width, device=device)
    is_real = column < real
    document = torch.searchsorted(ends, column, right=True).clamp(max=len(batch) - 1)
    r = column - starts[document]  # index within the row
    q_len, c_len, y_len = prompt_len[document], context_len[document], answer_len[document]
    is_context = is_real & (r < c_len)
    is_copy = is_real & ~is_context
    tail = (r - c_len).clamp(min=0)
    copy = torch.where(is_copy, tail // y_len, torch.where(is_context, -1, -2))
    offset = torch.where(is_copy, tail % y_len, 0)
    num_copies = int(steps.max()) + 1
    cuts = batch.boundaries[:, :num_copies].long()
    cut = cuts[document, copy.clamp(min=0)]

    prompt_width = batch.prompt_ids.shape[1]
    prompt_token = batch.prompt_ids[document, (prompt_width - q_len + r).clamp(0, prompt_width - 1)]
    response_width = batch.response_ids.shape[1]
    response_token = batch.response_ids[document, (r - q_len).clamp(0, max(response_width - 1, 0))]
    answer_token = batch.answer_ids[document, offset]
    input_ids = torch.where(r < q_len, prompt_token, response_token)
    input_ids = torch.where(is_copy, answer_token, torch.where(is_context, input_ids, pad_token_id)).long()
    position_ids = torch.where(is_context, r, torch.where(is_copy, q_len + cut + offset, 0))
    visible = torch.where(is_context, r + 1, torch.where(is_copy, q_len + cut, 0))
    context_index = torch.where(is_context, r, width)
    document = torch.where(is_real, document, -1)

    # Answer token j of copy i is predicted by the last visible context token (j = 0) or by copy token j - 1.
    i = torch.arange(num_copies, device=device)[None, :, None]
    j = torch.arange(int(answer_len.max()), device=device)[None, None, :]
    first = (starts + prompt_len)[:, None, None] + cuts[:, :, None] - 1
    later = (starts + context_len)[:, None, None] + i * answer_len[:, None, None] + j - 1
    target_mask = (i <= steps[:, None, None]) & (j < answer_len[:, None, None])
    predictor_columns = torch.where(j == 0, first, later).masked_fill(~target_mask, 0)
    return PackedDocuments(
        input_ids=input_ids[None],
        position_ids=position_ids[None],
        document=document,
        context_index=context_index,
        visible=visible,
        copy=copy,
        offset=offset,
        predictor_columns=predictor_columns,
        target_ids=batch.answer_ids[:, : j.shape[2]].long(),
        target_mask=target_mask,
        logit_columns=torch.unique(predictor_columns[target_mask]),
        num_real_tokens=real,
    )


def _block_summaries(packed: PackedDocuments, block_size: int) -> tuple[torch.Tensor, ...]:
    """Per block of ``block_size`` tokens: first and last document, and the document if it is all context of one."""
    document = packed.document.view(-1, block_size)
    real = document >= 0
    big = torch.iinfo(document.dtype).max
    first = torch.where(real, document, big).amin(dim=1)
    last = torch.where(real, document, -1).amax(dim=1)
    pure_context = (packed.copy.view(-1, block_size) == -1).all(dim=1) & (first == last)
    context_document = torch.where(pure_context, first, -1)
    return first, last, context_document


def _kv_blocks(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BlockMask's (num_blocks [1, 1, nq], indices [1, 1, nq, nk]) of a [nq, nk] bool block selection."""
    order = torch.argsort((~selected).to(torch.int8), dim=1, stable=True)
    return selected.sum(dim=1).to(torch.int32)[None, None], order.to(torch.int32)[None, None]


def block_mask(packed: PackedDocuments, block_size: int = BLOCK_SIZE) -> Any:
    """The flex-attention ``BlockMask`` of ``packed`` (batch 1, all heads), built without an [S, S] tensor.

    A (query block, key block) pair is computed when the key block is not after the query block and their document
    ranges overlap (documents are contiguous and in order); it is full (no mask evaluation) when both blocks lie in
    the context of one document and the key block is strictly earlier. The ``mask_mod`` decides token pairs inside
    the other computed blocks.
    """
    from torch.nn.attention.flex_attention import BlockMask

    document, context_index, visible = packed.document, packed.context_index, packed.visible
    copy, offset = packed.copy, packed.offset

    def mask_mod(b: Any, h: Any, q: Any, kv: Any) -> Any:
        same_document = document[q] == document[kv]
        sees_context = context_index[kv] < visible[q]
        same_copy = (copy[q] == copy[kv]) & (copy[kv] >= 0) & (offset[kv] <= offset[q])
        return (same_document & (sees_context | same_copy)) | (q == kv)

    first, last, context_document = _block_summaries(packed, block_size)
    num_blocks = first.numel()
    index = torch.arange(num_blocks, device=first.device)
    below = index[None, :] < index[:, None]  # [query block, key block]
    overlapping = last[None, :] >= first[:, None]
    computed = (below & overlapping) | (index[None, :] == index[:, None])
    full = below & (context_document[:, None] >= 0) & (context_document[:, None] == context_document[None, :])
    partial_num, partial_index = _kv_blocks(computed & ~full)
    full_num, full_index = _kv_blocks(full)
    width = num_blocks * block_size
    return BlockMask.from_kv_blocks(
        partial_num,
        partial_index,
        full_num,
        full_index,
        BLOCK_SIZE=block_size,
        mask_mod=mask_mod,
        seq_lengths=(width, width),
    )
