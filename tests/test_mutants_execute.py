"""Survivors of the mutation run over orchestrator/execute.py, killed on a lineage small enough to follow by
hand: no training runs, so a whole plan executes in about a second."""

from __future__ import annotations

import json

import pytest

from expunge.lineage.forget import tombstones
from expunge.orchestrator import execute, planner
from expunge.orchestrator import requests as rq
from expunge.orchestrator.policy import set_store_policy, store_policy
from tests.conftest import approver_keys

SHA = "0" * 64


@pytest.fixture
def planned(store, tmp_path):
    """d@1: subject si owns record ri. base-1 trained on r0–r4 (model base, dev); eval-1 only evaluated on
    r5–r9 (model scorer). Requests: A for s1 (base must go: retiring the dev model is cheapest once the policy
    allows it), B for s7 (only evaluated on: no action). One plan for both, approved."""
    store.ingest_source({"s": [f"s{i}" for i in range(10)], "r": [f"r{i}" for i in range(10)]}, name="d",
                        subject_col="s", record_col="r")
    store.record_run({"run": {"name": "base-1", "trainer": "pkg.mod:train", "cost": {"wall_seconds": 36000.0},
                              "inputs": [{"dataset": "d@1", "rows": ["r0", "r1", "r2", "r3", "r4"]}]},
                      "models": [{"name": "base", "sha256": SHA}]})
    store.record_run({"run": {"name": "eval-1", "trainer": "pkg.mod:train", "cost": {"wall_seconds": 10.0},
                              "inputs": [{"dataset": "d@1", "role": "eval",
                                          "rows": ["r5", "r6", "r7", "r8", "r9"]}]},
                      "models": [{"name": "scorer", "sha256": SHA}]})
    keys = approver_keys(store, tmp_path / "keys")
    policy_file = tmp_path / "keys" / "policy.toml"
    policy_file.write_text(policy_file.read_text().replace("allow_retire = false", "allow_retire = true"))
    set_store_policy(store, policy_file)
    a = rq.create(store, ["s1"], policy=store_policy(store)).id
    b = rq.create(store, ["s7"], policy=store_policy(store)).id
    doc = planner.make_plan(store, [a, b], store_policy(store))
    planner.save_plan(store, doc)
    planner.approve(store, doc["id"], keys["ana"])
    return store, doc, a, b


def _details(store, pid) -> dict:
    with store.read() as con:
        rows = con.execute("SELECT model, action, state, detail FROM execution_actions WHERE plan_id = ?",
                           [pid]).fetchall()
    return {m: (a, s, json.loads(d)) for m, a, s, d in rows}


def test_retire_and_no_action_by_hand(planned):
    store, doc, a, b = planned
    assert {i["model"]: i["chosen"]["action"] for i in doc["items"]} == {"base@1": "retire", "scorer@1": "no_action"}
    out = execute.run_plan(store, doc["id"])
    assert out["done"] == out["total"] == 2
    details = _details(store, doc["id"])
    # A retire is all bookkeeping (its whole wall seconds); doing nothing records none.
    with store.read() as con:
        wall = con.execute("SELECT wall_seconds FROM execution_actions WHERE plan_id = ? AND model = 'base@1'",
                           [doc["id"]]).fetchone()[0]
    assert details["base@1"][2].pop("bookkeeping_seconds") == pytest.approx(wall, abs=2e-6)
    assert details == {
        "base@1": ("retire", "done", {"from_stage": "dev"}),
        "scorer@1": ("no_action", "done", {"why": "the records never reached training"})}
    assert execute.model_info(store, "base@1")["stage"] == "archived"
    assert execute.model_info(store, "scorer@1")["stage"] == "dev"


def test_a_completion_stopped_after_the_first_request_forgets_the_second_on_resume(planned):
    """The store forgot request A's subject, then the process stopped before recording it. Run again, the
    completion skips A (its tombstone says it is done) and must still forget B's subject."""
    store, doc, a, b = planned
    real = type(store).forget_subjects
    calls = []

    def forget_then_stop(self, *args, **kw):
        calls.append(args[1])
        real(self, *args, **kw)
        raise KeyboardInterrupt("stopped after one request was forgotten")

    type(store).forget_subjects = forget_then_stop
    try:
        with pytest.raises(KeyboardInterrupt):
            execute.run_plan(store, doc["id"])
    finally:
        type(store).forget_subjects = real
    assert calls == [a] and [t["request_id"] for t in tombstones(store)] == [a]
    out = execute.run_plan(store, doc["id"])
    assert sorted(t["request_id"] for t in tombstones(store)) == sorted([a, b])
    forgotten = out["completed"]["forgotten"]
    # A's deletion is recorded as an uninterrupted one is: its counts from the subjects_forgotten event.
    assert forgotten[a] == {"records_removed": 1, "tombstones_added": 1, "changed": True}
    assert forgotten[b] == {"records_removed": 1, "tombstones_added": 1, "changed": True}
    assert store.impact(["s7"]).found == 0 and store.impact(["s1"]).found == 0
    assert [rq.get(store, r).status for r in (a, b)] == ["verified", "verified"]


# ------------------------------------------------------------------ on the demo: actions that re-run trainers


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo store (no plan run): six models with their checkpoints, and its customer to erase."""
    torch = pytest.importorskip("torch")
    from expunge.demo import build_demo

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        store, subject = build_demo(tmp_path_factory.mktemp("verify-demo"))
        yield store, subject, store.records_of_subjects([subject])
    finally:
        torch.set_num_threads(threads)


def test_a_chain_retrain_records_its_stepping_stones_archived(demo, tmp_path):
    """A full retrain of churn-ft (fine-tuned from churn-mlp) retrains its chain from scratch: churn-mlp's run
    again without the records — a stepping stone, recorded archived (never promoted), with no parent —, then
    churn-ft's from it, recorded with the new stage. No action of churn-mlp's own ran before (in a plan it
    would be adopted when it too is a scratch retrain), so the chain makes the stepping stone here."""
    import torch

    from expunge.orchestrator.policy import store_policy
    from expunge.orchestrator.rerun import recorded_request
    from expunge.orchestrator.trainers import TrainRequest, mlp

    store, subject, erased = demo
    doc = planner.make_plan(store, [rq.create(store, [subject], policy=store_policy(store)).id], store_policy(store))
    ctx = execute.Context(store, doc, erased)
    out = execute._full_retrain(ctx, {"model": "churn-ft@1"})
    assert out.detail == {"runs": 2}
    made = execute.model_info(store, out.new_model)
    (parent,) = made["parents"]
    assert parent["relation"] == "fine-tune" and made["stage"] == execute.NEW_STAGE == "dev"
    stone = execute.model_info(store, parent["model"])
    assert (stone["name"], stone["stage"], stone["parents"]) == ("churn-mlp", "archived", [])
    assert stone["run"] == f"churn-mlp-1.x{doc['id'][:8]}.s"
    # The stepping stone is churn-mlp trained without the records (the trainer called here directly).
    rec = recorded_request(store, "churn-mlp-1")
    ref = mlp.train(TrainRequest(store=store, run_name="ref-stone", inputs=rec["inputs"], config=rec["config"],
                                 seed=rec["seed"], out_dir=tmp_path, trainer=mlp.ENTRY_POINT, model_name="ref-stone",
                                 exclude_records=erased))
    want = torch.load(execute.model_info(store, ref["models"][0]["id"])["path"], weights_only=True)["model"]
    got = torch.load(stone["path"], weights_only=True)["model"]
    assert all(torch.equal(got[k], want[k]) for k in want)


def _ctx(store, subject, erased, category="default"):
    from expunge.orchestrator.policy import store_policy

    doc = planner.make_plan(store, [rq.create(store, [subject], category=category, policy=store_policy(store)).id],
                            store_policy(store))
    return execute.Context(store, doc, erased)


def test_refusals_of_a_replay_and_a_rederivation_that_cannot_run(demo):
    """churn-mlp reads every row each epoch and checkpoints at epoch ends, so no checkpoint precedes the subject's
    first row; churn-student cannot be re-derived before its teacher has a new version."""
    store, subject, erased = demo
    ctx = _ctx(store, subject, erased)
    with pytest.raises(execute.ActionFailed) as e:
        execute._clean_step(ctx, "churn-mlp-1")
    assert str(e.value) == "run churn-mlp-1: no checkpoint before the records were first seen"
    with pytest.raises(execute.ActionFailed) as e:
        execute._rederive(ctx, {"model": "churn-student@1", "after": ["churn-ft@1"]})
    assert str(e.value) == "churn-student@1: its parent(s) churn-ft@1 have no new version to re-derive from"


def test_a_shard_retrain_names_the_checkpoint_it_resumed_from(demo):
    """The subject's rows are in shard 1's last slice (2, the newest customers; the impact says so): the shard is
    retrained from its slice-1 checkpoint, which the outcome names (as reproduction reads it), under the run's
    name for the plan's own action."""
    store, subject, erased = demo
    (hit,) = [s for s in next(r for r in store.impact([subject]).runs if r["id"] == "churn-sisa-1")["shards"]
              if s["first_slice"] is not None]
    assert (hit["shard"], hit["first_slice"]) == (1, 2)
    ctx = _ctx(store, subject, erased)
    out = execute._sisa_shards(ctx, {"model": "churn@1"})
    assert out.detail == {"shards": {"1": "shard1-slice1.pt"}}
    assert execute.model_info(store, out.new_model)["run"] == f"churn-sisa-1.x{ctx.tag}"


def test_a_plan_that_only_retires_or_does_nothing_imports_no_trainer(planned, monkeypatch):
    """`import torch` made to fail: a plan of no_action and retire items never reaches it; one with a retrain does."""
    import sys

    store, doc, a, b = planned
    monkeypatch.setitem(sys.modules, "torch", None)
    items = [{"chosen": {"action": "no_action"}, "model": "scorer@1"}, {"chosen": {"action": "retire"},
                                                                        "model": "base@1"}]
    execute._import_trainers(store, items, None)
    with pytest.raises(ImportError):
        execute._import_trainers(store, items + [{"chosen": {"action": "full_retrain"}, "model": "base@1"}], None)


def test_a_second_run_skips_the_actions_done_and_checked(planned):
    """Run again, every action done and checked is skipped: not executed again (retiring an archived model
    would record that it came from `archived`)."""
    store, doc, a, b = planned
    execute.run_plan(store, doc["id"], finish=False)
    first = _details(store, doc["id"])
    events = []
    execute.run_plan(store, doc["id"], finish=False, on_event=lambda kind, info: events.append((kind, info["position"])))
    assert events == [("skip", 0), ("skip", 1)]
    # Unchanged, measured seconds included: the retire was not done again (it would say `archived`).
    assert _details(store, doc["id"]) == first
    assert {k: v for k, v in first["base@1"][2].items() if k != "bookkeeping_seconds"} == {"from_stage": "dev"}


def test_an_action_failing_in_a_worker_is_recorded_and_reported_in_one_line(store, tmp_path):
    """`--jobs 2`: base's full retrain fails in its worker process (its trainer, pkg.mod, is not one the policy
    allows): the action is recorded failed with the reason, and the run stops with the serial run's message."""
    store.ingest_source({"s": [f"s{i}" for i in range(4)], "r": [f"r{i}" for i in range(4)]}, name="d",
                        subject_col="s", record_col="r")
    store.record_run({"run": {"name": "base-1", "trainer": "pkg.mod:train", "cost": {"wall_seconds": 10.0},
                              "inputs": [{"dataset": "d@1", "rows": ["r0", "r1", "r2"]}]},
                      "models": [{"name": "base", "sha256": SHA}]})
    keys = approver_keys(store, tmp_path / "keys")
    set_store_policy(store, tmp_path / "keys" / "policy.toml")
    doc = planner.make_plan(store, [rq.create(store, ["s1"], policy=store_policy(store)).id], store_policy(store))
    planner.save_plan(store, doc)
    planner.approve(store, doc["id"], keys["ana"])
    assert [i["chosen"]["action"] for i in doc["items"]] == ["full_retrain"]
    with pytest.raises(execute.ActionFailed) as e:
        execute.run_plan(store, doc["id"], jobs=2)
    msg = str(e.value)
    assert msg.startswith("base@1: full_retrain failed: ") and "pkg.mod" in msg and "\n" not in msg
    (state, error), = [(s, err) for _, _, s, err in _rows(store, doc["id"])]
    assert state == "failed" and msg.endswith(error)


def _rows(store, pid):
    with store.read() as con:
        return con.execute("SELECT model, action, state, error FROM execution_actions WHERE plan_id = ?",
                           [pid]).fetchall()
