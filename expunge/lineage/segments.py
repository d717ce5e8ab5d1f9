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


def build_segment_bytes(hashes: np.ndarray, ords: np.ndarray) -> tuple[bytes, int, int]:
    """Build a segment from per-record (hi, lo) hashes and record ordinals.

    Returns the file contents, the number of subjects and the number of records.
    """
    hi = np.ascontiguousarray(hashes[:, 0], dtype=np.uint64)
    lo = np.ascontiguousarray(hashes[:, 1], dtype=np.uint64)
    ords = np.asarray(ords, dtype=np.uint32)
    # A stable sort on `hi` merges already-sorted runs in linear time (merging segments); it is the
    # full order unless two subjects share `hi` or ordinals within a subject come out of order.
    order = np.argsort(hi, kind="stable")
    hi, lo, ords = hi[order], lo[order], ords[order]
    if hi.size > 1:
        same = hi[1:] == hi[:-1]
        bad = same & ((lo[1:] < lo[:-1]) | ((lo[1:] == lo[:-1]) & (ords[1:] <= ords[:-1])))
        if bad.any():
            order = np.lexsort((ords, lo, hi))
            hi, lo, ords = hi[order], lo[order], ords[order]
    n = hi.size
    if n:
        new = np.empty(n, dtype=bool)
        new[0] = True
        new[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
        starts = np.flatnonzero(new)
    else:
        starts = np.zeros(0, dtype=np.int64)
    u_hi, u_lo = hi[starts], lo[starts]
    off = np.empty(starts.size + 1, dtype=np.uint64)
    off[:-1] = starts
    off[-1] = n
    header = _HEADER.pack(MAGIC, starts.size, n)
    data = b"".join([header, u_hi.tobytes(), u_lo.tobytes(), off.tobytes(), ords.tobytes()])
    return data, int(starts.size), int(n)


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

    def expand(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-record (hashes (n, 2), ords) arrays, for merging."""
        counts = np.diff(self.off.astype(np.int64))
        hashes = np.empty((self.n_records, 2), dtype=np.uint64)
        hashes[:, 0] = np.repeat(np.asarray(self.hi), counts)
        hashes[:, 1] = np.repeat(np.asarray(self.lo), counts)
        return hashes, np.asarray(self.ords)
