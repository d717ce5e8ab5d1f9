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

    def first_ords(self) -> np.ndarray:
        """The smallest record ordinal of each row (-1 for a row built from no record)."""
        out = np.full(len(self), -1, np.int64)
        has = np.diff(self.offsets) > 0
        out[has] = np.minimum.reduceat(self.ords.astype(np.int64), self.offsets[:-1][has]) if has.any() else 0
        return out

    def last_ords(self) -> np.ndarray:
        """The largest (newest) record ordinal of each row (-1 for a row built from no record)."""
        out = np.full(len(self), -1, np.int64)
        has = np.diff(self.offsets) > 0
        out[has] = np.maximum.reduceat(self.ords.astype(np.int64), self.offsets[:-1][has]) if has.any() else 0
        return out

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


def record_values(store: Store, view, ords: np.ndarray, column: str = "record_id") -> pa.Array:
    """A column of the record-id tables (`record_id`, or `owner`: 16 bits of the subject hash) for the
    given record ordinals, in the same order."""
    segs = view.execute("SELECT ord_start, n, ids_file FROM record_segments ORDER BY ord_start").fetchall()
    if not segs or len(ords) == 0:
        return pa.array([], pa.string() if column == "record_id" else pa.uint16())
    starts = np.array([s for s, _, _ in segs], np.int64)
    seg = np.searchsorted(starts, ords.astype(np.int64), side="right") - 1
    at = ords.astype(np.int64) - starts[seg]  # each ordinal's row in its segment's table
    pos = np.empty(len(ords), np.int64)
    parts, base = [], 0
    for i in np.unique(seg).tolist():
        mine = np.flatnonzero(seg == i)
        col, first = _segment_rows(store.data_path(segs[i][2]), column, at[mine])
        pos[mine] = base + first
        parts.append(col)
        base += len(col)
    return pa.concat_arrays(parts).take(pa.array(pos))


def _segment_rows(path, column: str, rows: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """(a column of a record-id table, where `rows` are in it): the row groups that hold them when they are
    few (a certified removal's one subject: one group of the 200k-row table, not all of it), else all."""
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    sizes = np.array([f.metadata.row_group(g).num_rows for g in range(f.metadata.num_row_groups)], np.int64)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    g = np.searchsorted(bounds, rows, side="right") - 1  # each row's group
    groups = np.unique(g)
    if len(groups) == len(sizes):
        return f.read(columns=[column]).column(0).combine_chunks(), rows
    col = f.read_row_groups(groups.tolist(), columns=[column]).column(0).combine_chunks()
    # Row r of group g sits at (rows of the groups read before g) + (r − the first row of g).
    before = np.zeros(len(sizes), np.int64)
    before[groups] = np.concatenate([[0], np.cumsum(sizes[groups])[:-1]])
    return col, before[g] + rows - bounds[g]


def record_ids(store: Store, view, dataset_id: int, ords: np.ndarray) -> pa.Array:
    """Record ids of the given ordinals, in the same order."""
    return record_values(store, view, ords, "record_id")


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
