"""The action catalogue: one class per unlearning action behind one interface.

An action says whether it applies to a model and these records (and if not, why), the guarantee
it gives, and its estimated cost with reasons. Execution and verification come with the
executor. The planner only talks to this interface; `ACTIONS` is the registry by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from expunge.orchestrator import costs
from expunge.orchestrator.costs import Estimate, RunCost
from expunge.orchestrator.policy import Policy

TORCH_FAMILIES = ("mlp", "sisa-mlp")
CERTIFIED_FAMILY = "logreg-certified"
# The family whose removals expunge computes itself (`orchestrator.certified`) when planning.
CERTIFIED_FAMILY = "logreg-certified"
STAGE_VALUE = {"production": 10.0, "staging": 2.0, "dev": 0.5, "archived": 0.1, "superseded": 0.0}
WITHDRAWN = ("archived", "superseded")  # stages in which a model is no longer served


@dataclass
class ModelFacts:
    """What the store knows about one affected model, gathered by the planner."""

    model: str
    name: str
    stage: str
    direct: bool
    records: int                         # erased records its producing run consumed (0 if indirect)
    train_records: int                   # erased records among the run's training rows
    train_rows: int = 0                  # training rows built from them (≥ records for joins/augments)
    run: str | None = None
    trainer: str | None = None
    family: str | None = None
    run_seconds: float = 0.0
    run_device: str = "cpu"
    run_records: int = 0                 # records the run trained on
    run_rows: int = 0                    # training rows (≥ records for joins/augments; 0: as records)
    setup_seconds: float = 0.0           # loading the run's data before training (every action pays it again)
    record_seconds: float = 0.0          # gathering the run's facts and recording it (a re-run pays it again)
    shards: int = 1                      # SISA: constituent models, each run on every prediction
    total_steps: int | None = None       # optimizer steps the run took (None: not recorded)
    clean_step: int | None = None        # newest checkpoint step before the records were first seen
    has_checkpoints: bool = False
    stage_steps: dict = field(default_factory=dict)   # SISA: (shard, slice) → steps
    setup_read: float | None = None      # SISA: the part of setup_seconds spent reading the data files whole
    shard_read: float | None = None      # SISA: seconds loading one shard's rows took (a shard retrain's load)
    record_write: float | None = None    # the catalog write's own seconds within record_seconds (paid whole)
    affected_shards: dict = field(default_factory=dict)  # SISA: shard → first affected slice
    sisa_rekeyed: bool = False           # SISA: its shards were dealt from owner keys a key rotation changed since
    certificate: dict | None = None      # certified-removal facts of the run
    budget_spent: float = 0.0
    certified_need: float | None = None  # budget the removal would use, computed on the run's data
    certified_how: str | None = None     # how it was computed: "batch" (one step, removed rows) or "per-row"
    rows_find: float | None = None       # certified: finding removed rows in the removal rows file (None: no file)
    rows_read: float | None = None       # certified: reading that file whole (Newton steps on the training data)
    bookkeeping: float = 0.0             # seconds an action spends looking up and recording (the store's median)
    bookkeeping_n: int = 0               # actions that median is of
    dim: int = 0
    iterations: int = 1
    epochs: int = 1
    # Every ancestor's run, to retrain the whole chain from scratch (None: some ancestor cannot be).
    ancestor_runs: list[RunCost] | None = field(default_factory=list)
    ancestors_blocked: str | None = None
    clean_ancestor: str | None = None    # newest ancestor that never saw the records
    replay_runs: list[RunCost] | None = None  # the runs after it, this model's own last
    replay_blocked: str | None = None
    affected_parents: list = field(default_factory=list)
    parent_guarantee: str | None = "exact"  # weakest guarantee among its affected parents' actions
    retired_parents: list = field(default_factory=list)  # affected parents the plan retires (no new version)

    def own_run(self) -> RunCost:
        return RunCost(self.run or "?", self.run_seconds, self.run_records, self.train_records, self.rerun_setup())

    def rerun_setup(self) -> float:
        """What a re-run of its run pays besides training: loading the data, and recording the new run."""
        return self.setup_seconds + self.record_seconds

    def forget_rows(self) -> int:
        """Training rows built from the erased records: several per record in an augmented set, one for many
        records in an aggregate."""
        return self.train_rows or self.train_records

    def rows(self) -> tuple[int, int]:
        """(training rows of the run, rows built from the erased records): the unit of a training step."""
        n = self.run_rows or self.run_records
        return n, min(self.forget_rows(), n) if n else self.forget_rows()


class Action(ABC):
    """Base class. Subclasses set `name` and `guarantee` and implement `check` and `estimate`."""

    name = ""
    guarantee = "exact"

    @abstractmethod
    def check(self, f: ModelFacts, policy: Policy) -> str | None:
        """None when applicable, else the reason it is not."""

    @abstractmethod
    def estimate(self, f: ModelFacts, policy: Policy) -> Estimate:
        """Estimated compute, with its reasons."""

    def guarantee_for(self, f: ModelFacts) -> str:
        return self.guarantee


def _family(family: str | None) -> str:
    return "(none recorded)" if family is None else repr(family)


def _edits_own_weights(f: ModelFacts) -> str | None:
    """Why an action that starts from this model's own weights or checkpoints cannot remove the erased
    records' influence, or None: they all descend from an affected parent's old weights."""
    if f.affected_parents:
        return (f"derived from affected {', '.join(f.affected_parents)}: what it took from the old parent stays in "
                "its own weights and checkpoints; re-derive it from the unlearned parent")
    if not f.direct:
        return "it did not train on the records"
    return None


class NoAction(Action):
    name = "no_action"

    def check(self, f, policy):
        if f.affected_parents:
            return f"derived from affected {', '.join(f.affected_parents)}"
        if f.direct and f.train_records == 0:
            return None
        return "the records reached training"

    def estimate(self, f, policy):
        return costs.no_action()


class FullRetrain(Action):
    """Retrain from scratch: for a fine-tuned or distilled model, every run of its chain (each ancestor's
    run and its own), each on the records that remain."""

    name = "full_retrain"

    def check(self, f, policy):
        if not f.run:
            return "no producing run recorded"
        if not f.trainer:
            return "no recorded trainer entry point"
        return f.ancestors_blocked

    def estimate(self, f, policy):
        if not f.ancestor_runs:
            return costs.full_retrain(f.run_seconds, f.run_records, f.train_records, f.rerun_setup())
        return costs.rerun_runs([*f.ancestor_runs, f.own_run()], "retrain the whole chain from scratch")


class SisaShardRetrain(Action):
    name = "sisa_shard_retrain"

    def check(self, f, policy):
        why = _edits_own_weights(f)
        if why:
            return why
        if not f.trainer:
            return "no recorded trainer entry point"
        if not f.stage_steps or not f.affected_shards:
            return "no shard/slice facts and slice checkpoints recorded"
        if f.sisa_rekeyed:
            return ("its shards were dealt from the owners' keys, which a key rotation has changed since: a shard "
                    "retrain cannot deal the rows of its composed dataset as they were trained")
        missing = sorted(s for s, r in f.affected_shards.items() if (s, r) not in f.stage_steps)
        if missing:  # e.g. a version made by an earlier shard retrain records only that shard's stages
            return f"no slice checkpoints recorded for shard(s) {', '.join(map(str, missing))}"
        return None

    def estimate(self, f, policy):
        return costs.sisa_shards(f.run_seconds, f.stage_steps, f.affected_shards, f.rerun_setup(), f.setup_read,
                                 f.shard_read, f.record_write)


class CheckpointReplay(Action):
    name = "checkpoint_replay"

    def check(self, f, policy):
        why = _edits_own_weights(f)
        if why:
            return why
        if not f.trainer:
            return "no recorded trainer entry point"
        if not f.has_checkpoints:
            return "no checkpoints recorded"
        if f.clean_step is None:
            return "every checkpoint already saw the records"
        if not f.total_steps:
            return "the run's total optimizer steps were not recorded: a replay cannot be priced"
        return None

    def estimate(self, f, policy):
        return costs.checkpoint_replay(f.run_seconds, f.total_steps, f.clean_step, f.rerun_setup())


class CleanAncestorReplay(Action):
    """Start from the newest ancestor that never saw the records and re-run every run after it."""

    name = "clean_ancestor_replay"

    def check(self, f, policy):
        if f.clean_ancestor is None or f.replay_runs is None:
            return f.replay_blocked or "no ancestor model that never saw the records"
        return None

    def estimate(self, f, policy):
        return costs.rerun_runs(f.replay_runs, f"re-run after clean ancestor {f.clean_ancestor}")


class Rederive(Action):
    """Re-run this model's own run on its affected parents' unlearned versions, without the erased records it
    trained on itself (its guarantee is its parents' weakest)."""

    name = "rederive_from_parent"

    def check(self, f, policy):
        if not f.affected_parents:
            return "no affected parent to re-derive from"
        if f.parent_guarantee is None:
            return "a parent has no admissible action to re-derive from"
        if f.retired_parents:
            return f"{', '.join(f.retired_parents)} is retired: there is no unlearned version to re-derive from"
        if not f.run:
            return "no producing run recorded"
        return None if f.trainer else "no recorded trainer entry point"

    def guarantee_for(self, f):
        return f.parent_guarantee or "exact"

    def estimate(self, f, policy):
        return costs.rerun_runs([f.own_run()], f"re-run on the unlearned {', '.join(f.affected_parents)}")


class CertifiedRemoval(Action):
    name = "certified_removal"
    guarantee = "certified"

    def check(self, f, policy):
        why = _edits_own_weights(f)
        if why:
            return why
        if not f.certificate:
            return "not trained for certified removal (no λ, σ recorded)"
        if f.family != CERTIFIED_FAMILY:
            return f"model family {_family(f.family)} is not the certified logistic regression expunge's Newton steps remove from"
        left = f.certificate["removal_budget"] - f.budget_spent
        need = self.consumption(f, limit=max(left, 0.0))
        if need > left:
            needs = "more than that" if need == float("inf") else f"{need:.3g}"
            rows = f.forget_rows()
            return f"removal budget spent: removing {rows} row(s) needs {needs}, {max(left, 0):.3g} left"
        return None

    @staticmethod
    def consumption(f: ModelFacts, limit: float = float("inf")) -> float:
        """Budget that removing the records one by one would use: the Newton steps' own bounds when the
        planner computed them on the run's data (`certified_need`), else a bound from the Hessian facts the
        trainer recorded (Guo et al. Cor. 1, bounded before the data is at hand), else the worst case
        (their Thm 1, ‖x‖ ≤ 1)."""
        c = f.certificate
        lam, gamma = c["lam"], c.get("gamma", 0.25)
        n, k = f.run_records, f.forget_rows()  # one Newton step per training row
        if f.certified_need is not None:
            return c.get("train_grad_norm", 0.0) + f.certified_need
        # The Hessian facts describe the model as trained: after earlier removals they no longer bound
        # the next ones (the executor records fresh facts with the model it produces).
        if "hessian_min_eig" in c and f.budget_spent == 0:
            return c.get("train_grad_norm", 0.0) + costs.certified_residual_bound(
                k, lam=lam, n=int(c.get("n", n)), mu=c["hessian_min_eig"], spec_sq=c["x_spectral_sq"],
                w_norm=c["w_norm"], gamma=gamma, limit=limit)
        return c.get("train_grad_norm", 0.0) + sum(4 * gamma / (lam ** 2 * max(n - i, 1)) for i in range(1, k + 1))

    def estimate(self, f, policy):
        # The rows come from the run's removal rows file while it is there, else from the features file.
        if f.certified_how == "batch":
            find = f.rows_find if f.rows_find is not None else f.certificate.get("removal_read_seconds", 0.0)
            est = costs.certified_batch(find, f.forget_rows(), f.dim, record=f.record_seconds)
        else:
            est = costs.certified_removal(f.run_seconds, f.run_records - f.train_records, f.dim, f.iterations,
                                          steps=f.forget_rows(),
                                          setup=f.rows_read if f.rows_read is not None else f.setup_seconds,
                                          state=f.certificate.get("state_seconds"))
        left = f.certificate["removal_budget"] - f.budget_spent
        how = ("one batch Newton step's bound, from the removed rows and the saved Hessian"
               if f.certified_how == "batch" else "Newton-step bounds on the run's data" if f.certified_need is not None
               else "bound from the recorded Hessian facts" if "hessian_min_eig" in f.certificate
               else "worst-case bound")
        est.reasons.append(f"uses {self.consumption(f):.3g} of the {left:.3g} removal budget left ({how})")
        return est


class ApproximateUnlearning(Action):
    """NegGrad+ / SCRUB: a few epochs on the forget set and a sample of retained data."""

    name = "approximate_unlearning"
    guarantee = "approximate"
    RETAIN_SAMPLE = 10

    def check(self, f, policy):
        why = _edits_own_weights(f)
        if why:
            return why
        if f.family not in TORCH_FAMILIES:
            return f"model family {_family(f.family)} is not a torch classifier expunge can unlearn"
        return None

    def estimate(self, f, policy):
        n, forget = f.rows()
        return costs.approximate(f.run_seconds, f.epochs, n, forget, min(n, self.RETAIN_SAMPLE * max(forget, 1)),
                                 setup=f.setup_seconds, total_steps=f.total_steps, method=policy.approximate_method,
                                 members=f.shards if f.family == "sisa-mlp" else 1)


class Retire(Action):
    name = "retire"

    def check(self, f, policy):
        if policy.model(f.name).never_retire:
            return f"policy: model {f.name} must never be retired"
        if f.stage in WITHDRAWN and policy.retire_withdrawn:
            return None  # a person already withdrew it (`expunge model stage`): nothing more is lost
        return None if policy.allow_retire else "policy: retiring models is not allowed"

    def estimate(self, f, policy):
        if f.stage in WITHDRAWN and policy.retire_withdrawn:
            return Estimate(0.0, [f"already {f.stage}: it stays withdrawn (policy retire_withdrawn), its files are "
                                  "deleted with the request's residual copies"])
        value = STAGE_VALUE.get(f.stage, 1.0)
        base = costs.retire()
        # The model's utility, priced as a multiple of what it cost to train, by stage.
        return Estimate(f.run_seconds * value, base.reasons + [f"{f.stage} model valued at {value}× its training run"])


ACTIONS: dict[str, Action] = {a.name: a for a in (
    NoAction(), FullRetrain(), SisaShardRetrain(), CheckpointReplay(), CleanAncestorReplay(), Rederive(),
    CertifiedRemoval(), ApproximateUnlearning(), Retire(),
)}


def action(name: str) -> Action:
    try:
        return ACTIONS[name]
    except KeyError:
        raise KeyError(f"unknown action {name!r}; known: {', '.join(ACTIONS)}") from None
