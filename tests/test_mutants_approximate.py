"""Survivors of the mutation run over orchestrator/approximate.py: SCRUB's distillation loss against the KL
divergence written out by hand, and its refusals naming the method."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from expunge.errors import BadInput  # noqa: E402
from expunge.orchestrator import approximate  # noqa: E402


def _softmax(row, t):
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def test_the_distillation_loss_is_the_tempered_kl_by_hand():
    student = [[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]]
    teacher = [[2.0, -1.0, 0.0], [0.0, 1.0, 1.0]]
    t = 2.0
    # KL(teacher ‖ student) of both distributions softened by T, averaged over the 2 rows, times T².
    kl = sum(sum(p * math.log(p / q) for p, q in zip(_softmax(tr, t), _softmax(sr, t)))
             for sr, tr in zip(student, teacher)) / 2 * t * t
    got = approximate._kl_teacher_student(torch.tensor(student, dtype=torch.float64),
                                          torch.tensor(teacher, dtype=torch.float64), t)
    assert float(got) == pytest.approx(kl, rel=1e-12)


def test_scrub_refusals_name_it():
    from expunge.orchestrator.trainers import mlp

    model = mlp.build(4, 8, 2)
    x, y = torch.randn(10, 4), torch.randint(0, 2, (10,))
    with pytest.raises(BadInput, match="^SCRUB: the forget set is empty"):
        approximate.scrub(model, (x[:0], y[:0]), (x, y))


def test_scrub_arguments_at_their_boundaries():
    from expunge.orchestrator.trainers import mlp

    torch.manual_seed(0)
    model = mlp.build(4, 8, 2)
    x, y = torch.randn(12, 4), torch.randint(0, 2, (12,))
    forget, retain = (x[:4], y[:4]), (x[4:], y[4:])
    with pytest.raises(BadInput, match="steps ≥ 1"):
        approximate.scrub(model, forget, retain, steps=0, max_steps=3)
    # One row a batch is allowed; no forget batch size means the batch size; the report says how many epochs
    # maximised (min(max_steps, steps) = 2 of 3) and how many forget batches that took (4 rows in batches of 1).
    rep = approximate.scrub(model, forget, retain, steps=3, max_steps=2, batch_size=1, forget_batch_size=None)
    assert (rep["method"], rep["epochs"], rep["max_epochs"], rep["forget_steps"]) == ("scrub", 3, 2, 8)
