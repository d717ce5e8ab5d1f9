"""Reading user tables (Parquet, CSV, Arrow, dicts) and checking the id columns in them.

Ids are kept exactly as the source holds them: CSV columns named as ids are
read as strings (no `0042` → 42 coercion), integer columns become their
decimal text, and anything else is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc

from expunge.errors import BadInput

LIST_SEP = ";"


def read_table(data: Any, id_columns: Iterable[str] = ()) -> pa.Table:
    id_columns = [c for c in id_columns if c]
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, dict):
        try:
            return pa.table(data)
        except (pa.ArrowInvalid, TypeError, ValueError) as exc:
            raise BadInput(f"cannot build a table from the given columns: {exc}") from None
    if hasattr(data, "to_arrow"):
        return data.to_arrow()
    path = Path(data)
    if not path.exists():
        raise BadInput(f"no such file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return pq.read_table(path)
        if suffix in (".csv", ".tsv", ".txt") or suffix == "":
            import pyarrow.csv as pacsv

            return pacsv.read_csv(
                path,
                parse_options=pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ","),
                convert_options=pacsv.ConvertOptions(
                    column_types={c: pa.string() for c in id_columns},
                    strings_can_be_null=True,  # an empty CSV field is a missing id; a quoted "" is not
                    quoted_strings_can_be_null=False,
                    null_values=[""],
                ),
            )
    except (pa.ArrowInvalid, OSError) as exc:
        raise BadInput(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    raise BadInput(f"unsupported file type {suffix!r} for {path} (use .parquet or .csv)")


def require_columns(table: pa.Table, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        have = ", ".join(table.column_names) or "none"
        raise BadInput(f"{what}: missing column(s) {', '.join(map(repr, missing))} (columns: {have})")


def id_column(table: pa.Table, column: str, what: str) -> pa.Array:
    """A string array of ids from `column`; nulls are refused."""
    arr = table.column(column).combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_integer(arr.type):
        arr = pc.cast(arr, pa.string())
    elif pa.types.is_large_string(arr.type) or pa.types.is_string_view(arr.type):
        arr = pc.cast(arr, pa.string())
    elif not pa.types.is_string(arr.type):
        raise BadInput(f"{what}: column {column!r} has type {arr.type}; ids must be strings or integers")
    if arr.null_count:
        row = pc.index(pc.is_null(arr), True).as_py()
        raise BadInput(f"{what}: column {column!r} is null in row {row} ({arr.null_count} null value(s))")
    return arr


def id_lists(table: pa.Table, column: str, what: str) -> tuple[pa.Array, pa.Array]:
    """(row index per id, flat id strings) for a list column or a `;`-separated string column."""
    arr = table.column(column).combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        lists = arr
    elif pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) or pa.types.is_integer(arr.type):
        if pa.types.is_integer(arr.type):
            arr = pc.cast(arr, pa.string())
        if arr.null_count:
            row = pc.index(pc.is_null(arr), True).as_py()
            raise BadInput(f"{what}: column {column!r} is null in row {row}")
        lists = pc.split_pattern(arr, LIST_SEP)
    else:
        raise BadInput(f"{what}: column {column!r} has type {arr.type}; expected a list of ids")
    if lists.null_count:
        row = pc.index(pc.is_null(lists), True).as_py()
        raise BadInput(f"{what}: column {column!r} is null in row {row}")
    parents = pc.list_parent_indices(lists)
    flat = pc.list_flatten(lists)
    if pa.types.is_integer(flat.type):
        flat = pc.cast(flat, pa.string())
    elif not pa.types.is_string(flat.type):
        flat = pc.cast(flat, pa.string())
    if flat.null_count:
        raise BadInput(f"{what}: column {column!r} holds a null id")
    return parents, flat


def first_duplicate(arr: pa.Array) -> str | None:
    if len(pc.unique(arr)) == len(arr):  # the fast check; find the culprit only when there is one
        return None
    counts = pc.value_counts(arr)
    dup = pc.filter(counts, pc.greater(counts.field("counts"), 1))
    return dup[0]["values"].as_py()
