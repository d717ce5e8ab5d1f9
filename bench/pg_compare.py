"""PostgreSQL comparison: the same lineage (bench/gen.py's raw/ Parquet) in B-tree-indexed tables.

    .venv/bin/python bench/pg_compare.py --gen-dir /tmp/expunge-bench-xs

Creates a throwaway cluster (initdb) in a temp directory, starts postgres on 127.0.0.1 on a free
port (as the `postgres` user when run as root), loads raw/*.parquet with binary COPY, builds
B-tree indexes, and measures the impact query (subject hashes → records → dataset versions →
runs (row subsets, unlearning facts) → models, with a recursive CTE for derived models): p50
over 200 single subjects and a 10,000-subject batch. It checks a sample of answers against
`store.impact`. The server is stopped and the directory removed at the end, whatever happens.
Needs psycopg (`.venv/bin/pip install -e '.[bench]'`). Results: bench/out/pg-<scale>.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import code_version, percentile, use_bench_secret  # noqa: E402

PG_USER = "postgres"
BATCH_ROWS = 2_000_000

SCHEMA = """
CREATE TABLE records(subject_hash uuid NOT NULL, record_ord int4 NOT NULL);
CREATE TABLE memberships(version_id int4 NOT NULL, record_ord int4 NOT NULL);
CREATE TABLE composite_rows(version_id int4 NOT NULL, row_idx int4 NOT NULL, record_ord int4 NOT NULL);
CREATE TABLE versions(version_id int4 PRIMARY KEY, label text, dataset text, version_no int4, kind text,
                      composed bool, n_rows int8, n_records int8, parents text[]);
CREATE TABLE runs(run_id int4 PRIMARY KEY, name text, model_family text, has_facts bool DEFAULT false);
CREATE TABLE run_inputs(run_id int4, position int2, version_id int4, role text, has_subset bool);
CREATE TABLE run_subsets(run_id int4, position int2, record_ord int4);
CREATE TABLE facts(run_id int4, record_ord int4, shard int4, slice int4, first_step int8);
CREATE TABLE checkpoints(run_id int4, position int2, step int8);
CREATE TABLE models(model_id int4 PRIMARY KEY, label text, name text, version_no int4, run_id int4, stage text);
CREATE TABLE model_parents(model_id int4, parent_model_id int4, relation text);
"""

# Covering B-tree indexes, so every hop of the query can be an index-only scan.
INDEXES = [
    "CREATE INDEX records_subject ON records (subject_hash) INCLUDE (record_ord)",
    "CREATE INDEX memberships_ord ON memberships (record_ord, version_id)",
    "CREATE INDEX composite_rows_ord ON composite_rows (record_ord, version_id, row_idx)",
    "CREATE INDEX run_inputs_version ON run_inputs (version_id) INCLUDE (run_id, position, role, has_subset)",
    "CREATE INDEX run_subsets_key ON run_subsets (run_id, position, record_ord)",
    "CREATE INDEX facts_key ON facts (run_id, record_ord) INCLUDE (shard, slice, first_step)",
    "CREATE INDEX checkpoints_run ON checkpoints (run_id, step)",
    "CREATE INDEX models_run ON models (run_id)",
    "CREATE INDEX model_parents_parent ON model_parents (parent_model_id) INCLUDE (model_id, relation)",
]

# One statement, one round trip: the same answer expunge's impact gives (datasets with records and
# composed rows hit, runs with per-input counts, shards with first slice, clean checkpoints, and
# models with the shortest derivation path from a directly affected one).
IMPACT_SQL = """
WITH RECURSIVE
r AS MATERIALIZED (
    SELECT DISTINCT record_ord FROM records WHERE subject_hash = ANY(%(h)s::uuid[])),
mv AS MATERIALIZED (
    SELECT m.version_id, m.record_ord FROM memberships m JOIN r USING (record_ord)),
ds AS MATERIALIZED (
    SELECT version_id, count(*) AS records FROM mv GROUP BY version_id),
dsrows AS MATERIALIZED (
    SELECT c.version_id, count(DISTINCT c.row_idx) AS rows FROM composite_rows c JOIN r USING (record_ord)
    GROUP BY c.version_id),
ir AS MATERIALIZED (
    SELECT ri.run_id, ri.position, ri.role, mv.record_ord
    FROM mv JOIN run_inputs ri ON ri.version_id = mv.version_id
    WHERE NOT ri.has_subset OR EXISTS (
        SELECT 1 FROM run_subsets s
        WHERE s.run_id = ri.run_id AND s.position = ri.position AND s.record_ord = mv.record_ord)),
run_hit AS MATERIALIZED (
    SELECT run_id, count(*) AS records FROM (SELECT DISTINCT run_id, record_ord FROM ir) x GROUP BY run_id),
inp_hit AS MATERIALIZED (
    SELECT run_id, position, count(*) AS records FROM ir GROUP BY run_id, position),
inp AS MATERIALIZED (
    SELECT ri.run_id, ri.position, v.label, ri.role, coalesce(ih.records, 0) AS records
    FROM run_hit h JOIN run_inputs ri USING (run_id) JOIN versions v USING (version_id)
    LEFT JOIN inp_hit ih ON ih.run_id = ri.run_id AND ih.position = ri.position),
tr AS MATERIALIZED (
    SELECT DISTINCT ir.run_id, ir.record_ord FROM ir JOIN runs USING (run_id)
    WHERE ir.role = 'train' AND runs.has_facts),
fh AS MATERIALIZED (
    SELECT f.run_id, f.shard, f.slice, f.first_step FROM facts f JOIN tr USING (run_id, record_ord)),
shards AS MATERIALIZED (
    SELECT run_id, shard, count(*) AS records, min(slice) AS first_slice FROM fh GROUP BY run_id, shard),
first_seen AS MATERIALIZED (
    SELECT fh.run_id, min(fh.first_step) AS first_step FROM fh GROUP BY fh.run_id),
clean AS MATERIALIZED (
    SELECT fs.run_id,
           (SELECT count(*) FROM checkpoints c WHERE c.run_id = fs.run_id AND c.step <= fs.first_step) AS k
    FROM first_seen fs),
desc_models(model_id, depth, path) AS (
    SELECT m.model_id, 0, ARRAY[]::int4[] FROM models m JOIN run_hit USING (run_id)
    UNION ALL
    SELECT p.model_id, d.depth + 1, d.path || p.parent_model_id
    FROM desc_models d JOIN model_parents p ON p.parent_model_id = d.model_id),
inp_json AS MATERIALIZED (
    SELECT run_id, json_agg(json_build_object('dataset', label, 'role', role, 'records', records)
                            ORDER BY position) AS inputs
    FROM inp GROUP BY run_id),
shard_json AS MATERIALIZED (
    SELECT run_id, json_agg(json_build_object('shard', shard, 'records', records, 'first_slice', first_slice)
                            ORDER BY shard) AS shards
    FROM shards GROUP BY run_id),
best AS MATERIALIZED (
    SELECT DISTINCT ON (model_id) model_id, depth, path FROM desc_models ORDER BY model_id, depth)
SELECT json_build_object(
    'records', (SELECT count(*) FROM r),
    'found', (SELECT count(DISTINCT subject_hash) FROM records WHERE subject_hash = ANY(%(h)s::uuid[])),
    'datasets', (SELECT coalesce(json_agg(json_build_object(
                    'id', v.label, 'kind', v.kind, 'parents', v.parents, 'records', ds.records,
                    'rows', coalesce(dsrows.rows, ds.records)) ORDER BY v.dataset, v.version_no), '[]')
                 FROM ds JOIN versions v USING (version_id) LEFT JOIN dsrows USING (version_id)),
    'runs', (SELECT coalesce(json_agg(json_build_object(
                'id', ru.name, 'records', h.records, 'model_family', ru.model_family, 'inputs', ij.inputs,
                'shards', coalesce(sj.shards, '[]'), 'clean_checkpoints', c.k) ORDER BY ru.name), '[]')
             FROM run_hit h JOIN runs ru USING (run_id) JOIN inp_json ij USING (run_id)
             LEFT JOIN shard_json sj USING (run_id) LEFT JOIN clean c USING (run_id)),
    'models', (SELECT coalesce(json_agg(json_build_object(
                  'id', m.label, 'stage', m.stage, 'direct', b.depth = 0,
                  'path', (SELECT array_agg(pm.label ORDER BY o) FROM unnest(b.path) WITH ORDINALITY AS u(pid, o)
                           JOIN models pm ON pm.model_id = u.pid)) ORDER BY m.name, m.version_no), '[]')
               FROM best b JOIN models m USING (model_id))
) AS doc
"""


# ---------------------------------------------------------------- cluster lifecycle


def pg_bindir() -> Path:
    for cand in ["/usr/lib/postgresql/15/bin"] + sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(cand, "initdb").exists() and Path(cand, "pg_ctl").exists():
            return Path(cand)
    return Path()


def ensure_postgres() -> Path:
    bindir = pg_bindir()
    if bindir != Path():
        return bindir
    if os.geteuid() != 0:
        raise SystemExit("PostgreSQL binaries not found (/usr/lib/postgresql/*/bin); install the postgresql package")
    print("PostgreSQL not found: apt-get install -y postgresql", flush=True)
    subprocess.run(["apt-get", "install", "-y", "postgresql"], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    bindir = pg_bindir()
    if bindir == Path():
        raise SystemExit("postgresql installed but initdb/pg_ctl not found")
    return bindir


def as_pg(cmd: list[str]) -> list[str]:
    """Run PostgreSQL binaries as a non-root user when we are root (postgres refuses to run as root)."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", PG_USER, "--"] + cmd


def ensure_pg_user() -> None:
    if os.geteuid() != 0:
        return
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
                       check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, bindir: Path, workdir: Path | None, settings: dict):
        self.bindir = bindir
        self.settings = settings
        self.tmp = Path(tempfile.mkdtemp(prefix="expunge-pg-", dir=workdir))
        self.data = self.tmp / "data"
        self.log = self.tmp / "postgres.log"
        self.port = 0
        self.started = False

    def start(self) -> None:
        ensure_pg_user()
        if os.geteuid() == 0:
            pw = pwd.getpwnam(PG_USER)
            os.chown(self.tmp, pw.pw_uid, pw.pw_gid)
        subprocess.run(as_pg([str(self.bindir / "initdb"), "-D", str(self.data), "-U", PG_USER, "--auth=trust",
                              "-E", "UTF8", "--locale=C", "--no-sync"]),
                       check=True, capture_output=True, text=True)
        self.port = free_port()
        opts = [f"-p {self.port}", f"-k {self.tmp}", "-c listen_addresses=127.0.0.1"]
        opts += [f"-c {k}={v}" for k, v in self.settings.items()]
        subprocess.run(as_pg([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                              "-t", "60", "-o", " ".join(opts), "start"]), check=True, capture_output=True, text=True)
        self.started = True

    def conninfo(self) -> str:
        return f"host=127.0.0.1 port={self.port} user={PG_USER} dbname=postgres"

    def stop_and_remove(self) -> None:
        try:
            if self.started:
                subprocess.run(as_pg([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                                      "stop"]), capture_output=True, text=True, timeout=60)
                self.started = False
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------- loading


PGCOPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
PGCOPY_TRAILER = b"\xff\xff"
_BIN = {"int2": (">i2", 2), "int4": (">i4", 4), "int8": (">i8", 8), "bool": ("u1", 1), "uuid": ("V16", 16)}


def binary_rows(cols: list[tuple[np.ndarray, str]]) -> bytes:
    """PostgreSQL binary COPY tuples for fixed-width, non-null columns, built with a numpy record array."""
    n = len(cols[0][0])
    fields = [("nf", ">i2")]
    for i, (_, t) in enumerate(cols):
        fields += [(f"l{i}", ">i4"), (f"v{i}", _BIN[t][0])]
    rec = np.empty(n, dtype=np.dtype(fields))
    rec["nf"] = len(cols)
    for i, (a, t) in enumerate(cols):
        rec[f"l{i}"] = _BIN[t][1]
        if t == "uuid":
            rec[f"v{i}"] = np.ascontiguousarray(a).view("V16").reshape(n)
        else:
            rec[f"v{i}"] = a
    return rec.tobytes()


def _np_col(col, t: str) -> np.ndarray:
    if t == "uuid":
        buf = col.buffers()[1]
        off = col.offset * 16
        return np.frombuffer(buf, dtype=np.uint8)[off : off + 16 * len(col)].reshape(len(col), 16)
    a = col.to_numpy(zero_copy_only=False)
    if t == "int4" and a.dtype == np.uint32:
        if a.size and int(a.max()) >= 2**31:
            raise SystemExit("record ordinal ≥ 2^31: widen record_ord to int8")
        a = a.astype(np.int32)
    return a


def copy_parquet(cur, path: Path, table: str, cols: list[tuple[str, str]]) -> int:
    pf = pq.ParquetFile(path)
    names = [c for c, _ in cols]
    n = 0
    with cur.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN (FORMAT binary)") as cp:
        cp.write(PGCOPY_HEADER)
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=names):
            arrays = [(_np_col(batch.column(i), t), t) for i, (_, t) in enumerate(cols)]
            cp.write(binary_rows(arrays))
            n += batch.num_rows
        cp.write(PGCOPY_TRAILER)
    return n


def copy_small(cur, path: Path, table: str) -> int:
    t = pq.read_table(path)
    rows = t.to_pylist()
    names = t.schema.names
    with cur.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN") as cp:
        for r in rows:
            cp.write_row([r[c] for c in names])
    return len(rows)


def load(conn, raw: Path) -> dict:
    out: dict = {"tables": {}}
    t_all = time.perf_counter()
    with conn.cursor() as cur:
        cur.execute(SCHEMA)
        big = {
            "records": [("subject_hash", "uuid"), ("record_ord", "int4")],
            "memberships": [("version_id", "int4"), ("record_ord", "int4")],
            "composite_rows": [("version_id", "int4"), ("row_idx", "int4"), ("record_ord", "int4")],
            "run_subsets": [("run_id", "int4"), ("position", "int2"), ("record_ord", "int4")],
            "facts": [("run_id", "int4"), ("record_ord", "int4"), ("shard", "int4"), ("slice", "int4"),
                      ("first_step", "int8")],
        }
        for table, cols in big.items():
            t = time.perf_counter()
            n = copy_parquet(cur, raw / f"{table}.parquet", table, cols)
            out["tables"][table] = {"rows": n, "copy_s": time.perf_counter() - t}
            print(f"  COPY {table}: {n:,} rows in {time.perf_counter() - t:.1f}s", flush=True)
        for table in ("versions", "runs", "run_inputs", "checkpoints", "models", "model_parents"):
            t = time.perf_counter()
            n = copy_small(cur, raw / f"{table}.parquet", table)
            out["tables"][table] = {"rows": n, "copy_s": time.perf_counter() - t}
        cur.execute("UPDATE runs SET has_facts = true WHERE run_id IN (SELECT DISTINCT run_id FROM facts)")
        conn.commit()
        out["copy_s"] = time.perf_counter() - t_all
        t = time.perf_counter()
        for sql in INDEXES:
            ti = time.perf_counter()
            cur.execute(sql)
            conn.commit()
            print(f"  {sql.split(' ON ')[0].replace('CREATE INDEX ', 'index ')}: {time.perf_counter() - ti:.1f}s",
                  flush=True)
        out["index_s"] = time.perf_counter() - t
    t = time.perf_counter()
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("VACUUM (ANALYZE)")  # visibility map for index-only scans + planner statistics
    conn.autocommit = False
    out["vacuum_analyze_s"] = time.perf_counter() - t
    out["total_s"] = time.perf_counter() - t_all
    with conn.cursor() as cur:
        cur.execute("SELECT pg_database_size(current_database())")
        out["database_mb"] = cur.fetchone()[0] / 1e6
        cur.execute("""SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c
                       JOIN pg_namespace n ON n.oid = c.relnamespace
                       WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY 2 DESC""")
        out["table_total_mb"] = {name: size / 1e6 for name, size in cur.fetchall()}
    conn.commit()
    return out


# ---------------------------------------------------------------- queries


def hashes_of(hasher, subjects: list[str]) -> list[uuid.UUID]:
    h = hasher.hash_many(subjects)
    raw = h.astype(">u8").tobytes()
    return [uuid.UUID(bytes=raw[16 * i : 16 * i + 16]) for i in range(len(subjects))]


def pg_impact(conn, hasher, subjects: list[str]) -> dict:
    """Hash the raw ids (the same keyed hash expunge uses) and run the impact statement."""
    subjects = list(dict.fromkeys(subjects))
    with conn.cursor() as cur:
        cur.execute(IMPACT_SQL, {"h": hashes_of(hasher, subjects)}, prepare=True)
        doc = cur.fetchone()[0]
    conn.rollback()
    return doc


def compare(pg: dict, ex: dict) -> list[str]:
    """Differences between the PostgreSQL answer and expunge's (empty when they agree)."""
    diffs = []
    if pg["records"] != ex["records"]:
        diffs.append(f"records {pg['records']} != {ex['records']}")
    if pg["found"] != ex["subjects"]["found"]:
        diffs.append(f"found {pg['found']} != {ex['subjects']['found']}")
    pd = {d["id"]: (d["records"], d["rows"]) for d in pg["datasets"]}
    ed = {d["id"]: (d["records"], d["rows"]) for d in ex["datasets"]}
    if pd != ed:
        diffs.append(f"datasets differ: {sorted(set(pd.items()) ^ set(ed.items()))[:4]}")
    pr = {r["id"]: (r["records"], tuple(i["records"] for i in r["inputs"]),
                    tuple((s["shard"], s["records"], s["first_slice"]) for s in r["shards"])) for r in pg["runs"]}
    er = {r["id"]: (r["records"], tuple(i["records"] for i in r["inputs"]),
                    tuple((s["shard"], s["records"], s["first_slice"]) for s in r["shards"])) for r in ex["runs"]}
    if pr != er:
        diffs.append(f"runs differ: {sorted(set(pr.items()) ^ set(er.items()))[:3]}")
    pck = {r["id"]: r["clean_checkpoints"] for r in pg["runs"] if r["shards"]}
    eck = {r["id"]: r["first_seen"]["clean_checkpoints"] for r in ex["runs"] if r["shards"] and r["first_seen"]}
    if pck != eck:
        diffs.append(f"clean checkpoints differ: {pck} vs {eck}")
    pm = {m["id"]: (m["direct"], len(m["path"] or [])) for m in pg["models"]}
    em = {m["id"]: (m["direct"], len(m["path"])) for m in ex["models"]}
    if pm != em:
        diffs.append(f"models differ: {sorted(set(pm.items()) ^ set(em.items()))[:4]}")
    return diffs


def explain(conn, hasher, subjects: list[str]) -> str:
    with conn.cursor() as cur:
        cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + IMPACT_SQL, {"h": hashes_of(hasher, subjects)})
        text = "\n".join(r[0] for r in cur.fetchall())
    conn.rollback()
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gen-dir", type=Path, required=True, help="directory made by gen.py (raw/, manifest.json)")
    ap.add_argument("--singles", type=int, default=200)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--check", type=int, default=50, help="subjects whose answers are compared with expunge's")
    ap.add_argument("--workdir", type=Path, help="where the throwaway cluster goes (default: system temp)")
    ap.add_argument("--shared-buffers", default="4GB")
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--out", type=Path, help="results JSON (default bench/out/pg-<scale>.json)")
    args = ap.parse_args(argv)

    try:
        import psycopg
    except ImportError:
        raise SystemExit("psycopg is missing: .venv/bin/pip install 'psycopg[binary]' (the `bench` extra)") from None

    use_bench_secret()
    gen = args.gen_dir.resolve()
    man = json.loads((gen / "manifest.json").read_text())
    raw = gen / man.get("raw", "raw")
    scale = man["scale"]
    rng = np.random.default_rng(args.seed)
    from expunge.lineage.keys import SubjectHasher, load_secret

    hasher = SubjectHasher(load_secret(gen / man.get("store", "store")))
    settings = {
        "shared_buffers": args.shared_buffers, "work_mem": "256MB", "maintenance_work_mem": "2GB",
        "effective_cache_size": "12GB", "max_parallel_workers_per_gather": "2",
        "max_parallel_maintenance_workers": "2", "random_page_cost": "1.1", "jit": "off",
        "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", "wal_level": "minimal",
        "max_wal_senders": "0", "max_wal_size": "20GB", "checkpoint_timeout": "1h",
    }
    bindir = ensure_postgres()
    results: dict = {"kind": "expunge.bench.pg", "scale": scale, "gen_dir": str(gen), "settings": settings,
                     "code": code_version(),
                     "generated": man["counts"]}

    # Make SIGTERM/SIGHUP unwind through `finally` so the server is always stopped.
    def _raise(signum, frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise)

    cluster = Cluster(bindir, args.workdir, settings)
    try:
        t = time.perf_counter()
        cluster.start()
        results["server"] = {"bindir": str(bindir), "port": cluster.port, "start_s": time.perf_counter() - t}
        with psycopg.connect(cluster.conninfo()) as conn:
            with conn.cursor() as cur:
                cur.execute("SHOW server_version")
                results["server"]["version"] = cur.fetchone()[0]
            conn.commit()
            print(f"PostgreSQL {results['server']['version']} on 127.0.0.1:{cluster.port} in {cluster.tmp}",
                  flush=True)
            print("loading ...", flush=True)
            results["load"] = load(conn, raw)

            subjects = man["sample_subjects"]
            # Warm-up (also lets psycopg prepare the statement).
            for sid in rng.choice(subjects, size=min(50, len(subjects)), replace=False):
                pg_impact(conn, hasher, [str(sid)])
            pick = [str(s) for s in rng.choice(subjects, size=min(args.singles, len(subjects)), replace=False)]
            lat = []
            for sid in pick:
                t = time.perf_counter()
                pg_impact(conn, hasher, [sid])
                lat.append(time.perf_counter() - t)
            ms = [x * 1e3 for x in lat]
            results["single"] = {"n": len(ms), "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95),
                                 "p99_ms": percentile(ms, 99), "mean_ms": statistics.fmean(ms)}
            batch = [str(s) for s in rng.choice(subjects, size=min(args.batch, len(subjects)), replace=False)]
            walls = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                doc = pg_impact(conn, hasher, batch)
                walls.append(time.perf_counter() - t)
            results["batch"] = {"subjects": len(batch), "wall_s": walls, "records": doc["records"],
                                "datasets": len(doc["datasets"]), "runs": len(doc["runs"]),
                                "models": len(doc["models"])}
            results["explain_single"] = explain(conn, hasher, pick[:1])

            # Same answers as expunge?
            mismatches = []
            store_dir = gen / man.get("store", "store")
            if args.check and (store_dir / "STORE").exists():
                from expunge import Store

                st = Store.open(store_dir)
                checked = [str(s) for s in rng.choice(subjects, size=min(args.check, len(subjects)), replace=False)]
                for sid in checked + man["absent_subjects"][:3]:
                    d = compare(pg_impact(conn, hasher, [sid]), st.impact([sid]).to_dict())
                    if d:
                        mismatches.append({"subject": sid, "diffs": d})
                d = compare(doc, st.impact(batch).to_dict())
                if d:
                    mismatches.append({"subject": f"batch of {len(batch)}", "diffs": d})
                results["agreement"] = {"checked_subjects": len(checked) + 3, "checked_batch": len(batch),
                                        "mismatches": mismatches}
    finally:
        cluster.stop_and_remove()
    results["cleaned_up"] = not cluster.tmp.exists()

    out_path = args.out or HERE / "out" / f"pg-{scale}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=1))
    L, s, b = results["load"], results["single"], results["batch"]
    print(f"\nPostgreSQL {results['server']['version']} — scale {scale}")
    print(f"load: COPY {L['copy_s']:.1f}s + indexes {L['index_s']:.1f}s + VACUUM ANALYZE "
          f"{L['vacuum_analyze_s']:.1f}s = {L['total_s']:.1f}s; database {L['database_mb']:.0f} MB")
    print("  " + ", ".join(f"{k} {v:.0f} MB" for k, v in L["table_total_mb"].items()))
    print(f"single subject ({s['n']}): p50 {s['p50_ms']:.2f} ms, p95 {s['p95_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms")
    print(f"batch of {b['subjects']:,}: " + " / ".join(f"{w:.2f}" for w in b["wall_s"]) + " s")
    if "agreement" in results:
        a = results["agreement"]
        print(f"agreement with expunge: {a['checked_subjects']} subjects + a batch of {a['checked_batch']:,}: "
              + ("identical" if not a["mismatches"] else f"{len(a['mismatches'])} MISMATCH(ES): {a['mismatches'][:2]}"))
    print(f"server stopped and {cluster.tmp} removed: {results['cleaned_up']}")
    print(f"results: {out_path}")
    return 0 if not results.get("agreement", {}).get("mismatches") else 1


if __name__ == "__main__":
    sys.exit(main())
