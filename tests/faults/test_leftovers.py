"""A writer killed between renaming its catalog into place and switching CURRENT leaves a whole generation
nobody committed, and the data files it wrote (record ids among them). The next open, or the next write,
removes both; an `init` killed before its marker can be run again."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from expunge.lineage.store import Store
from tests.faults.harness import KILLED, assert_whole, cli, committed, record


def _csv(path, start: int, n: int, subject="cust-{:04d}"):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["customer_id", "record_id"])
        for i in range(start, start + n):
            w.writerow([subject.format(i % 37), f"rec-{i:06d}"])
    return path


@pytest.fixture
def store(tmp_path):
    st = Store.init(tmp_path / "st")
    st.ingest_source(str(_csv(tmp_path / "a.csv", 0, 50)), name="src", subject_col="customer_id",
                     record_col="record_id")
    return st


def _kill_between_rename_and_switch(store, tmp_path):
    """Ingest 50 new records, killed after the rename; returns the leftover files and their record ids."""
    before = {p.name for p in store.data_dir.iterdir()}
    gen = store.generation()
    res = cli(["ingest", "source", _csv(tmp_path / "b.csv", 1000, 50), "--name", "src", "--subject-col",
               "customer_id", "--record-col", "record_id", "--store", store.root], fault="write:after-rename")
    assert res.returncode == KILLED, res.stderr
    assert store.generation() == gen  # CURRENT still names the old generation ...
    newer = [p.name for p in store.root.glob("catalog-*.duckdb") if p.name > gen]
    assert newer, "the kill should leave the renamed generation"  # ... and the next one is there, whole
    left = {p.name for p in store.data_dir.iterdir()} - before
    ids = set()
    for f in left:
        if f.endswith(".parquet"):
            t = pq.read_table(store.data_dir / f)
            if "record_id" in t.column_names:
                ids |= set(t.column("record_id").to_pylist())
    assert left and ids >= {f"rec-{i:06d}" for i in range(1000, 1050)}  # the uncommitted write's record ids
    return before, left


def test_open_sweeps_what_a_write_killed_after_its_rename_left(store, tmp_path):
    expected = committed(store.root)
    before, left = _kill_between_rename_and_switch(store, tmp_path)
    st = Store.open(store.root)  # a reader's open: it takes the free writer lock for the sweep
    assert {p.name for p in st.data_dir.iterdir()} == before
    assert_whole(store.root)
    assert committed(store.root) == expected
    assert st.impact(["cust-0001"]).records == sum(1 for i in range(50) if i % 37 == 1)
    record("kill", "ingest source", "write:after-rename", "swept at open", files=len(left))


def test_next_write_sweeps_it_when_open_could_not(store, tmp_path):
    """A store object opened before the crash (a long-lived service) sweeps at its next write."""
    before, left = _kill_between_rename_and_switch(store, tmp_path)
    # `store` was opened before the kill: no open ran since.
    store.ingest_source(str(_csv(tmp_path / "c.csv", 2000, 5)), name="other", subject_col="customer_id",
                        record_col="record_id")
    now = {p.name for p in store.data_dir.iterdir()}
    assert not (now & left)
    assert before <= now
    assert_whole(store.root)
    # The killed write's records were never committed: only the 50 + 5 records are known.
    assert Store.open(store.root).stats()["records"] == 55
    record("kill", "ingest source", "write:after-rename", "swept at next write", files=len(left))


def test_open_leaves_a_live_writers_files_alone(store, tmp_path):
    """A generation newer than CURRENT while another process holds the writer lock is work in progress."""
    import textwrap

    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import shutil, time
        from expunge.lineage.store import Store
        st = Store.open({str(store.root)!r})
        with st.write() as txn:
            name = txn.write_bytes(".roar", b"in progress")
            shutil.copy(st.root / st.generation(), st.root / "catalog-999999.duckdb")
            print(name, flush=True)
            time.sleep(30)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        name = holder.stdout.readline().strip()
        assert name
        Store.open(store.root)
        assert (store.data_dir / name).exists() and (store.root / "catalog-999999.duckdb").exists()
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    Store.open(store.root)  # the holder is dead now: its files are leftovers
    assert not (store.data_dir / name).exists() and not (store.root / "catalog-999999.duckdb").exists()
    assert_whole(store.root)


def test_init_killed_can_be_run_again(tmp_path, key_dir):
    root, point = tmp_path / "st", "init:before-marker"
    res = cli(["init", "--store", root], fault=point)
    assert res.returncode == KILLED, res.stderr
    assert not (root / "STORE").exists() and any(root.iterdir())
    keys_before = set(os.listdir(key_dir))
    res = cli(["init", "--store", root])
    assert res.returncode == 0, res.stderr
    assert_whole(root)
    st = Store.open(root)
    # The key the killed init made for its store id is gone with it; the new store's key is there.
    assert st.key.path.exists() and len(set(os.listdir(key_dir)) - keys_before) <= 1
    record("kill", "init", point, "rerun completed")


def test_init_never_clears_a_directory_with_other_files(tmp_path):
    root = tmp_path / "st"
    root.mkdir()
    (root / "CURRENT").write_text("catalog-000001.duckdb")
    (root / "notes.txt").write_text("mine")
    res = cli(["init", "--store", root])
    assert res.returncode == 2 and "not empty" in res.stderr
    assert (root / "notes.txt").read_text() == "mine"
