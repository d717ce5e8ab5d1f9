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
