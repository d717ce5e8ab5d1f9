"""Survivors of the mutation run over lineage/forget.py, killed by tests whose expected values are written
out by hand (which rows of a small file must go, where the cleaned copy must land)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from expunge.lineage.store import Store


def _source(tmp_path, columns: dict) -> tuple[Store, object]:
    store = Store.init(tmp_path / "store")
    src = tmp_path / "people.parquet"
    pq.write_table(pa.table(columns), src)
    store.ingest_source(src, name="people", subject_col="customer", record_col="row")
    return store, src


def test_cleaned_file_drops_by_the_id_column_not_an_earlier_unique_column(tmp_path):
    # `seq` is unique, one value per row, and comes before the id column `row`, but its values are not the
    # version's row ids: the cleaned copy must drop by `row` (a column unique *or* made of ids is not enough).
    cols = {"seq": [10, 11, 12, 13, 14], "customer": ["ann", "bob", "ann", "cy", "bob"],
            "row": ["a", "b", "c", "d", "e"]}
    store, src = _source(tmp_path, cols)
    res = store.forget_subjects(store.hasher.hash_many(["ann"]), "req-1")
    (cleaned,) = res["cleaned_versions"]
    out = pq.read_table(cleaned["file"])
    # By hand: ann owns rows a and c (seq 10 and 12).
    assert out.to_pydict() == {"seq": [11, 13, 14], "customer": ["bob", "cy", "bob"], "row": ["b", "d", "e"]}
    assert cleaned["rows_dropped"] == 2 and res["not_rewritten"] == []


def test_a_file_changed_since_ingest_to_repeat_an_id_is_not_cleaned(tmp_path):
    # After the ingest, the file was edited: `ref` now holds only row ids but with a repeat (and one missing),
    # so it no longer names one row each. With no column that does, the file is listed as not rewritten,
    # rather than cleaned by a column that merely holds ids (or is merely unique, like `row`).
    store = Store.init(tmp_path / "store")
    store.ingest_source({"customer": ["ann", "bob", "cy"], "row": ["a", "b", "c"]}, name="people",
                        subject_col="customer", record_col="row")
    f = tmp_path / "pick.parquet"
    pq.write_table(pa.table({"ref": ["a", "b", "c"], "row": ["x", "y", "z"]}), f)
    store.ingest_dataset(f, name="pick", parents=["people@1"], kind="filter", record_col="ref")
    pq.write_table(pa.table({"ref": ["a", "a", "c"], "row": ["x", "y", "z"]}), f)
    res = store.forget_subjects(store.hasher.hash_many(["ann"]), "req-1")
    reasons = {n["version"]: n["reason"] for n in res["not_rewritten"]}
    assert "pick@1" in reasons and "no longer matches" in reasons["pick@1"], res
    assert [c["file"] for c in res["cleaned_versions"] if c["from"] == "pick@1"] == [None]


def test_cleaned_copies_go_to_the_directory_asked_for(tmp_path):
    cols = {"customer": ["ann", "bob"], "row": ["a", "b"]}
    store, src = _source(tmp_path, cols)
    out_dir = tmp_path / "cleaned"
    out_dir.mkdir()
    res = store.forget_subjects(store.hasher.hash_many(["bob"]), "req-7", cleaned_dir=out_dir)
    (cleaned,) = res["cleaned_versions"]
    assert cleaned["file"] == str(out_dir / "people.cleaned-req-7.parquet")
    assert not (tmp_path / "people.cleaned-req-7.parquet").exists()
    assert pq.read_table(cleaned["file"]).to_pydict() == {"customer": ["ann"], "row": ["a"]}


def test_files_rewritten_counts_every_file_by_hand(tmp_path):
    # One source version from a file, one run trained on a subset of it. Forgetting ann rewrites, by hand:
    # the version's bitmap (1), the run input's subset (1), the record-id table (1), the subject segment
    # (1: bob and cy stay in it) and the cleaned copy of the source file (1) = 5.
    cols = {"customer": ["ann", "bob", "cy", "ann"], "row": ["a", "b", "c", "d"]}
    store, src = _source(tmp_path, cols)
    store.record_run({"run": {"name": "r1", "inputs": [{"dataset": "people@1", "rows": ["a", "b"]}]}})
    res = store.forget_subjects(store.hasher.hash_many(["ann"]), "req-1")
    assert res["records_removed"] == 2 and res["rows_removed"] == {"people@1": 2}
    assert res["files_rewritten"] == 5, res
