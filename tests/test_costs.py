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


def test_sisa_shard_retrain_reads_the_files_whole_and_pays_the_rest_of_setup_for_its_shards_rows():
    stage_steps = {(s, r): (r + 1) * 10 for s in range(8) for r in range(4)}   # 100 steps a shard, 800 in all
    # setup 2.0 s of which 0.8 s reading the data files: shards 3 and 5 (200 of 800 steps) pay 0.8 + 1.2 × 1/4.
    est = costs.sisa_shards(8000.0, stage_steps, {3: 1, 5: 3}, setup=2.0, read=0.8)
    assert est.seconds == pytest.approx(0.8 + 1.2 * 0.25 + 8000.0 * (90 + 40) / 800)
    # Unknown read: the whole setup again, as before.
    assert costs.sisa_shards(8000.0, stage_steps, {3: 1}, setup=2.0).seconds == pytest.approx(2.0 + 900.0)
    # A shard's load measured (0.1 s): it replaces the whole-file read; the rest of setup scales as before.
    est = costs.sisa_shards(8000.0, stage_steps, {3: 1, 5: 3}, setup=2.0, read=0.8, shard_read=0.1)
    assert est.seconds == pytest.approx(0.1 + 1.2 * 0.25 + 8000.0 * (90 + 40) / 800)
    assert "loading a shard's rows" in est.reasons[0]
    # Committing the write (0.2 s of the 2.0) is paid whole: 0.1 + (2.0 − 0.8 − 0.2) × 1/4 + 0.2.
    est = costs.sisa_shards(8000.0, stage_steps, {3: 1, 5: 3}, setup=2.0, read=0.8, shard_read=0.1, write=0.2)
    assert est.seconds == pytest.approx(0.1 + 1.0 * 0.25 + 0.2 + 8000.0 * (90 + 40) / 800)
    assert "200 ms committing the write" in est.reasons[0]
    # A write said to take more than the setup left after reading is capped at it.
    assert costs.sisa_shards(8000.0, stage_steps, {3: 1}, setup=2.0, read=0.8, write=5.0).seconds == \
        pytest.approx(0.8 + 1.2 + 900.0)


def test_checkpoint_replay_from_step_600_of_1000_is_40_percent():
    assert costs.checkpoint_replay(run_seconds=5000.0, total_steps=1000, clean_step=600).seconds == \
        pytest.approx(2000.0)


def test_full_retrain_scales_with_what_remains():
    assert costs.full_retrain(1000.0, n_records=10_000, n_removed=2_500).seconds == pytest.approx(750.0)


def test_rerunning_a_chain_prices_each_run_on_what_remains():
    # base: 120 s on 1,000 records, 10 erased → 118.8 s; fine-tune: 30 s on 300 records, none erased.
    runs = [costs.RunCost("base", 120.0, 1000, 10), costs.RunCost("ft", 30.0, 300, 0)]
    assert costs.rerun_runs(runs, "x").seconds == pytest.approx(118.8 + 30.0)
    # One run re-done costs what its full retrain costs, whatever the action is called.
    assert costs.rerun_runs(runs[:1], "y").seconds == costs.full_retrain(120.0, 1000, 10).seconds


def test_checkpoint_replay_counts_steps_after_the_last_checkpoint():
    # The case: 6 steps, checkpoints at 2 and 4, the record first consumed at step 5:
    # replay from step 4 → 2 of 6 steps, not "4 of 4: 0%".
    assert costs.checkpoint_replay(run_seconds=60.0, total_steps=6, clean_step=4).seconds == pytest.approx(20.0)
    with pytest.raises(ValueError):
        costs.checkpoint_replay(run_seconds=60.0, total_steps=4, clean_step=6)


def test_mia_check_is_inference_over_forget_nonmembers_and_test():
    # 1 ms per row-epoch (forward+backward); a forward is a third. 5 forget, 200 non-members (the
    # minimum), 1,000 test rows, each through the model before and after: 2 × 1,205 forwards.
    est = costs.mia_check(1000.0, epochs=10, n_rows=100_000, n_forget=5)
    assert est.seconds == pytest.approx(2 * 1205 * 1e-3 / 3)
    # An ensemble of 8 runs every member per prediction.
    assert costs.mia_check(1000.0, epochs=10, n_rows=100_000, n_forget=5, members=8).seconds == \
        pytest.approx(8 * est.seconds)


def test_approximate_is_priced_in_unlearning_steps():
    # SCRUB on 50 forget + 500 retained rows: 3 passes of ⌈50/8⌉ = 7 forget steps + 5 passes of ⌈500/64⌉ = 8
    # retain steps = 61 steps, each 1.7 training steps (the KL to the teacher); the run took 1,000 s for 4,000
    # steps: 0.25 s a step → 25.925 s, + 2 s loading.
    est = costs.approximate(1000.0, epochs=10, n_records=100_000, n_forget=50, retain_sample=500, setup=2.0,
                            total_steps=4000)
    assert est.seconds == pytest.approx(2.0 + 61 * 1.7 * 0.25)
    # NegGrad+: 5 epochs of ⌈500/64⌉ = 8 steps, each with a forget batch too (counted twice): 80 steps.
    assert costs.approximate(1000.0, epochs=10, n_records=100_000, n_forget=50, retain_sample=500, total_steps=4000,
                             method="neggrad+").seconds == pytest.approx(80 * 0.25)
    # Without the run's steps: per row of a training epoch, 1 ms (10 epochs of 100k rows in 1,000 s) × 10 × 550.
    assert costs.approximate(1000.0, epochs=10, n_records=100_000, n_forget=50, retain_sample=500).seconds == \
        pytest.approx(5.5)
    # A SISA ensemble of 4 is unlearned whole: each step runs all 4 members, where a training step ran one.
    sisa = costs.approximate(1000.0, epochs=10, n_records=100_000, n_forget=50, retain_sample=500, setup=2.0,
                             total_steps=4000, members=4)
    assert sisa.seconds == pytest.approx(2.0 + 61 * 1.7 * 4 * 0.25) and "all 4 members" in sisa.reasons[0]
    assert costs.approximate(1000.0, epochs=10, n_records=100_000, n_forget=50, retain_sample=500,
                             members=4).seconds == pytest.approx(4 * 5.5)


def test_certified_removal_is_priced_in_gradient_passes():
    # 100 full-batch passes took 50 s → 0.5 s a pass; d = 32: 32 passes for the Hessian, plus the solve.
    est = costs.certified_removal(50.0, n_retained=10_000, dim=32, iterations=100)
    assert est.seconds == pytest.approx(0.5 * 32 + 0.5 * 32 * 32 / 10_000)


def test_dollars_use_the_policy_rate():
    assert costs.Estimate(7200.0).dollars(2.5) == pytest.approx(5.0)
