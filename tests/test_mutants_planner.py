"""The planner on a lineage small enough to price by hand: each test kills mutants of planner.py the other tests
let live (bench/mutation.py; bench/MUTANTS.md)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from expunge.orchestrator import planner
from expunge.orchestrator import requests as rq
from expunge.orchestrator.policy import load_policy

BK = 0.015  # an action's bookkeeping on a store that has done none yet (costs.BOOKKEEPING_PRIOR)

SHA = "0" * 64


@pytest.fixture
def lineage(store):
    """d@1: subject si owns record ri; base-1 trained 10 hours on r0–r4 (s1's r1 among them)."""
    store.ingest_source({"s": [f"s{i}" for i in range(10)], "r": [f"r{i}" for i in range(10)]}, name="d",
                        subject_col="s", record_col="r")
    store.record_run({"run": {"name": "base-1", "trainer": "pkg.mod:train", "cost": {"wall_seconds": 36000.0},
                              "inputs": [{"dataset": "d@1", "rows": ["r0", "r1", "r2", "r3", "r4"]}]},
                      "models": [{"name": "base", "sha256": SHA}]})
    return store


def test_a_retrain_is_priced_in_seconds_and_dollars_by_hand(lineage):
    doc = planner.make_plan(lineage, [rq.create(lineage, ["s1"]).id], load_policy(None))
    (item,) = doc["items"]
    # 4 of 5 records remain: 36,000 s × 4/5 = 28,800 s = 8 CPU hours at $0.05 an hour = $0.40 (the bookkeeping's
    # 15 ms adds $0.0000002, rounded away).
    assert (item["chosen"]["action"], item["chosen"]["seconds"], item["chosen"]["cost"]) == \
        ("full_retrain", 28800.0 + BK, 0.4)
    assert item["candidates"][0]["cost"] == 0.4
    assert item["chosen"]["reasons"][-1] == \
        "+ 15 ms looking up and recording (no action done on this store yet to measure it: a typical figure)"
    assert (item["retrain_seconds"], item["retrain_cost"]) == (36000.0 + BK, 0.5)


def test_a_fresh_plan_has_no_verified_approvals(lineage):
    doc = planner.make_plan(lineage, [rq.create(lineage, ["s1"]).id], load_policy(None))
    assert "approvals" not in doc and planner.verified_approvals(lineage, doc) == []


def test_plan_list_names_the_plans_requests(lineage):
    rid = rq.create(lineage, ["s1"]).id
    pid = planner.save_plan(lineage, planner.make_plan(lineage, [rid], load_policy(None)))
    (listed,) = planner.list_plans(lineage)
    assert {k: listed[k] for k in ("id", "requests", "models", "blocked", "subjects", "approvals",
                                   "approvals_needed", "superseded_by", "state")} == \
        {"id": pid, "requests": [rid], "models": 1, "blocked": 0, "subjects": {"requested": 1, "found": 1},
         "approvals": 0, "approvals_needed": 1, "superseded_by": None, "state": "planned"}
    assert planner.list_plans(lineage, rid) == [listed] and planner.list_plans(lineage, "req-999999") == []


def test_a_stale_plan_says_first_how_many_records_it_erases_now(lineage, tmp_path):
    doc = planner.make_plan(lineage, [rq.create(lineage, ["s1"]).id], load_policy(None))
    # s1 gets a second record (r10, in d@2), and a new run trains on it: two changes since the plan.
    lineage.ingest_source({"s": ["s1", "s2"], "r": ["r10", "r2"]}, name="d", subject_col="s", record_col="r")
    lineage.record_run({"run": {"name": "other-1", "trainer": "pkg.mod:train", "cost": {"wall_seconds": 1.0},
                                "inputs": [{"dataset": "d@2"}]}, "models": [{"name": "other", "sha256": SHA}]})
    why = planner.stale_reason(lineage, doc, load_policy(None))
    assert why == "2 erased records now, 1 then; other@1 is affected now"


def test_plan_list_gives_the_plans_seconds(lineage):
    pid = planner.save_plan(lineage, planner.make_plan(lineage, [rq.create(lineage, ["s1"]).id], load_policy(None)))
    (listed,) = planner.list_plans(lineage)
    # The retrain of base on 4 of its 5 records: 36,000 s × 4/5.
    assert (listed["id"], listed["total_seconds"]) == (pid, 28800.0 + BK)


def test_a_stale_plan_names_the_action_the_model_would_get_now(lineage):
    doc = planner.make_plan(lineage, [rq.create(lineage, ["s1"]).id], load_policy(None))
    assert doc["items"][0]["chosen"]["action"] == "full_retrain"
    # Withdrawn since, base costs nothing to retire (policy retire_withdrawn, on by default): a retrain → retire.
    lineage.set_model_stage("base@1", "archived", reason="withdrawn")
    assert planner.stale_reason(lineage, doc, load_policy(None)) == "base@1: full_retrain → retire"


def test_many_requests_are_planned_by_category(lineage, monkeypatch):
    # Beyond BATCH_EXACT requests, one group per category: s1's (base's r1) and s3's (r3), both default.
    monkeypatch.setattr(planner, "BATCH_EXACT", 1)
    ids = [rq.create(lineage, [s]).id for s in ("s1", "s3")]
    doc = planner.make_plan(lineage, ids, load_policy(None))
    (item,) = doc["items"]
    # 3 of 5 records remain: 36,000 s × 3/5 = 21,600 s = 6 CPU hours at $0.05 = $0.30; no per-request comparison.
    assert (item["model"], item["chosen"]["action"], item["chosen"]["seconds"], item["chosen"]["cost"]) == \
        ("base@1", "full_retrain", 21600.0 + BK, 0.3)
    assert doc["records"] == 2 and "batching" not in doc


def test_a_certified_runs_iterations_are_the_gradient_passes_it_counted(store):
    store.ingest_source({"s": ["s0", "s1"], "r": ["r0", "r1"]}, name="d", subject_col="s", record_col="r")
    store.record_run({"run": {"name": "cert-1", "trainer": "pkg.mod:train", "cost": {"wall_seconds": 1.0},
                              "config": {"max_iter": 50}, "extra": {"certified_removal": {"gradient_passes": 7}},
                              "inputs": [{"dataset": "d@1"}]},
                      "models": [{"name": "cert", "sha256": SHA}]})
    store.record_run({"run": {"name": "plain-1", "trainer": "pkg.mod:train", "cost": {"wall_seconds": 1.0},
                              "config": {"max_iter": 50}, "inputs": [{"dataset": "d@1"}]},
                      "models": [{"name": "plain", "sha256": SHA}]})
    catalog = planner._Catalog(store)
    # The passes the trainer counted (7), not its cap (50); a run without a certificate: the cap.
    assert (catalog.run_facts("cert-1")["iterations"], catalog.run_facts("plain-1")["iterations"]) == (7, 50)


def test_bookkeeping_is_the_median_of_the_done_actions(store):
    from expunge.orchestrator import execute

    assert planner.bookkeeping(store) == (0.0, 0)
    details = [("done", {"bookkeeping_seconds": 0.5}), ("done", {"bookkeeping_seconds": 4.0}),
               ("done", {"bookkeeping_seconds": 1.5}), ("failed", {"bookkeeping_seconds": 100.0}),
               ("done", {"other": 1})]
    with store.write() as txn:
        txn.con.execute(execute.DDL)
        for pos, (state, detail) in enumerate(details):
            txn.con.execute("INSERT INTO execution_actions VALUES ('p', ?, 'm@1', 'full_retrain', ?, NULL, 1, 1, 1, "
                            "NULL, NULL, 1, ?, NULL)", [pos, state, json.dumps(detail)])
    # The three done actions that measured it: 0.5, 1.5, 4.0 → 1.5.
    assert planner.bookkeeping(store) == (1.5, 3)


def test_batched_requests_give_a_model_the_earliest_deadline(lineage):
    # s1's health request (14 days) first, then s3's default one (30 days); both reach base.
    first = rq.create(lineage, ["s1"], category="health")
    second = rq.create(lineage, ["s3"])
    doc = planner.make_plan(lineage, [first.id, second.id], load_policy(None))
    (item,) = doc["items"]
    want = first.received_at + timedelta(days=14)
    assert second.received_at + timedelta(days=30) > want
    assert item["deadline"] == want.isoformat() + "Z" == doc["deadline"]
    assert item["required_guarantee"] == "exact"


def test_a_runs_catalog_write_is_priced_at_the_median_of_the_last_runs(store):
    """`record_write`: the median `record_write_seconds` of the store's newest BOOKKEEPING_SAMPLE runs that measured
    one (a run's own is the write before it: after an ingest, the ingest's)."""
    store.ingest_source({"sid": ["a"], "rid": ["r1"]}, name="src", subject_col="sid", record_col="rid")
    assert planner.record_write(store) is None
    assert planner.BOOKKEEPING_SAMPLE == 20
    # Oldest first: 9.0 falls outside the newest 20 that measured one; the run without one is skipped, not counted.
    values = [9.0] + [1.0, 3.0] * 5 + [None] + [1.0, 3.0] * 5
    for k, v in enumerate(values):
        extra = {"record_write_seconds": v} if v is not None else {"other": 1}
        store.record_run({"run": {"name": f"r-{k}", "inputs": [{"dataset": "src@1"}], "extra": extra}})
    assert planner.record_write(store) == 2.0  # ten 1.0 and ten 3.0
