"""Survivors of the mutation run over lineage/tables.py: a dictionary-encoded id-list column (as Parquet files
often store strings) is read like a plain one."""

from __future__ import annotations

import pyarrow as pa

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
