"""Keys (issue 9): the key lives outside the store, passphrases are salted and stretched, key
files are private, rotation re-hashes everything atomically, old stores migrate in one command."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from expunge.cli import app
from expunge.errors import BadInput, SecretMismatch
from expunge.lineage import keys
from expunge.lineage.segments import Segment
from expunge.lineage.store import Store
from tests.conftest import all_store_bytes

runner = CliRunner()
CANDIDATES = [f"{i:06d}" for i in range(3000)]


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def source(n_subjects=150, seed=0):
    """(subject, record) rows: a few records per subject, six-digit subject ids."""
    rng = np.random.default_rng(seed)
    subs = rng.choice(3000, size=n_subjects, replace=False)
    rows = [(f"{s:06d}", f"r{s}-{k}") for s in subs for k in range(1 + s % 3)]
    return {"cid": [s for s, _ in rows], "rid": [r for _, r in rows]}


def index_hashes(root) -> set[tuple[int, int]]:
    out = set()
    for p in (root / "data").glob("*.seg"):
        seg = Segment(p)
        out |= set(zip(seg.hi.tolist(), seg.lo.tolist()))
    return out


def matches(hasher, hashes) -> int:
    return sum((int(h), int(l)) in hashes for h, l in hasher.hash_many(CANDIDATES))


def meta(store) -> dict:
    with store.read() as con:
        return dict(con.execute("SELECT key, value FROM meta").fetchall())


def test_copy_of_the_store_alone_cannot_reidentify(tmp_path, monkeypatch):
    store = Store.init(tmp_path / "st")
    data = source()
    store.ingest_source(data, name="c", subject_col="cid", record_col="rid")
    copy = tmp_path / "stolen"
    shutil.copytree(store.root, copy)
    hashes = index_hashes(copy)
    # The attacker tries every key-like string in the copy (the old default kept one there).
    for p in copy.rglob("*"):
        if p.is_file():
            for m in set(re.findall(rb"[0-9a-f]{64}", p.read_bytes())):
                assert matches(keys.SubjectHasher(bytes.fromhex(m.decode())), hashes) == 0
    assert not any(p.name.endswith(".key") for p in copy.rglob("*"))
    # Nor can it be opened from the copy without the key dir.
    monkeypatch.setenv("EXPUNGE_KEY_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(SecretMismatch, match="no subject-hash key"):
        Store.open(copy)
    # Sanity: with the key (kept outside), every subject is found.
    assert matches(keys.SubjectHasher(keys.read_key_file(store.key.path)), hashes) == len(set(data["cid"]))


def test_init_reports_the_key_outside_the_store(tmp_path):
    res = run("init", "--store", tmp_path / "st", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert not doc["key_file"].startswith(str(tmp_path / "st")) and os.path.exists(doc["key_file"])
    res = run("init", "--store", tmp_path / "st2")
    assert "backups of the store do not include it" in res.output
    res = run("init", "--store", tmp_path / "st3", "--key-file", tmp_path / "st3" / "k.key")
    assert res.exit_code == 2 and "inside the store" in res.output
    assert not (tmp_path / "st3" / "STORE").exists()
    res = run("init", "--store", tmp_path / "st4", "--key-file", tmp_path / "mine.key", "--json")
    assert json.loads(res.output)["key_file"] == str(tmp_path / "mine.key")
    assert Store.open(tmp_path / "st4").key.path == tmp_path / "mine.key"  # found through the marker


def test_passphrase_is_salted_and_stretched(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPUNGE_SECRET", "correct horse battery staple")
    store = Store.init(tmp_path / "st")
    store.ingest_source({"s": ["u"], "r": ["1"]}, name="d", subject_col="s", record_col="r")
    m = meta(store)
    assert "key_fingerprint" not in m and not list((tmp_path / "st").rglob("*.key"))
    kdf = json.loads(m["kdf"])
    assert kdf["name"] == "scrypt" and kdf["n"] >= 2**15 and len(bytes.fromhex(kdf["salt"])) == 16
    salt = bytes.fromhex(m["key_salt"])
    # The check value needs the scrypt output: the old fast derivation does not reproduce it.
    assert keys.check_value([keys._legacy_passphrase_key("correct horse battery staple")], salt) != m["key_check"]
    keys.derive_passphrase_key.cache_clear()
    calls = []
    real = hashlib.scrypt
    monkeypatch.setattr(hashlib, "scrypt", lambda *a, **k: calls.append(k.get("n")) or real(*a, **k))
    st2 = Store.open(tmp_path / "st")
    assert st2.impact(["u"]).records == 1
    Store.open(tmp_path / "st")
    assert calls == [kdf["n"]]  # one derivation per process (cached), with the store's own parameters
    monkeypatch.setenv("EXPUNGE_SECRET", "correct horse battery stable")
    with pytest.raises(SecretMismatch):
        Store.open(tmp_path / "st")


def test_key_file_readable_by_others_is_refused(store):
    os.chmod(store.key.path, 0o640)
    with pytest.raises(SecretMismatch, match="chmod 600"):
        Store.open(store.root)
    res = run("impact", "--subject", "x", "--store", store.root)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and f"chmod 600 {store.key.path}" in lines[0], res.output
    os.chmod(store.key.path, 0o600)
    Store.open(store.root)


def brute_force(data, subject) -> int:
    return sum(c == subject for c in data["cid"])


def _owners(root) -> list:
    import pyarrow.parquet as pq

    return sorted(pq.read_table(p).column("owner").to_pylist() for p in (root / "data").glob("*.ids.parquet"))


def _rotated_store(tmp_path):
    st = tmp_path / "st"
    assert run("init", "--store", st).exit_code == 0
    data = source(seed=1)
    store = Store.open(st)
    store.ingest_source(data, name="c", subject_col="cid", record_col="rid")
    store.ingest_dataset({"rid": data["rid"][::2]}, name="half", parents=["c"], kind="filter", record_col="rid")
    from expunge.orchestrator import requests as rq

    rq.create(store, [data["cid"][0], data["cid"][5]])
    return st, store, data


def impacts(st, subjects):
    out = {}
    for s in subjects:
        res = run("impact", "--subject", s, "--store", st, "--json")
        assert res.exit_code == 0, res.output
        out[s] = json.loads(res.output)
    return out


def test_rotate_rehashes_everything_and_answers_the_same(tmp_path):
    st, store, data = _rotated_store(tmp_path)
    subjects = sorted(set(data["cid"]))[:12] + ["999999x"]
    before = impacts(st, subjects)
    for s in subjects:
        assert before[s]["records"] == brute_force(data, s)
    old_hashes, old_owners, old_key = index_hashes(st), _owners(st), keys.read_key_file(store.key.path)
    with store.read() as con:
        old_req = set(con.execute("SELECT hi, lo FROM request_subjects").fetchall())

    res = run("key", "rotate", "--store", st, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["key_layers"] == 2 and doc["subjects"] == len(old_hashes) and doc["requests"] == 1

    new_hashes = index_hashes(st)
    assert len(new_hashes) == len(old_hashes) and not (new_hashes & old_hashes)
    assert _owners(st) != old_owners
    st2 = Store.open(st)
    with st2.read() as con:
        new_req = set(con.execute("SELECT hi, lo FROM request_subjects").fetchall())
    assert len(new_req) == 2 and not (new_req & old_req)
    assert impacts(st, subjects) == before
    # The old key (in old backups of the key file) matches nothing any more ...
    assert matches(keys.SubjectHasher(old_key), new_hashes) == 0
    # ... and no old hash is left anywhere in the store (no previous generation, no free blocks).
    blob = all_store_bytes(st)
    for hi, lo in list(old_hashes)[:50] + list(old_req):
        assert np.array([hi, lo], "<u8").tobytes() not in blob and np.array([hi], ">u8").tobytes() not in blob
    # Re-ingesting the same source keeps every record with its subject (owner fingerprints rewritten).
    st2.ingest_source(data, name="c", subject_col="cid", record_col="rid")
    assert st2.impact([data["cid"][0]]).records == brute_force(data, data["cid"][0])


@pytest.mark.parametrize("point", ["rotate:after-key", "rotate:after-catalog"])
def test_rotate_killed_leaves_a_working_store(tmp_path, point):
    st, store, data = _rotated_store(tmp_path)
    subjects = sorted(set(data["cid"]))[:5]
    before = impacts(st, subjects)
    env = dict(os.environ, EXPUNGE_FAULT=point)
    proc = subprocess.run([sys.executable, "-m", "expunge.cli", "key", "rotate", "--store", str(st)], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert impacts(st, subjects) == before
    # And the store goes on: another rotation, then the same answers again.
    assert run("key", "rotate", "--store", st).exit_code == 0
    assert impacts(st, subjects) == before


def _make_old_style(store) -> bytes:
    """Turn a fresh store into one made by the previous expunge: key in <store>/secret.key, a fast
    fingerprint in the catalog, no store id."""
    layer = store.key_layers[0]
    with store.write() as txn:
        txn.con.execute("DELETE FROM meta WHERE key IN ('key_check', 'key_salt', 'key_layers', 'store_id')")
        txn.set_meta("key_fingerprint", keys.legacy_fingerprint(layer))
    (store.root / "STORE").write_text(json.dumps({"format": 2, "tool": "expunge"}))
    os.unlink(store.key.path)
    keys.write_key_file(store.root / "secret.key", [layer])
    return layer


def test_migrate_an_old_store(tmp_path):
    store = Store.init(tmp_path / "st")
    data = source(seed=2)
    store.ingest_source(data, name="c", subject_col="cid", record_col="rid")
    layer = _make_old_style(store)
    with pytest.warns(keys.KeyInsideStore, match="key migrate"):
        Store.open(store.root)
    # Outside pytest (where warnings are errors): one warning line naming the fix, and the answer.
    proc = subprocess.run([sys.executable, "-m", "expunge.cli", "impact", "--subject", data["cid"][0], "--json",
                           "--store", str(store.root)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("warning: the subject-hash key sits inside the store") and "key migrate" in proc.stderr
    before = {data["cid"][0]: json.loads(proc.stdout)}

    res = run("key", "migrate", "--rotate", "--store", store.root, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["removed_from_store"] and doc["rotated"] and not (store.root / "secret.key").exists()
    assert layer not in all_store_bytes(store.root) and layer.hex().encode() not in all_store_bytes(store.root)
    st = Store.open(store.root)  # no warning (warnings are errors in the tests)
    assert st.key.path == keys.default_key_path(keys.read_marker(store.root)["store_id"])
    assert "key_fingerprint" not in meta(st)
    assert impacts(store.root, [data["cid"][0]]) == before
    assert matches(keys.SubjectHasher(layer), index_hashes(store.root)) == 0


def test_rotate_refuses_a_key_it_cannot_rotate_and_says_what_to_run(tmp_path, monkeypatch):
    """A key from $EXPUNGE_SECRET (no file to write the new layer to), and a key inside the store (an old store):
    `key rotate` refuses each with one line naming the way out, and changes nothing."""
    from expunge.lineage.rekey import rotate

    monkeypatch.setenv("EXPUNGE_SECRET", "correct horse battery staple")
    env_store = Store.init(tmp_path / "env")
    with pytest.raises(BadInput) as e:
        rotate(env_store)
    assert str(e.value) == ("key rotate needs the store's key in a key file, and this store's comes from "
                            "$EXPUNGE_SECRET; run `expunge key migrate` first to move it to a key file")
    monkeypatch.delenv("EXPUNGE_SECRET")
    store = Store.init(tmp_path / "old")
    _make_old_style(store)
    with pytest.warns(keys.KeyInsideStore):
        old = Store.open(store.root)
    gen = old.generation()
    with pytest.raises(BadInput) as e:
        rotate(old)
    assert str(e.value) == (f"the key sits inside the store ({store.root / 'secret.key'}); run "
                            "`expunge key migrate --rotate` instead")
    assert old.generation() == gen and (store.root / "secret.key").exists()
