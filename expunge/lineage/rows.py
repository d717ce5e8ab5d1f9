"""Reading a dataset version back: its rows in a fixed order and the source records of each row.

Trainers use this to build exactly the rows a run consumed, minus the records
an erasure removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from expunge.lineage.store import Store


@dataclass
class VersionRows:
    """Rows of a version: `row_ids[i]` was built from records `ords[offsets[i]:offsets[i + 1]]`."""

    version: str
    row_ids: pa.Array
    offsets: np.ndarray
    ords: np.ndarray

    def __len__(self) -> int:
        return len(self.row_ids)

    def keep_mask(self, excluded_ords) -> np.ndarray:
        """Rows that hold none of the excluded record ordinals."""
        excluded = np.asarray(sorted(excluded_ords) if not isinstance(excluded_ords, np.ndarray) else excluded_ords,
                              dtype=np.uint32)
        if excluded.size == 0:
            return np.ones(len(self), bool)
        hit = np.isin(self.ords, excluded)
        bad_rows = np.repeat(np.arange(len(self)), np.diff(self.offsets))[hit]
        keep = np.ones(len(self), bool)
        keep[bad_rows] = False
        return keep


def record_ids(store: Store, txn_or_con, dataset_id: int, ords: np.ndarray) -> pa.Array:
    """Record ids of the given ordinals (all of one source dataset), in the same order."""
    import pyarrow.parquet as pq

    segs = txn_or_con.execute(
        "SELECT ord_start, n, ids_file FROM record_segments WHERE dataset_id = ? ORDER BY ord_start", [dataset_id]
    ).fetchall()
    if not segs or len(ords) == 0:
        return pa.array([], pa.string())
    starts = np.array([s for s, _, _ in segs], np.int64)
    sizes = np.array([n for _, n, _ in segs], np.int64)
    seg = np.searchsorted(starts, ords.astype(np.int64), side="right") - 1
    needed = np.unique(seg)
    parts, base, remap = [], 0, {}
    for i in needed.tolist():
        parts.append(pq.read_table(store.data_path(segs[i][2]), columns=["record_id"]).column(0).combine_chunks())
        remap[i] = base
        base += int(sizes[i])
    flat = pa.concat_arrays(parts)
    local = ords.astype(np.int64) - starts[seg]
    bases = np.array([remap[i] for i in seg.tolist()], np.int64) if seg.size else np.zeros(0, np.int64)
    return flat.take(pa.array(bases + local))


def version_rows(store: Store, ref: str) -> VersionRows:
    from expunge.lineage.ingest import bitmap_array

    with store.view() as view:
        v = view.resolve_version(ref)
        bm = view.load_bitmap(v["bitmap_file"])
        if v["row_space"] == "records":
            ords = bitmap_array(bm)
            ids = record_ids(store, view, v["record_dataset_id"], ords)
            return VersionRows(v["label"], ids, np.arange(len(ords) + 1, dtype=np.int64), ords)
    import pyarrow.parquet as pq

    row_ids = pq.read_table(store.data_path(v["rows_file"])).column("row_id").combine_chunks()
    rowmap = np.load(store.data_path(v["rowmap_file"]))
    order = np.argsort(rowmap[1], kind="stable")
    offsets = np.zeros(len(row_ids) + 1, np.int64)
    np.cumsum(np.bincount(rowmap[1], minlength=len(row_ids)), out=offsets[1:])
    return VersionRows(v["label"], row_ids, offsets, rowmap[0][order])
