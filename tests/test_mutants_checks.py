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
