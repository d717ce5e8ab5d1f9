"""Impact queries: subjects → records → dataset versions → runs → model versions.

The engine loads one catalog generation: the small graph (versions, runs,
models) into plain dicts and every version's roaring bitmap into memory;
subject segments are memory-mapped. A query hashes the subjects, collects
their record ordinals with binary searches, and intersects one small bitmap
with each version, run subset and fact bitmap. Kept free of pyarrow, networkx
and torch so the `expunge impact` process starts fast.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import duckdb
import numpy as np
from pyroaring import BitMap, FrozenBitMap

from expunge.lineage.segments import Segment


@dataclass
class _Version:
    vid: int
    label: str
    dataset: str
    version_no: int
    kind: str
    n_rows: int
    bitmap: FrozenBitMap
    rowmap_file: str | None
    parents: list[str] = field(default_factory=list)
    runs: list[tuple[int, int]] = field(default_factory=list)  # (run index, input index)


@dataclass
class _Input:
    vid: int
    label: str
    role: str
    subset: FrozenBitMap | None


@dataclass
class _Run:
    rid: int
    name: str
    trainer: str | None
    model_family: str | None
    inputs: list[_Input]
    facts_file: str | None
    facts_index: dict | None
    facts: dict | None = None  # loaded lazily: kind → [(key, bitmap)]


@dataclass
class _Model:
    mid: int
    label: str
    name: str
    version_no: int
    stage: str
    run_id: int | None
    children: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class Impact:
    """The result of an impact query; `to_dict()` is the `impact.schema.json` document."""

    requested: int
    found: int
    records: int
    datasets: list[dict]
    runs: list[dict]
    models: list[dict]

    @property
    def empty(self) -> bool:
        return self.records == 0

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


def _frozen(path) -> FrozenBitMap:
    with open(path, "rb") as fh:
        return FrozenBitMap.deserialize(fh.read())


class ImpactEngine:
    def __init__(self, store, versions, runs, models, segments):
        self.store = store
        self.versions: list[_Version] = versions
        self.runs: dict[int, _Run] = runs
        self.models: dict[int, _Model] = models
        self.segments: list[Segment] = segments
        self.models_by_run: dict[int, list[int]] = {}
        for m in models.values():
            if m.run_id is not None:
                self.models_by_run.setdefault(m.run_id, []).append(m.mid)
        self._rowmaps: dict[str, np.ndarray] = {}

    @classmethod
    def load(cls, store, gen: str) -> "ImpactEngine":
        con = duckdb.connect(str(store.root / gen), read_only=True)
        try:
            return cls._load(store, con)
        finally:
            con.close()

    @classmethod
    def _load(cls, store, con) -> "ImpactEngine":
        data = store.data_dir
        versions: list[_Version] = []
        by_vid: dict[int, _Version] = {}
        for vid, dname, vno, kind, n_rows, bfile, rmfile in con.execute(
            """SELECT v.version_id, d.name, v.version_no, v.kind, v.n_rows, v.bitmap_file, v.rowmap_file
               FROM dataset_versions v JOIN datasets d USING (dataset_id) ORDER BY d.name, v.version_no"""
        ).fetchall():
            v = _Version(vid, f"{dname}@{vno}", dname, vno, kind, n_rows, _frozen(data / bfile), rmfile)
            versions.append(v)
            by_vid[vid] = v
        for vid, pid in con.execute(
            "SELECT version_id, parent_version_id FROM version_parents ORDER BY version_id, position"
        ).fetchall():
            by_vid[vid].parents.append(by_vid[pid].label)
        runs: dict[int, _Run] = {}
        for rid, name, trainer, family, ffile, findex in con.execute(
            "SELECT run_id, name, trainer, model_family, facts_index_file, facts_index FROM runs"
        ).fetchall():
            runs[rid] = _Run(rid, name, trainer, family, [], ffile, json.loads(findex) if findex else None)
        for rid, vid, role, subset in con.execute(
            "SELECT run_id, version_id, role, subset_file FROM run_inputs ORDER BY run_id, position"
        ).fetchall():
            run = runs[rid]
            v = by_vid[vid]
            v.runs.append((rid, len(run.inputs)))
            run.inputs.append(_Input(vid, v.label, role, _frozen(data / subset) if subset else None))
        models: dict[int, _Model] = {}
        for mid, name, vno, stage, run_id in con.execute(
            "SELECT model_id, name, version_no, stage, run_id FROM models"
        ).fetchall():
            models[mid] = _Model(mid, f"{name}@{vno}", name, vno, stage, run_id)
        for mid, pid, rel in con.execute(
            "SELECT model_id, parent_model_id, relation FROM model_parents ORDER BY model_id, parent_model_id"
        ).fetchall():
            models[pid].children.append((mid, rel))
        segments = [
            Segment(data / f)
            for (f,) in con.execute("SELECT file FROM subject_segments ORDER BY segment_id").fetchall()
        ]
        return cls(store, versions, runs, models, segments)

    # ------------------------------------------------------------------ queries

    def impact(self, subjects: Sequence[str]) -> Impact:
        subjects = list(dict.fromkeys(subjects))  # the same id twice is one subject
        return self.impact_hashed(self.store.hasher.hash_many(subjects), len(subjects))

    def records_of(self, hashes: np.ndarray) -> tuple[np.ndarray, int]:
        """(record ordinals, number of subjects found) for (n, 2) subject hashes."""
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
        return np.concatenate(parts), int(found.sum())

    def impact_hashed(self, hashes: np.ndarray, requested: int | None = None) -> Impact:
        requested = len(hashes) if requested is None else requested
        ords, found = self.records_of(hashes)
        q = BitMap(ords)
        if not q:
            return Impact(requested, found, 0, [], [], [])
        datasets, inter = self._datasets(q)
        runs, hit_runs = self._runs(inter, q)
        models = self._models(hit_runs)
        return Impact(requested, found, len(q), datasets, runs, models)

    def _datasets(self, q: BitMap) -> tuple[list[dict], dict[int, BitMap]]:
        out: list[dict] = []
        inter: dict[int, BitMap] = {}
        for v in self.versions:
            if not v.bitmap.intersection_cardinality(q):
                continue
            hit = v.bitmap & q
            inter[v.vid] = hit
            n = len(hit)
            rows = n if v.rowmap_file is None else self._rows_hit(v.rowmap_file, hit)
            out.append({
                "id": v.label, "dataset": v.dataset, "version": v.version_no, "kind": v.kind,
                "parents": v.parents, "records": n, "rows": rows,
            })
        return out, inter

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
        return int(np.unique(np.asarray(rm[1])[idx]).size)

    def _runs(self, inter: dict[int, BitMap], q: BitMap) -> tuple[list[dict], set[int]]:
        cand: set[int] = set()
        for v in self.versions:
            if v.vid in inter:
                cand.update(rid for rid, _ in v.runs)
        out: list[dict] = []
        hit_runs: set[int] = set()
        for rid in cand:
            run = self.runs[rid]
            per_input = []
            train_hits = []
            all_hits = []
            for inp in run.inputs:
                base = inter.get(inp.vid)
                if base is None:
                    h = None
                elif inp.subset is None:
                    h = base
                else:
                    h = inp.subset & base
                n = len(h) if h is not None else 0
                per_input.append({"dataset": inp.label, "role": inp.role, "records": n})
                if n:
                    all_hits.append(h)
                    if inp.role == "train":
                        train_hits.append(h)
            if not all_hits:
                continue
            total = len(all_hits[0]) if len(all_hits) == 1 else len(BitMap.union(*all_hits))
            hit_runs.add(rid)
            shards: list[dict] = []
            first_seen = None
            if run.facts_index and train_hits:
                rq = train_hits[0] if len(train_hits) == 1 else BitMap.union(*train_hits)
                shards, first_seen = self._facts(run, rq)
            out.append({
                "id": run.name, "records": total, "trainer": run.trainer, "model_family": run.model_family,
                "inputs": per_input, "shards": shards, "first_seen": first_seen,
            })
        out.sort(key=lambda r: r["id"])
        return out, hit_runs

    def _load_facts(self, run: _Run) -> dict:
        if run.facts is None:
            with open(self.store.data_path(run.facts_file), "rb") as fh:
                blob = fh.read()
            facts: dict[str, list] = {}
            for kind in ("shard", "slice", "clean"):
                entries = sorted(((int(k), v) for k, v in run.facts_index.get(kind, {}).items()))
                facts[kind] = [(k, FrozenBitMap.deserialize(blob[o : o + n])) for k, (o, n) in entries]
            steps = run.facts_index.get("clean_steps", {})
            facts["steps"] = [steps[str(i)] for i in range(len(steps))]
            run.facts = facts
        return run.facts

    def _facts(self, run: _Run, rq: BitMap) -> tuple[list[dict], dict | None]:
        facts = self._load_facts(run)
        shards = []
        for key, sbm in facts["shard"]:
            if not sbm.intersection_cardinality(rq):
                continue
            sh = sbm & rq
            first_slice = None
            for skey, slbm in facts["slice"]:
                if slbm.intersection_cardinality(sh):
                    first_slice = skey
                    break
            shards.append({"shard": key, "records": len(sh), "first_slice": first_slice})
        first_seen = None
        if facts["clean"]:
            steps = facts["steps"]
            for k, cbm in facts["clean"]:
                if cbm.intersection_cardinality(rq):
                    first_seen = {
                        "clean_checkpoints": k,
                        "last_clean_step": steps[k - 1] if k >= 1 else None,
                        "first_dirty_step": steps[k] if k < len(steps) else None,
                    }
                    break
        return shards, first_seen

    def _models(self, hit_runs: set[int]) -> list[dict]:
        paths: dict[int, list[dict]] = {}
        queue: deque[int] = deque()
        for rid in sorted(hit_runs):
            for mid in self.models_by_run.get(rid, ()):
                if mid not in paths:
                    paths[mid] = []
                    queue.append(mid)
        while queue:  # breadth first: each model gets a shortest path from a direct one
            mid = queue.popleft()
            m = self.models[mid]
            for child, rel in m.children:
                if child not in paths:
                    paths[child] = paths[mid] + [{"model": m.label, "relation": rel}]
                    queue.append(child)
        out = []
        for mid, path in paths.items():
            m = self.models[mid]
            run = self.runs[m.run_id].name if m.run_id is not None else None
            out.append({
                "id": m.label, "name": m.name, "version": m.version_no, "stage": m.stage, "run": run,
                "direct": not path, "path": path,
            })
        out.sort(key=lambda d: (d["name"], d["version"]))
        return out
