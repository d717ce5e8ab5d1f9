"""Survivors of the mutation run over lineage/tables.py: a dictionary-encoded id-list column (as Parquet files
often store strings) is read like a plain one."""

from __future__ import annotations

import pyarrow as pa
import pytest

from expunge.lineage.tables import id_lists


def test_a_dictionary_encoded_id_list_column_is_decoded():
    plain = pa.table({"m": pa.array(["a;b", "c", "a;b"])})
    encoded = pa.table({"m": pa.array(["a;b", "c", "a;b"]).dictionary_encode()})
    for t in (plain, encoded):
        rows, flat = id_lists(t, "m", "test")
        assert rows.to_pylist() == [0, 0, 1, 2, 2] and flat.to_pylist() == ["a", "b", "c", "a", "b"]


def test_id_columns_of_integers_and_of_other_list_types_read_as_text():
    cases = [
        pa.array([7, 8]),                                              # one integer id per row
        pa.array([[7], [8]], pa.list_(pa.int64())),                    # lists of integers
        pa.array([["7"], ["8"]], pa.list_(pa.large_string())),         # lists of large strings
    ]
    for col in cases:
        rows, flat = id_lists(pa.table({"m": col}), "m", "test")
        assert rows.to_pylist() == [0, 1] and flat.type == pa.string() and flat.to_pylist() == ["7", "8"]


def test_blank_lines_before_the_header_do_not_hide_its_column_names(tmp_path):
    """pyarrow skips blank lines, so its header is the first line with text: the message names those columns
    (it said "columns: none")."""
    from expunge.errors import BadInput
    from expunge.lineage.tables import read_table

    path = tmp_path / "blank-first.csv"
    path.write_text("\n\nid,x\nu1,1\nu2,2,3\n")
    with pytest.raises(BadInput) as e:
        read_table(path, ["id"])
    assert "has 3 field(s), expected 2 (columns: id, x)" in str(e.value) and "u2" not in str(e.value)


def test_a_long_field_then_a_malformed_line_names_the_line(tmp_path):
    """A field over the reader's 1 MiB block makes it read the file again as one block; a malformed line after it
    is then named by its number, as in any other file (the re-read's error, not the first one's)."""
    from expunge.errors import BadInput
    from expunge.lineage.tables import read_table

    path = tmp_path / "long.csv"
    path.write_text("id,x\n" + "a," + "y" * (2 << 20) + "\nb,1\nc,2,3\n")
    with pytest.raises(BadInput) as e:
        read_table(path, ["id"])
    assert "a line has 3 field(s), expected 2 (columns: id, x)" in str(e.value)


def test_id_column_reads_dictionary_integer_and_large_string_ids_as_text():
    from expunge.errors import BadInput
    from expunge.lineage.tables import id_column

    cases = [pa.array(["b", "a", "b"]).dictionary_encode(), pa.array([7, 42, 7]), pa.array([7, 42, 7], pa.int32()),
             pa.array(["7", "42", "7"], pa.large_string())]
    want = [["b", "a", "b"]] + [["7", "42", "7"]] * 3
    for col, ids in zip(cases, want):
        got = id_column(pa.table({"id": col}), "id", "t")
        assert got.type == pa.string() and got.to_pylist() == ids
    with pytest.raises(BadInput, match=r"^t: column 'id' is null in row 2 \(1 null value\(s\)\)$"):
        id_column(pa.table({"id": pa.array(["a", "b", None]).dictionary_encode()}), "id", "t")
    with pytest.raises(BadInput, match=r"^t: column 'id' has type double; ids must be strings or integers$"):
        id_column(pa.table({"id": pa.array([1.0])}), "id", "t")


def test_a_null_list_of_ids_is_refused_with_its_row():
    from expunge.errors import BadInput

    col = pa.array([["a"], ["b", "c"], None], pa.list_(pa.string()))
    with pytest.raises(BadInput, match=r"^t: column 'm' is null in row 2$"):
        id_lists(pa.table({"m": col}), "m", "t")


@pytest.mark.parametrize("n", [6, 20_000])  # read whole, and scanned by DuckDB (DUCKDB_SCAN_ROWS and over)
def test_rows_read_by_id_from_a_file_a_table_and_a_missing_column(tmp_path, n):
    """Integer ids in the file, a null id (never matches), ids asked as text: the rows picked by hand."""
    import pyarrow.parquet as pq

    from expunge.errors import BadInput
    from expunge.lineage.tables import DUCKDB_SCAN_ROWS, read_rows_by_id

    assert (n >= DUCKDB_SCAN_ROWS) == (n == 20_000)
    ids = [None if i == 1 else i * 3 for i in range(n)]
    table = pa.table({"x": [float(i) for i in range(n)], "id": pa.array(ids, pa.int64())})
    pq.write_table(table, tmp_path / "f.parquet")
    want = {"id": ["6", "15"], "x": [2.0, 5.0]}  # ids 6 and 15 (rows 2 and 5, in file order); 3 is row 1's: null
    for data in (tmp_path / "f.parquet", str(tmp_path / "f.parquet"), table):
        got = read_rows_by_id(data, "id", ["id", "x"], pa.array(["15", "3", "4", "6"]))
        assert got.column_names == ["id", "x"] and got.to_pydict() == want, data
    with pytest.raises(BadInput, match=r"^the given table: missing column\(s\) 'z' \(columns: x, id\)$"):
        read_rows_by_id(table, "id", ["id", "z"], pa.array(["15"]))


def test_an_empty_csv_gets_the_message_that_withholds_the_parsers_text(tmp_path):
    from expunge.errors import BadInput
    from expunge.lineage.tables import read_table

    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(BadInput) as e:
        read_table(empty, ["id"])
    assert str(e.value) == (f"cannot read {empty}: not a CSV file expunge can read (the parser's message is withheld: "
                            "it may quote the file)")
