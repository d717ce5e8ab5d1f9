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
