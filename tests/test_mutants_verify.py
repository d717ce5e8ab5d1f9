"""Survivors of the mutation run over orchestrator/verify.py, killed by tests whose expected values are computed
here: a certificate check on a freshly trained certified model (its budget by hand from the recorded
certificate), and `expunge verify` recording one check per action that ran."""

from __future__ import annotations

from pathlib import Path

import pytest

from expunge.orchestrator import execute, verify
from tests.test_mutants_execute import demo, planned  # noqa: F401  (fixtures)
from tests.test_verify import memorised  # noqa: F401


def _checks(store, pid) -> int:
    with store.read() as con:
        return con.execute("SELECT count(*) FROM action_checks WHERE plan_id = ?", [pid]).fetchall()[0][0]


def test_verify_records_one_check_per_action_that_ran(planned):  # noqa: F811
    store, doc, a, b = planned
    execute.run_plan(store, doc["id"], finish=False)
    before = _checks(store, doc["id"])
    assert before == 2  # each action checked once as it ran
    got = verify.verify_plan(store, doc["id"])
    assert got["passed"] and got["source"] == "computed"
    assert [(c["model"], c["kind"], c["passed"]) for c in got["checks"]] == \
        [("base@1", "retired", True), ("scorer@1", "no_action", True)]
    assert _checks(store, doc["id"]) == before + 2


def test_a_certified_models_certificate_check_by_hand(store, tmp_path):
    torch = pytest.importorskip("torch")  # noqa: F841
    from tests.test_trainers import train_certified

    table, req, cert = train_certified(store, tmp_path, 120, 4, seed=3, lam=0.02, sigma=2.0)
    none = store.hasher.hash_many([])
    res = verify.certificate_check(store, none, "churn-cr@1")
    left = cert["removal_budget"] - cert["train_grad_norm"]  # nothing spent yet
    assert (res["verdict"], res["reasons"]) == ("pass", [])
    m = res["metrics"]
    assert (m["artifact"], m["erased_records_in_run"], m["budget_spent"]) == ("ok", 0, 0.0)
    assert m["budget_left"] == pytest.approx(left, rel=1e-12)
    assert verify.key_metrics(res).startswith(
        f"ε={cert['epsilon']:g} δ={cert['delta']:g} bound=0 left={left:.3g}")
    # A subject the run trained on: its own run still holds the subject's records (counted in the table here).
    ids = table.column("customer_id").to_pylist()
    subject = ids[0]
    res = verify.certificate_check(store, store.hasher.hash_many([subject]), "churn-cr@1")
    assert res["verdict"] == "fail" and res["reasons"] == [
        f"churn-cr@1's own run still holds {ids.count(subject)} erased record(s)"]


def test_the_thresholds_recorded_are_those_of_the_checks_kind(memorised):  # noqa: F811
    import copy

    forget, retain, nonmembers, original, retrained = memorised
    kw = dict(max_mia_auc=0.55, max_mia_auc_gap=0.05, max_accuracy_drop=0.02)
    res = verify.membership_check(original, copy.deepcopy(original), forget, retain, nonmembers, kind="mia", **kw)
    assert res["metrics"]["thresholds"] == {"max_mia_auc": 0.55, "max_accuracy_drop": 0.02}
    res = verify.membership_check(original, copy.deepcopy(original), forget, retain, nonmembers,
                                  kind="mia_retrained", reference=retrained, **kw)
    assert res["metrics"]["thresholds"] == {"max_mia_auc_gap": 0.05, "max_accuracy_drop": 0.02}


# ------------------------------------------------------------------ re-runs that start from recorded weights


def _weights(path) -> dict:
    import torch

    return torch.load(path, weights_only=True)["model"]


def test_a_fine_tune_reproduced_unrecorded_is_the_recorded_file(demo, tmp_path):  # noqa: F811
    """churn-ft was fine-tuned from churn-mlp's weights: its trainer called again from the parent's file gives
    the very bytes the store recorded when the demo trained it."""
    from expunge.lineage.runs import sha256_file

    store, _, _ = demo
    parent = execute.model_info(store, "churn-mlp@1")["path"]
    path = verify.train_unrecorded(store, "churn-finetune-1", tmp_path, init_model=parent)
    assert sha256_file(path) == execute.model_info(store, "churn-ft@1")["sha256"]


def test_a_replay_from_a_checkpoint_resumes_there(demo, tmp_path):  # noqa: F811
    """churn-mlp's run resumed from its epoch-3 checkpoint without the subject's records: the trainer's own
    resume (a TrainRequest to mlp.train, recorded under another name) gives the same weights; training from
    scratch without them gives others, so the check tells the two apart."""
    import torch

    from expunge.orchestrator.rerun import recorded_request
    from expunge.orchestrator.trainers import TrainRequest, mlp

    store, _, erased = demo
    ckpt = execute.checkpoint_path(store, "churn-mlp-1", step=39)
    assert ckpt.endswith("epoch3.pt")
    got = verify.train_unrecorded(store, "churn-mlp-1", tmp_path / "a", exclude=erased, start_checkpoint=ckpt)
    rec = recorded_request(store, "churn-mlp-1")
    out = mlp.train(TrainRequest(store=store, run_name="ref-resumed", inputs=rec["inputs"], config=rec["config"],
                                 seed=rec["seed"], out_dir=tmp_path / "b", trainer=mlp.ENTRY_POINT,
                                 model_name="ref-resumed", exclude_records=erased, start_checkpoint=Path(ckpt)))
    want = _weights(execute.model_info(store, out["models"][0]["id"])["path"])
    scratch = _weights(verify.train_unrecorded(store, "churn-mlp-1", tmp_path / "c", exclude=erased))
    assert all(torch.equal(_weights(got)[k], want[k]) for k in want)
    assert not all(torch.equal(scratch[k], want[k]) for k in want)


def test_a_retrained_reference_check_of_a_fine_tuned_model_is_inconclusive(demo, tmp_path):  # noqa: F811
    """A `mia_retrained` check needs the model retrained without the records; for a fine-tuned model that means
    retraining its chain, which the check does not do: the verdict is inconclusive and says why."""
    from expunge.orchestrator.policy import store_policy

    store, _, erased = demo
    data = verify.ItemData(store, "churn-ft@1", erased)
    res = verify.approximate_check(data, "churn-ft@1", store_policy(store), "mia_retrained", tmp_path)
    assert (res["verdict"], res["passed"]) == ("inconclusive", False)
    assert res["reasons"][0] == ("no retrained reference: churn-ft@1 is fine-tuned from another model: a retrained "
                                 "reference needs its chain retrained, which the check does not do")


# ------------------------------------------------------------------ the rule, by hand


def _accuracy(model, rows) -> float:
    import torch

    with torch.no_grad():
        return float((model(rows[0]).argmax(1) == rows[1]).float().mean())


def test_an_accuracy_drop_over_the_policys_is_a_reason_and_one_within_is_not(memorised):  # noqa: F811
    import copy

    import torch

    forget, retain, nonmembers, original, retrained = memorised
    kw = dict(kind="mia", max_mia_auc=0.55, max_mia_auc_gap=0.05, max_accuracy_drop=0.02)
    same = verify.membership_check(original, copy.deepcopy(original), forget, retain, nonmembers, **kw)
    assert same["metrics"]["accuracy_drop"]["test"] == 0.0 and not any("accuracy" in r for r in same["reasons"])
    # The scenario's non-members are labelled against the pattern the original learnt (its test accuracy is
    # low): the original with its last layer's sign flipped (the two logits swap) is the better model, and
    # the original, taken as its unlearned result, drops accuracy.
    flipped = copy.deepcopy(original)
    with torch.no_grad():
        for p in list(flipped.parameters())[-2:]:
            p.mul_(-1.0)
    drop = _accuracy(flipped, nonmembers) - _accuracy(original, nonmembers)
    assert drop > 0.02
    res = verify.membership_check(flipped, original, forget, retain, nonmembers, **kw)
    assert res["verdict"] == "fail" and res["metrics"]["accuracy_drop"]["test"] == pytest.approx(drop)
    assert res["reasons"][0] == f"test accuracy dropped {drop * 100:.1f} points, more than the policy's 2.0"


def test_a_result_identical_to_the_retrained_reference_is_at_gap_zero(memorised):  # noqa: F811
    import copy

    forget, retain, nonmembers, original, retrained = memorised
    res = verify.membership_check(original, copy.deepcopy(retrained), forget, retain, nonmembers,
                                  kind="mia_retrained", max_mia_auc=0.55, max_mia_auc_gap=0.05,
                                  max_accuracy_drop=1.0, reference=retrained)
    for attack in ("loss", "learned"):
        m = res["metrics"]["mia"][attack]
        assert m["auc"]["unlearned"] == m["auc"]["retrained"] > 0.3  # the same scores: the same AUC
        assert m["estimate"] == 0.0 and m["ci90"] == [0.0, 0.0] and m["verdict"] == "pass"


# ------------------------------------------------------------------ checks of items on the demo


def _marketing(store, subject):
    """A marketing request's plan, and its items as executed with approximate guarantees (the planner's own choice
    follows seconds measured while the demo trained: churn-mlp unlearned approximately, checked by `mia`; churn-ft
    re-derived from it, as good as its check)."""
    from expunge.orchestrator import planner
    from expunge.orchestrator import requests as rq
    from expunge.orchestrator.policy import store_policy

    doc = planner.make_plan(store, [rq.create(store, [subject], category="marketing",
                                              policy=store_policy(store)).id], store_policy(store))
    chosen = {"churn-mlp@1": "approximate_unlearning", "churn-ft@1": "rederive_from_parent"}
    items = {i["model"]: {**i, "chosen": {**(i["chosen"] or {}), "action": chosen[i["model"]],
                                          "guarantee": "approximate", "check": {"kind": "mia", "seconds": 0.0}}}
             for i in doc["items"] if i["model"] in chosen}
    return doc, items


def test_a_child_rederived_from_an_approximate_parent_inherits_its_check(demo, tmp_path):  # noqa: F811
    """churn-mlp unlearned approximately, churn-ft re-derived from that: its lineage still reaches the records
    (through the approximate parent), so it is as good as the parent's check — a pass once the parent passed,
    a fail while it has not."""
    from expunge.orchestrator.approximate_exec import approximate_unlearning
    from expunge.orchestrator.policy import store_policy

    store, subject, erased = demo
    doc, items = _marketing(store, subject)
    ctx = execute.Context(store, doc, erased)
    parent = approximate_unlearning(ctx, items["churn-mlp@1"], execute.model_info(store, "churn-mlp@1")).new_model
    ctx.new["churn-mlp@1"] = parent
    child = execute._rederive(ctx, items["churn-ft@1"]).new_model
    kw = dict(erased=erased, hashes=store.hasher.hash_many([subject]), policy=store_policy(store), work_dir=tmp_path)
    ok = verify.check_item(store, doc, items["churn-ft@1"], "rederive_from_parent", child, passed={parent: True},
                           **kw)
    assert (ok["kind"], ok["verdict"]) == ("inherited", "pass")
    assert ok["metrics"]["parents"] == [{"model": parent, "reached": True, "passed": True}]
    no = verify.check_item(store, doc, items["churn-ft@1"], "rederive_from_parent", child, passed={}, **kw)
    assert (no["kind"], no["verdict"]) == ("inherited", "fail")


def test_a_result_whose_file_was_changed_fails_its_check_with_the_reason(demo, tmp_path):  # noqa: F811
    import shutil

    from expunge.orchestrator.policy import store_policy

    store, subject, erased = demo
    doc, items = _marketing(store, subject)
    copy = tmp_path / "m.pt"
    shutil.copyfile(execute.model_info(store, "churn-mlp@1")["path"], copy)
    store.record_run({"run": {"name": "copied-1", "inputs": [{"dataset": "customers@1", "role": "train"}]},
                      "models": [{"name": "churn-mlp", "path": str(copy)}]})
    made = execute.model_of_run(store, "copied-1")
    copy.write_bytes(copy.read_bytes() + b"\0")
    res = verify.check_item(store, doc, items["churn-mlp@1"], "approximate_unlearning", made, erased=erased,
                            hashes=store.hasher.hash_many([subject]), policy=store_policy(store), passed={},
                            work_dir=tmp_path)
    assert (res["kind"], res["verdict"]) == ("mia", "fail")
    (why,) = res["reasons"]
    assert why.startswith(f"{copy} is not the file the store recorded")


def test_a_retrained_reference_check_of_fraud_retrains_it_without_the_records(demo, tmp_path):  # noqa: F811
    """fraud's run has a train and an eval input: the reference is its trainer again without the subject's
    transactions (from both), and the comparison is made with it."""
    from expunge.orchestrator.policy import store_policy

    store, subject, erased = demo
    data = verify.ItemData(store, "fraud@1", erased)
    res = verify.approximate_check(data, "fraud@1", store_policy(store), "mia_retrained", tmp_path)
    assert res["kind"] == "mia_retrained" and not any("no retrained reference" in r for r in res["reasons"])
    assert set(res["metrics"]["accuracy"]) == {"original", "unlearned", "retrained"}


def test_a_shard_retrain_is_reproduced_from_the_checkpoint_it_names(demo):  # noqa: F811
    """Reproduction re-runs churn's shard retrain in a fresh process from the slice checkpoint the outcome names
    (shard 1's slice 1, among the shard's three): the recorded file's bytes again."""
    store, subject, erased = demo
    doc, _ = _marketing(store, subject)
    out = execute._sisa_shards(execute.Context(store, doc, erased), {"model": "churn@1"})
    assert out.detail == {"shards": {"1": "shard1-slice1.pt"}}
    rep = verify.reproduce(store, doc["id"], 0, "sisa_shard_retrain", "churn@1", out.new_model, out.detail)
    assert rep == {"done": True, "recorded_sha256": execute.model_info(store, out.new_model)["sha256"],
                   "reproduced_sha256": execute.model_info(store, out.new_model)["sha256"], "same": True}


def test_a_recorded_check_keeps_its_reasons_apart_from_its_metrics():
    rec = {"kind": "retired", "verdict": "fail", "checked_at": "2026-11-30T12:00:00",
           "metrics": {"stage": "dev", "reasons": ["m@1 is dev, not archived"]}}
    assert verify.recheck_recorded(None, rec, None) == {  # no new version: nothing to re-hash, no store read
        "kind": "retired", "verdict": "fail", "passed": False, "reasons": ["m@1 is dev, not archived"],
        "metrics": {"stage": "dev", "recorded_at": "2026-11-30T12:00:00"}}


def test_verify_with_reproduction_records_what_reproduction_said(store, tmp_path):
    """A certified model's removal (or, should its estimate come out dearer, its full retrain) executed; `verify
    --reproduce` notes under `reproduce` that a Newton step is no trainer re-run (a retrain: the same bytes)."""
    from expunge.orchestrator import planner
    from expunge.orchestrator import requests as rq
    from expunge.orchestrator.policy import set_store_policy, store_policy
    from tests.conftest import approver_keys
    from tests.test_trainers import train_certified

    table, _, _ = train_certified(store, tmp_path, 120, 4, seed=3, lam=0.02, sigma=2.0)
    keys = approver_keys(store, tmp_path / "keys")
    policy = tmp_path / "keys" / "policy.toml"
    policy.write_text(policy.read_text().replace("max_premium = 2.0", "max_premium = 1.0"))
    set_store_policy(store, policy)
    req = rq.create(store, [table.column("customer_id")[0].as_py()], category="financial",
                    policy=store_policy(store))
    doc = planner.make_plan(store, [req.id], store_policy(store))
    planner.save_plan(store, doc)
    planner.approve(store, doc["id"], keys["ana"])
    (act,) = execute.run_plan(store, doc["id"], finish=False)["actions"]
    (check,) = verify.verify_plan(store, doc["id"], reproduce_exact=True)["checks"]
    rep = check["metrics"]["reproduce"]
    if act["action"] == "certified_removal":
        assert rep == {"done": False, "why": "certified_removal is not a re-run of a trainer"}
    else:
        assert act["action"] == "full_retrain" and rep["done"] and rep["same"]
