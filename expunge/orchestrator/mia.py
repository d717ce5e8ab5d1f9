"""What the verifier measures on an unlearned classifier: per-example loss, confidence and margin, accuracy,
and the AUC of membership-inference attacks (forget set vs held-out non-members) — pure functions, no store.

The loss-threshold attack (Yeom et al., CSF 2018) calls a row a member when the model's loss on it is low; its
AUC is P(loss(member) < loss(non-member)), ties counted half, computed exactly from ranks (Mann–Whitney U).
The learned attack fits a logistic regression on [loss, confidence, margin] and reports its out-of-fold AUC.
Each AUC's variance (and two AUCs' covariance, for a paired comparison on the same rows) is DeLong's, from the
same ranks: what the verifier's confidence intervals are built on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from expunge.errors import BadInput


def as_tensors(data: Any, what: str = "data") -> tuple[torch.Tensor, torch.Tensor]:
    """`(X, y)` of a torch Dataset (items `(x, y, ...)`; a dataset with tensor attributes `x` and `y`, like
    `RecordDataset`, is read without iterating) or of an `(X, y)` pair of tensors/arrays. Labels become int64."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
    elif isinstance(getattr(data, "x", None), torch.Tensor) and isinstance(getattr(data, "y", None), torch.Tensor):
        x, y = data.x, data.y
    elif isinstance(data, torch.utils.data.Dataset):
        items = [data[i] for i in range(len(data))]  # type: ignore[arg-type]
        if not items:
            return torch.zeros(0), torch.zeros(0, dtype=torch.int64)
        x = torch.stack([torch.as_tensor(it[0]) for it in items])
        y = torch.as_tensor([int(it[1]) for it in items])
    else:
        raise BadInput(f"{what} must be a torch Dataset or an (X, y) pair, got {type(data).__name__}")
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.shape[0] != y.shape[0]:
        raise BadInput(f"{what}: {x.shape[0]} feature rows but {y.shape[0]} labels")
    if y.dim() != 1:
        raise BadInput(f"{what}: labels must be one class index per row, got shape {tuple(y.shape)}")
    if y.dtype.is_floating_point:
        raise BadInput(f"{what}: labels must be integer class indices, got {y.dtype}")
    return x, y.to(torch.int64)


def to_model(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`x` on the model's device; floating features in the model's floating dtype."""
    p = next(model.parameters(), None)
    if p is None:
        return x
    return x.to(p.device, p.dtype) if x.dtype.is_floating_point else x.to(p.device)


@dataclass(frozen=True)
class ExampleStats:
    """Per row: cross-entropy `loss`, `confidence` (the top class probability, label-free) and `margin`
    (true-class logit minus the best other logit: positive when the row is classified right)."""

    loss: np.ndarray
    confidence: np.ndarray
    margin: np.ndarray
    correct: np.ndarray

    def features(self) -> np.ndarray:
        """The learned attack's features, one row per example: [loss, confidence, margin]."""
        return np.column_stack([self.loss, self.confidence, self.margin])


def example_stats(model: nn.Module, data: Any, *, batch_size: int = 4096) -> ExampleStats:
    """Loss, confidence, margin and correctness of every row of `data` under `model` (logits out; log-
    probabilities work too, softmax is the same), in eval mode without gradients; the model's mode is restored."""
    x, y = as_tensors(data)
    was_training = model.training
    model.eval()
    out: dict[str, list[torch.Tensor]] = {"loss": [], "confidence": [], "margin": [], "correct": []}
    try:
        with torch.no_grad():
            for lo in range(0, x.shape[0], batch_size):
                yb = y[lo:lo + batch_size]
                logp = torch.log_softmax(model(to_model(model, x[lo:lo + batch_size])).double().cpu(), dim=-1)
                true = logp.gather(1, yb[:, None])[:, 0]
                others = logp.scatter(1, yb[:, None], float("-inf"))
                out["loss"].append(-true)
                out["confidence"].append(logp.max(dim=-1).values.exp())
                out["margin"].append(true - others.max(dim=-1).values)
                out["correct"].append(logp.argmax(dim=-1) == yb)
    finally:
        model.train(was_training)
    if x.shape[0] == 0:
        empty = np.zeros(0)
        return ExampleStats(empty, empty, empty, np.zeros(0, bool))
    return ExampleStats(*(torch.cat(out[k]).cpu().numpy() for k in ("loss", "confidence", "margin", "correct")))


def mean_loss(model: nn.Module, data: Any, *, batch_size: int = 4096) -> float:
    loss = example_stats(model, data, batch_size=batch_size).loss
    return float(loss.mean()) if loss.size else float("nan")


def accuracy(model: nn.Module, data: Any, *, batch_size: int = 4096) -> float:
    """The share of rows of `data` the model classifies right (ValueError when `data` is empty)."""
    correct = example_stats(model, data, batch_size=batch_size).correct
    if correct.size == 0:
        raise ValueError("accuracy of an empty dataset")
    return float(correct.mean())


def _finite_1d(values: Any, what: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError(f"{what} is empty: a membership-inference AUC needs at least one of each")
    if np.isnan(a).any():
        raise ValueError(f"{what} holds NaN")
    return a


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based position of each distinct value's first occurrence
    return (first + (counts + 1) / 2.0)[inverse]


def score_auc(positive_scores: Any, negative_scores: Any) -> float:
    """P(score(positive) > score(negative)) + ½·P(equal), exactly, in O(n log n) by ranking."""
    pos = _finite_1d(positive_scores, "positive scores")
    neg = _finite_1d(negative_scores, "negative scores")
    ranks = _average_ranks(np.concatenate([pos, neg]))
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def loss_threshold_auc(member_losses: Any, nonmember_losses: Any) -> float:
    """AUC of the loss-threshold membership-inference attack: the probability that a member's loss is below a
    non-member's (ties count half). 0.5 when the model treats both alike; 1.0 when every member's loss is below
    every non-member's. ValueError when either side is empty or holds NaN.

    >>> loss_threshold_auc([0.1, 0.2], [0.3, 0.4])
    1.0
    >>> loss_threshold_auc([0.5, 0.5], [0.5, 0.5])
    0.5
    """
    members = _finite_1d(member_losses, "member losses")
    nonmembers = _finite_1d(nonmember_losses, "non-member losses")
    return score_auc(-members, -nonmembers)


def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu, sd = train.mean(0), train.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    return (train - mu) / sd, (test - mu) / sd


def fit_logistic(x: np.ndarray, y: np.ndarray, *, l2: float = 1e-2, iterations: int = 50) -> np.ndarray:
    """Weights (intercept first) of an L2-regularised logistic regression by Newton's method: a handful of
    features, so each step is a tiny linear solve; the penalty keeps separable data finite."""
    a = np.column_stack([np.ones(len(x)), x])
    w = np.zeros(a.shape[1])
    penalty = l2 * np.eye(a.shape[1])
    penalty[0, 0] = 0.0  # the intercept is not shrunk
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(a @ w, -30, 30)))
        grad = a.T @ (p - y) + penalty @ w
        hess = (a * (p * (1 - p))[:, None]).T @ a + penalty + 1e-9 * np.eye(a.shape[1])
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return w


def learned_attack_scores(member_features: Any, nonmember_features: Any, *, folds: int = 5,
                          seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold scores of a learned membership-inference attack: a logistic regression on per-row features
    (e.g. `ExampleStats.features()`), each row scored by a model fit on the other folds (stratified k-fold,
    seeded), so no row is scored by a model that saw it. Returns (member scores, non-member scores). Uses
    min(folds, smaller class size) folds; ValueError below 2 rows a class."""
    m = np.asarray(member_features, dtype=np.float64)
    n = np.asarray(nonmember_features, dtype=np.float64)
    m, n = (a.reshape(-1, 1) if a.ndim == 1 else a for a in (m, n))
    if m.shape[1] != n.shape[1]:
        raise ValueError(f"members have {m.shape[1]} features, non-members {n.shape[1]}")
    k = min(folds, len(m), len(n))
    if k < 2:
        raise ValueError(f"a cross-validated attack needs at least 2 members and 2 non-members, "
                         f"got {len(m)} and {len(n)}")
    if not (np.isfinite(m).all() and np.isfinite(n).all()):
        raise ValueError("attack features must be finite")
    x = np.concatenate([m, n])
    y = np.concatenate([np.ones(len(m)), np.zeros(len(n))])
    rng = np.random.default_rng(seed)
    fold = np.empty(len(x), np.int64)
    for cls in (1.0, 0.0):  # stratified: each fold gets its share of members and of non-members
        rows = np.flatnonzero(y == cls)
        fold[rng.permutation(rows)] = np.arange(rows.size) % k
    scores = np.empty(len(x))
    for f in range(k):
        test = fold == f
        train_x, test_x = _standardize(x[~test], x[test])
        w = fit_logistic(train_x, y[~test])
        scores[test] = w[0] + test_x @ w[1:]
    return scores[y == 1], scores[y == 0]


def learned_attack_auc(member_features: Any, nonmember_features: Any, *, folds: int = 5, seed: int = 0) -> float:
    """AUC of a learned membership-inference attack: the out-of-fold scores of `learned_attack_scores`."""
    return score_auc(*learned_attack_scores(member_features, nonmember_features, folds=folds, seed=seed))


def placements(positive_scores: Any, negative_scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components: per positive, the share of negatives it outscores (ties half); per
    negative, the share of positives that outscore it. Their means are both the AUC. From ranks: a positive's
    rank among all scores minus its rank among the positives counts the negatives below it."""
    pos = _finite_1d(positive_scores, "positive scores")
    neg = _finite_1d(negative_scores, "negative scores")
    ranks = _average_ranks(np.concatenate([pos, neg]))
    v10 = (ranks[: pos.size] - _average_ranks(pos)) / neg.size
    v01 = 1.0 - (ranks[pos.size:] - _average_ranks(neg)) / pos.size
    return v10, v01


def auc_covariance(pairs: list[tuple[Any, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their covariance matrix (DeLong, DeLong and Clarke-Pearson, Biometrics 1988) for several
    scorings of the same positives and negatives, each `(positive_scores, negative_scores)` in the same row
    order: e.g. one attack on the unlearned and on the retrained model, to compare them paired. Needs at least
    2 positives and 2 negatives (else the variance is undefined: ValueError)."""
    comps = [placements(p, n) for p, n in pairs]
    m, n = comps[0][0].size, comps[0][1].size
    if m < 2 or n < 2:
        raise ValueError(f"an AUC's variance needs at least 2 positives and 2 negatives, got {m} and {n}")
    if any(v10.size != m or v01.size != n for v10, v01 in comps):
        raise ValueError("paired AUCs need the same positives and negatives")
    aucs = np.array([v10.mean() for v10, _ in comps])
    s10 = np.atleast_2d(np.cov(np.stack([v10 for v10, _ in comps]), ddof=1))
    s01 = np.atleast_2d(np.cov(np.stack([v01 for _, v01 in comps]), ddof=1))
    return aucs, s10 / m + s01 / n
