"""Reading versions back (`lineage/rows.py`) against the tables they were ingested from: record ids across
several ingests, composed rows built from several records or none, and the masks trainers use to drop erased
records: kills mutants of rows.py (bench/mutation.py)."""

from __future__ import annotations

import numpy as np

from expunge.lineage.rows import VersionRows, record_values, version_rows


def test_a_source_version_reads_back_its_records_in_ordinal_order(store):
    store.ingest_source({"s": ["a", "b", "c"], "r": ["r0", "r1", "r2"]}, name="d", subject_col="s", record_col="r")
    store.ingest_source({"s": ["a", "d", "b"], "r": ["r0", "r3", "r4"]}, name="d", subject_col="s", record_col="r")
    v1, v2 = version_rows(store, "d@1"), version_rows(store, "d@2")
    assert (v1.version, v1.row_ids.to_pylist(), v1.ords.tolist(), v1.offsets.tolist()) == \
        ("d@1", ["r0", "r1", "r2"], [0, 1, 2], [0, 1, 2, 3])
    # d@2 keeps r0 (ordinal 0) and adds r3, r4 (ordinals 3, 4, from the second ingest's id table)
    assert (v2.row_ids.to_pylist(), v2.ords.tolist()) == (["r0", "r3", "r4"], [0, 3, 4])
    assert len(v2) == 3 and v2.first_ords().tolist() == [0, 3, 4] and v2.last_ords().tolist() == [0, 3, 4]
    with store.view() as view:
        # any order, repeats, across both id tables
        assert record_values(store, view, np.array([4, 0, 3, 4], np.uint32)).to_pylist() == ["r4", "r0", "r3", "r4"]
        assert record_values(store, view, np.array([], np.uint32)).to_pylist() == []
        owners = record_values(store, view, np.array([0, 1], np.uint32), "owner")
        assert len(owners) == 2 and str(owners.type) == "uint16"


def test_record_ids_across_three_id_tables(store):
    for i in range(3):  # each ingest adds two records: ordinals 2i, 2i + 1 in id table i
        store.ingest_source({"s": [f"a{i}", f"b{i}"], "r": [f"x{i}", f"y{i}"]}, name="d", subject_col="s",
                            record_col="r")
    with store.view() as view:
        got = record_values(store, view, np.array([5, 0, 3, 4, 1, 2], np.uint32)).to_pylist()
    assert got == ["y2", "x0", "y1", "x2", "y0", "x1"]


def test_composed_rows_map_to_their_records(store):
    store.ingest_source({"s": ["a", "b", "c", "d"], "r": ["r0", "r1", "r2", "r3"]}, name="d", subject_col="s",
                        record_col="r")
    # row x from r2 and r0; row y from r1; row z from r3, r1 and r2
    store.ingest_dataset({"row": ["x", "y", "z"], "src": [["r2", "r0"], ["r1"], ["r3", "r1", "r2"]]}, name="agg",
                         parents=["d@1"], kind="aggregate", sources={"d@1": "src"}, row_col="row")
    v = version_rows(store, "agg@1")
    assert v.row_ids.to_pylist() == ["x", "y", "z"] and v.offsets.tolist() == [0, 2, 3, 6]
    assert [sorted(v.ords[v.offsets[i]:v.offsets[i + 1]].tolist()) for i in range(3)] == [[0, 2], [1], [1, 2, 3]]
    assert v.first_ords().tolist() == [0, 1, 1] and v.last_ords().tolist() == [2, 1, 3]
    assert v.keep_mask(set()).tolist() == [True, True, True]
    assert v.keep_mask({2}).tolist() == [False, True, False]
    assert v.keep_mask(np.array([1], np.uint32)).tolist() == [True, False, False]
    assert v.keep_mask([9]).tolist() == [True, True, True]


def test_a_row_built_from_no_record():
    v = VersionRows("v@1", None, np.array([0, 0, 2, 2, 3]), np.array([7, 5, 9], np.uint32))
    v.row_ids = [0, 1, 2, 3]  # four rows; rows 0 and 2 hold no record
    assert v.first_ords().tolist() == [-1, 5, -1, 9] and v.last_ords().tolist() == [-1, 7, -1, 9]
    assert v.keep_mask({5}).tolist() == [True, False, True, True]
    empty = VersionRows("v@1", [0, 1], np.array([0, 0, 0]), np.array([], np.uint32))
    assert empty.first_ords().tolist() == [-1, -1] and empty.last_ords().tolist() == [-1, -1]


def test_record_ids_read_from_some_row_groups_of_each_id_table(store, monkeypatch):
    """Id tables written in row groups of 4: looking up a few records reads only their groups; the ids must be
    those of a whole-table read, in the order asked, across groups, tables and repeats."""
    import pyarrow.parquet as pq

    import expunge.lineage.store as store_mod

    monkeypatch.setattr(store_mod, "ROW_GROUP", 4)
    for i in range(3):  # ingest i adds records r{i}-0 … r{i}-9: ordinals 10i … 10i + 9, groups of 4, 4, 2
        store.ingest_source({"s": [f"s{i}-{k}" for k in range(10)], "r": [f"r{i}-{k}" for k in range(10)]},
                            name="d", subject_col="s", record_col="r")
    with store.view() as view:
        files = [f for (f,) in view.execute("SELECT ids_file FROM record_segments ORDER BY ord_start").fetchall()]
    assert [pq.ParquetFile(store.data_path(f)).metadata.num_row_groups for f in files] == [3, 3, 3]

    def want(ords):
        return [f"r{o // 10}-{o % 10}" for o in ords]

    for ords in ([0], [9], [8], [7, 4], [4, 9], [9, 5, 8], [13, 27, 5], [29, 0, 29, 11, 11], [3, 4, 8, 9, 10],
                 list(range(30))[::-1]):
        with store.view() as view:
            got = record_values(store, view, np.array(ords, np.uint32)).to_pylist()
        assert got == want(ords), ords
    # One record's id: its group alone is read, never a whole table.
    monkeypatch.setattr(pq.ParquetFile, "read", lambda *a, **k: (_ for _ in ()).throw(AssertionError("whole read")))
    with store.view() as view:
        assert record_values(store, view, np.array([18], np.uint32)).to_pylist() == ["r1-8"]
