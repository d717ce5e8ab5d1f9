"""Certified removal for the `logreg-certified` model family, computed by expunge's own code.

A run recorded with model family `logreg-certified` promises the reference trainer's model
(`trainers.logreg_certified`): L2-regularised logistic regression with objective perturbation
(Guo, Goldstein, Hannun, van der Maaten, ICML 2020), rows scaled into the unit ball with a bias
column, y ∈ {−1, +1}, the weights saved as `{"model": {"w": tensor}}`, and the config keys
features, row_col, feature_cols, label_col, lam, sigma, epsilon, delta. The planner prices a
removal here from those recorded facts and the data the config names; it never imports the
run's recorded trainer (a module the catalog names is code whoever wrote the catalog chose).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from expunge.errors import BadInput
from expunge.orchestrator.actions import CERTIFIED_FAMILY as FAMILY  # noqa: F401


def design(ds) -> tuple[torch.Tensor, torch.Tensor]:
    """(X with rows scaled into the unit ball and a bias column, y in {−1, +1}) in float64."""
    x = ds.x.double()
    x = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    norms = x.norm(dim=1, keepdim=True).clamp_min(1.0)
    return x / norms, ds.y.double() * 2 - 1


def certificate(c: dict) -> dict:
    eps, delta, sigma = float(c.get("epsilon", 1.0)), float(c.get("delta", 1e-4)), float(c.get("sigma", 1.0))
    cst = math.sqrt(2 * math.log(1.5 / delta))
    return {"lam": float(c.get("lam", 1e-3)), "sigma": sigma, "epsilon": eps, "delta": delta, "c": cst,
            "removal_budget": sigma * eps / cst, "gamma": 0.25, "loss": "logistic", "x_norm": "unit-ball rows"}


def removal_facts(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lam: float) -> dict:
    """What a planner needs to bound the cost of later removals before it has the data at hand
    (`expunge.orchestrator.costs.certified_residual_bound`): λ_min of the objective's Hessian at w*,
    λ_max(XᵀX) and ‖w*‖. d×d eigenvalue problems: negligible next to training."""
    with torch.no_grad():
        p = torch.sigmoid(y * (x @ w))
        h = x.T @ ((p * (1 - p))[:, None] * x) + lam * len(y) * torch.eye(x.shape[1], dtype=x.dtype)
        return {"n": len(y), "hessian_min_eig": float(torch.linalg.eigvalsh(h)[0]),
                "x_spectral_sq": float(torch.linalg.eigvalsh(x.T @ x)[-1]), "w_norm": float(w.norm())}


def newton_removal(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, lam: float, remove: list[int],
                   gamma: float = 0.25) -> tuple[torch.Tensor, list[float]]:
    """Remove rows `remove` of (x, y) one at a time, each with a Newton step (Guo et al., Alg. 1).

    Returns the new weights and, per step, the data-dependent bound on the gradient residual it adds
    (their Corollary 1: γ‖X'‖₂·‖H'⁻¹Δ‖·‖X'H'⁻¹Δ‖, X' the rows still kept, H' the Hessian of their
    objective at the current weights, Δ = ∇ℓ(removed row) + λw). The bounds add up against the budget.
    """
    keep = torch.ones(len(y), dtype=torch.bool)
    w = w.clone()
    k_mat = x.T @ x
    eye = torch.eye(x.shape[1], dtype=x.dtype)
    bounds = []
    for r in remove:
        keep[r] = False
        k_mat = k_mat - torch.outer(x[r], x[r])
        xk, yk = x[keep], y[keep]
        p = torch.sigmoid(yk * (xk @ w))
        hess = xk.T @ ((p * (1 - p))[:, None] * xk) + lam * len(yk) * eye
        pr = torch.sigmoid(y[r] * (x[r] @ w))
        delta = x[r] * ((pr - 1) * y[r]) + lam * w
        step = torch.linalg.solve(hess, delta)
        spec = float(torch.linalg.eigvalsh(k_mat)[-1].clamp_min(0).sqrt())
        bounds.append(gamma * spec * float(step.norm()) * float((xk @ step).norm()))
        w = w + step
    return w, bounds


def training_data(store, rec: dict, exclude_records=()):
    """The run's training rows (a `RecordDataset`) from its recorded inputs and the features file its
    config names, minus `exclude_records`: what the reference trainer read."""
    from expunge.lineage.torch import RecordDataset

    c = rec["config"]
    inp = next((i for i in rec["inputs"] if i.get("role", "train") == "train"), None)
    if inp is None:
        raise BadInput("the run has no train input")
    return RecordDataset(store, inp["dataset"], c["features"], row_col=c.get("row_col", "record_id"),
                         feature_cols=c["feature_cols"], label_col=c["label_col"], rows=inp.get("rows"),
                         exclude_records=exclude_records)


def removal_need(store, run: str, model_path, exclude_records, max_work: float = 2e8,
                 sha256: str | None = None) -> float | None:
    """Budget that removing `exclude_records` from `run`'s model would use (the sum of `newton_removal`'s
    bounds), computed on the run's training data; None when that work (k steps of n·d²) exceeds `max_work`
    or the data is not at hand. The weights are checked against their recorded sha256 (`sha256`, else the
    one the store recorded for `model_path`) before they are loaded."""
    from expunge.lineage.torch import load_artifact
    from expunge.orchestrator.rerun import recorded_request

    rec = recorded_request(store, run, need_trainer=False)
    try:
        full = training_data(store, rec)
        kept = set(training_data(store, rec, np.asarray(exclude_records, np.uint32)).row_ids)
    except (OSError, BadInput):
        return None
    remove = [i for i, rid in enumerate(full.row_ids) if rid not in kept]
    x, y = design(full)
    if len(remove) * len(y) * x.shape[1] ** 2 > max_work:
        return None
    w = load_artifact(model_path, sha256, store=store)["model"]["w"].double()
    return float(sum(newton_removal(x, y, w, certificate(rec["config"])["lam"], remove)[1]))
