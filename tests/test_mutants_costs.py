"""Boundary examples for the cost functions, worked out by hand: each kills mutants of costs.py that the other
tests let live (bench/mutation.py; bench/MUTANTS.md)."""

from __future__ import annotations

import pytest

from expunge.orchestrator import costs


def test_certified_removal_with_one_retained_row_and_one_pass():
    # 1 pass took 10 s → 10 s a pass; d = 2: 2 passes for the Hessian (20 s) + the solve 10·2·2/1 = 40 s.
    assert costs.certified_removal(10.0, n_retained=1, dim=2, iterations=1).seconds == pytest.approx(60.0)
    # No retained row is priced as one (never a division by zero), and 0 passes as one.
    assert costs.certified_removal(10.0, n_retained=0, dim=2, iterations=0).seconds == pytest.approx(60.0)
    # Two Newton steps cost twice one, plus the loading once.
    est = costs.certified_removal(10.0, n_retained=10, dim=1, iterations=1, steps=2, setup=3.0)
    assert est.seconds == pytest.approx(3.0 + 2 * (10.0 + 10.0 / 10))
    assert est.reasons == ["2 Newton step(s), each a Hessian on 10 retained rows × 1 features (≈ 1 gradient passes "
                           "of a 1-pass run) + 3.0 s loading its data"]


def test_checkpoint_replay_of_a_one_step_run_and_its_refusals():
    assert costs.checkpoint_replay(10.0, total_steps=1, clean_step=0).seconds == pytest.approx(10.0)
    assert costs.checkpoint_replay(10.0, total_steps=1, clean_step=1).seconds == 0.0
    est = costs.checkpoint_replay(60.0, total_steps=6, clean_step=4)
    assert est.reasons == ["replay from step 4 of 6: 33% of a 60.0 s run"]
    with pytest.raises(ValueError, match="^no steps recorded$"):
        costs.checkpoint_replay(10.0, total_steps=0, clean_step=0)
    with pytest.raises(ValueError, match="^checkpoint step 7 outside the run's 6 steps$"):
        costs.checkpoint_replay(10.0, total_steps=6, clean_step=7)
    with pytest.raises(ValueError, match="checkpoint step -1"):
        costs.checkpoint_replay(10.0, total_steps=6, clean_step=-1)


def test_retiring_and_doing_nothing_cost_nothing_and_say_why():
    assert costs.retire() == costs.Estimate(0.0, ["no compute; the model is withdrawn (its utility is lost)"])
    assert costs.no_action() == costs.Estimate(0.0, ["the records never reached training"])


def test_certified_batch_is_the_read_the_new_version_and_a_d_by_d_solve_per_row():
    # 0.2 s to find the rows, 0.05 s to record the version, 1 µs × rows × d² for the solve.
    assert costs.certified_batch(0.2, steps=3, dim=10).seconds == pytest.approx(0.2 + 0.05 + 1e-6 * 3 * 100, rel=1e-12)
    one = costs.certified_batch(0.2, steps=1, dim=10)
    assert one.seconds == pytest.approx(0.2501, rel=1e-12)
    assert costs.certified_batch(0.2, steps=0, dim=10) == one  # no row is priced as one
    assert one.reasons == ["one Newton step for 1 row(s) from the Hessian saved with the weights (finding the rows: "
                           "0.2s as measured at training; recording the new version ≈ 0.05s)"]
