"""Actions priced from hand-made facts, against arithmetic done by hand: each kills mutants of actions.py the
other tests let live (bench/mutation.py; bench/MUTANTS.md). The planner tests reach these estimates only
through whole plans, where another action often wins and the price is never compared."""

from __future__ import annotations

import pytest

from expunge.orchestrator import actions as A
from expunge.orchestrator.policy import load_policy

POLICY = load_policy(None)  # retire_withdrawn = true; allow_retire = false (estimate does not check it)


def facts(**kw) -> A.ModelFacts:
    base = dict(model="m@1", name="m", stage="production", direct=True, records=2, train_records=2,
                run="r", trainer="pkg.mod:train", run_seconds=100.0, run_records=1000)
    return A.ModelFacts(**{**base, **kw})


@pytest.mark.parametrize("stage,value", [("production", 10.0), ("staging", 2.0), ("dev", 0.5),
                                         ("shadow", 1.0)])  # a stage without a value: 1× its run
def test_retiring_a_served_model_costs_its_value_by_stage(stage, value):
    est = A.Retire().estimate(facts(stage=stage), POLICY)
    assert est.seconds == pytest.approx(100.0 * value)
    assert est.reasons == ["no compute; the model is withdrawn (its utility is lost)",
                           f"{stage} model valued at {value}× its training run"]


@pytest.mark.parametrize("stage", ["archived", "superseded"])
def test_retiring_a_withdrawn_model_costs_nothing_and_says_so(stage):
    est = A.Retire().estimate(facts(stage=stage), POLICY)
    assert est.seconds == 0.0
    assert est.reasons == [f"already {stage}: it stays withdrawn (policy retire_withdrawn), its files are deleted "
                           "with the request's residual copies"]


def test_checkpoint_replay_pays_loading_and_recording_again():
    # Replay from step 600 of 1,000 (40% of 100 s) + 3 s loading + 2 s recording the new run.
    f = facts(total_steps=1000, clean_step=600, setup_seconds=3.0, record_seconds=2.0)
    assert A.CheckpointReplay().estimate(f, POLICY).seconds == pytest.approx(40.0 + 5.0)


CERT = {"removal_budget": 1.0, "removal_read_seconds": 0.2, "lam": 0.01, "train_grad_norm": 0.0}


def test_certified_removal_batch_step_is_priced_as_one_step_from_the_saved_hessian():
    # One batch Newton step for 2 rows, d = 4: 0.2 s read + 0.02 s new version + 1e-6 × 2 × 16.
    f = facts(family="logreg_certified", certificate=CERT, certified_need=0.25, certified_how="batch", dim=4,
              iterations=10)
    est = A.CertifiedRemoval().estimate(f, POLICY)
    assert est.seconds == pytest.approx(0.2 + 0.02 + 1e-6 * 2 * 16, rel=1e-12)
    assert est.reasons[-1] == ("uses 0.25 of the 1 removal budget left (one batch Newton step's bound, from the "
                               "removed rows and the saved Hessian)")


def test_certified_removal_per_row_steps_are_priced_on_the_runs_passes():
    # 10 passes took 100 s → 10 s a pass; d = 4: per step 4 passes (40 s) + 10·16/998 for the solve; 2 steps.
    f = facts(family="logreg_certified", certificate=CERT, certified_need=0.25, certified_how="per-row", dim=4,
              iterations=10, setup_seconds=1.0)
    est = A.CertifiedRemoval().estimate(f, POLICY)
    assert est.seconds == pytest.approx(1.0 + 2 * (40.0 + 10.0 * 16 / 998))
    assert est.reasons[-1].endswith("(Newton-step bounds on the run's data)")


def test_an_unknown_action_is_named_with_the_known_ones():
    with pytest.raises(KeyError, match="unknown action 'nope'; known: no_action, full_retrain, "):
        A.action("nope")
    assert A.action("retire") is A.ACTIONS["retire"]


def test_certified_removal_names_the_bound_it_used():
    def how(**kw):
        f = facts(family="logreg_certified", certified_how="per-row", dim=4, iterations=10, **kw)
        return A.CertifiedRemoval().estimate(f, POLICY).reasons[-1].rsplit("(", 1)[1]

    assert how(certificate=CERT) == "worst-case bound)"
    hessian = {**CERT, "hessian_min_eig": 5.0, "x_spectral_sq": 1.0, "w_norm": 1.0}
    assert how(certificate=hessian) == "bound from the recorded Hessian facts)"
    assert how(certificate=hessian, certified_need=0.1) == "Newton-step bounds on the run's data)"


def test_a_sisa_retrain_is_refused_without_a_trainer_or_after_a_rekey_and_says_why():
    sisa = dict(family="sisa-mlp", stage_steps={(0, 0): 10}, affected_shards={0: 0})
    assert A.SisaShardRetrain().check(facts(**sisa), POLICY) is None
    assert A.SisaShardRetrain().check(facts(**{**sisa, "trainer": None}), POLICY) == "no recorded trainer entry point"
    assert A.SisaShardRetrain().check(facts(**sisa, sisa_rekeyed=True), POLICY) == (
        "its shards were dealt from the owners' keys, which a key rotation has changed since: a shard retrain "
        "cannot deal the rows of its composed dataset as they were trained")


def test_a_sisa_retrain_loads_one_shard_and_pays_the_write_whole():
    # Shard 1 of 2 from slice 1: 10 of 40 steps of a 100 s run = 25 s. Loading and recording: 8 s + 2 s, of which
    # 4 s read the files (replaced by 1 s loading one shard's rows) and 0.5 s committed the write (paid whole);
    # the other 10 − 4 − 0.5 = 5.5 s scale with shard 1's share of the steps, 20/40: 1 + 2.75 + 0.5 = 4.25 s.
    f = facts(family="sisa-mlp", stage_steps={(0, 0): 10, (0, 1): 10, (1, 0): 10, (1, 1): 10}, affected_shards={1: 1},
              setup_seconds=8.0, record_seconds=2.0, setup_read=4.0, shard_read=1.0, record_write=0.5)
    assert A.SisaShardRetrain().estimate(f, POLICY).seconds == pytest.approx(25.0 + 4.25)


def test_a_spent_removal_budget_says_what_removing_would_need():
    def why(need):
        f = facts(family="logreg-certified", certificate={**CERT, "removal_budget": 1.0}, certified_need=need)
        return A.CertifiedRemoval().check(f, POLICY)

    assert why(0.5) is None
    assert why(3.0) == "removal budget spent: removing 2 row(s) needs 3, 1 left"
    assert why(float("inf")) == "removal budget spent: removing 2 row(s) needs more than that, 1 left"


def test_the_worst_case_removal_bound_sums_one_term_per_row():
    # Guo et al. Thm 1 with ‖x‖ ≤ 1: Σ_{i=1..k} 4γ/(λ²(n−i)); γ = 1/4, λ = 1/2, n = 10, k = 2 rows:
    # 1/(0.25·9) + 1/(0.25·8) = 4/9 + 1/2.
    f = facts(family="logreg-certified", certificate={"lam": 0.5, "gamma": 0.25, "removal_budget": 10.0},
              run_records=10, train_records=2)
    assert A.CertifiedRemoval.consumption(f) == pytest.approx(4 / 9 + 1 / 2)
