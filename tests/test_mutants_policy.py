"""The policy parser at its boundaries (each limit accepted, one step past it refused) and every default spelled
out: kills mutants of policy.py the other tests let live (bench/mutation.py; bench/MUTANTS.md)."""

from __future__ import annotations

import itertools

import pytest

from expunge.errors import BadInput
from expunge.orchestrator.policy import GUARANTEES, CategoryRule, ModelRule, parse_policy, stronger_or_equal


def test_guarantee_order_is_the_whole_table():
    rank = {"approximate": 0, "certified": 1, "exact": 2}
    for g, r in itertools.product(GUARANTEES, GUARANTEES):
        assert stronger_or_equal(g, r) == (rank[g] >= rank[r]), (g, r)


def test_an_empty_policy_is_every_default():
    p = parse_policy({}, "empty")
    assert p.categories == {"default": CategoryRule("exact", 30, "mia")}
    assert (p.default_category, p.allow_retire, p.retire_withdrawn, p.models) == ("default", False, True, {})
    assert (p.approval_required, p.approvers, p.approver_keys) == (True, 1, {})
    assert (p.max_mia_auc_gap, p.max_accuracy_drop, p.max_mia_auc, p.max_premium) == (0.05, 0.02, 0.55, 2.0)
    assert (p.approximate_method, p.purge_residuals, p.holds) == ("scrub", False, {})
    assert (p.cpu_hour, p.gpu_hour, p.trainers_allow, p.source) == (0.05, 2.5, (), "empty")
    assert p.model("anything") == ModelRule(False, False)


def test_every_setting_is_read():
    p = parse_policy({
        "default_category": "health", "allow_retire": True, "retire_withdrawn": False,
        "categories": {"health": {"weakest_guarantee": "certified", "deadline_days": 7, "check": "mia_retrained"}},
        "models": {"m": {"never_retire": True, "always_retrain": True}},
        "approval": {"required": False, "approvers": 2},
        "approximate": {"max_mia_auc_gap": 0.1, "max_accuracy_drop": 0.2, "max_mia_auc": 0.6, "method": "neggrad+"},
        "risk": {"max_premium": 1.5}, "costs": {"cpu_hour": 1, "gpu_hour": 3.0},
        "residuals": {"purge": True, "hold": {"m": "litigation hold"}}, "trainers": {"allow": ["mypkg"]},
    }, "full")
    assert p.categories == {"health": CategoryRule("certified", 7, "mia_retrained")}
    assert (p.default_category, p.allow_retire, p.retire_withdrawn) == ("health", True, False)
    assert p.model("m") == ModelRule(True, True) and p.model("other") == ModelRule(False, False)
    assert (p.approval_required, p.approvers) == (False, 2)
    assert (p.max_mia_auc_gap, p.max_accuracy_drop, p.max_mia_auc, p.approximate_method) == (0.1, 0.2, 0.6, "neggrad+")
    assert (p.max_premium, p.cpu_hour, p.gpu_hour) == (1.5, 1.0, 3.0)
    assert (p.purge_residuals, p.holds, p.trainers_allow) == (True, {"m": "litigation hold"}, ("mypkg",))


@pytest.mark.parametrize("doc", [
    {"categories": {"x": {"deadline_days": 1}}},
    {"approval": {"approvers": 1}},
    {"risk": {"max_premium": 1.0}},
    {"approximate": {"max_mia_auc": 0.0, "max_mia_auc_gap": 1.0, "max_accuracy_drop": 0}},
    {"costs": {"cpu_hour": 0.0}},
])
def test_each_limit_itself_is_accepted(doc):
    parse_policy(doc, "t")


@pytest.mark.parametrize("doc,needle", [
    ({"categories": {"x": {"deadline_days": 0}}}, "categories.x.deadline_days must be positive"),
    ({"categories": {"x": {"deadline_days": 1.5}}}, "categories.x.deadline_days: expected int"),
    ({"categories": {"x": {"deadline_days": True}}}, "expected int, got True"),
    ({"categories": {"x": {"check": "vibes"}}}, "categories.x.check: 'vibes' is not one of mia, mia_retrained"),
    ({"approval": {"approvers": 0}}, "approval.approvers must be at least 1"),
    ({"risk": {"max_premium": 0.999}}, "risk.max_premium must be a finite number ≥ 1"),
    ({"risk": {"max_premium": float("inf")}}, "risk.max_premium must be a finite number ≥ 1"),
    ({"approximate": {"max_mia_auc": -0.01}}, "approximate.max_mia_auc must be between 0 and 1"),
    ({"approximate": {"max_accuracy_drop": 1.01}}, "approximate.max_accuracy_drop must be between 0 and 1"),
    ({"approximate": {"method": "sgd"}}, "approximate.method: 'sgd' is not one of scrub, neggrad+"),
    ({"models": {"m": {"never_retire": 1}}}, "models.m.never_retire: expected bool, got 1"),
    ({"models": {"m": {"retire": True}}}, "models.m: unknown key"),
    ({"allow_retire": "yes"}, "allow_retire: expected bool"),
    ({"default_category": 3}, "default_category: expected str"),
    ({"approval": {"required": 1}}, "approval.required: expected bool"),
    ({"residuals": {"purge": "now"}}, "residuals.purge: expected bool"),
    ({"residuals": {"hold": {"m": 1}}}, "residuals.hold.m: expected str"),
    ({"trainers": {"allow": "mypkg"}}, "trainers.allow: expected list"),
    ({"risk": {"premium": 2}}, "risk: unknown key"),
    ({"costs": {"tpu_hour": 2}}, "costs: unknown key"),
])
def test_one_step_past_each_limit_is_refused(doc, needle):
    with pytest.raises(BadInput, match=needle.replace("(", r"\(").replace("+", r"\+")):
        parse_policy(doc, "t")


def test_a_category_named_as_the_default_keeps_its_own_rule():
    p = parse_policy({"default_category": "x", "categories": {"x": {"deadline_days": 3}}}, "t")
    assert p.categories == {"x": CategoryRule("exact", 3, "mia")}
    assert p.category("x").deadline_days == 3
    with pytest.raises(BadInput, match="unknown data category 'y'; the policy knows x"):
        p.category("y")


def test_setting_the_store_policy_logs_the_one_it_replaces(store, tmp_path):
    from expunge import audit
    from expunge.orchestrator.policy import default_policy_text, set_store_policy, store_policy_sha

    first, second = tmp_path / "a.toml", tmp_path / "b.toml"
    first.write_text(default_policy_text())
    second.write_text(default_policy_text().replace("approvers = 1 ", "approvers = 2 "))
    a = set_store_policy(store, first).sha256()
    b = set_store_policy(store, second).sha256()
    assert a != b and store_policy_sha(store) == b
    logged = [(e["payload"]["policy_sha256"], e["payload"]["previous"]) for e in audit.events(store, kind="policy_set")]
    assert logged == [(a, None), (b, a)]


@pytest.mark.parametrize("doc,message", [
    ({"approval": {"require": True}}, "policy approval: unknown key(s) require"),
    ({"risk": {"max_premium": "2"}}, "policy risk.max_premium: expected float, got '2'"),
    ({"approval": {"approvers": 1.0}}, "policy approval.approvers: expected int, got 1.0"),
    ({"trainers": {"allow": ["my pkg"]}}, "policy trainers.allow: 'my pkg' is not a module path such as mypkg.train"),
])
def test_a_bad_setting_is_refused_naming_where_it_is(doc, message):
    with pytest.raises(BadInput) as err:
        parse_policy(doc, "bad")
    assert str(err.value) == message
