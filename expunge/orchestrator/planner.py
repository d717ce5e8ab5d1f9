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
import os
from datetime import datetime, timedelta
from typing import Sequence

from expunge import audit
from expunge.errors import BadInput, ExpungeError, UnknownReference
from expunge.lineage.store import Store, _now, has_table
from expunge.orchestrator import requests as rq
from expunge.orchestrator import costs
from expunge.orchestrator.actions import ACTIONS, ModelFacts
from expunge.orchestrator.costs import RunCost
from expunge.orchestrator.costs import format_seconds
from expunge.orchestrator.policy import CHECKS, GUARANTEES, Policy, pin, pinned, store_policy, stronger_or_equal

DDL = """
CREATE TABLE IF NOT EXISTS plans(
    plan_id VARCHAR PRIMARY KEY, created_at TIMESTAMP NOT NULL,
    models INTEGER NOT NULL, blocked INTEGER NOT NULL, total_seconds DOUBLE NOT NULL, approvers INTEGER NOT NULL,
    subjects_requested INTEGER NOT NULL, subjects_found INTEGER NOT NULL,
    superseded_by VARCHAR,            -- a newer plan for (one of) the same requests
    lapsed_at TIMESTAMP);             -- its approval lapsed when it was replanned (--replan)
CREATE TABLE IF NOT EXISTS plan_requests(plan_id VARCHAR, request_id VARCHAR);
CREATE TABLE IF NOT EXISTS approvals(
    plan_id VARCHAR, approver VARCHAR, approved_at TIMESTAMP, plan_hash VARCHAR,
    forced BOOLEAN NOT NULL, reason VARCHAR,
    key_fingerprint VARCHAR NOT NULL,  -- the approver's Ed25519 key (SHA256:… as ssh-keygen -l prints it)
    signature VARCHAR NOT NULL);      -- base64 Ed25519 signature of approvals.statement(plan, policy)
"""


BATCH_EXACT = 50
# The most work (k removals × n·d² for each Hessian) spent at planning time on a certified model's exact
# budget use; beyond it the bound from the recorded Hessian facts decides.
CERTIFIED_WORK = 2e8
# The same with the run's removal rows file at hand (the data read in ~50 ms at 200k rows, not the features
# file's ~0.3 s): about 0.2 s of Hessians, so that a version whose weights carry no Hessian (removed from once)
# can be priced for per-row Newton steps at 200k rows × 33 columns rather than ruled out by the worst-case bound.
CERTIFIED_WORK_FILE = 1e9


class NoAdmissibleAction(ExpungeError):
    exit_code = 4


# ------------------------------------------------------------------ facts


class _Catalog:
    """The run and model facts the planner reads, loaded once per plan however many requests it prices."""

    def __init__(self, store: Store):
        with store.view() as view:
            self.runs: dict[str, dict] = {}
            for name, rid, trainer, family, wall, gpu, config, extra, total_steps, shards, setup, rec in view.execute(
                """SELECT name, run_id, trainer, model_family, coalesce(wall_seconds, 0), coalesce(gpu_seconds, 0),
                          config, extra, total_steps, n_shards, coalesce(setup_seconds, 0),
                          coalesce(record_seconds, 0) FROM runs""").fetchall():
                self.runs[name] = dict(rid=rid, trainer=trainer, family=family, wall=wall, gpu=gpu, config=config,
                                       extra=extra, n_train=0, n_rows=0, ckpts=[], total_steps=total_steps,
                                       shards=shards or 1, setup=float(setup), record=float(rec))
            by_rid = {r["rid"]: r for r in self.runs.values()}
            for rid, n, rows, composed in view.execute(
                """SELECT i.run_id, sum(i.n_records), sum(i.n_rows), bool_or(v.row_space <> 'records')
                   FROM run_inputs i JOIN dataset_versions v USING (version_id) WHERE i.role = 'train'
                   GROUP BY i.run_id"""
            ).fetchall():
                by_rid[rid]["n_train"], by_rid[rid]["n_rows"] = int(n), int(rows)
                by_rid[rid]["composed"] = bool(composed)
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
        self.key_layers = len(store.key_layers)
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
        stage_steps, prev = {}, 0
        for step, shard, slice_ in sorted(c for c in ckpts if c[1] is not None and c[2] is not None):
            stage_steps[(shard, slice_)] = step - prev
            prev = step
        got = self._facts[name] = dict(
            trainer=run["trainer"], family=run["family"], run_seconds=float(run["wall"]),
            run_device="gpu" if run["gpu"] else "cpu", run_records=run["n_train"], run_rows=run["n_rows"],
            setup_seconds=run["setup"], record_seconds=run["record"],
            shards=run["shards"],
            epochs=int(cfg.get("epochs", 1) or 1),
            # Gradient passes the certified trainer counted, else its configured cap.
            iterations=int((extra.get("certified_removal") or {}).get("gradient_passes")
                           or cfg.get("max_iter", 100) or 100),
            dim=len(cfg.get("feature_cols", [])) + 1, certificate=extra.get("certified_removal"),
            budget_spent=float(extra.get("removal_budget_spent", 0.0)),
            has_checkpoints=any(c[1] is None for c in ckpts), total_steps=run["total_steps"],
            stage_steps=stage_steps, setup_read=extra.get("setup_read_seconds"),
            shard_read=extra.get("shard_read_seconds"), record_write=extra.get("record_write_seconds"),
            # SISA over a composed dataset: a shard retrain deals the rows again from the owners' keys, which a key
            # rotation since the run has changed (a records dataset's retrain reads the recorded assignment).
            sisa_rekeyed=bool(run.get("composed")) and extra.get("owner_key_layers") not in (None, self.key_layers))
        return got


def gather(store: Store, impact, record_ords=None, catalog: _Catalog | None = None) -> list[ModelFacts]:
    """Facts for every affected model, in a topological order: every model after its affected parents.

    With the erased records' ordinals, certified-removal models whose recorded bound says the budget is
    spent get the exact budget their removal would use, computed on the run's data by expunge's own code
    for their model family (`orchestrator.certified`; no trainer is imported).
    """
    runs = {r["id"]: r for r in impact.runs}
    version_rows = {d["id"]: d["rows"] for d in impact.datasets}  # rows hit, ≥ a run's share of them
    models = {m["id"]: m for m in impact.models}
    if not models:
        return []
    cat = catalog or _Catalog(store)
    parents = cat.parents

    def removed(run: str) -> int:
        r = runs.get(run)
        return sum(i["records"] for i in r["inputs"] if i["role"] == "train") if r else 0

    def run_cost(model: str, whose: str) -> RunCost | str:
        """The model's producing run, priced to be re-done without the erased records (or why it cannot be)."""
        run = cat.model_run.get(model)
        if run is None:
            return f"{whose} {model} has no producing run recorded"
        rf = cat.runs[run]
        if rf["trainer"] is None:
            return f"{whose} {model}'s run {run} has no recorded trainer entry point"
        return RunCost(run, float(rf["wall"]), int(rf["n_train"]), removed(run), float(rf["setup"] + rf["record"]))

    ancestors_memo: dict[str, list[str]] = {}

    def ancestors(model: str) -> list[str]:
        """Every ancestor, each after its own ancestors."""
        got = ancestors_memo.get(model)
        if got is None:
            seen: dict[str, None] = {}
            for p in sorted(parents.get(model, [])):
                for a in (*ancestors(p), p):
                    seen.setdefault(a, None)
            got = ancestors_memo[model] = list(seen)
        return got

    out = []
    for mid in _topological(models, parents):
        m = models[mid]
        rimp = runs.get(m["run"]) if m["direct"] else None
        f = ModelFacts(model=mid, name=m["name"], stage=m["stage"], direct=m["direct"], records=0,
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
        f.affected_parents = sorted(p for p in parents.get(mid, []) if p in models)
        # Retraining the whole chain from scratch: every ancestor's run (a run that made several of them once).
        chain, seen_runs = [], {m["run"]}
        for a in ancestors(mid):
            rc = run_cost(a, "ancestor")
            if isinstance(rc, str):
                f.ancestor_runs, f.ancestors_blocked = None, rc
                break
            if rc.run not in seen_runs:
                seen_runs.add(rc.run)
                chain.append(rc)
        else:
            f.ancestor_runs = chain
        _clean_ancestor(f, mid, parents, models, run_cost)
        out.append(f)
    if record_ords is not None:
        _certified_needs(store, out, record_ords)
    bk = bookkeeping(store)
    if not bk[1]:  # no action done here yet: the benchmark's typical (n = 0 says so in the estimate)
        bk = (costs.BOOKKEEPING_PRIOR, 0)
    writes = record_write(store) if any(f.record_write is not None for f in out) else None
    for f in out:
        f.bookkeeping, f.bookkeeping_n = bk
        if f.record_write is not None and writes is not None:
            f.record_write = writes
    return out


def record_write(store: Store) -> float | None:
    """The median catalog-write seconds (`record_write_seconds`) of the store's last BOOKKEEPING_SAMPLE runs that
    measured one: what committing a new run costs here. One run's own is the write before it in its process (for
    the first run trained after an ingest, the ingest's commit: 5× a run's), too noisy to price a retrain alone."""
    import statistics

    with store.read() as con:
        rows = con.execute("""SELECT extra FROM runs WHERE extra LIKE '%record_write_seconds%'
                              ORDER BY run_id DESC LIMIT ?""", [BOOKKEEPING_SAMPLE]).fetchall()
    got = [float(x) for x in (json.loads(e).get("record_write_seconds") for (e,) in rows)
           if isinstance(x, (int, float))]
    return statistics.median(got) if got else None


BOOKKEEPING_SAMPLE = 20


def bookkeeping(store: Store) -> tuple[float, int]:
    """(median seconds, number of actions): what this store's last `BOOKKEEPING_SAMPLE` actions spent looking up and
    recording, outside the work their estimates price (each action's `bookkeeping_seconds`); (0, 0) before any."""
    import json
    import statistics

    with store.read() as con:
        if not has_table(con, "execution_actions"):
            return 0.0, 0
        rows = con.execute("""SELECT detail FROM execution_actions WHERE state = 'done' AND detail LIKE '%bookkeeping%'
                              ORDER BY ended_at DESC, plan_id, position LIMIT ?""", [BOOKKEEPING_SAMPLE]).fetchall()
    seconds = (json.loads(d).get("bookkeeping_seconds") for (d,) in rows)
    got = [float(x) for x in seconds if isinstance(x, (int, float))]
    return (statistics.median(got), len(got)) if got else (0.0, 0)


def _topological(models: dict[str, dict], parents: dict[str, list[str]]) -> list[str]:
    """The affected models, each after its affected parents (Kahn's algorithm; among the ready ones, models
    that saw the records first, then by name and version)."""
    import heapq

    def key(mid: str):
        m = models[mid]
        return (len(m["path"]), m["name"], m["version"], mid)

    children: dict[str, list[str]] = {}
    waiting: dict[str, int] = {}
    for mid in models:
        aps = {p for p in parents.get(mid, []) if p in models}
        waiting[mid] = len(aps)
        for p in aps:
            children.setdefault(p, []).append(mid)
    ready = [key(mid) for mid, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        mid = heapq.heappop(ready)[-1]
        order.append(mid)
        for c in children.get(mid, []):
            waiting[c] -= 1
            if waiting[c] == 0:
                heapq.heappush(ready, key(c))
    if len(order) != len(models):
        raise ExpungeError("the affected models' derivation graph has a cycle")
    return order


def _clean_ancestor(f: ModelFacts, mid: str, parents: dict[str, list[str]], affected, run_cost) -> None:
    """The newest ancestor that never saw the records, and the runs after it (this model's own last): follow
    the one affected parent up the chain until a model whose parents are all clean."""
    chain, cur = [mid], mid
    while True:
        ps = sorted(parents.get(cur, []))
        if not ps:
            f.replay_blocked = "no ancestor model that never saw the records"
            return
        aps = [p for p in ps if p in affected]
        if not aps:
            break
        if len(aps) > 1:
            f.replay_blocked = f"{cur} has several affected parents ({', '.join(aps)}): no single chain to replay"
            return
        cur = aps[0]
        chain.append(cur)
    replay = []
    for x in reversed(chain):
        rc = run_cost(x, "model" if x == mid else "ancestor")
        if isinstance(rc, str):
            f.replay_blocked = rc
            return
        replay.append(rc)
    f.clean_ancestor, f.replay_runs = ", ".join(ps), replay


def _certified_needs(store: Store, facts: list[ModelFacts], record_ords) -> None:
    """The recorded bound is conservative before the data is at hand; where it says no, compute the Newton
    steps' own bounds on the run's data (`certified.removal_need`) for a model of the `logreg-certified`
    family. That is expunge's own code, chosen by the recorded family: planning never imports the run's
    recorded trainer. Imports torch only then; the weights are checked against their recorded sha256 (a
    swapped file stops the plan: `ArtifactMismatch`)."""
    from expunge.errors import ArtifactMismatch
    from expunge.orchestrator.actions import CERTIFIED_FAMILY, CertifiedRemoval

    for f in facts:
        if not (f.certificate and f.direct and f.train_records and f.family == CERTIFIED_FAMILY):
            continue
        left = f.certificate.get("removal_budget", 0.0) - f.budget_spent
        if left <= 0:
            continue
        # Weights saved with their Hessian are removed from with one batch step on the removed rows alone:
        # its budget is computed exactly here (cheap). Otherwise, only where the recorded bound says no, the
        # per-row steps on the run's data, unless k Hessians of n·d² are too much for planning.
        from expunge.orchestrator import certified

        name, _, ver = f.model.rpartition("@")
        with store.view() as view:
            row = view.execute("SELECT artifact_path, sha256 FROM models WHERE name = ? AND version_no = ?",
                               [name, int(ver)]).fetchall()
            extra = view.execute("SELECT extra FROM runs WHERE name = ?", [f.run]).fetchall()
        extra = json.loads(extra[0][0] or "{}") if extra else {}
        rows = extra.get("removal_rows")
        if rows and os.path.isfile(rows.get("file", "")):  # the rows as trained on, kept by the run (or its chain)
            f.rows_find, f.rows_read = rows.get("find_seconds"), rows.get("read_seconds")
        cap = CERTIFIED_WORK_FILE if f.rows_read is not None else CERTIFIED_WORK
        bound_ok = CertifiedRemoval.consumption(f, limit=left) <= left
        work = 0 if bound_ok or f.forget_rows() * f.run_records * f.dim ** 2 > cap else cap
        if row and row[0][0]:
            try:
                f.certified_need, f.certified_how = certified.removal_need_how(
                    store, f.run, row[0][0], record_ords, sha256=row[0][1], max_work=work, extra=extra)
            except ArtifactMismatch:
                raise
            except (ExpungeError, OSError, RuntimeError, ValueError, KeyError, TypeError):
                pass  # the data or weights are not at hand: the recorded bound stands


# ------------------------------------------------------------------ choosing


def _rate(f: ModelFacts, policy: Policy) -> float:
    return policy.gpu_hour if f.run_device == "gpu" else policy.cpu_hour


STRENGTH = {g: i for i, g in enumerate(GUARANTEES)}


def price(f: ModelFacts, policy: Policy, required: str, deadline: datetime, now: datetime,
          check: str = "mia") -> list[dict]:
    """Every action, priced (the check its result must pass included) and judged; the chosen one first,
    then the other admissible ones (why each lost), then the rest (why each was refused).

    The choice: the strongest guarantee among the admissible actions whose price is at most the policy's
    `max_premium` × the cheapest admissible price; the cheapest of those.
    """
    from expunge.orchestrator.checks import plan_check

    rule = policy.model(f.name)
    rate = _rate(f, policy)
    cands = []
    for a in ACTIONS.values():
        why = a.check(f, policy)
        entry: dict = {"action": a.name, "guarantee": a.guarantee_for(f), "applicable": why is None}
        if why is None:
            chk, why = plan_check(entry["guarantee"], f, policy, check)
            entry["applicable"] = why is None
        if why is None:
            est = a.estimate(f, policy)
            if f.bookkeeping > 0 and a.name != "no_action":
                est = costs.Estimate(est.seconds + f.bookkeeping, est.reasons + [
                    f"+ {costs.format_seconds(f.bookkeeping)} looking up and recording " + (
                        f"(the median of this store's last {f.bookkeeping_n} action(s))" if f.bookkeeping_n else
                        "(no action done on this store yet to measure it: a typical figure)")])
            secs = est.seconds + chk["seconds"]
            entry.update(seconds=round(secs, 6), cost=round(secs / 3600.0 * rate, 6),
                         action_seconds=round(est.seconds, 6), reasons=est.reasons,
                         check=dict(chk, seconds=round(chk["seconds"], 6)))
            if not stronger_or_equal(entry["guarantee"], required):
                why = f"{entry['guarantee']} is weaker than the required {required}"
            elif rule.always_retrain and a.name != "full_retrain":
                why = f"policy: model {f.name} must always be retrained"
            elif now + timedelta(seconds=secs) > deadline:
                why = f"would finish after the deadline ({deadline:%Y-%m-%d %H:%M})"
        entry["admissible"] = why is None
        entry["why_not"] = why
        cands.append(entry)
    admissible = sorted((c for c in cands if c["admissible"]),
                        key=lambda c: (c["seconds"], -STRENGTH[c["guarantee"]], c["action"]))
    ranked = []
    if admissible:
        cheapest = admissible[0]["seconds"]
        limit = cheapest * policy.max_premium
        best = min((c for c in admissible if c["seconds"] <= limit + 1e-9),
                   key=lambda c: (-STRENGTH[c["guarantee"]], c["seconds"], c["action"]))
        ranked = [best] + [c for c in admissible if c is not best]
        for c in ranked[1:]:
            c["why_not"] = _lost(c, best, cheapest, policy.max_premium)
    rest = sorted((c for c in cands if not c["admissible"]),
                  key=lambda c: (not c["applicable"], c.get("seconds", float("inf")), c["action"]))
    return ranked + rest


def _lost(c: dict, best: dict, cheapest: float, premium: float) -> str:
    """Why an admissible candidate lost to the chosen one."""
    if c["seconds"] < best["seconds"]:
        return (f"{format_seconds(best['seconds'] - c['seconds'])} cheaper but only {c['guarantee']}: the policy pays "
                f"up to {premium:g}× the cheapest for a stronger guarantee")
    if STRENGTH[c["guarantee"]] > STRENGTH[best["guarantee"]]:
        ratio = c["seconds"] / cheapest if cheapest > 0 else float("inf")
        return (f"{c['guarantee']}, but {ratio:,.2f}× the cheapest admissible action, more than the {premium:g}× "
                "the policy pays for a stronger guarantee")
    return f"costs {format_seconds(c['seconds'] - best['seconds'])} more"


def choose(facts: Sequence[ModelFacts], policy: Policy, required: str | dict[str, str],
           deadline: datetime | dict[str, datetime], now: datetime, check: str | dict[str, str] = "mia") -> list[dict]:
    """Pick per model, in the order of `facts` (parents first); `required`, `deadline` and `check` may be
    per model (batched requests)."""
    items = []
    chosen_guarantee: dict[str, str] = {}
    retired: set[str] = set()
    for f in facts:
        req_g = required[f.model] if isinstance(required, dict) else required
        dl = deadline[f.model] if isinstance(deadline, dict) else deadline
        chk = check.get(f.model, "mia") if isinstance(check, dict) else check
        # Re-deriving from unlearned parents is as good as the weakest of their unlearning; a parent
        # with no admissible action leaves nothing to re-derive from.
        pg = [chosen_guarantee.get(p) for p in f.affected_parents]
        f.parent_guarantee = (min(pg, key=GUARANTEES.index) if all(pg) else None) if pg else "exact"
        f.retired_parents = [p for p in f.affected_parents if p in retired]
        cands = price(f, policy, req_g, dl, now, chk)
        best = cands[0] if cands[0]["admissible"] else None
        runner = cands[1] if best and len(cands) > 1 and cands[1]["admissible"] else None
        if best:
            chosen_guarantee[f.model] = best["guarantee"]
            if best["action"] == "retire":
                retired.add(f.model)
        items.append({
            "model": f.model, "order": len(items) + 1, "after": list(f.affected_parents), "stage": f.stage,
            "direct": f.direct, "run": f.run, "records": f.records, "train_records": f.train_records,
            "required_guarantee": req_g, "deadline": dl.isoformat() + "Z",
            "chosen": {k: best[k] for k in ("action", "guarantee", "seconds", "action_seconds", "cost", "reasons",
                                            "check")} if best else None,
            "runner_up": ({k: runner[k] for k in ("action", "guarantee", "seconds", "cost", "why_not")}
                          if runner else None),
            # Priced candidates, best first; actions that do not apply to this model only say why.
            "candidates": [{**{k: c[k] for k in ("action", "guarantee", "admissible", "seconds", "cost", "why_not")},
                            "check_seconds": c["check"]["seconds"]} for c in cands if c["applicable"]],
            "not_applicable": {c["action"]: c["why_not"] for c in cands if not c["applicable"]},
            "blocked_by": None if best else sorted({c["why_not"] for c in cands if c["why_not"]}),
            # The counterfactual: its own run again, loading and bookkeeping included (like every action's price).
            "retrain_seconds": round(f.rerun_setup() + f.run_seconds + f.bookkeeping, 6),
            "retrain_cost": round((f.rerun_setup() + f.run_seconds + f.bookkeeping) / 3600 * _rate(f, policy), 6),
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
    per_model_c: dict[str, str] = {}
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
        c = max((policy.category(r.category).check for r in rs), key=CHECKS.index)
        for m in imp.models:
            per_model_g[m["id"]] = max(per_model_g.get(m["id"], g), g, key=GUARANTEES.index)
            per_model_d[m["id"]] = min(per_model_d.get(m["id"], d), d)
            per_model_c[m["id"]] = max(per_model_c.get(m["id"], c), c, key=CHECKS.index)
    items = choose(gather(store, impact, store.engine().records_of(hashes)[0], catalog), policy, per_model_g,
                   per_model_d, now, per_model_c)
    total = sum(i["chosen"]["seconds"] for i in items if i["chosen"])
    cost = sum(i["chosen"]["cost"] for i in items if i["chosen"])
    doc = {
        "kind": "expunge.plan", "schema_version": 2,
        "requests": [r.id for r in reqs], "created_at": now.isoformat() + "Z",
        "policy": {"source": policy.source, "sha256": pin(store, policy)},
        "required_guarantee": required, "deadline": deadline.isoformat() + "Z",
        "subjects": {"requested": impact.requested, "found": impact.found}, "records": impact.records,
        "items": items,
        "total": {"seconds": round(total, 6), "cost": round(cost, 6)},
        "retrain_everything": {"seconds": round(sum(i["retrain_seconds"] for i in items), 6),
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
                            now, policy.category(r.category).check):
                if i["chosen"]:
                    alone_s += i["chosen"]["seconds"]
                    alone_c += i["chosen"]["cost"]
        doc["batching"] = {"alone_seconds": round(alone_s, 6), "alone_cost": round(alone_c, 6),
                           "saving_seconds": round(alone_s - total, 6)}
    pieces = {k: _enc(v) for k, v in doc.items()}
    doc["id"] = hashlib.sha256(_join(pieces).encode()).hexdigest()
    return doc, pieces


def plan_path(store: Store, plan_id: str):
    return store.root / "plans" / f"{plan_id}.json"


def _approved_plans(con, request_ids: Sequence[str]) -> list[tuple[str, str]]:
    """(request, plan) pairs: the live (not superseded) approved plans of these requests."""
    if not has_table(con, "plans"):
        return []
    return con.execute(
        """SELECT DISTINCT pr.request_id, p.plan_id FROM plan_requests pr JOIN plans p USING (plan_id)
           WHERE pr.request_id IN (SELECT unnest(?::VARCHAR[])) AND p.superseded_by IS NULL
             AND EXISTS (SELECT 1 FROM approvals a WHERE a.plan_id = p.plan_id)
           ORDER BY 1, 2""", [list(request_ids)]).fetchall()


def check_replan(store: Store, request_ids: Sequence[str], replan: bool) -> None:
    """Refuse to plan a request that already has an approved plan, unless `replan` (then the approval lapses
    when the new plan is saved)."""
    if replan:
        return
    with store.read() as con:
        hit = _approved_plans(con, request_ids)
    if hit:
        req, pid = hit[0]
        raise BadInput(f"request {req} already has an approved plan ({pid[:12]}); planning it again makes that "
                       "approval lapse: pass --replan to do so")


def save_plan(store: Store, doc: dict, pieces: dict[str, str] | None = None, *, replan: bool = False) -> str:
    """Write the plan document to `<store>/plans/<id>.json` (content-addressed, outside the catalog so
    writes do not copy it) and register it; its requests become planned unless it is blocked.

    The file is exactly the canonical form whose SHA-256 is the id (`sha256sum plans/<id>.json` checks a
    plan without expunge); a plan changed since it was made is refused. `pieces`: see `plan_and_encode`.
    The new plan replaces the earlier plans of its requests: they can no longer be approved. A request with
    an approved plan is refused unless `replan`, which records that the approval lapsed.
    """
    from expunge.lineage.fsutil import atomic_write_bytes

    body = _body(doc) if pieces is None else \
        _join({k: v for k, v in pieces.items() if k not in ("id", "approvals")}).encode()
    if hashlib.sha256(body).hexdigest() != doc.get("id"):
        raise BadInput("the plan was changed after it was made (its content no longer matches its id); "
                       "make it again")
    if pieces is not None:  # what is registered must be what the file says
        doc = {k: json.loads(pieces[k]) for k in ("requests", "blocked", "items", "total", "subjects", "approval")} | \
            {"id": doc["id"]}
    pid = doc["id"]
    path = plan_path(store, pid)
    path.parent.mkdir(exist_ok=True)
    atomic_write_bytes(path, body)
    with store.write() as txn:
        txn.con.execute(DDL)
        if txn.one("SELECT count(*) FROM plans WHERE plan_id = ?", [pid]):
            return pid  # the same plan made again: nothing changes
        approved = _approved_plans(txn.con, doc["requests"])
        if approved and not replan:
            req, old = approved[0]
            raise BadInput(f"request {req} already has an approved plan ({old[:12]}); planning it again makes "
                           "that approval lapse: pass --replan to do so")
        now = _now()
        txn.con.execute("INSERT INTO plans VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
                        [pid, now, len(doc["items"]), len(doc["blocked"]), doc["total"]["seconds"],
                         doc["approval"]["approvers"] if doc["approval"]["required"] else 0,
                         doc["subjects"]["requested"], doc["subjects"]["found"]])
        txn.con.execute("INSERT INTO plan_requests SELECT ?, unnest(?::VARCHAR[])", [pid, doc["requests"]])
        audit.plan_saved(txn, pid, doc, replan)
        txn.con.execute(
            """UPDATE plans SET superseded_by = ?,
                      lapsed_at = CASE WHEN EXISTS (SELECT 1 FROM approvals a WHERE a.plan_id = plans.plan_id)
                                       THEN ? END
               WHERE plan_id <> ? AND superseded_by IS NULL AND plan_id IN
                     (SELECT plan_id FROM plan_requests WHERE request_id IN (SELECT unnest(?::VARCHAR[])))""",
            [pid, now, pid, doc["requests"]])
        # The new plan's requests become planned unless it is blocked; an approved one goes back to planned
        # in any case (its approval lapsed).
        back = [r for (r,) in txn.con.execute("SELECT request_id FROM requests WHERE status = 'approved' AND "
                                              "request_id IN (SELECT unnest(?::VARCHAR[]))", [doc["requests"]]).fetchall()]
        rq.set_status_many(txn, back if doc["blocked"] else doc["requests"], "planned")
    return pid


def _find(con, store: Store, plan_id: str) -> str:
    """The plan whose id is `plan_id` or starts with it (8+ characters, matched as literal text)."""
    ident = plan_id.strip().lower()
    if len(ident) < 8 or any(c not in "0123456789abcdef" for c in ident):
        raise UnknownReference(f"unknown plan {plan_id!r} (a plan id is hexadecimal; give at least 8 characters)")
    rows = [] if not has_table(con, "plans") else con.execute(
        "SELECT plan_id FROM plans WHERE starts_with(plan_id, ?) ORDER BY plan_id LIMIT 2", [ident]).fetchall()
    if len(rows) != 1:
        raise UnknownReference(f"unknown plan {plan_id!r}" if not rows else f"plan id {plan_id!r} is ambiguous")
    return rows[0][0]


def _read_verified(store: Store, pid: str) -> dict:
    """The plan document, refused if its content no longer matches its id."""
    try:
        body = plan_path(store, pid).read_bytes()
    except FileNotFoundError:
        raise UnknownReference(f"plan {pid[:12]} is registered but its document {plan_path(store, pid)} is missing") \
            from None
    if hashlib.sha256(body).hexdigest() != pid:
        raise BadInput(f"plan {pid[:12]} was changed after it was made (its content no longer matches its id); "
                       "make a new plan")
    doc = json.loads(body)
    doc["id"] = pid
    return doc


def _status(con, pid: str) -> dict:
    superseded, lapsed = con.execute("SELECT superseded_by, lapsed_at FROM plans WHERE plan_id = ?", [pid]).fetchone()
    approvals = con.execute(
        """SELECT approver, approved_at, plan_hash, forced, reason, key_fingerprint, signature FROM approvals
           WHERE plan_id = ? ORDER BY approved_at""", [pid]).fetchall()
    return {"superseded_by": superseded, "lapsed_at": lapsed.isoformat() + "Z" if lapsed else None,
            "approvals": [{"by": a, "at": t.isoformat() + "Z", "plan_sha256": h, "key": k, "signature": sig}
                          | ({"forced": True, "reason": r} if forced else {})
                          for a, t, h, forced, r, k, sig in approvals]}


def load_plan(store: Store, plan_id: str) -> dict:
    """A saved plan (its hash checked) with its approvals and, if a newer plan replaced it, by which."""
    with store.read() as con:
        pid = _find(con, store, plan_id)
        st = _status(con, pid)
    doc = _read_verified(store, pid)
    doc["approvals"] = st["approvals"]
    if st["superseded_by"]:
        doc["superseded_by"] = st["superseded_by"]
        if st["lapsed_at"]:
            doc["lapsed_at"] = st["lapsed_at"]
    return doc


def plan_exists_with_approvals(store: Store, plan_id: str) -> bool:
    with store.read() as con:
        return bool(con.execute("SELECT count(*) FROM approvals WHERE plan_id = ?", [plan_id]).fetchall()[0][0])


def plan_state(superseded_by, lapsed_at, blocked: int, approvals: int, needed: int, run: str | None = None) -> str:
    if run is not None:  # its execution: "running" (or stopped part-way; `expunge run` resumes it), "ran"
        return "ran" if run == "done" else "running"
    if superseded_by:
        return "lapsed" if lapsed_at else "superseded"
    if blocked:
        return "blocked"
    return "approved" if approvals >= needed else "planned"


def list_plans(store: Store, request_id: str | None = None) -> list[dict]:
    """Saved plans, newest first (optionally those of one request), with their state and approvals."""
    with store.read() as con:
        if not has_table(con, "plans"):
            return []
        run = "(SELECT e.state FROM executions e WHERE e.plan_id = p.plan_id)" if has_table(con, "executions") \
            else "NULL"
        rows = con.execute(
            f"""SELECT p.plan_id, p.created_at, p.models, p.blocked, p.total_seconds, p.approvers, p.subjects_requested,
                      p.subjects_found, p.superseded_by, p.lapsed_at,
                      (SELECT list(request_id ORDER BY request_id) FROM plan_requests r WHERE r.plan_id = p.plan_id),
                      (SELECT count(*) FROM approvals a WHERE a.plan_id = p.plan_id), {run}
               FROM plans p
               WHERE ? IS NULL OR p.plan_id IN (SELECT plan_id FROM plan_requests WHERE request_id = ?)
               ORDER BY p.created_at DESC, p.plan_id""", [request_id, request_id]).fetchall()
    out = []
    for pid, at, models, blocked, secs, needed, req_n, found, sup, lapsed, reqs, n_appr, ran in rows:
        out.append({"id": pid, "created_at": at.isoformat() + "Z", "requests": reqs, "models": models,
                    "blocked": blocked, "total_seconds": secs, "subjects": {"requested": req_n, "found": found},
                    "approvals": n_appr, "approvals_needed": needed, "superseded_by": sup,
                    "state": plan_state(sup, lapsed, blocked, n_appr, needed, ran)})
    return out


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.removesuffix("Z"))


def stale_reason(store: Store, doc: dict, policy: Policy) -> str | None:
    """Why the plan no longer matches the store (None when it does): it is made again from the current store
    and its pinned policy, at its own time, and must come out identical."""
    try:
        again = make_plan(store, doc["requests"], policy, now=_when(doc["created_at"]))
    except ExpungeError as exc:
        return f"it can no longer be made ({exc})"
    if again["id"] == doc["id"]:
        return None
    old = {i["model"]: i for i in doc["items"]}
    new = {i["model"]: i for i in again["items"]}
    diffs = [f"{m} is affected now" for m in sorted(set(new) - set(old))]
    diffs += [f"{m} is no longer affected" for m in sorted(set(old) - set(new))]
    for m in sorted(set(old) & set(new)):
        a, b = old[m], new[m]
        if (a["chosen"] or {}).get("action") != (b["chosen"] or {}).get("action"):
            diffs.append(f"{m}: {(a['chosen'] or {}).get('action')} → {(b['chosen'] or {}).get('action')}")
        elif a != b:
            diffs.append(f"{m} changed ({', '.join(k for k in a if a[k] != b.get(k))})")
    if doc["records"] != again["records"]:
        diffs.insert(0, f"{again['records']} erased records now, {doc['records']} then")
    return "; ".join(diffs[:5]) or "its content differs"


def verified_approvals(store: Store, doc: dict) -> list[dict]:
    """The plan's approvals whose signatures check against the keys of its pinned policy, one per key."""
    from expunge.orchestrator import approvals as sig

    policy = pinned(store, doc["policy"]["sha256"])
    keys = {name: sig.parse_public_key(line, f"policy approval.keys.{name}")
            for name, line in policy.approver_keys.items()}
    ok, seen = [], set()
    for a in doc.get("approvals", []):
        key = keys.get(a["by"])
        if key is None or sig.fingerprint(key) != a["key"] or a["key"] in seen:
            continue
        if sig.verify(key, a["signature"], doc["id"], doc["policy"]["sha256"]):
            seen.add(a["key"])
            ok.append(a)
    return ok


def approve(store: Store, plan_id: str, key_file, *, force: bool = False, reason: str | None = None) -> dict:
    """Sign and record an approval with an approver's private key (named in the plan's policy).

    Refused: a plan whose content no longer matches its id; one made under another policy than the store's;
    one a newer plan replaced; a blocked one; a stale one (made again from the current store it comes out
    different); one whose subjects are not all in the store (without `force` and a reason); a key the policy
    does not name, or one that already approved it.
    """
    from expunge.orchestrator import approvals as sig

    private = sig.load_private_key(key_file)
    reason = (reason or "").strip() or None
    if force and not reason:
        raise BadInput("--force needs --reason TEXT: why approve a plan that does not cover every subject")
    with store.write() as txn:
        txn.con.execute(DDL)
        pid = _find(txn.con, store, plan_id)
        doc = _read_verified(store, pid)
        st = _status(txn.con, pid)
        policy = pinned(store, doc["policy"]["sha256"])
        current = store_policy(store)
        if current.sha256() != policy.sha256():
            raise BadInput(f"plan {pid[:12]} was made under policy {policy.source} ({policy.sha256()[:12]}), not the "
                           f"store's policy ({current.source}, {current.sha256()[:12]}): make it again under the "
                           "store's policy, or make that policy the store's (`expunge policy set`)")
        if st["superseded_by"]:
            why = "its approval lapsed when " if st["lapsed_at"] else ""
            raise BadInput(f"plan {pid[:12]} was replaced: {why}a newer plan for the same request(s) was made "
                           f"({st['superseded_by'][:12]}); approve that one")
        if doc["blocked"]:
            raise BadInput(f"plan {pid[:12]} has models with no admissible action ({', '.join(doc['blocked'])}); "
                           "it cannot be approved")
        subj = doc["subjects"]
        if subj["found"] < subj["requested"] and not force:
            raise BadInput(f"plan {pid[:12]}: only {subj['found']} of {subj['requested']} subject(s) found in the "
                           "store, so the plan may miss data (a mistyped id? a wrong key?); check the request, or "
                           "approve anyway with --force --reason TEXT")
        if not policy.approver_keys:
            raise BadInput("the plan's policy names no approvers: add their public keys under [approval.keys] "
                           "(`expunge approver keygen NAME --out FILE` makes a key pair), `expunge policy set` it, "
                           "and plan again")
        mine = sig.raw_public(private.public_key())
        names = [n for n, line in policy.approver_keys.items()
                 if sig.raw_public(sig.parse_public_key(line, n)) == mine]
        fp = sig.fingerprint(private.public_key())
        if not names:
            raise BadInput(f"key {fp} is not an approver's in the plan's policy (approvers: "
                           f"{', '.join(sorted(policy.approver_keys))})")
        if any(a["key"] == fp for a in st["approvals"]):
            raise BadInput(f"{names[0]} (key {fp}) already approved plan {pid[:12]}")
        stale = stale_reason(store, doc, policy)
        if stale:
            raise BadInput(f"plan {pid[:12]} is stale: the store changed since it was made ({stale}); make a new plan")
        forced = force and subj["found"] < subj["requested"]
        signature = sig.sign(private, pid, doc["policy"]["sha256"])
        txn.con.execute("INSERT INTO approvals VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [pid, names[0], _now(), pid, forced, reason if forced else None, fp, signature])
        audit.approval(txn, pid, doc, names[0], fp, signature, forced, reason)
        if len({a["key"] for a in st["approvals"]}) + 1 >= policy.approvers:
            rq.set_status_many(txn, doc["requests"], "approved")
    return load_plan(store, pid)
