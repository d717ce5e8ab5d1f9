"""The certified logistic regression keeps its training rows by record (its removal rows file), so that a batch
removal reads the removed rows alone: the file's rows against the features table read here by hand, a removal from
the file against one from the features file, a changed block refused, the file listed and purged as a residual."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from expunge.orchestrator import certified, execute  # noqa: E402
from expunge.orchestrator.certified_exec import certified_removal  # noqa: E402
from tests.test_trainers import train_certified  # noqa: E402


def _meta(store, run="cr-1"):
    with store.read() as con:
        return json.loads(con.execute("SELECT extra FROM runs WHERE name = ?", [run]).fetchone()[0]).get("removal_rows")


def _by_hand(store, table, subjects):
    """The design rows of `subjects`' records, from the features table and the store's rows, computed here: float32
    features as the dataset holds them, a bias column, each row scaled into the unit ball; labels in ±1. Returned in
    record-ordinal order with the ordinals."""
    rows = store.rows("customers@1")
    ord_of = dict(zip(rows.row_ids.to_pylist(), rows.ords.tolist()))
    ids = table.column("record_id").to_pylist()
    owners = table.column("customer_id").to_pylist()
    picked = sorted((ord_of[r], i) for i, (r, s) in enumerate(zip(ids, owners)) if s in subjects)
    feats = np.column_stack([table.column(f"f{j}").to_numpy().astype(np.float32) for j in range(8)]).astype(np.float64)
    x = np.column_stack([feats, np.ones(len(feats))])
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1.0)
    y = table.column("churned").to_numpy().astype(np.float64) * 2 - 1
    idx = [i for _, i in picked]
    return np.array([o for o, _ in picked]), x[idx], y[idx]


def _train_shuffled(store, tmp_path, n, **config):
    """`train_certified` on customers ingested in a shuffled order: record ordinals (ingest order) then differ
    from the dataset's row order (by record id)."""
    import pyarrow.parquet as pq

    from expunge import synth
    from expunge.orchestrator.trainers import TrainRequest
    from expunge.orchestrator.trainers import logreg_certified as lc

    table = synth.customers(n, seed=4)
    table = table.take(np.random.default_rng(0).permutation(n))
    pq.write_table(table, tmp_path / "features.parquet")
    store.ingest_source(table, name="customers", subject_col="customer_id", record_col="record_id")
    cfg = {"features": str(tmp_path / "features.parquet"), "row_col": "record_id",
           "feature_cols": [f"f{j}" for j in range(8)], "label_col": "churned", **config}
    req = TrainRequest(store=store, run_name="cr-1", inputs=[{"dataset": "customers@1", "role": "train"}],
                       config=cfg, seed=3, out_dir=tmp_path / "cr", trainer=lc.ENTRY_POINT, model_name="churn-cr",
                       model_family=lc.FAMILY)
    lc.train(req)
    return table, req, json.loads(_extra(store))["certified_removal"]


def _extra(store, run="cr-1"):
    with store.read() as con:
        return con.execute("SELECT extra FROM runs WHERE name = ?", [run]).fetchone()[0]


@pytest.mark.parametrize("shuffled", [False, True])
def test_the_file_holds_each_training_row_as_trained_by_record(store, tmp_path, shuffled):
    if shuffled:
        table, _, _ = _train_shuffled(store, tmp_path, 300, lam=0.02)
        rows = store.rows("customers@1")
        ids = rows.row_ids.to_pylist()  # in ordinal order: not the dataset's row order (by id)
        assert ids != sorted(ids)
    else:
        table, _, _ = train_certified(store, tmp_path, 300, 4, seed=3, lam=0.02)
    meta = _meta(store)
    assert meta["rows"] == 300 and meta["dim"] == 8 and Path(meta["file"]).parent == tmp_path / "cr"
    assert oct(Path(meta["file"]).stat().st_mode & 0o777) == "0o600"
    owners = table.column("customer_id").to_pylist()
    # Boundary subjects: the lowest and highest record ordinals (the binary search's ends) and one in between.
    ords_all = store.records_of_subjects(owners)
    lo_hi = [s for s in dict.fromkeys(owners) if store.records_of_subjects([s])[0] in (ords_all.min(), ords_all.max())]
    for subjects in ([owners[150]], lo_hi, [owners[3], owners[200], owners[299]]):
        ords, x, y = _by_hand(store, table, set(subjects))
        got = certified.removal_rows(meta, store.records_of_subjects(subjects))
        assert got["k"] == len(ords) and got["erased_train"].tolist() == ords.tolist()
        assert np.array_equal(got["x"].numpy(), x) and np.array_equal(got["y"].numpy(), y)
    # Records the run did not train on are not found; nothing asked, nothing read.
    assert certified.removal_rows(meta, np.array([10**6], np.uint32))["k"] == 0
    assert certified.removal_rows(meta, np.array([], np.uint32))["k"] == 0


def test_the_search_finds_exactly_the_trained_records_asked_for(tmp_path):
    """Boundaries of the ordinal search: below the first, between two, the first and last, past the last, twice;
    the rows come back in design form (a bias column, scaled into the unit ball, labels ±1), computed here."""
    ords = np.array([9, 2, 5, 1000], np.int64)  # any order: the file is in ordinal order
    x = torch.tensor([[3.0, 4.0], [0.1, 0.2], [-6.0, 0.0], [0.0, 0.5]], dtype=torch.float32)
    y = torch.tensor([1, 0, 1, 0])
    design = {9: ([3 / 26 ** 0.5, 4 / 26 ** 0.5, 1 / 26 ** 0.5], 1.0), 2: ([0.1 / 1.05 ** 0.5, 0.2 / 1.05 ** 0.5, 1 / 1.05 ** 0.5], -1.0),
              5: ([-6 / 37 ** 0.5, 0.0, 1 / 37 ** 0.5], 1.0), 1000: ([0.0, 0.5 / 1.25 ** 0.5, 1 / 1.25 ** 0.5], -1.0)}
    meta = certified.save_removal_rows(tmp_path, ords, x, y)
    cases = {(0,): [], (2,): [2], (3, 4): [], (2, 1000): [2, 1000], (1001,): [], (5, 5, 9): [5, 9],
             (0, 2, 4, 5, 6, 9, 10, 999, 1000, 2000): [2, 5, 9, 1000], (2**32 - 1,): []}
    for erased, want in cases.items():
        got = certified.removal_rows(meta, np.asarray(erased, np.int64))
        assert got["erased_train"].tolist() == want, erased
        assert np.allclose(got["x"].numpy().reshape(-1, 3), np.reshape([design[o][0] for o in want], (-1, 3)),
                           rtol=0, atol=1e-7)
        assert got["y"].tolist() == [design[o][1] for o in want]
    # A version trained on a subset of the file's records (a later one of the chain): only its records are removed,
    # whichever end of the subset the erased ones sit at.
    for base, erased, want in (([2, 5, 1000], [0, 2, 9, 1000, 2000], [2, 1000]), ([5, 9], [2, 5, 9, 1000], [5, 9]),
                               ([2], [2, 5], [2]), ([1000], [0, 1000], [1000]), ([], [2, 5], [])):
        rec = {"inputs": [{"dataset": "d@1", "role": "train", "_row_space": "records",
                           "_subset_ords": np.asarray(base, np.uint32)}]}
        got, where = certified.find_removed_rows(None, rec, np.asarray(erased, np.uint32), {"removal_rows": meta})
        assert (got["erased_train"].tolist(), where) == (want, "removal rows file"), (base, erased)
    # A record twice among the rows, or labels other than 0/1: no file.
    assert certified.save_removal_rows(tmp_path / "twice", np.array([3, 3]), x[:2], y[:2]) is None
    assert certified.save_removal_rows(tmp_path / "labels", np.array([3, 4]), x[:2], torch.tensor([0, 2])) is None


def _ctx(store, subjects, tag="0123456789abcdef"):
    return execute.Context(store, {"id": tag * 4, "requests": ["req-000001"]}, store.records_of_subjects(subjects))


def _batch_from_features_file(store, subjects, lam):
    """The new weights of a batch removal computed from the rows read out of the features file (`removed_rows`)."""
    from expunge.lineage.torch import load_artifact
    from expunge.orchestrator.rerun import recorded_request

    info = execute.model_info(store, "churn-cr@1")
    state = load_artifact(info["path"], info["sha256"], store=store)
    rows = certified.removed_rows(store, recorded_request(store, "cr-1", rows=False), store.records_of_subjects(subjects))
    return certified.batch_removal(state["removal_state"], state["model"]["w"].double(), lam, rows["x"], rows["y"])


def test_a_removal_reads_the_rows_from_the_file_and_gives_the_features_files_result(store, tmp_path):
    table, req, cert = train_certified(store, tmp_path, 200, 5, seed=3, lam=0.02, sigma=2.0)
    subjects = [table.column("customer_id").to_pylist()[k] for k in (7, 120)]
    expect_w, expect_bound, _ = _batch_from_features_file(store, subjects, cert["lam"])
    # The features file is gone: the removal needs only the file the run kept.
    Path(req.config["features"]).rename(tmp_path / "moved.parquet")
    out = certified_removal(_ctx(store, subjects), {"model": "churn-cr@1"}, execute.model_info(store, "churn-cr@1"))
    assert out.detail["rows_from"] == "removal rows file" and out.detail["newton_steps"] == 2
    got = torch.load(execute.model_info(store, out.new_model)["path"], weights_only=True)["model"]["w"].double()
    assert torch.allclose(got, expect_w, rtol=0, atol=1e-12)
    assert out.detail["budget_used"] == pytest.approx(expect_bound, rel=1e-12)
    # The new version's run keeps the chain's file (later removals from it read only its own records' rows).
    assert _meta(store, "cr-1.x01234567") == _meta(store)


def test_later_removals_along_the_chain_read_the_file_and_match_the_features_file(store, tmp_path):
    """Three removals in a row: A (one batch step from the trained Hessian), B (Newton steps per row on the
    version's training data: no Hessian at its weights), then A again with C (A is no longer trained on: only C
    is removed, one batch step). Each from the removal rows file, with the features file moved away; each
    against the same removal computed here from the features file."""
    from expunge.lineage.torch import load_artifact
    from expunge.orchestrator.rerun import recorded_request
    from expunge.orchestrator.trainers import TrainRequest, mlp

    table, req, cert = _train_shuffled(store, tmp_path, 400, lam=0.02, sigma=4.0)
    owners = table.column("customer_id").to_pylist()
    a, b, c = owners[10], owners[200], owners[333]
    # B's two subjects: their records' id order is not their ordinal order (the steps go in the rows' id order).
    rid = dict(zip(owners, table.column("record_id").to_pylist()))
    ob = store.records_of_subjects([b])[0]
    b2 = next(s for s in owners[201:330] if (ob < store.records_of_subjects([s])[0]) != (rid[b] < rid[s]))
    feats, away = Path(req.config["features"]), tmp_path / "away.parquet"

    def run(model, subjects, tag):
        feats.rename(away)
        try:
            out = certified_removal(_ctx(store, subjects, tag), {"model": model}, execute.model_info(store, model))
        finally:
            away.rename(feats)
        return out, torch.load(execute.model_info(store, out.new_model)["path"], weights_only=True)

    first, _ = run("churn-cr@1", [a], "a" * 16)
    assert (first.new_model, first.detail["how"], first.detail["rows_from"]) == ("churn-cr@2", "batch",
                                                                                "removal rows file")
    # B from churn-cr@2, by hand: its training data (the version without A) from the features file, Newton steps
    # per row in the dataset's row order.
    w2 = load_artifact(execute.model_info(store, "churn-cr@2")["path"], None, store=store)["model"]["w"].double()
    kept = mlp.dataset(TrainRequest(**{**req.__dict__, "exclude_records": store.records_of_subjects([a])}))
    x1, y1 = certified.design(kept)
    b_ords = set(store.records_of_subjects([b, b2]).tolist())
    remove = [i for i, o in enumerate(kept.first_ords.tolist()) if o in b_ords]
    assert len(remove) == 2
    expect_w, bounds = certified.newton_removal(x1, y1, w2, cert["lam"], remove)
    second, saved = run("churn-cr@2", [b, b2], "b" * 16)
    assert second.detail["how"] == "per-row" and second.detail["rows_from"] == \
        "removal rows file (the whole training data)"
    assert torch.allclose(saved["model"]["w"].double(), expect_w, rtol=0, atol=1e-10)
    assert second.detail["budget_used"] == pytest.approx(sum(bounds), rel=1e-9)
    # A and C from churn-cr@3 (which carries its Hessian): A's row is no longer trained on, so C's alone is removed,
    # as the features-file path finds it (the run's records only).
    info3 = execute.model_info(store, "churn-cr@3")
    state3 = load_artifact(info3["path"], None, store=store)
    rows = certified.removed_rows(store, recorded_request(store, info3["run"], rows=False),
                                  store.records_of_subjects([a, c]))
    assert rows["k"] == 1
    expect3, bound3, _ = certified.batch_removal(state3["removal_state"], state3["model"]["w"].double(), cert["lam"],
                                                 rows["x"], rows["y"])
    third, saved3 = run("churn-cr@3", [a, c], "c" * 16)
    assert (third.detail["how"], third.detail["newton_steps"], third.detail["rows_from"]) == (
        "batch", 1, "removal rows file")
    assert torch.allclose(saved3["model"]["w"].double(), expect3, rtol=0, atol=1e-12)
    assert third.detail["budget_used"] == pytest.approx(bound3, rel=1e-12)


def test_a_changed_or_missing_file_is_said_and_the_features_file_read(store, tmp_path):
    table, req, cert = train_certified(store, tmp_path, 5000, 5, seed=3, lam=0.02, sigma=2.0)
    meta = _meta(store)
    assert len(meta["blocks"]) == 3  # 5000 rows in blocks of 2048
    owners = table.column("customer_id").to_pylist()
    subject = owners[0]
    (o,) = store.records_of_subjects([subject])
    ords = np.load(meta["file"], mmap_mode="r")[:4 * meta["rows"]].view("<u4")
    row = int(np.searchsorted(ords, o))
    blk = row // meta["block_rows"]
    other = (blk + 1) % 3
    x_at = Path(meta["file"]).stat().st_size - 4 * meta["rows"] * meta["dim"]  # the features (f4) come last
    del ords

    def poke(r):  # the first feature of row r, in place
        with open(meta["file"], "r+b") as fh:
            fh.seek(x_at + r * meta["dim"] * 4)
            fh.write(np.float32(0.123).tobytes())

    # A change in a block the removal does not read is not seen (only the removed rows' blocks are read)...
    poke(other * meta["block_rows"])
    assert certified.removal_rows(meta, store.records_of_subjects([subject]))["k"] == 1
    # ...one in the removed row's block is, by its block, and the removal reads the features file instead.
    poke(row)
    with pytest.raises(certified.RowsFileUnusable, match=f"block {blk} "):
        certified.removal_rows(meta, store.records_of_subjects([subject]))
    expect_w, _, _ = _batch_from_features_file(store, [subject], cert["lam"])
    out = certified_removal(_ctx(store, [subject]), {"model": "churn-cr@1"}, execute.model_info(store, "churn-cr@1"))
    assert out.detail["rows_from"].startswith("features file (the removal rows file") and f"block {blk}" in \
        out.detail["rows_from"]
    got = torch.load(execute.model_info(store, out.new_model)["path"], weights_only=True)["model"]["w"].double()
    assert torch.allclose(got, expect_w, rtol=0, atol=1e-12)
    Path(meta["file"]).unlink()
    with pytest.raises(certified.RowsFileUnusable, match="cannot read it"):
        certified.removal_rows(meta, store.records_of_subjects([subject]))


def test_the_file_is_a_residual_copy_and_purged(tmp_path):
    """The demo's certified model after a plan ran: its old run's removal rows file is listed with the model file,
    and `purge` deletes it."""
    from expunge.demo import build_demo
    from expunge.orchestrator import planner, residuals
    from expunge.orchestrator import requests as rq
    from expunge.orchestrator.policy import store_policy

    store, subject = build_demo(tmp_path)
    meta = _meta(store, "churn-certified-1")
    assert meta and Path(meta["file"]).exists()
    r = rq.create(store, [subject], category="marketing", policy=store_policy(store))
    doc = planner.make_plan(store, [r.id], store_policy(store))
    planner.save_plan(store, doc)
    planner.approve(store, doc["id"], tmp_path / "approver.key")
    execute.run_plan(store, doc["id"])
    got = [x for x in residuals.residuals(store, r.id)["residuals"] if x["kind"] == "removal rows"]
    assert [(x["model"], x["path"], x["sha256"], x["state"]) for x in got] == [
        ("churn-certified@1", meta["file"], meta["sha256"], "present")]
    residuals.purge(store, r.id)
    assert not Path(meta["file"]).exists()


def test_plans_price_finding_and_reading_rows_from_the_file_while_it_is_there(store, tmp_path):
    """The estimate's finding (batch) and reading (per-row) come from the file's measured seconds while the file
    is there, and from the features file's (the certificate's probe, the run's setup) once it is gone."""
    from expunge.orchestrator import actions as A
    from expunge.orchestrator import planner
    from expunge.orchestrator.policy import load_policy

    table, req, cert = train_certified(store, tmp_path, 300, 5, seed=3, lam=0.02, sigma=2.0)
    meta = _meta(store)
    assert meta["find_seconds"] > 0 and meta["read_seconds"] > 0
    ords = store.records_of_subjects([table.column("customer_id").to_pylist()[5]])
    with store.read() as con:
        setup = con.execute("SELECT setup_seconds FROM runs WHERE name = 'cr-1'").fetchone()[0]

    def priced(how):
        f = A.ModelFacts(model="churn-cr@1", name="churn-cr", stage="production", direct=True, records=1,
                         train_records=1, run="cr-1", trainer=req.trainer, run_seconds=1.0, run_records=300,
                         family=certified.FAMILY, certificate=cert, dim=9, iterations=10, setup_seconds=setup)
        planner._certified_needs(store, [f], ords)
        if how:
            f.certified_how = how
        return f, A.CertifiedRemoval().estimate(f, load_policy(None)).seconds

    f, batch = priced(None)
    assert f.certified_how == "batch" and (f.rows_find, f.rows_read) == (meta["find_seconds"], meta["read_seconds"])
    assert batch == pytest.approx(meta["find_seconds"] + 0.02 + 1e-6 * 81, rel=1e-12)
    step = cert["state_seconds"] / 2  # half a Hessian and XᵀX as the trainer measured them: a step, the new Hessian
    assert step > 0
    _, per_row = priced("per-row")
    assert per_row == pytest.approx(meta["read_seconds"] + 2 * step, rel=1e-12)
    Path(meta["file"]).unlink()
    f, batch = priced(None)
    assert (f.rows_find, f.rows_read) == (None, None)
    assert batch == pytest.approx(cert["removal_read_seconds"] + 0.02 + 1e-6 * 81, rel=1e-12)
    _, per_row = priced("per-row")
    assert per_row == pytest.approx(setup + 2 * step, rel=1e-12)


def test_with_the_file_at_hand_plans_compute_per_row_steps_a_larger_model_needs(store, tmp_path, monkeypatch):
    """A version removed from once (no Hessian at its weights) is priced for per-row Newton steps from the data:
    with the removal rows file at hand the planner does that work up to CERTIFIED_WORK_FILE (here it computes
    the steps' bound, which matches the one computed by hand on the features file), without it only up to
    CERTIFIED_WORK (here too little: the bound is left to the recorded facts)."""
    from expunge.orchestrator import actions as A
    from expunge.orchestrator import planner
    from expunge.orchestrator.trainers import TrainRequest, mlp

    table, req, cert = train_certified(store, tmp_path, 300, 5, seed=3, lam=0.02, sigma=2.0)
    owners = table.column("customer_id").to_pylist()
    first = certified_removal(_ctx(store, [owners[4]]), {"model": "churn-cr@1"},
                              execute.model_info(store, "churn-cr@1"))
    info = execute.model_info(store, first.new_model)
    extra = json.loads(_extra(store, info["run"]))
    ords = store.records_of_subjects([owners[99]])
    kept = mlp.dataset(TrainRequest(**{**req.__dict__, "exclude_records": store.records_of_subjects([owners[4]])}))
    x, y = certified.design(kept)
    w = torch.load(info["path"], weights_only=True)["model"]["w"].double()
    by_hand = sum(certified.newton_removal(x, y, w, cert["lam"],
                                           [i for i, o in enumerate(kept.first_ords.tolist()) if o in ords])[1])
    monkeypatch.setattr(planner, "CERTIFIED_WORK", 1.0)
    monkeypatch.setattr(planner, "CERTIFIED_WORK_FILE", 1e9)

    def needs():
        f = A.ModelFacts(model=first.new_model, name="churn-cr", stage="dev", direct=True, records=1,
                         train_records=1, run=info["run"], trainer=req.trainer, run_seconds=1.0, run_records=299,
                         family=certified.FAMILY, certificate=extra["certified_removal"],
                         budget_spent=extra["removal_budget_spent"], dim=9, iterations=10)
        planner._certified_needs(store, [f], ords)
        return f.certified_need, f.certified_how

    need, how = needs()
    assert how == "per-row" and need == pytest.approx(by_hand, rel=1e-9)
    Path(extra["removal_rows"]["file"]).unlink()
    assert needs() == (None, None)


@pytest.mark.parametrize("remove", [[], [7], [3, 40, 11]])
@pytest.mark.parametrize("given_gram", [False, True])
@pytest.mark.parametrize("n", [60, 4097])  # one block of rows; two full blocks and one row more
def test_per_row_removal_is_newton_removal_then_the_new_state_with_less_work(remove, given_gram, n):
    """`per_row_removal` against the reference functions it stands for: `newton_removal`'s weights and bounds, then
    `removal_state` computed afresh on the kept rows at the new weights."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    x = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], 1)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1.0)
    y = torch.where(x[:, 0] > 0, 1.0, -1.0).double()
    w = torch.randn(5, generator=g, dtype=torch.float64) * 0.3
    lam = 0.05
    want_w, want_bounds = certified.newton_removal(x, y, w, lam, remove)
    if n > 60:
        remove = remove + [4096]  # the last row, alone in its block
        want_w, want_bounds = certified.newton_removal(x, y, w, lam, remove)
    keep = torch.ones(n, dtype=torch.bool)
    keep[remove] = False
    want_state = certified.removal_state(want_w, x[keep], y[keep], lam)
    got_w, bounds, state = certified.per_row_removal(x, y, w, lam, remove, gram=x.T @ x if given_gram else None)
    assert torch.allclose(got_w, want_w, rtol=0, atol=1e-12)
    assert bounds == pytest.approx(want_bounds, rel=1e-9, abs=1e-15)
    for k in ("hessian", "gram"):
        assert torch.allclose(state[k], want_state[k], rtol=0, atol=1e-10), k
    assert int(state["n"]) == n - len(remove)
    assert certified.per_row_removal(x, y, w, lam, remove, state=False)[2] is None


def test_per_row_steps_are_priced_at_the_trainers_measured_hessian():
    """With `state_seconds` (a Hessian and XᵀX at training): each step and the new Hessian cost half of it."""
    from expunge.orchestrator import costs

    est = costs.certified_removal(10.0, 999, 9, 50, steps=3, setup=0.2, state=0.04)
    assert est.seconds == pytest.approx(0.2 + 4 * 0.02, rel=1e-12)
    assert "3 Newton step(s) on 999 retained rows" in est.reasons[0]
    # Without it, the run's gradient passes: 10 s / 50 passes × 9 features per step, + the d×d solve share.
    assert costs.certified_removal(10.0, 999, 9, 50, steps=3, setup=0.2).seconds == pytest.approx(
        0.2 + 3 * (0.2 * 9 + 0.2 * 81 / 999), rel=1e-12)


def test_a_saved_gram_is_used_only_for_as_many_rows_as_it_was_saved_for():
    g = torch.eye(3, dtype=torch.float32)
    assert torch.equal(certified.saved_gram({"gram": g, "n": torch.tensor(10)}, 10), g.double())
    assert certified.saved_gram({"gram": g, "n": torch.tensor(10)}, 9) is None
    assert certified.saved_gram({"gram": g}, 10) is None and certified.saved_gram({}, 10) is None


def test_design_is_the_plain_formula_bit_for_bit():
    """`design` builds X in one buffer: the same bits as the plain expression (float64 features, a bias column,
    each row divided by max(‖row‖, 1)), on rows inside and far outside the unit ball."""
    class Data:
        pass

    g = torch.Generator().manual_seed(2)
    ds = Data()
    ds.x = torch.cat([torch.randn(500, 7, generator=g) * 5, torch.zeros(3, 7), torch.full((2, 7), 1e-3)])
    ds.y = torch.randint(0, 2, (505,), generator=g)
    plain = torch.cat([ds.x.double(), torch.ones(505, 1, dtype=torch.float64)], dim=1)
    plain = plain / plain.norm(dim=1, keepdim=True).clamp_min(1.0)
    x, y = certified.design(ds)
    assert torch.equal(x, plain) and torch.equal(y, ds.y.double() * 2 - 1)
