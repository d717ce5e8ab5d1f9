"""Checking what a plan's actions made, before a result is promoted (`expunge run`) and again later (`expunge verify`).

Each result is checked by what the new version is in the store, not by what the executor says it did:
- lineage (exact actions): the new version and every ancestor in its derivation chain come from runs whose
  manifests hold none of the erased records (the store's impact query), the store's graph does not reach the
  new version from them, and every version's file still has its recorded sha256 (re-hashed from disk);
- certificate (certified removal): ε, δ, the Newton steps' gradient-residual bound and the budget left, read
  from the new version's run; its own manifest holds none of the records; its file is the recorded one;
- mia / mia_retrained (approximate unlearning): accuracy on retain, forget and test rows before and after, and
  two membership-inference attacks (loss threshold; a learned attack on loss, confidence and margin) of the
  forget set against held-out non-members, judged by the rule below;
- inherited (a model re-derived from approximately unlearned parents): its own run holds none of the records,
  its file is the recorded one, and each parent it still descends from the records through is a result of
  this plan that passed its own check;
- retired, no_action: the stage is archived; the model is not reached by the erased records.
Every action that made a new version also gets a probe: predictions of the old and the new version on a
fixed set of training rows (up to 100 built from erased records, up to 200 retained), and how many changed.

The membership rule. A forget set of a few rows gives an AUC too noisy to judge: the check does not pass
for want of evidence. Each attack's AUC (for `mia_retrained`: its difference from a model retrained without
the records, paired on the same rows) gets DeLong's standard error and a 90% interval, i.e. two one-sided
5% tests of equivalence (TOST). It passes when the interval lies inside target ± tolerance (target 0.5 and
tolerance max_mia_auc − 0.5 for `mia`; the retrained model's AUC and max_mia_auc_gap for `mia_retrained`),
fails when it lies wholly outside, and is inconclusive otherwise, or with fewer than MIN_FORGET forget rows
or MIN_NONMEMBERS non-members (the run's val/eval rows, never its training rows). Test accuracy may drop at
most max_accuracy_drop (same rows before and after). Only a pass promotes; fail and inconclusive escalate.

Results go to the `action_checks` table, one row per check made (the latest per plan and position counts),
with metrics that hold counts, scores and hashes, never a record or subject id.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from expunge.errors import BadInput, ExpungeError
from expunge.lineage.store import Store, _now, has_table

DDL = """
CREATE TABLE IF NOT EXISTS action_checks(
    plan_id VARCHAR, position INTEGER, model VARCHAR, new_model VARCHAR, kind VARCHAR, passed BOOLEAN,
    metrics VARCHAR,                  -- JSON: counts, scores, hashes; no record or subject id
    checked_at TIMESTAMP,
    verdict VARCHAR,                  -- pass | fail | inconclusive
    source VARCHAR);                  -- computed | recorded (the store had forgotten the subjects: re-hashed only)
"""

MIN_FORGET = 10          # below this many forget rows, a membership AUC is not judged (inconclusive)
MIN_NONMEMBERS = 10
Z90 = 1.6448536269514722  # two one-sided 5% tests: the 90% interval
PROBE_ERASED, PROBE_RETAINED = 100, 200
RETAIN_EVAL, NONMEMBER_EVAL = 2000, 5000
EXACT_RERUNS = ("full_retrain", "rederive_from_parent", "clean_ancestor_replay", "checkpoint_replay",
                "sisa_shard_retrain")


def _result(kind: str, verdict: str, metrics: dict, reasons: list[str]) -> dict:
    return {"kind": kind, "verdict": verdict, "passed": verdict == "pass", "metrics": metrics, "reasons": reasons}


def _worst(verdicts) -> str:
    v = list(verdicts)
    return "fail" if "fail" in v else "inconclusive" if "inconclusive" in v else "pass"


# ------------------------------------------------------------------ the membership rule (pure)


def equivalence(estimate: float, se: float, target: float, tolerance: float) -> dict:
    """The 90% interval of `estimate` (a normal approximation with standard error `se`) against
    target ± tolerance: pass inside, fail wholly outside, inconclusive across a bound."""
    lo, hi = estimate - Z90 * se, estimate + Z90 * se
    band = (target - tolerance, target + tolerance)
    if band[0] <= lo and hi <= band[1]:
        verdict = "pass"
    elif hi < band[0] or lo > band[1]:
        verdict = "fail"
    else:
        verdict = "inconclusive"
    return {"estimate": estimate, "se": se, "ci90": [lo, hi], "band": list(band), "verdict": verdict}


def membership_check(original, unlearned, forget, retain, nonmembers, *, kind: str, max_mia_auc: float,
                     max_mia_auc_gap: float, max_accuracy_drop: float, reference=None, seed: int = 0) -> dict:
    """The approximate-unlearning check on torch classifiers (logits out) and `(X, y)` row sets: accuracy on
    retain, forget and test (the non-members) rows of the original, unlearned and (`mia_retrained`) reference
    models; each attack's AUC with its interval; the verdict by the module's rule."""
    from expunge.orchestrator import mia

    n_f, n_n = int(len(forget[0])), int(len(nonmembers[0]))
    models = {"original": original, "unlearned": unlearned}
    if reference is not None:
        models["retrained"] = reference
    accuracy = {name: {"retain": _acc(m, retain), "forget": _acc(m, forget), "test": _acc(m, nonmembers)}
                for name, m in models.items()}
    metrics: dict[str, Any] = {"rows": {"forget": n_f, "nonmembers": n_n, "retain": int(len(retain[0])),
                                        "test": n_n},
                               "accuracy": accuracy, "thresholds": {}, "rule": "tost90"}
    reasons, verdicts = [], []
    if n_n == 0:
        drop, acc_ok = None, None
        metrics["accuracy_drop"] = {"test": None, "max": max_accuracy_drop, "verdict": "inconclusive"}
        reasons.append("no held-out test rows: the accuracy drop cannot be measured")
    else:
        drop = accuracy["original"]["test"] - accuracy["unlearned"]["test"]
        acc_ok = drop <= max_accuracy_drop + 1e-12
        metrics["accuracy_drop"] = {"test": drop, "max": max_accuracy_drop, "verdict": "pass" if acc_ok else "fail"}
    verdicts.append(metrics["accuracy_drop"]["verdict"])
    if acc_ok is False:
        reasons.append(f"test accuracy dropped {drop * 100:.1f} points, more than the policy's "
                       f"{max_accuracy_drop * 100:.1f}")
    if n_f < MIN_FORGET or n_n < MIN_NONMEMBERS:
        metrics["mia"] = None
        reasons.append(f"membership inference not judged: {n_f} forget row(s) and {n_n} non-member(s); the check "
                       f"needs at least {MIN_FORGET} and {MIN_NONMEMBERS} (a smaller forget set's AUC is noise)")
        return _result(kind, _worst([*verdicts, "inconclusive"]), metrics, reasons)
    stats = {name: (mia.example_stats(m, forget), mia.example_stats(m, nonmembers)) for name, m in models.items()}
    scores = {
        "loss": {name: (-f.loss, -n.loss) for name, (f, n) in stats.items()},
        "learned": {name: mia.learned_attack_scores(f.features(), n.features(), seed=seed)
                    for name, (f, n) in stats.items()},
    }
    metrics["mia"] = {}
    for attack, by_model in scores.items():
        names = list(by_model)
        aucs, cov = mia.auc_covariance([by_model[n] for n in names])
        auc = dict(zip(names, aucs.tolist()))
        entry: dict[str, Any] = {"auc": auc, "se": dict(zip(names, np.sqrt(np.clip(np.diag(cov), 0, None))
                                                           .tolist()))}
        u = names.index("unlearned")
        if kind == "mia_retrained":
            r = names.index("retrained")
            var = cov[u, u] + cov[r, r] - 2 * cov[u, r]
            eq = equivalence(aucs[u] - aucs[r], math.sqrt(max(var, 0.0)), 0.0, max_mia_auc_gap)
            entry["compared_with"] = "retrained"
            what = f"its AUC minus the retrained model's ({auc['retrained']:.3f})"
            tol = max_mia_auc_gap
        else:
            eq = equivalence(aucs[u], math.sqrt(max(cov[u, u], 0.0)), 0.5, max_mia_auc - 0.5)
            entry["compared_with"] = "chance"
            what = "its AUC"
            tol = max_mia_auc - 0.5
        entry.update(eq)
        metrics["mia"][attack] = entry
        verdicts.append(eq["verdict"])
        if eq["verdict"] != "pass":
            f = "+.3f" if kind == "mia_retrained" else ".3f"
            reasons.append(f"{attack} attack: {what} {eq['estimate']:{f}} (90% CI {eq['ci90'][0]:{f}}…"
                           f"{eq['ci90'][1]:{f}}) is {'outside' if eq['verdict'] == 'fail' else 'not within'} "
                           f"the tolerance ±{tol:.3f} around {eq['band'][0] + tol:.3f}")
    metrics["thresholds"] = ({"max_mia_auc_gap": max_mia_auc_gap} if kind == "mia_retrained"
                             else {"max_mia_auc": max_mia_auc}) | {"max_accuracy_drop": max_accuracy_drop}
    return _result(kind, _worst(verdicts), metrics, reasons)


def _acc(model, data) -> float | None:
    from expunge.orchestrator import mia

    return mia.accuracy(model, data) if len(data[0]) else None


# ------------------------------------------------------------------ loading what a check needs


def _info(store: Store, ref: str) -> dict:
    from expunge.orchestrator.execute import model_info

    return model_info(store, ref)


def artifact_state(path: str | None, sha256: str | None) -> str:
    """ok (the file has its recorded sha256), changed, missing, or unrecorded (no file or no hash recorded)."""
    from expunge.lineage.runs import sha256_file

    if not path or not sha256:
        return "unrecorded"
    p = Path(path)
    if not p.is_file():
        return "missing"
    return "ok" if sha256_file(p) == sha256 else "changed"


def ancestors(store: Store, ref: str) -> list[str]:
    from expunge.orchestrator.execute import _ancestors

    return _ancestors(store, ref)


def _run_extra(store: Store, run: str | None) -> dict:
    if not run:
        return {}
    with store.read() as con:
        row = con.execute("SELECT extra FROM runs WHERE name = ?", [run]).fetchone()
    return json.loads(row[0]) if row and row[0] else {}


class _Predictor:
    """A model version as a classifier with logits out (torch), from its file (hash-checked) and its family."""

    @staticmethod
    def load(store: Store, info: dict, config: dict, family: str | None):
        from expunge.lineage.torch import load_artifact
        from expunge.orchestrator import approximate
        from expunge.orchestrator.approximate_exec import load_classifier

        if family == "logreg-certified":
            if not info["path"]:
                raise BadInput(f"{info['id']}: no artifact recorded")
            w = load_artifact(info["path"], info["sha256"])["model"]["w"].double()
            return _LogregLogits(w)
        if "feature_cols" not in config:
            raise BadInput(f"{info['id']}: family {family!r} has no loader in expunge")
        model, _ = load_classifier(info, config, family)
        model.eval()
        return approximate.EnsembleLogits(model) if family == "sisa-mlp" else model


def _logreg_module():
    import torch

    class LogregLogits(torch.nn.Module):
        """The certified logistic regression's decision as two logits [0, z]: softmax gives σ(z) for class 1."""

        def __init__(self, w):
            super().__init__()
            self.w = torch.nn.Parameter(w.clone(), requires_grad=False)

        def forward(self, x):
            xs = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
            xs = xs / xs.norm(dim=1, keepdim=True).clamp_min(1.0)
            z = xs @ self.w
            return torch.stack([torch.zeros_like(z), z], dim=1)

    return LogregLogits


def _LogregLogits(w):
    return _logreg_module()(w)


class ItemData:
    """What the checks of one plan item read, loaded once: the old run's recorded request, its training rows
    (and which of them are built from erased records), its held-out rows, and the old version."""

    def __init__(self, store: Store, model: str, erased: np.ndarray | None):
        self.store, self.model, self.erased = store, model, erased
        self.info = _info(store, model)
        self._rec = self._train = self._held = None

    @property
    def rec(self) -> dict:
        from expunge.orchestrator.rerun import recorded_request

        if self._rec is None:
            if not self.info["run"]:
                raise BadInput(f"{self.model} has no producing run")
            self._rec = recorded_request(self.store, self.info["run"], need_trainer=False, train_ords="always")
        return self._rec

    def _request(self, inputs: list[dict], exclude=None):
        from expunge.orchestrator.trainers import TrainRequest

        rec = self.rec
        kw = {} if exclude is None else {"exclude_records": np.asarray(exclude, np.uint32)}
        return TrainRequest(store=self.store, run_name=self.info["run"], inputs=inputs, config=rec["config"],
                            seed=rec["seed"], out_dir=Path("."), trainer=rec["trainer"] or "",
                            model_name=rec["model_name"], **kw)

    @property
    def train(self):
        """(dataset, erased mask) of the old run's training rows."""
        from expunge.orchestrator import execute
        from expunge.orchestrator.trainers import mlp

        if self._train is None:
            if "feature_cols" not in self.rec["config"]:
                raise BadInput(f"{self.model}: its run's config names no features expunge can load")
            ds = mlp.dataset(self._request(self.rec["inputs"]))
            mask = (execute.erased_rows(self.store, ds, self.erased) if self.erased is not None
                    else np.zeros(len(ds), bool))
            self._train = (ds, mask)
        return self._train

    @property
    def held_out(self):
        """(X, y) of the run's val/eval rows never trained on, minus rows built from erased records."""
        import torch

        from expunge.lineage.torch import RecordDataset

        if self._held is None:
            c = self.rec["config"]
            ds, _ = self.train
            seen = set(ds.row_ids)
            xs, ys = [], []
            for inp in self.rec["inputs"]:
                if inp.get("role", "train") == "train":
                    continue
                h = RecordDataset(self.store, inp["dataset"], c["features"], row_col=c.get("row_col", "record_id"),
                                  feature_cols=c["feature_cols"], label_col=c["label_col"], rows=inp.get("rows"),
                                  exclude_records=self.erased if self.erased is not None else ())
                keep = torch.tensor([r not in seen for r in h.row_ids], dtype=torch.bool)
                xs.append(h.x[keep])
                ys.append(h.y[keep])
            d = len(c["feature_cols"])
            self._held = ((torch.cat(xs), torch.cat(ys)) if xs else
                          (torch.zeros(0, d), torch.zeros(0, dtype=torch.int64)))
        return self._held

    def predictor(self, info: dict):
        return _Predictor.load(self.store, info, self.rec["config"], self.rec["model_family"])


# ------------------------------------------------------------------ the checks


def lineage_proof(store: Store, hashes: np.ndarray, new_model: str) -> dict:
    """The new version and every ancestor: the erased records their runs' manifests hold (the impact query's
    per-run counts), whether the store's graph reaches the new version from them, and each file re-hashed."""
    imp = store.impact_hashed(hashes)
    held = {r["id"]: r["records"] for r in imp.runs}
    reached = {m["id"] for m in imp.models}
    versions = []
    for ref in [new_model, *ancestors(store, new_model)]:
        info = _info(store, ref)
        versions.append({"model": ref, "run": info["run"], "erased_records": int(held.get(info["run"], 0)),
                         "sha256": info["sha256"], "artifact": artifact_state(info["path"], info["sha256"])})
    holding = [v["model"] for v in versions if v["erased_records"]]
    bad = [v["model"] for v in versions if v["artifact"] in ("changed", "missing")
           or (v["model"] == new_model and v["artifact"] != "ok")]
    reasons = []
    if holding:
        reasons.append(f"the runs of {', '.join(holding)} hold erased records")
    if new_model in reached and not holding:
        reasons.append(f"the store's graph still reaches {new_model} from the erased records")
    if bad:
        reasons.append(f"the file of {', '.join(bad)} is not the recorded one "
                       f"({', '.join(v['artifact'] for v in versions if v['model'] in bad)})")
    metrics = {"chain": versions, "reached_by_erased": new_model in reached,
               "erased_records": int(imp.records)}
    verdict = "fail" if reasons else "pass"
    return _result("lineage", verdict, metrics, reasons)


def certificate_check(store: Store, hashes: np.ndarray, new_model: str) -> dict:
    info = _info(store, new_model)
    extra = _run_extra(store, info["run"])
    cert = extra.get("certified_removal") or {}
    imp = store.impact_hashed(hashes)
    held = {r["id"]: r["records"] for r in imp.runs}.get(info["run"], 0)
    art = artifact_state(info["path"], info["sha256"])
    reasons = []
    if not cert:
        reasons.append(f"{new_model}'s run records no certificate")
        return _result("certificate", "fail", {"artifact": art}, reasons)
    budget = float(cert["removal_budget"])
    spent = float(extra.get("removal_budget_spent", 0.0))
    base = float(cert.get("train_grad_norm", 0.0))
    left = budget - base - spent
    removed = extra.get("removed_by") or {}
    metrics = {"epsilon": cert.get("epsilon"), "delta": cert.get("delta"), "removal_budget": budget,
               "budget_spent": spent, "training_residual": base, "budget_left": left,
               "residual_bound": removed.get("bound"), "newton_steps": removed.get("newton_steps"),
               "erased_records_in_run": int(held), "sha256": info["sha256"], "artifact": art}
    if left < -1e-12:
        reasons.append(f"the gradient-residual bounds exceed the removal budget by {-left:.3g}")
    if held:
        reasons.append(f"{new_model}'s own run still holds {held} erased record(s)")
    if art != "ok":
        reasons.append(f"{new_model}'s file is not the recorded one ({art})")
    return _result("certificate", "fail" if reasons else "pass", metrics, reasons)


def inherited_check(store: Store, hashes: np.ndarray, doc: dict, new_model: str, passed: dict[str, bool]) -> dict:
    """A result re-derived from approximately unlearned parents: its own run is clean, its file is recorded,
    and every parent it still descends from the records through passed its own check in this plan."""
    info = _info(store, new_model)
    imp = store.impact_hashed(hashes)
    held = {r["id"]: r["records"] for r in imp.runs}.get(info["run"], 0)
    reached = {m["id"] for m in imp.models}
    art = artifact_state(info["path"], info["sha256"])
    parents = [{"model": p["model"], "reached": p["model"] in reached, "passed": passed.get(p["model"])}
               for p in info["parents"]]
    reasons = []
    if held:
        reasons.append(f"{new_model}'s own run holds {held} erased record(s)")
    if art != "ok":
        reasons.append(f"{new_model}'s file is not the recorded one ({art})")
    for p in parents:
        if p["reached"] and not p["passed"]:
            reasons.append(f"its parent {p['model']} descends from the erased records and did not pass a check "
                           "of this plan")
    return _result("inherited", "fail" if reasons else "pass",
                   {"erased_records_in_run": int(held), "artifact": art, "sha256": info["sha256"],
                    "parents": parents}, reasons)


def retrained_reference(data: ItemData, policy, out_dir: Path):
    """The old run's trainer again, without the erased records, recorded nowhere: the reference model."""
    from expunge.orchestrator.rerun import _without

    rec = data.rec
    if any(p["relation"] == "fine-tune" for p in rec["parents"]):
        raise BadInput(f"{data.model} is fine-tuned from another model: a retrained reference needs its chain "
                       "retrained, which the check does not do")
    inputs = [i if i.get("role", "train") == "train" else _without(data.store, i, data.erased)
              for i in rec["inputs"]]
    path = train_unrecorded(data.store, data.info["run"], out_dir, inputs=inputs, exclude=data.erased,
                            policy=policy)
    return _Predictor.load(data.store, {"id": f"{data.model} (retrained reference)", "path": str(path),
                                        "sha256": _sha(path)}, rec["config"], rec["model_family"])


def _sha(path) -> str:
    from expunge.lineage.runs import sha256_file

    return sha256_file(Path(path))


def approximate_check(data: ItemData, new_model: str, policy, kind: str, work_dir: Path) -> dict:
    import torch

    ds, mask = data.train
    forget_idx = np.flatnonzero(mask)
    other = np.flatnonzero(~mask)
    rng = np.random.default_rng(0)
    retain_idx = np.sort(rng.permutation(other)[:RETAIN_EVAL])
    hx, hy = data.held_out
    if len(hx) > NONMEMBER_EVAL:
        pick = torch.from_numpy(np.sort(rng.permutation(len(hx))[:NONMEMBER_EVAL]))
        hx, hy = hx[pick], hy[pick]
    new_info = _info(data.store, new_model)
    original, unlearned = data.predictor(data.info), data.predictor(new_info)
    reference, ref_why = None, None
    if kind == "mia_retrained":
        try:
            reference = retrained_reference(data, policy, work_dir)
        except ExpungeError as exc:
            ref_why = str(exc)
    f, r = torch.from_numpy(forget_idx), torch.from_numpy(retain_idx)
    if kind == "mia_retrained" and reference is None:
        res = membership_check(original, unlearned, (ds.x[f], ds.y[f]), (ds.x[r], ds.y[r]), (hx[:0], hy[:0]),
                               kind=kind, max_mia_auc=policy.max_mia_auc, max_mia_auc_gap=policy.max_mia_auc_gap,
                               max_accuracy_drop=policy.max_accuracy_drop)
        res["verdict"], res["passed"] = "inconclusive", False
        res["reasons"] = [f"no retrained reference: {ref_why}"]
    else:
        res = membership_check(original, unlearned, (ds.x[f], ds.y[f]), (ds.x[r], ds.y[r]), (hx, hy), kind=kind,
                               max_mia_auc=policy.max_mia_auc, max_mia_auc_gap=policy.max_mia_auc_gap,
                               max_accuracy_drop=policy.max_accuracy_drop, reference=reference)
    if not len(hx):
        res["reasons"].append("the run recorded no held-out (val/eval) rows to draw non-members from")
    res["metrics"]["sha256"] = new_info["sha256"]
    res["metrics"]["artifact"] = "ok"  # loading it checked the hash (ArtifactMismatch otherwise)
    return res


def probe(data: ItemData, new_model: str) -> dict:
    """Predictions of the old and the new version on a fixed set of training rows: up to PROBE_ERASED built
    from erased records and PROBE_RETAINED retained ones (seeded); how many changed, where."""
    import torch

    try:
        ds, mask = data.train
        old, new = data.predictor(data.info), data.predictor(_info(data.store, new_model))
    except ExpungeError as exc:
        return {"available": False, "why": str(exc)}
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"available": True}
    for where, rows, cap in (("erased", np.flatnonzero(mask), PROBE_ERASED),
                             ("retained", np.flatnonzero(~mask), PROBE_RETAINED)):
        if where == "erased" and data.erased is None:
            out[where] = None  # the store has forgotten which rows they were
            continue
        idx = torch.from_numpy(np.sort(rng.permutation(rows)[:cap]))
        with torch.no_grad():
            a, b = old(ds.x[idx]).argmax(-1), new(ds.x[idx]).argmax(-1)
        out[where] = {"rows": int(len(idx)), "changed": int((a != b).sum())}
    return out


# ------------------------------------------------------------------ one plan item


def _planned_kind(item: dict) -> str:
    return ((item.get("chosen") or {}).get("check") or {}).get("kind") or "lineage"


def check_item(store: Store, doc: dict, item: dict, action: str, new_model: str | None, *, erased: np.ndarray,
               hashes: np.ndarray, policy, passed: dict[str, bool], work_dir: Path) -> dict:
    """The check of one executed plan item (its effective `action`, `new_model` its result), with the probe."""
    data = ItemData(store, item["model"], erased)
    if new_model is None:
        if action == "retire":
            stage = _info(store, item["model"])["stage"]
            return _result("retired", "pass" if stage == "archived" else "fail", {"stage": stage},
                           [] if stage == "archived" else [f"{item['model']} is {stage}, not archived"])
        imp = store.impact_hashed(hashes)
        hit = next((m for m in imp.models if m["id"] == item["model"]), None)
        # As the planner decides it: a model whose own run only evaluated (or validated) on the records needs
        # nothing; one trained on them, or derived from an affected model, does.
        trained = hit is not None and (not hit["direct"] or any(
            i["records"] and i["role"] == "train" for r in imp.runs if r["id"] == hit["run"] for i in r["inputs"]))
        ok = not trained
        return _result("no_action", "pass" if ok else "fail", {"reached_by_erased": hit is not None},
                       [] if ok else [f"{item['model']} trained on the erased records, or descends from a model "
                                      "that did"])
    try:
        if action == "certified_removal":
            res = certificate_check(store, hashes, new_model)
        elif action == "approximate_unlearning":
            res = approximate_check(data, new_model, policy, _planned_kind(item), work_dir)
        else:
            res = lineage_proof(store, hashes, new_model)
            if res["verdict"] == "fail" and item["chosen"]["guarantee"] == "approximate":
                # Re-derived from approximately unlearned parents: as good as their checks.
                res = inherited_check(store, hashes, doc, new_model, passed)
    except ExpungeError as exc:  # e.g. a file that is not the recorded one, data that cannot be loaded
        res = _result("mia" if action == "approximate_unlearning" else "lineage",
                      "fail" if type(exc).__name__ == "ArtifactMismatch" else "inconclusive", {}, [str(exc)])
    res["metrics"]["probe"] = probe(data, new_model)
    return res


# ------------------------------------------------------------------ recording


def record(store: Store, pid: str, pos: int, model: str, new_model: str | None, res: dict,
           source: str = "computed") -> None:
    with store.write() as txn:
        txn.con.execute(DDL)
        txn.con.execute("INSERT INTO action_checks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [pid, pos, model, new_model, res["kind"], res["passed"],
                         json.dumps({**res["metrics"], "reasons": res["reasons"]}, sort_keys=True, default=float),
                         _now(), res["verdict"], source])
        from expunge.audit import log_check

        # The event keeps the numbers (AUCs, accuracies, counts, budgets) and the verdict; hashes and texts stay
        # in action_checks.
        nums = {k: v for k, v in res["metrics"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        log_check(txn, pid, pos, model, new_model, res["kind"], res["passed"],
                  {**nums, "verdict": res["verdict"], "source": source})


def latest(store: Store, pid: str) -> dict[int, dict]:
    """The latest recorded check of each position of a plan."""
    with store.read() as con:
        if not has_table(con, "action_checks"):
            return {}
        rows = con.execute(
            """SELECT position, model, new_model, kind, passed, metrics, checked_at, verdict, source FROM (
                   SELECT *, row_number() OVER (PARTITION BY position ORDER BY checked_at DESC) AS k
                   FROM action_checks WHERE plan_id = ?) WHERE k = 1""", [pid]).fetchall()
    return {r[0]: {"model": r[1], "new_model": r[2], "kind": r[3], "passed": r[4], "metrics": json.loads(r[5]),
                   "checked_at": r[6].isoformat(), "verdict": r[7], "source": r[8]} for r in rows}


def passed_results(store: Store, pid: str) -> dict[str, bool]:
    """New version → whether its latest check in this plan passed."""
    return {c["new_model"]: bool(c["passed"]) for c in latest(store, pid).values() if c["new_model"]}


# ------------------------------------------------------------------ reproduction


def reproduce(store: Store, pid: str, pos: int, action: str, model: str, new_model: str, detail: dict,
              timeout: float = 3600.0) -> dict:
    """Re-run the run that made `new_model` in a fresh process, from what the store recorded (its inputs,
    config, seed and trainer; the weights it started from), recording nothing; compare the artifact's sha256."""
    import os
    import subprocess
    import sys
    import tempfile

    from expunge.orchestrator.execute import checkpoint_path

    if action not in EXACT_RERUNS:
        return {"done": False, "why": f"{action} is not a re-run of a trainer"}
    new = _info(store, new_model)
    old = _info(store, model)
    later = erased_since(store, pid, new_model)
    if later:
        # Its training data is not what the store holds now: records it trained on are gone (a later request's,
        # which the store forgot, as it must). Re-running would train without them: no match to expect.
        return {"done": False, "why": f"{', '.join(later)} erased records it trained on since: its training data "
                                      "cannot be read again"}
    args: dict[str, Any] = {"store": str(store.root), "run": new["run"], "init_model": None,
                            "start_checkpoint": None, "shard_checkpoints": None}
    fine = [p["model"] for p in new["parents"] if p["relation"] == "fine-tune"]
    if fine:
        args["init_model"] = _info(store, fine[0])["path"]
    if action == "checkpoint_replay" and detail.get("from_step") is not None:
        args["start_checkpoint"] = checkpoint_path(store, old["run"], step=int(detail["from_step"]))
    if action == "sisa_shard_retrain":
        args["init_model"] = old["path"]
        starts = {}
        with store.read() as con:
            for k, name in (detail.get("shards") or {}).items():
                if name == "scratch":
                    starts[k] = None
                    continue
                paths = [p for (p,) in con.execute(
                    "SELECT c.path FROM checkpoints c JOIN runs r USING (run_id) WHERE r.name = ? AND c.shard = ?",
                    [old["run"], int(k)]).fetchall() if p and Path(p).name == name]
                if not paths:
                    return {"done": False, "why": f"shard {k}'s starting checkpoint is not recorded"}
                starts[k] = paths[0]
        args["shard_checkpoints"] = starts
    for key in ("init_model", "start_checkpoint"):
        if args[key] and not Path(args[key]).is_file():
            return {"done": False, "why": f"the file it started from is gone ({Path(args[key]).name}: purged?)"}
    with tempfile.TemporaryDirectory(prefix="expunge-reproduce-") as tmp:
        args["out_dir"] = tmp
        proc = subprocess.run([sys.executable, "-m", "expunge.orchestrator.verify"], input=json.dumps(args),
                              capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"done": False, "why": f"the re-run failed: {last[:300]}"}
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"done": True, "recorded_sha256": new["sha256"], "reproduced_sha256": got["sha256"],
            "same": got["sha256"] == new["sha256"]}


REPRODUCE_FAILED = "re-running it in a fresh process gave a different artifact"


def erased_since(store: Store, pid: str, model: str) -> list[str]:
    """The requests of later plans that ran and made the store forget records `model`'s run trained on (the
    plan's item for it counted erased records in its training): the store keeps no trace of those records, so
    the run's training data cannot be read again."""
    from expunge.orchestrator import planner

    with store.read() as con:
        if not has_table(con, "executions"):
            return []
        plans = con.execute("""SELECT DISTINCT a.plan_id FROM execution_actions a JOIN executions e USING (plan_id)
                               WHERE a.model = ? AND a.plan_id <> ? AND e.forgotten IS NOT NULL ORDER BY 1""",
                            [model, pid]).fetchall()
    out: list[str] = []
    for (other,) in plans:
        doc = planner.load_plan(store, other)
        if any(i["model"] == model and i.get("records", 0) > 0 for i in doc["items"]):
            out += [r for r in doc["requests"] if r not in out]
    return out


def train_unrecorded(store: Store, run: str, out_dir: Path, *, inputs: list[dict] | None = None,
                     exclude=None, init_model: str | None = None, start_checkpoint: str | None = None,
                     shard_checkpoints: dict | None = None, policy=None) -> Path:
    """Call a recorded run's trainer (allowlisted, as for re-runs) with what the store recorded, writing its files
    under `out_dir` and recording nothing in the store; returns the model file it saved."""
    from expunge.lineage.torch import recorded_sha256
    from expunge.orchestrator.policy import store_policy
    from expunge.orchestrator.rerun import recorded_request
    from expunge.orchestrator.trainers import allowed_prefixes, load_trainer

    rec = recorded_request(store, run, train_ords="builtin")
    train = load_trainer(rec["trainer"], allowed_prefixes(store, policy or store_policy(store)))
    shards = {int(k): v for k, v in shard_checkpoints.items()} if shard_checkpoints else None
    req = _Unrecorded(
        store=store, run_name=run, inputs=inputs if inputs is not None else rec["inputs"], config=rec["config"],
        seed=rec["seed"], out_dir=Path(out_dir), trainer=rec["trainer"], model_name=rec["model_name"],
        stage=rec["stage"], parents=rec["parents"],
        exclude_records=np.asarray(exclude if exclude is not None else np.zeros(0), np.uint32),
        start_checkpoint=Path(start_checkpoint) if start_checkpoint else None,
        init_model=Path(init_model) if init_model else None, shard_checkpoints=shards,
        start_checkpoint_sha256=recorded_sha256(store, start_checkpoint) if start_checkpoint else None,
        init_model_sha256=recorded_sha256(store, init_model) if init_model else None,
        code_version=rec["code_version"], model_family=rec["model_family"])
    train(req)
    if not req.saved:
        raise BadInput(f"re-running {run} saved no model")
    return Path(req.saved[0])


def _unrecorded_class():
    from expunge.lineage.runs import RunTracker
    from expunge.orchestrator.trainers import TrainRequest

    class NotRecorded(RunTracker):
        """The run's bookkeeping without the write: the files the trainer saved are all a check needs."""

        def __exit__(self, exc_type, exc, tb) -> None:
            if exc_type is None:
                self.result = {"run": None, "models": [dict(m) for m in self.models]}
                self.on_exit([m["path"] for m in self.models])

    class Unrecorded(TrainRequest):
        """A trainer's own code on a recorded request, for checking only: the tracker it asks for records nothing."""

        saved: list

        def tracker(self, *, inputs, **kwargs):
            tr = super().tracker(inputs=inputs, **kwargs)
            tr._run.__class__ = NotRecorded
            tr._run.on_exit = lambda paths: setattr(self, "saved", list(paths))
            return tr

    return Unrecorded


def _Unrecorded(**kw):
    req = _unrecorded_class()(**kw)
    req.saved = []
    return req


def _reproduce_main() -> int:
    """`python -m expunge.orchestrator.verify` with the arguments as JSON on stdin: one re-run, its sha256 out."""
    import sys

    from expunge.lineage.store import Store

    args = json.loads(sys.stdin.read())
    store = Store.open(args["store"])
    path = train_unrecorded(store, args["run"], Path(args["out_dir"]), init_model=args["init_model"],
                            start_checkpoint=args["start_checkpoint"], shard_checkpoints=args["shard_checkpoints"])
    print(json.dumps({"sha256": _sha(path)}))
    return 0


# ------------------------------------------------------------------ a plan


def verify_plan(store: Store, plan_id: str, *, reproduce_exact: bool = False) -> dict:
    """Check every action of a plan that ran (`expunge verify`) and record the results. Before the requests
    complete, every check is computed afresh from the store; once the store has forgotten the subjects the
    erased records cannot be named any more: each item's latest recorded check stands, with every file of its
    chain re-hashed (a file swapped since fails)."""
    import tempfile

    from expunge.orchestrator import execute, planner
    from expunge.orchestrator import requests as rq
    from expunge.orchestrator.policy import pinned

    doc = planner.load_plan(store, plan_id)
    pid = doc["id"]
    state = execute._state(store, pid)
    if not state:
        raise BadInput(f"plan {pid[:12]} has not run: nothing to verify (`expunge run {pid[:12]}` first)")
    policy = pinned(store, doc["policy"]["sha256"])
    with store.read() as con:
        forgotten = con.execute("SELECT forgotten FROM executions WHERE plan_id = ?", [pid]).fetchone()[0]
    hashes = rq.subject_hashes(store, doc["requests"])
    erased = None if forgotten else store.engine().records_of(hashes)[0]
    recorded = latest(store, pid)
    checks = []
    with tempfile.TemporaryDirectory(prefix="expunge-verify-") as tmp:
        for pos, item in enumerate(doc["items"]):
            st = state[pos]
            eff = execute.effective_item(item, st)
            action = eff["chosen"]["action"] if eff["chosen"] else None
            if st["state"] != "done":
                res = _result(_planned_kind(eff), "inconclusive", {}, [f"the action is {st['state']}, not done"])
                source = "computed"
            elif erased is not None:
                res = check_item(store, doc, eff, action, st["new_model"], erased=erased, hashes=hashes,
                                 policy=policy, passed=passed_results(store, pid), work_dir=Path(tmp))
                source = "computed"
            else:
                res = recheck_recorded(store, recorded.get(pos), st["new_model"])
                source = "recorded"
            if reproduce_exact and st["state"] == "done" and st["new_model"]:
                rep = reproduce(store, pid, pos, action, item["model"], st["new_model"], st["detail"])
                res["metrics"]["reproduce"] = rep
                # A reproduction's finding replaces an earlier one's (a recorded check carries its reasons).
                res["reasons"] = [r for r in res["reasons"] if not r.startswith(REPRODUCE_FAILED)]
                if rep["done"] and not rep["same"]:
                    res["verdict"], res["passed"] = "fail", False
                    res["reasons"].append(f"{REPRODUCE_FAILED} "
                                          f"({rep['reproduced_sha256'][:12]}… instead of {rep['recorded_sha256'][:12]}…)")
            if st["state"] == "done":
                record(store, pid, pos, item["model"], st["new_model"], res, source)
            checks.append(_row(item, eff, st, res, source))
    return {"kind": "expunge.verify", "plan": pid, "requests": doc["requests"],
            "source": "recorded" if erased is None else "computed", "reproduce": reproduce_exact,
            "checks": checks, "passed": all(c["passed"] for c in checks)}


def recheck_recorded(store: Store, rec: dict | None, new_model: str | None) -> dict:
    """After the store forgot the subjects: the recorded check, with the new version's chain re-hashed now."""
    if rec is None:
        return _result("lineage", "inconclusive", {}, ["no check was recorded before the store forgot the subjects"])
    metrics = dict(rec["metrics"])
    reasons = list(metrics.pop("reasons", []))
    verdict = rec["verdict"]
    if new_model:
        chain = []
        for ref in [new_model, *ancestors(store, new_model)]:
            info = _info(store, ref)
            chain.append({"model": ref, "sha256": info["sha256"], "artifact": artifact_state(info["path"],
                                                                                            info["sha256"])})
        metrics["rehashed"] = chain
        own = chain[0]["artifact"]
        bad = [c["model"] for c in chain if c["artifact"] == "changed" or (c["model"] == new_model and own != "ok")]
        if rec["kind"] == "lineage":
            bad += [c["model"] for c in chain[1:] if c["artifact"] == "missing"]
        if bad:
            verdict = "fail"
            reasons.append(f"the file of {', '.join(sorted(set(bad)))} is no longer the recorded one")
    metrics["recorded_at"] = rec["checked_at"]
    return _result(rec["kind"], verdict, metrics, reasons)


def key_metrics(res: dict) -> str:
    """One line of the metrics that matter for the check's kind (the CLI table)."""
    m = res["metrics"]
    parts = []
    if res["kind"] == "lineage" and "chain" in m:
        parts.append(f"{len(m['chain'])} version(s) in chain, {sum(v['erased_records'] for v in m['chain'])} "
                     "erased records held")
    if res["kind"] == "certificate" and "epsilon" in m:
        parts.append(f"ε={m['epsilon']:g} δ={m['delta']:g} bound={m.get('residual_bound') or 0:.3g} "
                     f"left={m['budget_left']:.3g}")
    if m.get("mia"):
        for attack, e in m["mia"].items():
            parts.append(f"{attack} AUC {e['auc']['original']:.2f}→{e['auc']['unlearned']:.2f}"
                         + (f" (retrained {e['auc']['retrained']:.2f})" if "retrained" in e["auc"] else ""))
    if m.get("accuracy"):
        a = m["accuracy"]
        if a["original"]["test"] is not None:
            parts.append(f"test acc {a['original']['test']:.3f}→{a['unlearned']['test']:.3f}")
    p = m.get("probe")
    if p and p.get("available"):
        parts.append("probe changed " + ", ".join(f"{p[w]['changed']}/{p[w]['rows']} {w}" for w in ("erased", "retained")
                                                  if p.get(w)))
    rep = m.get("reproduce")
    if rep:
        parts.append("reproduced: same hash" if rep.get("same") else
                     "reproduced: DIFFERENT hash" if rep.get("done") else f"not reproduced ({rep['why']})")
    return "; ".join(parts)


def _row(item: dict, eff: dict, st: dict, res: dict, source: str) -> dict:
    return {"order": item["order"], "model": item["model"], "action": (eff["chosen"] or {}).get("action"),
            "new_model": st["new_model"], "state": st["state"], "kind": res["kind"], "verdict": res["verdict"],
            "passed": res["passed"], "source": source, "reasons": res["reasons"], "metrics": res["metrics"],
            "summary": key_metrics(res)}


if __name__ == "__main__":
    raise SystemExit(_reproduce_main())
