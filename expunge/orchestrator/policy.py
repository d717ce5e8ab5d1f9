"""The erasure policy: a TOML file (default shipped with the package, see default_policy.toml).

Per data category the weakest guarantee allowed, the deadline and how an approximate result is
checked; whether retiring a model is allowed; the thresholds approximate unlearning must pass;
how much more the planner pays for a stronger guarantee; cost rates; per-model overrides;
whether a plan needs approval and by how many people; the module prefixes trainers may be imported
from (besides expunge's own), for re-runs.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from expunge.errors import BadInput

# Weakest first: a guarantee admits an action whose guarantee is at least as strong.
GUARANTEES = ("approximate", "certified", "exact")
# How an approximate result is checked before it counts, weakest first: membership inference of the forget
# set against held-out non-members (AUC ≤ max_mia_auc), or against a retrained reference model (AUC ≤ the
# reference's + max_mia_auc_gap; the reference costs a retrain). Both also check the accuracy drop.
CHECKS = ("mia", "mia_retrained")


def stronger_or_equal(guarantee: str, required: str) -> bool:
    return GUARANTEES.index(guarantee) >= GUARANTEES.index(required)


@dataclass(frozen=True)
class CategoryRule:
    weakest_guarantee: str = "exact"
    deadline_days: int = 30
    check: str = "mia"


@dataclass(frozen=True)
class ModelRule:
    never_retire: bool = False
    always_retrain: bool = False


@dataclass(frozen=True)
class Policy:
    default_category: str
    allow_retire: bool
    categories: dict[str, CategoryRule]
    models: dict[str, ModelRule] = field(default_factory=dict)
    approval_required: bool = True
    approvers: int = 1
    max_mia_auc_gap: float = 0.05
    max_accuracy_drop: float = 0.02
    max_mia_auc: float = 0.55
    max_premium: float = 2.0
    approximate_method: str = "scrub"    # or "neggrad+"
    retire_withdrawn: bool = True
    approver_keys: dict[str, str] = field(default_factory=dict)  # name → OpenSSH Ed25519 public key line
    purge_residuals: bool = False        # delete residual copies as soon as a request's plan has run
    holds: dict[str, str] = field(default_factory=dict)  # model name → why its old files are kept
    cpu_hour: float = 0.05
    gpu_hour: float = 2.5
    trainers_allow: tuple[str, ...] = ()
    source: str = "default"

    def category(self, name: str) -> CategoryRule:
        try:
            return self.categories[name]
        except KeyError:
            raise BadInput(f"unknown data category {name!r}; the policy knows {', '.join(sorted(self.categories))}") \
                from None

    def model(self, name: str) -> ModelRule:
        return self.models.get(name, ModelRule())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["categories"] = {k: asdict(v) for k, v in sorted(self.categories.items())}
        d["models"] = {k: asdict(v) for k, v in sorted(self.models.items())}
        d["approver_keys"] = dict(sorted(self.approver_keys.items()))
        if not d["trainers_allow"]:
            del d["trainers_allow"]  # a policy that allows no trainers keeps the hash it had before the key existed
        else:
            d["trainers_allow"] = list(d["trainers_allow"])
        return d

    def sha256(self) -> str:
        """The hash of what the policy says (not of where it was read from): plans and approvals pin it."""
        import hashlib
        import json

        body = {k: v for k, v in self.to_dict().items() if k != "source"}
        return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                         allow_nan=False).encode()).hexdigest()


def policy_from_dict(d: dict) -> Policy:
    """The inverse of `Policy.to_dict`."""
    d = dict(d)
    d["categories"] = {k: CategoryRule(**v) for k, v in d["categories"].items()}
    d["models"] = {k: ModelRule(**v) for k, v in d["models"].items()}
    if "trainers_allow" in d:
        d["trainers_allow"] = tuple(d["trainers_allow"])
    return Policy(**d)


_TOP = {"default_category", "allow_retire", "retire_withdrawn", "residuals", "approval", "categories", "approximate",
        "costs", "models", "risk", "trainers"}


def _section(doc: dict, key: str, where: str | None = None) -> dict:
    """A table of the policy (missing: empty); any other value is refused, not read as one."""
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise BadInput(f"policy {where or key}: expected a table, got {type(value).__name__}")
    return value


def _check_keys(section: dict, allowed: set, where: str) -> None:
    unknown = set(section) - allowed
    if unknown:
        raise BadInput(f"policy {where}: unknown key(s) {', '.join(sorted(unknown))}")


def _typed(value, typ, where: str):
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise BadInput(f"policy {where}: expected {typ.__name__}, got {value!r}")
    return value


def parse_policy(doc: dict, source: str) -> Policy:
    _check_keys(doc, _TOP, "(top level)")
    cats = {}
    for name, c in _section(doc, "categories").items():
        if not isinstance(c, dict):
            raise BadInput(f"policy categories.{name}: expected a table, got {type(c).__name__}")
        _check_keys(c, {"weakest_guarantee", "deadline_days", "check"}, f"categories.{name}")
        g = c.get("weakest_guarantee", "exact")
        if g not in GUARANTEES:
            raise BadInput(f"policy categories.{name}.weakest_guarantee: {g!r} is not one of {', '.join(GUARANTEES)}")
        days = _typed(c.get("deadline_days", 30), int, f"categories.{name}.deadline_days")
        if days <= 0:
            raise BadInput(f"policy categories.{name}.deadline_days must be positive")
        check = c.get("check", "mia")
        if check not in CHECKS:
            raise BadInput(f"policy categories.{name}.check: {check!r} is not one of {', '.join(CHECKS)}")
        cats[name] = CategoryRule(g, days, check)
    default = _typed(doc.get("default_category", "default"), str, "default_category")
    if default not in cats:
        cats.setdefault(default, CategoryRule())
    models = {}
    for name, m in _section(doc, "models").items():
        if not isinstance(m, dict):
            raise BadInput(f"policy models.{name}: expected a table, got {type(m).__name__}")
        _check_keys(m, {"never_retire", "always_retrain"}, f"models.{name}")
        models[name] = ModelRule(_typed(m.get("never_retire", False), bool, f"models.{name}.never_retire"),
                                 _typed(m.get("always_retrain", False), bool, f"models.{name}.always_retrain"))
    ap, approx, costs, risk = (_section(doc, k) for k in ("approval", "approximate", "costs", "risk"))
    _check_keys(ap, {"required", "approvers", "keys"}, "approval")
    approver_keys = {}
    key_of: dict[bytes, str] = {}
    for name, line in _section(ap, "keys", "approval.keys").items():
        from expunge.orchestrator.approvals import parse_public_key, raw_public

        raw = raw_public(parse_public_key(_typed(line, str, f"approval.keys.{name}"), f"policy approval.keys.{name}"))
        if raw in key_of:
            raise BadInput(f"policy approval.keys: {key_of[raw]} and {name} have the same key; one key is one approver")
        key_of[raw] = name
        approver_keys[name] = " ".join(line.split()[:2])
    _check_keys(approx, {"max_mia_auc_gap", "max_accuracy_drop", "max_mia_auc", "method"}, "approximate")
    method = approx.get("method", "scrub")
    if method not in ("scrub", "neggrad+"):
        raise BadInput(f"policy approximate.method: {method!r} is not one of scrub, neggrad+")
    _check_keys(risk, {"max_premium"}, "risk")
    res = _section(doc, "residuals")
    _check_keys(res, {"purge", "hold"}, "residuals")
    holds = {str(k): _typed(v, str, f"residuals.hold.{k}") for k, v in _section(res, "hold", "residuals.hold").items()}
    premium = _typed(risk.get("max_premium", 2.0), float, "risk.max_premium")
    if not 1.0 <= premium < float("inf"):
        raise BadInput("policy risk.max_premium must be a finite number ≥ 1 (1: always the cheapest action)")
    bounds = {}
    for key, fallback in (("max_mia_auc_gap", 0.05), ("max_accuracy_drop", 0.02), ("max_mia_auc", 0.55)):
        bounds[key] = _typed(approx.get(key, fallback), float, f"approximate.{key}")
        if not 0.0 <= bounds[key] <= 1.0:
            raise BadInput(f"policy approximate.{key} must be between 0 and 1")
    _check_keys(costs, {"cpu_hour", "gpu_hour"}, "costs")
    rates = {}
    for key, fallback in (("cpu_hour", 0.05), ("gpu_hour", 2.5)):
        rates[key] = _typed(costs.get(key, fallback), float, f"costs.{key}")
        if not 0.0 <= rates[key] < float("inf"):
            raise BadInput(f"policy costs.{key} must be a finite number ≥ 0 (dollars per hour)")
    trainers = _section(doc, "trainers")
    _check_keys(trainers, {"allow"}, "trainers")
    allow = _typed(trainers.get("allow", []), list, "trainers.allow")
    from expunge.orchestrator.trainers import check_prefix

    allow = tuple(check_prefix(_typed(p, str, "trainers.allow"), "policy trainers.allow") for p in allow)
    approvers = _typed(ap.get("approvers", 1), int, "approval.approvers")
    if approvers < 1:
        raise BadInput("policy approval.approvers must be at least 1")
    if approver_keys and approvers > len(approver_keys):
        raise BadInput(f"policy approval.approvers is {approvers} but approval.keys names {len(approver_keys)} "
                       "key(s): no plan could be approved")
    return Policy(
        default_category=default, allow_retire=_typed(doc.get("allow_retire", False), bool, "allow_retire"),
        categories=cats, models=models,
        retire_withdrawn=_typed(doc.get("retire_withdrawn", True), bool, "retire_withdrawn"),
        approval_required=_typed(ap.get("required", True), bool, "approval.required"), approvers=approvers,
        approver_keys=approver_keys,
        purge_residuals=_typed(res.get("purge", False), bool, "residuals.purge"), holds=holds,
        max_mia_auc_gap=bounds["max_mia_auc_gap"], max_accuracy_drop=bounds["max_accuracy_drop"],
        max_mia_auc=bounds["max_mia_auc"], max_premium=premium, approximate_method=method,
        cpu_hour=rates["cpu_hour"], gpu_hour=rates["gpu_hour"],
        trainers_allow=allow, source=source,
    )


def default_policy_text() -> str:
    return resources.files("expunge.orchestrator").joinpath("default_policy.toml").read_text()


def load_policy(path: str | Path | None) -> Policy:
    if path is None:
        return parse_policy(tomllib.loads(default_policy_text()), "default")
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise BadInput(f"no such policy file: {p}") from None
    except UnicodeDecodeError as exc:
        raise BadInput(f"policy {p} is not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"policy {p} is not valid TOML: {exc}") from None
    return parse_policy(doc, str(p))


# ------------------------------------------------------------------ the store's policy, and pinned policies


def _pinned_path(store, sha: str) -> Path:
    return store.root / "policies" / f"{sha}.json"


def pin(store, policy: Policy) -> str:
    """Keep the policy in the store under its hash (`<store>/policies/<sha256>.json`), so that the plans
    made with it can be approved and run under exactly it, whatever file a later command is given."""
    import json

    from expunge.lineage.fsutil import atomic_write_bytes

    sha = policy.sha256()
    path = _pinned_path(store, sha)
    if not path.exists():
        path.parent.mkdir(mode=0o700, exist_ok=True)
        atomic_write_bytes(path, json.dumps(policy.to_dict(), sort_keys=True, separators=(",", ":"),
                                            ensure_ascii=False).encode())
    return sha


def pinned(store, sha: str) -> Policy:
    """The policy pinned under `sha`, refused if its file no longer matches it."""
    import json

    from expunge.errors import UnknownReference

    path = _pinned_path(store, sha)
    try:
        policy = policy_from_dict(json.loads(path.read_bytes()))
    except FileNotFoundError:
        raise UnknownReference(f"the store holds no policy {sha[:12]} (made with another store?)") from None
    except (ValueError, TypeError, KeyError, AttributeError):
        raise BadInput(f"the pinned policy {path} is damaged") from None
    if policy.sha256() != sha:
        raise BadInput(f"the pinned policy {path} was changed after it was pinned")
    return policy


def store_policy_sha(store) -> str | None:
    with store.read() as con:
        row = con.execute("SELECT value FROM meta WHERE key = 'policy_sha256'").fetchall()
    return row[0][0] if row else None


def store_policy(store) -> Policy:
    """The store's policy (`expunge policy set`), else the one shipped with expunge."""
    sha = store_policy_sha(store)
    return pinned(store, sha) if sha else load_policy(None)


def set_store_policy(store, path: str | Path) -> Policy:
    """Make a policy file the store's policy: plans are made and approved under it."""
    policy = load_policy(path)
    sha = pin(store, policy)
    with store.write() as txn:
        from expunge import audit

        audit.log_event(txn, "policy_set", policy_sha256=sha, previous=txn.meta("policy_sha256"))
        txn.con.execute("DELETE FROM meta WHERE key = 'policy_sha256'")
        txn.con.execute("INSERT INTO meta VALUES ('policy_sha256', ?)", [sha])
    return policy


def policy_for(store, path: str | Path | None) -> Policy:
    """The policy a command uses: the file given, else the store's."""
    return load_policy(path) if path is not None else store_policy(store)
