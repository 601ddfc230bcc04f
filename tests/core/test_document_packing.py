"""acpo_core.document_packing (§3 for flex attention): the documents' mask equals the dense packed mask.

No compilation here: the ``mask_mod`` is evaluated on every token pair of a small batch (test only) and compared with
acpo_core.packing's dense [N, 1, S, S] mask; the BlockMask's block lists are checked to cover every allowed pair.
"""

from __future__ import annotations

import torch

from acpo_core.attribution import AttributionBatch, check_attribution_batch
from acpo_core.document_packing import block_mask, pack_documents, padded_width
from acpo_core.packing import pack_rows


def _batch() -> AttributionBatch:
    # Row 0: q = [11, 12], o = [21, 22, 23], c = (0, 2, 3), Y = [31, 32].
    # Row 1: q = [13], o = [24], c = (0, 1), Y = [33].
    # Row 2: q = [14, 15, 16], empty response (one empty step), Y = [34, 35].
    return AttributionBatch(
        prompt_ids=torch.tensor([[0, 11, 12], [0, 0, 13], [14, 15, 16]]),
        prompt_mask=torch.tensor([[0, 1, 1], [0, 0, 1], [1, 1, 1]]),
        response_ids=torch.tensor([[21, 22, 23], [24, 0, 0], [0, 0, 0]]),
        response_mask=torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]]),
        boundaries=torch.tensor([[0, 2, 3], [0, 1, -1], [0, 0, -1]]),
        num_steps=torch.tensor([2, 1, 1]),
        answer_ids=torch.tensor([[31, 32], [33, 0], [34, 35]]),
        answer_mask=torch.tensor([[1, 1], [1, 0], [1, 1]]),
    )


def _all_pairs(mask_mod, width: int) -> torch.Tensor:
    q = torch.arange(width)[:, None].expand(width, width)
    kv = torch.arange(width)[None, :].expand(width, width)
    zero = torch.zeros((), dtype=torch.long)
    return mask_mod(zero, zero, q, kv)


def test_documents_hold_the_packed_rows_end_to_end_hand_worked() -> None:
    batch = _batch()
    packed = pack_documents(batch, check_attribution_batch(batch), pad_token_id=99, block_size=16)
    real = (2 + 3 + 3 * 2) + (1 + 1 + 2 * 1) + (3 + 0 + 2 * 2)
    assert packed.num_real_tokens == real == 22 and packed.input_ids.shape == (1, 32)
    assert packed.input_ids[0, :real].tolist() == [
        *[11, 12, 21, 22, 23, 31, 32, 31, 32, 31, 32],
        *[13, 24, 33, 33],
        *[14, 15, 16, 34, 35, 34, 35],
    ]
    assert (packed.input_ids[0, real:] == 99).all() and (packed.document[real:] == -1).all()
    # Copy i continues from |q| + c_i (row 2: both copies follow the whole prompt).
    assert packed.position_ids[0, :real].tolist() == [
        *[0, 1, 2, 3, 4, 2, 3, 4, 5, 5, 6],
        *[0, 1, 1, 2],
        *[0, 1, 2, 3, 4, 3, 4],
    ]
    # Y_1 of copy i is predicted by the last visible context token, Y_j (j > 0) by copy token j - 1.
    assert packed.predictor_columns[0].tolist() == [[1, 5], [3, 7], [4, 9]]
    assert packed.predictor_columns[1, :2, 0].tolist() == [11, 12]
    assert packed.predictor_columns[2, :2].tolist() == [[17, 18], [17, 20]]


def test_document_mask_equals_the_dense_packed_mask_and_the_blocks_cover_it() -> None:
    batch = _batch()
    lengths = check_attribution_batch(batch)
    block = 2
    packed = pack_documents(batch, lengths, block_size=block)
    mask = block_mask(packed, block_size=block)
    allowed = _all_pairs(mask.mask_mod, packed.input_ids.shape[1])
    dense = pack_rows(batch, lengths, pad_token_id=0)
    starts = [0, 11, 15]
    row_len = [11, 4, 7]
    width = dense.input_ids.shape[1]
    expected = torch.eye(allowed.shape[0], dtype=torch.bool)
    for n, (start, size) in enumerate(zip(starts, row_len)):
        # The dense row's real tokens: its context ends at the shared column, its copies follow.
        context = int(lengths.prompt[n] + lengths.response[n])
        context_end = int((lengths.prompt + lengths.response).max())
        columns = [*range(context_end - context, context_end), *range(context_end, context_end + size - context)]
        assert max(columns) < width
        index = torch.tensor(columns)
        expected[start : start + size, start : start + size] = dense.attention_mask[n, 0][index][:, index]
    assert torch.equal(allowed, expected)
    # Every allowed pair lies in a computed block; a full block is allowed everywhere.
    num_blocks = allowed.shape[0] // block
    per_block = allowed.view(num_blocks, block, num_blocks, block).permute(0, 2, 1, 3)
    computed = torch.zeros(num_blocks, num_blocks, dtype=torch.bool)
    full = torch.zeros(num_blocks, num_blocks, dtype=torch.bool)
    for q in range(num_blocks):
        computed[q, mask.kv_indices[0, 0, q, : mask.kv_num_blocks[0, 0, q]]] = True
        full[q, mask.full_kv_indices[0, 0, q, : mask.full_kv_num_blocks[0, 0, q]]] = True
    assert not (computed & full).any()
    assert not (per_block.flatten(2).any(dim=2) & ~(computed | full)).any()
    assert per_block.flatten(2).all(dim=2)[full].all()
    assert full.any(), "row 0's context spans whole blocks below the diagonal"


def test_padded_width_uses_whole_blocks_and_few_lengths_per_doubling() -> None:
    assert [padded_width(n, 128) for n in (1, 128, 129, 1024)] == [128, 128, 256, 1024]
    widths = {padded_width(n, 128) for n in range(1, 32 * 1024 + 1)}
    assert len({w for w in widths if 16 * 1024 < w <= 32 * 1024}) == 8
    for n in (1153, 5000, 20_000, 65_537):
        assert n <= padded_width(n, 128) < n * 1.125 + 128


def test_padded_width_under_a_token_budget_takes_at_most_eight_widths() -> None:
    """At the 7B budget (12,288 tokens) every micro-batch pads to one of 8 widths: 8 compilations per rank at most."""
    widths = {padded_width(n, 128, 12_288) for n in range(1, 12_288 + 1)}
    assert sorted(widths) == [1536 * k for k in range(1, 9)]
    for n in range(1, 12_288 + 1, 97):
        assert n <= padded_width(n, 128, 12_288) < n + 1536
    # A budget that is no multiple of 8 blocks: the last width is the budget rounded up to a block, never above.
    uneven = {padded_width(n, 128, 10_000) for n in range(1, 10_000 + 1)}
    assert len(uneven) == 8 and max(uneven) == 10_112
    # A row over the budget (scored alone) falls back to the few-lengths-per-doubling rule.
    assert padded_width(20_000, 128, 12_288) == padded_width(20_000, 128)
    assert padded_width(300, 128, None) == padded_width(300, 128, 0) == 384
