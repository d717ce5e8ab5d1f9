"""Requests and plans as a lifecycle, through the command line: subjects not found, approvals that lapse,
replaced plans, hash-checked readers, plan list, and model stages that unblock a plan."""

from __future__ import annotations

import json

import jsonschema
import pytest
from typer.testing import CliRunner

from expunge.cli import app
from expunge.lineage.store import Store
from expunge.orchestrator import planner
from expunge.schemas import load_schema
from tests.conftest import approver_keys

BK = 0.015  # an action's bookkeeping on a store that has done none yet (costs.BOOKKEEPING_PRIOR)

runner = CliRunner()
SHA = "0" * 64


def cli(store: Store, *args: str):
    return runner.invoke(app, [*args, "--store", str(store.root)])


@pytest.fixture
def lineage(store):
    """d@1 (subjects s0..s9, record ri of si); base@1 trained on r0–r4 (60 s); kid@1 fine-tuned from base@1 with
    no recorded run (a model-only child: no action can rebuild it)."""
    store.ingest_source({"s": [f"s{i}" for i in range(10)], "r": [f"r{i}" for i in range(10)]}, name="d",
                        subject_col="s", record_col="r")
    store.record_run({"run": {"name": "base-1", "trainer": "pkg.mod:train", "cost": {"wall_seconds": 60.0},
                              "inputs": [{"dataset": "d@1", "rows": ["r0", "r1", "r2", "r3", "r4"]}]},
                      "models": [{"name": "base", "sha256": SHA}]})
    approver_keys(store, store.root.parent / "keys", names=("ana", "bob"))
    return store


def key(store, name: str) -> str:
    return str(store.root.parent / "keys" / f"{name}.key")


def request(store, *subjects: str) -> str:
    res = cli(store, "request", "create", *[a for s in subjects for a in ("--subject", s)], "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)["id"]


def plan(store, *args: str) -> tuple[int, dict | None, str]:
    res = cli(store, "plan", *args, "--json")
    return res.exit_code, (json.loads(res.stdout) if res.stdout.strip() else None), res.stderr


def test_subjects_not_in_the_store_are_counted_and_block_approval(lineage):
    rid = request(lineage, "s0", "nobody")
    res = cli(lineage, "request", "show", rid)
    assert "subjects_found  1" in res.stdout
    code, doc, err = plan(lineage, rid)
    assert code == 0 and doc["subjects"] == {"requested": 2, "found": 1}
    assert "only 1 of 2 subject(s) found" in err
    text = cli(lineage, "plan", "show", doc["id"][:12]).stdout
    assert "1 of 2 subject(s) found" in text and "Warning" in text
    res = cli(lineage, "plan", "approve", doc["id"], "--key", key(lineage, "ana"))
    assert res.exit_code == 2 and "only 1 of 2 subject(s) found" in res.stderr
    res = cli(lineage, "plan", "approve", doc["id"], "--key", key(lineage, "ana"), "--force")
    assert res.exit_code == 2 and "--force needs --reason" in res.stderr
    res = cli(lineage, "plan", "approve", doc["id"], "--key", key(lineage, "ana"), "--force", "--reason", "typo in the ticket; s0 is the customer")
    assert res.exit_code == 0, res.output
    (appr,) = planner.load_plan(lineage, doc["id"])["approvals"]
    assert appr["by"] == "ana" and appr["forced"] and appr["reason"].startswith("typo")


def test_an_empty_plan_needs_force(lineage):
    code, doc, err = plan(lineage, request(lineage, "ghost"))
    assert code == 0 and doc["items"] == [] and doc["subjects"]["found"] == 0 and "only 0 of 1" in err
    assert cli(lineage, "plan", "approve", doc["id"], "--key", key(lineage, "ana")).exit_code == 2


def test_replanning_an_approved_request_lapses_its_approval(lineage):
    rid = request(lineage, "s1")
    _, first, _ = plan(lineage, rid)
    assert cli(lineage, "plan", "approve", first["id"], "--key", key(lineage, "ana")).exit_code == 0
    code, _, err = plan(lineage, rid)
    assert code == 2 and "already has an approved plan" in err and "--replan" in err
    code, second, _ = plan(lineage, rid, "--replan")
    assert code == 0 and second["id"] != first["id"]
    old = planner.load_plan(lineage, first["id"])
    assert old["superseded_by"] == second["id"] and old["lapsed_at"]
    res = cli(lineage, "plan", "approve", first["id"], "--key", key(lineage, "bob"))
    assert res.exit_code == 2 and "was replaced" in res.stderr and "approval lapsed" in res.stderr
    shown = json.loads(cli(lineage, "request", "show", rid, "--json").stdout)
    jsonschema.validate(shown, load_schema("request.schema.json"))
    assert shown["status"] == "planned"
    assert [(p["id"], p["state"]) for p in shown["plans"]] == [(second["id"], "planned"), (first["id"], "lapsed")]
    listed = json.loads(cli(lineage, "plan", "list", "--request", rid, "--json").stdout)["plans"]
    assert [p["state"] for p in listed] == ["planned", "lapsed"]
    assert cli(lineage, "plan", "approve", second["id"], "--key", key(lineage, "bob")).exit_code == 0


def test_a_plan_replaced_before_approval_cannot_be_approved(lineage):
    rid = request(lineage, "s2")
    _, first, _ = plan(lineage, rid)
    _, second, _ = plan(lineage, rid)
    res = cli(lineage, "plan", "approve", first["id"], "--key", key(lineage, "ana"))
    assert res.exit_code == 2 and f"({second['id'][:12]})" in res.stderr
    assert [p["state"] for p in planner.list_plans(lineage, rid)] == ["planned", "superseded"]


def test_every_reader_checks_the_plans_hash(lineage):
    _, doc, _ = plan(lineage, request(lineage, "s3"))
    path = planner.plan_path(lineage, doc["id"])
    edited = json.loads(path.read_bytes())
    for item in edited["items"]:
        item["chosen"]["action"] = "no_action"
    path.write_text(json.dumps(edited, sort_keys=True, separators=(",", ":")))
    for args in (("plan", "show", doc["id"]), ("plan", "approve", doc["id"], "--key", key(lineage, "ana"))):
        res = cli(lineage, *args)
        assert res.exit_code == 2 and "changed after it was made" in res.stderr, args
    with pytest.raises(Exception, match="changed after it was made"):
        planner.load_plan(lineage, doc["id"])


def test_plan_ids_are_matched_as_literal_text(lineage):
    _, doc, _ = plan(lineage, request(lineage, "s4"))
    for bad in ("%%%%%%%%", "________", doc["id"][:7]):
        res = cli(lineage, "plan", "approve", bad, "--key", key(lineage, "ana"))
        assert res.exit_code == 2 and "unknown plan" in res.stderr, bad
    assert cli(lineage, "plan", "show", doc["id"][:8].upper()).exit_code == 0


def test_a_model_only_child_that_blocks_the_plan_can_be_retired(lineage):
    lineage.record_run({"models": [{"name": "kid", "sha256": SHA, "from_run": False,
                                    "parents": [{"model": "base@1", "relation": "fine-tune"}]}]})
    rid = request(lineage, "s0")
    code, doc, err = plan(lineage, rid)
    assert code == 4 and doc["blocked"] == ["kid@1"]
    res = cli(lineage, "model", "stage", "kid@1", "archived")
    assert res.exit_code == 2 and "--reason" in res.output
    res = cli(lineage, "model", "stage", "kid@1", "retired", "--reason", "x")
    assert res.exit_code == 2 and "unknown stage" in res.stderr
    res = cli(lineage, "model", "stage", "kid@1", "archived", "--reason", "no longer served", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["from"] == "dev"
    assert cli(lineage, "model", "stage", "kid@1", "archived", "--reason", "again").exit_code == 2
    from expunge.lineage.runs import model_stage_history

    assert [(h["from"], h["to"], h["reason"]) for h in model_stage_history(lineage, "kid@1")] == \
        [("dev", "archived", "no longer served")]
    code, doc, _ = plan(lineage, rid)
    assert code == 0 and not doc["blocked"]
    kid = next(i for i in doc["items"] if i["model"] == "kid@1")
    assert kid["stage"] == "archived" and kid["chosen"]["action"] == "retire" \
        and kid["chosen"]["seconds"] == BK
    # A policy that does not retire withdrawn models leaves it blocked.
    strict = lineage.root.parent / "strict.toml"
    strict.write_text("retire_withdrawn = false\n")
    code, doc, _ = plan(lineage, rid, "--policy", str(strict))
    assert code == 4 and doc["blocked"] == ["kid@1"]


def test_a_child_of_a_retired_parent_is_not_rederived_from_it(lineage):
    """An archived parent is retired, so no unlearned version of it will exist: its child cannot be re-derived
    from one and is retrained with its whole chain (60 × 4/5 + 10 s)."""
    lineage.record_run({"run": {"name": "ft-1", "trainer": "pkg.mod:train", "cost": {"wall_seconds": 10.0},
                                "inputs": [{"dataset": "d@1", "rows": ["r5", "r6"]}]},
                        "models": [{"name": "ft", "sha256": SHA, "parents": [{"model": "base@1"}]}]})
    rid = request(lineage, "s0")
    _, doc, _ = plan(lineage, rid)
    assert [i["chosen"]["action"] for i in doc["items"]] == ["full_retrain", "rederive_from_parent"]
    assert cli(lineage, "model", "stage", "base@1", "archived", "--reason", "withdrawn").exit_code == 0
    _, doc, _ = plan(lineage, rid)
    base, ft = doc["items"]
    assert base["chosen"]["action"] == "retire"
    assert "base@1 is retired" in ft["not_applicable"]["rederive_from_parent"]
    assert ft["chosen"]["action"] == "full_retrain" and ft["chosen"]["seconds"] == pytest.approx(48.0 + 10.0 + BK)
