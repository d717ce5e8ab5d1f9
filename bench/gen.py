"""Seeded generator: build an expunge store through the Python API at a named scale.

    .venv/bin/python bench/gen.py --scale XS --out /tmp/expunge-bench-xs
    .venv/bin/python bench/gen.py --scale S  --out /tmp/expunge-bench-s

Writes, under --out:
    store/          the expunge store (subject-hash secret: bench/_common.py BENCH_SECRET via $EXPUNGE_SECRET)
    raw/            the same lineage as plain Parquet tables, for bench/pg_compare.py
    runfiles/       rows_file / facts_file Parquet files referenced by the run manifests
    manifest.json   what was generated, timings, sample subject ids (present and absent)

Shape of the data (scale S; XS is 1/100 of the data volume with a smaller but complete graph):
    - 1M subjects "c0000001".., 20M source records over 10 source datasets × 15 versions. Each
      version drops ~2% of the previous version's records and adds new ones (60% owned by subjects
      already in the store, 40% by subjects seen for the first time); later versions add more.
    - 50 derived versions: filters, samples, train/test splits (some of derived versions),
      aggregates (one row per subject, a list of its records) and joins of two datasets on subject,
      plus a filter over a composed version.
    - 2,000 runs with 1–3 inputs (train/val/eval), ~10% training on a row subset (rows_file),
      ~2% with unlearning facts (facts_file: shard/slice/first_step) and checkpoints.
    - 2,000 model versions (one per run) in 25 families; 100 fine-tuned from an earlier model.

All string id columns are built with pyarrow compute; nothing loops in Python over records.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyroaring import BitMap

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Timer, code_version, current_rss_mb, peak_rss_mb, use_bench_secret  # noqa: E402

SCALES = {
    "S": dict(
        subjects=1_000_000, records=20_000_000, source_datasets=10, source_versions=150, derived_versions=50,
        runs=2000, fact_runs=40, finetunes=100, model_families=25, sample_present=20_000, sample_absent=100,
    ),
    # 1/100 of the data volume; the graph is scaled down less so that every kind of node is present.
    "XS": dict(
        subjects=10_000, records=200_000, source_datasets=3, source_versions=15, derived_versions=10,
        runs=40, fact_runs=3, finetunes=4, model_families=5, sample_present=10_000, sample_absent=100,
    ),
}

SUBJECT_PREFIX, SUBJECT_WIDTH = "c", 7
RECORD_WIDTH = 9
DROP_FRAC = 0.02          # each source version drops this share of the previous version's records
FIRST_FRAC = 0.10         # share of a dataset's records in its first version
GROWTH = 1.2              # new records per version grow geometrically (later versions add more)
KNOWN_OWNER_FRAC = 0.6    # share of a version's new records owned by subjects already in the store
SUBSET_RUN_FRAC = 0.10
STAGES = ["dev", "staging", "production", "archived", "superseded"]
STAGE_P = [0.45, 0.2, 0.1, 0.15, 0.1]


# ---------------------------------------------------------------- id strings (vectorised)


def make_ids(prefix: str, nums: np.ndarray, width: int) -> pa.Array:
    s = pc.utf8_lpad(pc.cast(pa.array(np.asarray(nums, dtype=np.int64)), pa.string()), width=width, padding="0")
    return pc.binary_join_element_wise(prefix, s, "")


def subject_ids(n: int) -> pa.Array:
    """Subject i (0-based) is "c%07d" % (i + 1)."""
    return make_ids(SUBJECT_PREFIX, np.arange(1, n + 1), SUBJECT_WIDTH)


def list_array(offsets: np.ndarray, values: pa.Array) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)


def ranges_concat(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + c) for each (s, c)."""
    counts = counts.astype(np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    return np.arange(total, dtype=np.int64) + np.repeat(starts.astype(np.int64) - (np.cumsum(counts) - counts), counts)


# ---------------------------------------------------------------- bookkeeping


@dataclass
class SourceDS:
    index: int
    name: str
    prefix: str
    budget: int                       # records this dataset will have
    owner: np.ndarray                 # subject index per record index
    ords: np.ndarray                  # store ordinal per record index
    n: int = 0                        # records created so far
    members: np.ndarray | None = None  # record indices of the latest version (sorted)
    versions: int = 0

    def rids(self, idx: np.ndarray) -> pa.Array:
        return make_ids(self.prefix, idx, RECORD_WIDTH)


@dataclass
class Version:
    vid: int                 # 1-based, equals the store's version_id (checked at the end)
    label: str
    dataset: str
    kind: str
    n_rows: int
    src: int | None = None               # record-space: source dataset index
    members: object = None               # record-space: BitMap of the record indices of `src` it holds
    row_ids: pa.Array | None = None      # composed: row ids
    flat_row: np.ndarray | None = None   # composed: (row position, ordinal) pairs
    flat_ord: np.ndarray | None = None
    parents: list[str] = field(default_factory=list)
    n_records: int = 0

    @property
    def composed(self) -> bool:
        return self.members is None

    def idx(self) -> np.ndarray:
        """Sorted record indices (record-space versions); also the version's row order."""
        return np.frombuffer(self.members.to_array(), dtype=np.uint32)


class Gen:
    def __init__(self, scale: str, out: Path, seed: int):
        self.cfg = SCALES[scale]
        self.scale = scale
        self.out = out
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.timer = Timer()
        self.api = Timer()  # seconds inside expunge API calls only
        self.N = self.cfg["subjects"]
        self.R = self.cfg["records"]
        self.next_ord = 0
        self.n_known = 0      # subjects 0..n_known-1 own at least one record
        self.cum_new = 0
        self.versions: list[Version] = []
        self.by_label: dict[str, Version] = {}
        self.dataset_versions: dict[str, int] = {}
        self.mem_rows = 0
        self.api_rows = {"source": 0, "derived": 0}
        self.api_records = {"source": 0, "derived": 0}
        self.max_call_rss = {"above_start_mb": 0.0}
        self.reopen = False

    # ------------------------------------------------------------ setup

    def setup(self) -> None:
        from expunge import Store

        use_bench_secret()
        self.store_dir = self.out / "store"
        self.raw_dir = self.out / "raw"
        self.run_dir = self.out / "runfiles"
        for d in (self.raw_dir, self.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.store = Store.init(self.store_dir)
        self.subjects = subject_ids(self.N)
        nd = self.cfg["source_datasets"]
        w = self.rng.uniform(0.5, 1.5, size=nd)
        budgets = np.floor(self.R * w / w.sum()).astype(np.int64)
        budgets[-1] += self.R - budgets.sum()
        self.sources = [
            SourceDS(i, f"src{i:02d}", f"src{i:02d}-r", int(b), np.zeros(int(b), np.int32), np.zeros(int(b), np.uint32))
            for i, b in enumerate(budgets)
        ]
        self.mem_writer = pq.ParquetWriter(
            self.raw_dir / "memberships.parquet",
            pa.schema([("version_id", pa.int32()), ("record_ord", pa.uint32())]), compression="zstd",
        )
        self.comp_writer = pq.ParquetWriter(
            self.raw_dir / "composite_rows.parquet",
            pa.schema([("version_id", pa.int32()), ("row_idx", pa.int32()), ("record_ord", pa.uint32())]),
            compression="zstd",
        )

    def maybe_reopen(self) -> None:
        if self.reopen:
            from expunge import Store

            self.store = Store.open(self.store_dir)

    @contextmanager
    def mem_probe(self, what: str, rows: int):
        """Track how far an API call pushes the process's peak RSS above the RSS it started with.

        Only calls that raise the high-water mark are seen; the largest one always is.
        """
        before, hwm = current_rss_mb(), peak_rss_mb()
        yield
        after = peak_rss_mb()
        if after > hwm and after - before > self.max_call_rss["above_start_mb"]:
            self.max_call_rss = {"above_start_mb": after - before, "call": what, "rows": rows,
                                 "start_rss_mb": before, "peak_rss_mb": after, "version_no": len(self.versions) + 1}

    # ------------------------------------------------------------ owners of new records

    def new_owners(self, m: int) -> np.ndarray:
        """Subject indices for m new records: some already known, the rest subjects seen for the first time."""
        self.cum_new += m
        target = self.N if self.cum_new >= self.R else int(round(self.N * self.cum_new / self.R))
        f = max(0, target - self.n_known)
        m_known = int(round(KNOWN_OWNER_FRAC * m)) if self.n_known else 0
        m_known = min(m_known, m - min(f, m))
        m_fresh = m - m_known
        f = min(f, m_fresh)
        parts = []
        if m_known:
            parts.append(self.rng.integers(0, self.n_known, size=m_known))
        if f:
            fresh = np.arange(self.n_known, self.n_known + f)
            parts.append(fresh)  # each fresh subject owns at least one record
            if m_fresh > f:
                parts.append(self.rng.integers(self.n_known, self.n_known + f, size=m_fresh - f))
        elif m_fresh:
            parts.append(self.rng.integers(0, max(self.n_known, 1), size=m_fresh))
        self.n_known += f
        owners = np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)
        self.rng.shuffle(owners)
        return owners

    # ------------------------------------------------------------ recording versions

    def _add_version(self, v: Version, info) -> Version:
        v.label = info.id
        v.vid = len(self.versions) + 1
        v.n_records = info.records
        self.versions.append(v)
        self.by_label[v.label] = v
        # raw dump
        if v.composed:
            ords = np.unique(v.flat_ord)
            self.comp_writer.write_table(pa.table({
                "version_id": pa.array(np.full(v.flat_row.size, v.vid, np.int32)),
                "row_idx": pa.array(v.flat_row.astype(np.int32)),
                "record_ord": pa.array(v.flat_ord.astype(np.uint32)),
            }))
        else:
            ords = self.sources[v.src].ords[v.idx()]
        if len(ords) != info.records:
            raise AssertionError(f"{v.label}: store says {info.records} records, generator expected {len(ords)}")
        self.mem_writer.write_table(pa.table({
            "version_id": pa.array(np.full(ords.size, v.vid, np.int32)), "record_ord": pa.array(ords, pa.uint32()),
        }))
        self.mem_rows += int(ords.size)
        return v

    def version_ords(self, v: Version) -> np.ndarray:
        if v.composed:
            return np.unique(v.flat_ord)
        return self.sources[v.src].ords[v.idx()]

    # ------------------------------------------------------------ source versions

    def source_version(self, ds: SourceDS, k: int, n_versions: int) -> None:
        rng = self.rng
        if k == 0:
            m = int(round(FIRST_FRAC * ds.budget))
            kept = np.zeros(0, np.uint32)
        else:
            w = GROWTH ** np.arange(1, n_versions)
            sched = np.floor((ds.budget - round(FIRST_FRAC * ds.budget)) * np.cumsum(w) / w.sum()).astype(np.int64)
            m = int(round(FIRST_FRAC * ds.budget) + sched[k - 1]) - ds.n
            if k == n_versions - 1:
                m = ds.budget - ds.n
            prev = ds.members
            drop = rng.choice(prev.size, size=int(round(DROP_FRAC * prev.size)), replace=False)
            keep = np.ones(prev.size, bool)
            keep[drop] = False
            kept = prev[keep]
        new_idx = np.arange(ds.n, ds.n + m, dtype=np.uint32)
        ds.owner[ds.n : ds.n + m] = self.new_owners(m)
        members = np.concatenate([kept, new_idx])  # sorted: new records have the largest indices
        with self.timer("build tables"):
            table = pa.table({
                "subject_id": self.subjects.take(pa.array(ds.owner[members])),
                "record_id": ds.rids(members),
            })
        self.maybe_reopen()
        with self.api("ingest_source"), self.mem_probe("ingest_source", len(table)):
            info = self.store.ingest_source(table, name=ds.name, subject_col="subject_id", record_col="record_id")
        if info.new_records != m:
            raise AssertionError(f"{info.id}: {info.new_records} new records, expected {m}")
        # The store numbers new records in table order from its next ordinal.
        ds.ords[ds.n : ds.n + m] = np.arange(self.next_ord, self.next_ord + m, dtype=np.uint32)
        self.next_ord += m
        ds.n += m
        ds.members = members
        ds.versions += 1
        self.api_rows["source"] += info.rows
        self.api_records["source"] += info.records
        self._add_version(Version(0, info.id, ds.name, "source", info.rows, src=ds.index, members=BitMap(members)), info)

    # ------------------------------------------------------------ derived versions

    def _ingest_derived(self, table, *, name, parents, kind, v: Version, **kw) -> Version:
        self.maybe_reopen()
        with self.api("ingest_dataset"), self.mem_probe(f"ingest_dataset {kind}", len(table)):
            info = self.store.ingest_dataset(table, name=name, parents=parents, kind=kind, **kw)
        self.api_rows["derived"] += info.rows
        self.api_records["derived"] += info.records
        v.parents = list(parents)
        return self._add_version(v, info)

    def pick_record_parent(self, prefer_source: float = 0.7) -> Version:
        rng = self.rng
        derived = [v for v in self.versions if v.kind != "source" and not v.composed and v.n_rows >= 1000]
        if derived and rng.random() > prefer_source:
            return derived[int(rng.integers(len(derived)))]
        ds = self.sources[int(rng.integers(len(self.sources)))]
        while ds.versions == 0:
            ds = self.sources[int(rng.integers(len(self.sources)))]
        return self.by_label[f"{ds.name}@{ds.versions}"]

    def row_ids(self, v: Version) -> pa.Array:
        return v.row_ids if v.composed else self.sources[v.src].rids(v.idx())

    def subset(self, parent: Version, keep_pos: np.ndarray, name: str, kind: str) -> Version:
        keep_pos = np.sort(keep_pos)
        ids = self.row_ids(parent).take(pa.array(keep_pos))
        table = pa.table({"row_id": ids})
        if parent.composed:
            sel = np.isin(parent.flat_row, keep_pos)
            new_row = np.searchsorted(keep_pos, parent.flat_row[sel])
            v = Version(0, "", name, kind, len(keep_pos), row_ids=ids, flat_row=new_row, flat_ord=parent.flat_ord[sel])
        else:
            v = Version(0, "", name, kind, len(keep_pos), src=parent.src, members=BitMap(parent.idx()[keep_pos]))
        return self._ingest_derived(table, name=name, parents=[parent.label], kind=kind, record_col="row_id", v=v)

    def derived_op(self, op: str) -> None:
        rng = self.rng
        if op in ("filter", "sample"):
            p = self.pick_record_parent()
            q = rng.uniform(0.3, 0.8) if op == "filter" else rng.uniform(0.05, 0.25)
            keep = np.flatnonzero(rng.random(p.n_rows) < q)
            tag = "filt" if op == "filter" else "samp"
            self.subset(p, keep, f"{p.dataset}.{tag}{int(rng.integers(2))}", op)
        elif op == "split":
            p = self.pick_record_parent(prefer_source=0.6)
            perm = rng.permutation(p.n_rows)
            cut = int(0.8 * p.n_rows)
            self.subset(p, perm[:cut], f"{p.dataset}.train", "split")
            self.subset(p, perm[cut:], f"{p.dataset}.test", "split")
        elif op == "filter_comp":
            comps = [v for v in self.versions if v.composed]
            p = comps[int(rng.integers(len(comps)))]
            keep = np.flatnonzero(rng.random(p.n_rows) < rng.uniform(0.3, 0.7))
            self.subset(p, keep, f"{p.dataset}.filt", "filter")
        elif op == "aggregate":
            self.aggregate(self.pick_record_parent(prefer_source=0.8))
        elif op == "join":
            a = self.pick_record_parent(prefer_source=1.0)
            b = self.pick_record_parent(prefer_source=1.0)
            while b.src == a.src and len(self.sources) > 1:
                b = self.pick_record_parent(prefer_source=1.0)
            self.join(a, b)
        else:
            raise ValueError(op)

    def aggregate(self, p: Version) -> None:
        """One row per subject of the parent: the list of that subject's records (e.g. per-customer features)."""
        ds = self.sources[p.src]
        members = p.idx()
        owners = ds.owner[members]
        order = np.argsort(owners, kind="stable")
        so = owners[order]
        starts = np.flatnonzero(np.r_[True, so[1:] != so[:-1]])
        offsets = np.r_[starts, so.size]
        rec_idx = members[order]
        name = f"{p.dataset}.agg"
        row_ids = make_ids(f"{name}-", so[starts] + 1, SUBJECT_WIDTH)
        table = pa.table({"row_id": row_ids, "records": list_array(offsets, ds.rids(rec_idx))})
        counts = np.diff(offsets)
        flat_row = np.repeat(np.arange(starts.size), counts)
        v = Version(0, "", name, "aggregate", starts.size, row_ids=row_ids, flat_row=flat_row,
                    flat_ord=ds.ords[rec_idx])
        self._ingest_derived(table, name=name, parents=[p.label], kind="aggregate",
                             sources={p.label: "records"}, row_col="row_id", v=v)

    def join(self, a: Version, b: Version) -> None:
        """Rows of a sample of `a`, each joined with up to 5 records of `b` owned by the same subject."""
        rng = self.rng
        da, db = self.sources[a.src], self.sources[b.src]
        a_all, b_all = a.idx(), b.idx()
        a_idx = a_all[rng.random(a_all.size) < rng.uniform(0.2, 0.3)]
        b_own = db.owner[b_all]
        order = np.argsort(b_own, kind="stable")
        b_sorted, b_idx = b_own[order], b_all[order]
        a_own = da.owner[a_idx]
        lo = np.searchsorted(b_sorted, a_own, "left")
        hi = np.minimum(np.searchsorted(b_sorted, a_own, "right"), lo + 5)
        hit = hi > lo
        a_idx, lo, hi = a_idx[hit], lo[hit], hi[hit]
        counts = hi - lo
        right = b_idx[ranges_concat(lo, counts)]
        offsets = np.r_[0, np.cumsum(counts)]
        name = f"{a.dataset}+{b.dataset}"
        row_ids = da.rids(a_idx)
        table = pa.table({"row_id": row_ids, "left": da.rids(a_idx), "right": list_array(offsets, db.rids(right))})
        n = a_idx.size
        flat_row = np.concatenate([np.arange(n), np.repeat(np.arange(n), counts)])
        flat_ord = np.concatenate([da.ords[a_idx], db.ords[right]])
        v = Version(0, "", name, "join", n, row_ids=row_ids, flat_row=flat_row, flat_ord=flat_ord)
        self._ingest_derived(table, name=name, parents=[a.label, b.label], kind="join",
                             sources={a.label: "left", b.label: "right"}, row_col="row_id", v=v)

    def derived_plan(self) -> list[str]:
        D = self.cfg["derived_versions"]
        n_split = max(1, round(D * 0.12))
        n_agg = max(1, round(D * 0.06))
        n_join = max(1, round(D * 0.06))
        fixed = ["split"] * n_split + ["aggregate"] * n_agg + ["join"] * n_join + ["filter_comp"]
        rest = D - (2 * n_split + n_agg + n_join + 1)
        ops = fixed + ["filter"] * ((rest + 1) // 2) + ["sample"] * (rest // 2)
        self.rng.shuffle(ops)
        # A filter over a composed version needs one to exist first.
        first_comp = min(i for i, o in enumerate(ops) if o in ("aggregate", "join"))
        fc = ops.index("filter_comp")
        if fc < first_comp:
            ops[fc], ops[first_comp] = ops[first_comp], ops[fc]
        return ops

    def datasets_phase(self) -> None:
        n_ds = self.cfg["source_datasets"]
        per = self.cfg["source_versions"] // n_ds
        extra = self.cfg["source_versions"] - per * n_ds
        nv = [per + (1 if i < extra else 0) for i in range(n_ds)]
        ops = self.derived_plan()
        rounds = max(nv)
        done = 0
        t0 = time.perf_counter()
        for r in range(rounds):
            for ds, n in zip(self.sources, nv):
                if r < n:
                    self.source_version(ds, r, n)
            target = round(len(ops) * (r + 1) / rounds) if r > 0 else 0
            while done < target:
                self.derived_op(ops[done])
                done += 1
            print(f"  round {r + 1}/{rounds}: {len(self.versions)} versions, {self.mem_rows / 1e6:.1f}M memberships, "
                  f"{self.next_ord / 1e6:.2f}M records, {time.perf_counter() - t0:.0f}s, rss {current_rss_mb():.0f} MiB",
                  flush=True)
        assert self.next_ord == self.R, (self.next_ord, self.R)
        assert self.n_known == self.N, (self.n_known, self.N)

    # ------------------------------------------------------------ runs and models

    def runs_phase(self) -> None:
        rng = self.rng
        n_runs = self.cfg["runs"]
        families = [f"model-{i:02d}" for i in range(self.cfg["model_families"])]
        subset_runs = set(rng.choice(n_runs, size=max(1, round(SUBSET_RUN_FRAC * n_runs)), replace=False).tolist())
        fact_runs = set(rng.choice(n_runs, size=self.cfg["fact_runs"], replace=False).tolist())
        lo = min(n_runs - 1, max(1, n_runs // 100))
        finetunes = set(rng.choice(np.arange(lo, n_runs), size=self.cfg["finetunes"], replace=False).tolist())
        derived = [v for v in self.versions if v.kind != "source"]
        record_space = [v for v in self.versions if not v.composed]
        model_labels: list[str] = []
        family_count: dict[str, int] = {}
        raw = {k: [] for k in ("run_inputs", "run_subsets", "facts", "checkpoints", "runs", "models", "model_parents")}
        t0 = time.perf_counter()
        for i in range(n_runs):
            run_id = i + 1
            name = f"run-{run_id:05d}"
            fam = families[int(rng.integers(len(families)))]
            n_in = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
            if i in fact_runs:
                train = record_space[int(rng.integers(len(record_space)))]
            elif rng.random() < 0.7:
                train = derived[int(rng.integers(len(derived)))]
            else:
                train = self.versions[int(rng.integers(len(self.versions)))]
            chosen = [train]
            while len(chosen) < n_in:
                c = self.versions[int(rng.integers(len(self.versions)))]
                if c not in chosen:
                    chosen.append(c)
            inputs = []
            train_rows = np.arange(train.n_rows)
            for pos, (v, role) in enumerate(zip(chosen, ["train", "val", "eval"])):
                inp = {"dataset": v.label, "role": role}
                has_subset = role == "train" and i in subset_runs
                if has_subset:
                    frac = rng.uniform(0.02, 0.2)
                    sel = np.flatnonzero(rng.random(v.n_rows) < frac)
                    if sel.size == 0:
                        sel = np.array([0])
                    f = f"{name}-rows.parquet"
                    with self.timer("build tables"):
                        pq.write_table(pa.table({"row_id": self.row_ids(v).take(pa.array(sel))}), self.run_dir / f)
                    inp["rows_file"] = f
                    train_rows = sel
                    if v.composed:
                        ords = np.unique(v.flat_ord[np.isin(v.flat_row, sel)])
                    else:
                        ords = self.sources[v.src].ords[v.idx()[sel]]
                    raw["run_subsets"].append(pa.table({
                        "run_id": pa.array(np.full(ords.size, run_id, np.int32)),
                        "position": pa.array(np.full(ords.size, pos, np.int16)),
                        "record_ord": pa.array(ords, pa.uint32()),
                    }))
                inputs.append(inp)
                raw["run_inputs"].append((run_id, pos, v.vid, role, has_subset))
            run = {
                "name": name, "trainer": "bench.trainers:fit", "model_family": fam, "seed": int(i),
                "code_version": hashlib.sha1(f"code-{i // 50}".encode()).hexdigest()[:12],
                "config": {"lr": float(np.round(10 ** rng.uniform(-4, -1), 6)), "epochs": int(rng.integers(1, 20))},
                "cost": {"wall_seconds": float(rng.uniform(60, 36000)), "cpu_seconds": float(rng.uniform(60, 72000))},
                "inputs": inputs,
            }
            if i in fact_runs:
                n = train_rows.size
                n_shards, n_slices, batch = int(rng.integers(4, 17)), int(rng.integers(4, 11)), 256
                steps = max(1, -(-n // batch))
                first = (rng.permutation(n) // batch).astype(np.int64)
                slice_ = np.minimum(first * n_slices // steps, n_slices - 1)
                shard = rng.integers(0, n_shards, size=n)
                f = f"{name}-facts.parquet"
                with self.timer("build tables"):
                    rows = self.row_ids(train).take(pa.array(train_rows))
                    pq.write_table(pa.table({"row_id": rows, "shard": shard, "slice": slice_, "first_step": first}),
                                   self.run_dir / f)
                run["facts_file"] = f
                run["shards"], run["slices"] = n_shards, n_slices
                ck = sorted({max(1, -(-k * steps // n_slices)) for k in range(1, n_slices + 1)})
                run["checkpoints"] = [
                    {"step": int(s), "path": f"/artifacts/{name}/ckpt-{s}.pt",
                     "sha256": hashlib.sha256(f"{name}-{s}".encode()).hexdigest()} for s in ck
                ]
                ords = self.sources[train.src].ords[train.idx()[train_rows]]
                raw["facts"].append(pa.table({
                    "run_id": pa.array(np.full(n, run_id, np.int32)), "record_ord": pa.array(ords, pa.uint32()),
                    "shard": pa.array(shard.astype(np.int32)), "slice": pa.array(slice_.astype(np.int32)),
                    "first_step": pa.array(first),
                }))
                for p, s in enumerate(ck):
                    raw["checkpoints"].append((run_id, p, int(s)))
            model = {
                "name": fam, "path": f"/artifacts/{fam}/{name}.pt",
                "sha256": hashlib.sha256(name.encode()).hexdigest(),
                "stage": str(rng.choice(STAGES, p=STAGE_P)),
            }
            parent = None
            if i in finetunes and model_labels:
                # Prefer recent models so that fine-tune chains form.
                j = len(model_labels) - 1 - int(min(rng.geometric(0.02), len(model_labels)) - 1)
                parent = model_labels[j]
                model["parents"] = [{"model": parent, "relation": "fine-tune"}]
            manifest = {"run": run, "models": [model]}
            with self.api("record_run"):
                res = self.store.record_run(manifest, base_dir=self.run_dir)
            label = res["models"][0]["id"]
            family_count[fam] = family_count.get(fam, 0) + 1
            assert label == f"{fam}@{family_count[fam]}", label
            model_labels.append(label)
            raw["runs"].append((run_id, name, fam))
            raw["models"].append((run_id, label, fam, family_count[fam], run_id, model["stage"]))
            if parent is not None:
                raw["model_parents"].append((run_id, model_labels.index(parent) + 1, "fine-tune"))
            if (i + 1) % max(1, n_runs // 10) == 0:
                print(f"  runs {i + 1}/{n_runs}: {time.perf_counter() - t0:.0f}s", flush=True)
        self.run_stats = dict(runs=n_runs, subset_runs=len(subset_runs), fact_runs=len(fact_runs),
                              models=len(model_labels), finetuned_models=len(raw["model_parents"]))
        self._write_raw_runs(raw)

    def _write_raw_runs(self, raw: dict) -> None:
        d = self.raw_dir

        def tbl(rows, names, types):
            cols = list(zip(*rows)) if rows else [[] for _ in names]
            return pa.table({n: pa.array(list(c), t) for n, c, t in zip(names, cols, types)})

        pq.write_table(tbl(raw["runs"], ["run_id", "name", "model_family"], [pa.int32(), pa.string(), pa.string()]),
                       d / "runs.parquet")
        pq.write_table(tbl(raw["run_inputs"], ["run_id", "position", "version_id", "role", "has_subset"],
                           [pa.int32(), pa.int16(), pa.int32(), pa.string(), pa.bool_()]), d / "run_inputs.parquet")
        sub_schema = pa.schema([("run_id", pa.int32()), ("position", pa.int16()), ("record_ord", pa.uint32())])
        pq.write_table(pa.concat_tables(raw["run_subsets"]) if raw["run_subsets"] else sub_schema.empty_table(),
                       d / "run_subsets.parquet")
        facts_schema = pa.schema([("run_id", pa.int32()), ("record_ord", pa.uint32()), ("shard", pa.int32()),
                                  ("slice", pa.int32()), ("first_step", pa.int64())])
        pq.write_table(pa.concat_tables(raw["facts"]) if raw["facts"] else facts_schema.empty_table(),
                       d / "facts.parquet")
        pq.write_table(tbl(raw["checkpoints"], ["run_id", "position", "step"], [pa.int32(), pa.int16(), pa.int64()]),
                       d / "checkpoints.parquet")
        pq.write_table(tbl(raw["models"], ["model_id", "label", "name", "version_no", "run_id", "stage"],
                           [pa.int32(), pa.string(), pa.string(), pa.int32(), pa.int32(), pa.string()]),
                       d / "models.parquet")
        pq.write_table(tbl(raw["model_parents"], ["model_id", "parent_model_id", "relation"],
                           [pa.int32(), pa.int32(), pa.string()]), d / "model_parents.parquet")

    # ------------------------------------------------------------ raw dump + checks

    def finish_raw(self) -> None:
        self.mem_writer.close()
        self.comp_writer.close()
        vt = pa.table({
            "version_id": pa.array([v.vid for v in self.versions], pa.int32()),
            "label": [v.label for v in self.versions],
            "dataset": [v.dataset for v in self.versions],
            "version_no": pa.array([int(v.label.rpartition("@")[2]) for v in self.versions], pa.int32()),
            "kind": [v.kind for v in self.versions],
            "composed": [v.composed for v in self.versions],
            "n_rows": pa.array([v.n_rows for v in self.versions], pa.int64()),
            "n_records": pa.array([v.n_records for v in self.versions], pa.int64()),
            "parents": [v.parents for v in self.versions],
        })
        pq.write_table(vt, self.raw_dir / "versions.parquet")
        # records(subject_hash, record_ord): the store's keyed subject hash (16 bytes), computed once per subject.
        digests = self.store.hasher.hash_many(self.subjects.to_pylist())  # (N, 2) uint64, big-endian halves
        digest_bytes = digests.astype(">u8").tobytes()
        all_h = np.frombuffer(digest_bytes, dtype=np.uint8).reshape(self.N, 16)
        w = pq.ParquetWriter(self.raw_dir / "records.parquet",
                             pa.schema([("subject_hash", pa.binary(16)), ("record_ord", pa.uint32())]),
                             compression="zstd")
        for ds in self.sources:
            h = np.ascontiguousarray(all_h[ds.owner[: ds.n]])
            arr = pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), ds.n, [None, pa.py_buffer(h.tobytes())])
            w.write_table(pa.table({"subject_hash": arr, "record_ord": pa.array(ds.ords[: ds.n], pa.uint32())}))
        w.close()

    def check_store_ids(self) -> None:
        """The raw tables use the store's own ids: check that they agree with its catalog."""
        import duckdb

        with self.store.read() as con:
            rows = con.execute(
                "SELECT v.version_id, d.name || '@' || v.version_no, v.n_records FROM dataset_versions v "
                "JOIN datasets d USING (dataset_id) ORDER BY v.version_id").fetchall()
            mine = [(v.vid, v.label, v.n_records) for v in self.versions]
            assert rows == mine, "version ids differ from the store's"
            segs = con.execute(
                "SELECT d.name, s.ord_start, s.n FROM record_segments s JOIN datasets d USING (dataset_id) "
                "ORDER BY s.ord_start").fetchall()
            total = sum(n for _, _, n in segs)
            assert total == self.R, (total, self.R)
            for name, start, n in segs:
                ds = self.sources[int(name[3:])]
                assert int(ds.ords[np.searchsorted(ds.ords[: ds.n], start)]) == start
            runs = con.execute("SELECT count(*), max(run_id) FROM runs").fetchall()[0]
            models = con.execute("SELECT count(*), max(model_id) FROM models").fetchall()[0]
            assert runs == (self.cfg["runs"], self.cfg["runs"]), runs
            assert models == (self.cfg["runs"], self.cfg["runs"]), models
        del duckdb

    # ------------------------------------------------------------ manifest

    def write_manifest(self, timings: dict) -> dict:
        rng = self.rng
        n_present = min(self.cfg["sample_present"], self.N)
        present = np.sort(rng.choice(self.N, size=n_present, replace=False)) + 1
        absent = np.arange(self.N + 1, self.N + 1 + self.cfg["sample_absent"])
        from _common import dir_size

        apparent, allocated = dir_size(self.store_dir)
        man = {
            "kind": "expunge.bench.gen",
            "scale": self.scale,
            "seed": self.seed,
            "reopen_per_ingest": self.reopen,
            "code": {"at_start": self.code_at_start, "at_end": code_version()},
            "config": self.cfg,
            "store": "store",
            "raw": "raw",
            "secret_env": "EXPUNGE_SECRET (bench/_common.py BENCH_SECRET)",
            "subjects": {"count": self.N, "prefix": SUBJECT_PREFIX, "width": SUBJECT_WIDTH},
            "source_datasets": [
                {"name": ds.name, "record_prefix": ds.prefix, "record_width": RECORD_WIDTH, "records": ds.n,
                 "versions": ds.versions, "latest": f"{ds.name}@{ds.versions}"}
                for ds in self.sources
            ],
            "counts": {
                "subjects": self.N,
                "source_records": self.next_ord,
                "dataset_versions": len(self.versions),
                "source_versions": sum(1 for v in self.versions if v.kind == "source"),
                "derived_versions": sum(1 for v in self.versions if v.kind != "source"),
                "composed_versions": sum(1 for v in self.versions if v.composed),
                "memberships": self.mem_rows,
                "memberships_source": self.api_records["source"],
                "memberships_derived": self.api_records["derived"],
                "rows_ingested": self.api_rows["source"] + self.api_rows["derived"],
                **self.run_stats,
            },
            "store_bytes": {"apparent": apparent, "allocated": allocated},
            "timings": timings,
            "sample_subjects": make_ids(SUBJECT_PREFIX, present, SUBJECT_WIDTH).to_pylist(),
            "absent_subjects": make_ids(SUBJECT_PREFIX, absent, SUBJECT_WIDTH).to_pylist(),
        }
        (self.out / "manifest.json").write_text(json.dumps(man, indent=1))
        return man


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=sorted(SCALES), default="XS")
    ap.add_argument("--out", type=Path, required=True, help="output directory (store/, raw/, manifest.json)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="remove --out first if it exists")
    ap.add_argument("--reopen", action="store_true",
                    help="open the store afresh for every ingest (as one process per ingest would: no warm "
                         "in-process caches); the reopen itself is not timed")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    if out.exists() and any(out.iterdir()):
        if not args.force:
            print(f"{out} exists and is not empty (use --force to replace it)", file=sys.stderr)
            return 2
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

    t_all = time.perf_counter()
    code_at_start = code_version()
    g = Gen(args.scale, out, args.seed)
    g.reopen = args.reopen
    g.code_at_start = code_at_start
    print(f"scale {args.scale}: {g.cfg}; expunge {code_at_start}", flush=True)
    g.setup()
    rss0 = peak_rss_mb()
    phases: dict[str, float] = {}

    t = time.perf_counter()
    print("phase 1: source and derived dataset versions", flush=True)
    g.datasets_phase()
    phases["datasets"] = time.perf_counter() - t
    rss_datasets = peak_rss_mb()

    t = time.perf_counter()
    print("phase 2: runs and model versions", flush=True)
    g.runs_phase()
    phases["runs"] = time.perf_counter() - t
    rss_runs = peak_rss_mb()

    t = time.perf_counter()
    print("phase 3: raw lineage dump + id checks", flush=True)
    g.finish_raw()
    g.check_store_ids()
    phases["raw_dump"] = time.perf_counter() - t
    phases["total"] = time.perf_counter() - t_all

    api = g.api.t
    mem = g.mem_rows
    ingest_s = api.get("ingest_source", 0.0) + api.get("ingest_dataset", 0.0)
    timings = {
        "phases_s": phases,
        "api_s": dict(api),
        "api_calls": dict(g.api.n),
        "build_tables_s": g.timer.t.get("build tables", 0.0),
        "memberships_per_s_api": mem / ingest_s if ingest_s else None,
        "memberships_per_s_source_api": g.api_records["source"] / api["ingest_source"],
        "memberships_per_s_derived_api": g.api_records["derived"] / api["ingest_dataset"],
        "memberships_per_s_phase": mem / phases["datasets"],
        "runs_per_s": g.cfg["runs"] / api["record_run"],
        "peak_rss_mb": {"after_setup": rss0, "after_datasets": rss_datasets, "after_runs": rss_runs,
                        "end": peak_rss_mb()},
        "ingest_call_peak": g.max_call_rss,
    }
    man = g.write_manifest(timings)
    c = man["counts"]
    print()
    print(f"store:   {g.store_dir}  ({man['store_bytes']['allocated'] / 1e6:.1f} MB on disk)")
    print(f"counts:  {c['subjects']:,} subjects, {c['source_records']:,} source records, "
          f"{c['dataset_versions']} dataset versions ({c['source_versions']} source, {c['derived_versions']} derived, "
          f"{c['composed_versions']} composed), {c['runs']} runs ({c['subset_runs']} with a row subset, "
          f"{c['fact_runs']} with facts), {c['models']} models ({c['finetuned_models']} fine-tuned)")
    print(f"TOTAL MEMBERSHIPS (sum of n_records over dataset versions): {mem:,}  "
          f"(source {c['memberships_source']:,}, derived {c['memberships_derived']:,}; rows ingested "
          f"{c['rows_ingested']:,})")
    print("phases:  " + ", ".join(f"{k} {v:.1f}s" for k, v in phases.items()))
    print("api:     " + ", ".join(f"{k} {v:.1f}s/{g.api.n[k]} calls" for k, v in api.items())
          + f"; building input tables {timings['build_tables_s']:.1f}s")
    print(f"ingest:  {timings['memberships_per_s_api'] / 1e6:.2f}M membership rows/s inside ingest_source+ingest_dataset "
          f"(source {timings['memberships_per_s_source_api'] / 1e6:.2f}M/s, derived "
          f"{timings['memberships_per_s_derived_api'] / 1e6:.2f}M/s); "
          f"{timings['memberships_per_s_phase'] / 1e6:.2f}M/s for the whole dataset phase")
    print(f"runs:    {timings['runs_per_s']:.1f} record_run calls/s")
    r = timings["peak_rss_mb"]
    print(f"peak RSS: {r['end']:.0f} MiB (after setup {r['after_setup']:.0f}, after datasets "
          f"{r['after_datasets']:.0f}, after runs {r['after_runs']:.0f}); includes the generator's own arrays")
    m = timings["ingest_call_peak"]
    if m.get("call"):
        print(f"          the ingest call that set the peak ({m['call']}, {m['rows']:,} rows, version "
              f"#{m['version_no']}) went {m['above_start_mb']:.0f} MiB above its starting RSS "
              f"({m['start_rss_mb']:.0f} → {m['peak_rss_mb']:.0f} MiB)")
    print(f"manifest: {out / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
