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
    # 0.2 s to find the rows, 0.02 s to record the version, 1 µs × rows × d² for the solve.
    assert costs.certified_batch(0.2, steps=3, dim=10).seconds == pytest.approx(0.2 + 0.02 + 1e-6 * 3 * 100, rel=1e-12)
    one = costs.certified_batch(0.2, steps=1, dim=10)
    assert one.seconds == pytest.approx(0.2201, rel=1e-12)
    assert costs.certified_batch(0.2, steps=0, dim=10) == one  # no row is priced as one
    assert one.reasons == ["one Newton step for 1 row(s) from the Hessian saved with the weights (finding the rows: "
                           "0.2s as measured at training; recording the new version ≈ 0.02s)"]


def test_certified_residual_bound_two_steps_by_hand():
    # λ = 0.1, μ = 2, s = 4, ‖w‖ = 1, γ = ℓ''max = 0.25. Step 1: μ₁ = 2 − 0.35 = 1.65, ‖H⁻¹Δ‖ ≤ 1.1/1.65 = 2/3,
    # residual γ·s·(2/3)² = 4/9. Step 2: μ₂ = 2 − 0.7 − 1·(2/3) = 19/30, ‖H⁻¹Δ‖ ≤ (1 + 0.1·5/3)/(19/30) = 35/19.
    kw = dict(lam=0.1, n=100, mu=2.0, spec_sq=4.0, w_norm=1.0)
    assert costs.certified_residual_bound(1, **kw) == pytest.approx(4 / 9)
    assert costs.certified_residual_bound(2, **kw) == pytest.approx(4 / 9 + (35 / 19) ** 2)
    assert costs.certified_residual_bound(0, **kw) == 0.0
    assert costs.certified_residual_bound(100, **kw) == float("inf")  # k reaches n
    assert costs.certified_residual_bound(2, **kw, limit=1.0) == float("inf")  # past the limit
    assert costs.certified_residual_bound(1, **{**kw, "mu": 0.35}) == float("inf")  # curvature runs out


def test_reasons_of_chains_ensembles_and_empty_sisa_stages():
    runs = [costs.RunCost("base", 120.0, 1000, 10), costs.RunCost("ft", 30.0, 300, 0)]
    assert costs.rerun_runs(runs, "x").reasons == ["x: 2 runs, 148.8 s: base 118.8 s (−10 of 1,000 records); ft 30.0 s"]
    one = costs.mia_check(1000.0, epochs=10, n_rows=100_000, n_forget=5).reasons[0]
    eight = costs.mia_check(1000.0, epochs=10, n_rows=100_000, n_forget=5, members=8).reasons[0]
    assert "before and after:" in one and "before and after of all 8 members:" in eight
    for stages in ({}, {(0, 0): 0}):
        with pytest.raises(ValueError, match="^no stage steps recorded$"):
            costs.sisa_shards(10.0, stages, {0: 0})
