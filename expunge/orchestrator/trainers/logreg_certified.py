"""Reference trainer: L2-regularised logistic regression with objective perturbation, ready for
certified removal (Guo, Goldstein, Hannun, van der Maaten, ICML 2020).

Trains w* = argmin_w  Σ_i ℓ(wᵀx_i, y_i) + (λn/2)‖w‖² + bᵀw,  b ~ N(0, σ²I),
with ℓ the logistic loss, y ∈ {−1, +1} and each x scaled to ‖x‖ ≤ 1 (the bounds need it).
A later Newton-step removal w⁻ = w* + H⁻¹Δ is (ε, δ)-certified while the accumulated
gradient-residual norm stays within the removal budget ε' = σε/c, c = √(2 log(1.5/δ))
(their Theorem 3); the run records λ, σ, ε, δ, c, the budget and the noise seed so that the
removal can be computed and certified later, plus λ_min(H(w*)), λ_max(XᵀX) and ‖w*‖, from which the
planner bounds a removal's budget use without the data (`costs.certified_residual_bound`).
`newton_removal` performs the removal and returns each step's data-dependent bound;
`removal_need` computes their sum for a run and a set of records (what the planner asks when the
recorded bound is too loose).

Config: the MLP's data keys (features, row_col, feature_cols, label_col) plus lam (λ, default
1e-3), sigma (σ, default 1.0), epsilon (default 1.0), delta (default 1e-4), max_iter (100).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from expunge.errors import BadInput
from expunge.orchestrator.trainers import TrainRequest, mlp

ENTRY_POINT = "expunge.orchestrator.trainers.logreg_certified:train"
FAMILY = "logreg-certified"


def design(ds) -> tuple[torch.Tensor, torch.Tensor]:
    """(X with rows scaled into the unit ball and a bias column, y in {−1, +1}) in float64."""
    x = ds.x.double()
    x = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    norms = x.norm(dim=1, keepdim=True).clamp_min(1.0)
    return x / norms, ds.y.double() * 2 - 1


def noise(seed: int, dim: int, sigma: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(dim, generator=g, dtype=torch.float64) * sigma


def objective(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lam: float, b: torch.Tensor) -> torch.Tensor:
    n = len(y)
    return torch.nn.functional.softplus(-y * (x @ w)).sum() + lam * n / 2 * (w @ w) + b @ w


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


def train(req: TrainRequest) -> dict:
    c = dict(req.config)
    cert = certificate(c)
    ds = mlp.dataset(req)
    x, y = design(ds)
    b = noise(req.seed, x.shape[1], cert["sigma"])
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=int(c.get("max_iter", 100)), tolerance_grad=1e-12,
                            tolerance_change=1e-15, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = objective(w, x, y, cert["lam"], b)
        loss.backward()
        return loss

    others = [i for i in req.inputs if i.get("role", "train") != "train"]
    with req.tracker(inputs=[req.input_manifest(ds)] + others, extra={"certified_removal": cert}) as tr:
        tr.consumed(ds.row_ids)  # full-batch: every row is in the first step
        opt.step(closure)
        tr.step = 1
        grad = torch.autograd.grad(objective(w, x, y, cert["lam"], b), w)[0]
        # The optimiser's own residual counts against the budget like a removal's.
        cert.update(removal_facts(w.detach(), x, y, cert["lam"]), train_grad_norm=float(grad.norm()))
        tr.final_model(_Weights(w.detach()), req.model_name, stage=req.stage, parents=req.parents,
                       certificate=cert, noise_seed=req.seed, grad_norm=float(grad.norm()))
    return tr.result


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


def removal_need(store, run: str, model_path, exclude_records, max_work: float = 2e8) -> float | None:
    """Budget that removing `exclude_records` from `run`'s model would use (the sum of
    `newton_removal`'s bounds), computed on the run's training data; None when that work
    (k steps of n·d²) exceeds `max_work` or the data is not at hand."""
    from expunge.orchestrator.rerun import recorded_request

    rec = recorded_request(store, run)
    req = TrainRequest(store=store, run_name=run, inputs=rec["inputs"], config=rec["config"], seed=rec["seed"],
                       out_dir=Path("."), trainer=rec["trainer"], model_name=rec["model_name"])
    try:
        full = mlp.dataset(req)
        req.exclude_records = np.asarray(exclude_records, np.uint32)
        kept = set(mlp.dataset(req).row_ids)
    except (OSError, BadInput):
        return None
    remove = [i for i, rid in enumerate(full.row_ids) if rid not in kept]
    x, y = design(full)
    if len(remove) * len(y) * x.shape[1] ** 2 > max_work:
        return None
    from expunge.lineage.torch import load_artifact

    w = load_artifact(model_path, None, store=store)["model"]["w"].double()
    cert = certificate(rec["config"])
    return float(sum(newton_removal(x, y, w, cert["lam"], remove)[1]))


class _Weights(torch.nn.Module):
    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = torch.nn.Parameter(w.clone())


def predict(weights: torch.Tensor, x: np.ndarray | torch.Tensor) -> torch.Tensor:
    xs = torch.as_tensor(x, dtype=torch.float64)
    xs = torch.cat([xs, torch.ones(len(xs), 1, dtype=torch.float64)], dim=1)
    xs = xs / xs.norm(dim=1, keepdim=True).clamp_min(1.0)
    return (xs @ weights > 0).long()
