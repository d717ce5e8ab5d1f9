"""Survivors of the mutation run over orchestrator/residuals.py: the residual copies of a request, written out by
hand for a lineage without training (a model file retired by the request's plan): present, then missing once
deleted by hand (not purged), and the policy's purge setting reported."""

from __future__ import annotations

import hashlib

from expunge.orchestrator import execute, planner
from expunge.orchestrator import requests as rq
from expunge.orchestrator.policy import load_policy, set_store_policy, store_policy
from expunge.orchestrator.residuals import residuals
from tests.conftest import approver_keys


def test_a_retired_models_file_is_a_residual_present_then_missing(store, tmp_path):
    store.ingest_source({"s": [f"s{i}" for i in range(4)], "r": [f"r{i}" for i in range(4)]}, name="d",
                        subject_col="s", record_col="r")
    model = tmp_path / "base.pt"
    model.write_bytes(b"weights of base")
    sha = hashlib.sha256(b"weights of base").hexdigest()
    store.record_run({"run": {"name": "base-1", "trainer": "pkg.mod:train", "cost": {"wall_seconds": 36000.0},
                              "inputs": [{"dataset": "d@1", "rows": ["r0", "r1", "r2"]}]},
                      "models": [{"name": "base", "path": str(model)}]})
    keys = approver_keys(store, tmp_path / "keys")
    policy_file = tmp_path / "keys" / "policy.toml"
    text = policy_file.read_text().replace("allow_retire = false", "allow_retire = true")
    policy_file.write_text(text)
    set_store_policy(store, policy_file)
    req = rq.create(store, ["s1"], policy=store_policy(store)).id
    doc = planner.make_plan(store, [req], store_policy(store))
    planner.save_plan(store, doc)
    planner.approve(store, doc["id"], keys["ana"])
    assert [i["chosen"]["action"] for i in doc["items"]] == ["retire"]
    execute.run_plan(store, doc["id"], finish=False)
    entry = {"model": "base@1", "kind": "model", "path": str(model), "sha256": sha, "state": "present",
             "why": "retired by the request's plan"}
    assert residuals(store, req) == {"request": req, "plans": [doc["id"]], "purge_by_policy": False,
                                     "residuals": [entry]}
    model.unlink()  # deleted by hand, not by a purge
    assert residuals(store, req)["residuals"] == [{**entry, "state": "missing"}]
    (tmp_path / "purging.toml").write_text(text.replace("purge = false", "purge = true"))
    assert residuals(store, req, load_policy(tmp_path / "purging.toml"))["purge_by_policy"] is True
