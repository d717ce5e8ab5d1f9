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
