"""Input checks shared by every acpo_core module: errors that name the offending rows.

A batch holds B rows (responses); a check computes a boolean per row (or per element, reduced per row) and raises
``ValueError`` listing the first rows that fail, so that a bad sample is found without a debugger.
"""

from __future__ import annotations

import torch

__all__ = ["describe_rows", "fail_rows", "is_integer", "mask_lengths", "require_finite", "require_integer"]


def describe_rows(bad_rows: torch.Tensor) -> str:
    """``"row 3"`` or ``"rows 1, 4 (and 2 more)"`` for the set entries of a [B] bool tensor."""
    rows = bad_rows.nonzero().flatten().tolist()
    shown = ", ".join(str(r) for r in rows[:8]) + (f" (and {len(rows) - 8} more)" if len(rows) > 8 else "")
    return f"row{'s' if len(rows) > 1 else ''} {shown}"


def fail_rows(bad: torch.Tensor, message: str) -> None:
    """Raise ``ValueError(message: rows ...)`` if any element of ``bad`` ([B] or [B, ...] bool) is set."""
    bad_rows = bad.flatten(1).any(dim=1) if bad.dim() > 1 else bad
    if bad_rows.any():
        raise ValueError(f"{message}: {describe_rows(bad_rows)}")


def is_integer(t: torch.Tensor) -> bool:
    """True for integer dtypes (bool, floating and complex tensors are not token ids or counts)."""
    return not (t.dtype.is_floating_point or t.is_complex() or t.dtype == torch.bool)


def require_integer(name: str, values: torch.Tensor) -> None:
    if not is_integer(values):
        raise ValueError(f"{name} must be an integer tensor, got {values.dtype}")


def require_finite(name: str, values: torch.Tensor, where: torch.Tensor | None = None, what: str = "") -> None:
    """Raise naming the rows where ``values`` is NaN or infinite (only where ``where`` is set, e.g. valid tokens)."""
    bad = ~torch.isfinite(values)
    if where is not None:
        bad = bad & where
    fail_rows(bad, f"{name} is NaN or infinite{' ' + what if what else ''}")


def mask_lengths(mask: torch.Tensor, name: str, padding_side: str) -> torch.Tensor:
    """The number of ones per row of a 0/1 mask [B, W] whose ones are a suffix (left) or prefix (right) of the row.

    Raises:
        ValueError: a value other than 0 and 1, or ones that are not a suffix/prefix, naming the rows.
    """
    fail_rows(((mask != 0) & (mask != 1)).any(dim=1), f"{name} must hold only 0 and 1")
    valid = mask != 0
    lengths = valid.sum(dim=1)
    columns = torch.arange(mask.shape[1], device=mask.device)
    if padding_side == "left":
        expected = columns[None, :] >= (mask.shape[1] - lengths)[:, None]
    else:
        expected = columns[None, :] < lengths[:, None]
    what = "suffix" if padding_side == "left" else "prefix"
    fail_rows((valid != expected).any(dim=1), f"{name} is not a {what} of ones (must be {padding_side}-padded)")
    return lengths
