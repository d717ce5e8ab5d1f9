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
