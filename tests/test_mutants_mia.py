"""Survivors of the mutation run over orchestrator/mia.py: the input conversions, the error messages that name
the empty side, and the learned attack's cross-validation checked against a brute-force re-fit of each fold."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from expunge.orchestrator import mia  # noqa: E402


class _Rows(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class _Holder:  # not a Dataset: tensors as attributes, as RecordDataset keeps them
    def __init__(self, x, y):
        self.x, self.y = x, y


def test_as_tensors_of_each_kind_of_input():
    x, y = mia.as_tensors(_Rows([]))
    assert x.shape == (0,) and y.shape == (0,) and y.dtype == torch.int64
    x, y = mia.as_tensors((np.ones((2, 3), np.float32), np.array([0, 1], np.int32)))
    assert y.dtype == torch.int64 and y.tolist() == [0, 1]  # labels become int64
    hx, hy = torch.arange(6.0).reshape(3, 2), torch.tensor([1, 0, 1])
    x, y = mia.as_tensors(_Holder(hx, hy))
    assert torch.equal(x, hx) and y.tolist() == [1, 0, 1]


def test_features_reach_the_model_in_its_dtype():
    model = torch.nn.Linear(2, 2).double()
    assert mia.to_model(model, torch.ones(1, 2, dtype=torch.float32)).dtype == torch.float64
    assert mia.to_model(model, torch.ones(1, 2, dtype=torch.int64)).dtype == torch.int64


def test_the_error_names_the_empty_or_broken_side():
    with pytest.raises(ValueError, match="^member losses is empty"):
        mia.loss_threshold_auc([], [1.0])
    with pytest.raises(ValueError, match="^negative scores is empty"):
        mia.score_auc([1.0], [])
    with pytest.raises(ValueError, match="^attack features must be finite$"):
        mia.learned_attack_scores(np.array([[1.0], [np.inf]]), np.array([[0.0], [1.0]]))


def test_each_row_is_scored_by_a_model_fit_without_its_fold():
    """Brute force: assign the stratified folds as documented (seeded permutation per class, row i of a class in
    fold i mod k), fit each fold's model on the other folds (standardised on them), score the fold."""
    rng = np.random.default_rng(3)
    m, n = rng.normal(0.4, 1, (12, 2)), rng.normal(0, 1, (15, 2))
    k, seed = 3, 7
    got_m, got_n = mia.learned_attack_scores(m, n, folds=k, seed=seed)
    x = np.concatenate([m, n])
    y = np.concatenate([np.ones(len(m)), np.zeros(len(n))])
    perm = np.random.default_rng(seed)
    fold = np.empty(len(x), int)
    for cls in (1.0, 0.0):
        rows = np.flatnonzero(y == cls)
        fold[perm.permutation(rows)] = np.arange(rows.size) % k
    want = np.empty(len(x))
    for f in range(k):
        tr, te = fold != f, fold == f
        mu, sd = x[tr].mean(0), x[tr].std(0)
        w = mia.fit_logistic((x[tr] - mu) / sd, y[tr])
        want[te] = w[0] + ((x[te] - mu) / sd) @ w[1:]
    assert np.allclose(got_m, want[: len(m)], rtol=0, atol=1e-9)
    assert np.allclose(got_n, want[len(m):], rtol=0, atol=1e-9)
