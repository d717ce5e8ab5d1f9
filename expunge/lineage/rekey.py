"""Key rotation and migration: re-hash the subject index under a new key, move a key out of the store.

Rotation cannot hash raw ids again (the store never had them), so it hashes the hashes: every
stored subject hash h becomes BLAKE2b(h, key=new layer), and the key file gains that layer
(see `keys`). Every place that holds a value derived from the key is rewritten in one store
write: the subject segments, the 16-bit owner fingerprints in the record-id tables, the
request_subjects table, the tombstones (subjects and forgotten record ids, so that later ingests
still skip them) and the check value; the in-process digest caches are dropped.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np

from expunge import audit
from expunge.errors import BadInput, StoreCorrupt
from expunge.lineage import catalog as C
from expunge.lineage import keys
from expunge.lineage import segments as seglib
from expunge.lineage.fsutil import atomic_write_bytes, fsync_dir
from expunge.lineage.store import Store, Txn, fault, has_table


def _set_key_meta(txn: Txn, layers: tuple[bytes, ...]) -> None:
    salt = secrets.token_bytes(16)
    txn.set_meta("key_salt", salt.hex())
    txn.set_meta("key_layers", str(len(layers)))
    txn.set_meta("key_check", keys.check_value(layers, salt))
    # The old unsalted fingerprint, and a passphrase's scrypt parameters: the key is a file now.
    txn.con.execute("DELETE FROM meta WHERE key IN ('key_fingerprint', 'kdf')")


def _rehash_index(txn: Txn, layer: bytes) -> dict:
    """Rewrite every key-derived value of the catalog copy `txn` under one more key layer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = txn.store
    n_ord = int(txn.meta("next_ordinal"))
    owner = np.zeros(n_ord, np.uint16)
    seen = np.zeros(n_ord, bool)
    subjects = 0
    for sid, f in txn.execute("SELECT segment_id, file FROM subject_segments ORDER BY segment_id").fetchall():
        hi, lo, off, ords = seglib.Segment(store.data_path(f)).arrays()
        new = keys.rehash_pairs(np.column_stack([hi, lo]), layer)
        part = seglib.merge([(new[:, 0], new[:, 1], np.asarray(off), np.asarray(ords))])  # re-sorted by new hash
        name, fh = txn.create(".seg")
        with fh:
            seglib.write(fh, *part)
        txn.con.execute("UPDATE subject_segments SET file = ? WHERE segment_id = ?", [name, sid])
        txn.retire([f])
        o = np.asarray(ords, np.int64)
        owner[o] = keys.owner_fingerprint(np.repeat(new, np.diff(np.asarray(off, np.int64)), axis=0))
        seen[o] = True
        subjects += len(hi)
    records = 0
    for sid, start, n, f in txn.execute(
            "SELECT segment_id, ord_start, n, ids_file FROM record_segments ORDER BY ord_start").fetchall():
        table = pq.read_table(store.data_path(f))
        sl = slice(int(start), int(start) + int(n))
        erased = table.column("record_id").is_null().to_numpy(zero_copy_only=False)  # forgotten records' slots
        if not (seen[sl] | erased).all():
            # Every record enters the subject index when it is first ingested.
            raise StoreCorrupt(f"record-id table {f} holds records missing from the subject index; key not rotated")
        i = table.schema.get_field_index("owner")
        table = table.set_column(i, table.schema.field(i), pa.array(owner[sl], pa.uint16(), mask=erased))
        name = txn.write_parquet(table, ".ids.parquet")
        txn.con.execute("UPDATE record_segments SET ids_file = ? WHERE segment_id = ?", [name, sid])
        txn.retire([f])
        records += int(n)
    for table, cols in (("tombstones", "request_id, \"at\""), ("tombstone_ids", "space, request_id")):
        # Tombstones keep working under the new key: a later ingest hashes with it.
        if has_table(txn.con, table):
            _rehash_table(txn, table, cols, layer)
    requests = 0
    if has_table(txn.con, "request_subjects"):
        rows = txn.execute("SELECT request_id, hi, lo FROM request_subjects").fetchall()
        if rows:
            new = keys.rehash_pairs(np.array([(r[1], r[2]) for r in rows], np.uint64), layer)
            txn.con.execute("DELETE FROM request_subjects")
            txn.con.register("_rs", pa.table({"request_id": [r[0] for r in rows],
                                              "hi": pa.array(new[:, 0]), "lo": pa.array(new[:, 1])}))
            try:
                txn.con.execute("INSERT INTO request_subjects SELECT request_id, hi, lo FROM _rs")
            finally:
                txn.con.unregister("_rs")
            requests = len({r[0] for r in rows})
    return {"subjects": subjects, "records": records, "requests": requests}


def _rehash_table(txn: Txn, table: str, cols: str, layer: bytes) -> None:
    """Replace the (hi, lo) keyed hashes of every row of `table` by their re-hash under `layer`."""
    import pyarrow as pa

    t = txn.con.sql(f"SELECT hi, lo, {cols} FROM {table}").to_arrow_table()
    if not t.num_rows:
        return
    pairs = np.column_stack([t.column("hi").to_numpy(), t.column("lo").to_numpy()]).astype(np.uint64)
    new = keys.rehash_pairs(pairs, layer)
    t = t.set_column(0, "hi", pa.array(new[:, 0])).set_column(1, "lo", pa.array(new[:, 1]))
    txn.con.execute(f"DELETE FROM {table}")
    txn.con.register("_rt", t)
    try:
        txn.con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _rt")
    finally:
        txn.con.unregister("_rt")


def _adopt(store: Store, layers: tuple[bytes, ...], path: Path) -> None:
    store.key = keys.Key(layers, str(path), path)
    store.key_layers = layers
    store.hasher = keys.SubjectHasher(layers)  # drops the digest caches of the old key
    store._engine = None


def rotate(store: Store) -> dict:
    """Re-hash every subject hash of the store under a new key layer; atomic, old files purged."""
    key = store.key
    if key is None or key.path is None:
        raise BadInput("key rotate needs the store's key in a key file, and this store's comes from "
                       "$EXPUNGE_SECRET; run `expunge key migrate` first to move it to a key file")
    if key.inside_store:
        raise BadInput(f"the key sits inside the store ({key.path}); run `expunge key migrate --rotate` instead")
    old = store.key_layers
    new_layers = old + (keys.generate_secret(),)
    # Crash safety, in order: (1) the new catalog copy and data files are written; (2) the key file
    # is atomically replaced by old layers + the new one; (3) CURRENT switches to the new catalog.
    # A crash before (2) leaves the old key and the old generation. A crash between (2) and (3)
    # leaves the new key file with the old generation: the store uses the first `key_layers`
    # layers of its key file, which are exactly the old key, so it opens (and a later rotation
    # replaces the unused layer). After (3), the new key and the new generation go together.
    # At no point is the only copy of a needed layer gone.
    with store.write(purge=True) as txn:
        counts = _rehash_index(txn, new_layers[-1])
        _set_key_meta(txn, new_layers)
        keys.write_key_file(key.path, new_layers, replace=True)
        fault("rotate:after-key")
        # SISA trainers shard rows by the owner fingerprint, which the rotation changes: a later
        # shard retrain of these runs would deal rows into other shards than at training time.
        sharded = int(txn.one("SELECT count(*) FROM runs WHERE n_shards > 1"))
        audit.log_event(txn, "key_rotated", key_layers=len(new_layers), subjects=counts["subjects"],
                        records=counts["records"], requests_rehashed=counts["requests"])
    _adopt(store, new_layers, key.path)
    return {"store": str(store.root), "key_file": str(key.path), "key_layers": len(new_layers), **counts,
            "sharded_runs": sharded}


def _shred(path: Path) -> None:
    """Overwrite a key file with random bytes before unlinking it (a best effort: copy-on-write
    filesystems, SSD wear levelling and snapshots may keep the old blocks)."""
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        os.pwrite(fd, secrets.token_bytes(max(size, 1)), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.unlink(path)
    fsync_dir(path.parent)


def _tighten(root: Path) -> None:
    """Make an old store private: directories 0700, files 0600 (as `init` makes them now)."""
    import stat

    for dirpath, dirs, files in os.walk(root):
        os.chmod(dirpath, 0o700)
        for f in files:
            p = os.path.join(dirpath, f)
            if stat.S_ISREG(os.lstat(p).st_mode):  # never a symlink's target
                os.chmod(p, 0o600)


def migrate(store: Store, key_file: str | os.PathLike | None = None, rotate_too: bool = False) -> dict:
    """Move the store's key out of the store (or out of $EXPUNGE_SECRET) into a key file.

    Order: the new key file is written and synced; the catalog gets the store id and a salted
    check value; the marker learns the store id (and `key_file`); only then is the old in-store
    key shredded. A crash at any step leaves at least one key file that opens the store.
    """
    key = store.key
    marker = keys.read_marker(store.root)
    with store.read() as con:
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
    store_id = marker.get("store_id") or meta.get("store_id") or os.urandom(16).hex()
    dest = Path(os.path.abspath(key_file)) if key_file is not None else keys.default_key_path(store_id)
    if keys.is_inside(dest, store.root):
        raise BadInput(f"the key file {dest} would sit inside the store; choose a path outside {store.root}")
    layers = store.key_layers
    if key is not None and key.path is not None and not key.inside_store and \
            os.path.abspath(key.path) == os.path.abspath(dest) and "key_check" in meta:
        moved = False  # already where it belongs
    else:
        moved = True
        if dest.exists():
            if keys.read_key_file(dest)[:len(layers)] != layers:
                raise BadInput(f"{dest} already holds another key; pass --key-file with a new path")
        else:
            keys.write_key_file(dest, layers)
        with store.write() as txn:
            txn.set_meta("store_id", store_id)
            _set_key_meta(txn, layers)
        marker.update({"format": marker.get("format", C.FORMAT), "tool": "expunge", "store_id": store_id})
        if key_file is not None:
            marker["key_file"] = str(dest)
        else:
            marker.pop("key_file", None)
        import json

        atomic_write_bytes(store.root / C.MARKER, json.dumps(marker).encode())
    _tighten(store.root)
    removed = None
    if key is not None and key.inside_store and key.path is not None and key.path.exists():
        _shred(key.path)
        removed = str(key.path)
    _adopt(store, layers, dest)
    out = {"store": str(store.root), "key_file": str(dest), "moved": moved, "removed_from_store": removed,
           "from_env": key is not None and key.path is None, "rotated": False}
    if rotate_too:
        out.update(rotated=True, rotation=rotate(store))
    return out
