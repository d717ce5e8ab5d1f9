"""Forgetting subjects (lineage/forget.py): checked against a brute-force model of the same lineage.

The test keeps its own copy of every dataset version as rows of source record ids, computes what
each subject's impact must be before and after, and decodes every file of the store afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import jsonschema
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from pyroaring import BitMap

from expunge.lineage.facts import RunFacts
from expunge.lineage.segments import Segment
from expunge.lineage.store import Store
from expunge.schemas import load_schema

N_RECORDS, N_SUBJECTS = 300, 40


class World:
    """A store and the test's own model of it: version label → rows (each a list of record ids)."""

    def __init__(self, tmp_path: Path):
        rng = np.random.default_rng(7)
        self.dir = tmp_path
        self.store = Store.init(tmp_path / "store")
        self.rid = [f"r{i:04d}" for i in range(N_RECORDS)]
        self.cid = [f"cust-{int(s):03d}" for s in rng.integers(0, N_SUBJECTS, N_RECORDS)]
        self.owner = dict(zip(self.rid, self.cid))
        self.src = tmp_path / "customers.parquet"
        pq.write_table(pa.table({"customer": self.cid, "row": self.rid, "amount": np.arange(N_RECORDS)}), self.src)
        st = self.store
        st.ingest_source(self.src, name="customers", subject_col="customer", record_col="row")
        self.versions: dict[str, list[list[str]]] = {"customers@1": [[r] for r in self.rid]}
        # A filter from a CSV file (ids with leading zeros stay text), a second source version.
        keep = [r for i, r in enumerate(self.rid) if i % 3]
        self.filter_csv = tmp_path / "adults.csv"
        self.filter_csv.write_text("row,score\n" + "".join(f"{r},0{i}\n" for i, r in enumerate(keep)))
        st.ingest_dataset(self.filter_csv, name="adults", parents=["customers@1"], kind="filter", record_col="row")
        self.versions["adults@1"] = [[r] for r in keep]
        more = [f"r{i:04d}" for i in range(N_RECORDS, N_RECORDS + 20)]
        cid2 = [self.cid[i] for i in range(20)]
        self.owner.update(zip(more, cid2))
        st.ingest_source({"customer": self.cid[100:] + cid2, "row": self.rid[100:] + more}, name="customers",
                         subject_col="customer", record_col="row")
        self.versions["customers@2"] = [[r] for r in sorted(self.rid[100:] + more)]
        # An aggregate: groups of 1-3 records (mixed subjects), from a Parquet file with row ids.
        groups = [[self.rid[j] for j in rng.choice(N_RECORDS, int(rng.integers(1, 4)), replace=False)]
                  for _ in range(120)]
        self.agg_file = tmp_path / "agg.parquet"
        pq.write_table(pa.table({"gid": [f"g{i}" for i in range(len(groups))], "members": groups}), self.agg_file)
        st.ingest_dataset(self.agg_file, name="agg", parents=["customers@1"], kind="aggregate",
                          sources={"customers@1": "members"}, row_col="gid")
        self.versions["agg@1"] = [sorted(set(g)) for g in groups]
        self.group_ids = [f"g{i}" for i in range(len(groups))]
        # A subset of the filter held in memory only: its file cannot be rewritten.
        sub = keep[::2]
        st.ingest_dataset({"row": sub}, name="sample", parents=["adults@1"], kind="sample", record_col="row")
        self.versions["sample@1"] = [[r] for r in sub]
        # Runs: one on a row subset with facts, one on the aggregate.
        self.run_rows = keep[:80]
        st.record_run({"run": {"name": "train-a", "trainer": "pkg.mod:fit",
                               "inputs": [{"dataset": "adults@1", "rows": self.run_rows},
                                          {"dataset": "customers@2", "role": "eval"}],
                               "facts_dataset": "adults@1",
                               "facts": {"rows": self.run_rows, "shard": [i % 4 for i in range(80)],
                                         "slice": [i % 2 for i in range(80)]}},
                       "models": [{"name": "clf", "sha256": "0" * 64}]})
        st.record_run({"run": {"name": "train-b", "inputs": [{"dataset": "agg@1"}]},
                       "models": [{"name": "reg", "sha256": "1" * 64}]})
        self.runs = {"train-a": [("adults@1", set(self.run_rows)), ("customers@2", None)],
                     "train-b": [("agg@1", None)]}

    # -------------------------------------------------------------- the reference

    def forget(self, subjects: set[str], cleaned: dict[str, str]) -> None:
        """Apply the documented rules to the model: recorded versions lose the erased records (a row
        built from them alone goes); each cleaned version drops every row built from one."""
        gone = {r for r, s in self.owner.items() if s in subjects}
        for old, new in cleaned.items():
            self.versions[new] = [row for row in self.versions[old] if not set(row) & gone]
        for label in list(self.versions):
            rows = [[r for r in row if r not in gone] for row in self.versions[label]]
            self.versions[label] = [row for row in rows if row]
        self.runs = {name: [(v, None if sub is None else sub - gone) for v, sub in ins]
                     for name, ins in self.runs.items()}

    def expected(self, subject: str) -> dict:
        mine = {r for r, s in self.owner.items() if s == subject}
        datasets = {}
        for label, rows in self.versions.items():
            recs = {r for row in rows for r in row} & mine
            if recs:
                datasets[label] = (len(recs), sum(1 for row in rows if set(row) & mine))
        runs = {}
        for name, inputs in self.runs.items():
            hit = set()
            for label, sub in inputs:
                recs = {r for row in self.versions[label] for r in row}
                hit |= (recs if sub is None else recs & sub) & mine
            if hit:
                runs[name] = len(hit)
        return {"datasets": datasets, "runs": runs}

    def actual(self, subject: str) -> dict:
        imp = self.store.impact([subject])
        return {"datasets": {d["id"]: (d["records"], d["rows"]) for d in imp.datasets},
                "runs": {r["id"]: r["records"] for r in imp.runs}}

    def hashes(self, subjects) -> np.ndarray:
        return self.store.hasher.hash_many(sorted(subjects))


@pytest.fixture
def world(tmp_path) -> World:
    return World(tmp_path)


def _forget_some(world: World, k: int = 3, request_id: str = "req-000001", **kw):
    subjects = set(sorted(set(world.cid))[:k])
    res = world.store.forget_subjects(world.hashes(subjects), request_id, **kw)
    world.forget(subjects, {c["from"]: c["version"] for c in res["cleaned_versions"]})
    return subjects, res


def test_impact_matches_brute_force_before_and_after(world):
    everyone = sorted(set(world.cid))
    for s in everyone:
        assert world.actual(s) == world.expected(s), s
    subjects, res = _forget_some(world)
    assert res["changed"] and res["subjects_found"] == 3 and res["tombstones_added"] == 3
    assert res["records_removed"] == sum(1 for s in world.owner.values() if s in subjects)
    for s in everyone:
        assert world.actual(s) == world.expected(s), s
    for s in subjects:
        imp = world.store.impact([s])
        assert imp.found == 0 and imp.records == 0 and not imp.datasets
    # The catalog's counts agree with the files.
    with world.store.view() as view:
        for label, rows in world.versions.items():
            v = view.resolve_version(label)
            assert (v["n_rows"], v["n_records"]) == (len(rows), len({r for row in rows for r in row})), label
            assert len(world.store.rows(label)) == len(rows)
            assert len(view.load_bitmap(v["bitmap_file"])) == v["n_records"]
        ins = view.execute("""SELECT r.name, i.position, i.n_rows, i.n_records FROM run_inputs i
                              JOIN runs r USING (run_id) ORDER BY 1, 2""").fetchall()
    sub = world.runs["train-a"][0][1]
    assert ins[0] == ("train-a", 0, len(sub), len(sub))
    assert ins[1][2:] == (len(world.versions["customers@2"]),) * 2


def test_rows_removed_and_composed_rows(world):
    subjects, res = _forget_some(world)
    gone = {r for r, s in world.owner.items() if s in subjects}
    assert res["rows_removed"]["customers@1"] == sum(1 for r in world.rid if r in gone)
    # Recorded aggregate: only groups made of erased records alone go; mixed groups stay with the rest.
    groups = pq.read_table(world.agg_file).column("members").to_pylist()
    alone = sum(1 for g in groups if set(g) <= gone)
    assert res["rows_removed"]["agg@1"] == alone
    # The cleaned aggregate drops every group that held an erased record.
    new = {c["from"]: c for c in res["cleaned_versions"]}["agg@1"]
    assert new["rows"] == sum(1 for g in groups if not set(g) & gone)
    with world.store.view() as view:
        v = view.resolve_version(new["version"])
        assert v["kind"] == "filter"
        assert view.one("SELECT origin FROM dataset_versions WHERE version_id = ?", [v["version_id"]]) == \
            "cleaned for req-000001 from agg@1"
        parents = view.execute("SELECT parent_version_id FROM version_parents WHERE version_id = ?",
                               [v["version_id"]]).fetchall()
        assert parents == [(view.resolve_version("agg@1")["version_id"],)]
    # Future training takes the latest version of a dataset: the cleaned one.
    assert world.store.rows("customers").version == {c["from"]: c for c in res["cleaned_versions"]}[
        "customers@2"]["version"]


def test_cleaned_files_and_those_it_cannot_rewrite(world):
    subjects, res = _forget_some(world)
    gone = {r for r, s in world.owner.items() if s in subjects}
    by_from = {c["from"]: c for c in res["cleaned_versions"]}
    src = pq.read_table(by_from["customers@1"]["file"])
    assert src.column_names == ["customer", "row", "amount"]
    assert src.column("row").to_pylist() == [r for r in world.rid if r not in gone]
    assert not set(src.column("customer").to_pylist()) & subjects
    csv = by_from["adults@1"]["file"]
    assert csv.endswith("adults.cleaned-req-000001.csv") and Path(csv).parent == world.dir
    orig = pacsv.read_csv(world.filter_csv, convert_options=pacsv.ConvertOptions(
        column_types={"row": pa.string(), "score": pa.string()}))
    cleaned = pacsv.read_csv(csv, convert_options=pacsv.ConvertOptions(
        column_types={"row": pa.string(), "score": pa.string()}))
    keep = [r not in gone for r in orig.column("row").to_pylist()]
    assert cleaned.equals(orig.filter(pa.array(keep)))  # text kept as it was ("07" stays "07")
    agg = pq.read_table(by_from["agg@1"]["file"])
    assert all(not set(g) & gone for g in agg.column("members").to_pylist())
    # In memory: no file to rewrite; a version from a file since deleted; both listed with the reason.
    reasons = {n["version"]: n["reason"] for n in res["not_rewritten"]}
    assert set(reasons) == {"sample@1", "customers@2"} and "no data file" in reasons["sample@1"]
    os.unlink(world.src)
    more = sorted(set(world.cid))[3:4]
    res2 = world.store.forget_subjects(world.hashes(more), "req-000002")
    reasons = {n["version"]: n["reason"] for n in res2["not_rewritten"]}
    assert reasons.get("customers@1", "").startswith("file not found"), reasons
    assert res2["cleaned_versions"] and all(c["file"] is None for c in res2["cleaned_versions"]
                                            if c["from"] in reasons)
    # A cleaned version's own file is the one cleaned again for a later request.
    cleaned_again = {c["from"]: c for c in res2["cleaned_versions"]}
    assert cleaned_again[by_from["customers@2"]["version"]]["file"] is None  # from memory: customers@2
    assert cleaned_again[by_from["adults@1"]["version"]]["file"].endswith(
        "adults.cleaned-req-000001.cleaned-req-000002.csv")


def _decoded_store(store: Store) -> dict:
    """Everything the store holds, decoded: strings, subject hashes and record ordinals, per file."""
    out = {"strings": [], "hashes": [], "ords": [], "tombstone_hashes": []}
    root = store.root
    for cat in sorted(root.glob("catalog-*.duckdb")):
        con = duckdb.connect(str(cat), read_only=True)
        try:
            for (table,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall():
                t = con.sql(f'SELECT * FROM "{table}"').to_arrow_table()
                for name in t.column_names:
                    col = t.column(name)
                    if pa.types.is_string(col.type):
                        out["strings"] += [(cat.name, table, x) for x in col.to_pylist() if x]
                if {"hi", "lo"} <= set(t.column_names):
                    pairs = list(zip(t.column("hi").to_pylist(), t.column("lo").to_pylist()))
                    out["tombstone_hashes" if table == "tombstones" else "hashes"] += [(cat.name, table, p)
                                                                                      for p in pairs]
        finally:
            con.close()
    for p in sorted((root / "data").iterdir()):
        if p.name.endswith(".parquet"):
            t = pq.read_table(p)
            for name in t.column_names:
                if pa.types.is_string(t.column(name).type):
                    out["strings"] += [(p.name, name, x) for x in t.column(name).to_pylist() if x is not None]
        elif p.suffix == ".seg":
            seg = Segment(p)
            out["hashes"] += [(p.name, "segment", h) for h in zip(seg.hi.tolist(), seg.lo.tolist())]
            out["ords"] += [(p.name, int(o)) for o in seg.ords]
        elif p.suffix == ".roar":
            out["ords"] += [(p.name, int(o)) for o in BitMap.deserialize(p.read_bytes())]
        elif p.name.endswith(".rowmap.npy"):
            out["ords"] += [(p.name, int(o)) for o in np.load(p)[0]]
        elif p.suffix == ".facts":
            # The index is in the catalog; the bitmap of records leads the file.
            out["ords"] += [(p.name, int(o)) for o in RunFacts(p, {"dtype": "uint8", "codes": []}).records]
        else:
            raise AssertionError(f"unexpected data file {p.name}")
    return out


@pytest.mark.parametrize("purge", [False, True])
def test_no_file_holds_the_subjects_after_it(world, purge):
    from expunge.orchestrator import requests as rq

    subjects = set(sorted(set(world.cid))[:3])
    req = rq.create(world.store, sorted(subjects) + ["cust-999"])
    hashes = world.hashes(subjects)
    gone_ids = {r for r, s in world.owner.items() if s in subjects}
    with world.store.read() as con:
        before_files = {p.name for p in (world.store.root / "data").iterdir()}
    erased_ords = set(world.store.records_of_subjects(sorted(subjects)).tolist())
    res = world.store.forget_subjects(hashes, req.id, purge=purge)
    assert res["request_subjects_removed"] == 3
    if not purge:
        # The previous generation may serve a reader until the next write; the retired files are
        # deleted at the start of the second write after the forgetting.
        world.store.set_model_stage("clf", "staging", reason="a later write")
        world.store.set_model_stage("clf", "production", reason="another")
    assert sorted((world.store.root).glob("catalog-*.duckdb"))  # the store is whole
    dec = _decoded_store(world.store)
    strings = {x for _, _, x in dec["strings"]}
    assert not strings & gone_ids and not strings & subjects
    held = {h for _, _, h in dec["hashes"]}
    wanted = {tuple(h) for h in hashes.tolist()}
    assert not held & wanted
    assert {h for _, _, h in dec["tombstone_hashes"]} >= wanted
    assert not {o for _, o in dec["ords"]} & erased_ords
    # Every data file the forgetting replaced is gone from the disk.
    now = {p.name for p in (world.store.root / "data").iterdir()}
    replaced = before_files - now
    assert replaced and not (replaced & now)
    with world.store.read() as con:
        live = set()
        for table, col in (("dataset_versions", "bitmap_file"), ("dataset_versions", "rows_file"),
                           ("dataset_versions", "rowmap_file"), ("record_segments", "ids_file"),
                           ("subject_segments", "file"), ("runs", "facts_file"), ("run_inputs", "subset_file")):
            live |= {f for (f,) in con.execute(f"SELECT {col} FROM {table} WHERE {col} IS NOT NULL").fetchall()}
    assert now == live  # nothing left over but what the live catalog reads
    # The request still knows its subjects, through the tombstones.
    from expunge.lineage.forget import tombstones

    assert len(tombstones(world.store, [req.id])) == 3


def test_idempotent(world):
    subjects, res = _forget_some(world)
    gen = world.store.generation()
    again = world.store.forget_subjects(world.hashes(subjects), "req-000001")
    assert again["changed"] is False and again["already_forgotten"] == 3 and again["records_removed"] == 0
    assert world.store.generation() == gen
    # A subject never seen is tombstoned all the same (its records may arrive later).
    res = world.store.forget_subjects(world.hashes(["never-seen"]), "req-000002")
    assert res["changed"] and res["tombstones_added"] == 1 and res["records_removed"] == 0
    assert world.store.ingest_source({"c": ["never-seen", "x"], "r": ["a", "b"]}, name="late", subject_col="c",
                                     record_col="r").skipped == 1


def test_bad_input(world):
    from expunge.errors import BadInput

    with pytest.raises(BadInput, match="uint64"):
        world.store.forget_subjects(np.zeros((2, 3), np.uint64), "req-1")
    with pytest.raises(BadInput, match="request id"):
        world.store.forget_subjects(world.hashes(["cust-001"]), "../etc")


def test_restored_source_does_not_bring_a_subject_back(world):
    subjects, res = _forget_some(world)
    gone = sum(1 for r in world.rid if world.owner[r] in subjects)
    info = world.store.ingest_source(world.src, name="customers", subject_col="customer", record_col="row")
    assert info.skipped == gone and info.rows == N_RECORDS - gone and info.new_records == 0
    for s in subjects:
        assert world.store.impact([s]).found == 0
    # Derived ingests naming a forgotten record (or a composed row removed with it) skip those rows.
    filt = world.store.ingest_dataset(world.filter_csv, name="adults", parents=["customers@1"], kind="filter",
                                      record_col="row")
    assert filt.skipped == sum(1 for i, r in enumerate(world.rid) if i % 3 and world.owner[r] in subjects)
    agg = world.store.ingest_dataset(world.agg_file, name="agg", parents=["customers@1"], kind="aggregate",
                                     sources={"customers@1": "members"}, row_col="gid")
    groups = pq.read_table(world.agg_file).column("members").to_pylist()
    hit = sum(1 for g in groups if any(world.owner[r] in subjects for r in g))
    assert agg.skipped == hit and agg.rows == len(groups) - hit
    # A forgotten record's id given to a new record later is the new record's: not skipped.
    reused = next(r for r in world.rid if world.owner[r] in subjects)
    world.store.ingest_source({"customer": ["someone-new"], "row": [reused]}, name="customers",
                              subject_col="customer", record_col="row")
    again = world.store.ingest_dataset({"row": [reused]}, name="reuse", parents=["customers"], kind="filter",
                                       record_col="row")
    assert (again.skipped, again.rows) == (0, 1)
    assert world.store.impact(["someone-new"]).records == 1


def test_cli_ingest_says_what_it_skipped(world):
    from typer.testing import CliRunner

    from expunge.cli import app

    subjects, _ = _forget_some(world)
    gone = sum(1 for r in world.rid if world.owner[r] in subjects)
    runner = CliRunner()
    args = ["ingest", "source", str(world.src), "--name", "customers", "--subject-col", "customer",
            "--record-col", "row", "--store", str(world.store.root)]
    res = runner.invoke(app, args + ["--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    jsonschema.validate(doc, load_schema("version.schema.json"))
    assert doc["skipped"] == gone
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and f"skipped {gone} row(s) of forgotten subjects" in res.output
    assert not any(s in res.output for s in subjects)


def test_clean_versions_before_forgetting(world):
    subjects = set(sorted(set(world.cid))[:2])
    h = world.hashes(subjects)
    res = world.store.clean_versions(h, "req-000007")
    assert res["changed"] and {c["from"] for c in res["cleaned_versions"]} >= {"customers@1", "agg@1"}
    # The records are still known until the request completes ...
    assert world.store.impact(sorted(subjects)).records > 0
    assert world.store.clean_versions(h, "req-000007")["changed"] is False
    # ... and forgetting then adds no second cleaned version.
    out = world.store.forget_subjects(h, "req-000007")
    assert out["cleaned_versions"] == []
    world.forget(subjects, {c["from"]: c["version"] for c in res["cleaned_versions"]})
    for s in sorted(set(world.cid)):
        assert world.actual(s) == world.expected(s), s


def test_tombstones_survive_key_rotation(world):
    from expunge.lineage import rekey

    subjects, _ = _forget_some(world)
    rekey.rotate(world.store)
    st = Store.open(world.store.root)
    info = st.ingest_source(world.src, name="customers", subject_col="customer", record_col="row")
    assert info.skipped == sum(1 for r in world.rid if world.owner[r] in subjects)
    filt = st.ingest_dataset(world.filter_csv, name="adults", parents=["customers@1"], kind="filter",
                             record_col="row")
    assert filt.skipped > 0


FORGET_SCRIPT = """
import sys, numpy as np
from expunge.lineage.store import Store
st = Store.open(sys.argv[1])
res = st.forget_subjects(st.hasher.hash_many(sys.argv[3:]), sys.argv[2])
print(res["records_removed"])
"""


@pytest.mark.parametrize("point", ["forget:after-clean", "forget:before-switch", "forget:after-switch"])
def test_killed_forget_leaves_a_whole_store_and_reruns(world, point):
    everyone = sorted(set(world.cid))
    subjects = everyone[:3]
    before = {s: world.actual(s) for s in everyone}
    env = dict(os.environ, EXPUNGE_FAULT=point)
    cmd = [sys.executable, "-c", FORGET_SCRIPT, str(world.store.root), "req-000001", *subjects]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    st = Store.open(world.store.root)
    world.store = st
    after_crash = {s: world.actual(s) for s in everyone}
    if point == "forget:after-switch":
        assert all(st.impact([s]).found == 0 for s in subjects)
    else:
        assert after_crash == before  # nothing happened
    # Rerunning completes it (or says it is done), and the answers are the reference's.
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    res_cleaned = {}
    with st.read() as con:
        for old, new in con.execute(
                """SELECT d1.name || '@' || p.version_no, d2.name || '@' || v.version_no FROM cleaned_versions c
                   JOIN dataset_versions p ON p.version_id = c.parent_version_id JOIN datasets d1 ON d1.dataset_id = p.dataset_id
                   JOIN dataset_versions v ON v.version_id = c.version_id JOIN datasets d2 ON d2.dataset_id = v.dataset_id
                """).fetchall():
            res_cleaned[old] = new
    world.forget(set(subjects), res_cleaned)
    for s in everyone:
        assert world.actual(s) == world.expected(s), s
    # No data file is left over from the killed write.
    with st.read() as con:
        live = set()
        for table, col in (("dataset_versions", "bitmap_file"), ("dataset_versions", "rows_file"),
                           ("dataset_versions", "rowmap_file"), ("record_segments", "ids_file"),
                           ("subject_segments", "file"), ("runs", "facts_file"), ("run_inputs", "subset_file"),
                           ("retired_files", "file")):
            live |= {f for (f,) in con.execute(f"SELECT {col} FROM {table} WHERE {col} IS NOT NULL").fetchall()}
    st.set_model_stage("clf", "staging", reason="two more writes")
    st.set_model_stage("clf", "production", reason="and GC")
    assert {p.name for p in (st.root / "data").iterdir()} <= live
