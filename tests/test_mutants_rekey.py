"""Survivors of the mutation run over lineage/rekey.py: after a key rotation a pending request still names its
subjects (its stored hashes re-hashed like the index), and the rotation's audit event counts what it re-hashed."""

from __future__ import annotations

from expunge import audit
from expunge.lineage.rekey import rotate
from expunge.orchestrator import requests as rq


def test_a_pending_request_still_names_its_subjects_after_a_rotation(store):
    store.ingest_source({"s": ["ann", "bob", "cy"], "r": ["r0", "r1", "r2"]}, name="d", subject_col="s",
                        record_col="r")
    rid = rq.create(store, ["bob", "cy"]).id
    out = rotate(store)
    assert (out["subjects"], out["records"], out["requests"]) == (3, 3, 1)
    # The request's hashes are the new key's hashes of its subjects (hashed afresh here), so it still finds them.
    want = store.hasher.hash_many(["bob", "cy"])
    got = rq.subject_hashes(store, [rid])
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, want.tolist()))
    assert store.impact_hashed(got).records == 2
    (event,) = [e for e in audit.events(store) if e["kind"] == "key_rotated"]
    assert {k: event["payload"][k] for k in ("subjects", "records", "requests_rehashed")} == \
        {"subjects": 3, "records": 3, "requests_rehashed": 1}
    assert len(store.records_of_subjects(["bob"])) == 1


def test_migrate_moves_the_key_where_asked_and_back_and_refuses_another_key(store, tmp_path):
    import pytest

    from expunge.errors import BadInput
    from expunge.lineage import keys
    from expunge.lineage.rekey import migrate

    store.ingest_source({"s": ["ann"], "r": ["r0"]}, name="d", subject_col="s", record_col="r")
    layers, home = store.key_layers, store.key.path
    out = migrate(store)  # already at its default place: nothing moves
    assert (out["moved"], out["key_file"], out["rotated"], out["removed_from_store"]) == (False, str(home), False,
                                                                                           None)
    dest = tmp_path / "keys2" / "k.key"
    dest.parent.mkdir(mode=0o700)
    out = migrate(store, key_file=dest)
    assert (out["moved"], out["key_file"], out["rotated"]) == (True, str(dest), False)
    assert keys.read_key_file(dest) == layers and keys.read_marker(store.root)["key_file"] == str(dest)
    out = migrate(store)  # back to the default place, which still holds the same key: fine, the marker forgets dest
    assert (out["moved"], out["key_file"]) == (True, str(home)) and "key_file" not in keys.read_marker(store.root)
    other = tmp_path / "other.key"
    keys.write_key_file(other, [keys.generate_secret()])
    with pytest.raises(BadInput, match="already holds another key"):
        migrate(store, key_file=other)
    assert store.impact(["ann"]).records == 1


def test_migrating_an_in_store_key_says_which_file_it_removed(tmp_path):
    import warnings

    from expunge.lineage.rekey import migrate
    from expunge.lineage.store import Store
    from tests.test_keys import _make_old_style

    store = Store.init(tmp_path / "st")
    _make_old_style(store)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = Store.open(store.root)
    out = migrate(old)
    assert out["removed_from_store"] == str(store.root / "secret.key") and not (store.root / "secret.key").exists()
    assert out["moved"] and not out["rotated"]
