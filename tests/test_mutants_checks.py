"""Survivors of the mutation run over orchestrator/checks.py: the check a plan item carries, from hand-made
facts (the planner tests reach it only through whole plans, where no certified item's check was compared)."""

from __future__ import annotations

import pytest

from expunge.orchestrator.checks import plan_check
from tests.test_mutants_actions import POLICY, facts


def test_a_certified_result_carries_its_certificate_and_costs_nothing():
    f = facts(certificate={"epsilon": 1.0, "delta": 1e-4, "removal_budget": 0.3, "lam": 0.01})
    check, why = plan_check("certified", f, POLICY, "mia")
    assert why is None
    assert check == {"kind": "certificate", "seconds": 0.0, "thresholds": {"epsilon": 1.0, "delta": 1e-4},
                     "reasons": ["the Newton steps' gradient-residual bound stays within the removal budget"]}


def test_an_exact_result_is_proved_from_lineage_at_no_cost():
    check, why = plan_check("exact", facts(), POLICY, "mia")
    assert why is None and (check["kind"], check["seconds"], check["thresholds"]) == ("lineage", 0.0, {})


def test_an_ensembles_membership_check_runs_every_member():
    one, _ = plan_check("approximate", facts(shards=1), POLICY, "mia")
    four, _ = plan_check("approximate", facts(shards=4), POLICY, "mia")
    assert one["kind"] == four["kind"] == "mia"
    assert one["seconds"] > 0 and four["seconds"] == pytest.approx(4 * one["seconds"], rel=1e-12)  # 4 members each
    assert "of all 4 members" in four["reasons"][0] and "of all" not in one["reasons"][0]


def test_an_approximate_results_thresholds_follow_the_policys_check():
    """`mia`: the AUC bound and the accuracy drop; `mia_retrained`: the gap to the reference and the accuracy drop,
    and its price adds a full retrain (the same facts' full_retrain estimate)."""
    from expunge.orchestrator.actions import FullRetrain

    f = facts()
    mia, _ = plan_check("approximate", f, POLICY, "mia")
    assert mia["thresholds"] == {"max_mia_auc": POLICY.max_mia_auc, "max_accuracy_drop": POLICY.max_accuracy_drop}
    ref, why = plan_check("approximate", f, POLICY, "mia_retrained")
    assert why is None and ref["kind"] == "mia_retrained"
    assert ref["thresholds"] == {"max_mia_auc_gap": POLICY.max_mia_auc_gap,
                                 "max_accuracy_drop": POLICY.max_accuracy_drop}
    retrain = FullRetrain().estimate(f, POLICY).seconds
    assert retrain > 0 and ref["seconds"] == pytest.approx(mia["seconds"] + retrain, rel=1e-12)


def test_a_retrained_reference_check_of_a_model_that_cannot_be_retrained_is_refused():
    check, why = plan_check("approximate", facts(trainer=None), POLICY, "mia_retrained")
    assert check is None and why == ("its check needs a retrained reference, and the model cannot be retrained: "
                                     "no recorded trainer entry point")
    check, why = plan_check("approximate", facts(trainer=None), POLICY, "mia")  # no retrain needed
    assert why is None and check["kind"] == "mia"
