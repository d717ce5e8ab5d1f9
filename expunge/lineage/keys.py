"""Pseudonymous subjects: a keyed 128-bit BLAKE2b hash of each raw subject id, and the key's home.

The key never sits in the store, so a copy of the store cannot re-identify anyone. It is found,
in this order: `$EXPUNGE_SECRET` (hex key, or a passphrase stretched by scrypt with the store's
salt), `$EXPUNGE_KEY_FILE`, the file named at `init --key-file` (kept in the store marker), or
`<key dir>/<store id>.key` with the key dir `$EXPUNGE_KEY_DIR` (default ~/.config/expunge/keys).
Stores made before this kept `<store>/secret.key`: they still open, with a warning, until
`expunge key migrate` moves it out. A key file readable or writable by others is refused.

The store keeps a salted check value of the key (scrypt-slow for a passphrase), never a plain
fingerprint. A key is a chain of 256-bit layers: `expunge key rotate` appends one and re-hashes
each stored hash h to BLAKE2b(h, key=new layer) (the raw ids are not in the store to hash again).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import secrets
import stat
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from expunge.errors import BadInput, SecretMismatch

LEGACY_KEY_FILE = "secret.key"  # the old default, inside the store
HASH_BYTES = 16
KEY_BYTES = 32
# scrypt for passphrases: 32 MiB and ~0.1 s per derivation (once per process, cached); a
# dictionary attack pays the same per guess.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1


class KeyInsideStore(UserWarning):
    """The store was opened with a key that sits inside it (a store made by an older expunge)."""


def generate_secret() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def _hex_layers(text: str) -> tuple[bytes, ...] | None:
    """The layers of a hex key (one layer per line or word), or None if `text` is not one."""
    layers = []
    for word in text.split():
        try:
            raw = bytes.fromhex(word)
        except ValueError:
            return None
        if len(raw) < 16:
            return None
        layers.append(raw[:64])
    return tuple(layers) or None


@functools.lru_cache(maxsize=4)
def derive_passphrase_key(passphrase: str, salt: bytes, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> bytes:
    """A 256-bit key from a passphrase: salted, memory-hard (scrypt); cached per process."""
    return hashlib.scrypt(passphrase.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=2 * 128 * r * (n + p) + (1 << 20), dklen=KEY_BYTES)


def _legacy_passphrase_key(passphrase: str) -> bytes:
    # How stores made before the salted KDF turned a passphrase into a key: one unsalted hash.
    return hashlib.blake2b(passphrase.strip().encode(), digest_size=32, person=b"expunge-pass").digest()


def legacy_fingerprint(secret: bytes) -> str:
    # The unsalted fingerprint old stores keep; only ever compared, never written any more.
    return hashlib.blake2b(b"fingerprint", key=secret[:64], digest_size=16).hexdigest()


def check_value(layers: Sequence[bytes], salt: bytes) -> str:
    """The store's salted check of its key. For a passphrase the first layer is scrypt's output, so
    testing a guess against this value costs a scrypt: no faster than the KDF allows."""
    acc = salt
    for layer in layers:
        acc = hashlib.blake2b(acc, key=layer[:64], digest_size=32, person=b"expunge-check").digest()
    return acc.hex()


def new_kdf() -> dict:
    return {"name": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P, "salt": secrets.token_hex(16)}


def _from_kdf(passphrase: str, kdf: dict) -> bytes:
    if kdf.get("name") != "scrypt":
        raise SecretMismatch(f"the store uses an unknown key derivation {kdf.get('name')!r}")
    return derive_passphrase_key(passphrase, bytes.fromhex(kdf["salt"]), int(kdf["n"]), int(kdf["r"]), int(kdf["p"]))


# ---------------------------------------------------------------- where the key lives


def key_dir() -> Path:
    env = os.environ.get("EXPUNGE_KEY_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "expunge" / "keys"


def default_key_path(store_id: str) -> Path:
    return key_dir() / f"{store_id}.key"


def is_inside(path: Path, root: Path) -> bool:
    try:
        Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class Key:
    """A subject-hash key and where it came from."""

    layers: tuple[bytes, ...]
    origin: str                      # "$EXPUNGE_SECRET" or the key file's path, for messages
    path: Path | None = None         # the key file, if it came from one
    passphrase: bool = False
    inside_store: bool = False       # the old default: <store>/secret.key


def read_key_file(path: Path) -> tuple[bytes, ...]:
    """The layers in a key file; refuses one that others may read or write (as ssh does)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SecretMismatch(f"cannot read the key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise SecretMismatch(f"the key file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise SecretMismatch(f"the key file {path} is accessible by others (mode {stat.S_IMODE(st.st_mode):04o}); "
                                 f"run `chmod 600 {path}`")
        text = fh.read(1 << 16).decode("ascii", errors="replace")
    layers = _hex_layers(text)
    if layers is None:
        raise SecretMismatch(f"the key file {path} does not hold an expunge key (hex, one layer a line)")
    return layers


def write_key_file(path: Path, layers: Sequence[bytes], *, replace: bool = False) -> None:
    """Write a key file, mode 0600, durable before returning; a new file unless `replace`."""
    from expunge.lineage.fsutil import atomic_write_bytes, create_private, fsync_dir

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = "".join(layer.hex() + "\n" for layer in layers).encode()
    if replace:
        atomic_write_bytes(path, data)
        return
    fd = create_private(path)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(path.parent)


def read_marker(root: Path) -> dict:
    from expunge.lineage import catalog as C

    try:
        doc = json.loads((root / C.MARKER).read_bytes())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def key_candidates(root: Path, marker: dict) -> list[Path]:
    """Where a store's key file may be, in order of preference."""
    env = os.environ.get("EXPUNGE_KEY_FILE")
    if env:
        return [Path(env)]
    out = []
    if marker.get("key_file"):
        out.append(Path(marker["key_file"]))
    if marker.get("store_id"):
        out.append(default_key_path(str(marker["store_id"])))
    out.append(root / LEGACY_KEY_FILE)
    return out


def find_key(root: Path, marker: dict, meta: dict) -> Key:
    """The key that opens the store at `root` (not yet checked against it)."""
    env = os.environ.get("EXPUNGE_SECRET")
    if env and env.strip():
        layers = _hex_layers(env)
        if layers is not None:
            return Key(layers, "$EXPUNGE_SECRET")
        if meta.get("kdf"):
            layer = _from_kdf(env.strip(), json.loads(meta["kdf"]))
        elif "key_fingerprint" in meta:
            layer = _legacy_passphrase_key(env)
        else:
            raise SecretMismatch(f"$EXPUNGE_SECRET holds a passphrase but the store at {root} uses a key file; "
                                 "unset EXPUNGE_SECRET")
        return Key((layer,), "$EXPUNGE_SECRET", passphrase=True)
    cands = key_candidates(root, marker)
    for path in cands:
        try:
            layers = read_key_file(path)
        except FileNotFoundError:
            continue
        return Key(layers, str(path), path, inside_store=is_inside(path, root))
    raise SecretMismatch(f"no subject-hash key for the store at {root}: expected the key file {cands[0]} "
                         "(or set $EXPUNGE_KEY_FILE or $EXPUNGE_SECRET)")


def init_key(root: Path, store_id: str, key_file: Path | None = None) -> tuple[Key, dict | None, bool]:
    """The key of a new store: (key, its scrypt parameters if a passphrase, whether a key file was made)."""
    env = os.environ.get("EXPUNGE_SECRET")
    if env and env.strip():
        if key_file is not None:
            raise BadInput("both --key-file and $EXPUNGE_SECRET name a key; use one of them")
        layers = _hex_layers(env)
        if layers is not None:
            return Key(layers, "$EXPUNGE_SECRET"), None, False
        kdf = new_kdf()
        return Key((_from_kdf(env.strip(), kdf),), "$EXPUNGE_SECRET", passphrase=True), kdf, False
    env_file = os.environ.get("EXPUNGE_KEY_FILE")
    path = key_file or (Path(env_file) if env_file else default_key_path(store_id))
    if is_inside(path, root):
        raise BadInput(f"the key file {path} would sit inside the store, and any copy of the store would "
                       f"re-identify its subjects; choose a path outside {root}")
    if path.exists():  # one key for several stores: the user's choice
        return Key(read_key_file(path), str(path), path), None, False
    write_key_file(path, [generate_secret()])
    return Key(read_key_file(path), str(path), path), None, True


def store_layers(key: Key, meta: dict, root: Path) -> tuple[bytes, ...]:
    """The layers of `key` the store uses (a key file may hold one more, left by a cut-short
    rotation), or SecretMismatch if the key is not the store's."""
    if "key_check" in meta:
        n = int(meta.get("key_layers") or 1)
        layers = key.layers[:n]
        if len(layers) == n and secrets.compare_digest(check_value(layers, bytes.fromhex(meta["key_salt"])),
                                                       meta["key_check"]):
            return layers
    elif "key_fingerprint" in meta and secrets.compare_digest(legacy_fingerprint(key.layers[0]),
                                                              meta["key_fingerprint"]):
        return key.layers[:1]
    raise SecretMismatch(f"the subject-hash key from {key.origin} does not belong to the store at {root}")


def warn_if_weak(key: Key, meta: dict, root: Path) -> None:
    """Warn (KeyInsideStore) about a store made the old way: key file inside it, or a passphrase
    turned into a key by one unsalted hash (which a dictionary attack on a copy of the store tests fast)."""
    fix = f"run `expunge key migrate --rotate --store {root}`"
    if key.inside_store:
        warnings.warn(KeyInsideStore(
            f"the subject-hash key sits inside the store ({key.path}): any copy or backup of the store "
            f"re-identifies its subjects; {fix}"), stacklevel=3)
    elif key.passphrase and not meta.get("kdf"):
        warnings.warn(KeyInsideStore(
            f"the store's passphrase key is derived without salt or stretching, so a copy of the store "
            f"lets passphrase guesses be tested fast; {fix}"), stacklevel=3)


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

    def __init__(self, secret: bytes | Sequence[bytes]):
        layers = [secret] if isinstance(secret, (bytes, bytearray)) else list(secret)
        self._key = bytes(layers[0][:64])
        self._cache: dict[str, bytes] = {}
        # Copying a keyed state skips re-processing the key block: a third faster per subject.
        self._keyed = hashlib.blake2b(key=self._key, digest_size=HASH_BYTES)
        # Layers added by key rotations: each re-hashes the previous digest.
        self._rekeyed = [hashlib.blake2b(key=bytes(k[:64]), digest_size=HASH_BYTES) for k in layers[1:]]

    def digest(self, subject: str) -> bytes:
        return self._raw([subject])[0]

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
        for layer in self._rekeyed:
            out = rehash_digests(out, layer)
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


def rehash_digests(digests: list[bytes], layer) -> list[bytes]:
    """Each digest keyed-hashed again by one rotation layer (a keyed blake2b state)."""
    out = []
    for d in digests:
        h = layer.copy()
        h.update(d)
        out.append(h.digest())
    return out


def rehash_pairs(pairs: np.ndarray, layer: bytes) -> np.ndarray:
    """(n, 2) uint64 subject hashes re-hashed under a new rotation layer."""
    if len(pairs) == 0:
        return np.zeros((0, 2), np.uint64)
    raw = np.ascontiguousarray(pairs, dtype=np.uint64).astype(">u8").tobytes()
    digests = [raw[i:i + HASH_BYTES] for i in range(0, len(raw), HASH_BYTES)]
    return _pairs(rehash_digests(digests, hashlib.blake2b(key=layer[:64], digest_size=HASH_BYTES)))


def owner_fingerprint(hashes: np.ndarray) -> np.ndarray:
    """16 bits of a subject hash, kept per record to check that a record keeps its subject.

    A moved record goes unnoticed with probability 2^-16; a batch of moved records (a shifted
    column, a bad join) is caught for certain. 16 bits cost 40 MB per 20M records, 32 bits 80.
    """
    return (hashes[:, 0] >> np.uint64(48)).astype(np.uint16)
