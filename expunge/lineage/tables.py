"""Reading user tables (Parquet, CSV, Arrow, dicts) and checking the id columns in them.

Ids are kept exactly as the source holds them: CSV columns named as ids are
read as strings (no `0042` → 42 coercion), integer columns become their
decimal text, and anything else is refused.

Messages never quote a value from the user's table (an id may be a customer's): they name
columns and row numbers. A row number counts data rows from 0 (the row after a CSV header is
row 0); a CSV parse error names the file's line instead (the header is line 1).
"""

from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from expunge.errors import BadInput

LIST_SEP = ";"


def read_table(data: Any, id_columns: Iterable[str] = ()) -> pa.Table:
    """The table in `data`, its column names checked: UTF-8 text, each once (a column is found by its name)."""
    table = _read_table(data, [c for c in id_columns if c])
    try:
        names = table.column_names
    except UnicodeDecodeError:
        raise BadInput(f"cannot read {_source(data)}: its column names are not UTF-8 text") from None
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise BadInput(f"cannot read {_source(data)}: column {name!r} appears more than once")
        seen.add(name)
    return table


def _source(data: Any) -> str:
    return str(data) if isinstance(data, (str, Path)) else "the given table"


def _read_table(data: Any, id_columns: list[str]) -> pa.Table:
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
            return _read_csv(path, suffix, id_columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise BadInput(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    raise BadInput(f"unsupported file type {suffix!r} for {path} (use .parquet or .csv)")


_CONVERSION = re.compile(r"In CSV column #(\d+): CSV conversion error to ([^:]+):")


def _read_csv(path: Path, suffix: str, id_columns: list[str]) -> pa.Table:
    """A CSV file as a table; a parse error names the line and the columns, never the line's text (pyarrow's
    own message quotes it, and it may hold ids)."""
    import pyarrow.csv as pacsv

    def collect(row) -> str:
        bad_rows.append(row)
        return "error"  # skipping a row is never wanted here

    def read(**read_options) -> pa.Table:
        with _undecodable_lines_counted(undecodable):
            return _read(**read_options)

    def _read(**read_options) -> pa.Table:
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(**read_options),
            parse_options=pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",",
                                             invalid_row_handler=collect),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in id_columns},
                strings_can_be_null=True,  # an empty CSV field is a missing id; a quoted "" is not
                quoted_strings_can_be_null=False,
                null_values=[""],
            ),
        )

    bad_rows: list = []
    undecodable: list = []
    try:
        return read()
    except pa.ArrowInvalid as exc:
        text = str(exc)
    if "straddl" in text:  # a field longer than the reader's block (1 MiB): read the file as one block
        try:
            return read(block_size=max(1 << 20, min(path.stat().st_size + 1, (1 << 31) - 1)))
        except pa.ArrowInvalid as exc:
            text = str(exc)
    header = _csv_header(path, suffix)
    if bad_rows or text.startswith("CSV parse error"):
        row = bad_rows[0] if bad_rows else None
        if row is not None and row.number is None:
            bad_rows.clear()  # the threaded reader does not number lines: read again, on one thread, to say which
            try:
                read(use_threads=False)
            except pa.ArrowInvalid:
                pass
            row = bad_rows[0] if bad_rows else row
        where = f"line {row.number}" if row is not None and row.number is not None else \
            "a line that is not UTF-8 text" if undecodable else "a line"
        counts = f" has {row.actual_columns} field(s), expected {row.expected_columns}" if row is not None else \
            " is malformed"
        raise BadInput(f"cannot read {path}: {where}{counts} (columns: {header}); the line is not shown, it may "
                       "hold ids")
    m = _CONVERSION.match(text)
    if m:
        raise BadInput(f"cannot read {path}: column #{m.group(1)} ({_column_name(header, int(m.group(1)))}) holds a "
                       f"value that is not {m.group(2)} (the value is not shown, it may be an id)")
    raise BadInput(f"cannot read {path}: not a CSV file expunge can read (the parser's message is withheld: it may "
                   "quote the file)")


@contextlib.contextmanager
def _undecodable_lines_counted(found: list):
    """pyarrow decodes a malformed line as UTF-8 before it calls the invalid-row handler; a line that is not UTF-8
    fails there, and Python would print that error and its traceback on stderr (`sys.unraisablehook`). Such a
    line is counted here instead: the parse error that follows names it."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if isinstance(unraisable.exc_value, UnicodeDecodeError):
            found.append(True)
        else:
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def _csv_header(path: Path, suffix: str) -> str:
    """The header's column names as one string (names are not ids)."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as fh:
            # The first line with text, as pyarrow takes it (it skips blank lines).
            names = next((row for row in csv.reader(fh, delimiter="\t" if suffix == ".tsv" else ",") if row), [])
    except (OSError, csv.Error):
        return "unreadable"
    return ", ".join(names) or "none"


def _column_name(header: str, number: int) -> str:
    names = header.split(", ")
    return names[number] if 0 <= number < len(names) else "?"


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


def first_duplicate(arr: pa.Array) -> int | None:
    """The row number of the first value that repeats an earlier one (None if all differ): messages name
    the row, never the value."""
    if len(pc.unique(arr)) == len(arr):  # the fast check; find the culprit only when there is one
        return None
    codes = pc.dictionary_encode(arr).indices.to_numpy(zero_copy_only=False)
    _, first = np.unique(codes, return_index=True)
    repeat = np.ones(len(codes), bool)
    repeat[first] = False
    return int(np.flatnonzero(repeat)[0])


DUCKDB_SCAN_ROWS = 20_000  # below this, pyarrow reads a whole Parquet file quicker than DuckDB finds rows in it


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(path).num_rows
    except (pa.ArrowInvalid, OSError):
        return 0  # read_table says why


def read_rows_by_id(data: Any, id_col: str, columns: list[str], ids: pa.Array) -> pa.Table:
    """The rows of a table whose `id_col` (as `id_column` reads it) is in `ids`, with `columns` (`id_col`
    first). A Parquet file is scanned by DuckDB, which reads the other columns only where an id matched (a
    few rows of a large file cost a fraction of reading it whole; a small one is read whole, which is quicker
    than starting DuckDB); other sources are read whole. Rows with a null id never match."""
    path = Path(data) if isinstance(data, (str, Path)) else None
    if path is not None and path.suffix.lower() in (".parquet", ".pq") and path.is_file() \
            and _parquet_rows(path) >= DUCKDB_SCAN_ROWS:
        import duckdb

        from expunge.lineage.store import _hub_connection

        def q(name: str) -> str:
            return '"' + name.replace('"', '""') + '"'

        con = _hub_connection().cursor()  # the process's DuckDB instance: no start-up cost
        try:
            con.register("wanted_ids", pa.table({"id": ids.cast(pa.string())}))
            sel = ", ".join([f"CAST({q(id_col)} AS VARCHAR) AS {q(id_col)}", *(q(c) for c in columns[1:])])
            # In the file's order, as a whole-table filter gives them (a parallel join would not keep it).
            return con.sql(f"SELECT {sel} FROM read_parquet(?, file_row_number = true) WHERE CAST({q(id_col)} "
                           f"AS VARCHAR) IN (SELECT id FROM wanted_ids) ORDER BY file_row_number",
                           params=[str(path)]).to_arrow_table()
        except duckdb.Error as exc:
            raise BadInput(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
        finally:
            con.close()
    table = read_table(data, [id_col])
    require_columns(table, columns, _source(data))
    if table.column(id_col).null_count:  # a null id never matches (id_column refuses it)
        table = table.filter(pc.is_valid(table.column(id_col)))
    have = id_column(table, id_col, _source(data))
    return table.select(columns).set_column(0, id_col, have).filter(pc.is_in(have, value_set=ids.cast(pa.string())))
