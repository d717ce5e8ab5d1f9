"""The membership-inference measurements the verifier uses (approximate unlearning's tests follow)."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from expunge.orchestrator import mia  # noqa: E402
from expunge.orchestrator.trainers import mlp  # noqa: E402

# --- the AUC of the loss-threshold attack -------------------------------------------------------------------

def brute_force_auc(members, nonmembers) -> float:
    """P(member loss < non-member loss) + ½·P(equal), pair by pair."""
    wins = sum(1.0 if m < n else 0.5 if m == n else 0.0 for m in members for n in nonmembers)
    return wins / (len(members) * len(nonmembers))


# Small integers as floats make ties common; the wide floats check ordering.
losses = st.lists(st.one_of(st.integers(0, 5).map(float), st.floats(0, 50, allow_nan=False)), min_size=1,
                  max_size=30)


@given(losses, losses)
@settings(max_examples=200, deadline=None)
def test_loss_threshold_auc_matches_brute_force(members, nonmembers):
    auc = mia.loss_threshold_auc(members, nonmembers)
    assert auc == pytest.approx(brute_force_auc(members, nonmembers), abs=1e-12)
    assert mia.loss_threshold_auc(nonmembers, members) == pytest.approx(1.0 - auc, abs=1e-12)


def test_loss_threshold_auc_boundaries():
    assert mia.loss_threshold_auc([0.3, 0.3, 0.3], [0.3, 0.3]) == 0.5          # all tied
    same = np.random.default_rng(0).exponential(size=50)
    assert mia.loss_threshold_auc(same, same) == 0.5                            # identical distributions
    assert mia.loss_threshold_auc([0.0, 0.1, 0.2], [0.3, 5.0]) == 1.0          # members all below
    assert mia.loss_threshold_auc([0.3, 5.0], [0.0, 0.1, 0.2]) == 0.0          # members all above
    assert mia.loss_threshold_auc([1.0, 2.0], [1.0, 3.0]) == 0.625             # one tie among four pairs
    assert mia.loss_threshold_auc([0.5], [math.inf]) == 1.0                    # an infinite loss ranks last
    for members, nonmembers in (([], [1.0]), ([1.0], []), ([], [])):
        with pytest.raises(ValueError, match="empty"):
            mia.loss_threshold_auc(members, nonmembers)
    with pytest.raises(ValueError, match="NaN"):
        mia.loss_threshold_auc([float("nan")], [1.0])


def test_learned_attack_auc():
    rng = np.random.default_rng(1)
    apart = mia.learned_attack_auc(rng.normal(0, 1, (60, 3)), rng.normal(3, 1, (200, 3)), seed=0)
    assert apart > 0.95
    alike = mia.learned_attack_auc(rng.normal(size=(200, 3)), rng.normal(size=(200, 3)), seed=0)
    assert abs(alike - 0.5) < 0.1
    m, n = rng.normal(size=(30, 3)), rng.normal(0.5, 1, size=(100, 3))
    assert mia.learned_attack_auc(m, n, seed=4) == mia.learned_attack_auc(m, n, seed=4)   # seeded folds
    assert mia.learned_attack_auc(m[:3], n, folds=5) >= 0.0  # fewer members than folds: 3 folds
    with pytest.raises(ValueError, match="at least 2"):
        mia.learned_attack_auc(m[:1], n)


def test_example_stats_against_torch():
    torch.manual_seed(0)
    model = mlp.build(4, 8, 3)
    x, y = torch.randn(50, 4), torch.randint(0, 3, (50,))
    stats = mia.example_stats(model, (x, y), batch_size=7)
    with torch.no_grad():
        logits = model(x)
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    np.testing.assert_allclose(stats.loss, ce.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.confidence, torch.softmax(logits, -1).max(-1).values.numpy(), rtol=1e-5)
    right = (logits.argmax(-1) == y).numpy()
    assert (stats.correct == right).all() and ((stats.margin > 0) == right).all()
    assert stats.features().shape == (50, 3)
    assert mia.accuracy(model, (x, y)) == pytest.approx(right.mean())
    with pytest.raises(ValueError, match="empty"):
        mia.accuracy(model, (x[:0], y[:0]))
