"""Capturing dataset versions: source tables and derived subsets or compositions.

Every source record gets a store-wide ordinal (uint32). A dataset version is a
roaring bitmap of the ordinals it holds, so versions that share most records
cost a few bytes per run of shared ordinals, not a copy. Derived versions whose
rows are built from several records (join, aggregate, augment) or stacked from several parents (union) keep their
own row ids and a row → records map.
"""

from __future__ import annotations

from array import array
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from expunge.errors import BadInput
from expunge.lineage import catalog as C
from expunge.lineage.forget import skip_tombstoned_rows, skip_tombstoned_source
from expunge.lineage.keys import owner_fingerprint
from expunge.lineage import segments as seglib
from expunge.lineage.segments import Segment
from expunge.lineage.store import MERGE_FACTOR, Store, Txn, VersionInfo, _now, check_name, sql_literal
from expunge.lineage.tables import first_duplicate, id_column, id_lists, read_table, require_columns


# ---------------------------------------------------------------- helpers


def _record_ids_of_dataset(txn: Txn, dataset_id: int):
    """(Parquet path, first ordinal) of each record-id segment of a source dataset, in ordinal order."""
    segs = txn.con.execute(
        "SELECT ids_file, ord_start FROM record_segments WHERE dataset_id = ? ORDER BY ord_start", [dataset_id]
    ).fetchall()
    return [(str(txn.store.data_path(f)), int(s)) for f, s in segs]


def lookup_record_ordinals(txn: Txn, dataset_id: int, ids: pa.Array, with_owner: bool = False):
    """Ordinal of each id among the dataset's records; -1 where unknown. Order follows `ids`.

    With `with_owner`, also each known record's owner fingerprint (32 bits of its subject hash).
    """
    n = len(ids)
    out = np.full(n, -1, dtype=np.int64)
    owner = np.zeros(n, dtype=np.uint16)
    segs = _record_ids_of_dataset(txn, dataset_id)
    if not segs or n == 0:
        return (out, owner) if with_owner else out
    q = pa.table({"rid": ids, "pos": pa.array(np.arange(n, dtype=np.int64))})
    parts = " UNION ALL ".join(
        f"SELECT record_id AS rid, owner, (file_row_number + {start})::BIGINT AS ord "
        f"FROM read_parquet({sql_literal(path)}, file_row_number = true)"
        for path, start in segs
    )
    txn.con.register("_q_ids", q)
    try:
        cols = "q.pos, k.ord, k.owner" if with_owner else "q.pos, k.ord"
        res = txn.con.sql(f"SELECT {cols} FROM _q_ids q JOIN ({parts}) k ON q.rid = k.rid").fetchnumpy()
    finally:
        txn.con.unregister("_q_ids")
    pos = res["pos"].astype(np.int64)
    out[pos] = res["ord"].astype(np.int64)
    if with_owner:
        owner[pos] = res["owner"].astype(np.uint16)
        return out, owner
    return out


def _bulk_lookup(txn: Txn, hasher, dataset_id: int, rids: pa.Array, subs: pa.Array):
    """Subject hashes and known-record facts for a large source version, in one DuckDB query.

    Runs in the hasher's in-memory connection (which holds the digest cache and never spills to
    disk), joining the rows with both the cache and the dataset's record ids.
    """
    n = len(rids)
    con = hasher.bulk_connection()
    segs = _record_ids_of_dataset(txn, dataset_id)
    ids_sql = " UNION ALL ".join(
        f"SELECT record_id AS rid, owner, (file_row_number + {start})::BIGINT AS ord "
        f"FROM read_parquet({sql_literal(path)}, file_row_number = true)"
        for path, start in segs
    ) or "SELECT NULL::VARCHAR AS rid, NULL::USMALLINT AS owner, NULL::BIGINT AS ord WHERE false"
    con.register("_q", pa.table({"rid": rids, "s": subs, "pos": pa.array(np.arange(n, dtype=np.int64))}))
    try:
        res = con.sql(
            f"""SELECT q.pos, coalesce(k.ord, -1) AS ord, coalesce(k.owner, 0) AS owner,
                       c.hi IS NULL AS miss, coalesce(c.hi, 0) AS hi, coalesce(c.lo, 0) AS lo
                FROM _q q LEFT JOIN ({ids_sql}) k ON q.rid = k.rid LEFT JOIN cache c ON c.s = q.s"""
        ).fetchnumpy()
    finally:
        con.unregister("_q")
    pos = res["pos"].astype(np.int64)
    if pos.size != n:
        raise BadInput(f"duplicate record ids in dataset {dataset_id} (store corrupted?)")
    existing = np.empty(n, np.int64)
    owner = np.empty(n, np.uint16)
    hashes = np.empty((n, 2), np.uint64)
    existing[pos] = res["ord"].astype(np.int64)
    owner[pos] = res["owner"].astype(np.uint16)
    hashes[pos, 0] = res["hi"].astype(np.uint64)
    hashes[pos, 1] = res["lo"].astype(np.uint64)
    miss = np.zeros(n, bool)
    miss[pos] = res["miss"].astype(bool)
    if miss.any():
        idx = np.flatnonzero(miss)
        hashes[idx] = hasher.hash_uncached(subs.take(pa.array(idx)))
    return hashes, existing, owner


def bitmap_array(bm) -> np.ndarray:
    return np.frombuffer(bm.to_array(), dtype=np.uint32)


_UINT32_ARRAY = array("I").itemsize == 4


def _bitmap_from(ords: np.ndarray):
    from pyroaring import BitMap

    # pyroaring adds an array('I') in one C call; a numpy array would be iterated (6x slower).
    if _UINT32_ARRAY:
        return BitMap(array("I", np.ascontiguousarray(ords, dtype=np.uint32).tobytes()))
    return BitMap(np.asarray(ords, dtype=np.uint32))


def add_subject_segment(txn: Txn, hashes: np.ndarray, ords: np.ndarray) -> None:
    """Add the (subject hash, ordinal) pairs of new records; keep O(log n) segments by merging."""
    if len(ords) == 0:
        return
    segs = txn.con.execute(
        "SELECT segment_id, file, n_records FROM subject_segments ORDER BY segment_id"
    ).fetchall()
    merge: list[tuple[int, str]] = []
    size = len(ords)
    for sid, f, n in reversed(segs):
        if n < MERGE_FACTOR * size:
            merge.append((sid, f))
            size += n
        else:
            break
    part = seglib.from_records(hashes, ords)
    if merge:
        # Oldest first: older segments hold smaller ordinals, so each subject's blocks stay sorted.
        part = seglib.merge([Segment(txn.store.data_path(f)).arrays() for _, f in reversed(merge)] + [part])
        txn.con.execute(
            f"DELETE FROM subject_segments WHERE segment_id IN ({','.join(str(s) for s, _ in merge)})"
        )
        txn.retire([f for _, f in merge])
    name, fh = txn.create(".seg")
    with fh:
        ns, nr = seglib.write(fh, *part)
    txn.con.execute(
        "INSERT INTO subject_segments VALUES (?, ?, ?, ?)",
        [txn.next_id("subject_segments", "segment_id"), name, ns, nr],
    )


def _insert_version(
    txn: Txn, *, dataset_id: int, name: str, kind: str, row_space: str, record_dataset_id: int | None,
    n_rows: int, bitmap, rows_file: str | None = None, rowmap_file: str | None = None,
    parents: Sequence[int] = (), origin: str | None = None, new_records: int = 0,
) -> VersionInfo:
    version_id = txn.next_id("dataset_versions", "version_id")
    version_no = int(txn.one("SELECT coalesce(max(version_no), 0) + 1 FROM dataset_versions WHERE dataset_id = ?",
                             [dataset_id]))
    bitmap_file = txn.save_bitmap(bitmap)
    txn.con.execute(
        "INSERT INTO dataset_versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [version_id, dataset_id, version_no, kind, row_space, record_dataset_id, n_rows, len(bitmap),
         bitmap_file, rows_file, rowmap_file, origin, _now()],
    )
    for pos, pid in enumerate(parents):
        txn.con.execute("INSERT INTO version_parents VALUES (?, ?, ?)", [version_id, pid, pos])
    return VersionInfo(f"{name}@{version_no}", name, version_no, kind, n_rows, len(bitmap), new_records, txn.skipped)


def _origin(data: Any, origin: str | None) -> str | None:
    if origin is not None:
        return origin
    if isinstance(data, (str,)) or hasattr(data, "__fspath__"):
        return str(data)
    return None


# ---------------------------------------------------------------- source versions


def ingest_source(store: Store, data: Any, *, name: str, subject_col: str, record_col: str,
                  origin: str | None = None) -> VersionInfo:
    check_name(name, "dataset")
    what = f"source {name!r}"
    if record_col == subject_col:
        raise BadInput(f"{what}: the record id column is the subject column ({subject_col!r}): that would put raw "
                       "subject ids into the store's record tables; give each record an id of its own (an order "
                       "number, a row number)")
    table = read_table(data, [subject_col, record_col])
    require_columns(table, [subject_col, record_col], what)
    rids = id_column(table, record_col, what)
    subs = id_column(table, subject_col, what)
    n = len(rids)
    same = int(pc.sum(pc.equal(rids, subs)).as_py() or 0)
    if 2 * same > n:
        # A copy of the subject column. A few equal ids (two auto-increment counters crossing) reveal
        # nothing without the key: which rows coincide cannot be told from the store.
        raise BadInput(f"{what}: in {same} of {n} rows the record id ({record_col!r}) equals the subject id "
                       f"({subject_col!r}): that would put raw subject ids into the store's record tables; give each "
                       "record an id of its own (an order number, a row number)")

    with store.write() as txn:
        dataset_id = txn.dataset_id(name, create=True)
        kinds = txn.con.execute(
            "SELECT DISTINCT kind FROM dataset_versions WHERE dataset_id = ? ORDER BY kind <> 'source'", [dataset_id]
        ).fetchall()
        if kinds and kinds[0][0] != "source":
            raise BadInput(f"dataset {name!r} is a derived dataset; a source version needs another name")
        if n >= store.hasher.BULK:
            hashes, existing, owner = _bulk_lookup(txn, store.hasher, dataset_id, rids, subs)
        else:
            hashes = store.hasher.hash_column(subs)
            existing, owner = lookup_record_ordinals(txn, dataset_id, rids, with_owner=True)
        rids, hashes, existing, owner = skip_tombstoned_source(txn, rids, hashes, existing, owner)
        n = len(rids)
        known = existing >= 0
        # Duplicate ids: only the new ids need a unique check here; repeated known ids join to the
        # same ordinal, which the version's bitmap below shows.
        if (~known).any() and first_duplicate(rids.filter(pa.array(~known))) is not None:
            raise BadInput(f"{what}: duplicate record id in column {record_col!r}: row {first_duplicate(rids)} "
                           "repeats an earlier row's")
        fp = owner_fingerprint(hashes)
        moved = known & (owner != fp)
        if moved.any():
            bad = int(np.flatnonzero(moved)[0])
            raise BadInput(
                f"{what}: the record in row {bad} belongs to a different subject than when it was first "
                f"ingested ({int(moved.sum())} such record(s)); a record id must keep its subject"
            )
        new_idx = np.flatnonzero(~known)
        start = int(txn.meta("next_ordinal"))
        n_new = int(new_idx.size)
        if start + n_new >= 2**32:
            raise BadInput("the store is full: more than 2^32 records")
        ords = np.empty(n, dtype=np.uint32)
        ords[known] = existing[known]
        ords[new_idx] = np.arange(start, start + n_new, dtype=np.uint32)
        if n_new:
            ids_table = pa.table({"record_id": rids.take(pa.array(new_idx)),
                                  "owner": pa.array(fp[new_idx], pa.uint16())})
            ids_file = txn.write_parquet(ids_table, ".ids.parquet")
            txn.con.execute(
                "INSERT INTO record_segments VALUES (?, ?, ?, ?, ?)",
                [txn.next_id("record_segments", "segment_id"), dataset_id, start, n_new, ids_file],
            )
            add_subject_segment(txn, hashes[new_idx], ords[new_idx])
            txn.set_meta("next_ordinal", str(start + n_new))
        _remember_subject_col(txn, dataset_id, subject_col)
        bitmap = _bitmap_from(ords)
        if len(bitmap) != n:
            raise BadInput(f"{what}: duplicate record id in column {record_col!r}: row {first_duplicate(rids)} "
                           "repeats an earlier row's")
        return _insert_version(
            txn, dataset_id=dataset_id, name=name, kind="source", row_space="records",
            record_dataset_id=dataset_id, n_rows=n, bitmap=bitmap, origin=_origin(data, origin),
            new_records=n_new,
        )


SUBJECT_COLS = "subject_cols"  # meta key: {source dataset id: [the subject column names its versions used]}


def _remember_subject_col(txn: Txn, dataset_id: int, subject_col: str) -> None:
    """Keep the source's subject column name (a name, not an id), so that a derived dataset whose row ids come
    from a column of that name can be refused."""
    import json

    known = json.loads(txn.one("SELECT value FROM meta WHERE key = ?", [SUBJECT_COLS]) or "{}")
    cols = known.setdefault(str(dataset_id), [])
    if subject_col not in cols:
        cols.append(subject_col)
        txn.set_meta(SUBJECT_COLS, json.dumps(known, sort_keys=True))


def _refuse_subject_row_ids(txn: Txn, what: str, row_col: str, row_ids: pa.Array, pos: np.ndarray,
                            ords: np.ndarray) -> None:
    """A derived dataset's own row ids must not be subject ids: refused when `row_col` is named like a source's
    subject column, or when most rows (on a sample) are named after a subject owning one of their records (the
    row's id hashed with the store's key has that record's owner fingerprint). Row ids that merely share a
    few values with subject ids reveal nothing without the key and are let through."""
    import json

    from expunge.lineage.rows import record_values

    known = json.loads(txn.one("SELECT value FROM meta WHERE key = ?", [SUBJECT_COLS]) or "{}")
    if any(row_col in cols for cols in known.values()):
        raise BadInput(f"{what}: the row id column {row_col!r} is a source's subject column: that would put raw "
                       "subject ids into the store; give the rows ids of their own, or leave --row-col out (rows "
                       "are then numbered)")
    n = len(row_ids)
    if n == 0 or ords.size == 0:
        return
    sample = np.unique(np.linspace(0, n - 1, min(n, 1000)).astype(np.int64))
    fp_row = np.zeros(n, np.int64) - 1
    fp_row[sample] = owner_fingerprint(txn.store.hasher.hash_column(row_ids.take(pa.array(sample))))
    in_sample = fp_row[pos] >= 0
    owners = record_values(txn.store, txn, ords[in_sample].astype(np.uint32), "owner").to_numpy(zero_copy_only=False)
    named = np.unique(pos[in_sample][owners.astype(np.int64) == fp_row[pos[in_sample]]])
    if 2 * named.size > sample.size:
        raise BadInput(f"{what}: the row ids in column {row_col!r} are the subject ids of their rows' records (in "
                       f"{named.size} of {sample.size} rows checked): that would put raw subject ids into the store; "
                       "give the rows ids of their own, or leave --row-col out (rows are then numbered)")


# ---------------------------------------------------------------- resolving parent rows


def resolve_rows(txn: Txn, parent: dict, ids: pa.Array, what: str,
                 row_of_id: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Map row ids of a parent version to source record ordinals.

    Returns (index into `ids`, ordinal) pairs: one pair per id for record-space
    parents, one per (row, record) for composed parents. Unknown ids are refused, the
    message naming the row (`row_of_id[i]`: the table row id `i` came from; default `i`).
    """
    n = len(ids)

    def unknown(missing: np.ndarray) -> BadInput:
        bad = int(np.flatnonzero(missing)[0])
        row = int(row_of_id[bad]) if row_of_id is not None else bad
        return BadInput(f"{what}: {int(missing.sum())} id(s) are not rows of {parent['label']}, the first in row {row}")

    if parent["row_space"] == "records":
        ords = lookup_record_ordinals(txn, parent["record_dataset_id"], ids)
        ok = ords >= 0
        if ok.all():
            bm = txn.load_bitmap(parent["bitmap_file"])
            if not _bitmap_from(ords).issubset(bm):
                ok &= np.isin(ords, bitmap_array(bm))
        if not ok.all():
            raise unknown(~ok)
        return np.arange(n, dtype=np.int64), ords.astype(np.uint32)
    rows = _parent_rows(txn, parent)
    q = pa.table({"rid": ids, "pos": pa.array(np.arange(n, dtype=np.int64))})
    txn.con.register("_q_rows", q)
    txn.con.register("_p_rows", rows.select(["row_id"]).append_column(
        "row_idx", pa.array(np.arange(rows.num_rows, dtype=np.int64))))
    try:
        res = txn.con.sql("SELECT q.pos, p.row_idx FROM _q_rows q JOIN _p_rows p ON q.rid = p.row_id").fetchnumpy()
    finally:
        txn.con.unregister("_q_rows")
        txn.con.unregister("_p_rows")
    row_of = np.full(n, -1, dtype=np.int64)
    row_of[res["pos"].astype(np.int64)] = res["row_idx"].astype(np.int64)
    if (row_of < 0).any():
        raise unknown(row_of < 0)
    # Row → records, from the (ordinal, row) map sorted by ordinal: regroup by row.
    rowmap = np.load(txn.store.data_path(parent["rowmap_file"]))
    by_row = np.argsort(rowmap[1], kind="stable")
    flat = rowmap[0][by_row]
    offsets = np.zeros(rows.num_rows + 1, np.int64)
    np.cumsum(np.bincount(rowmap[1], minlength=rows.num_rows), out=offsets[1:])
    starts, ends = offsets[row_of], offsets[row_of + 1]
    counts = ends - starts
    total = int(counts.sum())
    pos = np.repeat(np.arange(n, dtype=np.int64), counts)
    idx = np.arange(total, dtype=np.int64) + np.repeat(starts - (np.cumsum(counts) - counts), counts)
    return pos, flat[idx].astype(np.uint32)


def _parent_rows(txn: Txn, parent: dict) -> pa.Table:
    import pyarrow.parquet as pq

    return pq.read_table(txn.store.data_path(parent["rows_file"]))


def _write_composite(txn: Txn, row_ids: pa.Array, pos: np.ndarray, ords: np.ndarray) -> tuple[str, str, Any]:
    """Store the row ids and the ordinal-sorted (ord, row) map; return the files and the bitmap."""
    order = np.lexsort((ords, pos))
    pos_s, ords_s = pos[order], ords[order]
    # Drop a record repeated within one row.
    if pos_s.size:
        keep = np.ones(pos_s.size, dtype=bool)
        keep[1:] = (pos_s[1:] != pos_s[:-1]) | (ords_s[1:] != ords_s[:-1])
        pos_s, ords_s = pos_s[keep], ords_s[keep]
    rows_file = txn.write_parquet(pa.table({"row_id": row_ids}), ".rows.parquet")
    by_ord = np.lexsort((pos_s, ords_s))
    rowmap = np.empty((2, pos_s.size), dtype=np.uint32)
    rowmap[0] = ords_s[by_ord]
    rowmap[1] = pos_s[by_ord]
    rowmap_file = txn.write_bytes(".rowmap.npy", _npy_bytes(rowmap))
    return rows_file, rowmap_file, _bitmap_from(ords_s)


def _npy_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


# ---------------------------------------------------------------- derived versions


def ingest_dataset(store: Store, data: Any, *, name: str, parents: Sequence[str], kind: str,
                   record_col: str | None = None, sources: dict[str, str] | None = None,
                   row_col: str | None = None, origin: str | None = None) -> VersionInfo:
    """Add a derived version.

    Subset kinds (filter, sample, split, select) take one parent and a column
    (`record_col`) naming, per row, the parent row it keeps. Composite kinds
    (join, aggregate, augment) take one column per parent (`sources`, parent →
    column; a column holds one id or a list of ids, `;`-separated in CSV) and an
    optional `row_col` with the new rows' ids (default: the row number). A union
    (two or more parents) stacks parent rows: each row holds one id in the column
    of the parent it comes from and is empty (null) in the others.
    """
    check_name(name, "dataset")
    what = f"dataset {name!r}"
    if kind not in C.DERIVED_KINDS:
        raise BadInput(f"unknown derivation kind {kind!r}; expected one of {', '.join(C.DERIVED_KINDS)}")
    parents = list(parents or [])
    if not parents:
        raise BadInput(f"{what}: a derived dataset needs at least one --parent")
    if kind in C.SUBSET_KINDS:
        if len(parents) != 1:
            raise BadInput(f"{what}: a {kind} has exactly one parent (got {len(parents)})")
        if sources:
            raise BadInput(f"{what}: a {kind} takes --record-col, not --source")
        record_col = record_col or "record_id"
        cols = [record_col]
    else:
        if sources is None:
            if len(parents) == 1 and record_col:
                sources = {parents[0]: record_col}
            else:
                raise BadInput(f"{what}: a {kind} needs --source PARENT=COLUMN for each parent")
        unknown = set(sources) - set(parents)
        if unknown:
            raise BadInput(f"{what}: --source names {sorted(unknown)} that are not parents")
        missing = [p for p in parents if p not in sources]
        if missing:
            raise BadInput(f"{what}: no --source column for parent(s) {missing}")
        if kind == "union":
            if len(parents) < 2:
                raise BadInput(f"{what}: a union has two or more parents (got {len(parents)}); one parent's rows "
                               "are a subset (--kind select)")
            if len(set(sources.values())) != len(sources):
                raise BadInput(f"{what}: a union takes one column per parent (--source PARENT=COLUMN), each "
                               "holding that parent's row id where the row comes from it and empty elsewhere")
        cols = list(sources.values()) + ([row_col] if row_col else [])
    table = read_table(data, cols)
    require_columns(table, cols, what)
    if kind == "union":
        table = _union_lists(table, [sources[p] for p in parents], what)

    with store.write() as txn:
        dataset_id = txn.dataset_id(name, create=True)
        _check_no_cycle(txn, dataset_id, name, parents)
        pvs = [txn.resolve_version(p) for p in parents]
        table = skip_tombstoned_rows(txn, table, pvs, [record_col] if kind in C.SUBSET_KINDS else
                                     [sources[p] for p in parents])
        prev = txn.one("SELECT kind FROM dataset_versions WHERE dataset_id = ? LIMIT 1", [dataset_id])
        if prev == "source":
            raise BadInput(f"dataset {name!r} is a source dataset; a derived version needs another name")
        if kind in C.SUBSET_KINDS:
            pv = pvs[0]
            ids = id_column(table, record_col, what)

            def refuse_duplicate():
                raise BadInput(f"{what}: a row appears twice in column {record_col!r}: row {first_duplicate(ids)} "
                               "repeats an earlier row's id")

            # Rows of a record-space parent are records: a repeated row id shows as a bitmap with fewer
            # records than rows, so the (costly) unique check runs only to name the culprit.
            if pv["row_space"] != "records" and first_duplicate(ids) is not None:
                refuse_duplicate()
            pos, ords = resolve_rows(txn, pv, ids, what)
            if pv["row_space"] == "records":
                bm = _bitmap_from(ords)
                if len(bm) != len(ids):
                    refuse_duplicate()
                return _insert_version(
                    txn, dataset_id=dataset_id, name=name, kind=kind, row_space="records",
                    record_dataset_id=pv["record_dataset_id"], n_rows=len(ids), bitmap=bm,
                    parents=[pv["version_id"]], origin=_origin(data, origin),
                )
            rows_file, rowmap_file, bm = _write_composite(txn, ids, pos, ords)
            return _insert_version(
                txn, dataset_id=dataset_id, name=name, kind=kind, row_space="rows", record_dataset_id=None,
                n_rows=len(ids), bitmap=bm, rows_file=rows_file, rowmap_file=rowmap_file,
                parents=[pv["version_id"]], origin=_origin(data, origin),
            )
        n = table.num_rows
        if row_col:
            row_ids = id_column(table, row_col, what)
            dup = first_duplicate(row_ids)
            if dup is not None:
                raise BadInput(f"{what}: duplicate row id in column {row_col!r}: row {dup} repeats an earlier row's")
        else:
            row_ids = pa.array([str(i) for i in range(n)], type=pa.string())
        all_pos, all_ords = [], []
        for pref, pv in zip(parents, pvs):
            col = sources[pref]
            parent_of, flat = id_lists(table, col, what)
            parent_of = parent_of.to_numpy(zero_copy_only=False).astype(np.int64)
            p_idx, ords = resolve_rows(txn, pv, flat, f"{what} column {col!r}", row_of_id=parent_of)
            all_pos.append(parent_of[p_idx])
            all_ords.append(ords)
        pos = np.concatenate(all_pos) if all_pos else np.zeros(0, np.int64)
        ords = np.concatenate(all_ords) if all_ords else np.zeros(0, np.uint32)
        if row_col:
            _refuse_subject_row_ids(txn, what, row_col, row_ids, pos, ords)
        rows_file, rowmap_file, bm = _write_composite(txn, row_ids, pos, ords)
        return _insert_version(
            txn, dataset_id=dataset_id, name=name, kind=kind, row_space="rows", record_dataset_id=None,
            n_rows=n, bitmap=bm, rows_file=rows_file, rowmap_file=rowmap_file,
            parents=[pv["version_id"] for pv in pvs], origin=_origin(data, origin),
        )


def _union_lists(table: pa.Table, cols: Sequence[str], what: str) -> pa.Table:
    """A union's --source columns as list columns (one id where the row comes from that parent, none where the
    cell is empty), so that the composite path reads them; refused unless each row names exactly one parent
    row. The row numbers in messages are the table's, counted from 0."""
    given = np.zeros(table.num_rows, np.int64)
    lists = {}
    for col in cols:
        arr = table.column(col).combine_chunks()
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        if pa.types.is_integer(arr.type) or pa.types.is_large_string(arr.type) or pa.types.is_string_view(arr.type):
            arr = pc.cast(arr, pa.string())
        elif not pa.types.is_string(arr.type):
            raise BadInput(f"{what}: column {col!r} has type {arr.type}; a union row holds one id (string or "
                           "integer) from one parent")
        valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), bool)
        given += valid
        offsets = np.zeros(len(arr) + 1, np.int32)
        np.cumsum(valid, out=offsets[1:])
        lists[col] = pa.ListArray.from_arrays(pa.array(offsets), arr.filter(pa.array(valid)))
    for bad, why in ((given > 1, "has ids in {n} --source columns; a union row comes from one parent"),
                     (given == 0, "has no id in any --source column")):
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise BadInput(f"{what}: row {row} " + why.format(n=int(given[row])) + f" ({int(bad.sum())} such row(s))")
    for col, arr in lists.items():
        table = table.set_column(table.column_names.index(col), col, arr)
    return table


def _check_no_cycle(txn: Txn, dataset_id: int, name: str, parents: Sequence[str]) -> None:
    """Versions are immutable and may only name existing parents, so the one cycle a user can
    ask for is a version that names itself (or a later version of its own dataset) as parent."""
    from expunge.lineage.store import split_ref

    next_no = int(txn.one("SELECT coalesce(max(version_no), 0) + 1 FROM dataset_versions WHERE dataset_id = ?",
                          [dataset_id]))
    for ref in parents:
        pname, ver = split_ref(ref)
        if pname == name and ver is not None and ver >= next_no:
            raise BadInput(f"derivation cycle: {name}@{next_no} cannot have {ref} as a parent (it would be its own "
                           f"ancestor)")


def derive_positions(store: Store, parent: str, *, name: str, kind: str, positions: Any,
                     origin: str | None = None) -> VersionInfo:
    """A subset version selected by row positions (or a boolean mask) of a record-space parent."""
    check_name(name, "dataset")
    if kind not in C.SUBSET_KINDS:
        raise BadInput(f"derive() makes subsets; kind must be one of {', '.join(C.SUBSET_KINDS)}")
    pos = np.asarray(positions)
    with store.write() as txn:
        pv = txn.resolve_version(parent)
        if pv["row_space"] != "records":
            raise BadInput(f"derive() needs a parent whose rows are records; {pv['label']} is composed")
        if pos.dtype == bool:
            if pos.size != pv["n_rows"]:
                raise BadInput(f"mask has {pos.size} entries, {pv['label']} has {pv['n_rows']} rows")
            pos = np.flatnonzero(pos)
        pos = pos.astype(np.int64)
        if pos.size and (pos.min() < 0 or pos.max() >= pv["n_rows"]):
            raise BadInput(f"row positions out of range for {pv['label']} ({pv['n_rows']} rows)")
        if np.unique(pos).size != pos.size:
            raise BadInput("row positions repeat")
        dataset_id = txn.dataset_id(name, create=True)
        parent_ords = bitmap_array(txn.load_bitmap(pv["bitmap_file"]))
        # Bitmap order is ordinal order; the parent's row order is its ordinal order too.
        ords = parent_ords[pos]
        return _insert_version(
            txn, dataset_id=dataset_id, name=name, kind=kind, row_space="records",
            record_dataset_id=pv["record_dataset_id"], n_rows=int(pos.size), bitmap=_bitmap_from(ords),
            parents=[pv["version_id"]], origin=origin,
        )
