"""The check a plan item must pass before its result counts, and what that check costs.

Exact actions are proved from lineage (the new model's training manifest and every ancestor's hold none of
the erased records): no compute. Certified removal carries its certificate (ε, δ and the gradient-residual
bound the Newton steps compute anyway). An approximate result must pass the membership-inference and
accuracy check the policy names for the request's category; `mia_retrained` compares with a reference
model retrained without the records, so that check costs a retrain.
"""

from __future__ import annotations

from expunge.orchestrator import costs
from expunge.orchestrator.actions import ACTIONS, ModelFacts
from expunge.orchestrator.policy import Policy


def plan_check(guarantee: str, f: ModelFacts, policy: Policy, kind: str) -> tuple[dict | None, str | None]:
    """The check for a result of `guarantee` on model `f` (`kind`: the policy's check for approximate
    results), as `(check, None)`; or `(None, why)` when the check cannot be done."""
    if guarantee == "exact":
        return {"kind": "lineage", "seconds": 0.0, "thresholds": {},
                "reasons": ["proof from lineage: the new model's runs hold none of the erased records"]}, None
    if guarantee == "certified":
        cert = f.certificate or {}
        thresholds = {k: cert[k] for k in ("epsilon", "delta") if k in cert}
        return {"kind": "certificate", "seconds": 0.0, "thresholds": thresholds,
                "reasons": ["the Newton steps' gradient-residual bound stays within the removal budget"]}, None
    # Approximate: what influenced the model is its own erased records and, for a derived model, those of
    # its ancestors' runs.
    n, own = f.rows()
    forget = own + sum(r.removed for r in f.ancestor_runs or [])
    # The check runs on the data the action already loaded: no second setup.
    est = costs.mia_check(f.run_seconds, f.epochs, n, max(forget, 1), members=f.shards)
    check = {"kind": kind, "seconds": est.seconds, "reasons": list(est.reasons),
             "thresholds": {"max_mia_auc": policy.max_mia_auc, "max_accuracy_drop": policy.max_accuracy_drop}}
    if kind == "mia_retrained":
        retrain = ACTIONS["full_retrain"]
        why = retrain.check(f, policy)
        if why is not None:
            return None, f"its check needs a retrained reference, and the model cannot be retrained: {why}"
        ref = retrain.estimate(f, policy)
        check["seconds"] += ref.seconds
        check["reasons"].append(f"a retrained reference model: {costs.format_seconds(ref.seconds)}")
        check["thresholds"] = {"max_mia_auc_gap": policy.max_mia_auc_gap,
                               "max_accuracy_drop": policy.max_accuracy_drop}
    return check, None
