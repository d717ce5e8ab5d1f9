"""Approximate unlearning of any torch classifier: NegGrad+ and SCRUB (Kurmanji et al., "Towards Unbounded Machine
Unlearning", NeurIPS 2023) — a few epochs over the forget set and a sample of retained rows instead of a retrain.
No guarantee: the result must pass the membership-inference and accuracy check (`expunge.orchestrator.mia`).

Both functions edit `model` in place (deep-copy it first to keep the original) and return a report. They are
deterministic on CPU given the same model, data and seeded `torch.Generator`: it draws every batch order, and a
stream forked from it seeds dropout (the caller's global RNG is left as it was).
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from expunge.errors import BadInput
from expunge.orchestrator.actions import ApproximateUnlearning
from expunge.orchestrator.mia import as_tensors, mean_loss, to_model
from expunge.orchestrator.sgd import SGD

# Retained rows sampled per forgotten row: what the planner prices (`ApproximateUnlearning.RETAIN_SAMPLE`).
RETAIN_PER_FORGET = ApproximateUnlearning.RETAIN_SAMPLE


def retain_sample(n_retain: int, n_forget: int, generator: torch.Generator,
                  per_forget: int = RETAIN_PER_FORGET) -> torch.Tensor:
    """Indices of the retained rows to unlearn with: `per_forget` per forgotten row, drawn without replacement,
    all of them when there are fewer — the sample the planner's estimate assumes."""
    k = min(n_retain, per_forget * max(n_forget, 1))
    return torch.randperm(n_retain, generator=generator)[:k].sort().values


class EnsembleLogits(nn.Module):
    """An ensemble of logit-output members (e.g. `sisa.SisaEnsemble.members`) as one classifier whose logits are
    the log of the members' mean probability, so unlearning it updates every member in place. A vote-aggregated
    ensemble is unlearned through its mean probabilities too: a vote has no gradient."""

    def __init__(self, members: Any):
        super().__init__()
        self.members = members.members if hasattr(members, "members") else nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logp = torch.stack([torch.log_softmax(m(x), dim=-1) for m in self.members])
        return torch.logsumexp(logp, dim=0) - math.log(len(self.members))


def _prepare(forget: Any, retain: Any, batch_size: int, what: str):
    xf, yf = as_tensors(forget, "forget set")
    xr, yr = as_tensors(retain, "retain set")
    if xf.shape[0] == 0:
        raise BadInput(f"{what}: the forget set is empty: there is nothing to unlearn")
    if xr.shape[0] == 0:
        raise BadInput(f"{what}: the retain set is empty: it needs retained rows to keep the model's utility")
    if xf.shape[1:] != xr.shape[1:]:
        raise BadInput(f"{what}: forget rows have shape {tuple(xf.shape[1:])}, retain rows {tuple(xr.shape[1:])}")
    if batch_size < 1:
        raise BadInput(f"{what}: batch_size must be ≥ 1, got {batch_size}")
    return xf, yf, xr, yr


def _generator(generator: torch.Generator | None) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0)


@contextlib.contextmanager
def _seeded_global_rng(model: nn.Module, generator: torch.Generator):
    """Dropout and other layers draw from torch's global RNG: seed it from `generator` for the duration, and give
    the caller's state back afterwards."""
    p = next(model.parameters(), None)
    cuda = p is not None and p.device.type == "cuda"
    with torch.random.fork_rng(devices=[p.device] if cuda else []):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        yield


class _Batches:
    """An endless stream of index batches over `n` rows, a fresh permutation for each pass."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator):
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.queue: list[torch.Tensor] = []

    def next(self) -> torch.Tensor:
        if not self.queue:
            self.queue = list(torch.randperm(self.n, generator=self.generator).split(self.batch_size))
        return self.queue.pop(0)


def _kl_teacher_student(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float):
    """KL(teacher ‖ student) of the temperature-softened distributions, × T² so gradients keep their scale
    across temperatures (Hinton et al., 2015), averaged over the batch."""
    t = temperature
    return F.kl_div(torch.log_softmax(student_logits / t, dim=-1), torch.log_softmax(teacher_logits / t, dim=-1),
                    reduction="batchmean", log_target=True) * t * t


class _Run:
    """The bookkeeping both methods share: losses before and after, wall and CPU seconds, the model's mode."""

    def __init__(self, method: str, model: nn.Module, forget, retain):
        self.method, self.model, self.forget, self.retain = method, model, forget, retain
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        self.was_training = model.training
        self.before = (mean_loss(model, forget), mean_loss(model, retain))

    def report(self, **extra) -> dict:
        self.model.train(self.was_training)
        after = (mean_loss(self.model, self.forget), mean_loss(self.model, self.retain))
        return {
            "method": self.method, **extra,
            "forget_rows": int(self.forget[0].shape[0]), "retain_rows": int(self.retain[0].shape[0]),
            "forget_loss_before": self.before[0], "forget_loss_after": after[0],
            "retain_loss_before": self.before[1], "retain_loss_after": after[1],
            "wall_seconds": time.perf_counter() - self.wall0, "cpu_seconds": time.process_time() - self.cpu0,
        }


def neggrad_plus(model: nn.Module, forget: Any, retain: Any, *, epochs: int = 5, lr: float = 0.02,
                 alpha: float = 0.9, batch_size: int = 64, momentum: float = 0.9,
                 generator: torch.Generator | None = None) -> dict:
    """NegGrad+: fine-tune on the retain set while ascending the loss on the forget set, minimising
    α·L_retain − (1−α)·L_forget per step (SGD). Each step takes one retain batch and the next forget batch
    (the forget set is cycled, reshuffled every pass); an epoch is one pass over the retain set.

    The ascent is unbounded: on rows the model never memorised it overshoots (their loss ends above a
    retrained model's) and costs accuracy, more so with more epochs or a larger step; the defaults, tuned on
    the reference MLP, keep the test-accuracy cost under 2 points there (bench/bench_approximate.py).

    Edits `model` in place; returns the report: epochs, steps, rows, forget/retain mean loss before and after,
    wall and CPU seconds (of the whole call, loss evaluation included).
    """
    xf, yf, xr, yr = _prepare(forget, retain, batch_size, "NegGrad+")
    if not 0.0 <= alpha <= 1.0:
        raise BadInput(f"NegGrad+: alpha must be in [0, 1], got {alpha}")
    gen = _generator(generator)
    run = _Run("neggrad_plus", model, (xf, yf), (xr, yr))
    opt = SGD(model.parameters(), lr=lr, momentum=momentum)
    forget_batches = _Batches(len(xf), min(batch_size, len(xf)), gen)
    steps = 0
    with _seeded_global_rng(model, gen):
        model.train()
        for _ in range(epochs):
            for idx in torch.randperm(len(xr), generator=gen).split(batch_size):
                fidx = forget_batches.next()
                retain_loss = F.cross_entropy(model(to_model(model, xr[idx])), to_model(model, yr[idx]))
                forget_loss = F.cross_entropy(model(to_model(model, xf[fidx])), to_model(model, yf[fidx]))
                loss = alpha * retain_loss - (1.0 - alpha) * forget_loss
                opt.zero_grad()
                loss.backward()
                opt.step()
                steps += 1
    return run.report(epochs=epochs, steps=steps)


def scrub(model: nn.Module, forget: Any, retain: Any, *, max_steps: int = 3, steps: int = 5, lr: float = 0.05,
          alpha: float = 1.0, gamma: float = 0.5, temperature: float = 2.0, batch_size: int = 64,
          forget_batch_size: int | None = 8, momentum: float = 0.9,
          generator: torch.Generator | None = None) -> dict:
    """SCRUB: the model becomes a student of its own frozen copy (the teacher). Each of `steps` epochs is a
    max-pass over the forget set that pushes the student away from the teacher (maximise KL(teacher ‖ student),
    batches of `forget_batch_size`), done in the first `max_steps` epochs only, then a min-pass over the retain
    set that keeps it close and accurate (minimise α·KL(teacher ‖ student) + γ·cross-entropy, batches of
    `batch_size`); KL at `temperature`, SGD throughout.

    The teacher is frozen and in eval mode, so its logits are computed once up front (no second model in
    memory). The student starts equal to the teacher, where the KL's gradient is zero: the first max-pass moves
    nothing (unless dropout or batch norm set them apart); the min-pass separates them and later max-passes
    widen the gap on the forget set — why `max_steps` ≥ 2 matters.

    Defaults: tuned on the reference MLP (bench/bench_approximate.py, tests/test_approximate.py), not the
    paper's image models. With only `RETAIN_PER_FORGET` retained rows per erased row, few large retain batches
    and a KL weight above the cross-entropy's hold accuracy (α=0.5, γ=1 on 16-row retain batches, at the same
    step size, cost 7 points of test accuracy there); small forget batches give the max-pass enough steps.

    Edits `model` in place; returns the report: epochs, max epochs, forget and retain steps, rows, losses
    before and after, wall and CPU seconds.
    """
    xf, yf, xr, yr = _prepare(forget, retain, batch_size, "SCRUB")
    if steps < 1 or max_steps < 0:
        raise BadInput(f"SCRUB: needs steps ≥ 1 and max_steps ≥ 0, got steps={steps}, max_steps={max_steps}")
    if temperature <= 0:
        raise BadInput(f"SCRUB: temperature must be > 0, got {temperature}")
    forget_batch_size = batch_size if forget_batch_size is None else forget_batch_size
    if forget_batch_size < 1:
        raise BadInput(f"SCRUB: forget_batch_size must be ≥ 1, got {forget_batch_size}")
    gen = _generator(generator)
    run = _Run("scrub", model, (xf, yf), (xr, yr))
    teacher_f, teacher_r = _logits(model, xf), _logits(model, xr)
    opt = SGD(model.parameters(), lr=lr, momentum=momentum)
    forget_steps = retain_steps = 0
    with _seeded_global_rng(model, gen):
        model.train()
        for epoch in range(steps):
            if epoch < max_steps:
                for idx in torch.randperm(len(xf), generator=gen).split(forget_batch_size):
                    loss = -_kl_teacher_student(model(to_model(model, xf[idx])), teacher_f[idx], temperature)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    forget_steps += 1
            for idx in torch.randperm(len(xr), generator=gen).split(batch_size):
                out = model(to_model(model, xr[idx]))
                loss = (alpha * _kl_teacher_student(out, teacher_r[idx], temperature)
                        + gamma * F.cross_entropy(out, to_model(model, yr[idx])))
                opt.zero_grad()
                loss.backward()
                opt.step()
                retain_steps += 1
    return run.report(epochs=steps, max_epochs=min(max_steps, steps), forget_steps=forget_steps,
                      retain_steps=retain_steps, steps=forget_steps + retain_steps)


def _logits(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """The model's outputs in eval mode, without gradients (the frozen teacher's)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.cat([model(to_model(model, x[lo:lo + batch_size])) for lo in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)
