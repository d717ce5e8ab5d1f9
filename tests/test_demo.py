"""`expunge demo` builds a real store whose answers match the synthetic data it was built from."""

from __future__ import annotations

import json

import jsonschema
import pyarrow as pa
from typer.testing import CliRunner

from expunge import synth
from expunge.cli import app
from expunge.demo import N_CUSTOMERS
from expunge.schemas import load_schema


def test_demo_json_matches_source_data(tmp_path):
    res = CliRunner().invoke(app, ["demo", "--dir", str(tmp_path), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    jsonschema.validate(doc, load_schema("impact.schema.json"))

    tx1 = synth.transactions(3000, N_CUSTOMERS, seed=2)
    tx2 = pa.concat_tables([tx1.slice(200), synth.transactions(1000, N_CUSTOMERS, seed=3, start=3000, day0=90)])
    owners = synth.customers(N_CUSTOMERS, seed=1).column("customer_id").to_pylist()
    count = {}
    for c in tx2.column("customer_id").to_pylist():
        count[c] = count.get(c, 0) + 1
    subject = max(owners[-100:], key=lambda c: (count.get(c, 0), c))
    mine1 = {t for c, t in zip(tx1.column("customer_id").to_pylist(), tx1.column("tx_id").to_pylist()) if c == subject}
    mine2 = {t for c, t in zip(tx2.column("customer_id").to_pylist(), tx2.column("tx_id").to_pylist()) if c == subject}

    assert doc["records"] == 1 + len(mine1 | mine2)
    ds = {d["id"]: d for d in doc["datasets"]}
    assert ds["transactions@1"]["records"] == len(mine1)
    assert ds["transactions@2"]["records"] == len(mine2)
    assert ds["customers@1"]["records"] == 1
    # The aggregate holds one row per customer, built from the profile and all their transactions.
    assert (ds["customer_features@1"]["rows"], ds["customer_features@1"]["records"]) == (1, 1 + len(mine2))
    models = {m["id"]: m for m in doc["models"]}
    assert models["churn@1"]["direct"] and models["churn@1"]["stage"] == "production"
    # The student never trained on the customer: affected only through its teacher.
    assert models["churn-student@1"]["path"] == [{"model": "churn-ft@1", "relation": "distill"}]
    runs = {r["id"]: r for r in doc["runs"]}
    assert "churn-distill-1" not in runs
    assert len(runs["churn-sisa-1"]["shards"]) == 1  # sharded by subject: one shard to retrain


def test_demo_prints_a_readable_table(tmp_path, monkeypatch):
    """In an 80-column terminal: the text fits, a wrapped line never continues at column 0, and each of the
    "Try:" commands is one line that can be pasted."""
    monkeypatch.setenv("COLUMNS", "80")
    where = tmp_path / "a[/]"  # rich markup in a path prints as written
    res = CliRunner().invoke(app, ["demo", "--dir", str(where)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    for needle in ("asks to be forgotten", "Dataset versions", "Training runs", "Model versions", "churn-student@1",
                   f"--store {where / 'store'}"):
        assert needle in res.output
    lines = res.output.splitlines()
    k = next(n for n, ln in enumerate(lines) if ln.startswith("Try: expunge "))
    tries = lines[k:]
    assert len(tries) == 9 and all(ln[5:].startswith("expunge ") and f"--store {where / 'store'}" in ln
                                   for ln in tries[:-1])
    # It ends with the checks of both runs, the audit chain verified, and the report written.
    assert tries[-1] == f"     open {where / 'report.html'}" and (where / "report.html").stat().st_size > 10_000
    assert res.output.count(" check(s) passed.") == 2 and "Audit log: the hash chain of " in res.output
    for ln in lines[:k]:
        assert len(ln) <= 80, ln
        # A paragraph starts with a capital or "N of M subject(s)"; a continuation (lower case, a dash, a number
        # and its unit) is indented.
        assert ln == "" or ln[0] == " " or 0x2500 <= ord(ln[0]) < 0x2580 or ln[0].isupper() \
            or ln.split()[1:2] == ["of"], ln


def _shape(doc: dict) -> dict:
    """The choices of a plan: per model, in order, the action, its guarantee and check, and the runner-up."""
    return {
        "requests": doc["requests"], "required_guarantee": doc["required_guarantee"], "records": doc["records"],
        "blocked": doc["blocked"],
        "items": [{"model": i["model"], "stage": i["stage"], "direct": i["direct"], "records": i["records"],
                   "required": i["required_guarantee"], "order": i["order"], "after": i["after"],
                   "check": i["chosen"]["check"]["kind"] if i["chosen"] else None,
                   "action": i["chosen"]["action"] if i["chosen"] else None,
                   "guarantee": i["chosen"]["guarantee"] if i["chosen"] else None,
                   "runner_up": i["runner_up"]["action"] if i["runner_up"] else None} for i in doc["items"]],
    }


# The demo's runs take milliseconds, so their measured seconds are noise: the golden test pins them (and the key,
# which decides the SISA shards) so that the choices are a function of the lineage and the policy alone. The
# figures are the medians of 5 builds in one process on this machine (bench-free: /tmp script, rounded).
# (A process's first training run also pays torch's warm-up: ~1 s more.)
PINNED_SECONDS = {"churn-sisa-1": 0.0375, "churn-mlp-1": 0.026, "churn-finetune-1": 0.005, "churn-distill-1": 0.005,
                  "fraud-train-1": 0.034, "churn-certified-1": 0.009}
# Loading each run's data before training (setup_seconds), medians likewise.
PINNED_SETUP = {"churn-sisa-1": 0.014, "churn-mlp-1": 0.015, "churn-finetune-1": 0.013, "churn-distill-1": 0.018,
                "fraud-train-1": 0.015, "churn-certified-1": 0.009}


def test_demo_plans_match_golden_files(tmp_path, monkeypatch):
    import os
    from pathlib import Path

    from expunge.demo import build_demo, demo_plans
    from expunge.orchestrator.planner import plan_hash

    monkeypatch.setenv("EXPUNGE_SECRET", "5e" * 32)
    store, subject = build_demo(tmp_path)
    with store.write() as txn:
        assert {n for (n,) in txn.con.execute("SELECT name FROM runs").fetchall()} == set(PINNED_SECONDS)
        for name, secs in PINNED_SECONDS.items():
            # Recording a demo run takes a few ms: pinned at 0 with the rest.
            txn.con.execute("UPDATE runs SET wall_seconds = ?, setup_seconds = ?, record_seconds = 0 WHERE name = ?",
                            [secs, PINNED_SETUP[name], name])
    plans = demo_plans(store, subject)
    golden_dir = Path(__file__).parent / "golden"
    for doc, name in zip(plans, ("demo_plan_default.json", "demo_plan_marketing.json")):
        jsonschema.validate(doc, load_schema("plan.schema.json"))
        assert doc["id"] == plan_hash(doc)
        path = golden_dir / name
        if os.environ.get("EXPUNGE_UPDATE_GOLDEN"):
            path.write_text(json.dumps(_shape(doc), indent=2, sort_keys=True) + "\n")
        assert _shape(doc) == json.loads(path.read_text()), f"{name} differs (EXPUNGE_UPDATE_GOLDEN=1 rewrites it)"
    # The same plans and the impact as text in an 80-column terminal: wrapped lines hang under their text.
    from expunge.cli import render_impact, render_plan
    from tests.test_cli_manners import assert_hanging_indents

    for doc in plans:
        assert_hanging_indents(lambda c: render_plan(doc, c))
    result = store.impact([subject])
    assert_hanging_indents(lambda c: render_impact(result, c))


def test_demo_keys_are_fixed_so_runs_repeat(tmp_path):
    """Two demo stores hash every customer alike (same SISA shards) and pin the same policy (same approver key);
    a store with a fresh key does not (the comparison can fail)."""
    import stat

    from expunge.demo import DEMO_SUBJECT_KEY_FILE, demo_policy, demo_subject_key
    from expunge.lineage.store import Store
    from expunge.orchestrator.policy import store_policy

    ids = synth.customer_ids(50)
    hashes, policies = [], []
    for name in ("one", "two"):
        root = tmp_path / name
        root.mkdir()
        st = Store.init(root / "store", key_file=demo_subject_key(root))
        demo_policy(st, root)
        hashes.append(st.hasher.hash_many(ids))
        policies.append(store_policy(st).sha256())
        assert "NOT-SECRET" in DEMO_SUBJECT_KEY_FILE
        assert stat.S_IMODE((root / DEMO_SUBJECT_KEY_FILE).stat().st_mode) == 0o600
        assert stat.S_IMODE((root / "approver.key").stat().st_mode) == 0o600
    assert (hashes[0] == hashes[1]).all() and policies[0] == policies[1]
    fresh = Store.init(tmp_path / "three" / "store")
    assert not (fresh.hasher.hash_many(ids) == hashes[0]).all()
