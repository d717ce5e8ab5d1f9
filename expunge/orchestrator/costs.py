"""Cost estimates of unlearning actions: pure functions of recorded run costs and lineage facts.

Each returns an `Estimate` (compute seconds, and the reasons in words). Work inside a run is
measured in optimizer steps: a stage that took k of the run's N recorded steps is priced at k/N
of the run's recorded seconds; a run re-done is priced on the records that remain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def format_seconds(x: float) -> str:
    """A duration for people: 84 ms, 12.3 s, 2.50 h."""
    if x < 0.001:
        return f"{x * 1e6:,.0f} µs" if x > 0 else "0 s"
    if x < 1:
        return f"{x * 1000:,.3g} ms"
    return f"{x:,.1f} s" if x < 3600 else f"{x / 3600:,.2f} h"


@dataclass(frozen=True)
class Estimate:
    seconds: float
    reasons: list[str] = field(default_factory=list)

    def dollars(self, rate_per_hour: float) -> float:
        return self.seconds / 3600.0 * rate_per_hour


def _setup(setup: float) -> str:
    return f" + {format_seconds(setup)} loading its data" if setup > 0 else ""


def full_retrain(run_seconds: float, n_records: int, n_removed: int, setup: float = 0.0) -> Estimate:
    """Retrain from scratch on what remains: loading the data, then the run's cost × the remaining fraction."""
    if n_records <= 0:
        return Estimate(setup + run_seconds, ["no record count: the whole run" + _setup(setup)])
    frac = max(n_records - n_removed, 0) / n_records
    return Estimate(setup + run_seconds * frac,
                    [f"run took {format_seconds(run_seconds)} on {n_records:,} records; {frac:.1%} remain"
                     + _setup(setup)])


@dataclass(frozen=True)
class RunCost:
    """One recorded run to do again: its name, measured seconds, training records, erased ones among them."""

    run: str
    seconds: float
    records: int
    removed: int = 0
    setup: float = 0.0      # loading its data before training


def rerun_runs(runs: list[RunCost], what: str) -> Estimate:
    """Re-run several runs in a row, each priced as its own full retrain on the records that remain.

    The same run re-done costs the same whichever action does it: a chain retrained from scratch, the
    runs after a clean ancestor, or a model re-derived from its parent's unlearned version.
    """
    parts = [full_retrain(r.seconds, r.records, r.removed, r.setup) for r in runs]
    total = sum(p.seconds for p in parts)
    if len(runs) == 1:
        return Estimate(total, [f"{what}: {runs[0].run}; " + parts[0].reasons[0]])
    each = "; ".join(f"{r.run} {format_seconds(p.seconds)}" + (f" (−{r.removed:,} of {r.records:,} records)" if r.removed else "")
                     for r, p in zip(runs, parts))
    return Estimate(total, [f"{what}: {len(runs)} runs, {format_seconds(total)}: {each}"])


def sisa_shards(run_seconds: float, stage_steps: dict[tuple[int, int], int], affected: dict[int, int],
                setup: float = 0.0, read: float | None = None, shard_read: float | None = None,
                write: float | None = None) -> Estimate:
    """Retrain each affected shard from its first affected slice.

    `stage_steps[(shard, slice)]` is the number of optimizer steps of that stage (from the slice
    checkpoints), `affected[shard]` the first slice holding erased records. `setup` is what the run paid
    besides training (loading its data, recording it); a retrain loads and records only the affected
    shards' rows, so with `read` (the part of `setup` spent reading the data files, whole whatever share of
    the rows is kept, as the run measured it) the rest is scaled by the affected shards' share of the
    training steps. Without `read`, all of `setup` is paid again. With `shard_read` too (what loading one
    shard's rows took the trainer, measured once the data had been read: the run's own first read of the files
    is often slower), a retrain's loading is priced at that instead of `read`. `write` (the catalog write's own
    seconds, within `setup`) is paid whole: committing a write costs the same whatever share of rows it records.
    """
    total = sum(stage_steps.values())
    if total <= 0:
        raise ValueError("no stage steps recorded")
    steps = sum(n for (s, r), n in stage_steps.items() if s in affected and r >= affected[s])
    shards = ", ".join(f"{s} from slice {r}" for s, r in sorted(affected.items()))
    how = _setup(setup)
    if read is not None and setup > 0:
        read = min(max(read, 0.0), setup)
        share = sum(n for (s, _), n in stage_steps.items() if s in affected) / total
        load = read if shard_read is None else max(shard_read, 0.0)
        fixed = min(max(write or 0.0, 0.0), setup - read)
        setup = load + (setup - read - fixed) * share + fixed
        how = (f" + {format_seconds(setup)} loading and recording its shard(s)' rows ({format_seconds(load)} "
               + ("reading the data files" if shard_read is None else "loading a shard's rows")
               + (f", {format_seconds(fixed)} committing the write" if fixed > 0 else "")
               + f", the rest {share:.1%} of the run's)")
    return Estimate(setup + run_seconds * steps / total,
                    [f"shard(s) {shards}: {steps:,} of {total:,} steps of a {format_seconds(run_seconds)} run" + how])


def checkpoint_replay(run_seconds: float, total_steps: int, clean_step: int, setup: float = 0.0) -> Estimate:
    """Resume from the last checkpoint before the records were first consumed, to the run's last step.

    `total_steps` is the run's own recorded length, never the last checkpoint's step: steps after the
    last checkpoint are replayed too.
    """
    if total_steps <= 0:
        raise ValueError("no steps recorded")
    if not 0 <= clean_step <= total_steps:
        raise ValueError(f"checkpoint step {clean_step} outside the run's {total_steps} steps")
    frac = (total_steps - clean_step) / total_steps
    return Estimate(setup + run_seconds * frac,
                    [f"replay from step {clean_step:,} of {total_steps:,}: {frac:.0%} of a {format_seconds(run_seconds)} run"
                     + _setup(setup)])


def certified_removal(run_seconds: float, n_retained: int, dim: int, iterations: int, steps: int = 1,
                      setup: float = 0.0, state: float | None = None) -> Estimate:
    """One Newton step per removed row: the Hessian on the retained data (n·d² work) and a d×d solve each,
    after loading the data; then the new weights' Hessian, saved with them.

    With `state` (what the trainer measured computing a Hessian and XᵀX on its rows: two n·d² products), each
    step and the new Hessian cost half of that. Without it, calibrated on the run: full-batch training did
    `iterations` gradient passes (n·d each).
    """
    steps = max(steps, 1)
    if state is not None:
        seconds = setup + (steps + 1) * state / 2
        return Estimate(seconds, [f"{steps} Newton step(s) on {n_retained:,} retained rows × {dim} features and the "
                                  f"new weights' Hessian, each half what a Hessian and XᵀX took at training "
                                  f"({format_seconds(state)})" + _setup(setup)])
    iterations = max(iterations, 1)
    per_pass = run_seconds / iterations  # one n·d pass
    seconds = setup + steps * (per_pass * dim + per_pass * dim * dim / max(n_retained, 1))
    return Estimate(seconds, [f"{steps} Newton step(s), each a Hessian on {n_retained:,} retained rows × {dim} "
                              f"features (≈ {dim} gradient passes of a {iterations}-pass run)" + _setup(setup)])


# Saving the new weights and recording the new model version, whose run is its parent's rows minus some records
# (bitmaps, no row ids): measured 16-26 ms, median 19 ms, on the 200k-row benchmark (bench/bench_unlearn.py and
# bench/bench_certified_floor.py, the certified removal's `record_seconds`). Looking its run up and loading the
# parent's weights are the action's bookkeeping, priced from the store's history (planner.bookkeeping).
NEW_VERSION_SECONDS = 0.02

# An action's bookkeeping (looking its model and run up, loading weights, recording: its `bookkeeping_seconds`)
# before the store has done any action to measure it on: 11-17 ms for a certified removal, 16-26 ms for a
# retrain on the 200k-row benchmark. Priced at nothing, the first certified removal on a store was under-estimated
# by a third.
BOOKKEEPING_PRIOR = 0.015


def certified_batch(read_seconds: float, steps: int, dim: int, record: float | None = None) -> Estimate:
    """One batch Newton step from the Hessian saved with the weights: find the removed rows in the features
    table (what the trainer measured it takes on this data), a d×d solve, record the new version: from
    ordinals, never dearer than recording the original run was (`record`), and about NEW_VERSION_SECONDS."""
    rec = NEW_VERSION_SECONDS if not record else min(record, NEW_VERSION_SECONDS)
    seconds = read_seconds + rec + 1e-6 * max(steps, 1) * dim * dim
    return Estimate(seconds, [f"one Newton step for {max(steps, 1)} row(s) from the Hessian saved with the weights "
                              f"(finding the rows: {read_seconds:.3g}s as measured at training; recording the new "
                              f"version ≈ {rec:.2g}s)"])


def certified_residual_bound(k: int, *, lam: float, n: int, mu: float, spec_sq: float, w_norm: float,
                             gamma: float = 0.25, curvature: float = 0.25, limit: float = math.inf) -> float:
    """Upper bound on the gradient residual that removing k records one by one with Newton steps adds.

    Guo et al. (ICML 2020), Corollary 1, per step: ‖∇L'(w⁻)‖ ≤ γ‖X'‖·‖H'⁻¹Δ‖·‖X'H'⁻¹Δ‖ ≤ γ s ‖H'⁻¹Δ‖²,
    bounded before the data is at hand from what training recorded: s = λ_max(XᵀX) ≥ ‖X'‖²,
    μ = λ_min(H(w*)), ‖w*‖. With ‖x‖ ≤ 1 and |ℓ'| ≤ 1: ‖Δ_i‖ ≤ 1 + λ‖w_{i−1}‖; removing a record lowers
    λ_min by at most ℓ''_max + λ (Weyl), and moving w by D lowers it by at most γ s D (ℓ'' is γ-Lipschitz),
    so ‖H_i⁻¹Δ_i‖ ≤ (1 + λ‖w_{i−1}‖) / (μ − i(ℓ''_max + λ) − γ s D_{i−1}). Residuals add up across steps.
    Infinite when the curvature bound runs out (or k reaches n), or once the sum passes `limit`.
    """
    if k <= 0:
        return 0.0
    if k >= n:
        return math.inf
    total, drift = 0.0, 0.0
    for i in range(1, k + 1):
        mu_i = mu - i * (curvature + lam) - gamma * spec_sq * drift
        if mu_i <= 0:
            return math.inf
        step = (1 + lam * (w_norm + drift)) / mu_i
        total += gamma * spec_sq * step * step
        if total > limit:
            return math.inf
        drift += step
    return total


def _per_record_epoch(run_seconds: float, epochs: int, n_records: int) -> float:
    """Seconds one training pass (forward + backward + update) over one record took in the run."""
    return run_seconds / (max(epochs, 1) * max(n_records, 1))


# The settings expunge runs NegGrad+ and SCRUB with (expunge.orchestrator.approximate's defaults).
SCRUB = {"max_steps": 3, "steps": 5, "forget_batch": 8, "batch": 64}
NEGGRAD = {"epochs": 5, "batch": 64}
# A SCRUB step computes the tempered KL divergence to the teacher's logits besides (or instead of) the loss:
# on a small model, where each operation's overhead dominates, it costs 1.4-2.0× a training step (measured on
# the reference MLP, bench/bench_approximate.py at 200k rows: 2.0 on a quiet machine, 1.36 under load 3, where
# the long training run is slowed more than the short unlearning).
SCRUB_STEP = 1.7


def unlearning_steps(method: str, n_forget: int, n_retain: int) -> int:
    """Optimizer steps NegGrad+ or SCRUB take on these many forget and retained rows. A NegGrad+ step also
    runs a forget batch: counted as two."""
    ceil = lambda n, b: -(-max(n, 0) // b)  # noqa: E731
    if method == "neggrad+":
        return 2 * NEGGRAD["epochs"] * ceil(n_retain, NEGGRAD["batch"])
    return SCRUB["max_steps"] * ceil(n_forget, SCRUB["forget_batch"]) + SCRUB["steps"] * ceil(n_retain, SCRUB["batch"])


def approximate(run_seconds: float, epochs: int, n_records: int, n_forget: int, retain_sample: int,
                setup: float = 0.0, total_steps: int | None = None, method: str = "scrub",
                members: int = 1) -> Estimate:
    """NegGrad+ or SCRUB on the forget rows and a sample of retained rows, after loading the data.

    Their batches are small, so a step costs about what a training step cost (seconds / the run's steps: the
    per-step overhead dominates a small model); without the run's step count, per row of a training epoch.
    An ensemble whose `members` each trained alone (SISA: each of its steps trained one member) is unlearned
    whole, every member in every step: a step costs `members` training steps.
    """
    steps = unlearning_steps(method, n_forget, retain_sample)
    per = (SCRUB_STEP if method != "neggrad+" else 1.0) * max(members, 1)
    if total_steps:
        work = run_seconds / total_steps * steps * per
        how = (f"{steps:,} step(s) at {format_seconds(run_seconds / total_steps)} a training step"
               + (f", each {per:g}× one" + " (" + ", ".join(
                   ([f"all {members} members"] if members > 1 else [])
                   + (["the KL to the teacher"] if method != "neggrad+" else [])) + ")" if per != 1.0 else ""))
    else:
        work = _per_record_epoch(run_seconds, epochs, n_records) * (n_forget + retain_sample) * max(epochs, 1) \
            * max(members, 1)
        how = "priced per row (the run's steps were not recorded)" + (f", all {members} members" if members > 1 else "")
    return Estimate(setup + work, [f"{method} on {n_forget:,} forget + {retain_sample:,} retained rows: {how}"
                                   + _setup(setup)])


# A forward pass is about a third of a training step (forward + backward ≈ 3 forwards).
FORWARD_SHARE = 1 / 3
# Sample sizes of the membership-inference and accuracy checks (the verifier draws the same).
CHECK_MIN_NONMEMBERS = 200
CHECK_TEST_SAMPLE = 1000


def mia_check(run_seconds: float, epochs: int, n_rows: int, n_forget: int, members: int = 1,
              setup: float = 0.0) -> Estimate:
    """Membership inference of the forget set against held-out non-members, and accuracy on a test sample:
    forward passes of the model before and after unlearning over forget ∪ non-members ∪ test rows.

    A training step over a row is priced from the run (seconds / (epochs × rows)); for an ensemble whose
    `members` each trained on a share of the rows (SISA), a prediction runs every member.
    """
    nonmembers = max(n_forget, CHECK_MIN_NONMEMBERS)
    test = min(max(n_rows, 1), CHECK_TEST_SAMPLE)
    per = _per_record_epoch(run_seconds, epochs, n_rows) * FORWARD_SHARE * max(members, 1)
    seconds = 2 * per * (n_forget + nonmembers + test)
    who = f" of all {members} members" if members > 1 else ""
    return Estimate(setup + seconds, [f"membership inference ({n_forget:,} forget vs {nonmembers:,} non-members) and "
                                      f"accuracy on {test:,} test rows, before and after{who}: "
                                      f"{format_seconds(seconds)} of inference" + _setup(setup)])


def retire() -> Estimate:
    return Estimate(0.0, ["no compute; the model is withdrawn (its utility is lost)"])


def no_action() -> Estimate:
    return Estimate(0.0, ["the records never reached training"])
