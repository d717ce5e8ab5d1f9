"""Pseudonymous subjects: a keyed 128-bit BLAKE2b hash of each raw subject id.

The secret lives outside the store's tables: `$EXPUNGE_SECRET`, or a key file
(`secret.key` in the store directory by default, mode 0600, or `$EXPUNGE_KEY_FILE`).
The store keeps only a fingerprint of the key, to refuse a wrong one.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import weakref
from pathlib import Path
from typing import Iterable

import numpy as np

from expunge.errors import BadInput, SecretMismatch

KEY_FILE = "secret.key"
HASH_BYTES = 16


def generate_secret() -> bytes:
    return secrets.token_bytes(32)


def _parse_secret(text: str) -> bytes:
    text = text.strip()
    if not text:
        raise BadInput("the subject-hash secret is empty")
    try:
        raw = bytes.fromhex(text)
        if len(raw) >= 16:
            return raw[:64]
    except ValueError:
        pass
    # A passphrase: derive a 32-byte key from it.
    return hashlib.blake2b(text.encode(), digest_size=32, person=b"expunge-pass").digest()


def key_file_path(store_root: Path) -> Path:
    env = os.environ.get("EXPUNGE_KEY_FILE")
    return Path(env) if env else store_root / KEY_FILE


def load_secret(store_root: Path) -> bytes:
    env = os.environ.get("EXPUNGE_SECRET")
    if env:
        return _parse_secret(env)
    path = key_file_path(store_root)
    try:
        return _parse_secret(path.read_text())
    except FileNotFoundError:
        raise SecretMismatch(
            f"no subject-hash secret: set $EXPUNGE_SECRET or provide the key file {path}"
        ) from None


def write_key_file(path: Path, secret: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret.hex() + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def fingerprint(secret: bytes) -> str:
    return hashlib.blake2b(b"fingerprint", key=secret[:64], digest_size=16).hexdigest()


def _pairs(digests: list[bytes]) -> np.ndarray:
    """(n, 2) uint64: each 16-byte digest's big-endian halves."""
    if not digests:
        return np.zeros((0, 2), dtype=np.uint64)
    return np.frombuffer(b"".join(digests), dtype=">u8").astype(np.uint64).reshape(-1, 2)


class SubjectHasher:
    """Maps raw subject ids (strings, exactly as given) to (hi, lo) uint64 pairs.

    Keeps an in-process cache of recent digests (never written anywhere): daily
    ingests see the same subjects again and again.
    """

    CACHE_LIMIT = 2_000_000

    def __init__(self, secret: bytes):
        self._key = secret[:64]
        self._cache: dict[str, bytes] = {}
        # Copying a keyed state skips re-processing the key block: a third faster per subject.
        self._keyed = hashlib.blake2b(key=self._key, digest_size=HASH_BYTES)

    def digest(self, subject: str) -> bytes:
        return hashlib.blake2b(subject.encode("utf-8"), key=self._key, digest_size=HASH_BYTES).digest()

    def hash_many(self, subjects: Iterable[str]) -> np.ndarray:
        """Return an (n, 2) uint64 array of the digest's big-endian (hi, lo) halves."""
        subjects = list(subjects)
        cache = self._cache
        if len(cache) >= self.CACHE_LIMIT:
            cache.clear()
        new = [s for s in dict.fromkeys(subjects) if s not in cache]
        cache.update(zip(new, self._raw(new)))
        return _pairs([cache[s] for s in subjects])

    def _digests(self, subjects: list[str]) -> np.ndarray:
        """Like `hash_many` for subjects known to be new (no dict cache: the bulk cache holds them)."""
        return _pairs(self._raw(subjects))

    def _raw(self, subjects: list[str]) -> list[bytes]:
        keyed = self._keyed
        out = []
        for s in subjects:
            h = keyed.copy()
            h.update(s.encode("utf-8"))
            out.append(h.digest())
        return out

    def hex(self, subject: str) -> str:
        return self.digest(subject).hex()

    # Above this many distinct subjects in one column, look digests up in an in-memory DuckDB
    # table: a C hash join instead of a Python dict lookup per fresh str object.
    BULK = 50_000

    def hash_column(self, arr) -> np.ndarray:
        """(n, 2) hashes for a pyarrow string array; each distinct subject is hashed once."""
        import pyarrow as pa
        import pyarrow.compute as pc

        enc = pc.dictionary_encode(arr)
        uniq, codes = enc.dictionary, enc.indices.to_numpy(zero_copy_only=False)
        if len(uniq) < self.BULK:
            return self.hash_many(uniq.to_pylist())[codes] if len(arr) else np.zeros((0, 2), np.uint64)
        con = self.bulk_connection()
        n = len(uniq)
        out = np.zeros((n, 2), np.uint64)
        con.register("_u", pa.table({"s": uniq, "i": pa.array(np.arange(n, dtype=np.int64))}))
        try:
            res = con.sql("SELECT u.i, c.hi, c.lo FROM _u u JOIN cache c ON c.s = u.s").fetchnumpy()
        finally:
            con.unregister("_u")
        have = np.zeros(n, bool)
        idx = res["i"].astype(np.int64)
        have[idx] = True
        out[idx, 0] = res["hi"].astype(np.uint64)
        out[idx, 1] = res["lo"].astype(np.uint64)
        miss = np.flatnonzero(~have)
        if miss.size:
            out[miss] = self._hash_and_cache(uniq.take(pa.array(miss)))
        return out[codes]

    def hash_uncached(self, arr) -> np.ndarray:
        """(n, 2) hashes of a string array none of whose subjects is in the bulk cache; adds them to it."""
        import pyarrow.compute as pc

        enc = pc.dictionary_encode(arr)
        return self._hash_and_cache(enc.dictionary)[enc.indices.to_numpy(zero_copy_only=False)]

    def _hash_and_cache(self, uniq) -> np.ndarray:
        """Hash distinct subjects absent from the bulk cache, and add them to it."""
        import pyarrow as pa

        h = self._digests(uniq.to_pylist())
        con = self.bulk_connection()
        if self._bulk_rows + len(uniq) > self.CACHE_LIMIT:
            con.execute("DELETE FROM cache")
            self._bulk_rows = 0
        con.register("_m", pa.table({"s": uniq, "hi": pa.array(h[:, 0]), "lo": pa.array(h[:, 1])}))
        try:
            con.execute("INSERT INTO cache SELECT s, hi, lo FROM _m")
        finally:
            con.unregister("_m")
        self._bulk_rows += len(uniq)
        return h

    def bulk_connection(self):
        """The in-memory DuckDB connection holding the digest cache (table `cache(s, hi, lo)`)."""
        con = getattr(self, "_bulk_con", None)
        if con is None:
            import duckdb

            con = duckdb.connect()
            # In memory only: raw subject ids must never be spilled to a temp file.
            con.execute("SET temp_directory = ''")
            con.execute("CREATE TABLE cache(s VARCHAR, hi UBIGINT, lo UBIGINT)")
            self._bulk_con = con
            self._bulk_rows = 0
            _WITH_BULK.add(self)
        return con


_WITH_BULK: "weakref.WeakSet[SubjectHasher]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child must neither use nor destroy its parent's DuckDB instances: keep them, unused."""
    from expunge.lineage.store import leak_in_child

    for hasher in list(_WITH_BULK):
        leak_in_child(hasher._bulk_con)
        hasher._bulk_con = None
    _WITH_BULK.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def owner_fingerprint(hashes: np.ndarray) -> np.ndarray:
    """16 bits of a subject hash, kept per record to check that a record keeps its subject.

    A moved record goes unnoticed with probability 2^-16; a batch of moved records (a shifted
    column, a bad join) is caught for certain. 16 bits cost 40 MB per 20M records, 32 bits 80.
    """
    return (hashes[:, 0] >> np.uint64(48)).astype(np.uint16)
