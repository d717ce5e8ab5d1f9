"""The lineage store: one directory, a DuckDB catalog and immutable record-level files.

>>> store = Store.init(tmp_path)                                   # doctest: +SKIP
>>> v = store.ingest_source("customers.parquet", name="customers",
...                         subject_col="customer_id", record_col="row_id")   # doctest: +SKIP
>>> store.impact(["alice"]).records                                # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import re
import secrets
import shutil
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import duckdb
import numpy as np

from expunge.errors import (
    BadInput, ExpungeError, StoreBusy, StoreCorrupt, StoreNotFound, StoreUnwritable, UnknownReference,
)
from expunge.faults import fault_point as fault
from expunge.lineage import catalog as C
from expunge.lineage import keys
from expunge.lineage.fsutil import (
    WriterLock, atomic_write_bytes, check_file_name, create_private, fsync_dir, make_private_dir, seal_file,
)

DEFAULT_STORE = ".expunge"
ROW_GROUP = 32_768  # rows per Parquet row group of the store's own tables
MERGE_FACTOR = 2  # merge the newest subject segments while the older one is < MERGE_FACTOR × newer


# One in-memory DuckDB instance per process; each read or write ATTACHes a catalog generation
# to it through its own cursor. ATTACH costs ~0.6 ms where opening a database costs ~10 ms, and a
# command opens the catalog several times.
_hub: duckdb.DuckDBPyConnection | None = None
_hub_lock = threading.Lock()
_aliases = itertools.count(1)


def leak_in_child(obj) -> None:
    """Keep an object a forked child inherited alive for good: destroying a DuckDB instance whose
    threads did not survive the fork crashes the child at exit."""
    import ctypes

    ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


def _after_fork_in_child() -> None:
    global _hub, _hub_lock
    if _hub is not None:
        leak_in_child(_hub)
    _hub = None
    _hub_lock = threading.Lock()  # it may have been held by another thread of the parent
    _shared.clear()  # attached to the parent's instance


os.register_at_fork(after_in_child=_after_fork_in_child)


def _hub_connection() -> duckdb.DuckDBPyConnection:
    global _hub
    with _hub_lock:
        if _hub is None:
            con = duckdb.connect()
            con.execute("SET temp_directory = ''")
            _hub = con
        return _hub


@contextmanager
def attached(path: Path, *, read_only: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
    """A cursor whose default database is the catalog file at `path`; detached on exit, whatever happened."""
    cur = _hub_connection().cursor()
    alias = f"cat{next(_aliases)}"
    try:
        cur.execute(f"ATTACH {sql_literal(str(path))} AS {alias}" + (" (READ_ONLY)" if read_only else ""))
    except BaseException:
        cur.close()
        raise
    try:
        cur.execute(f"USE {alias}")
        yield cur
        if not read_only:
            cur.execute(f"CHECKPOINT {alias}")
    finally:
        # A failed CHECKPOINT invalidates the database and this cursor's statements with it: detach
        # from a fresh cursor, or the file stays attached and every later write here would fail.
        cur.close()
        _detach(alias)


class _Shared:
    """A catalog generation kept attached read-only for the reads that follow (`shared_read`)."""

    def __init__(self, alias: str, ident: tuple):
        self.alias, self.ident, self.users, self.retired = alias, ident, 0, False


# Per catalog file: its read-only attachment, reused while the file is the same one (same inode, size and
# modification time). Generation files are never written after they go live, so a reader that finds the
# same file finds the same bytes; a file replaced under the same name (a store restored from a copy) is
# attached afresh. When a newer generation of the same store is attached, the older ones are detached as
# soon as no reader uses them (a purge's deleted generations are then really gone).
_shared: dict[str, _Shared] = {}


def _file_ident(path: Path) -> tuple:
    st = os.stat(path)
    return st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns


@contextmanager
def shared_read(path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """Like `attached(path)` (read-only), but the attachment is kept for the next read of the same file:
    ATTACH and DETACH cost ~1.5 ms a read, and a cold attachment's first queries read its blocks again."""
    key = str(path)
    ident = _file_ident(path)
    drop: list[str] = []
    hub = _hub_connection()
    with _hub_lock:
        ent = _shared.get(key)
        if ent is not None and ent.ident != ident:
            _retire(key, ent, drop)
            ent = None
        if ent is None:
            for other, old in list(_shared.items()):  # older generations of the same store
                if Path(other).parent == path.parent:
                    _retire(other, old, drop)
            alias = f"cat{next(_aliases)}"
            cur = hub.cursor()
            try:
                cur.execute(f"ATTACH {sql_literal(key)} AS {alias} (READ_ONLY)")
            finally:
                cur.close()
            ent = _shared[key] = _Shared(alias, ident)
        ent.users += 1
    if drop:
        _detach(*drop)
    cur = hub.cursor()
    try:
        cur.execute(f"USE {ent.alias}")
        yield cur
    finally:
        cur.close()
        with _hub_lock:
            ent.users -= 1
            last = ent.retired and ent.users == 0
        if last:
            _detach(ent.alias)


def _retire(key: str, ent: _Shared, drop: list[str]) -> None:
    """Under the hub lock: forget a shared attachment; detached now if unused, else by its last reader."""
    del _shared[key]
    ent.retired = True
    if ent.users == 0:
        drop.append(ent.alias)


def release_shared(root: Path) -> None:
    """Detach the shared attachments of a store's catalogs (those in use: when their readers finish)."""
    drop: list[str] = []
    with _hub_lock:
        for key, ent in list(_shared.items()):
            if Path(key).parent == Path(root):
                _retire(key, ent, drop)
    if drop:
        _detach(*drop)


def _detach(*aliases: str) -> None:
    """Detach catalogs from a fresh cursor of the shared instance (the one that attached them may be dead)."""
    fresh = _hub_connection().cursor()
    try:
        for alias in aliases:
            fresh.execute(f"DETACH DATABASE IF EXISTS {alias}")
    finally:
        fresh.close()


def sql_literal(text: str) -> str:
    """`text` as a DuckDB string literal, for the few places that cannot take a parameter (ATTACH, a
    table function in a query built from parts): a store path may hold a quote."""
    if "\0" in text:
        raise BadInput(f"a path with a NUL character cannot be used: {text!r}")
    if "\\" in text:
        raise BadInput(f"a path with a backslash cannot be used (DuckDB reads it as a path separator): {text!r}")
    return "'" + text.replace("'", "''") + "'"


_GENERATION = re.compile(r"catalog-[0-9]{6,}\.duckdb")


def _generation(root: Path) -> str:
    """The live catalog file's name, from CURRENT."""
    gen = (root / C.CURRENT).read_text().strip()
    if not _GENERATION.fullmatch(gen):
        raise StoreCorrupt(f"{root / C.CURRENT} names {gen[:80]!r}, not a catalog file of the store")
    return gen


def _number(gen: str) -> int:
    return int(gen.split("-")[1].split(".")[0])


# The crash leftovers of a writer that died before its switch (see Store._recover).
_LEFTOVER = re.compile(r"catalog-([0-9]{6,})\.duckdb(\.tmp.*|\.wal)?|\.CURRENT\..*\.tmp")


def _rebuild_catalog(path: Path) -> None:
    """Rewrite a catalog file into a fresh one holding only its live rows (no stale free blocks)."""
    fresh = path.with_name(path.name + ".fresh")
    fresh.unlink(missing_ok=True)
    cur = _hub_connection().cursor()
    src, dst = f"cat{next(_aliases)}", f"cat{next(_aliases)}"
    try:
        cur.execute(f"ATTACH {sql_literal(str(path))} AS {src} (READ_ONLY)")
        cur.execute(f"ATTACH {sql_literal(str(fresh))} AS {dst} (BLOCK_SIZE 16384)")
        cur.execute(f"COPY FROM DATABASE {src} TO {dst}")
        cur.execute(f"CHECKPOINT {dst}")
    finally:
        cur.close()
        _detach(src, dst)
    os.chmod(fresh, 0o600)
    os.replace(fresh, path)


_NO_ROOM = {errno.ENOSPC: "no space left on the device", errno.EFBIG: "a file grew past the size limit",
            errno.EDQUOT: "the disk quota is used up"}
_READ_ONLY = {errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
              errno.EPERM: "operation not permitted"}


def unwritable(exc: BaseException, root: Path, committed: bool = False) -> StoreUnwritable | None:
    """A write that failed for want of room or of permission to write, as one line saying so (None: another
    failure). Permission errors count only on the store's own files (an unreadable input is the input's)."""
    code, where = getattr(exc, "errno", None), getattr(exc, "filename", None)
    text = str(exc)
    if code not in _NO_ROOM and code not in _READ_ONLY:  # DuckDB and Arrow say it in words
        code = next((c for c in (*_NO_ROOM, *_READ_ONLY) if os.strerror(c) in text), None)
        if code is None:
            return None
    if code in _READ_ONLY and (not keys.is_inside(Path(os.fsdecode(where)), root) if where is not None
                               else os.fspath(root) not in text):
        return None
    why = _NO_ROOM.get(code) or _READ_ONLY[code]
    at = f" ({os.fsdecode(where)})" if where else ""
    if committed:
        return StoreUnwritable(f"the write to the store at {root} was committed, but cleaning up after it failed: "
                               f"{why}{at}; the next write finishes it")
    return StoreUnwritable(f"cannot write to the store at {root}: {why}{at}; nothing was changed")


def _clear_interrupted_init(root: Path) -> bool:
    """If `root` holds only what an `init` killed before writing the marker leaves (a catalog, CURRENT, an
    empty data/), remove it, and the key file that init made for it at its default place; return whether
    it did. Anything else in the directory (a user's file) and it is left alone."""
    entries = list(root.iterdir())
    for p in entries:
        if p.name == C.DATA and p.is_dir() and not p.is_symlink() and not any(p.iterdir()):
            continue
        if p.is_file() and not p.is_symlink() and (p.name in (C.CURRENT, C.LOCK) or _LEFTOVER.fullmatch(p.name)):
            continue
        return False
    for cat in sorted(root.glob("catalog-*.duckdb")):
        with contextlib.suppress(duckdb.Error), attached(cat) as con:
            rows = con.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchall()
            if rows and re.fullmatch(r"[0-9a-f]{32}", rows[0][0]):
                keys.default_key_path(rows[0][0]).unlink(missing_ok=True)
    for p in entries:
        if p.is_dir():
            p.rmdir()
        else:
            p.unlink()
    return True


def has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether the catalog a cursor from `attached` reads has the table (other attached catalogs do not count)."""
    return bool(con.execute("SELECT count(*) FROM information_schema.tables "
                            "WHERE table_catalog = current_database() AND table_name = ?", [name]).fetchall()[0][0])


def resolve_root(store: str | os.PathLike | None) -> Path:
    if store is None:
        store = os.environ.get("EXPUNGE_STORE") or DEFAULT_STORE
    if "\\" in os.fspath(store):  # before anything is made: DuckDB would open another path than the one given
        raise BadInput(f"the store path {os.fspath(store)!r} holds a backslash, which DuckDB reads as a path "
                       "separator; choose a path without one")
    return Path(store)


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


@dataclass(frozen=True)
class VersionInfo:
    """What an ingest created."""

    id: str
    dataset: str
    version: int
    kind: str
    rows: int
    records: int
    new_records: int = 0
    skipped: int = 0  # rows of the input left out because a tombstone names their subject (or record)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "dataset": self.dataset,
            "version": self.version,
            "kind": self.kind,
            "rows": self.rows,
            "records": self.records,
            "new_records": self.new_records,
            "skipped": self.skipped,
        }


def split_ref(ref: str) -> tuple[str, int | None]:
    """`name@3` → ("name", 3); `name` → ("name", None) meaning the latest version."""
    if not isinstance(ref, str) or not ref:
        raise BadInput(f"invalid reference {ref!r}")
    name, sep, ver = ref.rpartition("@")
    if sep and ver.isdigit() and name:
        return name, int(ver)
    return ref, None


class Store:
    """A lineage store directory. Cheap to open; all writes are atomic and single-writer."""

    def __init__(self, root: Path, secret: bytes | Sequence[bytes], key: "keys.Key | None" = None):
        self.root = root
        self.data_dir = root / C.DATA
        self.hasher = keys.SubjectHasher(secret)
        self.key_layers: tuple[bytes, ...] = (bytes(secret),) if isinstance(secret, (bytes, bytearray)) else tuple(secret)
        # Seconds this process's last write spent opening and committing (not in its transaction's body).
        self.last_write_overhead = 0.0
        self.key = key  # where the key came from (None when the caller passed raw key bytes)
        self._engine = None
        self._engine_gen: str | None = None
        self.lock_wait = 0.0  # seconds a write waits for another writer (0: "store is busy" at once)

    # ---------------------------------------------------------------- opening

    @classmethod
    def init(cls, store: str | os.PathLike | None = None, *, exist_ok: bool = False,
             key_file: str | os.PathLike | None = None) -> "Store":
        """Create a store, and its key file outside it unless the key is in `$EXPUNGE_SECRET`.

        The key file is `key_file`, else `$EXPUNGE_KEY_FILE`, else `<key dir>/<store id>.key`
        (see `expunge.lineage.keys`); an existing one is used as it is.
        """
        root = resolve_root(store)
        if (root / C.MARKER).exists():
            if exist_ok:
                return cls.open(root)
            raise BadInput(f"a store already exists at {root}")
        if root.exists() and any(root.iterdir()) and not _clear_interrupted_init(root):
            raise BadInput(f"{root} exists and is not empty; choose another directory for the store")
        store_id = uuid.uuid4().hex
        key, kdf, made_key = keys.init_key(root, store_id, Path(key_file) if key_file is not None else None)
        try:
            return cls._create(root, store_id, key, kdf, key_file)
        except BaseException:
            if made_key:  # never leave a key without its store
                key.path.unlink(missing_ok=True)
            raise

    @classmethod
    def _create(cls, root: Path, store_id: str, key: "keys.Key", kdf: dict | None, key_file) -> "Store":
        make_private_dir(root)
        make_private_dir(root / C.DATA)
        salt = secrets.token_bytes(16)
        meta = [
            ["format", str(C.FORMAT)],
            ["store_id", store_id],
            ["key_salt", salt.hex()],
            ["key_layers", str(len(key.layers))],
            ["key_check", keys.check_value(key.layers, salt)],
            ["next_ordinal", "0"],
            ["created_at", _now().isoformat()],
        ]
        if kdf is not None:
            meta.append(["kdf", json.dumps(kdf, sort_keys=True)])
        gen_name = "catalog-000001.duckdb"
        tmp = root / (gen_name + ".tmp")
        # Small blocks: the catalog is copied on every write, and most tables hold a few rows.
        con = duckdb.connect(str(tmp), config={"default_block_size": "16384"})
        os.chmod(tmp, 0o600)
        try:
            con.execute(C.DDL)
            con.executemany("INSERT INTO meta VALUES (?, ?)", meta)
            con.execute("CHECKPOINT")
        finally:
            con.close()
        seal_file(tmp)
        os.replace(tmp, root / gen_name)
        atomic_write_bytes(root / C.CURRENT, gen_name.encode())
        marker = {"format": C.FORMAT, "tool": "expunge", "store_id": store_id}
        if key_file is not None:
            marker["key_file"] = os.path.abspath(key_file)
        # The marker last: until it exists there is no store here, and `init` may be run again.
        fault("init:before-marker")
        atomic_write_bytes(root / C.MARKER, json.dumps(marker).encode())
        return cls(root, key.layers, key)

    @classmethod
    def open(cls, store: str | os.PathLike | None = None) -> "Store":
        root = resolve_root(store)
        if not (root / C.MARKER).exists() or not (root / C.CURRENT).exists():
            raise StoreNotFound(f"no expunge store at {root} (run `expunge init` or pass --store)")
        with attached(root / _generation(root)) as con:
            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("format") != str(C.FORMAT):
            raise StoreNotFound(
                f"the store at {root} has format {meta.get('format')}; this expunge reads format {C.FORMAT} "
                "(re-create it with this version, or use the expunge that made it)"
            )
        key = keys.find_key(root, keys.read_marker(root), meta)
        layers = keys.store_layers(key, meta, root)
        keys.warn_if_weak(key, meta, root)
        store = cls(root, layers, key)
        store._recover_if_crashed()
        return store

    # ---------------------------------------------------------------- reading

    def generation(self) -> str:
        return _generation(self.root)

    @contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection to the live catalog generation."""
        for attempt in range(5):
            gen = self.generation()
            try:
                ctx = shared_read(self.root / gen)
                con = ctx.__enter__()
                break
            except (duckdb.IOException, FileNotFoundError):
                # The generation was replaced and cleaned up between the two reads: retry.
                if attempt == 4:
                    raise
                time.sleep(0.01)
        with contextlib.ExitStack() as stack:
            stack.push(ctx)
            yield con

    def data_path(self, name: str) -> Path:
        """The path of a data file named by the catalog; refuses a name that would leave data/."""
        return self.data_dir / check_file_name(name, "data file")

    @contextmanager
    def view(self) -> Iterator["CatalogView"]:
        """Read-only lookups (versions, models) over the live catalog generation."""
        with self.read() as con:
            yield CatalogView(self, con)

    def rows(self, version: str):
        """The rows of a dataset version and the source records each was built from."""
        from expunge.lineage.rows import version_rows

        return version_rows(self, version)

    def records_of_subjects(self, subjects: Sequence[str]) -> np.ndarray:
        """Sorted record ordinals of the given raw subject ids."""
        return self.engine().records_of(self.hasher.hash_many(list(dict.fromkeys(subjects))))[0]

    # ---------------------------------------------------------------- writing

    @contextmanager
    def write(self, *, purge: bool = False, compact: bool = False) -> Iterator["Txn"]:
        """A write transaction: all of it becomes visible at once, or none of it.

        With `compact`, the new catalog is rebuilt into a fresh file before the switch, so rows this
        write deleted are not left in its free blocks (nor in the generations copied from it).

        With `purge` (key rotation), what the write replaced is gone once it returns: the catalog is
        rebuilt into a fresh file (a copied DuckDB file keeps deleted rows in its free blocks), and
        the previous generations and every data file the new one does not reference are deleted
        (a reader still on the previous generation then fails and must retry).

        A write that fails for want of room or permission (disk full, a file-size limit, a read-only
        store) raises StoreUnwritable, one line that says so.
        """
        committed = [False]
        try:
            with self._write(purge, compact, committed) as txn:
                yield txn
        except (OSError, duckdb.Error) as exc:
            err = unwritable(exc, self.root, committed[0])
            if err is None:
                raise
            raise err from None

    @contextmanager
    def _write(self, purge: bool, compact: bool, committed: list) -> Iterator["Txn"]:
        lock = WriterLock(self.root / C.LOCK)
        lock.acquire(self.lock_wait)
        txn = None
        t_open = time.perf_counter()
        try:
            gen = self.generation()
            num = _number(gen) + 1
            new_gen = f"catalog-{num:06d}.duckdb"
            tmp = self.root / (new_gen + ".tmp")
            self._recover(gen)
            fault("write:begin")
            # A fresh 0600 file (O_EXCL, no symlink followed), then the live catalog's bytes.
            with open(self.root / gen, "rb") as src, os.fdopen(create_private(tmp), "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            try:
                with attached(tmp, read_only=False) as con:
                    self._drop_retired(con, num - 1)
                    txn = Txn(self, con, num)
                    opened = time.perf_counter() - t_open  # copying and attaching the catalog
                    yield txn
                    t_commit = time.perf_counter()  # from here on: the commit (checkpoint, fsyncs, renames)
                if purge or compact:
                    _rebuild_catalog(tmp)
                fault("write:before-rename")  # the catalog copy and the new data files are written
            except BaseException:
                for p in self.root.glob(tmp.name + "*"):
                    p.unlink(missing_ok=True)
                if txn is not None:
                    txn.discard_files()
                raise
            for f in txn.new_files:
                seal_file(self.data_path(f))
            if txn.new_files:
                fsync_dir(self.data_dir)
            seal_file(tmp)
            os.replace(tmp, self.root / new_gen)
            fault("write:after-rename")  # a whole new generation that CURRENT does not name yet
            atomic_write_bytes(self.root / C.CURRENT, new_gen.encode())
            committed[0] = True
            self.last_write_overhead = opened + time.perf_counter() - t_commit
            fault("write:after-switch")  # committed; the previous generations are not cleaned up yet
            if purge:
                fault("rotate:after-catalog")  # purge is key rotation's: test its crash between switch and purge
                release_shared(self.root)  # the purged generations' attachments go with their files
                self._drop_old_generations(keep={new_gen})
                self._collect_garbage(new_gen, only_live=True)
            else:
                self._drop_old_generations(keep={gen, new_gen})
        finally:
            lock.release()

    def _leftovers(self, gen: str) -> list[Path]:
        """What a writer that died before switching CURRENT left in the store root: its catalog copy (and
        the copy's WAL, which DuckDB would replay into the next copy), a generation it renamed into place but
        never made current (a kill between the rename and the switch), a CURRENT write cut short."""
        live = _number(gen)
        out = []
        for p in self.root.iterdir():
            m = _LEFTOVER.fullmatch(p.name)
            if m and (m.group(1) is None or (m.group(2) or "").startswith(".tmp") or int(m.group(1)) > live):
                out.append(p)
        return out

    def _recover(self, gen: str) -> bool:
        """Under the writer lock: delete a dead writer's leftovers and then every data file that no committed
        generation on disk references (its new files: record ids among them). Returns whether it found any."""
        stale = self._leftovers(gen)
        for p in stale:
            p.unlink(missing_ok=True)
        if stale:
            self._collect_garbage(gen)
        return bool(stale)

    def _recover_if_crashed(self) -> None:
        """At open: if a writer died before its switch, clean up after it now rather than at the next write
        (its data files may hold record ids no committed generation keeps). Skipped when another process
        holds the writer lock (its files are work in progress, not leftovers) or the store is read-only."""
        try:
            if not self._leftovers(self.generation()):
                return
            lock = WriterLock(self.root / C.LOCK)
            lock.acquire(0)
        except (StoreBusy, StoreCorrupt, OSError):
            return
        try:
            self._recover(self.generation())
        except OSError:
            pass  # e.g. a read-only data directory: the next write recovers, or says why it cannot write
        finally:
            lock.release()

    def _drop_old_generations(self, keep: set[str]) -> None:
        for p in self.root.glob("catalog-*.duckdb*"):
            if p.name not in keep:
                p.unlink(missing_ok=True)

    def _drop_retired(self, con: duckdb.DuckDBPyConnection, current: int) -> None:
        """Delete files retired at least two generations ago: no kept generation references them."""
        rows = con.execute("SELECT file FROM retired_files WHERE since_gen <= ?", [current - 1]).fetchall()
        for (f,) in rows:
            self.data_path(f).unlink(missing_ok=True)
        if rows:
            con.execute("DELETE FROM retired_files WHERE since_gen <= ?", [current - 1])

    def _collect_garbage(self, gen: str, only_live: bool = False) -> None:
        """Remove data files left by a writer that crashed before switching generations.

        Files of every generation still on disk are kept: readers may hold the previous one. With
        `only_live`, keep only the files generation `gen` reads (not even those it lists as retired).
        """
        live: set[str] = set()
        if only_live:
            cats = [self.root / gen]
        else:  # every committed generation still on disk (a newer one would be a dead writer's: see _recover)
            cats = [p for p in self.root.glob("catalog-*.duckdb")
                    if _GENERATION.fullmatch(p.name) and _number(p.name) <= _number(gen)]
        for cat in cats:
            with attached(cat) as con:
                for table, col in C.FILE_COLUMNS:
                    if only_live and table == "retired_files":
                        continue
                    for (f,) in con.execute(f"SELECT {col} FROM {table} WHERE {col} IS NOT NULL").fetchall():
                        live.add(f)
        for p in self.data_dir.iterdir():
            if p.name not in live:
                p.unlink(missing_ok=True)

    # ---------------------------------------------------------------- capture API

    def ingest_source(self, data: Any, *, name: str, subject_col: str, record_col: str, origin: str | None = None):
        """Add a source dataset version; records already known to the dataset keep their identity."""
        from expunge.lineage.ingest import ingest_source

        return ingest_source(self, data, name=name, subject_col=subject_col, record_col=record_col, origin=origin)

    def ingest_dataset(
        self,
        data: Any,
        *,
        name: str,
        parents: Sequence[str],
        kind: str,
        record_col: str | None = None,
        sources: dict[str, str] | None = None,
        row_col: str | None = None,
        origin: str | None = None,
    ):
        """Add a derived dataset version (see `expunge.lineage.ingest.ingest_dataset`)."""
        from expunge.lineage.ingest import ingest_dataset

        return ingest_dataset(
            self, data, name=name, parents=parents, kind=kind, record_col=record_col,
            sources=sources, row_col=row_col, origin=origin,
        )

    def derive(self, parent: str, *, name: str, kind: str, positions: Any, origin: str | None = None):
        """Add a subset version by the row positions (or a boolean mask) of its parent, in parent order."""
        from expunge.lineage.ingest import derive_positions

        return derive_positions(self, parent, name=name, kind=kind, positions=positions, origin=origin)

    def record_run(self, manifest: dict, *, base_dir: str | os.PathLike | None = None) -> dict:
        """Record a training run and its model versions from a manifest (schemas/run_manifest)."""
        from expunge.lineage.runs import record_run

        return record_run(self, manifest, base_dir=Path(base_dir) if base_dir else Path.cwd())

    def record_runs(self, manifests: Sequence[dict], *, base_dir: str | os.PathLike | None = None) -> list[dict]:
        """Record many manifests in one atomic write (e.g. importing a run history)."""
        from expunge.lineage.runs import record_runs

        return record_runs(self, manifests, base_dir=Path(base_dir) if base_dir else Path.cwd())

    def track_run(self, name: str, **kwargs):
        """`with store.track_run("train-1", inputs=[...], trainer="pkg.mod:fn") as run:` …"""
        from expunge.lineage.runs import RunTracker

        return RunTracker(self, name, **kwargs)

    def register_model(self, name: str, artifact: str | os.PathLike, **kwargs) -> dict:
        """Register a model version not produced by a tracked run (e.g. an ensemble)."""
        manifest = {"models": [dict(name=name, path=str(artifact), **kwargs)]}
        return self.record_run(manifest)["models"][0]

    def set_model_stage(self, model: str, stage: str, *, reason: str) -> dict:
        """Retire (`archived`) or restage a model version; the change and its reason are kept in the lineage."""
        from expunge.lineage.runs import set_model_stage

        return set_model_stage(self, model, stage, reason)

    def forget_subjects(self, hashes: np.ndarray, request_id: str, *, purge: bool = False,
                        cleaned_dir: str | os.PathLike | None = None) -> dict:
        """Remove the subjects' records from every table and file of the store; tombstone them
        (see `expunge.lineage.forget`). `hashes`: (n, 2) uint64 keyed subject hashes."""
        from expunge.lineage.forget import forget_subjects

        return forget_subjects(self, hashes, request_id, purge=purge, cleaned_dir=cleaned_dir)

    def clean_versions(self, hashes: np.ndarray, request_id: str, *,
                       cleaned_dir: str | os.PathLike | None = None) -> dict:
        """Add cleaned versions (and files) without the subjects' records, before forgetting them."""
        from expunge.lineage.forget import clean_versions

        return clean_versions(self, hashes, request_id, cleaned_dir=cleaned_dir)

    # ---------------------------------------------------------------- queries

    def engine(self):
        """The impact engine over the live generation, cached until the store changes."""
        gen = self.generation()
        if self._engine is None or self._engine_gen != gen:
            from expunge.lineage.impact import ImpactEngine

            self._engine = ImpactEngine.load(self, gen)
            self._engine_gen = gen
        return self._engine

    def impact(self, subjects: Sequence[str]):
        """Everything the given raw subject ids' records touched."""
        return self.engine().impact(subjects)

    def impact_hashed(self, hashes: np.ndarray, requested: int | None = None):
        return self.engine().impact_hashed(hashes, requested)

    def stats(self) -> dict:
        with self.read() as con:
            q = lambda s: con.execute(s).fetchall()[0][0]  # noqa: E731
            return {
                "datasets": q("SELECT count(*) FROM datasets"),
                "dataset_versions": q("SELECT count(*) FROM dataset_versions"),
                "records": int(q("SELECT value FROM meta WHERE key='next_ordinal'")),
                "subjects_segments": q("SELECT count(*) FROM subject_segments"),
                "runs": q("SELECT count(*) FROM runs"),
                "models": q("SELECT count(*) FROM models"),
            }


class CatalogView:
    """Lookups over one catalog connection (read-only, or a write transaction's)."""

    def __init__(self, store: Store, con: duckdb.DuckDBPyConnection):
        self.store = store
        self.con = con

    def execute(self, sql: str, params: Sequence = ()):
        return self.con.execute(sql, params)

    def one(self, sql: str, params: Sequence = ()) -> Any:
        rows = self.con.execute(sql, params).fetchall()
        return rows[0][0] if rows else None

    def _latest_or_exact(self, sql: str, version_col: str, name: str, ver: int | None):
        """The row of `name@ver`, or of the newest version when `ver` is None (`sql` filters by name)."""
        if ver is None:
            return _first(self.con.execute(f"{sql} ORDER BY {version_col} DESC LIMIT 1", [name]).fetchall())
        return _first(self.con.execute(f"{sql} AND {version_col} = ?", [name, ver]).fetchall())

    def resolve_version(self, ref: str) -> dict:
        name, ver = split_ref(ref)
        sql = """SELECT v.version_id, d.name, v.version_no, v.kind, v.row_space, v.record_dataset_id,
                        v.n_rows, v.n_records, v.bitmap_file, v.rows_file, v.rowmap_file, v.dataset_id
                 FROM dataset_versions v JOIN datasets d USING (dataset_id) WHERE d.name = ?"""
        row = self._latest_or_exact(sql, "v.version_no", name, ver)
        if row is None:
            raise UnknownReference(f"unknown dataset version {ref!r}")
        keys_ = ("version_id", "dataset", "version_no", "kind", "row_space", "record_dataset_id",
                 "n_rows", "n_records", "bitmap_file", "rows_file", "rowmap_file", "dataset_id")
        d = dict(zip(keys_, row))
        d["label"] = f"{d['dataset']}@{d['version_no']}"
        return d

    def resolve_model(self, ref: str) -> dict:
        name, ver = split_ref(ref)
        sql = "SELECT model_id, name, version_no FROM models WHERE name = ?"
        row = self._latest_or_exact(sql, "version_no", name, ver)
        if row is None:
            raise UnknownReference(f"unknown model version {ref!r}")
        return {"model_id": row[0], "name": row[1], "version_no": row[2], "label": f"{row[1]}@{row[2]}"}

    def load_bitmap(self, name: str):
        from pyroaring import BitMap

        return BitMap.deserialize(self.store.data_path(name).read_bytes())


class Txn(CatalogView):
    """The inside of one write: a catalog connection plus the new data files it wrote."""

    def __init__(self, store: Store, con: duckdb.DuckDBPyConnection, generation: int = 0):
        super().__init__(store, con)
        self.generation = generation
        self.new_files: list[str] = []
        self.skipped = 0  # input rows an ingest in this write left out for a tombstone (see lineage.forget)

    def retire(self, files: Sequence[str]) -> None:
        """Files this write stops referencing; deleted once no kept generation can read them."""
        files = list(files)
        if files:
            self.con.execute("INSERT INTO retired_files SELECT unnest(?::VARCHAR[]), ?", [files, self.generation])

    def new_name(self, suffix: str) -> str:
        name = f"{uuid.uuid4().hex}{suffix}"
        self.new_files.append(name)
        return name

    def create(self, suffix: str):
        """A new data file (a fresh name, mode 0600, never an existing file or symlink), open for writing."""
        name = self.new_name(suffix)
        return name, os.fdopen(create_private(self.store.data_path(name)), "wb")

    def write_bytes(self, suffix: str, data: bytes) -> str:
        name, fh = self.create(suffix)
        with fh:
            fh.write(data)
        return name

    def write_parquet(self, table, suffix: str = ".parquet") -> str:
        import pyarrow.parquet as pq

        name, fh = self.create(suffix)
        fh.close()  # Parquet's writer truncates the 0600 file we made rather than making its own
        # Row groups of 32k rows: a lookup of a few records' ids reads the groups that hold them, not the table.
        pq.write_table(table, self.store.data_path(name), compression="zstd", row_group_size=ROW_GROUP)
        return name

    def discard_files(self) -> None:
        for f in self.new_files:
            self.store.data_path(f).unlink(missing_ok=True)

    # ----- catalog helpers

    def next_id(self, table: str, col: str) -> int:
        return int(self.one(f"SELECT coalesce(max({col}), 0) + 1 FROM {table}"))

    def meta(self, key: str) -> str:
        return self.one("SELECT value FROM meta WHERE key = ?", [key])

    def set_meta(self, key: str, value: str) -> None:
        self.con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])

    def dataset_id(self, name: str, create: bool) -> int:
        did = self.one("SELECT dataset_id FROM datasets WHERE name = ?", [name])
        if did is None:
            if not create:
                raise UnknownReference(f"unknown dataset {name!r}")
            did = self.next_id("datasets", "dataset_id")
            self.con.execute("INSERT INTO datasets VALUES (?, ?, ?)", [did, name, _now()])
        return int(did)

    def save_bitmap(self, bm) -> str:
        bm.run_optimize()
        return self.write_bytes(".roar", bm.serialize())


def _first(rows: list) -> Any:
    return rows[0] if rows else None


def check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise BadInput(f"{what} name must be a non-empty string")
    if "@" in name:
        raise BadInput(f"{what} name {name!r} must not contain '@' (it separates name and version)")
    # Names appear in paths, logs and one-line messages: no path parts, no line breaks or control characters.
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise BadInput(f"{what} name {name!r} must not contain a line break or other control character")
    if what == "dataset" and ("/" in name or "\\" in name or name in (".", "..")):  # dataset names name files
        raise BadInput(f"{what} name {name!r} must not contain '/' or '\\', nor be '.' or '..'")
    return name


__all__ = ["Store", "Txn", "VersionInfo", "ExpungeError", "split_ref", "resolve_root"]
