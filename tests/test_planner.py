"""The planner: its choice equals a brute-force search; policy edge cases; plans as hashed documents."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import replace
from datetime import datetime, timedelta

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from expunge.cli import app
from expunge.errors import BadInput
from expunge.orchestrator import costs, planner
from expunge.orchestrator import requests as rq
from expunge.orchestrator.actions import ACTIONS, ModelFacts
from expunge.orchestrator.policy import GUARANTEES, load_policy, parse_policy, stronger_or_equal
from expunge.schemas import load_schema

NOW = datetime(2026, 11, 1, 12, 0)


@st.composite
def model_chains(draw):
    """A few affected models, each possibly derived from the previous one, with random recorded facts."""
    facts = []
    for i in range(draw(st.integers(1, 4))):
        direct = i == 0 or draw(st.booleans())
        has_trainer = draw(st.booleans())
        run_seconds = float(draw(st.integers(1, 10_000)))
        n = draw(st.integers(50, 5000))
        k = draw(st.integers(0, 40)) if direct else 0
        sisa = direct and draw(st.booleans())
        ckpt = direct and draw(st.booleans())
        total = draw(st.integers(10, 1000))
        f = ModelFacts(
            model=f"m{i}@1", name=f"m{i}", stage=draw(st.sampled_from(["production", "staging", "dev", "archived"])),
            direct=direct, records=k, train_records=k, run=f"r{i}", trainer="pkg:train" if has_trainer else None,
            family=draw(st.sampled_from(["mlp", "sisa-mlp", "logreg-certified", None])),
            run_seconds=run_seconds, run_records=n, total_steps=total,
            has_checkpoints=ckpt, clean_step=draw(st.integers(0, total)) if ckpt and draw(st.booleans()) else None,
            stage_steps={(s, r): (r + 1) * 5 for s in range(4) for r in range(3)} if sisa else {},
            affected_shards={draw(st.integers(0, 3)): draw(st.integers(0, 2))} if sisa else {},
            certificate={"lam": draw(st.sampled_from([1e-3, 0.1, 1.0])), "gamma": 0.25,
                         "removal_budget": draw(st.sampled_from([0.01, 1.0, 100.0]))}
            if draw(st.booleans()) else None,
            dim=9, iterations=100, epochs=draw(st.integers(1, 10)),
            affected_parents=[f"m{i - 1}@1"] if i > 0 and not direct else [],
        )
        facts.append(f)
    policy = parse_policy({"allow_retire": draw(st.booleans()),
                           "models": {"m0": {"never_retire": draw(st.booleans()),
                                             "always_retrain": draw(st.booleans())}}}, "test")
    required = draw(st.sampled_from(GUARANTEES))
    hours = draw(st.sampled_from([0.001, 1, 1000]))
    return facts, policy, required, NOW + timedelta(hours=hours)


def brute_force(facts, policy, required, deadline):
    """Every assignment of actions; keep the admissible ones; the cheapest total (None if none)."""
    best = None
    names = list(ACTIONS)
    for combo in itertools.product(names, repeat=len(facts)):
        chosen_g: dict[str, str] = {}
        total, ok = 0.0, True
        for f, name in zip(facts, combo):
            f = replace(f)
            pg = [chosen_g.get(p) for p in f.affected_parents]
            f.parent_guarantee = (min(pg, key=GUARANTEES.index) if all(pg) else None) if pg else "exact"
            a = ACTIONS[name]
            if a.check(f, policy) is not None:
                ok = False
                break
            g, est = a.guarantee_for(f), a.estimate(f, policy)
            if (not stronger_or_equal(g, required) or NOW + timedelta(seconds=est.seconds) > deadline
                    or (policy.model(f.name).always_retrain and name != "full_retrain")):
                ok = False
                break
            chosen_g[f.model] = g
            total += round(est.seconds, 3)
        if ok and (best is None or total < best - 1e-9):
            best = total
    return best


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model_chains())
def test_planner_choice_equals_brute_force(case):
    facts, policy, required, deadline = case
    items = planner.choose([replace(f) for f in facts], policy, required, deadline, NOW)
    expected = brute_force(facts, policy, required, deadline)
    if any(i["chosen"] is None for i in items):
        # Greedy found no admissible action for some model: neither may brute force.
        assert expected is None
    else:
        assert expected is not None
        assert sum(i["chosen"]["seconds"] for i in items) == pytest.approx(expected)


def facts(**kw):
    base = dict(model="m@1", name="m", stage="production", direct=True, records=5, train_records=5, run="r",
                trainer="pkg:train", family="mlp", run_seconds=1000.0, run_records=10_000, total_steps=1000)
    base.update(kw)
    return ModelFacts(**base)


def choose_one(f, policy=None, required="exact", hours=24 * 30):
    return planner.choose([f], policy or load_policy(None), required, NOW + timedelta(hours=hours), NOW)[0]


def test_no_admissible_action_says_which_rules_block_it():
    item = choose_one(facts(trainer=None, family="custom"))
    assert item["chosen"] is None
    assert "no recorded trainer entry point" in item["blocked_by"]
    assert "policy: retiring models is not allowed" in item["blocked_by"]


def test_a_deadline_no_action_can_meet():
    item = choose_one(facts(run_seconds=10 * 3600.0), hours=1)
    assert item["chosen"] is None
    assert any("after the deadline" in why for why in item["blocked_by"])


def test_no_trainer_leaves_retire_or_approximate():
    pol = parse_policy({"allow_retire": True}, "t")
    item = choose_one(facts(trainer=None), pol, required="approximate")
    ok = {c["action"] for c in item["candidates"] if c["admissible"]}
    assert ok == {"approximate_unlearning", "retire"}


def test_removal_budget_spent():
    cert = {"lam": 0.1, "gamma": 0.25, "removal_budget": 1.0}
    f = facts(family="logreg-certified", trainer=None, certificate=cert, train_records=5, run_records=10_000)
    item = choose_one(f, required="certified")
    assert item["chosen"]["action"] == "certified_removal"
    spent = choose_one(replace(f, budget_spent=0.9999), required="certified")
    assert "certified_removal" not in {c["action"] for c in spent["candidates"]}
    assert "removal budget spent" in spent["not_applicable"]["certified_removal"]


def test_checkpoint_replay_beats_full_retrain_and_says_why():
    item = choose_one(facts(has_checkpoints=True, clean_step=600))
    assert item["chosen"]["action"] == "checkpoint_replay"
    assert item["chosen"]["seconds"] == pytest.approx(400.0)
    assert item["runner_up"]["action"] == "full_retrain"
    assert "more" in item["runner_up"]["why_not"]


def test_always_retrain_override():
    pol = parse_policy({"models": {"m": {"always_retrain": True}}}, "t")
    item = choose_one(facts(has_checkpoints=True, clean_step=600), pol)
    assert item["chosen"]["action"] == "full_retrain"


# ------------------------------------------------------------------ end to end on the demo store


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    from expunge.demo import build_demo

    store, subject = build_demo(tmp_path_factory.mktemp("demo"))
    return store, subject


def test_plan_document_approval_and_tamper(demo_store):
    store, subject = demo_store
    r = rq.create(store, [subject], category="default")
    doc = planner.make_plan(store, [r.id], load_policy(None))
    jsonschema.validate(doc, load_schema("plan.schema.json"))
    assert doc["id"] == planner.plan_hash(doc)
    chosen = {i["model"]: i["chosen"]["action"] for i in doc["items"]}
    assert chosen["churn@1"] == "sisa_shard_retrain"           # one shard, from its first affected slice
    assert chosen["churn-student@1"] == "rederive_from_parent"  # affected only through its teacher
    assert doc["total"]["seconds"] < doc["retrain_everything"]["seconds"]
    # Printing and saving reuse the encoding made for the id: same text as encoding from scratch.
    from expunge.schemas import dumps

    doc, pieces = planner.plan_and_encode(store, [r.id], load_policy(None), now=datetime(2026, 12, 1))
    assert planner.dumps(dict(doc, approvals=[]), pieces) == dumps(dict(doc, approvals=[]))
    assert planner.dumps(doc, pieces) == dumps(doc)
    # A plan changed after it was made is not saved (its content no longer matches its id).
    with pytest.raises(BadInput, match="changed after it was made"):
        planner.save_plan(store, dict(doc, blocked=["x@1"]))
    planner.save_plan(store, doc, pieces)
    # The saved file is the canonical form itself: any sha256 tool checks it against the id.
    assert hashlib.sha256(planner.plan_path(store, doc["id"]).read_bytes()).hexdigest() == doc["id"]
    assert planner.load_plan(store, doc["id"][:10])["items"] == doc["items"]
    assert rq.get(store, r.id).status == "planned"
    approved = planner.approve(store, doc["id"][:12], "dpo@example.com")
    assert [a["by"] for a in approved["approvals"]] == ["dpo@example.com"]
    assert rq.get(store, r.id).status == "approved"
    with pytest.raises(BadInput, match="already approved"):
        planner.approve(store, doc["id"], "dpo@example.com")
    # Change the stored plan behind expunge's back: approval is refused by hash.
    doc2 = planner.make_plan(store, [r.id], load_policy(None), now=datetime(2026, 12, 1))
    planner.save_plan(store, doc2)
    path = planner.plan_path(store, doc2["id"])
    path.write_text(json.dumps(dict(json.loads(path.read_text()), total={"seconds": 0.0, "cost": 0.0})))
    with pytest.raises(BadInput, match="changed after it was made"):
        planner.approve(store, doc2["id"], "someone")


def test_plan_cli(demo_store):
    store, subject = demo_store
    runner = CliRunner()
    r = rq.create(store, [subject], category="marketing")
    res = runner.invoke(app, ["plan", r.id, "--store", str(store.root), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    jsonschema.validate(doc, load_schema("plan.schema.json"))
    # Marketing allows approximate unlearning: somewhere it is now the cheapest admissible action.
    assert any(i["chosen"]["guarantee"] == "approximate" for i in doc["items"])
    res = runner.invoke(app, ["plan", "show", doc["id"][:10], "--store", str(store.root)])
    assert res.exit_code == 0 and "Actions" in res.output
    res = runner.invoke(app, ["plan", "approve", doc["id"][:10], "--store", str(store.root)])
    assert res.exit_code == 2 and "--by" in res.output
    res = runner.invoke(app, ["plan", "approve", doc["id"][:10], "--by", "ana", "--store", str(store.root)])
    assert res.exit_code == 0 and "1 of 1" in res.output
    # A policy no action satisfies: exit 4, and the plan says what blocks it.
    strict = store.root.parent / "strict.toml"
    strict.write_text('[categories.default]\nweakest_guarantee = "exact"\ndeadline_days = 1\n'
                      '[models."churn"]\nalways_retrain = true\n')
    r2 = rq.create(store, [subject], category="default", deadline_days=1)
    store_path = str(store.root)
    with store.write() as txn:  # make churn's recorded run untrainable
        txn.con.execute("UPDATE runs SET trainer = NULL WHERE name = 'churn-sisa-1'")
    res = runner.invoke(app, ["plan", r2.id, "--store", store_path, "--policy", str(strict)])
    assert res.exit_code == 4, res.output
    assert "no admissible action for churn@1" in res.output


def test_certified_removal_budget_from_the_runs_data(demo_store):
    """The demo's certified model: its recorded (pre-data) bound says one record already exceeds the
    budget, the Newton steps' own bounds on the run's data say it fits; the planner uses the latter,
    and spends nothing it cannot certify."""
    from expunge.orchestrator.actions import CertifiedRemoval

    store, subject = demo_store
    r = rq.create(store, [subject], category="financial")  # certified required
    doc = planner.make_plan(store, [r.id], load_policy(None))
    item = next(i for i in doc["items"] if i["model"] == "churn-certified@1")
    assert item["chosen"]["action"] == "certified_removal"
    assert any("Newton-step bounds on the run's data" in why for why in item["chosen"]["reasons"])
    facts = next(f for f in planner.gather(store, store.impact([subject])) if f.model == "churn-certified@1")
    assert facts.certified_need is None  # without the records' ordinals only the recorded bound is known
    assert CertifiedRemoval.consumption(facts) > facts.certificate["removal_budget"]
    with_data = next(f for f in planner.gather(store, store.impact([subject]), store.records_of_subjects([subject]))
                     if f.model == "churn-certified@1")
    assert 0 < with_data.certified_need < with_data.certificate["removal_budget"]


def test_batching_saves_against_planning_each_alone(demo_store):
    """Two requests whose subjects share models: one retrain serves both. The plan's "alone" figures
    equal the totals of the two requests planned one by one, and the batch costs less."""
    store, subject = demo_store
    other = next(s for s in (f"cust-{i:04d}" for i in range(400)) if s != subject and store.impact([s]).records)
    ra = rq.create(store, [subject], category="default")
    rb = rq.create(store, [other], category="default")
    now = datetime(2026, 12, 1)
    pol = load_policy(None)
    both = planner.make_plan(store, [ra.id, rb.id], pol, now=now)
    alone = [planner.make_plan(store, [r.id], pol, now=now)["total"] for r in (ra, rb)]
    assert both["batching"]["alone_seconds"] == pytest.approx(sum(a["seconds"] for a in alone), abs=2e-3)
    assert both["batching"]["alone_cost"] == pytest.approx(sum(a["cost"] for a in alone), abs=2e-6)
    shared = ({i["model"] for i in planner.make_plan(store, [ra.id], pol, now=now)["items"] if i["chosen"]
               and i["chosen"]["seconds"] > 0} &
              {i["model"] for i in planner.make_plan(store, [rb.id], pol, now=now)["items"] if i["chosen"]
               and i["chosen"]["seconds"] > 0})
    assert shared  # both touched models that need work …
    assert both["batching"]["saving_seconds"] > 0  # … and the batch does that work once
    assert both["batching"]["saving_seconds"] == pytest.approx(
        both["batching"]["alone_seconds"] - both["total"]["seconds"], abs=2e-3)



def test_plan_text_shows_the_models_that_matter_most(demo_store):
    """A plan of many models prints the blocked and costliest ones and sums up the rest, in any width."""
    from rich.console import Console

    from expunge.cli import render_plan

    store, subject = demo_store
    r = rq.create(store, [subject], category="default")
    doc = planner.make_plan(store, [r.id], load_policy(None))
    doc["approvals"] = []
    # Blocked models first (an earlier test in this module made churn's run untrainable), then the costliest.
    ranked = sorted(doc["items"], key=lambda i: (i["chosen"] is not None, -(i["chosen"] or {}).get("seconds", 0)))
    top, rest = {i["model"] for i in ranked[:2]}, {i["model"] for i in ranked[2:]}
    for width in (80, 200):
        console = Console(record=True, width=width)
        render_plan(doc, console, limit=2)
        text = console.export_text()
        shown = {m for m in top | rest if re.search(rf"(?<![\w-]){re.escape(m)}", text)}
        assert shown == top
        assert f"… and {len(doc['items']) - 2} more models" in text
        console = Console(record=True, width=width)
        render_plan(doc, console, limit=None)
        text = console.export_text()
        assert all(i["model"] in text for i in doc["items"]) and "more models" not in text


def test_certified_removal_counts_rows_not_records(tmp_path):
    """Newton steps remove training rows: in an augmented set one record makes several rows, and the
    budget bound must take as many steps."""
    from expunge.lineage.store import Store
    from expunge.orchestrator.actions import CertifiedRemoval

    store = Store.init(tmp_path / "st")
    store.ingest_source({"s": ["a", "b", "c"], "r": ["1", "2", "3"]}, name="d", subject_col="s", record_col="r")
    store.ingest_dataset({"rid": ["1", "1", "1", "2", "3"], "row": ["1x", "1y", "1z", "2x", "3x"]}, name="aug",
                         parents=["d@1"], kind="augment", sources={"d@1": "rid"}, row_col="row")
    cert = {"lam": 0.1, "gamma": 0.25, "removal_budget": 10.0, "n": 5, "hessian_min_eig": 3.0,
            "x_spectral_sq": 5.0, "w_norm": 1.0}
    store.record_run({"run": {"name": "r1", "inputs": [{"dataset": "aug@1", "role": "train"}],
                              "model_family": "logreg-certified", "extra": {"certified_removal": cert}},
                      "models": [{"name": "m", "sha256": "0" * 64}]})
    f = next(f for f in planner.gather(store, store.impact(["a"])) if f.model == "m@1")
    assert (f.train_records, f.train_rows) == (1, 3)
    one_step = costs.certified_residual_bound(1, lam=0.1, n=5, mu=3.0, spec_sq=5.0, w_norm=1.0)
    three = costs.certified_residual_bound(3, lam=0.1, n=5, mu=3.0, spec_sq=5.0, w_norm=1.0)
    assert CertifiedRemoval.consumption(f) == pytest.approx(three) and three > one_step
