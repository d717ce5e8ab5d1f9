"""Reference trainer: L2-regularised logistic regression with objective perturbation, ready for
certified removal (Guo, Goldstein, Hannun, van der Maaten, ICML 2020).

Trains w* = argmin_w  Σ_i ℓ(wᵀx_i, y_i) + (λn/2)‖w‖² + bᵀw,  b ~ N(0, σ²I),
with ℓ the logistic loss, y ∈ {−1, +1} and each x scaled to ‖x‖ ≤ 1 (the bounds need it).
A later Newton-step removal w⁻ = w* + H⁻¹Δ is (ε, δ)-certified while the accumulated
gradient-residual norm stays within the removal budget ε' = σε/c, c = √(2 log(1.5/δ))
(their Theorem 3); the run records λ, σ, ε, δ, c, the budget and the noise seed so that the
removal can be computed and certified later, plus λ_min(H(w*)), λ_max(XᵀX) and ‖w*‖, from which the
planner bounds a removal's budget use without the data (`costs.certified_residual_bound`).
The removal math (`design`, `certificate`, `removal_facts`, `newton_removal`, `removal_need`) lives
in `expunge.orchestrator.certified`, which the planner uses for the model family without importing
any trainer; the names stay importable from here.

Config: the MLP's data keys (features, row_col, feature_cols, label_col) plus lam (λ, default
1e-3), sigma (σ, default 1.0), epsilon (default 1.0), delta (default 1e-4), max_iter (100).
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch._dynamo  # noqa: F401  (L-BFGS's first use imports it, 1.5-2 s: paid here, not in the run's setup)

from expunge.orchestrator import certified
from expunge.orchestrator.certified import FAMILY, certificate, design, newton_removal, removal_facts  # noqa: F401
from expunge.orchestrator.trainers import TrainRequest, mlp

ENTRY_POINT = "expunge.orchestrator.trainers.logreg_certified:train"
TIMINGS = ("removal_read_seconds", "state_seconds")  # measured, in the run's record, not in the weights' file


def noise(seed: int, dim: int, sigma: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(dim, generator=g, dtype=torch.float64) * sigma


def objective(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lam: float, b: torch.Tensor) -> torch.Tensor:
    n = len(y)
    return torch.nn.functional.softplus(-y * (x @ w)).sum() + lam * n / 2 * (w @ w) + b @ w


def train(req: TrainRequest) -> dict:
    c = dict(req.config)
    cert = certificate(c)
    ds = mlp.dataset(req)
    x, y = design(ds)
    b = noise(req.seed, x.shape[1], cert["sigma"])
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=int(c.get("max_iter", 100)), tolerance_grad=1e-12,
                            tolerance_change=1e-15, line_search_fn="strong_wolfe")

    passes = 0

    def closure():
        nonlocal passes
        passes += 1
        opt.zero_grad()
        loss = objective(w, x, y, cert["lam"], b)
        loss.backward()
        return loss

    others = [i for i in req.inputs if i.get("role", "train") != "train"]
    extra = {"certified_removal": cert}
    t0 = time.perf_counter()
    with req.store.view() as view:
        one_per_record = view.resolve_version(ds.version)["row_space"] == "records"
    # The rows as trained on, by record: a later removal reads the removed ones alone (not the features file).
    rows = certified.save_removal_rows(req.out_dir, ds.first_ords, ds.x, ds.y) if one_per_record else None
    if rows:
        extra["removal_rows"] = rows
    # What finding a removed row costs on this data, for pricing a later batch removal (outside the run's
    # training seconds).
    cert["removal_read_seconds"] = certified.read_probe_seconds(req.store, ds.version, c)  # from the features file
    if rows:
        rows["find_seconds"] = round(certified.read_probe_seconds(req.store, ds.version, c, rows), 6)  # from the file
    req.setup_seconds += time.perf_counter() - t0  # before training, and a re-run pays it again
    with req.tracker(inputs=[req.input_manifest(ds)] + others, extra=extra).bind(ds) as tr:
        tr.consumed(torch.arange(len(ds)))  # full-batch: every row is in the first step
        opt.step(closure)
        tr.step = 1
        grad = torch.autograd.grad(objective(w, x, y, cert["lam"], b), w)[0]
        # The optimiser's own residual counts against the budget like a removal's.
        # The run's time also covers the final gradient and the Hessian of removal_facts (≈ d passes): count
        # them, so that seconds / passes is the price of one pass.
        cert.update(removal_facts(w.detach(), x, y, cert["lam"]), train_grad_norm=float(grad.norm()),
                    gradient_passes=passes + 1 + x.shape[1])
        t_state = time.perf_counter()
        state = certified.removal_state(w.detach(), x, y, cert["lam"])
        # A Hessian and XᵀX on the n rows: twice what one Newton step per row on the training data costs (a
        # Hessian), for pricing later removals from a version without a saved Hessian.
        cert["state_seconds"] = round(time.perf_counter() - t_state, 6)
        tr.final_model(_Weights(w.detach()), req.model_name, stage=req.stage, parents=req.parents,
                       certificate={k: v for k, v in cert.items() if k not in TIMINGS},  # bytes: no timing
                       noise_seed=req.seed, grad_norm=float(grad.norm()), removal_state=state)
    return tr.result


def removal_need(store, run: str, model_path, exclude_records, max_work: float = 2e8) -> float | None:
    """`expunge.orchestrator.certified.removal_need` (kept here for callers of the trainer module)."""
    return certified.removal_need(store, run, model_path, exclude_records, max_work)


class _Weights(torch.nn.Module):
    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = torch.nn.Parameter(w.clone())


def predict(weights: torch.Tensor, x: np.ndarray | torch.Tensor) -> torch.Tensor:
    xs = torch.as_tensor(x, dtype=torch.float64)
    xs = torch.cat([xs, torch.ones(len(xs), 1, dtype=torch.float64)], dim=1)
    xs = xs / xs.norm(dim=1, keepdim=True).clamp_min(1.0)
    return (xs @ weights > 0).long()
