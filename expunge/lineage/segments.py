"""Subject index segments: subject hash → record ordinals, as memory-mapped sorted arrays.

A segment file holds, for the records added by one ingest (or a merge of
several), the unique subject hashes sorted by (hi, lo), an offset array, and
the record ordinals grouped by subject (sorted within each subject). Lookups
are binary searches on the mapped file, so opening a store costs nothing.
Segments are immutable; small ones are merged (binary-counter style) so a
store keeps O(log n) of them.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

MAGIC = b"EXPSEG01"
_HEADER = struct.Struct("<8sQQ")


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    return np.arange(total, dtype=np.int64) + np.repeat(starts - (np.cumsum(counts) - counts), counts)


def _order(hi: np.ndarray, lo: np.ndarray, tie: np.ndarray) -> np.ndarray:
    """The permutation sorting by (hi, lo, tie).

    A stable sort on `hi` alone is enough when `tie` is already ascending and no two different
    subjects share `hi` (a 2^-64 event per pair, checked): 2-4x faster than a three-key lexsort,
    and fast on concatenated sorted runs (merges).
    """
    if tie.size < 2 or not (tie[1:] >= tie[:-1]).all():
        return np.lexsort((tie, lo, hi))
    order = np.argsort(hi, kind="stable")
    h, lw = hi[order], lo[order]
    same = h[1:] == h[:-1]
    if (same & (lw[1:] != lw[:-1])).any():
        return np.lexsort((tie, lo, hi))
    return order


def from_records(hashes: np.ndarray, ords: np.ndarray) -> tuple[np.ndarray, ...]:
    """(hi, lo, off, ords) segment arrays from per-record (hi, lo) hashes and record ordinals."""
    hi = np.ascontiguousarray(hashes[:, 0], dtype=np.uint64)
    lo = np.ascontiguousarray(hashes[:, 1], dtype=np.uint64)
    ords = np.asarray(ords, dtype=np.uint32)
    order = _order(hi, lo, ords)
    hi, lo, ords = hi[order], lo[order], ords[order]
    n = hi.size
    new = np.ones(n, dtype=bool)
    if n:
        new[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
    starts = np.flatnonzero(new)
    off = np.append(starts, n).astype(np.uint64)
    return hi[starts], lo[starts], off, ords


def merge(parts: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """Merge segments given oldest first (older segments hold smaller ordinals).

    Works on subject entries (about one per subject per segment), not on records: the records
    are gathered once, each subject's blocks in segment order, which keeps them sorted.
    """
    his = np.concatenate([p[0] for p in parts])
    los = np.concatenate([p[1] for p in parts])
    counts = np.concatenate([np.diff(p[2].astype(np.int64)) for p in parts])
    bases = np.cumsum([0] + [len(p[3]) for p in parts[:-1]])
    starts = np.concatenate([p[2][:-1].astype(np.int64) + b for p, b in zip(parts, bases)])
    order = _order(his, los, np.arange(his.size))
    his, los, counts, starts = his[order], los[order], counts[order], starts[order]
    all_ords = np.concatenate([np.asarray(p[3]) for p in parts])
    ords = all_ords[_ranges(starts, counts)]
    new = np.ones(his.size, dtype=bool)
    if his.size:
        new[1:] = (his[1:] != his[:-1]) | (los[1:] != los[:-1])
    first = np.flatnonzero(new)
    sizes = np.add.reduceat(counts, first) if first.size else np.zeros(0, np.int64)
    off = np.zeros(first.size + 1, np.uint64)
    np.cumsum(sizes, out=off[1:])
    return his[first], los[first], off, ords


def write(fh, hi: np.ndarray, lo: np.ndarray, off: np.ndarray, ords: np.ndarray) -> tuple[int, int]:
    """Write a segment file; returns (subjects, records)."""
    fh.write(_HEADER.pack(MAGIC, hi.size, ords.size))
    for arr, dtype in ((hi, np.uint64), (lo, np.uint64), (off, np.uint64), (ords, np.uint32)):
        fh.write(np.ascontiguousarray(arr, dtype=dtype).data)
    return int(hi.size), int(ords.size)


class Segment:
    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as fh:
            magic, ns, nr = _HEADER.unpack(fh.read(_HEADER.size))
        if magic != MAGIC:
            raise ValueError(f"{path} is not a subject segment")
        self.n_subjects, self.n_records = ns, nr
        pos = _HEADER.size
        if ns == 0:
            self.hi = self.lo = np.zeros(0, np.uint64)
            self.off = np.zeros(1, np.uint64)
            self.ords = np.zeros(0, np.uint32)
            return
        # A plain ndarray view of the mapping: np.memmap's Python-level indexing is slow on hot paths.
        mm = np.memmap(path, dtype=np.uint8, mode="r").view(np.ndarray)
        self.hi = mm[pos : pos + 8 * ns].view(np.uint64)
        pos += 8 * ns
        self.lo = mm[pos : pos + 8 * ns].view(np.uint64)
        pos += 8 * ns
        self.off = mm[pos : pos + 8 * (ns + 1)].view(np.uint64)
        pos += 8 * (ns + 1)
        self.ords = mm[pos : pos + 4 * nr].view(np.uint32)

    def find(self, q: np.ndarray) -> np.ndarray:
        """Indices of the subjects in `q` ((n, 2) uint64) that this segment holds, -1 where absent."""
        qhi, qlo = q[:, 0], q[:, 1]
        if self.n_subjects == 0:  # nothing to index into
            return np.full(len(q), -1, np.int64)
        left = np.searchsorted(self.hi, qhi, "left")
        ok = left < self.n_subjects
        idx = np.where(ok, left, 0)
        found = ok & (self.hi[idx] == qhi)
        hit = found & (self.lo[idx] == qlo)
        # Equal `hi` with a different `lo` (a 64-bit half collision): scan the tie range.
        for k in np.flatnonzero(found & ~hit):
            j = int(left[k])
            while j < self.n_subjects and self.hi[j] == qhi[k]:
                if self.lo[j] == qlo[k]:
                    idx[k] = j
                    hit[k] = True
                    break
                j += 1
        return np.where(hit, idx, -1)

    def records_of(self, q: np.ndarray) -> np.ndarray:
        """All record ordinals of the subjects in `q`."""
        idx = self.find(q)
        idx = idx[idx >= 0]
        if idx.size == 0:
            return np.zeros(0, np.uint32)
        if idx.size == 1:
            i = int(idx[0])
            return np.asarray(self.ords[int(self.off[i]) : int(self.off[i + 1])])
        starts = self.off[idx].astype(np.int64)
        counts = self.off[idx + 1].astype(np.int64) - starts
        total = int(counts.sum())
        if total == 0:
            return np.zeros(0, np.uint32)
        shift = np.repeat(starts - (np.cumsum(counts) - counts), counts)
        return np.asarray(self.ords[np.arange(total, dtype=np.int64) + shift])

    def arrays(self) -> tuple[np.ndarray, ...]:
        """(hi, lo, off, ords), for merging."""
        return self.hi, self.lo, self.off, self.ords
