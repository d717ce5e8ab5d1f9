"""A run's unlearning facts, one small code per training record.

For each training record the run knows its shard, its slice and how many
checkpoints were taken before it was first consumed ("clean" checkpoints).
Almost every record has one (shard, slice, clean) triple and a run has few
distinct triples, so the file stores the run's record set as a roaring bitmap
and, aligned with its rank order, one uint8 (or uint16) code per record; the
catalog keeps the code → triples table. A record reached through several rows
of a composed dataset may carry several triples: its code stands for the set.

    b"EXPFACT1" | u64 bitmap bytes | bitmap | pad to 8 | codes[n]

At scale S (40 runs of ~600k records) this is ~25 MB where per-fact bitmaps
took ~100 MB and a Parquet copy another 140 MB.
"""

from __future__ import annotations

import struct

import numpy as np
from pyroaring import BitMap, FrozenBitMap

MAGIC = b"EXPFACT1"
_HEAD = struct.Struct("<8sQ")
_SHIFT = np.int64(21)  # each field + 1 fits in 21 bits
_MASK = np.int64((1 << 21) - 1)


def clean_counts(first_step: np.ndarray, ckpt_steps: list[int]) -> np.ndarray:
    """Checkpoints taken after `step` optimizer steps are clean for a record first consumed at step ≥ `step`."""
    if not ckpt_steps:
        return np.full(first_step.shape, -1, np.int64)
    k = np.searchsorted(np.asarray(ckpt_steps), first_step, side="right").astype(np.int64)
    return np.where(first_step >= 0, k, -1)


def encode(ords: np.ndarray, shard: np.ndarray, slice_: np.ndarray, clean: np.ndarray) -> tuple[bytes, dict]:
    """Facts per (record ordinal, row) → file bytes and the catalog's code table. -1 means unknown."""
    keys = ((shard.astype(np.int64) + 1) << (2 * _SHIFT)) | ((slice_.astype(np.int64) + 1) << _SHIFT) | (
        clean.astype(np.int64) + 1)
    order = np.lexsort((keys, ords))
    ords, keys = ords[order].astype(np.uint32), keys[order]
    keep = np.ones(ords.size, bool)
    keep[1:] = (ords[1:] != ords[:-1]) | (keys[1:] != keys[:-1])
    ords, keys = ords[keep], keys[keep]
    first = np.ones(ords.size, bool)
    first[1:] = ords[1:] != ords[:-1]
    starts = np.flatnonzero(first)
    uniq_ords = ords[starts]
    counts = np.diff(np.append(starts, ords.size))
    table: dict[tuple[int, ...], int] = {}
    codes = np.empty(uniq_ords.size, np.int64)
    single = counts == 1
    # The common case, one triple per record: vectorised.
    skeys, sinv = np.unique(keys[starts[single]], return_inverse=True)
    for k in skeys.tolist():
        table.setdefault((k,), len(table))
    codes[single] = np.array([table[(k,)] for k in skeys.tolist()], np.int64)[sinv] if skeys.size else 0
    for i in np.flatnonzero(~single):
        s = int(starts[i])
        codes[i] = table.setdefault(tuple(keys[s : s + counts[i]].tolist()), len(table))
    dtype = np.uint8 if len(table) <= 256 else np.uint16 if len(table) <= 65536 else np.uint32
    bm = BitMap(uniq_ords)
    bm.run_optimize()
    bmb = bm.serialize()
    pad = (-(_HEAD.size + len(bmb))) % 8
    data = b"".join([_HEAD.pack(MAGIC, len(bmb)), bmb, b"\0" * pad, codes.astype(dtype).tobytes()])
    decoded = [[list(_unkey(k)) for k in combo] for combo, _ in sorted(table.items(), key=lambda x: x[1])]
    return data, {"dtype": np.dtype(dtype).name, "codes": decoded, "records": int(uniq_ords.size)}


def _unkey(k: int) -> tuple[int, int, int]:
    return (int(k >> 42) - 1, int((k >> 21) & int(_MASK)) - 1, int(k & int(_MASK)) - 1)


class RunFacts:
    """The facts file of one run, opened for lookups (the codes are memory-mapped)."""

    def __init__(self, path, index: dict):
        with open(path, "rb") as fh:
            magic, n = _HEAD.unpack(fh.read(_HEAD.size))
            if magic != MAGIC:
                raise ValueError(f"{path} is not a facts file")
            self.records = FrozenBitMap.deserialize(fh.read(n))
        offset = _HEAD.size + n + (-(_HEAD.size + n)) % 8
        dtype = np.dtype(index["dtype"])
        count = len(self.records)
        self.codes = (np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,)).view(np.ndarray)
                      if count else np.zeros(0, dtype))
        self.table = index["codes"]
        self.steps = index.get("clean_steps", [])

    def lookup(self, rq: BitMap) -> tuple[list[dict], dict | None]:
        """Shards (records, first slice) and the clean-checkpoint facts of the records in `rq`."""
        hit = self.records & rq
        if not hit:
            return [], None
        if len(hit) <= 256:
            ranks = np.fromiter((self.records.rank(x) - 1 for x in hit), np.int64, len(hit))
        else:
            ranks = np.searchsorted(np.frombuffer(self.records.to_array(), np.uint32),
                                    np.frombuffer(hit.to_array(), np.uint32))
        codes, counts = np.unique(self.codes[ranks], return_counts=True)
        shard_records: dict[int, int] = {}
        shard_slice: dict[int, int | None] = {}
        clean: int | None = None
        for code, cnt in zip(codes.tolist(), counts.tolist()):
            combo = self.table[code]
            for sh in {t[0] for t in combo if t[0] >= 0}:
                shard_records[sh] = shard_records.get(sh, 0) + cnt
                slices = [t[1] for t in combo if t[0] == sh and t[1] >= 0]
                if slices:
                    best = shard_slice.get(sh)
                    shard_slice[sh] = min(slices) if best is None else min(best, min(slices))
                else:
                    shard_slice.setdefault(sh, None)
            for t in combo:
                if t[2] >= 0:
                    clean = t[2] if clean is None else min(clean, t[2])
        shards = [{"shard": sh, "records": shard_records[sh], "first_slice": shard_slice[sh]}
                  for sh in sorted(shard_records)]
        first_seen = None
        if clean is not None:
            first_seen = {
                "clean_checkpoints": clean,
                "last_clean_step": self.steps[clean - 1] if clean >= 1 else None,
                "first_dirty_step": self.steps[clean] if clean < len(self.steps) else None,
            }
        return shards, first_seen

    def assignment(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(record ordinals ascending, shard, slice) of every record, as recorded; None when some record has
        several triples (rows of a composed dataset) or no shard and slice."""
        single = [combo[0] if len(combo) == 1 and combo[0][0] >= 0 and combo[0][1] >= 0 else None
                  for combo in self.table]
        if any(t is None for t in single):
            return None
        ords = np.frombuffer(self.records.to_array(), np.uint32)
        if not single:
            return ords, np.zeros(0, np.int64), np.zeros(0, np.int64)
        lut = np.asarray([t[:2] for t in single], np.int64)
        codes = np.asarray(self.codes).astype(np.int64)
        return ords, lut[codes, 0], lut[codes, 1]


def records_of(data: bytes, index: dict) -> BitMap:
    """The records of a facts file's bytes, checked to be whole: as many codes as records, of the index's type."""
    if len(data) < _HEAD.size:
        raise ValueError("too short")
    magic, n = _HEAD.unpack(data[:_HEAD.size])
    if magic != MAGIC or _HEAD.size + n > len(data):
        raise ValueError("no facts header")
    records = BitMap.deserialize(data[_HEAD.size:_HEAD.size + n])
    offset = _HEAD.size + n + (-(_HEAD.size + n)) % 8
    if len(data) - offset != len(records) * np.dtype(index["dtype"]).itemsize:
        raise ValueError("codes and records differ in number")
    if int(index.get("records", len(records))) != len(records):
        raise ValueError("the code table counts other records")
    codes = np.frombuffer(data, np.dtype(index["dtype"]), offset=offset)
    if codes.size and int(codes.max()) >= len(index["codes"]):
        raise ValueError("a code outside the code table")
    return records


def carried(path, index: dict, erased: BitMap) -> tuple[bytes, dict]:
    """The facts file at `path` for a run that keeps the recorded facts of every record but the `erased` ones
    (a SISA shard retrain: the rows that remain keep their shard and slice): the file's bytes and code table,
    rewritten without those records, re-encoding no row."""
    out = without_records(path, index, erased)
    if out is not None:
        return out
    with open(path, "rb") as fh:
        return fh.read(), dict(index)


def without_records(path, index: dict, erased: BitMap) -> tuple[bytes, dict] | None:
    """The facts file at `path` rewritten without the `erased` records (None when it holds none of them)."""
    facts = RunFacts(path, index)
    gone = facts.records & erased
    if not gone:
        return None
    keep = np.ones(len(facts.records), bool)
    # Each erased record's position among the file's (sorted) records: its rank, no pass over the others.
    keep[np.fromiter((facts.records.rank(r) - 1 for r in gone), np.int64, len(gone))] = False
    bm = facts.records - gone
    bm.run_optimize()
    bmb = bm.serialize()
    pad = (-(_HEAD.size + len(bmb))) % 8
    codes = np.asarray(facts.codes)[keep]
    data = b"".join([_HEAD.pack(MAGIC, len(bmb)), bmb, b"\0" * pad, codes.tobytes()])
    return data, {**index, "records": int(keep.sum())}
