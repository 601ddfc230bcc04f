"""§3 scoring cost: micro-batches of responses sized by a token budget (and a row cap).

A packed row of response n holds ``|q| + T + (K+1)|Y|`` tokens (:func:`acpo_core.document_packing.packed_lengths`).
What a micro-batch of n rows whose longest row has S tokens costs, in tokens:

- ``flex``: the rows are documents of one sequence, so the sum of their lengths, padded to the block size;
- ``sdpa`` (and ``eager``): the rows are padded to S, and the dense [n, 1, S, S] mask (plus its temporaries while
  it is built) is charged in units of one hidden vector per token: ``n * S + n * S^2 / hidden_size``.

Rows are taken longest first and a micro-batch is closed when the next row would exceed the budget or the row cap;
a row over the budget on its own is scored alone. FSDP ranks must run the same number of forward passes (each one
gathers parameters collectively): :func:`plan_micro_batches` takes ``min_count`` (the largest count of any rank)
and splits its largest micro-batches until it has that many.
"""

from __future__ import annotations

import torch

__all__ = ["micro_batch_cost", "plan_micro_batches"]


def micro_batch_cost(lengths: list[int], attention: str, hidden_size: int, block_size: int) -> int:
    """Tokens charged for scoring rows of these packed lengths in one forward (see the module docstring)."""
    if not lengths:
        return 0
    if attention == "flex":
        return -(-sum(lengths) // block_size) * block_size
    longest = max(lengths)
    return len(lengths) * longest + (len(lengths) * longest * longest) // max(hidden_size, 1)


def plan_micro_batches(
    packed_len: torch.Tensor,
    max_rows: int,
    token_budget: int | None,
    attention: str,
    hidden_size: int,
    block_size: int = 128,
    min_count: int = 1,
) -> list[torch.Tensor]:
    """Split B responses into micro-batches: row indices [n_m] long per micro-batch, longest rows first.

    Args:
        packed_len: [B] long, tokens of each packed row.
        max_rows: at most this many rows per micro-batch (``acpo.attribution.micro_batch_size``).
        token_budget: at most this many tokens (:func:`micro_batch_cost`) per micro-batch; None: rows only.
        attention: ``flex`` or ``sdpa``/``eager`` (the cost model).
        hidden_size: the model's hidden size (the unit of the dense mask's cost).
        min_count: the plan has at least this many micro-batches (FSDP ranks run equal numbers of forwards).
    Raises:
        ValueError: ``min_count`` above B (a rank with fewer rows than another rank's micro-batches).
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    order = torch.argsort(packed_len, descending=True, stable=True).tolist()
    lengths = packed_len.tolist()
    groups: list[list[int]] = []
    for row in order:
        current = groups[-1] if groups else None
        if current is not None and len(current) < max_rows:
            trial = [lengths[r] for r in current] + [lengths[row]]
            if token_budget is None or micro_batch_cost(trial, attention, hidden_size, block_size) <= token_budget:
                current.append(row)
                continue
        groups.append([row])
    if min_count > len(order):
        raise ValueError(
            f"{len(order)} responses cannot fill the {min_count} forward passes another rank needs: give every rank "
            "the same number of responses (pad the batch to a multiple of the data-parallel size)"
        )
    while len(groups) < min_count:
        largest = max(range(len(groups)), key=lambda g: len(groups[g]))
        group = groups.pop(largest)
        half = (len(group) + 1) // 2
        groups[largest:largest] = [group[:half], group[half:]]
    return [torch.tensor(g, dtype=torch.long, device=packed_len.device) for g in groups]
