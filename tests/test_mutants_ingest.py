"""Survivors of the mutation run over lineage/ingest.py, killed by tests on lineages small enough to write out by
hand: a derived version may not take a source dataset's name, and a subset of a composed version keeps the map
from its rows to the records they were built from."""

from __future__ import annotations

import pytest

from expunge.errors import BadInput


@pytest.fixture
def two_sources(store):
    store.ingest_source({"s": ["ann", "bob", "cy"], "r": ["r0", "r1", "r2"]}, name="a", subject_col="s",
                        record_col="r")
    store.ingest_source({"s": ["dee"], "r": ["q0"]}, name="b", subject_col="s", record_col="r")
    return store


def test_a_derived_version_may_not_take_a_source_datasets_name(two_sources):
    with pytest.raises(BadInput, match="dataset 'b' is a source dataset; a derived version needs another name"):
        two_sources.ingest_dataset({"r": ["r0"]}, name="b", parents=["a@1"], kind="filter", record_col="r")
    with two_sources.read() as con:
        assert con.execute("SELECT count(*) FROM dataset_versions").fetchall() == [(2,)]  # nothing written


def test_a_subset_of_a_composed_version_keeps_its_rows_records(two_sources):
    st = two_sources
    # g0 is built from ann's r0 and bob's r1, g1 from cy's r2, g2 from bob's r1 alone.
    st.ingest_dataset({"g": ["g0", "g1", "g2"], "members": [["r0", "r1"], ["r2"], ["r1"]]}, name="agg",
                      parents=["a@1"], kind="aggregate", sources={"a@1": "members"}, row_col="g")
    st.ingest_dataset({"g": ["g0", "g2"]}, name="pick", parents=["agg@1"], kind="filter", record_col="g")
    rows = st.rows("pick@1")
    assert rows.row_ids.to_pylist() == ["g0", "g2"]
    # By hand: pick@1's rows hold r0 (ann) and r1 (bob), not r2 (cy).
    versions = {s: {v["id"] for v in st.impact([s]).datasets} for s in ("ann", "bob", "cy")}
    assert versions == {"ann": {"a@1", "agg@1", "pick@1"}, "bob": {"a@1", "agg@1", "pick@1"},
                        "cy": {"a@1", "agg@1"}}
    assert {v["id"]: v["rows"] for v in st.impact(["bob"]).datasets}["pick@1"] == 2


def test_row_ids_that_are_subject_ids_are_refused_with_the_way_out(two_sources):
    # Each row's id is the subject id of the record it was built from: refused, and the message says what to do.
    with pytest.raises(BadInput) as exc:
        two_sources.ingest_dataset({"owner": ["ann", "bob", "cy"], "members": [["r0"], ["r1"], ["r2"]]}, name="agg",
                                   parents=["a@1"], kind="aggregate", sources={"a@1": "members"}, row_col="owner")
    assert str(exc.value).endswith(
        "the row ids in column 'owner' are the subject ids of their rows' records (in 3 of 3 rows checked): that "
        "would put raw subject ids into the store; give the rows ids of their own, or leave --row-col out (rows "
        "are then numbered)")
