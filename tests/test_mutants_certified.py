"""Survivors of the mutation run over orchestrator/certified.py: the per-row path of `removal_need_how` (weights
saved without their Hessian, as before the batch step existed) had no test, and the planner swallows its errors
(the recorded bound then stands), so a broken row selection or work limit went unseen."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from expunge.orchestrator import certified  # noqa: E402
from expunge.orchestrator.trainers import logreg_certified as lc  # noqa: E402
from tests.test_trainers import train_certified  # noqa: E402


def test_per_row_need_without_a_saved_hessian_and_its_work_limit(store, tmp_path):
    table, req, cert = train_certified(store, tmp_path, 120, 4, seed=3, lam=0.02, sigma=2.0)
    ds = lc.mlp.dataset(req)
    x, y = lc.design(ds)
    state = torch.load(tmp_path / "cr" / "model.pt")
    del state["removal_state"]["hessian"]  # weights saved before Hessians were kept: no batch step
    old = tmp_path / "old.pt"
    torch.save(state, old)
    sha = hashlib.sha256(old.read_bytes()).hexdigest()
    rows = store.rows("customers@1")
    by_id = dict(zip(rows.row_ids.to_pylist(), rows.ords.tolist()))
    remove = [5, 40, 77]  # training rows, by position
    ex = np.array(sorted(by_id[ds.row_ids[i]] for i in remove), np.uint32)
    n, d = len(y), x.shape[1]
    assert (n, d) == (120, 9)  # 8 features and the bias
    work = len(remove) * n * d * d  # by hand: 3 steps of n·d² = 29,160
    w = state["model"]["w"].double()
    # The budget is the sum of the per-row Newton steps' bounds, removing exactly those rows, in row order
    # (newton_removal's bounds are checked against autograd in tests/test_trainers.py).
    expect = sum(lc.newton_removal(x, y, w, cert["lam"], remove)[1])
    need, how = certified.removal_need_how(store, "cr-1", old, ex, max_work=work, sha256=sha)
    assert how == "per-row" and need == pytest.approx(expect, rel=1e-12) and need > 0
    # One unit of work less than the k·n·d² it takes: not computed at planning time.
    assert certified.removal_need_how(store, "cr-1", old, ex, max_work=work - 1, sha256=sha) == (None, None)
    assert certified.removal_need_how(store, "cr-1", old, ex, max_work=0, sha256=sha) == (None, None)


def test_the_certificate_by_hand():
    """Guo et al.'s constant c = √(2·ln(1.5/δ)) and the removal budget σ·ε/c, from the config or the defaults."""
    import math

    c = math.sqrt(2 * math.log(1500.0))
    assert certified.certificate({"epsilon": 0.5, "delta": 1e-3, "sigma": 2.0, "lam": 0.01}) == {
        "lam": 0.01, "sigma": 2.0, "epsilon": 0.5, "delta": 1e-3, "c": c, "removal_budget": 2.0 * 0.5 / c,
        "gamma": 0.25, "loss": "logistic", "x_norm": "unit-ball rows"}
    c = math.sqrt(2 * math.log(15000.0))
    got = certified.certificate({})
    assert (got["lam"], got["sigma"], got["epsilon"], got["delta"]) == (1e-3, 1.0, 1.0, 1e-4)
    assert got["c"] == pytest.approx(c, rel=1e-15) and got["removal_budget"] == pytest.approx(1 / c, rel=1e-15)


def _renamed_run(store, tmp_path, dup: bool = False):
    """A certified run whose features table names its id column `rid` (not the default `record_id`); with `dup`
    the table holds customer 0's row twice."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from expunge.orchestrator.rerun import recorded_request
    from expunge.orchestrator.trainers import TrainRequest
    from tests.test_trainers import customers_store

    table, cfg = customers_store(store, tmp_path, 60, 4, lam=0.02)
    feats = table.rename_columns(["rid" if n == "record_id" else n for n in table.column_names])
    pq.write_table(feats, tmp_path / "renamed.parquet")
    cfg = {**cfg, "features": str(tmp_path / "renamed.parquet"), "row_col": "rid"}
    lc.train(TrainRequest(store=store, run_name="cr-1", inputs=[{"dataset": "customers@1", "role": "train"}],
                          config=cfg, seed=3, out_dir=tmp_path / "cr", trainer=lc.ENTRY_POINT, model_name="churn-cr",
                          model_family=lc.FAMILY))
    if dup:
        pq.write_table(pa.concat_tables([feats, feats.slice(0, 1)]), tmp_path / "renamed.parquet")
    return table, recorded_request(store, "cr-1", rows=False)


def test_rows_of_a_features_table_with_its_own_id_column(store, tmp_path):
    """The removed rows and the training data are read by the config's `row_col`: customer 0's one row, its
    features by hand (scaled into the unit ball, a bias of 1 appended, the label as ±1), and 59 rows left."""
    table, rec = _renamed_run(store, tmp_path)
    subject = table.column("customer_id")[0].as_py()
    erased = store.records_of_subjects([subject])
    got = certified.removed_rows(store, rec, erased)
    assert got is not None and got["k"] == 1
    f = np.array([table.column(f"f{j}")[0].as_py() for j in range(8)] + [1.0])
    f = f / max(np.linalg.norm(f), 1.0)
    assert np.allclose(got["x"].numpy().ravel(), f, atol=1e-6)
    assert got["y"].tolist() == [1.0 if table.column("churned")[0].as_py() else -1.0]
    left = certified.training_data(store, rec, erased).row_ids
    assert sorted(left) == sorted(table.column("record_id").to_pylist()[1:])


def test_a_removed_row_held_twice_by_the_features_table_is_not_read_alone(store, tmp_path):
    table, rec = _renamed_run(store, tmp_path, dup=True)
    erased = store.records_of_subjects([table.column("customer_id")[0].as_py()])
    assert certified.removed_rows(store, rec, erased) is None
