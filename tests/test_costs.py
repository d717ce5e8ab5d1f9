"""Cost functions against numbers worked out by hand."""

from __future__ import annotations

import pytest

from expunge.orchestrator import costs


def test_sisa_shard_3_from_slice_2_costs_stages_2_to_4_of_shard_3_only():
    # S=8, R=4; stage r of a shard trains on slices 0..r, so it takes (r + 1) × 10 steps.
    stage_steps = {(s, r): (r + 1) * 10 for s in range(8) for r in range(4)}
    total = 8 * (10 + 20 + 30 + 40)                       # 800 steps
    est = costs.sisa_shards(run_seconds=8000.0, stage_steps=stage_steps, affected={3: 1})
    # Stages 2–4 (slices 1, 2, 3) of shard 3: 20 + 30 + 40 = 90 steps of 800.
    assert est.seconds == pytest.approx(8000.0 * 90 / total) == pytest.approx(900.0)


def test_checkpoint_replay_from_step_600_of_1000_is_40_percent():
    assert costs.checkpoint_replay(run_seconds=5000.0, total_steps=1000, clean_step=600).seconds == \
        pytest.approx(2000.0)


def test_full_retrain_scales_with_what_remains():
    assert costs.full_retrain(1000.0, n_records=10_000, n_removed=2_500).seconds == pytest.approx(750.0)


def test_clean_ancestor_sums_the_runs_to_reapply():
    assert costs.clean_ancestor([120.0, 30.0], "base@1").seconds == pytest.approx(150.0)


def test_approximate_is_a_few_epochs_over_forget_and_a_retain_sample():
    # 10 epochs over 100k records took 1,000 s → 1 ms per record-epoch; 2 epochs × (50 + 950) records.
    est = costs.approximate(1000.0, epochs=10, n_records=100_000, n_forget=50, retain_sample=950)
    assert est.seconds == pytest.approx(2.0)


def test_certified_removal_is_priced_in_gradient_passes():
    # 100 full-batch passes took 50 s → 0.5 s a pass; d = 32: 32 passes for the Hessian, plus the solve.
    est = costs.certified_removal(50.0, n_retained=10_000, dim=32, iterations=100)
    assert est.seconds == pytest.approx(0.5 * 32 + 0.5 * 32 * 32 / 10_000)


def test_dollars_use_the_policy_rate():
    assert costs.Estimate(7200.0).dollars(2.5) == pytest.approx(5.0)
