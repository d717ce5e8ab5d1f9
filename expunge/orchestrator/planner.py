"""The planner: for erasure requests, the cheapest admissible action for every affected model.

It walks the affected models in topological order (a model derived from an affected model is
affected), prices every action in the catalogue, keeps those the policy admits (guarantee at
least the category's weakest allowed, done before the deadline, per-model overrides), picks the
cheapest and says why each other candidate lost. A plan is a JSON document whose id is the
SHA-256 of its canonical form; approving it records who, and a plan changed afterwards no
longer matches its id.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Sequence

from expunge.errors import BadInput, ExpungeError, UnknownReference
from expunge.lineage.store import Store, _now, has_table
from expunge.orchestrator import requests as rq
from expunge.orchestrator.actions import ACTIONS, ModelFacts
from expunge.orchestrator.costs import format_seconds
from expunge.orchestrator.policy import GUARANTEES, Policy, stronger_or_equal

DDL = """
CREATE TABLE IF NOT EXISTS plans(plan_id VARCHAR PRIMARY KEY, created_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS plan_requests(plan_id VARCHAR, request_id VARCHAR);
CREATE TABLE IF NOT EXISTS approvals(plan_id VARCHAR, approver VARCHAR, approved_at TIMESTAMP, plan_hash VARCHAR);
"""


BATCH_EXACT = 50
# The most work (k removals × n·d² for each Hessian) spent at planning time on a certified model's exact
# budget use; beyond it the bound from the recorded Hessian facts decides.
CERTIFIED_WORK = 2e8


class NoAdmissibleAction(ExpungeError):
    exit_code = 4


# ------------------------------------------------------------------ facts


class _Catalog:
    """The run and model facts the planner reads, loaded once per plan however many requests it prices."""

    def __init__(self, store: Store):
        with store.view() as view:
            self.runs: dict[str, dict] = {}
            for name, rid, trainer, family, wall, gpu, config, extra in view.execute(
                """SELECT name, run_id, trainer, model_family, coalesce(wall_seconds, 0), coalesce(gpu_seconds, 0),
                          config, extra FROM runs""").fetchall():
                self.runs[name] = dict(rid=rid, trainer=trainer, family=family, wall=wall, gpu=gpu, config=config,
                                       extra=extra, n_train=0, ckpts=[])
            by_rid = {r["rid"]: r for r in self.runs.values()}
            for rid, n in view.execute(
                "SELECT run_id, sum(n_records) FROM run_inputs WHERE role = 'train' GROUP BY run_id").fetchall():
                by_rid[rid]["n_train"] = int(n)
            for rid, step, shard, slice_ in view.execute(
                    "SELECT run_id, step, shard, slice FROM checkpoints ORDER BY run_id, step, position").fetchall():
                by_rid[rid]["ckpts"].append((step, shard, slice_))
            self.parents: dict[str, list[str]] = {}
            for child, parent in view.execute(
                """SELECT c.name || '@' || c.version_no, p.name || '@' || p.version_no FROM model_parents mp
                   JOIN models c ON c.model_id = mp.model_id JOIN models p ON p.model_id = mp.parent_model_id"""
            ).fetchall():
                self.parents.setdefault(child, []).append(parent)
            self.model_run = dict(view.execute(
                "SELECT m.name || '@' || m.version_no, r.name FROM models m LEFT JOIN runs r USING (run_id)"
            ).fetchall())
        self.run_seconds = {n: (None if r["trainer"] is None else float(r["wall"])) for n, r in self.runs.items()}
        self._facts: dict[str, dict] = {}

    def run_facts(self, name: str) -> dict:
        """The ModelFacts fields a model takes from its producing run (parsed once per run)."""
        got = self._facts.get(name)
        if got is not None:
            return got
        run = self.runs.get(name)
        if run is None:
            return {}
        cfg = json.loads(run["config"] or "{}")
        extra = json.loads(run["extra"] or "{}")
        ckpts = run["ckpts"]
        steps = [c[0] for c in ckpts]
        stage_steps, prev = {}, 0
        for step, shard, slice_ in sorted(c for c in ckpts if c[1] is not None and c[2] is not None):
            stage_steps[(shard, slice_)] = step - prev
            prev = step
        got = self._facts[name] = dict(
            trainer=run["trainer"], family=run["family"], run_seconds=float(run["wall"]),
            run_device="gpu" if run["gpu"] else "cpu", run_records=run["n_train"],
            epochs=int(cfg.get("epochs", 1) or 1), iterations=int(cfg.get("max_iter", 100) or 100),
            dim=len(cfg.get("feature_cols", [])) + 1, certificate=extra.get("certified_removal"),
            budget_spent=float(extra.get("removal_budget_spent", 0.0)),
            has_checkpoints=any(c[1] is None for c in ckpts), total_steps=max(steps) if steps else 0,
            stage_steps=stage_steps)
        return got


def gather(store: Store, impact, record_ords=None, catalog: _Catalog | None = None) -> list[ModelFacts]:
    """Facts for every affected model, parents before children.

    With the erased records' ordinals, certified-removal models whose recorded bound says the budget is
    spent get the exact budget their removal would use, computed by their trainer on the run's data.
    """
    runs = {r["id"]: r for r in impact.runs}
    version_rows = {d["id"]: d["rows"] for d in impact.datasets}  # rows hit, ≥ a run's share of them
    models = impact.models
    affected = {m["id"] for m in models}
    if not models:
        return []
    cat = catalog or _Catalog(store)
    parents = cat.parents
    out = []
    for m in sorted(models, key=lambda m: (len(m["path"]), m["name"], m["version"])):
        rimp = runs.get(m["run"]) if m["direct"] else None
        f = ModelFacts(model=m["id"], name=m["name"], stage=m["stage"], direct=m["direct"], records=0,
                       train_records=0, run=m["run"], **(cat.run_facts(m["run"]) if m["run"] else {}))
        if rimp:
            f.records = rimp["records"]
            f.train_records = sum(i["records"] for i in rimp["inputs"] if i["role"] == "train")
            f.train_rows = sum(version_rows.get(i["dataset"], i["records"]) if i["records"] else 0
                               for i in rimp["inputs"] if i["role"] == "train")
            f.affected_shards = {s["shard"]: s["first_slice"] for s in rimp["shards"] if s["first_slice"] is not None}
            fs = rimp["first_seen"]
            if fs is not None and fs["clean_checkpoints"] >= 1:
                f.clean_step = fs["last_clean_step"]
        f.affected_parents = sorted(p for p in parents.get(m["id"], []) if p in affected)
        # The newest ancestor that never saw the records, following first parents.
        chain, cur = [m["id"]], m["id"]
        while parents.get(cur):
            cur = sorted(parents[cur])[0]
            if cur not in affected:
                f.clean_ancestor = cur
                secs = [cat.run_seconds.get(cat.model_run.get(x)) for x in chain]
                f.rederive_seconds = None if any(s is None for s in secs) else float(sum(secs))
                break
            chain.append(cur)
        out.append(f)
    if record_ords is not None:
        _certified_needs(store, out, record_ords)
    return out


def _certified_needs(store: Store, facts: list[ModelFacts], record_ords) -> None:
    """The recorded bound is conservative before the data is at hand; where it says no, ask the trainer
    (`removal_need(store, run, model_path, records)`, if it has one) for the Newton steps' own bounds.
    Imports the trainer (and torch) only then."""
    from expunge.orchestrator.actions import CertifiedRemoval
    from expunge.orchestrator.trainers import load_trainer_module

    for f in facts:
        if not (f.certificate and f.direct and f.trainer and f.train_records):
            continue
        left = f.certificate.get("removal_budget", 0.0) - f.budget_spent
        if left <= 0 or CertifiedRemoval.consumption(f, limit=left) <= left:
            continue
        if max(f.train_records, f.train_rows) * f.run_records * f.dim ** 2 > CERTIFIED_WORK:
            continue  # k Hessians of n·d²: too much for planning; the recorded bound stands
        try:
            fn = getattr(load_trainer_module(f.trainer), "removal_need", None)
        except ExpungeError:
            continue
        if fn is None:
            continue
        name, _, ver = f.model.rpartition("@")
        with store.view() as view:
            path = view.one("SELECT artifact_path FROM models WHERE name = ? AND version_no = ?", [name, int(ver)])
        if path:
            try:
                f.certified_need = fn(store, f.run, path, record_ords)
            except (ExpungeError, OSError, RuntimeError, ValueError, KeyError):
                pass  # the data or weights are not at hand: the recorded bound stands


# ------------------------------------------------------------------ choosing


def _rate(f: ModelFacts, policy: Policy) -> float:
    return policy.gpu_hour if f.run_device == "gpu" else policy.cpu_hour


def price(f: ModelFacts, policy: Policy, required: str, deadline: datetime, now: datetime) -> list[dict]:
    """Every action, priced and judged, best first."""
    rule = policy.model(f.name)
    cands = []
    for a in ACTIONS.values():
        why = a.check(f, policy)
        entry: dict = {"action": a.name, "guarantee": a.guarantee_for(f), "applicable": why is None}
        if why is None:
            est = a.estimate(f, policy)
            entry.update(seconds=round(est.seconds, 3), cost=round(est.dollars(_rate(f, policy)), 6),
                         reasons=est.reasons)
            if not stronger_or_equal(entry["guarantee"], required):
                why = f"{entry['guarantee']} is weaker than the required {required}"
            elif rule.always_retrain and a.name != "full_retrain":
                why = f"policy: model {f.name} must always be retrained"
            elif now + timedelta(seconds=est.seconds) > deadline:
                why = f"would finish after the deadline ({deadline:%Y-%m-%d %H:%M})"
        entry["admissible"] = why is None
        entry["why_not"] = why
        cands.append(entry)
    order = {g: i for i, g in enumerate(reversed(GUARANTEES))}
    cands.sort(key=lambda c: (not c["admissible"], c.get("seconds", float("inf")), order[c["guarantee"]],
                              c["action"]))
    return cands


def choose(facts: Sequence[ModelFacts], policy: Policy, required: str | dict[str, str],
           deadline: datetime | dict[str, datetime], now: datetime) -> list[dict]:
    """Pick per model; `required` and `deadline` may be per model (batched requests)."""
    items = []
    chosen_guarantee: dict[str, str] = {}
    for f in facts:
        req_g = required[f.model] if isinstance(required, dict) else required
        dl = deadline[f.model] if isinstance(deadline, dict) else deadline
        # Re-deriving from unlearned parents is as good as the weakest of their unlearning; a parent
        # with no admissible action leaves nothing to re-derive from.
        pg = [chosen_guarantee.get(p) for p in f.affected_parents]
        f.parent_guarantee = (min(pg, key=GUARANTEES.index) if all(pg) else None) if pg else "exact"
        cands = price(f, policy, req_g, dl, now)
        best = cands[0] if cands[0]["admissible"] else None
        runner = next((c for c in cands[1:] if c["applicable"]), None)
        if best and runner:
            if runner["admissible"]:
                runner = {**runner, "why_not": f"costs {format_seconds(runner['seconds'] - best['seconds'])} more"}
        if best:
            chosen_guarantee[f.model] = best["guarantee"]
        items.append({
            "model": f.model, "stage": f.stage, "direct": f.direct, "run": f.run, "records": f.records,
            "required_guarantee": req_g, "deadline": dl.isoformat() + "Z",
            "chosen": {k: best[k] for k in ("action", "guarantee", "seconds", "cost", "reasons")} if best else None,
            "runner_up": ({k: runner.get(k) for k in ("action", "guarantee", "seconds", "cost", "why_not")}
                          if runner else None),
            # Priced candidates, best first; actions that do not apply to this model only say why.
            "candidates": [{k: c[k] for k in ("action", "guarantee", "admissible", "seconds", "cost", "why_not")}
                           for c in cands if c["applicable"]],
            "not_applicable": {c["action"]: c["why_not"] for c in cands if not c["applicable"]},
            "blocked_by": None if best else sorted({c["why_not"] for c in cands if c["why_not"]}),
            "retrain_seconds": round(f.run_seconds, 3),
            "retrain_cost": round(f.run_seconds / 3600 * _rate(f, policy), 6),
        })
    return items


# ------------------------------------------------------------------ plans


def _enc(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical(doc: dict) -> bytes:
    return _enc(doc).encode()


def _join(pieces: dict[str, str]) -> str:
    """What `_enc` gives for the dict whose top-level values encode to `pieces`."""
    return "{" + ",".join(f"{_enc(k)}:{pieces[k]}" for k in sorted(pieces)) + "}"


def _body(doc: dict) -> bytes:
    return canonical({k: v for k, v in doc.items() if k not in ("id", "approvals")})


def plan_hash(doc: dict) -> str:
    return hashlib.sha256(_body(doc)).hexdigest()


def dumps(doc: dict, pieces: dict[str, str] | None = None) -> str:
    """The plan as compact JSON with sorted keys (the same text as `expunge.schemas.dumps`).

    `pieces`, from `plan_and_encode`, reuses the encoding made for the id (pass it only with the
    unchanged plan; `id` and `approvals` are encoded afresh)."""
    if pieces is None:
        return _enc(doc)
    pieces = dict(pieces)
    for k in ("id", "approvals"):
        if k in doc:
            pieces[k] = _enc(doc[k])
    return _join(pieces)


def make_plan(store: Store, request_ids: Sequence[str], policy: Policy, now: datetime | None = None) -> dict:
    return plan_and_encode(store, request_ids, policy, now)[0]


def plan_and_encode(store: Store, request_ids: Sequence[str], policy: Policy,
                    now: datetime | None = None) -> tuple[dict, dict[str, str]]:
    """The plan, and the canonical JSON of each of its top-level values, from which its id was made:
    `save_plan` and `dumps` take them instead of encoding a plan of thousands of models again."""
    if not request_ids:
        raise BadInput("plan which request(s)? give at least one request id")
    now = now or _now()
    wanted = list(dict.fromkeys(request_ids))
    known = {r.id: r for r in rq.list_requests(store)} if len(wanted) > 1 else {}
    reqs = [known[r] if r in known else rq.get(store, r) for r in wanted]
    for r in reqs:
        if r.status in ("executing", "verified", "closed"):
            raise BadInput(f"request {r.id} is {r.status}; it cannot be planned again")
    required = max((policy.category(r.category).weakest_guarantee for r in reqs), key=GUARANTEES.index)
    deadline = min(r.deadline_at for r in reqs)
    hashes = rq.subject_hashes(store, [r.id for r in reqs])
    impact = store.impact_hashed(hashes)
    catalog = _Catalog(store)
    # Batched: each model gets the strictest guarantee and the earliest deadline of the requests
    # whose subjects actually touched it.
    # Up to BATCH_EXACT requests are looked at one by one; beyond, by category, with the category's
    # earliest deadline (conservative: never later than the true one).
    per_model_g: dict[str, str] = {}
    per_model_d: dict[str, datetime] = {}
    if len(reqs) == 1:
        groups = [(reqs, hashes, impact)]
    elif len(reqs) <= BATCH_EXACT:
        groups = []
        for r in reqs:
            h = rq.subject_hashes(store, [r.id])
            groups.append(([r], h, store.impact_hashed(h)))
    else:
        by_cat: dict[str, list] = {}
        for r in reqs:
            by_cat.setdefault(r.category, []).append(r)
        groups = []
        for rs in by_cat.values():
            h = rq.subject_hashes(store, [r.id for r in rs])
            groups.append((rs, h, store.impact_hashed(h)))
    for rs, _, imp in groups:
        g = max((policy.category(r.category).weakest_guarantee for r in rs), key=GUARANTEES.index)
        d = min(r.deadline_at for r in rs)
        for m in imp.models:
            per_model_g[m["id"]] = max(per_model_g.get(m["id"], g), g, key=GUARANTEES.index)
            per_model_d[m["id"]] = min(per_model_d.get(m["id"], d), d)
    items = choose(gather(store, impact, store.engine().records_of(hashes)[0], catalog), policy, per_model_g,
                   per_model_d, now)
    total = sum(i["chosen"]["seconds"] for i in items if i["chosen"])
    cost = sum(i["chosen"]["cost"] for i in items if i["chosen"])
    doc = {
        "kind": "expunge.plan", "schema_version": 1,
        "requests": [r.id for r in reqs], "created_at": now.isoformat() + "Z",
        "policy": {"source": policy.source, "sha256": hashlib.sha256(canonical(policy.to_dict())).hexdigest()},
        "required_guarantee": required, "deadline": deadline.isoformat() + "Z",
        "subjects": {"requested": impact.requested, "found": impact.found}, "records": impact.records,
        "items": items,
        "total": {"seconds": round(total, 3), "cost": round(cost, 6)},
        "retrain_everything": {"seconds": round(sum(i["retrain_seconds"] for i in items), 3),
                               "cost": round(sum(i["retrain_cost"] for i in items), 6)},
        "blocked": [i["model"] for i in items if i["chosen"] is None],
        "approval": {"required": policy.approval_required, "approvers": policy.approvers},
    }
    if 1 < len(reqs) <= BATCH_EXACT:
        # Each request planned alone, as `make_plan([r])` would (its impact is already at hand).
        alone_s = alone_c = 0.0
        for (r,), h, imp in groups:
            g = policy.category(r.category).weakest_guarantee
            for i in choose(gather(store, imp, store.engine().records_of(h)[0], catalog), policy, g, r.deadline_at,
                            now):
                if i["chosen"]:
                    alone_s += i["chosen"]["seconds"]
                    alone_c += i["chosen"]["cost"]
        doc["batching"] = {"alone_seconds": round(alone_s, 3), "alone_cost": round(alone_c, 6),
                           "saving_seconds": round(alone_s - total, 3)}
    pieces = {k: _enc(v) for k, v in doc.items()}
    doc["id"] = hashlib.sha256(_join(pieces).encode()).hexdigest()
    return doc, pieces


def plan_path(store: Store, plan_id: str):
    return store.root / "plans" / f"{plan_id}.json"


def save_plan(store: Store, doc: dict, pieces: dict[str, str] | None = None) -> str:
    """Write the plan document to `<store>/plans/<id>.json` (content-addressed, outside the catalog so
    writes do not copy it) and register it; its requests become planned unless it is blocked.

    The file is exactly the canonical form whose SHA-256 is the id (`sha256sum plans/<id>.json` checks a
    plan without expunge); a plan changed since it was made is refused. `pieces`: see `plan_and_encode`.
    """
    from expunge.lineage.fsutil import atomic_write_bytes

    body = _body(doc) if pieces is None else \
        _join({k: v for k, v in pieces.items() if k not in ("id", "approvals")}).encode()
    if hashlib.sha256(body).hexdigest() != doc.get("id"):
        raise BadInput("the plan was changed after it was made (its content no longer matches its id); "
                       "make it again")
    if pieces is not None:  # what is registered must be what the file says
        doc = dict(doc, requests=json.loads(pieces["requests"]), blocked=json.loads(pieces["blocked"]))
    path = plan_path(store, doc["id"])
    path.parent.mkdir(exist_ok=True)
    atomic_write_bytes(path, body)
    with store.write() as txn:
        txn.con.execute(DDL)
        if not txn.one("SELECT count(*) FROM plans WHERE plan_id = ?", [doc["id"]]):
            txn.con.execute("INSERT INTO plans VALUES (?, ?)", [doc["id"], _now()])
            txn.con.execute("INSERT INTO plan_requests SELECT ?, unnest(?::VARCHAR[])", [doc["id"], doc["requests"]])
        if not doc["blocked"]:
            rq.set_status_many(txn, doc["requests"], "planned")
    return doc["id"]


def _find(con, store: Store, plan_id: str) -> tuple[str, dict]:
    rows = [] if not has_table(con, "plans") or len(plan_id) < 8 else con.execute(
        "SELECT plan_id FROM plans WHERE plan_id LIKE ? || '%'", [plan_id]).fetchall()
    if len(rows) != 1:
        raise UnknownReference(f"unknown plan {plan_id!r}" if not rows else f"plan id {plan_id!r} is ambiguous")
    pid = rows[0][0]
    try:
        doc = json.loads(plan_path(store, pid).read_bytes())
        doc["id"] = pid
        return pid, doc
    except FileNotFoundError:
        raise UnknownReference(f"plan {pid[:12]} is registered but its document {plan_path(store, pid)} is missing") \
            from None


def load_plan(store: Store, plan_id: str) -> dict:
    with store.read() as con:
        pid, doc = _find(con, store, plan_id)
        approvals = [] if not has_table(con, "approvals") else \
            con.execute("SELECT approver, approved_at, plan_hash FROM approvals WHERE plan_id = ? ORDER BY approved_at",
                        [pid]).fetchall()
    doc["approvals"] = [{"by": a, "at": t.isoformat() + "Z", "plan_sha256": h} for a, t, h in approvals]
    return doc


def plan_exists_with_approvals(store: Store, plan_id: str) -> bool:
    with store.read() as con:
        return bool(con.execute("SELECT count(*) FROM approvals WHERE plan_id = ?", [plan_id]).fetchall()[0][0])


def approve(store: Store, plan_id: str, by: str) -> dict:
    """Record an approval; refuse a plan whose content no longer matches its id."""
    by = by.strip()
    if not by:
        raise BadInput("approve --by needs a name")
    with store.write() as txn:
        txn.con.execute(DDL)
        pid, doc = _find(txn.con, store, plan_id)
        if plan_hash(doc) != pid:
            raise BadInput(f"plan {pid[:12]} was changed after it was made (its content no longer matches its id); "
                           "make a new plan")
        if doc["blocked"]:
            raise BadInput(f"plan {pid[:12]} has models with no admissible action ({', '.join(doc['blocked'])}); "
                           "it cannot be approved")
        prev = {a for (a,) in txn.con.execute("SELECT approver FROM approvals WHERE plan_id = ?", [pid]).fetchall()}
        if by in prev:
            raise BadInput(f"{by} already approved plan {pid[:12]}")
        txn.con.execute("INSERT INTO approvals VALUES (?, ?, ?, ?)", [pid, by, _now(), pid])
        if len(prev) + 1 >= doc["approval"]["approvers"]:
            rq.set_status_many(txn, doc["requests"], "approved")
    return load_plan(store, pid)
