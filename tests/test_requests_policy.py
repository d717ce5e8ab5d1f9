"""Erasure requests and the policy file."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import jsonschema
import pytest
from typer.testing import CliRunner

from expunge.cli import app
from expunge.errors import BadInput
from expunge.orchestrator import requests as rq
from expunge.orchestrator.policy import load_policy, parse_policy, stronger_or_equal
from expunge.schemas import load_schema
from tests.conftest import all_store_bytes

runner = CliRunner()


def test_default_policy_is_shipped_and_sane():
    p = load_policy(None)
    assert p.category("default").weakest_guarantee == "exact"
    assert p.category("marketing").weakest_guarantee == "approximate"
    assert p.category("health").deadline_days == 14
    assert p.approval_required and p.approvers == 1 and not p.allow_retire


def test_guarantee_order():
    assert stronger_or_equal("exact", "certified") and stronger_or_equal("certified", "certified")
    assert not stronger_or_equal("approximate", "certified")


@pytest.mark.parametrize("doc,needle", [
    ({"categories": {"x": {"weakest_guarantee": "maybe"}}}, "is not one of"),
    ({"categories": {"x": {"deadline_days": 0}}}, "must be positive"),
    ({"approval": {"approvers": 0}}, "at least 1"),
    ({"costs": {"cpu_hour": "cheap"}}, "expected float"),
    ({"surprise": 1}, "unknown key"),
])
def test_bad_policy(doc, needle):
    with pytest.raises(BadInput, match=needle):
        parse_policy(doc, "test")


def test_request_lifecycle_and_privacy(store):
    now = datetime(2026, 11, 1, 12, 0)
    r = rq.create(store, ["alice", "bob", "alice"], category="health", reason="GDPR art. 17", now=now)
    assert (r.id, r.status, r.subjects, r.category) == ("req-000001", "received", 2, "health")
    assert r.deadline_at == now + timedelta(days=14)
    r2 = rq.create(store, ["carol"], deadline_days=3, now=now)
    assert r2.category == "default" and r2.deadline_at == now + timedelta(days=3)
    assert [x.id for x in rq.list_requests(store)] == ["req-000001", "req-000002"]
    assert len(rq.subject_hashes(store, ["req-000001"])) == 2
    with store.write() as txn:
        rq.set_status(txn, "req-000001", "planned")
        with pytest.raises(BadInput, match="cannot become closed"):
            rq.set_status(txn, "req-000001", "closed")
    assert rq.get(store, "req-000001").status == "planned"
    blob = all_store_bytes(store.root)
    assert b"alice" not in blob and b"carol" not in blob
    with pytest.raises(BadInput, match="unknown data category"):
        rq.create(store, ["dave"], category="astrology")


def test_request_and_policy_cli(tmp_path):
    st = tmp_path / "st"
    assert runner.invoke(app, ["init", "--store", str(st)]).exit_code == 0
    res = runner.invoke(app, ["request", "create", "--subject", "0042", "--subject", "42", "--category", "marketing",
                              "--reason", "unsubscribe", "--store", str(st), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    jsonschema.validate(doc, load_schema("request.schema.json"))
    assert doc["subjects"] == 2 and doc["status"] == "received"
    # An empty store holds neither: said in numbers, on stderr.
    assert doc["subjects_found"] == 0 and "only 0 of 2 subject(s) found" in res.stderr
    res = runner.invoke(app, ["request", "list", "--store", str(st), "--json"])
    docs = json.loads(res.output)
    assert [d["id"] for d in docs["requests"]] == ["req-000001"]
    for d in docs["requests"]:
        jsonschema.validate(d, load_schema("request.schema.json"))
    res = runner.invoke(app, ["request", "show", "req-000001", "--store", str(st)])
    assert res.exit_code == 0 and "marketing" in res.output
    res = runner.invoke(app, ["request", "show", "req-000009", "--store", str(st)])
    assert res.exit_code == 2 and "unknown request" in res.output
    res = runner.invoke(app, ["policy", "show", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["categories"]["health"]["deadline_days"] == 14
    (tmp_path / "p.toml").write_text('[categories.default]\nweakest_guarantee = "certified"\n')
    res = runner.invoke(app, ["policy", "show", "--policy", str(tmp_path / "p.toml")])
    assert res.exit_code == 0 and "certified" in res.output
    (tmp_path / "bad.toml").write_text("[categories\n")
    res = runner.invoke(app, ["policy", "show", "--policy", str(tmp_path / "bad.toml")])
    assert res.exit_code == 2 and "not valid TOML" in res.output
