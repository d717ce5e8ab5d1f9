"""The trainer contract: recorded runs re-run to the same model; exclusions never reach a batch."""

from __future__ import annotations

from pathlib import Path

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")

from expunge import synth  # noqa: E402
from expunge.lineage.torch import TrainingTracker  # noqa: E402
from expunge.orchestrator.rerun import rerun  # noqa: E402
from expunge.orchestrator.trainers import TrainRequest  # noqa: E402
from expunge.orchestrator.trainers import mlp  # noqa: E402

N = 600


def customers_store(store, tmp_path, n: int, seed: int, **config):
    """Synthetic customers ingested as customers@1, their features as Parquet, and a trainer config."""
    table = synth.customers(n, seed=seed)
    pq.write_table(table, tmp_path / "features.parquet")
    store.ingest_source(table, name="customers", subject_col="customer_id", record_col="record_id")
    cfg = {"features": str(tmp_path / "features.parquet"), "row_col": "record_id",
           "feature_cols": [f"f{j}" for j in range(8)], "label_col": "churned", **config}
    return table, cfg


@pytest.fixture
def trained(store, tmp_path):
    table, cfg = customers_store(store, tmp_path, N, 3, epochs=3, batch_size=32)
    req = TrainRequest(store=store, run_name="mlp-1", inputs=[{"dataset": "customers@1", "role": "train"}],
                       config=cfg, seed=5, out_dir=tmp_path / "mlp-1", trainer=mlp.ENTRY_POINT,
                       model_name="churn", stage="staging", model_family="mlp")
    result = mlp.train(req)
    return store, tmp_path, table, result


def weights(path: Path) -> dict:
    return torch.load(path)["model"]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_run_is_recorded_with_its_facts(trained):
    store, tmp, table, result = trained
    assert result["models"][0]["id"] == "churn@1"
    subject = table.column("customer_id")[0].as_py()
    imp = store.impact([subject])
    (run,) = imp.runs
    assert run["id"] == "mlp-1" and run["trainer"] == mlp.ENTRY_POINT
    # Three epoch checkpoints; a row's first step is in epoch 1, so no checkpoint is clean for it.
    assert run["first_seen"]["clean_checkpoints"] == 0
    with store.read() as con:
        steps = [s for (s,) in con.execute("SELECT step FROM checkpoints ORDER BY step").fetchall()]
    per_epoch = -(-N // 32)
    assert steps == [per_epoch, 2 * per_epoch, 3 * per_epoch]
    # The tracker records the run's length: 3 epochs of ⌈600 / 32⌉ batches.
    with store.read() as con:
        assert con.execute("SELECT total_steps FROM runs WHERE name = 'mlp-1'").fetchall() == [(3 * per_epoch,)]


def test_rerun_without_exclusions_reproduces_the_model(trained):
    store, tmp, _, result = trained
    again = rerun(store, "mlp-1", new_name="mlp-1-again", out_dir=tmp / "again")
    assert same(weights(tmp / "mlp-1" / "model.pt"), weights(tmp / "again" / "model.pt"))
    assert again["models"][0]["id"] == "churn@2"


def test_replay_from_a_checkpoint_reproduces_the_model(trained):
    store, tmp, _, _ = trained
    rerun(store, "mlp-1", new_name="mlp-1-replay", out_dir=tmp / "replay",
          start_checkpoint=tmp / "mlp-1" / "epoch2.pt")
    assert same(weights(tmp / "mlp-1" / "model.pt"), weights(tmp / "replay" / "model.pt"))


def test_excluded_records_never_reach_a_batch(trained, monkeypatch):
    store, tmp, table, _ = trained
    owners = table.column("customer_id").to_pylist()
    gone = owners[:5]
    gone_records = set(table.column("record_id").to_pylist()[:5])
    seen: list[str] = []
    real = TrainingTracker.consumed

    def spy(self, rows, **kw):
        seen.extend(r if isinstance(r, str) else self._bound.row_ids[int(r)] for r in rows)
        return real(self, rows, **kw)

    monkeypatch.setattr(TrainingTracker, "consumed", spy)
    rerun(store, "mlp-1", new_name="mlp-1-forget", out_dir=tmp / "forget", exclude_subjects=gone)
    assert seen and not (set(seen) & gone_records)
    assert len(set(seen)) == N - 5
    # The new run's recorded manifest holds none of their records; the old one still does.
    assert [r["id"] for r in store.impact(gone).runs] == ["mlp-1"]
    assert {r["id"] for r in store.impact(owners[5:6]).runs} == {"mlp-1", "mlp-1-forget"}
    # And it is a different model from the original.
    assert not same(weights(tmp / "mlp-1" / "model.pt"), weights(tmp / "forget" / "model.pt"))


@pytest.fixture
def sisa_run(store, tmp_path):
    from expunge.orchestrator.trainers import sisa

    table, cfg = customers_store(store, tmp_path, 800, 4, epochs=4, batch_size=32, shards=4, slices=3)
    req = TrainRequest(store=store, run_name="sisa-1", inputs=[{"dataset": "customers@1", "role": "train"}],
                       config=cfg, seed=2, out_dir=tmp_path / "sisa-1", trainer=sisa.ENTRY_POINT,
                       model_name="churn-sisa", model_family="sisa-mlp")
    return store, tmp_path, table, req, sisa.train(req)


def test_sisa_records_what_each_constituent_trained_on(sisa_run, monkeypatch):
    store, tmp, table, req, _ = sisa_run
    # Watch a re-run: rows consumed before checkpoint (shard s, slice r) were trained on by shard s,
    # and a row's slice is the first stage that consumed it.
    events: list = []
    real_consumed, real_ckpt = TrainingTracker.consumed, TrainingTracker.checkpoint
    monkeypatch.setattr(TrainingTracker, "consumed",
                        lambda self, ids, **kw: (events.append(("rows", [self._bound.row_ids[int(i)] for i in ids])),
                                                 real_consumed(self, ids, **kw)))
    monkeypatch.setattr(TrainingTracker, "checkpoint",
                        lambda self, m, **kw: (events.append(("ckpt", kw["shard"], kw["slice"])),
                                               real_ckpt(self, m, **kw))[1])
    rerun(store, "sisa-1", new_name="sisa-probe", out_dir=tmp / "probe")
    actual: dict[str, tuple[int, int]] = {}
    pending: list[str] = []
    for ev in events:
        if ev[0] == "rows":
            pending.extend(ev[1])
        else:
            for r in pending:
                actual.setdefault(r, (ev[1], ev[2]))
            pending = []
    assert len(actual) == 800
    owner_of = dict(zip(table.column("record_id").to_pylist(), table.column("customer_id").to_pylist()))
    for row, (shard, first_slice) in list(actual.items())[:300]:
        run = {r["id"]: r for r in store.impact([owner_of[row]]).runs}["sisa-1"]
        assert run["shards"] == [{"shard": shard, "records": 1, "first_slice": first_slice}]
    # Newer records sit in later slices.
    order = {r: i for i, r in enumerate(table.column("record_id").to_pylist())}
    means = [np.mean([order[r] for r, (_, sl) in actual.items() if sl == k]) for k in range(3)]
    assert means == sorted(means)


def test_sisa_shard_retrain_equals_the_original_shard_without_exclusions(sisa_run):
    from expunge.orchestrator.trainers import sisa

    store, tmp, table, req, _ = sisa_run
    rerun(store, "sisa-1", new_name="sisa-1-shard2", out_dir=tmp / "again", shard=2,
          init_model=tmp / "sisa-1" / "model.pt", start_checkpoint=tmp / "sisa-1" / "shard2-slice0.pt")
    a = torch.load(tmp / "sisa-1" / "model.pt")["model"]
    b = torch.load(tmp / "again" / "model.pt")["model"]
    assert same(a, b)
    # Only shard 2 was retrained (from its slice-0 checkpoint): the other shards' checkpoints are the old files
    # themselves (linked), not retrained copies; shard 2's later ones are new files.
    import os

    for shard in (0, 1, 3):
        for sl in range(3):
            old, new = tmp / "sisa-1" / f"shard{shard}-slice{sl}.pt", tmp / "again" / f"shard{shard}-slice{sl}.pt"
            assert os.stat(old).st_ino == os.stat(new).st_ino, new
    assert os.stat(tmp / "sisa-1" / "shard2-slice1.pt").st_ino != os.stat(tmp / "again" / "shard2-slice1.pt").st_ino
    m = sisa.load(tmp / "sisa-1" / "model.pt", req.config, store=store)
    ds = sisa.mlp.dataset(req)
    acc = (m(ds.x).argmax(-1) == ds.y).float().mean().item()
    assert acc > 0.7  # learnable labels: the ensemble learned something


def train_certified(store, tmp_path, n: int, data_seed: int, *, seed: int, **config):
    """A logreg_certified run "cr-1" on synthetic customers; returns (table, request, recorded certificate)."""
    import json

    from expunge.orchestrator.trainers import logreg_certified as lc

    table, cfg = customers_store(store, tmp_path, n, data_seed, **config)
    req = TrainRequest(store=store, run_name="cr-1", inputs=[{"dataset": "customers@1", "role": "train"}],
                       config=cfg, seed=seed, out_dir=tmp_path / "cr", trainer=lc.ENTRY_POINT,
                       model_name="churn-cr", model_family=lc.FAMILY)
    lc.train(req)
    with store.read() as con:
        extra = con.execute("SELECT extra FROM runs WHERE name = 'cr-1'").fetchall()[0][0]
    return table, req, json.loads(extra)["certified_removal"]


def test_certified_logreg_records_the_lambda_and_sigma_it_used(store, tmp_path):
    from expunge.orchestrator.trainers import logreg_certified as lc

    table, req, cert = train_certified(store, tmp_path, 500, 6, seed=9, lam=0.01, sigma=0.5)
    assert (cert["lam"], cert["sigma"]) == (0.01, 0.5)
    assert abs(cert["removal_budget"] - 0.5 * 1.0 / cert["c"]) < 1e-12
    # Independently: the saved weights are the minimiser of the objective built from the recorded
    # λ and from noise regenerated with the recorded σ and seed — its gradient vanishes there,
    # and not with another λ or σ.
    w = torch.load(tmp_path / "cr" / "model.pt")["model"]["w"].requires_grad_(True)
    x, y = lc.design(lc.mlp.dataset(req))

    def grad_norm(lam, sigma):
        g = torch.autograd.grad(lc.objective(w, x, y, lam, lc.noise(9, x.shape[1], sigma)), w)[0]
        return float(g.norm())

    assert grad_norm(cert["lam"], cert["sigma"]) < 1e-6
    assert grad_norm(cert["lam"] * 2, cert["sigma"]) > 1e-2
    assert grad_norm(cert["lam"], cert["sigma"] * 2) > 1e-2
    features = np.column_stack([table.column(f"f{j}").to_numpy() for j in range(8)])
    labels = torch.from_numpy(table.column("churned").to_numpy().astype(np.int64))
    acc = (lc.predict(w.detach(), features) == labels).float().mean()
    assert acc > 0.75


def test_certified_logreg_records_each_training_row_as_seen_at_the_first_step(store, tmp_path):
    """Full-batch training sees every row at step 0: the run's facts hold exactly its training records (a re-run
    without two subjects: all but theirs); the impact of a trained subject names both runs, that of an excluded
    one only the first."""
    table, req, _ = train_certified(store, tmp_path, 300, 6, seed=9)
    ids = table.column("customer_id").to_pylist()
    gone = ids[:2]
    rerun(store, "cr-1", new_name="cr-2", out_dir=tmp_path / "cr-2", exclude_subjects=gone)
    every = set(store.records_of_subjects(ids).tolist())
    assert len(every) == 300
    assert set(_read_facts(store, "cr-1").records) == every
    assert set(_read_facts(store, "cr-2").records) == every - set(store.records_of_subjects(gone).tolist())
    kept = {r["id"]: r for r in store.impact([ids[5]]).runs}
    assert set(kept) == {"cr-1", "cr-2"}
    assert {r["id"] for r in store.impact([gone[0]]).runs} == {"cr-1"}
    with store.read() as con:
        assert con.execute("SELECT total_steps FROM runs WHERE name = 'cr-2'").fetchone() == (1,)


def test_newton_removal_is_certified_by_its_bounds(store, tmp_path):
    """Removing records with Newton steps: the recorded Corollary-1 bounds cover the true gradient
    residual (recomputed with autograd on the objective rebuilt from the recorded λ, σ, seed), the
    weights land near a model retrained without them, and the planner's pre-data bound (from the
    Hessian facts the trainer recorded) is never below the data-dependent one."""
    from expunge.orchestrator import costs
    from expunge.orchestrator.trainers import logreg_certified as lc

    table, req, cert = train_certified(store, tmp_path, 600, 4, seed=3, lam=0.02, sigma=2.0)
    ds = lc.mlp.dataset(req)
    x, y = lc.design(ds)
    w = torch.load(tmp_path / "cr" / "model.pt")["model"]["w"].double()
    remove = [5, 77, 301]
    w_new, bounds = lc.newton_removal(x, y, w, cert["lam"], remove)
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[remove] = False
    b = lc.noise(3, x.shape[1], cert["sigma"])

    def grad_norm(wt):
        wt = wt.clone().requires_grad_(True)
        return float(torch.autograd.grad(lc.objective(wt, x[keep], y[keep], cert["lam"], b), wt)[0].norm())

    residual = grad_norm(w_new)
    assert residual <= sum(bounds) + cert["train_grad_norm"]
    assert residual < 0.01 * grad_norm(w)  # the Newton steps did remove the records' pull
    retrained = torch.zeros_like(w).requires_grad_(True)
    opt = torch.optim.LBFGS([retrained], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = lc.objective(retrained, x[keep], y[keep], cert["lam"], b)
        loss.backward()
        return loss

    opt.step(closure)
    assert float((w_new - retrained.detach()).norm()) < 0.05 * float(retrained.detach().norm())
    for k in (1, 2, 3):
        pre = costs.certified_residual_bound(k, lam=cert["lam"], n=cert["n"], mu=cert["hessian_min_eig"],
                                             spec_sq=cert["x_spectral_sq"], w_norm=cert["w_norm"])
        assert pre >= sum(lc.newton_removal(x, y, w, cert["lam"], remove[:k])[1])
    # The store-level helper finds the same rows from record ordinals and sums the same bounds.
    ords = store.records_of_subjects([])  # nothing excluded: nothing to remove
    assert lc.removal_need(store, "cr-1", tmp_path / "cr" / "model.pt", ords) == 0.0
    rows = store.rows("customers@1")
    by_id = dict(zip(rows.row_ids.to_pylist(), rows.ords.tolist()))
    ex = np.array(sorted(by_id[ds.row_ids[i]] for i in remove), np.uint32)
    # The trained weights carry their Hessian, so the removal is one batch Newton step from the removed rows
    # alone. Checked against the step computed directly on the kept rows (Hessian of their objective at w,
    # not the saved one) and against the true residual, recomputed with autograd.
    p = torch.sigmoid(y[keep] * (x[keep] @ w))
    h_kept = x[keep].T @ ((p * (1 - p))[:, None] * x[keep]) + cert["lam"] * int(keep.sum()) * torch.eye(x.shape[1],
                                                                                                          dtype=x.dtype)
    pr = torch.sigmoid(y[remove] * (x[remove] @ w))
    delta = (x[remove] * ((pr - 1) * y[remove])[:, None]).sum(0) + cert["lam"] * len(remove) * w
    w_batch = w + torch.linalg.solve(h_kept, delta)
    state = torch.load(tmp_path / "cr" / "model.pt")["removal_state"]
    got_w, batch_bound, left = lc.certified.batch_removal(state, w, cert["lam"], x[remove], y[remove])
    assert torch.allclose(got_w, w_batch, rtol=0, atol=1e-10)
    assert torch.allclose(left["gram"], x[keep].T @ x[keep], atol=1e-9) and int(left["n"]) == len(y) - len(remove)
    assert grad_norm(w_batch) <= batch_bound + cert["train_grad_norm"]
    assert grad_norm(w_batch) < 0.01 * grad_norm(w)
    spec = float(torch.linalg.eigvalsh(x[keep].T @ x[keep])[-1].sqrt())
    step = w_batch - w
    assert batch_bound == pytest.approx(0.25 * spec * float(step.norm()) * float((x[keep] @ step).norm()), rel=1e-9)
    need = lc.removal_need(store, "cr-1", tmp_path / "cr" / "model.pt", ex)
    assert need == pytest.approx(batch_bound, rel=1e-9)


def test_pre_data_bound_covers_newton_steps_on_random_problems():
    """The planner's bound from recorded Hessian facts is never below the Newton steps' own
    Corollary-1 bounds, on random small problems (sizes, λ, removal orders drawn by Hypothesis)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from expunge.orchestrator import costs
    from expunge.orchestrator.trainers import logreg_certified as lc

    @settings(max_examples=25, deadline=None)
    @given(st.integers(20, 120), st.integers(1, 5), st.sampled_from([0.003, 0.03, 0.3]), st.integers(0, 10**6),
           st.integers(1, 6))
    def check(n, d, lam, seed, k):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, d, generator=g, dtype=torch.float64)
        x = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], dim=1)
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1.0)
        y = torch.where(x[:, 0] + 0.5 * torch.randn(n, generator=g, dtype=torch.float64) > 0, 1.0, -1.0)
        b = lc.noise(seed, d + 1, 0.5)
        w = torch.zeros(d + 1, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-15,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = lc.objective(w, x, y, lam, b)
            loss.backward()
            return loss

        opt.step(closure)
        facts = lc.removal_facts(w.detach(), x, y, lam)
        remove = torch.randperm(n, generator=g)[: min(k, n // 4)].tolist()
        exact = sum(lc.newton_removal(x, y, w.detach(), lam, remove)[1])
        pre = costs.certified_residual_bound(len(remove), lam=lam, n=n, mu=facts["hessian_min_eig"],
                                             spec_sq=facts["x_spectral_sq"], w_norm=facts["w_norm"])
        assert pre >= exact * (1 - 1e-9)

    check()


def _read_facts(store, run: str):
    from expunge.lineage.facts import RunFacts

    with store.read() as con:
        path, index = con.execute("SELECT facts_file, facts_index FROM runs WHERE name = ?", [run]).fetchone()
    return RunFacts(store.data_path(path), json.loads(index))


def test_tracker_records_positional_facts_as_the_per_row_calls_do(store, tmp_path):
    """The vectorised path (bind, assign_many on the bound rows, consumed with positions) records the same facts
    file as the per-row path (row ids, assign per row, consumed with ids): rows with no fact left out, a row
    first consumed at step 0 kept, slices and shards as given."""
    from expunge.lineage.torch import RecordDataset

    table, cfg = customers_store(store, tmp_path, 60, 4)
    ds = RecordDataset(store, "customers@1", cfg["features"], row_col="record_id",
                       feature_cols=cfg["feature_cols"], label_col="churned")
    rng = np.random.default_rng(0)
    shard = rng.integers(0, 3, len(ds))
    slice_ = rng.integers(0, 2, len(ds))
    batches = [rng.choice(len(ds), 7, replace=False) for _ in range(5)]  # some rows never consumed
    for name, positional in (("fast", True), ("slow", False)):
        with TrainingTracker(store, name, inputs=[{"dataset": "customers@1"}], out_dir=tmp_path / name,
                             shards=3, slices=2) as tr:
            if positional:
                tr.bind(ds)
                tr.assign_many(ds.row_ids, shard, slice_)
            else:
                for i, r in enumerate(ds.row_ids):
                    tr.assign([r], shard=int(shard[i]), slice=int(slice_[i]))
            for k, b in enumerate(batches):
                tr.consumed(torch.as_tensor(b) if positional else [ds.row_ids[i] for i in b])
                if k == 1:
                    tr.checkpoint(torch.nn.Linear(1, 1))  # after step 2: clean for rows first seen later
    fast, slow = _read_facts(store, "fast"), _read_facts(store, "slow")
    assert list(fast.records) == list(slow.records) and len(fast.records) == len(ds)
    with store.read() as con:
        idx = {n: json.loads(i) for n, i in con.execute(
            "SELECT name, facts_index FROM runs WHERE name IN ('fast', 'slow')").fetchall()}
    assert idx["fast"] == idx["slow"]
    assert np.array_equal(np.asarray(fast.codes), np.asarray(slow.codes))
    # Independently: the record first consumed in batch 0 has first step 0; one never consumed has none.
    first = {}
    for step, b in enumerate(batches):
        for i in b:
            first.setdefault(int(i), step)
    assert 0 in first.values() and len(first) < len(ds)
    want = {ds.first_ords[i]: (int(shard[i]), int(slice_[i]), -1 if i not in first else int(first[i] >= 2))
            for i in range(len(ds))}
    got = {o: tuple(fast.table[c][0]) for o, c in zip(fast.records, np.asarray(fast.codes).tolist())}
    assert got == want


def test_a_rerun_of_a_rerun_reads_its_records_as_the_row_ids_would(trained, monkeypatch):
    """A run that excluded records keeps its train input as a subset of records; re-running it (a second
    erasure) hands expunge's trainer those records (`_subset_ords`), not 600 row ids. The model and the
    recorded subset are those of the row-id path, and the new run trained on neither erasure's records."""
    from expunge.orchestrator import rerun as rr

    store, tmp, table, _ = trained
    owners = table.column("customer_id").to_pylist()
    records = table.column("record_id").to_pylist()
    rerun(store, "mlp-1", new_name="first", out_dir=tmp / "first", exclude_subjects=owners[:3])
    seen_inputs = []
    real = rr.recorded_request

    def spy(*a, **kw):
        got = real(*a, **kw)
        seen_inputs.append(got["inputs"])
        return got

    monkeypatch.setattr(rr, "recorded_request", spy)
    rerun(store, "first", new_name="by-records", out_dir=tmp / "by-records", exclude_subjects=owners[3:5])
    (train,) = seen_inputs[-1]
    assert "rows" not in train and sorted(train["_subset_ords"].tolist()) != []
    # The row-id path: the same request with the row ids named (what an outside trainer gets).
    monkeypatch.setattr(rr, "recorded_request", lambda *a, **kw: real(*a, **{**kw, "train_ords": "never"}))
    rerun(store, "first", new_name="by-rows", out_dir=tmp / "by-rows", exclude_subjects=owners[3:5])
    a, b = weights(tmp / "by-records" / "model.pt"), weights(tmp / "by-rows" / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    # Neither run trained on the five erased customers; both on the other 595 (the store's own answer,
    # checked against the records by hand).
    for run in ("by-records", "by-rows"):
        assert run not in {r["id"] for r in store.impact(owners[:5]).runs}
        assert run in {r["id"] for r in store.impact(owners[5:6]).runs}
    with store.read() as con:
        n = dict(con.execute("SELECT r.name, i.n_rows FROM run_inputs i JOIN runs r USING (run_id)").fetchall())
    assert n["by-records"] == n["by-rows"] == len(set(records)) - 5


def test_work_before_the_tracker_is_recorded_as_setup(store, tmp_path):
    """What a trainer does before its tracker starts (here: 0.3 s of preparation it does not report itself)
    is setup a re-run pays again: the run records at least that, and its training seconds exclude it."""
    import time

    _, cfg = customers_store(store, tmp_path, 50, 1, epochs=1, batch_size=16)
    req = TrainRequest(store=store, run_name="slow-setup", inputs=[{"dataset": "customers@1", "role": "train"}],
                       config=cfg, seed=1, out_dir=tmp_path / "slow", trainer=mlp.ENTRY_POINT, model_name="m")
    time.sleep(0.3)
    ds = mlp.dataset(req)  # reports its own loading time (well under 0.3 s here)
    with req.tracker(inputs=[req.input_manifest(ds)]).bind(ds) as tr:
        tr.consumed(np.arange(len(ds)))
        tr.final_model(mlp.build(8), "m")
    with store.read() as con:
        setup, wall = con.execute("SELECT setup_seconds, wall_seconds FROM runs WHERE name = 'slow-setup'").fetchone()
    assert ds.load_seconds < 0.3 <= setup
    assert wall < 0.3


def test_recording_counts_the_write_it_commits_in(store, tmp_path):
    """A tracked run's record seconds include opening and committing the write it is recorded in (which a
    re-run pays again), as long as the process's previous write took: the run is written before the commit."""
    _, cfg = customers_store(store, tmp_path, 40, 2, epochs=1, batch_size=16)
    before = store.last_write_overhead  # the ingest's write
    assert before > 0
    req = TrainRequest(store=store, run_name="rec", inputs=[{"dataset": "customers@1", "role": "train"}],
                       config=cfg, seed=1, out_dir=tmp_path / "rec", trainer=mlp.ENTRY_POINT, model_name="m")
    ds = mlp.dataset(req)
    with req.tracker(inputs=[req.input_manifest(ds)]).bind(ds) as tr:
        tr.consumed(np.arange(len(ds)))
        tr.final_model(mlp.build(8), "m")
    with store.read() as con:
        (record,) = con.execute("SELECT record_seconds FROM runs WHERE name = 'rec'").fetchone()
    assert record >= before
    assert store.last_write_overhead > 0 and store.last_write_overhead != before  # this write's own, measured
