"""Checks (`expunge.orchestrator.verify`, `expunge verify`, and `expunge run` checking before it promotes):
planted failures are caught — an "unlearned" model that was not changed fails membership inference where the
original memorises; an exact result whose manifest holds an erased record fails the lineage proof; a model
file swapped after execution fails the hash; a re-run that does not give the recorded artifact fails
reproduction — and a result that passes is promoted while one that does not is rolled back and escalated."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from expunge.orchestrator import execute, mia, planner, verify  # noqa: E402
from expunge.orchestrator import requests as rq  # noqa: E402
from expunge.orchestrator.policy import store_policy  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small models train ~30× faster on one thread than on two threads that other processes share."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------ the statistics, against brute force


def test_delong_placements_and_variance_match_brute_force():
    rng = np.random.default_rng(3)
    pos, neg = rng.integers(0, 6, 17).astype(float), rng.integers(0, 6, 23).astype(float)  # many ties
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = mia.placements(pos, neg)
    np.testing.assert_allclose(v10, psi.mean(1))
    np.testing.assert_allclose(v01, psi.mean(0))
    other = pos + rng.normal(0, 1, pos.size), neg + rng.normal(0, 1, neg.size)
    psi2 = (other[0][:, None] > other[1][None, :]) + 0.5 * (other[0][:, None] == other[1][None, :])
    aucs, cov = mia.auc_covariance([(pos, neg), other])
    assert aucs.tolist() == pytest.approx([psi.mean(), psi2.mean()])
    m, n = pos.size, neg.size
    c10 = np.cov(psi.mean(1), psi2.mean(1))[0, 1] / m
    c01 = np.cov(psi.mean(0), psi2.mean(0))[0, 1] / n
    assert cov[0, 1] == pytest.approx(c10 + c01)
    assert cov[0, 0] == pytest.approx(np.var(psi.mean(1), ddof=1) / m + np.var(psi.mean(0), ddof=1) / n)
    with pytest.raises(ValueError, match="at least 2"):
        mia.auc_covariance([([1.0], [0.0, 2.0])])


def test_equivalence_rule_by_hand():
    z = verify.Z90
    assert verify.equivalence(0.5, 0.01, 0.5, 0.05)["verdict"] == "pass"        # 0.5 ± 0.016
    assert verify.equivalence(0.5, 0.04, 0.5, 0.05)["verdict"] == "inconclusive"  # ± 0.066 crosses the band
    assert verify.equivalence(0.9, 0.1, 0.5, 0.05)["verdict"] == "fail"          # 0.9 − 0.164 > 0.55
    e = verify.equivalence(0.52, 0.01, 0.5, 0.05)
    assert e["ci90"] == pytest.approx([0.52 - z * 0.01, 0.52 + z * 0.01]) and e["band"] == pytest.approx([0.45, 0.55])


# ------------------------------------------------------------------ membership inference on a memorising MLP


@pytest.fixture(scope="module")
def memorised():
    from tests.test_approximate import scenario_data, train_mlp

    forget, retain, nonmembers, test = scenario_data()
    original = train_mlp(torch.cat([forget[0]] * 5 + [retain[0]]), torch.cat([forget[1]] * 5 + [retain[1]]))
    retrained = train_mlp(*retain)
    return forget, retain, nonmembers, original, retrained


def brute_auc(model, members, nonmembers) -> float:
    lm, ln = mia.example_stats(model, members).loss, mia.example_stats(model, nonmembers).loss
    return float(np.mean([1.0 if a < b else 0.5 if a == b else 0.0 for a in lm for b in ln]))


def test_an_unlearned_model_that_was_not_changed_fails_membership_inference(memorised):
    forget, retain, nonmembers, original, retrained = memorised
    kw = dict(max_mia_auc=0.55, max_mia_auc_gap=0.05, max_accuracy_drop=0.02)
    for kind, ref in (("mia", None), ("mia_retrained", retrained)):
        res = verify.membership_check(original, copy.deepcopy(original), forget, retain, nonmembers, kind=kind,
                                      reference=ref, **kw)
        assert res["verdict"] == "fail" and not res["passed"], (kind, res["reasons"])
        loss = res["metrics"]["mia"]["loss"]
        assert loss["auc"]["unlearned"] == pytest.approx(brute_auc(original, forget, nonmembers))
        assert loss["auc"]["unlearned"] > 0.8 and loss["ci90"][0] > loss["band"][1]
        assert res["metrics"]["accuracy_drop"]["test"] == 0.0
    # The retrained model itself, as the "unlearned" one, is not flagged as leaking (its AUC is near 0.5).
    res = verify.membership_check(original, retrained, forget, retain, nonmembers, kind="mia", **kw)
    assert res["metrics"]["mia"]["loss"]["verdict"] != "fail"
    assert res["metrics"]["mia"]["loss"]["auc"]["unlearned"] == pytest.approx(brute_auc(retrained, forget, nonmembers))
    # A one-row forget set proves nothing either way: inconclusive, never a pass.
    one = (forget[0][:1], forget[1][:1])
    res = verify.membership_check(original, retrained, one, retain, nonmembers, kind="mia", **kw)
    assert res["verdict"] != "pass" and res["metrics"]["mia"] is None
    assert any("not judged" in r for r in res["reasons"])


# ------------------------------------------------------------------ `expunge run`: check, then promote or escalate

D = 8


def small_store(root: Path, *, memorise: bool, n_subjects: int, rows_each: int, erase: int, held: int):
    """A store with one MLP trained on the non-held-out subjects' rows (the held-out ones recorded as its eval
    input: the non-members). With `memorise`, the erased subjects' rows are labelled against the pattern and the
    MLP is trained long enough to remember them. A marketing-category (approximate allowed) request for the
    first `erase` subjects is planned under a policy that takes the cheapest action and approved."""
    from expunge.lineage.store import Store
    from expunge.orchestrator.approvals import keygen
    from expunge.orchestrator.policy import default_policy_text, set_store_policy
    from expunge.orchestrator.trainers import TrainRequest, mlp

    store = Store.init(root / "store")
    rng = np.random.default_rng(0)
    n = n_subjects * rows_each
    x = rng.normal(size=(n, D)).astype(np.float32)
    y = (x @ rng.normal(size=D) + 0.5 * rng.normal(size=n) > 0).astype(np.int64)
    if memorise:
        y[: erase * rows_each] = 1 - y[: erase * rows_each]
    table = pa.table({"customer_id": np.repeat([f"s{i:04d}" for i in range(n_subjects)], rows_each),
                      "record_id": [f"r{i:05d}" for i in range(n)], "label": y,
                      **{f"f{j}": x[:, j] for j in range(D)}})
    store.ingest_source(table.select(["customer_id", "record_id"]), name="points", subject_col="customer_id",
                        record_col="record_id")
    hold = np.zeros(n, bool)
    hold[-held * rows_each:] = True
    for name, mask in (("train", ~hold), ("holdout", hold)):
        store.ingest_dataset(table.filter(pa.array(mask)).select(["record_id"]), name=name, parents=["points@1"],
                             kind="split", record_col="record_id")
    pq.write_table(table.drop(["customer_id"]), root / "points.parquet")
    cfg = {"features": str(root / "points.parquet"), "row_col": "record_id", "label_col": "label",
           "feature_cols": [f"f{j}" for j in range(D)], "batch_size": 32,
           **({"hidden": 64, "epochs": 30, "lr": 0.1} if memorise else {"hidden": 16, "epochs": 4, "lr": 0.05})}
    mlp.train(TrainRequest(store=store, run_name="clf-1", config=cfg, seed=3, out_dir=root / "art",
                           inputs=[{"dataset": "train@1", "role": "train"}, {"dataset": "holdout@1", "role": "eval"}],
                           trainer=mlp.ENTRY_POINT, model_name="clf", stage="production", model_family="mlp"))
    pub = keygen(root / "ana.key", "ana")
    text = default_policy_text().replace("max_premium = 2.0", "max_premium = 1.0").replace(
        "max_mia_auc = 0.55", "max_mia_auc = 0.60")
    (root / "policy.toml").write_text(text + f'\n[approval.keys]\nana = "{" ".join(pub.split()[:2])}"\n')
    set_store_policy(store, root / "policy.toml")
    r = rq.create(store, [f"s{i:04d}" for i in range(erase)], category="marketing", policy=store_policy(store))
    doc = planner.make_plan(store, [r.id], store_policy(store))
    planner.save_plan(store, doc)
    planner.approve(store, doc["id"], root / "ana.key")
    assert doc["items"][0]["chosen"]["action"] == "approximate_unlearning"
    forget = (torch.from_numpy(x[: erase * rows_each]), torch.from_numpy(y[: erase * rows_each]))
    nonmembers = (torch.from_numpy(x[hold]), torch.from_numpy(y[hold]))
    return store, doc, forget, nonmembers


def load_mlp(store, ref: str):
    from expunge.orchestrator.trainers import mlp

    w = torch.load(execute.model_info(store, ref)["path"], weights_only=True)["model"]
    model = mlp.build(D, w["0.weight"].shape[0], 2)
    model.load_state_dict(w)
    return model


def test_a_passing_approximate_result_is_promoted_and_the_request_completes(tmp_path):
    store, doc, forget, nonmembers = small_store(tmp_path, memorise=False, n_subjects=150, rows_each=20, erase=5,
                                                 held=40)
    out = execute.run_plan(store, doc["id"])
    (a,) = out["actions"]
    assert (a["action"], a["check_result"], a["pending_check"]) == ("approximate_unlearning", "pass", False)
    assert execute.model_info(store, a["new_model"])["stage"] == "production"
    assert execute.model_info(store, "clf@1")["stage"] == "superseded"
    assert out["completed"] is not None and rq.get(store, doc["requests"][0]).status == "verified"
    assert set(out["completed"]["proof"]["checked_by_membership_inference"]) == {a["new_model"]}
    check = verify.latest(store, doc["id"])[0]
    assert check["kind"] == "mia" and check["passed"] and check["metrics"]["rows"]["forget"] == 100
    loss = check["metrics"]["mia"]["loss"]
    assert loss["auc"]["unlearned"] == pytest.approx(brute_auc(load_mlp(store, a["new_model"]), forget, nonmembers))
    assert loss["auc"]["original"] == pytest.approx(brute_auc(load_mlp(store, "clf@1"), forget, nonmembers))
    assert 0.4 <= loss["ci90"][0] and loss["ci90"][1] <= 0.6  # inside the policy's 0.5 ± 0.1


def test_a_failing_approximate_result_is_rolled_back_and_escalated(tmp_path):
    from expunge.orchestrator import residuals

    store, doc, forget, nonmembers = small_store(tmp_path, memorise=True, n_subjects=100, rows_each=10, erase=5,
                                                 held=30)
    out = execute.run_plan(store, doc["id"])
    (a,) = out["actions"]
    (esc,) = execute._escalated(store, doc["id"], 0)
    assert esc["from_action"] == "approximate_unlearning" and esc["to_action"] == "full_retrain"
    assert esc["verdict"] == "fail"
    rejected = esc["rejected_model"]
    assert execute.model_info(store, rejected)["stage"] == "archived"
    with store.read() as con:
        (why,) = con.execute("SELECT reason FROM model_stages WHERE model_id = ?",
                             [execute.model_info(store, rejected)["model_id"]]).fetchone()
        checks = con.execute("SELECT new_model, kind, verdict, passed FROM action_checks WHERE plan_id = ? "
                             "ORDER BY checked_at", [doc["id"]]).fetchall()
    assert why.startswith("rejected: its mia check did not pass")
    # What ran: the rejected approximate result, checked and failed; then a retrain from scratch, checked by
    # lineage and promoted in the old version's place.
    assert checks == [(rejected, "mia", "fail", False), (a["new_model"], "lineage", "pass", True)]
    assert (a["action"], a["escalated_from"], a["attempts"]) == ("full_retrain", "approximate_unlearning", 2)
    new = execute.model_info(store, a["new_model"])
    assert new["stage"] == "production" and new["run"] == f"clf-1.x{doc['id'][:8]}.s"
    assert execute.model_info(store, "clf@1")["stage"] == "superseded"
    assert out["completed"] is not None and rq.get(store, doc["requests"][0]).status == "verified"
    # The recorded attack AUC is the rejected model's, computed here pair by pair.
    metrics = verify.latest(store, doc["id"])  # the latest is the retrain's: read the failed one from the table
    with store.read() as con:
        m = json.loads(con.execute("SELECT metrics FROM action_checks WHERE new_model = ?", [rejected]).fetchone()[0])
    assert m["mia"]["loss"]["auc"]["unlearned"] == pytest.approx(brute_auc(load_mlp(store, rejected), forget,
                                                                           nonmembers))
    assert metrics[0]["new_model"] == a["new_model"]
    # The rejected file still holds the records' influence: a residual copy.
    got = residuals.residuals(store, doc["requests"][0])
    assert rejected in {r["model"] for r in got["residuals"]}


# ------------------------------------------------------------------ exact actions: proof, hashes, reproduction, CLI


@pytest.fixture(scope="module")
def exact_run(tmp_path_factory):
    """The demo store, its default-category request (exact unlearning) run, not completed (the subject is known)."""
    from expunge.demo import build_demo

    root = tmp_path_factory.mktemp("verify-exact")
    store, subject = build_demo(root)
    r = rq.create(store, [subject], category="default", policy=store_policy(store))
    doc = planner.make_plan(store, [r.id], store_policy(store))
    planner.save_plan(store, doc)
    planner.approve(store, doc["id"], root / "approver.key")
    out = execute.run_plan(store, doc["id"], finish=False)
    return store, subject, doc, {a["model"]: a["new_model"] for a in out["actions"]}, out


def _check(result: dict, model: str) -> dict:
    return next(c for c in result["checks"] if c["model"] == model)


def test_exact_results_pass_the_lineage_proof_with_their_files_rehashed(exact_run):
    import jsonschema
    from typer.testing import CliRunner

    from expunge.cli import app
    from expunge.schemas import load_schema

    store, subject, doc, new, out = exact_run
    assert all(a["check_result"] == "pass" for a in out["actions"])
    res = CliRunner().invoke(app, ["verify", doc["id"][:12], "--store", str(store.root), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    jsonschema.validate(got, load_schema("verify.schema.json"))
    assert got["passed"] and got["source"] == "computed"
    for model, made in new.items():
        c = _check(got, model)
        assert c["kind"] == "lineage" and c["passed"]
        chain = c["metrics"]["chain"]
        assert chain[0]["model"] == made and all(v["erased_records"] == 0 and v["artifact"] == "ok" for v in chain)
        for v in chain:  # the recorded hashes are the files' bytes
            path = execute.model_info(store, v["model"])["path"]
            assert v["sha256"] == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    # The probe: fraud's retrain without the subject's transactions, on rows built from them and others.
    probe = _check(got, "fraud@1")["metrics"]["probe"]
    run = next(r for r in store.impact([subject]).runs if r["id"] == "fraud-train-1")
    assert probe["available"] and probe["erased"]["rows"] == next(i["records"] for i in run["inputs"]
                                                                  if i["role"] == "train")
    table = CliRunner().invoke(app, ["verify", doc["id"][:12], "--store", str(store.root)])
    assert table.exit_code == 0 and "6 of 6 check(s) passed" in table.output


def test_a_model_file_swapped_after_execution_fails_the_hash(exact_run):
    from typer.testing import CliRunner

    from expunge.cli import app

    store, _, doc, new, _ = exact_run
    path = Path(execute.model_info(store, new["churn-mlp@1"])["path"])
    saved = path.read_bytes()
    try:
        shutil.copyfile(execute.model_info(store, "churn-mlp@1")["path"], path)  # the old model, under the new name
        got = verify.verify_plan(store, doc["id"])
        c = _check(got, "churn-mlp@1")
        assert not c["passed"] and c["metrics"]["chain"][0]["artifact"] == "changed"
        # churn-ft descends from it: its chain holds the swapped file too.
        assert not _check(got, "churn-ft@1")["passed"]
        assert _check(got, "fraud@1")["passed"]
        res = CliRunner().invoke(app, ["verify", doc["id"][:12], "--store", str(store.root), "--json"])
        assert res.exit_code == 1 and not json.loads(res.output)["passed"]
    finally:
        path.write_bytes(saved)
    assert verify.verify_plan(store, doc["id"])["passed"]


def test_an_exact_result_whose_manifest_holds_an_erased_record_fails_the_proof(exact_run, tmp_path):
    """Planted: the execution record points at a version trained on the whole dataset, erased records included."""
    store, subject, doc, new, _ = exact_run
    made = execute.model_info(store, new["churn-mlp@1"])
    copy_path = tmp_path / "model.pt"
    shutil.copyfile(made["path"], copy_path)
    store.record_run({"run": {"name": "planted-1", "inputs": [{"dataset": "customers@1", "role": "train"}]},
                      "models": [{"name": "churn-mlp", "path": str(copy_path), "stage": "dev"}]})
    planted = execute.model_of_run(store, "planted-1")
    pos = next(p for p, i in enumerate(doc["items"]) if i["model"] == "churn-mlp@1")
    with store.write() as txn:
        txn.con.execute("UPDATE execution_actions SET new_model = ? WHERE plan_id = ? AND position = ?",
                        [planted, doc["id"], pos])
    try:
        c = _check(verify.verify_plan(store, doc["id"]), "churn-mlp@1")
        held = next(r["records"] for r in store.impact([subject]).runs if r["id"] == "planted-1")
        assert not c["passed"] and c["metrics"]["chain"][0]["erased_records"] == held > 0
        assert "hold erased records" in c["reasons"][0]
    finally:
        with store.write() as txn:
            txn.con.execute("UPDATE execution_actions SET new_model = ? WHERE plan_id = ? AND position = ?",
                            [new["churn-mlp@1"], doc["id"], pos])


def test_reproduce_reruns_in_a_fresh_process_and_compares_the_artifact(exact_run):
    store, _, doc, new, _ = exact_run
    state = execute._state(store, doc["id"])
    pos = next(p for p, i in enumerate(doc["items"]) if i["model"] == "churn-certified@1")
    rep = verify.reproduce(store, doc["id"], pos, "full_retrain", "churn-certified@1", new["churn-certified@1"],
                           state[pos]["detail"])
    assert rep["done"] and rep["same"] and rep["reproduced_sha256"] == execute.model_info(
        store, new["churn-certified@1"])["sha256"]
    # Planted: the store's record of the run no longer says what made the file (another seed).
    run = execute.model_info(store, new["churn-certified@1"])["run"]
    with store.write() as txn:
        txn.con.execute("UPDATE runs SET seed = seed + 1 WHERE name = ?", [run])
    try:
        rep = verify.reproduce(store, doc["id"], pos, "full_retrain", "churn-certified@1", new["churn-certified@1"],
                               state[pos]["detail"])
        assert rep["done"] and not rep["same"]
    finally:
        with store.write() as txn:
            txn.con.execute("UPDATE runs SET seed = seed - 1 WHERE name = ?", [run])
    assert verify.reproduce(store, doc["id"], pos, "approximate_unlearning", "x", new["churn-certified@1"],
                            {})["done"] is False


def test_after_completion_the_recorded_checks_stand_and_files_are_rehashed(exact_run):
    store, subject, doc, new, _ = exact_run
    done = execute.run_plan(store, doc["id"])
    assert done["completed"] is not None and store.impact([subject]).found == 0
    got = verify.verify_plan(store, doc["id"])
    assert got["source"] == "recorded" and got["passed"]
    path = Path(execute.model_info(store, new["fraud@1"])["path"])
    saved = path.read_bytes()
    try:
        path.write_bytes(saved + b"\0")
        got = verify.verify_plan(store, doc["id"])
        assert not _check(got, "fraud@1")["passed"] and _check(got, "churn@1")["passed"]
    finally:
        path.write_bytes(saved)


def test_a_reproduction_finding_is_said_once_however_often_verify_runs(exact_run, monkeypatch):
    """After completion a check is the recorded one; `--reproduce` adds its finding to it and records it: a
    second call must replace that finding, not add it again."""
    store, subject, doc, new, _ = exact_run
    if store.impact([subject]).found:  # the previous test completed the request; alone, complete it here
        execute.run_plan(store, doc["id"])
    calls = []

    def different(store_, pid, pos, action, model, new_model, detail, timeout=0):
        calls.append(model)
        return {"done": True, "recorded_sha256": "a" * 64, "reproduced_sha256": "b" * 64, "same": False}

    monkeypatch.setattr(verify, "reproduce", different)
    for _ in range(3):
        got = verify.verify_plan(store, doc["id"], reproduce_exact=True)
    assert calls and not got["passed"]
    for c in got["checks"]:
        said = [r for r in c["reasons"] if r.startswith(verify.REPRODUCE_FAILED)]
        assert said == [f"{verify.REPRODUCE_FAILED} (bbbbbbbbbbbb… instead of aaaaaaaaaaaa…)"], c["reasons"]
