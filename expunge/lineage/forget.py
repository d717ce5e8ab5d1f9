"""Forgetting subjects: their records leave every table and file of the store; a tombstone stays.

`forget_subjects` is one store write (all of it or none). It finds the subjects' record ordinals
in the subject segments, then rewrites every file that names one: the segments (their entries go),
the record-id tables (the record id and owner fingerprint of each erased slot become null: a slot
stays so that positions keep meaning ordinals), each dataset version's bitmap and row map, the
run inputs' row subsets and the runs' facts. The old files are retired (see `Store.write`). A
`tombstones` row keeps each subject's keyed hash and the request id, and `tombstone_ids` the
keyed hashes of its record ids (and of composed rows removed with them), so that every later
ingest, source or derived, skips them and says how many it skipped.

Composed rows (join, aggregate, augment). In the recorded versions, the history of what was
trained on, a row built from an erased record and others keeps its other records (the models
trained on it did see them, and the other subjects' impact answers must not change); a row built
only from erased records goes. In the cleaned versions, the data for future training, every row
built from an erased record goes, as training without the record would drop it.

Cleaned versions. For every version holding erased records, a new version of the same dataset
(kind "filter", parent the old version, origin "cleaned for <request> from <name@n>") holds its
rows minus the erased ones, and, where the old version's data file is known (its origin path, or
the cleaned file of an earlier request) and still matches the version, a cleaned copy of that
file is written beside it (not inside the store: it holds other people's raw ids, and a copy of
the store must not be enough to re-identify anyone). `clean_versions` does only this, in its own
write, so that an executor can retrain on the cleaned versions before the request completes;
`forget_subjects` cleans whatever is left uncleaned for its request.

When the bytes are gone: the forgetting write rebuilds its catalog into a fresh file (no deleted
row survives in free blocks). The previous catalog generation, which still names the subjects'
hashes, is deleted by the next write; the retired data files are deleted at the start of the
second write after the forgetting (the previous generation may be serving a reader until the
next write replaces it). With `purge=True`, both are deleted before `forget_subjects` returns
(a reader still on the previous generation then fails and retries).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyroaring import BitMap

from expunge import audit
from expunge.errors import BadInput
from expunge.lineage import catalog as C
from expunge.lineage import segments as seglib
from expunge.lineage.store import Store, Txn, _now, fault, has_table

_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SEP = "\x1f"


# ---------------------------------------------------------------- small helpers


def check_hashes(hashes: Any) -> np.ndarray:
    """Distinct (n, 2) uint64 subject hashes, sorted; anything else is bad input."""
    arr = np.asarray(hashes)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.dtype != np.uint64:
        raise BadInput(f"subject hashes must be an (n, 2) uint64 array (got shape {arr.shape}, {arr.dtype})")
    if len(arr) == 0:
        return arr.reshape(0, 2)
    return np.unique(arr, axis=0)


def check_request_id(request_id: Any) -> str:
    if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
        raise BadInput(f"invalid request id {request_id!r}: letters, digits, '.', '_' or '-', at most 128")
    return request_id


def isin_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each (hi, lo) row of `a`, whether `b` holds it."""
    out = np.zeros(len(a), bool)
    if len(a) == 0 or len(b) == 0:
        return out
    cand = np.flatnonzero(np.isin(a[:, 0], b[:, 0]))
    if cand.size:
        have = set(zip(b[:, 0].tolist(), b[:, 1].tolist()))
        out[cand] = [(h, lo) in have for h, lo in zip(a[cand, 0].tolist(), a[cand, 1].tolist())]
    return out


def _pairs(con, sql: str, params: Sequence = ()) -> np.ndarray:
    rows = con.execute(sql, params).fetchall()
    return np.array(rows, dtype=np.uint64).reshape(-1, 2)


def id_hashes(store: Store, space: str, ids: pa.Array) -> np.ndarray:
    """Keyed hashes of record or row ids within a space (`records:<dataset id>`, `rows:<version id>`)."""
    if len(ids) == 0:
        return np.zeros((0, 2), np.uint64)
    return store.hasher.hash_column(pc.binary_join_element_wise(pa.scalar(space), ids, _SEP))


def _space(pv: dict) -> str:
    return f"records:{pv['record_dataset_id']}" if pv["row_space"] == "records" else f"rows:{pv['version_id']}"


def _arr(bm: BitMap) -> np.ndarray:
    return np.frombuffer(bm.to_array(), dtype=np.uint32)


def _npy_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


# ---------------------------------------------------------------- at ingest


def skip_tombstoned_source(txn: Txn, rids: pa.Array, hashes: np.ndarray, existing: np.ndarray,
                           owner: np.ndarray) -> tuple[pa.Array, np.ndarray, np.ndarray, np.ndarray]:
    """A source ingest's rows without those whose subject a tombstone names; `txn.skipped` counts them."""
    if len(hashes) == 0 or not has_table(txn.con, "tombstones"):
        return rids, hashes, existing, owner
    dead = isin_pairs(hashes, _pairs(txn.con, "SELECT hi, lo FROM tombstones"))
    if not dead.any():
        return rids, hashes, existing, owner
    keep = ~dead
    txn.skipped += int(dead.sum())
    return rids.filter(pa.array(keep)), hashes[keep], existing[keep], owner[keep]


def skip_tombstoned_rows(txn: Txn, table: pa.Table, parents: Sequence[dict], columns: Sequence[str]) -> pa.Table:
    """A derived ingest's rows without those naming a forgotten record (or a composed row removed with
    one) of their parent; `columns[i]` holds the ids of `parents[i]`. `txn.skipped` counts them."""
    from expunge.lineage.tables import id_lists

    if table.num_rows == 0 or not has_table(txn.con, "tombstone_ids"):
        return table
    dead = np.zeros(table.num_rows, bool)
    for pv, col in zip(parents, columns):
        if col not in table.column_names:
            continue  # the ingest refuses it with its own message
        tomb = _pairs(txn.con, "SELECT hi, lo FROM tombstone_ids WHERE space = ?", [_space(pv)])
        if not len(tomb):
            continue
        row_of, flat = id_lists(table, col, f"column {col!r}")
        hit = isin_pairs(id_hashes(txn.store, _space(pv), flat), tomb)
        if hit.any() and pv["row_space"] == "records":
            # A forgotten record's id given to a new record later names the new one, if the parent holds it.
            from expunge.lineage.ingest import lookup_record_ordinals

            idx = np.flatnonzero(hit)
            ords = lookup_record_ordinals(txn, pv["record_dataset_id"], flat.take(pa.array(idx)))
            bm = txn.load_bitmap(pv["bitmap_file"])
            hit[idx[[o >= 0 and int(o) in bm for o in ords.tolist()]]] = False
        dead[row_of.to_numpy(zero_copy_only=False)[hit]] = True
    if not dead.any():
        return table
    txn.skipped += int(dead.sum())
    return table.filter(pa.array(~dead))


# ---------------------------------------------------------------- what a forget would touch


def _segment_hits(txn, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted record ordinals of the subjects, per subject whether the store holds records of it)."""
    found = np.zeros(len(hashes), bool)
    parts = []
    for (f,) in txn.execute("SELECT file FROM subject_segments ORDER BY segment_id").fetchall():
        seg = seglib.Segment(txn.store.data_path(f))
        idx = seg.find(hashes)
        hit = idx >= 0
        if hit.any():
            found |= hit
            parts.append(seg.records_of(hashes[hit]))
    ords = np.unique(np.concatenate(parts)).astype(np.uint32) if parts else np.zeros(0, np.uint32)
    return ords, found


def _affected_versions(txn, erased: BitMap) -> list[dict]:
    rows = txn.execute(
        """SELECT v.version_id, d.name, v.version_no, v.kind, v.row_space, v.record_dataset_id, v.n_rows,
                  v.n_records, v.bitmap_file, v.rows_file, v.rowmap_file, v.dataset_id, v.origin
           FROM dataset_versions v JOIN datasets d USING (dataset_id) ORDER BY d.name, v.version_no""").fetchall()
    keys_ = ("version_id", "dataset", "version_no", "kind", "row_space", "record_dataset_id", "n_rows",
             "n_records", "bitmap_file", "rows_file", "rowmap_file", "dataset_id", "origin")
    out = []
    for r in rows:
        v = dict(zip(keys_, r))
        bm = txn.load_bitmap(v["bitmap_file"])
        if bm.intersection_cardinality(erased):
            v["label"] = f"{v['dataset']}@{v['version_no']}"
            v["bitmap"] = bm
            out.append(v)
    return out


class _Composed:
    """A composed version's rows and (ordinal, row) pairs, split by the erased records."""

    def __init__(self, txn, v: dict, erased: BitMap):
        import pyarrow.parquet as pq

        self.row_ids = pq.read_table(txn.store.data_path(v["rows_file"])).column("row_id").combine_chunks()
        self.rowmap = np.load(txn.store.data_path(v["rowmap_file"]))
        n = len(self.row_ids)
        self.pair_erased = np.isin(self.rowmap[0], _arr(erased))
        rows = self.rowmap[1].astype(np.int64)
        self.touched = np.zeros(n, bool)  # rows built from at least one erased record
        self.touched[rows[self.pair_erased]] = True
        kept_pairs = np.bincount(rows[~self.pair_erased], minlength=n)
        self.only_erased = self.touched & (kept_pairs == 0)  # rows built from erased records alone

    def without(self, drop_rows: np.ndarray) -> tuple[pa.Array, np.ndarray, BitMap]:
        """Row ids, row map and bitmap once the erased pairs and the rows `drop_rows` are gone."""
        keep_rows = ~drop_rows
        renum = np.cumsum(keep_rows) - 1
        rows = self.rowmap[1].astype(np.int64)
        keep_pairs = ~self.pair_erased & keep_rows[rows]
        rowmap = np.empty((2, int(keep_pairs.sum())), np.uint32)
        rowmap[0] = self.rowmap[0][keep_pairs]
        rowmap[1] = renum[rows[keep_pairs]]
        bm = BitMap(rowmap[0])
        return self.row_ids.filter(pa.array(keep_rows)), rowmap, bm


# ---------------------------------------------------------------- cleaned versions and files


def _read_for_cleaning(path: Path) -> pa.Table:
    """The file as it is: Parquet with its types; CSV with every column as text, so that ids and
    values are written back exactly as they were."""
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return pq.read_table(path)
    import pyarrow.csv as pacsv

    delim = "\t" if suffix == ".tsv" else ","
    names = pacsv.read_csv(path, read_options=pacsv.ReadOptions(block_size=1 << 16),
                           parse_options=pacsv.ParseOptions(delimiter=delim)).column_names
    return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=delim),
                          convert_options=pacsv.ConvertOptions(
                              column_types={c: pa.string() for c in names}, strings_can_be_null=True,
                              quoted_strings_can_be_null=False, null_values=[""]))


def _matching_column(table: pa.Table, row_ids: pa.Array) -> pa.Array | None:
    """The column of `table` that holds exactly the version's row ids, one per row (None if none does)."""
    if table.num_rows != len(row_ids):
        return None
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        if pa.types.is_integer(col.type) or pa.types.is_large_string(col.type):
            col = pc.cast(col, pa.string())
        if not pa.types.is_string(col.type) or col.null_count:
            continue
        if pc.all(pc.is_in(col, value_set=row_ids)).as_py() and len(pc.unique(col)) == len(row_ids):
            return col
    return None


def _write_cleaned_file(v: dict, path: Path, row_ids_of, drop_ids: pa.Array, request_id: str,
                        out_dir: Path | None) -> tuple[str | None, str | None, int]:
    """(cleaned file, reason it could not be written, rows dropped) for the data file of version `v`;
    `row_ids_of()` gives the version's row ids (read only when the file is there to match)."""
    if path.suffix.lower() not in (".parquet", ".pq", ".csv", ".tsv", ".txt", ""):
        return None, f"unsupported file type {path.suffix!r} ({path})", 0
    try:
        table = _read_for_cleaning(path)
    except FileNotFoundError:
        return None, f"file not found: {path}", 0
    except (pa.ArrowInvalid, OSError) as exc:
        return None, f"cannot read {path}: {str(exc).splitlines()[0]}", 0
    row_ids = row_ids_of()
    col = _matching_column(table, row_ids)
    if col is not None:
        drop = pc.is_in(col, value_set=drop_ids).to_numpy(zero_copy_only=False)
    elif v["row_space"] == "rows" and table.num_rows == len(row_ids) and \
            row_ids.equals(pa.array([str(i) for i in range(len(row_ids))], pa.string())):
        # A composition ingested without --row-col: its rows are the file's rows, by position.
        drop = np.isin(np.arange(table.num_rows), np.asarray([int(x) for x in drop_ids.to_pylist()]))
    else:
        return None, f"{path} no longer matches {v['label']} (no column holds exactly its {len(row_ids)} row ids)", 0
    cleaned = table.filter(pa.array(~drop))
    dest_dir = out_dir if out_dir is not None else path.parent
    dest = dest_dir / f"{path.stem}.cleaned-{request_id}{path.suffix}"
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            pq.write_table(cleaned, tmp)
        else:
            import pyarrow.csv as pacsv

            pacsv.write_csv(cleaned, tmp, pacsv.WriteOptions(
                delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        return None, f"cannot write {dest}: {exc.strerror or exc}", 0
    return str(dest), None, int(drop.sum())


def _record_ids(txn, ords: np.ndarray) -> pa.Array:
    from expunge.lineage.rows import record_values

    return record_values(txn.store, txn, ords, "record_id")


def _version_row_ids(txn, v: dict, composed: "_Composed | None") -> pa.Array:
    from expunge.lineage.rows import record_values

    if composed is not None:
        return composed.row_ids
    return record_values(txn.store, txn, _arr(v["bitmap"]), "record_id")


def _clean(txn: Txn, versions: list[dict], erased: BitMap, request_id: str, out_dir: Path | None,
           composed: dict[int, "_Composed"], erased_ids: pa.Array) -> tuple[list[dict], list[dict]]:
    """Add a cleaned version for each of `versions` not yet cleaned for this request; write the files.
    `erased_ids[i]` is the record id of the i-th erased ordinal (sorted)."""
    from expunge.lineage.ingest import _insert_version

    txn.con.execute(C.FORGET_DDL)
    done = {r[0] for r in txn.execute(
        "SELECT parent_version_id FROM cleaned_versions WHERE request_id = ?", [request_id]).fetchall()}
    cleaned, not_rewritten = [], []
    for v in versions:
        if v["version_id"] in done:
            continue
        comp = composed.get(v["version_id"])
        if comp is None and v["row_space"] == "rows":
            comp = composed[v["version_id"]] = _Composed(txn, v, erased)
        origin = f"cleaned for {request_id} from {v['label']}"
        if comp is None:
            bm = v["bitmap"] - erased
            info = _insert_version(txn, dataset_id=v["dataset_id"], name=v["dataset"], kind="filter",
                                   row_space="records", record_dataset_id=v["record_dataset_id"], n_rows=len(bm),
                                   bitmap=bm, parents=[v["version_id"]], origin=origin)
            drop_ids = erased_ids.take(pa.array(np.searchsorted(_arr(erased), _arr(v["bitmap"] & erased))))
        else:
            row_ids, rowmap, bm = comp.without(comp.touched)
            rows_file = txn.write_parquet(pa.table({"row_id": row_ids}), ".rows.parquet")
            rowmap_file = txn.write_bytes(".rowmap.npy", _npy_bytes(rowmap))
            info = _insert_version(txn, dataset_id=v["dataset_id"], name=v["dataset"], kind="filter",
                                   row_space="rows", record_dataset_id=None, n_rows=len(row_ids), bitmap=bm,
                                   rows_file=rows_file, rowmap_file=rowmap_file, parents=[v["version_id"]],
                                   origin=origin)
            drop_ids = comp.row_ids.filter(pa.array(comp.touched))
        new_vid = txn.one("SELECT version_id FROM dataset_versions WHERE dataset_id = ? AND version_no = ?",
                          [v["dataset_id"], info.version])
        if comp is not None:
            # A derived ingest naming a row the cleaned version dropped skips it.
            _add_tombstone_ids(txn, f"rows:{new_vid}", drop_ids, request_id)
        src = txn.one("SELECT file FROM cleaned_versions WHERE version_id = ?", [v["version_id"]]) or v["origin"]
        file = reason = None
        if src is None:
            reason = "no data file recorded (ingested from memory, or with no origin)"
        else:
            file, reason, _ = _write_cleaned_file(v, Path(src), lambda: _version_row_ids(txn, v, comp), drop_ids,
                                                  request_id, out_dir)
        txn.con.execute("INSERT INTO cleaned_versions VALUES (?, ?, ?, ?, ?)",
                        [new_vid, v["version_id"], request_id, file, _now()])
        cleaned.append({"from": v["label"], "version": info.id, "rows": info.rows,
                        "rows_dropped": v["n_rows"] - info.rows, "file": file})
        if file is None:
            not_rewritten.append({"version": v["label"], "file": src, "reason": reason})
    return cleaned, not_rewritten


def _add_tombstone_ids(txn: Txn, space: str, ids: pa.Array, request_id: str) -> None:
    if len(ids) == 0:
        return
    h = id_hashes(txn.store, space, ids)
    txn.con.register("_tid", pa.table({"space": pa.array([space] * len(h), pa.string()),
                                       "hi": pa.array(h[:, 0]), "lo": pa.array(h[:, 1])}))
    try:
        txn.con.execute("INSERT INTO tombstone_ids SELECT space, hi, lo, ? FROM _tid", [request_id])
    finally:
        txn.con.unregister("_tid")


# ---------------------------------------------------------------- rewriting what names the records


def _rewrite_versions(txn: Txn, versions: list[dict], erased: BitMap, composed: dict[int, "_Composed"],
                      request_id: str) -> tuple[dict[str, int], dict[int, dict], int]:
    """Recorded versions without the erased records; rows built only from them go (see the module doc)."""
    rows_removed: dict[str, int] = {}
    changed: dict[int, dict] = {}
    files = 0
    for v in versions:
        old = [v["bitmap_file"]]
        if v["row_space"] == "records":
            bm = v["bitmap"] - erased
            n_rows = len(bm)
            upd = {"bitmap_file": txn.save_bitmap(bm)}
            files += 1
        else:
            comp = composed.get(v["version_id"]) or _Composed(txn, v, erased)
            row_ids, rowmap, bm = comp.without(comp.only_erased)
            n_rows = len(row_ids)
            upd = {"bitmap_file": txn.save_bitmap(bm),
                   "rowmap_file": txn.write_bytes(".rowmap.npy", _npy_bytes(rowmap))}
            old.append(v["rowmap_file"])
            files += 2
            if comp.only_erased.any():
                upd["rows_file"] = txn.write_parquet(pa.table({"row_id": row_ids}), ".rows.parquet")
                old.append(v["rows_file"])
                files += 1
                _add_tombstone_ids(txn, f"rows:{v['version_id']}", comp.row_ids.filter(pa.array(comp.only_erased)),
                                   request_id)
        sets = ", ".join(f"{k} = ?" for k in upd)
        txn.con.execute(f"UPDATE dataset_versions SET {sets}, n_rows = ?, n_records = ? WHERE version_id = ?",
                        [*upd.values(), n_rows, len(bm), v["version_id"]])
        txn.retire(old)
        rows_removed[v["label"]] = int(v["n_rows"] - n_rows)
        changed[v["version_id"]] = {"n_rows": n_rows, "n_records": len(bm), "v": v}
    return rows_removed, changed, files


def _rewrite_run_inputs(txn: Txn, changed: dict[int, dict], erased: BitMap,
                        composed: dict[int, "_Composed"]) -> int:
    """Run inputs over rewritten versions: row subsets lose the erased records, counts follow.

    A subset of a composed version keeps only records, not rows: its row count drops by the rows
    built only from erased records that all lie in the subset (the rows the version lost)."""
    files = 0
    rows = txn.execute("SELECT run_id, position, version_id, subset_file, n_rows FROM run_inputs").fetchall()
    for run_id, pos, vid, subset, n_rows in rows:
        ch = changed.get(vid)
        if ch is None:
            continue
        where = "WHERE run_id = ? AND position = ?"
        if subset is None:
            txn.con.execute(f"UPDATE run_inputs SET n_rows = ?, n_records = ? {where}",
                            [ch["n_rows"], ch["n_records"], run_id, pos])
            continue
        sub = txn.load_bitmap(subset)
        gone = sub & erased
        if not gone:
            continue
        new = sub - erased
        comp = composed.get(vid)
        if comp is None:
            lost_rows = len(gone)
        else:
            rows_ = comp.rowmap[1].astype(np.int64)
            in_sub = np.isin(comp.rowmap[0], _arr(sub))
            outside = np.zeros(len(comp.row_ids), bool)
            outside[rows_[~in_sub]] = True
            lost_rows = int((comp.only_erased & ~outside).sum())
        name = txn.save_bitmap(new)
        files += 1
        txn.con.execute(f"UPDATE run_inputs SET subset_file = ?, n_rows = ?, n_records = ? {where}",
                        [name, max(int(n_rows) - lost_rows, 0), len(new), run_id, pos])
        txn.retire([subset])
    return files


def _rewrite_facts(txn: Txn, erased: BitMap) -> int:
    import json

    from expunge.lineage.facts import without_records

    files = 0
    for run_id, f, index in txn.execute(
            "SELECT run_id, facts_file, facts_index FROM runs WHERE facts_file IS NOT NULL").fetchall():
        out = without_records(txn.store.data_path(f), json.loads(index), erased)
        if out is None:
            continue
        data, new_index = out
        name = txn.write_bytes(".facts", data)
        files += 1
        txn.con.execute("UPDATE runs SET facts_file = ?, facts_index = ? WHERE run_id = ?",
                        [name, json.dumps(new_index), run_id])
        txn.retire([f])
    return files


def _erase_record_ids(txn: Txn, ords: np.ndarray, request_id: str):
    """Write the record-id tables with the id and owner of each erased slot nulled, and keep keyed
    hashes of the ids as tombstones. Returns the erased ids (aligned with `ords`) and a function
    that switches the catalog to the new tables: until it is called, the old ones are read."""
    import pyarrow.parquet as pq

    parts, switches = [], []
    for sid, dataset_id, start, n, f in txn.execute(
            "SELECT segment_id, dataset_id, ord_start, n, ids_file FROM record_segments ORDER BY ord_start").fetchall():
        sel = ords[(ords >= start) & (ords < start + n)]
        if not sel.size:
            continue
        table = pq.read_table(txn.store.data_path(f))
        pos = sel.astype(np.int64) - int(start)
        ids = table.column("record_id").combine_chunks()
        gone = ids.take(pa.array(pos))
        parts.append(gone)
        _add_tombstone_ids(txn, f"records:{dataset_id}", gone.drop_null(), request_id)
        mask = np.zeros(table.num_rows, bool)
        mask[pos] = True
        m = pa.array(mask)
        table = pa.table({
            "record_id": pc.if_else(m, pa.scalar(None, pa.string()), ids),
            "owner": pc.if_else(m, pa.scalar(None, pa.uint16()), table.column("owner").combine_chunks()),
        })
        switches.append((sid, f, txn.write_parquet(table, ".ids.parquet")))

    def switch() -> int:
        for sid, old, name in switches:
            txn.con.execute("UPDATE record_segments SET ids_file = ? WHERE segment_id = ?", [name, sid])
        txn.retire([old for _, old, _ in switches])
        return len(switches)

    erased_ids = pa.concat_arrays(parts) if parts else pa.array([], pa.string())
    return erased_ids, switch


def _drop_from_segments(txn: Txn, hashes: np.ndarray) -> int:
    files = 0
    for sid, f in txn.execute("SELECT segment_id, file FROM subject_segments ORDER BY segment_id").fetchall():
        seg = seglib.Segment(txn.store.data_path(f))
        idx = seg.find(hashes)
        idx = idx[idx >= 0]
        if not idx.size:
            continue
        hi, lo, off, ords = (np.asarray(a) for a in seg.arrays())
        keep = np.ones(len(hi), bool)
        keep[idx] = False
        counts = np.diff(off.astype(np.int64))
        new_off = np.zeros(int(keep.sum()) + 1, np.uint64)
        np.cumsum(counts[keep], out=new_off[1:])
        txn.retire([f])
        if not keep.any():
            txn.con.execute("DELETE FROM subject_segments WHERE segment_id = ?", [sid])
            continue
        name, fh = txn.create(".seg")
        with fh:
            ns, nr = seglib.write(fh, hi[keep], lo[keep], new_off, ords[np.repeat(keep, counts)])
        files += 1
        txn.con.execute("UPDATE subject_segments SET file = ?, n_subjects = ?, n_records = ? WHERE segment_id = ?",
                        [name, ns, nr, sid])
    return files


# ---------------------------------------------------------------- the API


def _pending(con, store: Store, hashes: np.ndarray) -> tuple[np.ndarray, int, int]:
    """(already tombstoned per subject, records held, request_subjects rows) — what a forget would change."""
    dead = isin_pairs(hashes, _pairs(con, "SELECT hi, lo FROM tombstones")) if has_table(con, "tombstones") \
        else np.zeros(len(hashes), bool)
    ords, _ = _segment_hits(_ReadTxn(store, con), hashes)
    req = 0
    if has_table(con, "request_subjects") and len(hashes):
        req = int(isin_pairs(_pairs(con, "SELECT hi, lo FROM request_subjects"), hashes).sum())
    return dead, int(ords.size), req


class _ReadTxn:
    """Enough of a Txn over a read-only connection for the lookups above."""

    def __init__(self, store: Store, con):
        self.store, self.con = store, con

    def execute(self, sql: str, params: Sequence = ()):
        return self.con.execute(sql, params)


def _checked(hashes: Any, request_id: str, cleaned_dir) -> tuple[np.ndarray, str, Path | None]:
    """The arguments of forget_subjects and clean_versions, checked."""
    out_dir = Path(cleaned_dir) if cleaned_dir is not None else None
    if out_dir is not None and not out_dir.is_dir():
        raise BadInput(f"the directory for cleaned files does not exist: {out_dir}")
    return check_hashes(hashes), check_request_id(request_id), out_dir


def forget_subjects(store: Store, hashes: Any, request_id: str, *, purge: bool = False,
                    cleaned_dir: str | os.PathLike | None = None) -> dict:
    """Remove the subjects' records from every table and file of the store, in one write; tombstone them.

    Returns counts: records removed, rows removed per recorded dataset version, files rewritten,
    tombstones added, the cleaned versions made (and the versions whose file could not be
    rewritten, with the reason). Forgetting subjects already forgotten changes nothing and says
    so (`changed: false`).
    """
    hashes, request_id, out_dir = _checked(hashes, request_id, cleaned_dir)
    with store.read() as con:
        dead, n_records, n_req = _pending(con, store, hashes)
    result: dict[str, Any] = {
        "request_id": request_id, "subjects": int(len(hashes)), "already_forgotten": int(dead.sum()),
        "subjects_found": 0, "records_removed": 0, "rows_removed": {}, "files_rewritten": 0,
        "tombstones_added": 0, "request_subjects_removed": 0, "cleaned_versions": [], "not_rewritten": [],
        "changed": False, "purged": False,
    }
    if dead.all() and n_records == 0 and n_req == 0:
        return result
    with store.write(compact=True, purge=purge) as txn:
        txn.con.execute(C.FORGET_DDL)
        dead = isin_pairs(hashes, _pairs(txn.con, "SELECT hi, lo FROM tombstones"))
        ords, found = _segment_hits(txn, hashes)
        erased = BitMap(ords)
        versions = _affected_versions(txn, erased) if len(erased) else []
        composed: dict[int, _Composed] = {}
        erased_ids, switch_ids = _erase_record_ids(txn, ords, request_id)
        cleaned, not_rewritten = _clean(txn, versions, erased, request_id, out_dir, composed, erased_ids)
        fault("forget:after-clean")
        rows_removed, changed, files = _rewrite_versions(txn, versions, erased, composed, request_id)
        files += _rewrite_run_inputs(txn, changed, erased, composed)
        files += _rewrite_facts(txn, erased)
        files += switch_ids()
        files += _drop_from_segments(txn, hashes)
        new = hashes[~dead]
        at = _now()
        if len(new):
            txn.con.register("_tomb", pa.table({"hi": pa.array(new[:, 0]), "lo": pa.array(new[:, 1])}))
            try:
                txn.con.execute("INSERT INTO tombstones SELECT hi, lo, ?, ? FROM _tomb", [request_id, at])
            finally:
                txn.con.unregister("_tomb")
        req_removed = 0
        if has_table(txn.con, "request_subjects"):
            # The tombstone keeps (hash, request id): the request's own copy of the hash goes.
            rs = _pairs(txn.con, "SELECT hi, lo FROM request_subjects")
            hit = isin_pairs(rs, hashes)
            req_removed = int(hit.sum())
            if req_removed:
                txn.con.register("_gone", pa.table({"hi": pa.array(hashes[:, 0]), "lo": pa.array(hashes[:, 1])}))
                try:
                    txn.con.execute("DELETE FROM request_subjects r USING _gone g WHERE r.hi = g.hi AND r.lo = g.lo")
                finally:
                    txn.con.unregister("_gone")
        audit.log_event(txn, "subjects_forgotten", requests=[request_id], request=request_id, subjects=len(hashes),
                        records_removed=len(erased), tombstones_added=len(new), files_rewritten=files)
        fault("forget:before-switch")
    fault("forget:after-switch")
    store._engine = None
    result.update({
        "subjects_found": int(found.sum()), "records_removed": int(len(erased)), "rows_removed": rows_removed,
        "files_rewritten": files + sum(1 for c in cleaned if c["file"]), "tombstones_added": int(len(new)),
        "request_subjects_removed": req_removed, "cleaned_versions": cleaned, "not_rewritten": not_rewritten,
        "changed": True, "purged": purge,
    })
    return result


def clean_versions(store: Store, hashes: Any, request_id: str, *,
                   cleaned_dir: str | os.PathLike | None = None) -> dict:
    """Add a cleaned version (and a cleaned copy of its file, where known) for every version that holds
    the subjects' records, without forgetting anything yet; versions already cleaned for this
    request are left alone. For executors that retrain on the cleaned data before the request completes."""
    hashes, request_id, out_dir = _checked(hashes, request_id, cleaned_dir)
    with store.read() as con:
        ords, _ = _segment_hits(_ReadTxn(store, con), hashes)
        pending = bool(ords.size)
        if pending and has_table(con, "cleaned_versions"):
            erased = BitMap(ords)
            vids = [v["version_id"] for v in _affected_versions(_ViewTxn(store, con), erased)]
            done = {r[0] for r in con.execute("SELECT parent_version_id FROM cleaned_versions WHERE request_id = ?",
                                              [request_id]).fetchall()}
            pending = bool(set(vids) - done)
    if not pending:
        return {"request_id": request_id, "cleaned_versions": [], "not_rewritten": [], "changed": False}
    with store.write() as txn:
        txn.con.execute(C.FORGET_DDL)
        ords, _ = _segment_hits(txn, hashes)
        erased = BitMap(ords)
        versions = _affected_versions(txn, erased)
        cleaned, not_rewritten = _clean(txn, versions, erased, request_id, out_dir, {}, _record_ids(txn, ords))
    return {"request_id": request_id, "cleaned_versions": cleaned, "not_rewritten": not_rewritten,
            "changed": bool(cleaned)}


class _ViewTxn(_ReadTxn):
    def load_bitmap(self, name: str):
        return BitMap.deserialize(self.store.data_path(name).read_bytes())


def tombstones(store: Store, request_ids: Sequence[str] | None = None) -> list[dict]:
    """The tombstones (keyed hash as hex, request id, when), oldest first; of some requests only if given."""
    with store.read() as con:
        if not has_table(con, "tombstones"):
            return []
        sql = 'SELECT hi, lo, request_id, "at" FROM tombstones'
        params: list = []
        if request_ids is not None:
            sql += " WHERE request_id IN (SELECT unnest(?::VARCHAR[]))"
            params = [list(request_ids)]
        rows = con.execute(sql + ' ORDER BY "at", request_id, hi, lo', params).fetchall()
    return [{"hash": f"{hi:016x}{lo:016x}", "request_id": r, "at": at.isoformat() + "Z"} for hi, lo, r, at in rows]
