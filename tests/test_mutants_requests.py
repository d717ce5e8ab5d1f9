"""Erasure requests at their edges (one-day deadline, several at once, duplicates, the whole status lifecycle
spelled out by hand): kills mutants of requests.py the other tests let live (bench/mutation.py)."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest

from expunge.errors import BadInput, UnknownReference
from expunge.orchestrator import requests as rq

NOW = datetime(2026, 1, 31, 12, 0)

# The lifecycle as the module docstring states it, written out here independently of rq.NEXT.
ALLOWED = {("received", "planned"), ("received", "failed"), ("planned", "planned"), ("planned", "approved"),
           ("planned", "failed"), ("approved", "executing"), ("approved", "planned"), ("approved", "failed"),
           ("executing", "verified"), ("executing", "failed"), ("verified", "closed"), ("verified", "failed"),
           ("failed", "planned")}


def test_a_one_day_deadline_is_the_shortest(store):
    r = rq.create(store, ["a"], deadline_days=1, now=NOW)
    assert (r.received_at, r.deadline_at) == (NOW, NOW + timedelta(days=1))
    with pytest.raises(BadInput, match=r"^the deadline must be between 1 and 36,500 days \(got 0\)$"):
        rq.create(store, ["a"], deadline_days=0, now=NOW)
    r = rq.create(store, ["a"], deadline_days=36_500, now=NOW)  # the longest
    assert r.deadline_at == NOW + timedelta(days=36_500)
    with pytest.raises(BadInput, match=r"\(got 36,501\)$"):
        rq.create(store, ["a"], deadline_days=36_501, now=NOW)
    with pytest.raises(BadInput, match="at least one --subject"):
        rq.create(store, [], now=NOW)


def test_several_requests_in_one_write_keep_their_order_and_count_distinct_subjects(store):
    out = rq.create_many(store, [dict(subjects=["a", "b", "a"], reason="r1"),
                                 dict(subjects=["c"], category="health", deadline_days=2)], now=NOW)
    assert [(r.id, r.subjects, r.category, r.reason, r.status) for r in out] == [
        ("req-000001", 2, "default", "r1", "received"), ("req-000002", 1, "health", None, "received")]
    assert out[0].deadline_at == NOW + timedelta(days=30) and out[1].deadline_at == NOW + timedelta(days=2)
    assert out[0].to_dict() == {"id": "req-000001", "received_at": "2026-01-31T12:00:00Z",
                                "deadline_at": "2026-03-02T12:00:00Z", "category": "default", "reason": "r1",
                                "status": "received", "subjects": 2}
    third = rq.create(store, ["d"], now=NOW)
    assert third.id == "req-000003"
    # Two requests sharing no subject: 3 distinct hashes; the same request twice: still 2.
    assert rq.subject_hashes(store, ["req-000001", "req-000002"]).shape == (3, 2)
    assert rq.subject_hashes(store, ["req-000001", "req-000001"]).shape == (2, 2)
    expected = store.hasher.hash_many(["a", "b"])
    got = rq.subject_hashes(store, ["req-000001"])
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, np.asarray(expected).tolist()))


def test_listing_and_getting(store):
    with pytest.raises(UnknownReference, match="unknown request 'req-000001'"):
        rq.get(store, "req-000001")
    assert rq.list_requests(store) == [] and rq.list_requests(store, "received") == []
    with pytest.raises(UnknownReference):
        rq.subject_hashes(store, ["req-000001"])
    a, b = rq.create(store, ["a"], now=NOW), rq.create(store, ["b"], now=NOW)
    with store.write() as txn:
        rq.set_status(txn, b.id, "planned")
    assert [r.id for r in rq.list_requests(store)] == [a.id, b.id]
    assert [r.id for r in rq.list_requests(store, "planned")] == [b.id]
    assert rq.get(store, b.id).status == "planned"


@pytest.mark.parametrize("start", rq.STATUSES)
def test_every_transition_of_the_lifecycle(store, start):
    path = {"received": [], "planned": ["planned"], "approved": ["planned", "approved"],
            "executing": ["planned", "approved", "executing"],
            "verified": ["planned", "approved", "executing", "verified"],
            "closed": ["planned", "approved", "executing", "verified", "closed"], "failed": ["failed"]}[start]
    for target in rq.STATUSES:
        r = rq.create(store, ["x"], now=NOW)
        with store.write() as txn:
            for st in path:
                rq.set_status(txn, r.id, st)
        ok = (start, target) in ALLOWED
        with store.write() as txn:
            if ok:
                rq.set_status(txn, r.id, target)
            else:
                with pytest.raises(BadInput, match=f"^request {r.id} is {start}; it cannot become {target}$"):
                    rq.set_status(txn, r.id, target)
        assert rq.get(store, r.id).status == (target if ok else start)


def test_moving_several_requests_is_all_or_none(store):
    a, b = rq.create(store, ["a"], now=NOW), rq.create(store, ["b"], now=NOW)
    with store.write() as txn:
        rq.set_status(txn, b.id, "failed")
    with pytest.raises(BadInput, match=f"request {b.id} is failed; it cannot become failed"):
        with store.write() as txn:  # a may fail, b has already: neither moves
            rq.set_status_many(txn, [a.id, b.id], "failed")
    assert rq.get(store, a.id).status == "received"
    with pytest.raises(UnknownReference, match="unknown request 'req-000009'"):
        with store.write() as txn:
            rq.set_status_many(txn, [a.id, "req-000009"], "planned")
    with store.write() as txn:
        rq.set_status_many(txn, [a.id, b.id], "planned")
    assert [rq.get(store, x.id).status for x in (a, b)] == ["planned", "planned"]
    with pytest.raises(UnknownReference, match="unknown request 'req-000009'"):
        with store.write() as txn:
            rq.set_status(txn, "req-000009", "planned")


def test_a_status_move_is_one_audit_event_naming_both_states(store):
    from expunge import audit

    a, b = rq.create(store, ["a"], now=NOW), rq.create(store, ["b"], now=NOW)
    with store.write() as txn:
        rq.set_status_many(txn, [a.id, b.id], "planned")
    with store.write() as txn:
        rq.set_status(txn, a.id, "failed")
    moves = [(e["requests"], e["payload"]["to"], e["payload"]["previous"])
             for e in audit.events(store, kind="request_status")]
    assert moves == [([a.id, b.id], "planned", {a.id: "received", b.id: "received"}),
                     ([a.id], "failed", {a.id: "planned"})]
