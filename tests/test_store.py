"""Store invariants: pseudonymity, atomic writes, one writer, growth by appending."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest

from expunge.errors import SecretMismatch, StoreBusy
from expunge.lineage.store import Store
from tests.conftest import all_store_bytes


def test_no_raw_subject_ids_anywhere(tmp_path):
    from expunge.demo import build_demo

    store, subject = build_demo(tmp_path)
    owners = set(pa.table(__import__("expunge.synth", fromlist=["x"]).customers(400, seed=1))
                 .column("customer_id").to_pylist())
    assert subject in owners
    blob = all_store_bytes(store.root)
    leaked = [s for s in owners if s.encode() in blob]
    assert not leaked, f"raw subject ids found in the store: {leaked[:5]}"
    # The ids really are what the store answers to.
    assert store.impact([subject]).records > 0


def test_secret_from_env_and_mismatch(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPUNGE_SECRET", "a" * 64)
    st = Store.init(tmp_path / "s")
    assert not (tmp_path / "s" / "secret.key").exists()
    st.ingest_source({"s": ["u"], "r": ["1"]}, name="d", subject_col="s", record_col="r")
    assert Store.open(tmp_path / "s").impact(["u"]).records == 1
    monkeypatch.setenv("EXPUNGE_SECRET", "b" * 64)
    with pytest.raises(SecretMismatch):
        Store.open(tmp_path / "s")


def test_key_file_is_private_and_outside_the_store(store):
    assert not store.key.inside_store and not str(store.key.path).startswith(str(store.root))
    mode = os.stat(store.key.path).st_mode & 0o777
    assert mode == 0o600


def test_failed_write_leaves_previous_state(store):
    store.ingest_source({"s": ["a", "b"], "r": ["1", "2"]}, name="d", subject_col="s", record_col="r")
    before = (store.generation(), sorted(os.listdir(store.data_dir)))
    with pytest.raises(RuntimeError):
        with store.write() as txn:
            txn.write_bytes(".junk", b"half")
            txn.con.execute("DELETE FROM dataset_versions")
            raise RuntimeError("crash")
    assert (store.generation(), sorted(os.listdir(store.data_dir))) == before
    assert store.impact(["a"]).records == 1


def test_killed_writer_leaves_readable_store(store):
    store.ingest_source({"s": ["a", "b"], "r": ["1", "2"]}, name="d", subject_col="s", record_col="r")
    # A writer that dies (no cleanup at all) halfway through a big ingest.
    code = textwrap.dedent(f"""
        import os
        from expunge.lineage.store import Store
        from expunge.lineage import ingest
        st = Store.open({str(store.root)!r})
        real = ingest._insert_version
        def die(*a, **k):
            real(*a, **k)   # catalog copy changed, data files written ...
            os._exit(9)     # ... and the process dies before the switch
        ingest._insert_version = die
        st.ingest_source({{"s": ["c"] * 1000, "r": [str(i) for i in range(10, 1010)]}}, name="d",
                         subject_col="s", record_col="r")
    """)
    env = dict(os.environ, EXPUNGE_SECRET="")
    env.pop("EXPUNGE_SECRET")
    proc = subprocess.run([sys.executable, "-c", code], env=env)
    assert proc.returncode == 9
    st = Store.open(store.root)
    assert st.impact(["c"]).records == 0 and st.impact(["a"]).records == 1
    assert st.stats()["dataset_versions"] == 1
    # The next write collects what the dead writer left behind, and works.
    st.ingest_source({"s": ["c"], "r": ["10"]}, name="d", subject_col="s", record_col="r")
    assert st.impact(["c"]).records == 1
    assert not list(store.root.glob("*.tmp"))
    with st.read() as con:
        live = {f for (f,) in con.execute("SELECT bitmap_file FROM dataset_versions UNION ALL SELECT ids_file FROM "
                                          "record_segments UNION ALL SELECT file FROM subject_segments").fetchall()}
    assert set(os.listdir(st.data_dir)) == live


def test_second_writer_is_refused(store):
    store.ingest_source({"s": ["a"], "r": ["1"]}, name="d", subject_col="s", record_col="r")
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from expunge.lineage.store import Store
            st = Store.open({str(store.root)!r})
            with st.write():
                print("holding", flush=True)
                time.sleep(30)
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(StoreBusy, match="store is busy"):
            store.ingest_source({"s": ["b"], "r": ["2"]}, name="d", subject_col="s", record_col="r")
        # Readers are never blocked by the writer.
        assert store.impact(["a"]).records == 1
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    store.ingest_source({"s": ["b"], "r": ["2"]}, name="d", subject_col="s", record_col="r")
    assert store.impact(["b"]).records == 1


def test_appending_day_by_day_matches_brute_force(store):
    rng = np.random.default_rng(0)
    owner: dict[str, str] = {}
    versions: dict[str, set] = {}
    counter = 0
    current: list[str] = []
    for day in range(12):
        keep = [r for r in current if rng.random() < 0.9]
        new = [f"r{counter + i}" for i in range(int(rng.integers(1, 60)))]
        counter += len(new)
        for r in new:  # new records of known and new subjects
            owner[r] = f"s{int(rng.integers(0, 40 + 5 * day))}"
        current = keep + new
        info = store.ingest_source({"s": [owner[r] for r in current], "r": current}, name="events",
                                   subject_col="s", record_col="r")
        versions[info.id] = set(current)
        sample = [r for r in current if rng.random() < 0.3] or current[:1]
        info = store.ingest_dataset({"r": sample}, name="sample", parents=[info.id], kind="sample", record_col="r")
        versions[info.id] = set(sample)
    with store.read() as con:
        n_segments = con.execute("SELECT count(*) FROM subject_segments").fetchall()[0][0]
    assert n_segments <= 5  # merged as it grows, not one per ingest
    # Merged-away segments are deleted once no kept generation can read them.
    referenced = set()
    for cat in store.root.glob("catalog-*.duckdb"):
        import duckdb

        con = duckdb.connect(str(cat), read_only=True)
        for table, col in (("dataset_versions", "bitmap_file"), ("record_segments", "ids_file"),
                           ("subject_segments", "file"), ("retired_files", "file")):
            referenced |= {f for (f,) in con.execute(f"SELECT {col} FROM {table}").fetchall()}
        con.close()
    assert set(os.listdir(store.data_dir)) == referenced
    subjects = sorted(set(owner.values()))
    for s in subjects + ["none"]:
        mine = {r for r, o in owner.items() if o == s}
        got = store.impact([s])
        assert got.records == len(mine)
        assert {d["id"]: d["records"] for d in got.datasets} == {
            v: len(rs & mine) for v, rs in versions.items() if rs & mine}
    batch = subjects[::3]
    mine = {r for r, o in owner.items() if o in batch}
    assert store.impact(batch).records == len(mine)


def test_readers_see_new_generation(store):
    store.ingest_source({"s": ["a"], "r": ["1"]}, name="d", subject_col="s", record_col="r")
    reader = Store.open(store.root)
    assert reader.impact(["a"]).records == 1
    store.ingest_source({"s": ["a", "a"], "r": ["1", "2"]}, name="d", subject_col="s", record_col="r")
    assert reader.impact(["a"]).records == 2


def _hub_attached(root) -> list[str]:
    from expunge.lineage.store import _hub_connection

    cur = _hub_connection().cursor()
    try:
        return sorted(p for (p,) in cur.execute("SELECT path FROM duckdb_databases() WHERE path IS NOT NULL")
                      .fetchall() if str(root) in p)
    finally:
        cur.close()


def test_reads_reuse_an_attachment_until_the_generation_changes(store):
    """Reads keep the live catalog attached; a write's new generation replaces it (the old one detached)."""
    store.ingest_source({"s": ["a"], "r": ["1"]}, name="d", subject_col="s", record_col="r")
    gen = store.generation()
    for _ in range(3):
        with store.read() as con:
            assert con.execute("SELECT count(*) FROM dataset_versions").fetchone()[0] == 1
    assert _hub_attached(store.root) == [str(store.root / gen)]
    store.ingest_source({"s": ["a", "b"], "r": ["1", "2"]}, name="d", subject_col="s", record_col="r")
    with store.read() as con:
        assert con.execute("SELECT count(*) FROM dataset_versions").fetchone()[0] == 2
    assert _hub_attached(store.root) == [str(store.root / store.generation())] != [str(store.root / gen)]


def test_a_catalog_replaced_under_the_same_name_is_read_afresh(tmp_path):
    """A store restored from a copy can name the same generation file as before with other bytes: a read
    must not answer from the attachment of the file it replaced."""
    import shutil

    a, b = Store.init(tmp_path / "a"), Store.init(tmp_path / "b")
    a.ingest_source({"s": ["u"], "r": ["1"]}, name="d", subject_col="s", record_col="r")
    b.ingest_source({"s": ["u", "v"], "r": ["1", "2"]}, name="other", subject_col="s", record_col="r")
    assert a.generation() == b.generation()
    with a.read() as con:
        assert con.execute("SELECT name FROM datasets").fetchall() == [("d",)]
    shutil.rmtree(a.root)
    shutil.copytree(b.root, a.root)
    with Store.open(a.root).read() as con:
        assert con.execute("SELECT name FROM datasets").fetchall() == [("other",)]


def test_a_purge_detaches_the_generations_it_deletes(store):
    from expunge.lineage.rekey import rotate

    store.ingest_source({"s": ["a", "b"], "r": ["1", "2"]}, name="d", subject_col="s", record_col="r")
    with store.read():
        pass
    rotate(store)
    assert _hub_attached(store.root) == []  # nothing of the purged generations held open
    assert store.impact(["a"]).records == 1


def test_threads_read_while_one_writes(store):
    """Every read and write attaches its catalog generation to one in-process DuckDB instance."""
    import threading

    store.ingest_source({"s": ["a", "b"], "r": ["1", "2"]}, name="d", subject_col="s", record_col="r")
    errors, seen = [], []

    def reader():
        try:
            st = Store.open(store.root)
            for _ in range(30):
                seen.append(st.impact(["a"]).records)
                with st.view() as v:
                    v.resolve_version("d")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for k in range(3, 9):
        ids = ["1"] + [f"x{i}" for i in range(3, k + 1)]
        store.ingest_source({"s": ["a"] * len(ids), "r": ids}, name="d", subject_col="s", record_col="r")
    for t in threads:
        t.join()
    assert not errors, errors
    assert set(seen) <= set(range(1, 8)) and store.impact(["a"]).records == 7  # 1, x3 … x8


def test_forked_child_reads_with_its_own_instance(store):
    import multiprocessing

    store.ingest_source({"s": ["a", "b"], "r": ["1", "2"]}, name="d", subject_col="s", record_col="r")
    assert store.impact(["a"]).records == 1  # the parent's instance exists before the fork
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        assert pool.apply(_records_of, (str(store.root), "b")) == 1
    assert store.impact(["b"]).records == 1


def _records_of(root: str, subject: str) -> int:
    return Store.open(root).impact([subject]).records


def test_forked_children_exit_cleanly(tmp_path):
    """os.fork() children that exit normally, having used the store or not, do not crash on the
    parent's DuckDB instances (catalog and subject-digest cache), which did not survive the fork."""
    code = textwrap.dedent(f"""
        import os, sys
        from expunge.lineage.store import Store
        st = Store.init({str(tmp_path / "st")!r})
        type(st.hasher).BULK = 2  # also create the bulk digest cache before forking
        for _ in range(2):
            st.ingest_source({{"s": ["a", "b", "c"], "r": ["1", "2", "3"]}}, name="d", subject_col="s",
                             record_col="r")
        assert st.impact(["a"]).records == 1
        codes = []
        for mode in ("idle", "read", "write"):
            pid = os.fork()
            if pid == 0:
                if mode == "read":
                    assert Store.open(st.root).impact(["b"]).records == 1
                if mode == "write":
                    st.ingest_source({{"s": ["e", "f", "g"], "r": ["x", "y", "z"]}}, name="e", subject_col="s",
                                     record_col="r")
                sys.exit(0)
            codes.append(os.waitpid(pid, 0)[1])
        print(codes)
        assert st.impact(["e"]).records == 1
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[0, 0, 0]", proc.stdout + proc.stderr


def test_writes_recover_from_a_failed_checkpoint(tmp_path):
    """A write whose catalog checkpoint fails (here: the file size limit) is refused, nothing changes,
    and later writes in the same process work (the failed copy is detached, not left attached)."""
    code = textwrap.dedent(f"""
        import resource
        from expunge.lineage.store import Store
        st = Store.init({str(tmp_path / "st")!r})
        st.ingest_source({{"s": ["a"], "r": ["1"]}}, name="d", subject_col="s", record_col="r")
        size = max(p.stat().st_size for p in st.root.glob("catalog-*"))
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 30000, resource.RLIM_INFINITY))
        try:
            with st.write() as txn:
                for i in range(5):
                    txn.con.execute(f"CREATE TABLE big{{i}} AS SELECT range AS a, md5(range::varchar) b FROM range(200)")
        except Exception as exc:
            print("refused:", type(exc).__name__)
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        for k in range(2):
            st.ingest_source({{"s": ["b"], "r": [str(k + 2)]}}, name="d", subject_col="s", record_col="r")
        print(st.impact(["b"]).records, st.stats()["dataset_versions"])
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["refused: StoreUnwritable", "2 3"], proc.stdout + proc.stderr


def test_record_runs_is_all_or_nothing(store):
    store.ingest_source({"s": ["a", "b"], "r": ["1", "2"]}, name="d", subject_col="s", record_col="r")
    ok = {"run": {"name": "r1", "inputs": [{"dataset": "d"}]}, "models": [{"name": "m", "sha256": "0" * 64}]}
    bad = {"run": {"name": "r2", "inputs": [{"dataset": "nope"}]}}
    from expunge.errors import UnknownReference

    with pytest.raises(UnknownReference):
        store.record_runs([ok, bad])
    assert store.stats()["runs"] == 0 and store.impact(["a"]).runs == []
    res = store.record_runs([ok, {"run": {"name": "r2", "inputs": [{"dataset": "d", "rows": ["2"]}]}}])
    assert [r["run"]["id"] for r in res] == ["r1", "r2"]
    assert [r["id"] for r in store.impact(["a"]).runs] == ["r1"]
    assert [r["id"] for r in store.impact(["b"]).runs] == ["r1", "r2"]


def test_bulk_subject_hashing_matches_one_by_one(store, monkeypatch):
    monkeypatch.setattr(type(store.hasher), "BULK", 3)
    subjects = pa.array([f"s{i % 7}" for i in range(40)] + ["0042", "42", " 42"])
    first = store.hasher.hash_column(subjects)           # misses, then cached
    again = store.hasher.hash_column(subjects)           # all from the cache
    expected = np.array([[int.from_bytes(store.hasher.digest(s)[:8], "big"),
                          int.from_bytes(store.hasher.digest(s)[8:], "big")] for s in subjects.to_pylist()],
                        dtype=np.uint64)
    assert (first == expected).all() and (again == expected).all()
    # Subjects known to miss the cache (the bulk ingest path): hashed, then found in the cache.
    fresh = pa.array([f"t{i % 5}" for i in range(12)])
    want = np.array([[int.from_bytes(store.hasher.digest(s)[:8], "big"),
                      int.from_bytes(store.hasher.digest(s)[8:], "big")] for s in fresh.to_pylist()], dtype=np.uint64)
    assert (store.hasher.hash_uncached(fresh) == want).all()
    con = store.hasher.bulk_connection()
    assert con.execute("SELECT count(*) FROM cache WHERE s LIKE 't%'").fetchall()[0][0] == 5


def test_bulk_ingest_path_matches_small_path(tmp_path, monkeypatch):
    """The large-version path (one DuckDB query for digests and known records) gives the same store answers."""
    rows = [(f"r{i}", f"s{i % 13}") for i in range(300)]
    answers = []
    for bulk in (10**9, 5):
        st = Store.init(tmp_path / f"b{bulk}")
        monkeypatch.setattr(type(st.hasher), "BULK", bulk)
        st.ingest_source({"s": [s for _, s in rows[:200]], "r": [r for r, _ in rows[:200]]}, name="d",
                         subject_col="s", record_col="r")
        st.ingest_source({"s": [s for _, s in rows[100:]], "r": [r for r, _ in rows[100:]]}, name="d",
                         subject_col="s", record_col="r")
        with pytest.raises(Exception, match="different subject"):
            st.ingest_source({"s": ["s1"] * 20, "r": [f"r{i}" for i in range(20)]}, name="d",
                             subject_col="s", record_col="r")
        with pytest.raises(Exception, match="duplicate record id in column 'r': row 1 repeats"):
            st.ingest_source({"s": ["s5"] * 10, "r": ["r5"] * 10}, name="d", subject_col="s", record_col="r")
        answers.append([(d["id"], d["records"]) for s in ("s0", "s7", "s12") for d in st.impact([s]).datasets])
    assert answers[0] == answers[1]
    assert sum(n for _, n in answers[0]) > 0


def test_rows_of_versions_and_exclusion(store):
    store.ingest_source({"s": ["a", "b", "c", "a"], "r": ["r1", "r2", "r3", "r4"]}, name="d",
                        subject_col="s", record_col="r")
    store.ingest_source({"s": ["a", "c", "d"], "r": ["r4", "r3", "r5"]}, name="d", subject_col="s", record_col="r")
    store.ingest_dataset({"r": ["r3", "r4"]}, name="f", parents=["d@2"], kind="filter", record_col="r")
    store.ingest_dataset({"row": ["x", "y"], "src": [["r4", "r5"], ["r3"]]}, name="j", parents=["d@2"],
                         kind="join", sources={"d@2": "src"}, row_col="row")
    assert sorted(store.rows("d@1").row_ids.to_pylist()) == ["r1", "r2", "r3", "r4"]
    assert sorted(store.rows("d").row_ids.to_pylist()) == ["r3", "r4", "r5"]
    f = store.rows("f@1")
    assert sorted(f.row_ids.to_pylist()) == ["r3", "r4"]
    j = store.rows("j@1")
    assert j.row_ids.to_pylist() == ["x", "y"]
    a_records = store.records_of_subjects(["a"])
    assert len(a_records) == 2  # r1, r4
    assert j.keep_mask(a_records).tolist() == [False, True]  # row x was built from r4
    assert sorted(np.asarray(f.row_ids)[f.keep_mask(a_records)].tolist()) == ["r3"]


def test_store_of_another_format_is_refused(store):
    import duckdb

    from expunge.errors import StoreNotFound

    # Rewrite the live catalog as if an older expunge had made it.
    path = store.root / store.generation()
    con = duckdb.connect(str(path))
    con.execute("UPDATE meta SET value = '1' WHERE key = 'format'")
    con.close()
    from expunge.lineage.catalog import FORMAT

    with pytest.raises(StoreNotFound, match=f"has format 1; this expunge reads format {FORMAT}"):
        Store.open(store.root)


def test_segment_merge_equals_building_from_all_records():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from expunge.lineage import segments as seglib

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=60),
           st.lists(st.integers(1, 20), min_size=1, max_size=4))
    def check(owners, cuts):
        # Records in ordinal order; small hash ranges force shared `hi` halves and repeated subjects.
        hashes = np.array(owners, dtype=np.uint64).reshape(-1, 2)
        ords = np.arange(len(owners), dtype=np.uint32)
        bounds = sorted({min(c, len(owners)) for c in np.cumsum(cuts)} | {len(owners)})
        parts, lo = [], 0
        for b in bounds:
            if b > lo:
                parts.append(seglib.from_records(hashes[lo:b], ords[lo:b]))
                lo = b
        merged = seglib.merge(parts)
        whole = seglib.from_records(hashes, ords)
        for a, b in zip(merged, whole):
            assert np.array_equal(np.asarray(a), np.asarray(b))
        # Against plain Python: subjects sorted by (hi, lo), each with its ordinals ascending, also when
        # the records come in another order.
        ref: dict = {}
        for o, key in enumerate(owners):
            ref.setdefault(key, []).append(o)
        keys = sorted(ref)
        perm = np.random.default_rng(len(owners)).permutation(len(owners))
        for hi, lo, off, got in (whole, seglib.from_records(hashes[perm], ords[perm])):
            assert [(int(h), int(x)) for h, x in zip(hi, lo)] == keys
            assert [list(map(int, got[off[i]:off[i + 1]])) for i in range(len(keys))] == [ref[k] for k in keys]

    check()


def test_track_run_context_manager_records_facts(store):
    store.ingest_source({"s": ["a", "b", "c"], "r": ["1", "2", "3"]}, name="d", subject_col="s", record_col="r")
    with store.track_run("r1", inputs=["d@1"], trainer="pkg.mod:train", config={"lr": 0.1}) as run:
        run.set_facts(["1", "2", "3"], shard=[0, 1, None], slice=[1, 0, 0], first_step=[5, None, 2])
        run.add_checkpoint(step=3, path="ckpt", sha256="0" * 64)
        run.add_model("m", "m.pt", sha256="1" * 64)
    (a,) = store.impact(["a"]).runs
    assert a["shards"] == [{"shard": 0, "records": 1, "first_slice": 1}]
    assert a["first_seen"] == {"clean_checkpoints": 1, "last_clean_step": 3, "first_dirty_step": None}
    (c,) = store.impact(["c"]).runs
    assert c["shards"] == [] and c["first_seen"]["clean_checkpoints"] == 0
    assert store.impact(["b"]).runs[0]["first_seen"] is None  # its step was not recorded
    with pytest.raises(Exception, match="not rolled back"):
        with store.track_run("r2", inputs=["d@1"]):
            raise RuntimeError("not rolled back? it is: nothing recorded")
    assert store.stats()["runs"] == 1
