"""Approximate unlearning (NegGrad+, SCRUB) and the membership-inference measurements the verifier uses.

The scenario: an MLP deliberately overfit to 40 mislabelled rows (the forget set, seen 5× each) among 2,000;
non-members are 200 held-out rows mislabelled the same way, so a model that never saw the forget set cannot
tell them apart (AUC ≈ 0.5). The oracle is that model, retrained without the forget set; each method must
close most of the AUC gap to it and keep test accuracy.
"""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from expunge.errors import BadInput  # noqa: E402
from expunge.orchestrator import approximate, mia  # noqa: E402
from expunge.orchestrator.trainers import mlp, sisa  # noqa: E402

D, N_TRAIN, N_FORGET, N_NON, N_TEST = 16, 2000, 40, 200, 1000


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


# --- the unlearning scenario ----------------------------------------------------------------------------------

def scenario_data(seed: int = 0):
    """forget (mislabelled), retain, non-members (mislabelled, held out), test: each an (X, y) pair."""
    g = torch.Generator().manual_seed(seed)
    n = N_TRAIN + N_NON + N_TEST
    x = torch.randn(n, D, generator=g)
    p = torch.sigmoid(x @ (torch.randn(D, generator=g) * 6 / D ** 0.5))
    y = (torch.rand(n, generator=g) < p).long()
    wrong = (p < 0.5).long()  # the class the features make unlikely
    y[:N_FORGET], y[N_TRAIN:N_TRAIN + N_NON] = wrong[:N_FORGET], wrong[N_TRAIN:N_TRAIN + N_NON]
    bounds = (0, N_FORGET, N_TRAIN, N_TRAIN + N_NON, n)
    return tuple((x[lo:hi], y[lo:hi]) for lo, hi in itertools.pairwise(bounds))


def train_mlp(x, y, *, seed: int = 1, epochs: int = 15):
    torch.manual_seed(seed)
    model = mlp.build(D, 64, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model


def attack_auc(model, forget, nonmembers) -> float:
    return mia.loss_threshold_auc(mia.example_stats(model, forget).loss, mia.example_stats(model, nonmembers).loss)


@pytest.fixture(scope="module")
def scenario():
    forget, retain, nonmembers, test = scenario_data()
    # Deliberately overfit: each forget row is seen 5 times an epoch.
    original = train_mlp(torch.cat([forget[0]] * 5 + [retain[0]]), torch.cat([forget[1]] * 5 + [retain[1]]))
    retrained = train_mlp(*retain)  # the oracle: the same training, never shown the forget set
    sample = approximate.retain_sample(len(retain[0]), len(forget[0]), torch.Generator().manual_seed(7))
    assert len(sample) == approximate.RETAIN_PER_FORGET * N_FORGET
    ref = {"original": attack_auc(original, forget, nonmembers),
           "retrained": attack_auc(retrained, forget, nonmembers),
           "test_accuracy": mia.accuracy(original, test), "retain_accuracy": mia.accuracy(original, retain)}
    # The setup itself: the original model is exposed, the retrained one is not.
    assert ref["original"] > 0.8 and abs(ref["retrained"] - 0.5) < 0.1, ref
    return {"forget": forget, "retain": retain, "nonmembers": nonmembers, "test": test, "original": original,
            "ref": ref, "retain_sample": (retain[0][sample], retain[1][sample])}


METHODS = {"neggrad_plus": approximate.neggrad_plus, "scrub": approximate.scrub}
SHORT = {"neggrad_plus": {"epochs": 1}, "scrub": {"steps": 2, "max_steps": 1}}  # enough to test determinism


@pytest.mark.parametrize("method", METHODS)
def test_unlearning_moves_toward_the_retrained_model(scenario, method):
    model = copy.deepcopy(scenario["original"])
    forget, ref = scenario["forget"], scenario["ref"]
    report = METHODS[method](model, forget, scenario["retain_sample"], generator=torch.Generator().manual_seed(3))

    loss_before = mia.example_stats(scenario["original"], forget).loss.mean()
    loss_after = mia.example_stats(model, forget).loss.mean()
    assert loss_after > loss_before + 1.0
    assert report["forget_loss_before"] == pytest.approx(loss_before)
    assert report["forget_loss_after"] == pytest.approx(loss_after)

    auc = attack_auc(model, forget, scenario["nonmembers"])
    gap = abs(ref["original"] - ref["retrained"])
    assert abs(auc - ref["retrained"]) < gap / 3, (auc, ref)  # closes at least two thirds of the gap

    assert mia.accuracy(model, scenario["test"]) >= ref["test_accuracy"] - 0.03
    assert mia.accuracy(model, scenario["retain"]) >= ref["retain_accuracy"] - 0.05

    assert report["method"] == method and report["steps"] > 0
    assert report["forget_rows"] == N_FORGET and report["retain_rows"] == approximate.RETAIN_PER_FORGET * N_FORGET
    assert report["wall_seconds"] > 0 and report["cpu_seconds"] >= 0


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_weights(scenario, method):
    def run(seed):
        model = copy.deepcopy(scenario["original"])
        METHODS[method](model, scenario["forget"], scenario["retain_sample"], **SHORT[method],
                        generator=torch.Generator().manual_seed(seed))
        return model.state_dict()

    rng_state = torch.get_rng_state()
    a, b, c = run(11), run(11), run(12)
    assert all(torch.equal(a[k], b[k]) for k in a)            # bit-identical
    assert not all(torch.equal(a[k], c[k]) for k in a)        # the generator does drive it
    assert torch.equal(torch.get_rng_state(), rng_state)      # the caller's global RNG is left alone


@pytest.mark.parametrize("method", METHODS)
def test_refuses_empty_sets(method):
    model = mlp.build(D, 8, 2)
    x, y = torch.randn(10, D), torch.randint(0, 2, (10,))
    with pytest.raises(BadInput, match="forget set is empty"):
        METHODS[method](model, (x[:0], y[:0]), (x, y))
    with pytest.raises(BadInput, match="retain set is empty"):
        METHODS[method](model, (x, y), (x[:0], y[:0]))
    with pytest.raises(BadInput, match="shape"):
        METHODS[method](model, (x, y), (torch.randn(10, D + 1), y))


@pytest.mark.parametrize("method", METHODS)
def test_datasets_and_tensors_agree(method):
    torch.manual_seed(0)
    model = mlp.build(D, 8, 2)
    x, y = torch.randn(60, D), torch.randint(0, 2, (60,))
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    METHODS[method](a, (x[:6], y[:6]), (x[6:], y[6:]), generator=torch.Generator().manual_seed(1))
    METHODS[method](b, torch.utils.data.TensorDataset(x[:6], y[:6]), torch.utils.data.TensorDataset(x[6:], y[6:]),
                    generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_sisa_ensemble_through_the_wrapper(scenario):
    torch.manual_seed(0)
    members = [train_mlp(torch.cat([scenario["forget"][0]] * 5 + [scenario["retain"][0][i::3]]),
                         torch.cat([scenario["forget"][1]] * 5 + [scenario["retain"][1][i::3]]), seed=i, epochs=8)
               for i in range(3)]
    ensemble = sisa.SisaEnsemble(members)
    wrapped = approximate.EnsembleLogits(ensemble)
    x = scenario["test"][0][:20]
    with torch.no_grad():
        torch.testing.assert_close(torch.softmax(wrapped(x), -1), ensemble(x))
    before = copy.deepcopy(ensemble.state_dict())
    report = approximate.neggrad_plus(wrapped, scenario["forget"], scenario["retain_sample"],
                                      generator=torch.Generator().manual_seed(3))
    assert report["forget_loss_after"] > report["forget_loss_before"]
    changed = [not torch.equal(before[k], v) for k, v in ensemble.state_dict().items()]
    assert all(changed)  # every member was unlearned, in place


def test_retain_sample():
    gen = torch.Generator().manual_seed(0)
    s = approximate.retain_sample(1000, 20, gen)
    assert len(s) == 200 and len(set(s.tolist())) == 200 and s.max() < 1000
    assert len(approximate.retain_sample(50, 20, gen)) == 50  # all of them when there are fewer
