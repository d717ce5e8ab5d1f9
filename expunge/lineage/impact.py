"""Impact queries: subjects → records → dataset versions → runs → model versions.

The engine loads one catalog generation: every version's roaring bitmap into
memory, the run/input edges and the model graph into numpy arrays; subject
segments are memory-mapped. A query hashes the subjects, collects their
record ordinals with binary searches and intersects them with each version.
The run and model fan-out (a customer may touch thousands of runs) is then
computed on arrays: each version hit becomes a bit mask over the query's
records, a run's records are the OR of its inputs' masks, and affected models
are a breadth-first walk over a CSR child list.

The result keeps those arrays; `Impact.datasets/runs/models` and `to_dict()`
turn them into documents when read. Kept free of pyarrow, networkx and torch
so the `expunge impact` process starts fast.
"""

from __future__ import annotations

import json
from functools import cached_property
from typing import Sequence

import numpy as np
from pyroaring import BitMap, FrozenBitMap

from expunge.lineage.segments import Segment

ROLES = ("train", "val", "eval")
RELATIONS = ("fine-tune", "distill", "ensemble")
# Above this many query records, runs are computed with roaring unions instead of bit masks.
MASK_LIMIT = 64 * 64


def _frozen(path) -> FrozenBitMap:
    with open(path, "rb") as fh:
        return FrozenBitMap.deserialize(fh.read())


def _unique(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values. Plain `np.unique` imports numpy.ma on first use (20 ms of a command)."""
    a = np.sort(a)
    if a.size < 2:
        return a
    keep = np.empty(a.size, dtype=bool)
    keep[0] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]


def _popcount_rows(masks: np.ndarray) -> np.ndarray:
    return np.bitwise_count(masks).sum(axis=1, dtype=np.int64)


class ImpactEngine:
    """One catalog generation, loaded for fast impact queries."""

    @classmethod
    def load(cls, store, gen: str) -> "ImpactEngine":
        from expunge.lineage.store import attached

        with attached(store.root / gen) as con:
            return cls(store, con)

    def __init__(self, store, con):
        self.store = store
        data = store.data_dir
        rows = con.execute(
            """SELECT v.version_id, d.name, v.version_no, v.kind, v.n_rows, v.bitmap_file, v.rowmap_file
               FROM dataset_versions v JOIN datasets d USING (dataset_id) ORDER BY d.name, v.version_no"""
        ).fetchall()
        vindex = {r[0]: i for i, r in enumerate(rows)}
        self.v_label = [f"{r[1]}@{r[2]}" for r in rows]
        self.v_dataset = [r[1] for r in rows]
        self.v_no = [r[2] for r in rows]
        self.v_kind = [r[3] for r in rows]
        self.v_bitmap = [_frozen(data / r[5]) for r in rows]
        self.v_rowmap = [r[6] for r in rows]
        self.v_parents: list[list[str]] = [[] for _ in rows]
        for vid, pid in con.execute(
            "SELECT version_id, parent_version_id FROM version_parents ORDER BY version_id, position"
        ).fetchall():
            self.v_parents[vindex[vid]].append(self.v_label[vindex[pid]])

        runs = con.execute(
            "SELECT run_id, name, trainer, model_family, facts_file, facts_index FROM runs ORDER BY name"
        ).fetchall()
        rindex = {r[0]: i for i, r in enumerate(runs)}
        self.r_name = [r[1] for r in runs]
        self.r_trainer = [r[2] for r in runs]
        self.r_family = [r[3] for r in runs]
        self.r_facts_file = [r[4] for r in runs]
        self.r_facts_index = [json.loads(r[5]) if r[5] else None for r in runs]
        self.r_facts: dict[int, dict] = {}
        edges = con.execute(
            "SELECT run_id, version_id, role, subset_file FROM run_inputs ORDER BY run_id, position"
        ).fetchall()
        edges.sort(key=lambda e: rindex[e[0]])  # stable: keeps input order within a run
        n_e = len(edges)
        self.e_run = np.fromiter((rindex[e[0]] for e in edges), np.int64, n_e)
        self.e_ver = np.fromiter((vindex[e[1]] for e in edges), np.int64, n_e)
        self.e_role = np.fromiter((ROLES.index(e[2]) for e in edges), np.int8, n_e)
        # Row-subset bitmaps are read when a query first reaches their input.
        self.e_subset_file: dict[int, str] = {i: e[3] for i, e in enumerate(edges) if e[3] is not None}
        self._subsets: dict[int, FrozenBitMap] = {}
        n_r = len(runs)
        counts = np.bincount(self.e_run, minlength=n_r)
        self.r_first_edge = np.zeros(n_r + 1, np.int64)
        np.cumsum(counts, out=self.r_first_edge[1:])
        self.r_has_edges = counts > 0

        models = con.execute(
            "SELECT model_id, name, version_no, stage, run_id FROM models ORDER BY name, version_no"
        ).fetchall()
        mindex = {m[0]: i for i, m in enumerate(models)}
        self.m_name = [m[1] for m in models]
        self.m_no = [m[2] for m in models]
        self.m_stage = [m[3] for m in models]
        self.m_run = np.array([rindex[m[4]] if m[4] is not None else -1 for m in models], np.int64)
        links = con.execute("SELECT parent_model_id, model_id, relation FROM model_parents").fetchall()
        links.sort(key=lambda x: (mindex[x[0]], mindex[x[1]]))
        parent = np.array([mindex[p] for p, _, _ in links], np.int64)
        self.c_child = np.array([mindex[c] for _, c, _ in links], np.int64)
        self.c_rel = np.array([RELATIONS.index(r) for _, _, r in links], np.int8)
        self.c_ptr = np.zeros(len(models) + 1, np.int64)
        np.cumsum(np.bincount(parent, minlength=len(models)), out=self.c_ptr[1:])
        # Models by producing run, as CSR, for the direct hits.
        with_run = np.flatnonzero(self.m_run >= 0)
        order = with_run[np.argsort(self.m_run[with_run], kind="stable")]
        self.rm_model = order
        self.rm_ptr = np.zeros(n_r + 1, np.int64)
        np.cumsum(np.bincount(self.m_run[order], minlength=n_r), out=self.rm_ptr[1:])

        self.segments = [
            Segment(data / f)
            for (f,) in con.execute("SELECT file FROM subject_segments ORDER BY segment_id").fetchall()
        ]
        self._rowmaps: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ queries

    def impact(self, subjects: Sequence[str]) -> "Impact":
        subjects = list(dict.fromkeys(subjects))  # the same id twice is one subject
        hashes = self.store.hasher.hash_many(subjects)
        result = self.impact_hashed(hashes, len(subjects))
        if result.found < result.requested:
            result.missing = np.flatnonzero(~self.found_mask(hashes)).tolist()
        return result

    def found_mask(self, hashes: np.ndarray) -> np.ndarray:
        """Per subject hash, whether the store holds records of it."""
        found = np.zeros(len(hashes), dtype=bool)
        for seg in self.segments if len(hashes) else ():
            found |= seg.find(hashes) >= 0
        return found

    def records_of(self, hashes: np.ndarray) -> tuple[np.ndarray, int]:
        """(sorted unique record ordinals, number of subjects found) for (n, 2) subject hashes."""
        if len(hashes) == 0 or not self.segments:
            return np.zeros(0, np.uint32), 0
        parts = []
        found = np.zeros(len(hashes), dtype=bool)
        for seg in self.segments:
            idx = seg.find(hashes)
            hit = idx >= 0
            if hit.any():
                found |= hit
                parts.append(seg.records_of(hashes[hit]))
        if not parts:
            return np.zeros(0, np.uint32), 0
        return _unique(np.concatenate(parts)), int(found.sum())

    def impact_hashed(self, hashes: np.ndarray, requested: int | None = None) -> "Impact":
        requested = len(hashes) if requested is None else requested
        qarr, found = self.records_of(hashes)
        if qarr.size == 0:
            return Impact(self, requested, found, 0)
        q = BitMap(qarr)
        # Versions: one intersection each.
        hit_v, inter = [], {}
        for i, bm in enumerate(self.v_bitmap):
            if bm.intersection_cardinality(q):
                hit_v.append(i)
                inter[i] = bm & q
        v_records = {i: len(inter[i]) for i in hit_v}
        v_rows = {i: self._rows_hit(self.v_rowmap[i], inter[i]) if self.v_rowmap[i] else v_records[i] for i in hit_v}
        if qarr.size <= MASK_LIMIT:
            e_count, r_count, train_sets = self._runs_masks(qarr, inter)
        else:
            e_count, r_count, train_sets = self._runs_roaring(inter)
        hit_r = np.flatnonzero(r_count)
        facts = {r: self._facts(r, train_sets[r]) for r in train_sets if self.r_facts_index[r]}
        m_hit, m_via, m_rel, m_depth = self._models(hit_r)
        return Impact(self, requested, found, int(qarr.size), hit_v, v_records, v_rows, e_count, r_count, hit_r,
                      facts, m_hit, m_via, m_rel, m_depth)

    def _subset(self, e: int) -> FrozenBitMap:
        sub = self._subsets.get(e)
        if sub is None:
            sub = self._subsets[e] = _frozen(self.store.data_dir / self.e_subset_file[e])
        return sub

    def _rows_hit(self, rowmap_file: str, hit: BitMap) -> int:
        rm = self._rowmaps.get(rowmap_file)
        if rm is None:
            rm = np.load(self.store.data_path(rowmap_file), mmap_mode="r")
            self._rowmaps[rowmap_file] = rm
        ords = np.frombuffer(hit.to_array(), dtype=np.uint32)
        lo = np.searchsorted(rm[0], ords, "left")
        hi = np.searchsorted(rm[0], ords, "right")
        counts = hi - lo
        total = int(counts.sum())
        if total == 0:
            return 0
        idx = np.arange(total) + np.repeat(lo - (np.cumsum(counts) - counts), counts)
        return int(_unique(np.asarray(rm[1])[idx]).size)

    def _runs_masks(self, qarr: np.ndarray, inter: dict[int, BitMap]):
        """Runs for a small query: bit masks over the query's records, OR-ed per run."""
        k = qarr.size
        words = (k + 63) // 64
        vmask = np.zeros((len(self.v_bitmap), words), np.uint64)
        bit = np.left_shift(np.uint64(1), np.arange(64, dtype=np.uint64))

        def mask_of(bm) -> np.ndarray:
            pos = np.searchsorted(qarr, np.frombuffer(bm.to_array(), dtype=np.uint32))
            m = np.zeros(words, np.uint64)
            np.bitwise_or.at(m, pos >> 6, bit[pos & 63])
            return m

        if inter:
            arrs = [np.frombuffer(bm.to_array(), dtype=np.uint32) for bm in inter.values()]
            rows = np.repeat(np.fromiter(inter.keys(), np.int64, len(inter)), [a.size for a in arrs])
            pos = np.searchsorted(qarr, np.concatenate(arrs))
            np.bitwise_or.at(vmask, (rows, pos >> 6), bit[pos & 63])
        emask = vmask[self.e_ver]
        for e in self.e_subset_file:
            base = inter.get(int(self.e_ver[e]))
            if base is not None:
                emask[e] = mask_of(self._subset(e) & base)
        e_count = _popcount_rows(emask)
        n_r = len(self.r_name)
        r_count = np.zeros(n_r, np.int64)
        if emask.shape[0]:
            starts = self.r_first_edge[:-1][self.r_has_edges]
            rmask = np.bitwise_or.reduceat(emask, starts, axis=0)
            r_count[self.r_has_edges] = _popcount_rows(rmask)
        train_sets: dict[int, BitMap] = {}
        for r in np.flatnonzero(r_count):
            if not self.r_facts_index[r]:
                continue
            lo, hi = self.r_first_edge[r], self.r_first_edge[r + 1]
            tm = np.zeros(words, np.uint64)
            for e in range(lo, hi):
                if self.e_role[e] == 0:
                    tm |= emask[e]
            pos = np.flatnonzero(np.unpackbits(tm.view(np.uint8), bitorder="little")[:k])
            if pos.size:
                train_sets[int(r)] = BitMap(qarr[pos])
        return e_count, r_count, train_sets

    def _runs_roaring(self, inter: dict[int, BitMap]):
        """Runs for a large query (a batch): roaring intersections and unions per edge and run."""
        n_e = self.e_run.size
        e_sets: list[BitMap | None] = [None] * n_e
        e_count = np.zeros(n_e, np.int64)
        for e in range(n_e):
            base = inter.get(int(self.e_ver[e]))
            if base is None:
                continue
            s = self._subset(e) & base if e in self.e_subset_file else base
            e_sets[e] = s
            e_count[e] = len(s)
        n_r = len(self.r_name)
        r_count = np.zeros(n_r, np.int64)
        train_sets: dict[int, BitMap] = {}
        for r in _unique(self.e_run[e_count > 0]):
            lo, hi = self.r_first_edge[r], self.r_first_edge[r + 1]
            sets = [e_sets[e] for e in range(lo, hi) if e_count[e]]
            r_count[r] = len(sets[0]) if len(sets) == 1 else len(BitMap.union(*sets))
            if self.r_facts_index[r]:
                train = [e_sets[e] for e in range(lo, hi) if e_count[e] and self.e_role[e] == 0]
                if train:
                    train_sets[int(r)] = train[0] if len(train) == 1 else BitMap.union(*train)
        return e_count, r_count, train_sets

    def _facts(self, r: int, rq: BitMap) -> tuple[list[dict], dict | None]:
        facts = self.r_facts.get(r)
        if facts is None:
            from expunge.lineage.facts import RunFacts

            facts = self.r_facts[r] = RunFacts(self.store.data_path(self.r_facts_file[r]), self.r_facts_index[r])
        return facts.lookup(rq)

    def _models(self, hit_r: np.ndarray):
        """Affected models: produced by a hit run, or derived (transitively) from an affected one.

        Breadth first, so each model's recorded path from a directly affected model is a shortest one.
        Returns (model indices, via-parent, via-relation, depth) arrays.
        """
        n_m = len(self.m_name)
        via = np.full(n_m, -2, np.int64)  # -2: not affected, -1: direct
        rel = np.full(n_m, -1, np.int8)
        depth = np.zeros(n_m, np.int64)
        if hit_r.size == 0 or n_m == 0:
            return np.zeros(0, np.int64), via, rel, depth
        starts, ends = self.rm_ptr[hit_r], self.rm_ptr[hit_r + 1]
        frontier = self.rm_model[_ranges(starts, ends)]
        via[frontier] = -1
        level = 0
        while frontier.size:
            level += 1
            lo, hi = self.c_ptr[frontier], self.c_ptr[frontier + 1]
            idx = _ranges(lo, hi)
            if idx.size == 0:
                break
            parents = np.repeat(frontier, hi - lo)
            children = self.c_child[idx]
            fresh = via[children] == -2
            children, parents, rels = children[fresh], parents[fresh], self.c_rel[idx][fresh]
            children, first = np.unique(children, return_index=True)
            via[children] = parents[first]
            rel[children] = rels[first]
            depth[children] = level
            frontier = children
        return np.flatnonzero(via != -2), via, rel, depth


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, e) for each pair."""
    counts = ends - starts
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    return np.arange(total, dtype=np.int64) + np.repeat(starts - (np.cumsum(counts) - counts), counts)


class Impact:
    """The result of an impact query. Counts are computed when the query runs; the document
    lists (`datasets`, `runs`, `models`, `to_dict()`) are built from them on first read."""

    def __init__(self, engine: ImpactEngine, requested: int, found: int, records: int,
                 hit_v=(), v_records=None, v_rows=None, e_count=None, r_count=None, hit_r=None, facts=None,
                 m_hit=None, m_via=None, m_rel=None, m_depth=None):
        self._e = engine
        self.requested, self.found, self.records = requested, found, records
        self._hit_v, self._v_records, self._v_rows = list(hit_v), v_records or {}, v_rows or {}
        self._e_count, self._r_count = e_count, r_count
        self._hit_r = hit_r if hit_r is not None else np.zeros(0, np.int64)
        self._facts = facts or {}
        self._m_hit = m_hit if m_hit is not None else np.zeros(0, np.int64)
        self._m_via, self._m_rel, self._m_depth = m_via, m_rel, m_depth
        # Positions (in the order given, repeats removed) of the subjects not found; set by `ImpactEngine.impact`.
        self.missing: list[int] = []

    @property
    def empty(self) -> bool:
        return self.records == 0

    @property
    def n_runs(self) -> int:
        return int(self._hit_r.size)

    @property
    def n_models(self) -> int:
        return int(self._m_hit.size)

    @cached_property
    def datasets(self) -> list[dict]:
        e = self._e
        return [
            {"id": e.v_label[i], "dataset": e.v_dataset[i], "version": e.v_no[i], "kind": e.v_kind[i],
             "parents": list(e.v_parents[i]), "records": self._v_records[i], "rows": self._v_rows[i]}
            for i in self._hit_v
        ]

    @cached_property
    def runs(self) -> list[dict]:
        e = self._e
        out = []
        for r in self._hit_r.tolist():
            lo, hi = int(e.r_first_edge[r]), int(e.r_first_edge[r + 1])
            shards, first_seen = self._facts.get(r, ([], None))
            out.append({
                "id": e.r_name[r], "records": int(self._r_count[r]), "trainer": e.r_trainer[r],
                "model_family": e.r_family[r],
                "inputs": [{"dataset": e.v_label[int(e.e_ver[x])], "role": ROLES[int(e.e_role[x])],
                            "records": int(self._e_count[x])} for x in range(lo, hi)],
                "shards": shards, "first_seen": first_seen,
            })
        return out

    @cached_property
    def models(self) -> list[dict]:
        e = self._e
        out = []
        for m in self._m_hit.tolist():
            path: list[dict] = []
            cur = m
            while self._m_via[cur] >= 0:
                p = int(self._m_via[cur])
                path.append({"model": f"{e.m_name[p]}@{e.m_no[p]}", "relation": RELATIONS[int(self._m_rel[cur])]})
                cur = p
            path.reverse()
            run = int(e.m_run[m])
            out.append({
                "id": f"{e.m_name[m]}@{e.m_no[m]}", "name": e.m_name[m], "version": e.m_no[m], "stage": e.m_stage[m],
                "run": e.r_name[run] if run >= 0 else None, "direct": not path, "path": path,
            })
        return out

    def to_dict(self) -> dict:
        return {
            "kind": "expunge.impact",
            "schema_version": 1,
            "subjects": {"requested": self.requested, "found": self.found},
            "records": self.records,
            "datasets": self.datasets,
            "runs": self.runs,
            "models": self.models,
        }
