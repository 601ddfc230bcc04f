"""The data side of the pass-rate pre-pass: row numbers in, pass rates out of ``extra_info``.

§6: Stage 1's curriculum seeds its pass-rate estimate p(q) from ``extra_info.pass_rate`` when the data has it.
The pre-pass that estimates it with the initial policy, ``python -m recipe.acpo.pass_rate``, runs verl's validation
pass; this module is what it does to the data, with no dependency on the recipe:

- ``add_row_numbers``: verl's dump does not say which data row a generation came from, so the working copy of the
  input gets a row number in ``extra_info`` (``acpo_pass_rate_row``), which the pre-pass's reward manager echoes into
  the per-sample reward information verl dumps (reading that dump and counting the correct samples of each row is
  the recipe's side, in its validation package);
- ``write_pass_rates``: the input, row for row and column for column, with ``extra_info.pass_rate`` added (or
  replaced); a row verl could not sample keeps a null pass rate.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from data_prep.schema import DataError

ROW_KEY = "acpo_pass_rate_row"
PASS_RATE_KEY = "pass_rate"

__all__ = [
    "PASS_RATE_KEY",
    "ROW_KEY",
    "add_row_numbers",
    "write_pass_rates",
]


def _extra_info_children(table: pa.Table) -> tuple[list[pa.Array], list[str]]:
    if "extra_info" not in table.column_names:
        return [], []
    column = table.column("extra_info").combine_chunks()
    if not pa.types.is_struct(column.type):
        raise DataError(f"extra_info is {column.type}, not a struct: the pass rate cannot be stored in it")
    names = [column.type.field(i).name for i in range(column.type.num_fields)]
    # flatten() applies the struct's own null mask to its children.
    return list(column.flatten()), names


def _with_extra_info(table: pa.Table, children: Sequence[pa.Array], names: Sequence[str]) -> pa.Table:
    extra_info = pa.StructArray.from_arrays(list(children), names=list(names))
    if "extra_info" in table.column_names:
        return table.set_column(table.column_names.index("extra_info"), "extra_info", extra_info)
    return table.append_column("extra_info", extra_info)


def add_row_numbers(table: pa.Table) -> pa.Table:
    """``table`` with ``extra_info.acpo_pass_rate_row`` = 0..n-1 (an ``extra_info`` struct is created if missing)."""
    children, names = _extra_info_children(table)
    if ROW_KEY in names:
        raise DataError(f"extra_info already has a field {ROW_KEY!r}: is this a working copy of the pre-pass?")
    return _with_extra_info(table, [*children, pa.array(range(table.num_rows), type=pa.int64())], [*names, ROW_KEY])


def write_pass_rates(table: pa.Table, rates: Sequence[float | None]) -> pa.Table:
    """``table`` with ``extra_info.pass_rate`` set to ``rates`` (float64, null where None), replacing any there."""
    if len(rates) != table.num_rows:
        raise ValueError(f"{len(rates)} pass rates for {table.num_rows} rows")
    children, names = _extra_info_children(table)
    kept = [(child, name) for child, name in zip(children, names) if name not in (PASS_RATE_KEY, ROW_KEY)]
    return _with_extra_info(
        table,
        [child for child, _ in kept] + [pa.array(list(rates), type=pa.float64())],
        [name for _, name in kept] + [PASS_RATE_KEY],
    )
