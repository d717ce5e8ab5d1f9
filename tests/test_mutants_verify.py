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
