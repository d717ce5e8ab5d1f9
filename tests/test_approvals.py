"""Signed approvals (issue 9, finding 4): Ed25519 keys named in the store's policy, plans re-derived at approval,
one key one approver, the policy pinned by hash."""

from __future__ import annotations

import json
import os

import pytest

from expunge.errors import BadInput
from expunge.orchestrator import approvals as sig
from expunge.orchestrator import planner
from expunge.orchestrator import requests as rq
from expunge.orchestrator.policy import parse_policy, pinned, store_policy
from tests.conftest import approver_keys

SHA = "0" * 64


@pytest.fixture
def setup(store, tmp_path):
    store.ingest_source({"s": [f"s{i}" for i in range(6)], "r": [f"r{i}" for i in range(6)]}, name="d",
                        subject_col="s", record_col="r")
    store.record_run({"run": {"name": "base-1", "trainer": "pkg.mod:train", "cost": {"wall_seconds": 60.0},
                              "inputs": [{"dataset": "d@1", "rows": ["r0", "r1", "r2", "r3"]}]},
                      "models": [{"name": "base", "sha256": SHA}]})
    keys = approver_keys(store, tmp_path / "keys", names=("ana", "bob", "eve"), approvers=2)
    return store, keys


def planned(store, subject="s0", policy=None) -> dict:
    r = rq.create(store, [subject], policy=store_policy(store))
    doc = planner.make_plan(store, [r.id], policy or store_policy(store))
    planner.save_plan(store, doc)
    return doc


def test_two_approvals_need_two_keys(setup):
    store, keys = setup
    doc = planned(store)
    got = planner.approve(store, doc["id"], keys["ana"])
    assert rq.get(store, doc["requests"][0]).status == "planned"  # 1 of 2
    with pytest.raises(BadInput, match="already approved"):
        planner.approve(store, doc["id"], keys["ana"])
    got = planner.approve(store, doc["id"], keys["bob"])
    assert [a["by"] for a in got["approvals"]] == ["ana", "bob"]
    assert rq.get(store, doc["requests"][0]).status == "approved"
    # Each signature checks against the pinned policy's keys, and a forged one does not.
    assert len(planner.verified_approvals(store, got)) == 2
    forged = dict(got, approvals=[dict(got["approvals"][0], signature=got["approvals"][1]["signature"])])
    assert planner.verified_approvals(store, forged) == []


def test_one_key_under_two_names_is_one_approver(tmp_path):
    line = " ".join(sig.keygen(tmp_path / "k", "x").split()[:2])
    with pytest.raises(BadInput, match="same key"):
        parse_policy({"approval": {"approvers": 2, "keys": {"alice": line, "Alice": line}}}, "t")
    with pytest.raises(BadInput, match="no plan could be approved"):
        parse_policy({"approval": {"approvers": 2, "keys": {"alice": line}}}, "t")


def test_a_key_the_policy_does_not_name_is_refused(setup, tmp_path):
    store, _ = setup
    doc = planned(store)
    sig.keygen(tmp_path / "stranger.key", "stranger")
    with pytest.raises(BadInput, match="is not an approver's"):
        planner.approve(store, doc["id"], tmp_path / "stranger.key")
    os.chmod(tmp_path / "stranger.key", 0o644)
    with pytest.raises(BadInput, match="readable or writable by others"):
        planner.approve(store, doc["id"], tmp_path / "stranger.key")


def test_a_forged_plan_with_a_recomputed_id_is_stale(setup):
    """Every item edited to "no action" and the id recomputed: the plan is consistent with itself, but made
    again from the store it comes out different."""
    store, keys = setup
    doc = planned(store)
    forged = json.loads(json.dumps(doc))
    for item in forged["items"]:
        item["chosen"] = {**item["chosen"], "action": "no_action", "seconds": 0.0, "action_seconds": 0.0}
    forged["id"] = planner.plan_hash(forged)
    planner.save_plan(store, forged)
    with pytest.raises(BadInput, match=r"is stale.*base@1: full_retrain → no_action|is stale.*no_action"):
        planner.approve(store, forged["id"], keys["ana"])


def test_a_plan_made_before_a_new_model_trained_on_the_subject_is_stale(setup):
    store, keys = setup
    doc = planned(store)
    store.record_run({"run": {"name": "new-1", "trainer": "pkg.mod:train", "cost": {"wall_seconds": 5.0},
                              "inputs": [{"dataset": "d@1", "rows": ["r0", "r5"]}]},
                      "models": [{"name": "newer", "sha256": SHA}]})
    with pytest.raises(BadInput, match="stale.*newer@1 is affected now"):
        planner.approve(store, doc["id"], keys["ana"])


def test_the_approver_count_comes_from_the_stores_pinned_policy(setup, tmp_path):
    """A plan made under another policy file (say one asking for a single approver) cannot be approved: only
    plans made under the store's policy can, and that policy is read from the store's pinned copy."""
    store, keys = setup
    lax = tmp_path / "lax.toml"
    lax.write_text((tmp_path / "keys" / "policy.toml").read_text().replace("approvers = 2 ", "approvers = 1 "))
    from expunge.orchestrator.policy import load_policy

    doc = planned(store, policy=load_policy(lax))
    with pytest.raises(BadInput, match="not the store's policy"):
        planner.approve(store, doc["id"], keys["ana"])
    # The pinned copy is checked against its hash.
    own = planned(store, "s1")
    path = store.root / "policies" / f"{own['policy']['sha256']}.json"
    path.write_text(path.read_text().replace('"approvers":2', '"approvers":1'))
    with pytest.raises(BadInput, match="changed after it was pinned"):
        pinned(store, own["policy"]["sha256"])
    with pytest.raises(BadInput, match="changed after it was pinned"):
        planner.approve(store, own["id"], keys["ana"])


def test_no_approver_keys_no_approval(store):
    store.ingest_source({"s": ["a"], "r": ["1"]}, name="d", subject_col="s", record_col="r")
    r = rq.create(store, ["a"])
    doc = planner.make_plan(store, [r.id], store_policy(store))
    planner.save_plan(store, doc)
    (store.root.parent / "k").parent.mkdir(exist_ok=True)
    sig.keygen(store.root.parent / "k", "x")
    with pytest.raises(BadInput, match="names no approvers"):
        planner.approve(store, doc["id"], store.root.parent / "k")
