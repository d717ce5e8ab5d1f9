"""Reference trainer: L2-regularised logistic regression with objective perturbation, ready for
certified removal (Guo, Goldstein, Hannun, van der Maaten, ICML 2020).

Trains w* = argmin_w  Σ_i ℓ(wᵀx_i, y_i) + (λn/2)‖w‖² + bᵀw,  b ~ N(0, σ²I),
with ℓ the logistic loss, y ∈ {−1, +1} and each x scaled to ‖x‖ ≤ 1 (the bounds need it).
A later Newton-step removal w⁻ = w* + H⁻¹Δ is (ε, δ)-certified while the accumulated
gradient-residual norm stays within the removal budget ε' = σε/c, c = √(2 log(1.5/δ))
(their Theorem 3); the run records λ, σ, ε, δ, c, the budget and the noise seed so that the
removal can be computed and certified later.

Config: the MLP's data keys (features, row_col, feature_cols, label_col) plus lam (λ, default
1e-3), sigma (σ, default 1.0), epsilon (default 1.0), delta (default 1e-4), max_iter (100).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from expunge.orchestrator.trainers import TrainRequest
from expunge.orchestrator.trainers import mlp

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
        tr.final_model(_Weights(w.detach()), req.model_name, stage=req.stage, parents=req.parents,
                       certificate=cert, noise_seed=req.seed, grad_norm=float(grad.norm()))
    return tr.result


class _Weights(torch.nn.Module):
    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = torch.nn.Parameter(w.clone())


def predict(weights: torch.Tensor, x: np.ndarray | torch.Tensor) -> torch.Tensor:
    xs = torch.as_tensor(x, dtype=torch.float64)
    xs = torch.cat([xs, torch.ones(len(xs), 1, dtype=torch.float64)], dim=1)
    xs = xs / xs.norm(dim=1, keepdim=True).clamp_min(1.0)
    return (xs @ weights > 0).long()
