"""The training capture (`expunge.lineage.torch`) at its boundaries: shard 0, slice 0 and step 0 are facts like
any other; a tracker records what it was given; a dataset's rows come sorted by id. Expected values are written
out by hand from the tiny data each test builds."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")

from expunge.errors import BadInput  # noqa: E402
from expunge.lineage.store import Store  # noqa: E402
from expunge.lineage.torch import RecordDataset, TrainingTracker, load_artifact  # noqa: E402

# Six records of three subjects, ingested in an order that is not their ids' order.
IDS = ["r5", "r10", "r2", "r1", "r30", "r4"]
OWNERS = ["a", "a", "b", "b", "c", "c"]


@pytest.fixture
def small(tmp_path):
    store = Store.init(tmp_path / "store")
    table = pa.table({"record_id": IDS, "customer_id": OWNERS, "f0": [float(i) for i in range(6)],
                      "y": [0, 1, 0, 1, 0, 1]})
    store.ingest_source(table, name="d", subject_col="customer_id", record_col="record_id")
    pq.write_table(table, tmp_path / "f.parquet")
    return store, tmp_path


def dataset(store, tmp_path, **kw):
    return RecordDataset(store, "d@1", tmp_path / "f.parquet", row_col="record_id", feature_cols=["f0"],
                         label_col="y", **kw)


def test_rows_come_sorted_by_id_whatever_the_ingest_order(small):
    store, tmp = small
    ds = dataset(store, tmp)
    assert ds.row_ids == sorted(IDS) == ["r1", "r10", "r2", "r30", "r4", "r5"]
    # Features and labels follow their rows: r1 is the 4th ingested (f0 = 3), r10 the 2nd (f0 = 1).
    assert ds.x[:, 0].tolist() == [3.0, 1.0, 2.0, 4.0, 5.0, 0.0]
    assert ds.y.tolist() == [1, 1, 0, 0, 1, 0]


def test_records_outside_the_version_name_it(small):
    store, tmp = small
    with pytest.raises(BadInput, match=r"^d@1: 1 of the records asked for are not in the version"):
        dataset(store, tmp, records=np.array([0, 99], np.uint32))


def track(store, tmp, shards, slices, steps, *, name="t", bound=True, **kw):
    """A tracked run over d@1's six rows (sorted by id): each row's shard, slice and the step it is consumed at."""
    ds = dataset(store, tmp)
    tr = TrainingTracker(store, name, inputs=[{"dataset": "d@1", "role": "train"}], out_dir=tmp / name, **kw)
    if bound:
        tr.bind(ds)
    with tr:
        if shards is not None:
            if bound:
                tr.assign_bound(np.asarray(shards), None if slices is None else np.asarray(slices))
            else:
                tr.assign_many(ds.row_ids, shards, slices)
        for step in sorted(set(steps)):
            rows = [i for i, s in enumerate(steps) if s == step]
            tr.consumed(torch.tensor(rows) if bound else [ds.row_ids[i] for i in rows], step=step)
        tr.checkpoint(torch.nn.Linear(1, 1), step=max(steps) + 1)
        tr.final_model(torch.nn.Linear(1, 1), "m")
    return ds, tr


def shards_of(store, subject, run="t"):
    (r,) = [r for r in store.impact([subject]).runs if r["id"] == run]
    return r["shards"], r["first_seen"]


@pytest.mark.parametrize("bound", [True, False])
def test_shard_zero_slice_zero_and_step_zero_are_recorded(small, bound):
    store, tmp = small
    # Sorted rows r1 r10 r2 r30 r4 r5 belong to b a b c c a. Shard 0 and slice 0 for a's rows (r10, r5),
    # step 0 for them too: every fact at its lower boundary.
    shards = [1, 0, 1, 2, 2, 0]
    slices = [1, 0, 1, 0, 1, 0]
    steps = [1, 0, 2, 3, 3, 0]
    track(store, tmp, shards, slices, steps, bound=bound)
    # One checkpoint, at step 4: a's rows were first seen at step 0, before it: no clean checkpoint.
    assert shards_of(store, "a") == ([{"shard": 0, "records": 2, "first_slice": 0}],
                                     {"clean_checkpoints": 0, "last_clean_step": None, "first_dirty_step": 4})
    assert shards_of(store, "b") == ([{"shard": 1, "records": 2, "first_slice": 1}],
                                     {"clean_checkpoints": 0, "last_clean_step": None, "first_dirty_step": 4})
    assert shards_of(store, "c")[0] == [{"shard": 2, "records": 2, "first_slice": 0}]


def test_every_row_first_seen_at_step_zero_is_recorded(small):
    """A full-batch trainer (the certified one) consumes every row at step 0: the only first step is 0."""
    store, tmp = small
    track(store, tmp, None, None, [0] * 6)
    for subject in "abc":
        assert shards_of(store, subject) == ([], {"clean_checkpoints": 0, "last_clean_step": None,
                                                  "first_dirty_step": 1})


def test_a_shard_or_slice_list_of_the_wrong_length_is_refused(small):
    store, tmp = small
    ds = dataset(store, tmp)
    for shards, slices in (([0] * 5, [0] * 6), ([0] * 6, [0] * 5)):
        tr = TrainingTracker(store, "bad", inputs=[{"dataset": "d@1", "role": "train"}], out_dir=tmp / "bad")
        tr.bind(ds)
        with pytest.raises(BadInput, match=f"6 rows, {len(shards)} shards, {len(slices)} slices"):
            tr.assign_bound(np.asarray(shards), np.asarray(slices))


def test_the_tracker_records_its_name_shards_slices_and_checkpoint_names(small):
    store, tmp = small
    ds = dataset(store, tmp)
    tr = TrainingTracker(store, "named", inputs=[{"dataset": "d@1", "role": "train"}], out_dir=tmp / "n",
                         shards=3, slices=2)
    assert tr.name == "named"
    tr.bind(ds)
    with tr:
        tr.consumed(torch.arange(6))
        p = tr.checkpoint(torch.nn.Linear(1, 1), shard=2, slice=1)
        q = tr.checkpoint(torch.nn.Linear(1, 1))
        tr.final_model(torch.nn.Linear(1, 1), "m")
    assert p.name == "ckpt-step1-shard2-slice1.pt" and q.name == "ckpt-step1.pt"
    with store.read() as con:
        assert con.execute("SELECT n_shards, n_slices FROM runs WHERE name = 'named'").fetchone() == (3, 2)


def test_per_row_calls_mixed_with_positions_keep_both(small):
    """A trainer that assigns shards by position, then names rows in `consumed`: both kinds of facts land."""
    store, tmp = small
    ds = dataset(store, tmp)
    tr = TrainingTracker(store, "mixed", inputs=[{"dataset": "d@1", "role": "train"}], out_dir=tmp / "x")
    tr.bind(ds)
    with tr:
        tr.assign_bound(np.array([1, 0, 1, 2, 2, 0]), np.array([0, 0, 0, 0, 0, 0]))
        tr.consumed(["r10", "r5"], step=0)   # a's rows by id
        tr.consumed(torch.tensor([0, 2, 3, 4]), step=1)
        tr.checkpoint(torch.nn.Linear(1, 1), step=1)
        tr.final_model(torch.nn.Linear(1, 1), "m")
    assert shards_of(store, "a", "mixed") == ([{"shard": 0, "records": 2, "first_slice": 0}],
                                              {"clean_checkpoints": 0, "last_clean_step": None,
                                               "first_dirty_step": 1})
    assert shards_of(store, "c", "mixed") == ([{"shard": 2, "records": 2, "first_slice": 0}],
                                              {"clean_checkpoints": 1, "last_clean_step": 1,
                                               "first_dirty_step": None})


def test_a_file_that_is_not_torch_is_named_so(tmp_path):
    path = tmp_path / "junk.pt"
    import hashlib

    for junk in (b"", b"PK\x03\x04 a zip header, then nothing a zip holds"):
        path.write_bytes(junk)
        # Its hash checks out; its content is no torch file at all (not one holding foreign objects).
        with pytest.raises(Exception, match=r"\(not a torch file\); refusing to load it$"):
            load_artifact(path, hashlib.sha256(junk).hexdigest())


def test_rows_assigned_but_never_consumed_keep_their_shard_and_slice(small):
    """A shard or slice is a fact of its own, also for a row no batch took (as the per-row path records it):
    a's rows (r10, r5) are dealt to shard 0, slice 0 and never consumed; b's are consumed at step 0."""
    import json

    from expunge.lineage.facts import RunFacts

    store, tmp = small
    ds = dataset(store, tmp)

    def run(name, shards, slices):
        tr = TrainingTracker(store, name, inputs=[{"dataset": "d@1", "role": "train"}], out_dir=tmp / name)
        tr.bind(ds)
        with tr:
            tr.assign_bound(np.array(shards), None if slices is None else np.array(slices))
            tr.consumed(torch.tensor([0, 2]), step=0)  # r1, r2: b's
            tr.final_model(torch.nn.Linear(1, 1), "m")
        with store.read() as con:
            f, i = con.execute("SELECT facts_file, facts_index FROM runs WHERE name = ?", [name]).fetchone()
        return RunFacts(store.data_path(f), json.loads(i))

    run("dealt", [1, 0, 1, -1, -1, 0], [1, 0, 1, -1, -1, 0])
    assert shards_of(store, "a", "dealt") == ([{"shard": 0, "records": 2, "first_slice": 0}], None)
    assert shards_of(store, "c", "dealt") == ([], None)  # c's rows: trained on (the input), no fact at all
    run("sharded", [1, 0, 1, -1, -1, 0], None)  # shards only, no slices
    assert shards_of(store, "a", "sharded") == ([{"shard": 0, "records": 2, "first_slice": None}], None)
    # A slice without a shard is recorded too: ingest ordinals r5 = 0, r10 = 1, r2 = 2, r1 = 3.
    facts = run("sliced", [-1, -1, -1, -1, -1, -1], [-1, 0, -1, -1, -1, 0])
    assert sorted(facts.records) == [0, 1, 2, 3]
