"""The erasure policy: a TOML file (default shipped with the package, see default_policy.toml).

Per data category the weakest guarantee allowed and the deadline; whether retiring a model is
allowed; the thresholds approximate unlearning must pass; cost rates; per-model overrides;
whether a plan needs approval and by how many people.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from expunge.errors import BadInput

# Weakest first: a guarantee admits an action whose guarantee is at least as strong.
GUARANTEES = ("approximate", "certified", "exact")


def stronger_or_equal(guarantee: str, required: str) -> bool:
    return GUARANTEES.index(guarantee) >= GUARANTEES.index(required)


@dataclass(frozen=True)
class CategoryRule:
    weakest_guarantee: str = "exact"
    deadline_days: int = 30


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
    cpu_hour: float = 0.05
    gpu_hour: float = 2.5
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
        return d


_TOP = {"default_category", "allow_retire", "approval", "categories", "approximate", "costs", "models"}


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
    for name, c in doc.get("categories", {}).items():
        _check_keys(c, {"weakest_guarantee", "deadline_days"}, f"categories.{name}")
        g = c.get("weakest_guarantee", "exact")
        if g not in GUARANTEES:
            raise BadInput(f"policy categories.{name}.weakest_guarantee: {g!r} is not one of {', '.join(GUARANTEES)}")
        days = _typed(c.get("deadline_days", 30), int, f"categories.{name}.deadline_days")
        if days <= 0:
            raise BadInput(f"policy categories.{name}.deadline_days must be positive")
        cats[name] = CategoryRule(g, days)
    default = _typed(doc.get("default_category", "default"), str, "default_category")
    if default not in cats:
        cats.setdefault(default, CategoryRule())
    models = {}
    for name, m in doc.get("models", {}).items():
        _check_keys(m, {"never_retire", "always_retrain"}, f"models.{name}")
        models[name] = ModelRule(_typed(m.get("never_retire", False), bool, f"models.{name}.never_retire"),
                                 _typed(m.get("always_retrain", False), bool, f"models.{name}.always_retrain"))
    ap, approx, costs = doc.get("approval", {}), doc.get("approximate", {}), doc.get("costs", {})
    _check_keys(ap, {"required", "approvers"}, "approval")
    _check_keys(approx, {"max_mia_auc_gap", "max_accuracy_drop"}, "approximate")
    _check_keys(costs, {"cpu_hour", "gpu_hour"}, "costs")
    approvers = _typed(ap.get("approvers", 1), int, "approval.approvers")
    if approvers < 1:
        raise BadInput("policy approval.approvers must be at least 1")
    return Policy(
        default_category=default, allow_retire=_typed(doc.get("allow_retire", False), bool, "allow_retire"),
        categories=cats, models=models,
        approval_required=_typed(ap.get("required", True), bool, "approval.required"), approvers=approvers,
        max_mia_auc_gap=_typed(approx.get("max_mia_auc_gap", 0.05), float, "approximate.max_mia_auc_gap"),
        max_accuracy_drop=_typed(approx.get("max_accuracy_drop", 0.02), float, "approximate.max_accuracy_drop"),
        cpu_hour=_typed(costs.get("cpu_hour", 0.05), float, "costs.cpu_hour"),
        gpu_hour=_typed(costs.get("gpu_hour", 2.5), float, "costs.gpu_hour"),
        source=source,
    )


def default_policy_text() -> str:
    return resources.files("expunge.orchestrator").joinpath("default_policy.toml").read_text()


def load_policy(path: str | Path | None) -> Policy:
    if path is None:
        return parse_policy(tomllib.loads(default_policy_text()), "default")
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise BadInput(f"no such policy file: {p}") from None
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"policy {p} is not valid TOML: {exc}") from None
    return parse_policy(doc, str(p))
