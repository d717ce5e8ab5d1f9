"""No raw subject id anywhere expunge writes: the whole demo is run (`expunge demo --dir D`: ingest, six trained
models, two requests planned, approved and run, the subject forgotten), then every file under its store is
DECODED and every value searched for each of the demo's 400 customer ids (taken from its synthetic source
data): every DuckDB catalog file (each table, each column, read-only), every Parquet file (each column's
values, each row group's statistics, the file's and the schema's key-value metadata), the roaring bitmaps,
subject segments, run facts and row maps (decoded, their sizes checked so nothing hides after the data),
plan and policy documents, model and checkpoint files (unpickled weights-only: keys, values, archive
member names), the JSON documents and error output of the reporting commands. A file of a kind the scan
cannot decode fails the test. Scanning compressed bytes would prove nothing: the scanner is shown to find
ids that a byte search misses."""

from __future__ import annotations

import json
import os
import re
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.faults.harness import EXPUNGE, env, record


class Scanner:
    """Search decoded values for any of a set of raw ids; `found` lists (where, id)."""

    def __init__(self, ids):
        self.ids = sorted(set(ids), key=len, reverse=True)
        self.pattern = re.compile("|".join(map(re.escape, self.ids)))
        self.raw = re.compile(b"|".join(re.escape(i.encode()) for i in self.ids))
        self.found: list[tuple[str, str]] = []
        self.values = 0
        self.files: dict[str, int] = {}

    def value(self, v, where: str) -> None:
        """Any decoded value: strings and bytes searched, containers walked, numbers counted."""
        self.values += 1
        if isinstance(v, str):
            for m in self.pattern.finditer(v):
                self.found.append((where, m.group(0)))
        elif isinstance(v, (bytes, bytearray, memoryview)):
            for m in self.raw.finditer(bytes(v)):
                self.found.append((where, m.group(0).decode()))
        elif isinstance(v, dict):
            for k, x in v.items():
                self.value(k, where)
                self.value(x, where)
        elif isinstance(v, (list, tuple, set)):
            for x in v:
                self.value(x, where)
        elif hasattr(v, "tolist"):
            self.value(v.tolist(), where)
        elif v is None or isinstance(v, (int, float, bool)):
            pass
        else:
            self.value(str(v), where)

    def _count(self, kind: str) -> None:
        self.files[kind] = self.files.get(kind, 0) + 1

    # ------------------------------------------------------------ decoders, one per kind of file

    def duckdb_file(self, path: Path) -> None:
        from expunge.lineage.store import attached

        with attached(path) as con:
            tables = [t for (t,) in con.execute("SELECT table_name FROM information_schema.tables WHERE "
                                                "table_catalog = current_database()").fetchall()]
            assert tables, path
            for t in tables:
                cols = [c for (c, *_) in con.execute(f'DESCRIBE "{t}"').fetchall()]
                self.value(cols, f"{path.name}:{t} (column names)")
                for row in con.execute(f'SELECT * FROM "{t}"').fetchall():
                    for c, v in zip(cols, row):
                        self.value(v, f"{path.name}:{t}.{c}")
        self._count("duckdb")

    def parquet_file(self, path: Path) -> None:
        f = pq.ParquetFile(path)
        meta = f.metadata
        self.value(dict(meta.metadata or {}), f"{path.name} (file metadata)")
        schema = f.schema_arrow
        self.value(dict(schema.metadata or {}), f"{path.name} (schema metadata)")
        for field in schema:
            self.value([field.name, dict(field.metadata or {})], f"{path.name} (field {field.name})")
        for rg in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                col = meta.row_group(rg).column(c)
                st = col.statistics
                if st is not None and st.has_min_max:
                    self.value([st.min, st.max], f"{path.name} (statistics of {col.path_in_schema})")
        t = f.read()
        for name in t.column_names:
            self.value(t.column(name).to_pylist(), f"{path.name}:{name}")
        self._count("parquet")

    def roaring_file(self, path: Path) -> None:
        from pyroaring import BitMap

        data = path.read_bytes()
        bm = BitMap.deserialize(data)
        assert bm.serialize() == data, path  # all of the file is the bitmap: nothing after it
        self.value(list(bm), path.name)
        self._count("roaring bitmap")

    def segment_file(self, path: Path) -> None:
        from expunge.lineage.segments import _HEADER, Segment

        seg = Segment(path)
        hi, lo, off, ords = seg.arrays()
        expected = _HEADER.size + 8 * (2 * seg.n_subjects + seg.n_subjects + 1) + 4 * seg.n_records
        assert path.stat().st_size == (expected if seg.n_subjects else _HEADER.size), path  # nothing after the data
        self.value([hi, lo, off, ords], path.name)
        self._count("subject segment")

    def facts_file(self, path: Path, index: dict) -> None:
        from expunge.lineage.facts import _HEAD, RunFacts

        facts = RunFacts(path, index)
        n = len(facts.records)
        bm_len = _HEAD.unpack(path.read_bytes()[:_HEAD.size])[1]
        expected = _HEAD.size + bm_len + (-(_HEAD.size + bm_len)) % 8 + n * np.dtype(index["dtype"]).itemsize
        assert path.stat().st_size == expected, path
        self.value([list(facts.records), facts.codes, index], path.name)
        self._count("run facts")

    def npy_file(self, path: Path) -> None:
        arr = np.load(path, allow_pickle=False)
        self.value(arr, path.name)
        self._count("numpy array")

    def json_file(self, path: Path) -> None:
        self.value(json.loads(path.read_text()), str(path))
        self._count("json document")

    def torch_file(self, path: Path) -> None:
        import torch

        with zipfile.ZipFile(path) as z:
            self.value(z.namelist(), f"{path} (archive members)")
        self.value(torch.load(path, weights_only=True, map_location="cpu"), str(path))
        self._count("torch artifact")

    def text(self, text: str, where: str) -> None:
        self.value(text, where)
        self._count("command output")


def scan_store(sc: Scanner, store: Path) -> None:
    """Decode every file under a store; fail on one the scan does not know how to decode."""
    from expunge.lineage.store import attached

    facts_index = {}
    with attached(store / (store / "CURRENT").read_text().strip()) as con:
        for f, idx in con.execute("SELECT facts_file, facts_index FROM runs WHERE facts_file IS NOT NULL").fetchall():
            facts_index[f] = json.loads(idx)
    for dirpath, _, names in os.walk(store):
        for n in names:
            p = Path(dirpath) / n
            if re.fullmatch(r"catalog-[0-9]+\.duckdb", n):
                sc.duckdb_file(p)
            elif n.endswith(".parquet"):
                sc.parquet_file(p)
            elif n.endswith(".roar"):
                sc.roaring_file(p)
            elif n.endswith(".seg"):
                sc.segment_file(p)
            elif n.endswith(".facts"):
                if n in facts_index:
                    sc.facts_file(p, facts_index[n])
                else:  # kept for a reader of an older generation: decode with that generation's index
                    sc.facts_file(p, _older_index(store, n))
            elif n.endswith(".npy"):
                sc.npy_file(p)
            elif n.endswith(".json"):
                sc.json_file(p)
            elif n.endswith(".pt"):
                sc.torch_file(p)
            elif n in ("STORE", "CURRENT") or n.endswith(".lock") or n == "lock":
                sc.value(p.read_text(), str(p))
            else:
                raise AssertionError(f"a file under the store the scan cannot decode: {p}")


def _older_index(store: Path, name: str) -> dict:
    from expunge.lineage.store import attached

    for cat in sorted(store.glob("catalog-*.duckdb")):
        with attached(cat) as con:
            rows = con.execute("SELECT facts_index FROM runs WHERE facts_file = ?", [name]).fetchall()
        if rows:
            return json.loads(rows[0][0])
    raise AssertionError(f"{name}: no catalog names it")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The whole demo, run as a user would, then the reporting commands a reviewer would run on it."""
    d = tmp_path_factory.mktemp("demo")
    res = subprocess.run([*EXPUNGE, "demo", "--dir", str(d)], env=env(), capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    store = d / "store"
    outputs = {"demo (stdout)": res.stdout, "demo (stderr)": res.stderr}
    reqs = json.loads(subprocess.run([*EXPUNGE, "request", "list", "--json", "--store", str(store)], env=env(),
                                     capture_output=True, text=True).stdout)["requests"]
    plans = json.loads(subprocess.run([*EXPUNGE, "plan", "list", "--json", "--store", str(store)], env=env(),
                                      capture_output=True, text=True).stdout)["plans"]
    # The reports a reviewer reads, as documents and as text (a few: each is a process start).
    commands = [["request", "list", "--json"], ["plan", "list"], ["request", "show", reqs[0]["id"]]]
    commands += [["request", "show", r["id"], "--json"] for r in reqs]
    commands += [["residuals", r["id"], "--json"] for r in reqs]
    commands += [["plan", "show", p["id"], "--json"] for p in plans]
    for c in commands:
        r = subprocess.run([*EXPUNGE, *c, "--store", str(store)], env=env(), capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, (c, r.stderr)
        outputs[" ".join(c)] = r.stdout + r.stderr
    customers = pq.read_table(d / "customers.parquet").column("customer_id").to_pylist()
    return {"dir": d, "store": store, "outputs": outputs, "ids": customers, "commands": len(commands)}


def test_no_raw_subject_id_in_anything_the_demo_wrote(demo):
    ids = demo["ids"]
    assert len(ids) == 400 and all(i.startswith("cust-") for i in ids)
    sc = Scanner(ids)
    scan_store(sc, demo["store"])
    # The demo's models and checkpoints outside the store are expunge's output too.
    for p in sorted((demo["dir"] / "artifacts").rglob("*.pt")):
        sc.torch_file(p)
    assert sc.found == [], f"raw subject ids in the store: {sc.found[:5]}"
    for what, out in demo["outputs"].items():
        if what == "demo (stdout)":
            continue
        sc.text(out, what)
    assert sc.found == [], f"raw subject ids in command output: {sc.found[:5]}"
    # The demo's own terminal story names the one customer it shows, as a user would type it; no other.
    shown = Scanner(ids)
    shown.text(demo["outputs"]["demo (stdout)"], "demo stdout")
    assert len({i for _, i in shown.found}) == 1, {i for _, i in shown.found}
    assert sc.files["duckdb"] >= 1 and sc.files["parquet"] >= 5 and sc.files["torch artifact"] >= 10, sc.files
    record("pii-scan", "expunge demo", "every decoded value", "no raw subject id", files=sc.files,
           values=sc.values, ids=len(ids), commands=demo["commands"])


# ------------------------------------------------------------ the scanner finds what a byte search misses


def test_the_scan_finds_ids_a_byte_search_misses(tmp_path):
    ids = [f"cust-{i:04d}" for i in range(50)]
    leaked = "cust-0042"
    # 1. In a zstd-compressed, dictionary-encoded column, without statistics: not in the file's bytes.
    t = pa.table({"x": [leaked] * 5000 + [f"other-{i}" for i in range(5000)]})
    p = tmp_path / "a.parquet"
    pq.write_table(t, p, compression="zstd", write_statistics=False)
    assert leaked.encode() not in p.read_bytes()
    sc = Scanner(ids)
    sc.parquet_file(p)
    assert (f"{p.name}:x", leaked) in sc.found
    # 2. Only in the statistics of a column whose values are elsewhere; 3. only in key-value metadata.
    p2 = tmp_path / "b.parquet"
    pq.write_table(pa.table({"x": ["cust-0007", "zz"]}), p2, compression="zstd")
    sc = Scanner(ids)
    sc.parquet_file(p2)
    assert any("statistics" in w for w, i in sc.found if i == "cust-0007")
    p3 = tmp_path / "c.parquet"
    pq.write_table(pa.table({"x": [1, 2]}).replace_schema_metadata({"note": "from cust-0011"}), p3)
    sc = Scanner(ids)
    sc.parquet_file(p3)
    assert {i for _, i in sc.found} == {"cust-0011"}
    # 4. In a DuckDB JSON column of a catalog, compressed in DuckDB's blocks.
    import duckdb

    db = tmp_path / "catalog-000001.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE runs(config JSON)")
    con.execute("INSERT INTO runs SELECT to_json({'who': 'cust-0031', 'pad': repeat('y', 100)}) FROM range(3000)")
    con.execute("CHECKPOINT")
    con.close()
    sc = Scanner(ids)
    sc.duckdb_file(db)
    assert {i for _, i in sc.found} == {"cust-0031"}
    # 5. A store's files, decoded: an id ingested as a record id is found; an unknown kind of file fails the scan.
    from expunge.lineage.store import Store

    st = Store.init(tmp_path / "store")
    st.ingest_source({"s": ["cust-0001", "cust-0002"], "r": ["r1", "cust-0003"]}, name="d", subject_col="s",
                     record_col="r")
    sc = Scanner(ids)
    scan_store(sc, st.root)
    assert {i for _, i in sc.found} == {"cust-0003"}  # the subject column is hashed; the record id is kept
    (st.root / "data" / "x.bin").write_bytes(b"\x00")
    with pytest.raises(AssertionError, match="cannot decode"):
        scan_store(Scanner(ids), st.root)
