"""`expunge run`: exact actions on the reference trainers against independent retrains, lineage after
execution, refusals, and exactly-once resumption after SIGKILL at several points."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from expunge.errors import BadInput  # noqa: E402
from expunge.orchestrator import execute, planner  # noqa: E402
from expunge.orchestrator import requests as rq  # noqa: E402
from expunge.orchestrator.policy import store_policy  # noqa: E402


def weights(path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The demo store, its default-category request (exact unlearning) planned, approved and run."""
    from expunge.demo import build_demo

    root = tmp_path_factory.mktemp("exec")
    store, subject = build_demo(root)
    r = rq.create(store, [subject], category="default", policy=store_policy(store))
    doc = planner.make_plan(store, [r.id], store_policy(store))
    planner.save_plan(store, doc)
    with pytest.raises(BadInput, match="signed approval"):
        execute.run_plan(store, doc["id"])
    planner.approve(store, doc["id"], root / "approver.key")
    # The actions only: the last test here completes the request (and the store forgets the subject).
    result = execute.run_plan(store, doc["id"], finish=False)
    return store, subject, doc, result, root


def info(store, ref):
    return execute.model_info(store, ref)


def test_every_action_ran_once_and_the_new_versions_hold_none_of_the_records(executed):
    store, subject, doc, result, _ = executed
    assert result["done"] == result["total"] == len(doc["items"])
    new = {a["model"]: a["new_model"] for a in result["actions"]}
    assert all(new.values())
    # Lineage proof: the subject's impact reaches none of the new versions (nor their runs).
    hit = {m["id"] for m in store.impact([subject]).models}
    assert not hit & set(new.values())
    for old, made in new.items():
        o, n = info(store, old), info(store, made)
        assert n["stage"] == (doc_item := next(i for i in doc["items"] if i["model"] == old))["stage"]
        assert o["stage"] == "superseded"
        assert n["parents"] == [{"model": new.get(p["model"], p["model"]), "relation": p["relation"]}
                                for p in o["parents"]] or doc_item["chosen"]["action"] != "rederive_from_parent"
    # Running it again does nothing more.
    again = execute.run_plan(store, doc["id"], finish=False)
    assert [a["new_model"] for a in again["actions"]] == [a["new_model"] for a in result["actions"]]


def test_actions_keep_their_bookkeeping_and_later_plans_price_its_median(executed):
    """Each re-run action records the seconds it spent outside its trainer (looking up, recording the
    replacement); the next plan adds their median to every action's estimate, and says so."""
    import statistics

    store, subject, doc, result, _ = executed
    with store.read() as con:
        rows = con.execute("""SELECT a.action, a.wall_seconds, a.detail, r.wall_seconds
                              FROM execution_actions a JOIN models m ON m.name || '@' || m.version_no = a.new_model
                              JOIN runs r USING (run_id) WHERE a.plan_id = ?""", [doc["id"]]).fetchall()
    assert len(rows) == len(doc["items"])
    kept = []
    for action, wall, detail, run_wall in rows:
        bk = json.loads(detail)["bookkeeping_seconds"]
        # Outside the trainer, which trained for at least its run's recorded wall seconds (a SISA shard
        # retrain's run records the whole ensemble's, for planning: not a bound on its action).
        assert 0 < bk < wall and (action == "sisa_shard_retrain" or bk <= wall - run_wall)
        kept.append(bk)
    want = statistics.median(kept)
    assert planner.bookkeeping(store) == (pytest.approx(want), len(kept))
    facts = planner.gather(store, store.impact([subject]))
    assert facts and all(f.bookkeeping == pytest.approx(want) for f in facts)
    f = facts[0]
    (plain,) = [c for c in planner.price(dataclasses.replace(f, bookkeeping=0.0, bookkeeping_n=0), store_policy(store),
                                         "exact", datetime(2100, 1, 1), datetime(2000, 1, 1), "mia")
                if c["action"] == "retire"]
    (priced,) = [c for c in planner.price(f, store_policy(store), "exact", datetime(2100, 1, 1),
                                          datetime(2000, 1, 1), "mia") if c["action"] == "retire"]
    assert priced["action_seconds"] == pytest.approx(plain["action_seconds"] + want, abs=1e-6)
    assert f"the median of this store's last {len(kept)} action(s)" in priced["reasons"][-1]


def test_sisa_shard_retrain_equals_retraining_the_shard_from_scratch(executed, tmp_path):
    """Untouched shards are the old weights byte for byte; the retrained shard equals that shard retrained from
    scratch (its original initial weights, the same seed) without the erased records."""
    from expunge.orchestrator.rerun import rerun

    store, subject, doc, result, _ = executed
    new = next(a["new_model"] for a in result["actions"] if a["model"] == "churn@1")
    old_w, new_w = weights(info(store, "churn@1")["path"]), weights(info(store, new)["path"])
    shards = next(r for r in store.impact([subject]).runs if r["id"] == "churn-sisa-1")["shards"]
    hit = {s["shard"] for s in shards if s["first_slice"] is not None}
    assert len(hit) == 1
    for k in old_w:
        member = int(k.split(".")[1])
        assert torch.equal(old_w[k], new_w[k]) == (member not in hit), k
    erased = store.records_of_subjects([subject])
    ref = rerun(store, "churn-sisa-1", new_name="ref-scratch", out_dir=tmp_path / "ref", exclude_records=erased,
                init_model=info(store, "churn@1")["path"], shard_checkpoints={next(iter(hit)): None})
    assert same(weights(info(store, ref["models"][0]["id"])["path"]), new_w)


def test_full_retrain_equals_training_without_the_records(executed, tmp_path):
    from expunge.orchestrator.trainers import TrainRequest, mlp
    from expunge.orchestrator.rerun import recorded_request

    store, subject, doc, result, _ = executed
    new = next(a["new_model"] for a in result["actions"] if a["model"] == "churn-mlp@1")
    rec = recorded_request(store, "churn-mlp-1")
    req = TrainRequest(store=store, run_name="ref-mlp", inputs=rec["inputs"], config=rec["config"], seed=rec["seed"],
                       out_dir=tmp_path, trainer=mlp.ENTRY_POINT, model_name="ref-mlp",
                       exclude_records=store.records_of_subjects([subject]))
    out = mlp.train(req)
    assert same(weights(info(store, out["models"][0]["id"])["path"]), weights(info(store, new)["path"]))
    assert not same(weights(info(store, "churn-mlp@1")["path"]), weights(info(store, new)["path"]))


def test_rederived_student_learned_from_the_new_teacher(executed):
    store, _, _, result, _ = executed
    new = {a["model"]: a["new_model"] for a in result["actions"]}
    with store.read() as con:
        config = json.loads(con.execute("SELECT r.config FROM runs r JOIN models m USING (run_id) WHERE "
                                        "m.name || '@' || m.version_no = ?", [new["churn-student@1"]]).fetchone()[0])
    assert config["teacher"] == new["churn-ft@1"]
    assert info(store, new["churn-ft@1"])["parents"] == [{"model": new["churn-mlp@1"], "relation": "fine-tune"}]


def test_a_replaced_or_changed_plan_does_not_run(executed):
    store, subject, doc, _, root = executed
    r = rq.create(store, [subject], category="default", policy=store_policy(store))
    first = planner.make_plan(store, [r.id], store_policy(store))
    planner.save_plan(store, first)
    planner.approve(store, first["id"], root / "approver.key")
    second = planner.make_plan(store, [r.id], store_policy(store), now=planner._when(first["created_at"]).replace(
        microsecond=1))
    planner.save_plan(store, second, replan=True)
    with pytest.raises(BadInput, match="replaced by a newer plan"):
        execute.run_plan(store, first["id"])


# ------------------------------------------------------------------ crashes


def _run(store_root: Path, plan_id: str, fault: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("EXPUNGE_FAULT", None)
    if fault:
        env["EXPUNGE_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "expunge.cli", "run", plan_id, "--store", str(store_root), "--json"],
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("points", [("run:before-action-0",), ("run:after-action-2", "run:after-action-4")])
def test_killed_runs_resume_and_apply_each_action_once(tmp_path, points):
    from expunge.demo import build_demo

    store, subject = build_demo(tmp_path)
    r = rq.create(store, [subject], category="default", policy=store_policy(store))
    doc = planner.make_plan(store, [r.id], store_policy(store))
    planner.save_plan(store, doc)
    planner.approve(store, doc["id"], tmp_path / "approver.key")
    for point in points:
        res = _run(store.root, doc["id"], point)
        assert res.returncode == -9, (point, res.stderr[-2000:])
    res = _run(store.root, doc["id"], None)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert out["done"] == out["total"] == len(doc["items"])
    # Exactly once: one run per re-run step, one new version per model, nothing made twice.
    with store.read() as con:
        names = [n for (n,) in con.execute("SELECT name FROM runs WHERE name LIKE ?", [f"%.x{doc['id'][:8]}"]).fetchall()]
        versions = dict(con.execute("SELECT name, max(version_no) FROM models GROUP BY name").fetchall())
    assert len(names) == len(set(names))
    assert all(v == 2 for v in versions.values()), versions
    attempts = {a["model"]: a["attempts"] for a in out["actions"]}
    assert max(attempts.values()) <= 2


def test_residual_copies_are_listed_purged_and_held(executed, tmp_path):
    from expunge.orchestrator import residuals as res
    from expunge.orchestrator.policy import parse_policy

    store, subject, doc, result, _ = executed
    rid = doc["requests"][0]
    got = res.residuals(store, rid)
    models = {r["model"] for r in got["residuals"]}
    assert models == {a["model"] for a in result["actions"]}  # every replaced version
    assert all(r["state"] == "present" for r in got["residuals"])
    # The certified model's old run also kept its training rows for removal: a residual copy too.
    assert {r["kind"] for r in got["residuals"]} == {"model", "checkpoint", "removal rows"}
    # A hold keeps churn's old files; a file whose content changed is left alone.
    held = parse_policy({"residuals": {"hold": {"churn": "litigation hold LH-7"}}}, "t")
    changed = next(r for r in got["residuals"] if r["model"] == "fraud@1" and r["kind"] == "checkpoint")
    Path(changed["path"]).write_bytes(b"not the checkpoint any more")
    out = res.purge(store, rid, held)
    by = {(r["model"], r["path"]): r for r in out["residuals"]}
    for (model, path), r in by.items():
        if model == "churn@1":
            assert r["state"] == "held" and "LH-7" in r["why"] and Path(path).exists()
        elif path == changed["path"]:
            assert r["state"] == "changed" and Path(path).exists()
        else:
            assert r["state"] == "purged" and not Path(path).exists()
    again = res.residuals(store, rid, held)
    assert {r["state"] for r in again["residuals"]} == {"held", "changed", "purged"}


def test_parallel_jobs_respect_the_order_and_give_the_same_models(tmp_path):
    """--jobs 2: independent actions in worker processes, children after their parents; the artifacts are
    the ones a sequential run makes (the reference trainers are deterministic)."""
    from expunge.demo import build_demo
    from expunge.lineage.runs import sha256_file

    store, subject = build_demo(tmp_path)
    r = rq.create(store, [subject], category="default", policy=store_policy(store))
    doc = planner.make_plan(store, [r.id], store_policy(store))
    planner.save_plan(store, doc)
    planner.approve(store, doc["id"], tmp_path / "approver.key")
    order = []
    out = execute.run_plan(store, doc["id"], jobs=2,
                           on_event=lambda kind, i: order.append((kind, i["item"]["model"])))
    assert out["done"] == out["total"]
    pos = {e: k for k, e in enumerate(order)}
    for item in doc["items"]:
        for parent in item["after"]:
            assert pos[("done", parent)] < pos[("start", item["model"])], (parent, item["model"])
    new = {a["model"]: a["new_model"] for a in out["actions"]}
    # The same artifact as the sequential executor's re-run of the same step (deterministic trainers).
    from expunge.orchestrator.rerun import rerun

    ref = rerun(store, "churn-mlp-1", new_name="seq-ref", out_dir=tmp_path / "seq",
                exclude_records=store.records_of_subjects([subject]))
    assert same(weights(info(store, ref["models"][0]["id"])["path"]), weights(info(store, new["churn-mlp@1"])["path"]))
    assert sha256_file(Path(info(store, new["churn-mlp@1"])["path"])) == info(store, new["churn-mlp@1"])["sha256"]


def test_certified_removal_spends_what_the_newton_steps_bound_and_refuses_over_budget(tmp_path):
    """The demo's certified model, unlearned with Newton steps: the new run's budget spent equals the sum of the
    steps' bounds recomputed here on the same data; a budget too small is refused before any weight changes."""
    from expunge.demo import build_demo
    from expunge.orchestrator.rerun import recorded_request
    from expunge.orchestrator.trainers import TrainRequest, logreg_certified as lc, mlp

    store, subject = build_demo(tmp_path)
    rec = recorded_request(store, "churn-certified-1")
    req = TrainRequest(store=store, run_name="x", inputs=rec["inputs"], config=rec["config"], seed=rec["seed"],
                       out_dir=tmp_path, trainer=rec["trainer"], model_name="x")
    full = mlp.dataset(req)
    mine = set(mlp.dataset(TrainRequest(**{**req.__dict__, "exclude_records": store.records_of_subjects([subject])}))
               .row_ids)
    remove = [i for i, r in enumerate(full.row_ids) if r not in mine]
    x, y = lc.design(full)
    w0 = weights(info(store, "churn-certified@1")["path"])["w"].double()
    expect_w, bounds = lc.newton_removal(x, y, w0, rec["config"].get("lam", 1e-3), remove)
    item = {"model": "churn-certified@1", "stage": "staging", "after": [],
            "chosen": {"action": "certified_removal", "guarantee": "certified"}}
    ctx = execute.Context(store, {"id": "f" * 64, "requests": [], "items": [item]},
                          store.records_of_subjects([subject]))
    # Over budget: refused, and nothing recorded or written.
    with store.write() as txn:
        extra = json.loads(txn.one("SELECT extra FROM runs WHERE name = 'churn-certified-1'"))
        extra["removal_budget_spent"] = extra["certified_removal"]["removal_budget"]
        txn.con.execute("UPDATE runs SET extra = ? WHERE name = 'churn-certified-1'", [json.dumps(extra)])
    with pytest.raises(execute.ActionFailed, match="nothing was changed"):
        execute.EXECUTORS["certified_removal"](ctx, item)
    assert execute.model_of_run(store, "churn-certified-1.xffffffff") is None
    with store.write() as txn:
        extra["removal_budget_spent"] = 0.0
        txn.con.execute("UPDATE runs SET extra = ? WHERE name = 'churn-certified-1'", [json.dumps(extra)])
    out = execute.EXECUTORS["certified_removal"](ctx, item)
    got = weights(info(store, out.new_model)["path"])["w"].double()
    assert torch.allclose(got, expect_w, atol=1e-6) and not torch.allclose(got, w0)
    with store.read() as con:
        new_extra = json.loads(con.execute("SELECT extra FROM runs WHERE name = 'churn-certified-1.xffffffff'")
                               .fetchone()[0])
    assert new_extra["removal_budget_spent"] == pytest.approx(sum(bounds))
    assert out.detail["how"] == "batch"  # the trained weights carried their Hessian: the removed rows alone
    # A second removal, from the new version (which carries no Hessian at its own weights): Newton steps per row
    # on its training data, i.e. the version minus both subjects' records, recomputed here independently.
    import numpy as np
    import pyarrow.parquet as pq

    ids = [r for r in pq.read_table(rec["config"]["features"]).column("customer_id").to_pylist() if r != subject]
    other = ids[len(ids) // 2]
    first = store.records_of_subjects([subject])
    kept1 = mlp.dataset(TrainRequest(**{**req.__dict__, "exclude_records": first}))
    both = np.union1d(first, store.records_of_subjects([other]))
    kept2 = set(mlp.dataset(TrainRequest(**{**req.__dict__, "exclude_records": both})).row_ids)
    remove2 = [i for i, r in enumerate(kept1.row_ids) if r not in kept2]
    assert remove2
    x1, y1 = lc.design(kept1)
    expect2, bounds2 = lc.newton_removal(x1, y1, got, rec["config"].get("lam", 1e-3), remove2)
    item2 = {**item, "model": out.new_model}
    ctx2 = execute.Context(store, {"id": "e" * 64, "requests": [], "items": [item2]},
                           store.records_of_subjects([other]))
    out2, wall, _ = execute.run_action(ctx2, item2)
    assert out2.detail["how"] == "per-row" and out2.detail["newton_steps"] == len(remove2)
    # Its time, split as the batch path's is: reading the training data, the steps, recording the new version;
    # the rest of the action's wall seconds is its bookkeeping (looking the run up, loading the weights).
    parts = [out2.detail[k] for k in ("read_seconds", "step_seconds", "record_seconds")]
    assert all(p > 0 for p in parts) and sum(parts) <= out2.detail["seconds"] <= wall
    assert out2.detail["bookkeeping_seconds"] == pytest.approx(wall - sum(parts), abs=2e-6)
    got2 = weights(info(store, out2.new_model)["path"])["w"].double()
    assert torch.allclose(got2, expect2, atol=1e-6)
    assert out2.detail["budget_used"] == pytest.approx(sum(bounds2))
    # Its run records the rows it kept: the version minus both subjects (its base subset minus the second).
    rec2 = recorded_request(store, execute.model_info(store, out2.new_model)["run"])
    assert sorted(rec2["inputs"][0]["rows"]) == sorted(kept2)
    # And it saved the Hessian at its weights: a third removal would need only the removed rows.
    assert "hessian" in torch.load(info(store, out2.new_model)["path"])["removal_state"]



def test_completion_proves_by_lineage_then_the_store_forgets(executed):
    """Run again (every action done): the lineage proof is recorded, the subject is forgotten (0 found, a
    tombstone), the request verified; once more, nothing changes."""
    from expunge.lineage.forget import tombstones

    store, subject, doc, result, _ = executed
    before = store.impact([subject])
    assert before.found == 1 and before.records > 0
    out = execute.run_plan(store, doc["id"])
    proof = out["completed"]["proof"]
    assert set(proof["new_versions"]) == {a["new_model"] for a in result["actions"]}
    assert proof["erased_records"] == before.records and proof["reached_by_erased"] == []
    assert out["completed"]["forgotten"][doc["requests"][0]]["records_removed"] == before.records
    assert store.impact([subject]).found == 0
    assert [t["request_id"] for t in tombstones(store)] == doc["requests"]
    assert rq.get(store, doc["requests"][0]).status == "verified"
    again = execute.run_plan(store, doc["id"])
    assert again["completed"] == out["completed"]


def _cheapest_demo(tmp_path, extra: str = ""):
    """The demo store under a policy that always takes the cheapest action (and `extra` TOML), made the store's
    policy with the demo's approver; its newest customer's marketing request planned and approved."""
    from expunge.demo import build_demo
    from expunge.orchestrator.policy import set_store_policy

    store, subject = build_demo(tmp_path)
    text = (tmp_path / "policy.toml").read_text().replace("max_premium = 2.0", "max_premium = 1.0")
    (tmp_path / "cheapest.toml").write_text(text + extra)
    set_store_policy(store, tmp_path / "cheapest.toml")
    r = rq.create(store, [subject], category="marketing", policy=store_policy(store))
    doc = planner.make_plan(store, [r.id], store_policy(store))
    planner.save_plan(store, doc)
    planner.approve(store, doc["id"], tmp_path / "approver.key")
    return store, subject, doc


def test_a_chain_retrained_from_scratch_never_reuses_a_parents_approximate_result(tmp_path):
    store, subject, doc = _cheapest_demo(tmp_path, '\n[models."churn-ft"]\nalways_retrain = true\n')
    chosen = {i["model"]: i["chosen"]["action"] for i in doc["items"]}
    assert chosen["churn-mlp@1"] == "approximate_unlearning" and chosen["churn-ft@1"] == "full_retrain"
    out = execute.run_plan(store, doc["id"], finish=False)
    new = {a["model"]: a["new_model"] for a in out["actions"]}
    pos = next(p for p, i in enumerate(doc["items"]) if i["model"] == "churn-mlp@1")
    (esc,) = execute._escalated(store, doc["id"], pos)  # a one-row forget set: the check cannot pass
    approximate = esc["rejected_model"]
    ft = info(store, new["churn-ft@1"])
    (parent,) = ft["parents"]
    assert parent["model"] != approximate  # not the approximate result
    # The chain's own scratch retrain of churn-mlp: its lineage holds none of the subject's records.
    reached = {m["id"] for m in store.impact([subject]).models}
    assert new["churn-ft@1"] not in reached and parent["model"] not in reached
    assert approximate in reached  # the approximate one still descends from a model that saw them
    assert info(store, new["churn-ft@1"])["stage"] == "staging"


def test_results_as_good_as_approximate_wait_for_their_check(tmp_path):
    """A child re-derived from an approximately unlearned parent is approximate too, and waits for the parent's
    check: here the parent's forget set (one row, no held-out rows) cannot pass it, so the parent's result is
    rolled back (archived, never promoted) and the plan's next admissible action runs; the child is re-derived
    from that, and the request completes."""
    store, subject, doc = _cheapest_demo(tmp_path)
    items = {i["model"]: i for i in doc["items"]}
    assert items["churn-ft@1"]["chosen"] == {**items["churn-ft@1"]["chosen"], "action": "rederive_from_parent",
                                             "guarantee": "approximate"}
    runner_up = next(c["action"] for c in items["churn-mlp@1"]["candidates"]
                     if c["admissible"] and c["action"] != "approximate_unlearning")
    out = execute.run_plan(store, doc["id"])
    acts = {a["model"]: a for a in out["actions"]}
    assert acts["churn-mlp@1"]["action"] == runner_up and acts["churn-mlp@1"]["escalated_from"] == \
        "approximate_unlearning"
    pos = list(items).index("churn-mlp@1")
    (esc,) = execute._escalated(store, doc["id"], pos)
    assert esc["verdict"] == "inconclusive" and esc["to_action"] == runner_up
    assert info(store, esc["rejected_model"])["stage"] == "archived"
    # The rejected result says what it is, in its file and in its run: SCRUB (the policy's method) on the
    # subject's one training row, and the retained rows its run records as its train input.
    rejected = info(store, esc["rejected_model"])
    assert torch.load(rejected["path"], weights_only=True)["unlearned"] == {"method": "scrub", "forget_rows": 1}
    with store.read() as con:
        extra, n_rows = con.execute("""SELECT r.extra, i.n_rows FROM runs r JOIN run_inputs i USING (run_id)
                                       WHERE r.name = ?""", [rejected["run"]]).fetchone()
    made = json.loads(extra)["approximate_unlearning"]
    assert (made["method"], made["plan"], made["forget_rows"], made["retain_rows"]) == ("scrub", doc["id"], 1, n_rows)
    assert n_rows > 0
    assert info(store, acts["churn-ft@1"]["new_model"])["parents"][0]["model"] == acts["churn-mlp@1"]["new_model"]
    assert all(a["check_result"] == "pass" and not a["pending_check"] for a in out["actions"])
    assert out["completed"] is not None and store.impact([subject]).found == 0
    assert rq.get(store, doc["requests"][0]).status == "verified"


def test_run_needs_the_stores_policy_and_works_without_approvals_when_it_says_so(tmp_path):
    from expunge.demo import build_demo
    from expunge.orchestrator.policy import load_policy, set_store_policy

    store, subject = build_demo(tmp_path)
    lax = tmp_path / "lax.toml"
    lax.write_text((tmp_path / "policy.toml").read_text().replace("required = true", "required = false"))
    r = rq.create(store, [subject], category="default", policy=store_policy(store))
    other = planner.make_plan(store, [r.id], load_policy(lax))
    planner.save_plan(store, other)
    with pytest.raises(BadInput, match="not the store's"):
        execute.run_plan(store, other["id"], dry_run=True)
    set_store_policy(store, lax)  # the store's policy now needs no approval
    doc = planner.make_plan(store, [r.id], store_policy(store))
    planner.save_plan(store, doc)
    out = execute.run_plan(store, doc["id"], finish=False)
    assert out["done"] == out["total"]


def test_plan_list_says_which_plans_ran(executed):
    store, _, doc, _, _ = executed
    states = {p["id"]: p["state"] for p in planner.list_plans(store)}
    assert states[doc["id"]] == "ran"
