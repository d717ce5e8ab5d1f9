"""Survivors of the mutation run over lineage/keys.py, killed by tests whose expected hashes come from hashlib
directly (keyed BLAKE2b, 16 bytes, as the module's doc defines them) and whose paths are written out by hand."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pyarrow as pa

from expunge.lineage import keys
from expunge.lineage.store import Store

SECRET = bytes(range(32))


def _expected(subjects, secret=SECRET) -> np.ndarray:
    """(hi, lo) of BLAKE2b keyed with the secret, 16-byte digests, big-endian halves: computed here."""
    out = []
    for s in subjects:
        d = hashlib.blake2b(s.encode(), key=secret, digest_size=16).digest()
        out.append((int.from_bytes(d[:8], "big"), int.from_bytes(d[8:], "big")))
    return np.array(out, dtype=np.uint64).reshape(-1, 2)


def test_the_bulk_path_gives_the_same_hashes_and_clears_its_cache_when_full():
    h = keys.SubjectHasher(SECRET)
    h.BULK, h.CACHE_LIMIT = 2, 5  # the DuckDB path from 2 distinct subjects; its cache cleared past 5
    first = [f"cust-{i}" for i in range(4)]
    got = h.hash_column(pa.array(first + first[:2]))
    assert got.dtype == np.uint64 and np.array_equal(got, _expected(first + first[:2]))
    second = [f"other-{i}" for i in range(3)]  # 4 + 3 > 5: the cache is emptied first
    assert np.array_equal(h.hash_column(pa.array(second)), _expected(second))
    assert h.bulk_connection().execute("SELECT count(*) FROM cache").fetchall() == [(3,)]
    assert np.array_equal(h.hash_column(pa.array(first)), _expected(first))  # hashed again after the clear


def test_rehashing_no_pairs_gives_no_pairs():
    out = keys.rehash_pairs(np.zeros((0, 2), np.uint64), SECRET)
    assert out.shape == (0, 2) and out.dtype == np.uint64


def test_the_legacy_fingerprint_is_128_bits_of_keyed_blake2b():
    # Stores made before salted checks keep this value: 16 bytes of BLAKE2b of b"fingerprint" keyed by the secret.
    assert keys.legacy_fingerprint(SECRET) == hashlib.blake2b(b"fingerprint", key=SECRET, digest_size=16).hexdigest()
    assert len(keys.legacy_fingerprint(SECRET)) == 32


def test_the_key_directory_follows_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv("EXPUNGE_KEY_DIR")
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert keys.key_dir() == tmp_path / "home" / ".config" / "expunge" / "keys"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert keys.key_dir() == tmp_path / "xdg" / "expunge" / "keys"
    monkeypatch.setenv("EXPUNGE_KEY_DIR", str(tmp_path / "mine"))
    assert keys.default_key_path("abc") == tmp_path / "mine" / "abc.key"


def test_a_key_moved_away_is_found_through_expunge_key_file(monkeypatch, tmp_path):
    store = Store.init(tmp_path / "s")
    store.ingest_source({"s": ["ann"], "r": ["r0"]}, name="d", subject_col="s", record_col="r")
    moved = tmp_path / "elsewhere.key"
    shutil.move(store.key.path, moved)
    monkeypatch.setenv("EXPUNGE_KEY_FILE", str(moved))
    again = Store.open(tmp_path / "s")
    assert again.impact(["ann"]).records == 1
