"""Carrying out an approved plan: every action in the plan's order, persisted as it goes, each exactly once.

Before anything runs the plan must match its hash, be the live plan of its requests, carry the approvals
its pinned policy asks for (signatures checked) and still match the store (made again, it comes out the
same). Each action's state lives in the catalog (pending → running → done | failed). An action writes its
results under names derived from the plan (run `<run>.x<plan8>`, artifacts under
`<store>/models/<plan8>/`), then a final write marks it done, records the new model version as replacing
the old one (which becomes superseded; the new one takes its stage) and the actual cost beside the
estimate. A rerun after a crash resumes: a finished step's run is found by its name and adopted, never
applied twice; a half-written output directory is removed and the step done again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from expunge import audit
from expunge.errors import BadInput, ExpungeError
from expunge.faults import fault_point
from expunge.lineage.store import Store, _now, has_table

DDL = """
CREATE TABLE IF NOT EXISTS executions(
    plan_id VARCHAR PRIMARY KEY, started_at TIMESTAMP NOT NULL, ended_at TIMESTAMP, state VARCHAR NOT NULL,
    proof VARCHAR,                    -- the lineage proof, recorded before the store forgets the subjects
    forgotten VARCHAR);               -- what forgetting removed (forget_subjects' counts)
CREATE TABLE IF NOT EXISTS execution_actions(
    plan_id VARCHAR NOT NULL, position INTEGER NOT NULL, model VARCHAR NOT NULL, action VARCHAR NOT NULL,
    state VARCHAR NOT NULL,           -- pending | running | done | failed
    new_model VARCHAR, est_seconds DOUBLE, wall_seconds DOUBLE, cpu_seconds DOUBLE,
    started_at TIMESTAMP, ended_at TIMESTAMP, attempts INTEGER NOT NULL, detail VARCHAR, error VARCHAR);
CREATE TABLE IF NOT EXISTS model_replacements(
    model_id INTEGER NOT NULL, replaces_model_id INTEGER NOT NULL, plan_id VARCHAR NOT NULL,
    action VARCHAR NOT NULL, guarantee VARCHAR NOT NULL,
    pending_check BOOLEAN NOT NULL);  -- a result is not promoted before its check passes
CREATE TABLE IF NOT EXISTS escalations(  -- a result that failed its check: rolled back, the next action tried
    plan_id VARCHAR NOT NULL, position INTEGER NOT NULL, model VARCHAR NOT NULL, from_action VARCHAR NOT NULL,
    rejected_model VARCHAR, verdict VARCHAR NOT NULL, to_action VARCHAR, reason VARCHAR, escalated_at TIMESTAMP NOT NULL);
"""


class ActionFailed(ExpungeError):
    exit_code = 5


# A new version is recorded as dev; finishing the action promotes it to the replaced version's stage, unless
# it waits for a check.
NEW_STAGE = "dev"

# Actions that redo part of a training run (the rest is reused from the old model).
PARTIAL = ("sisa_shard_retrain", "checkpoint_replay")


@dataclass
class Outcome:
    """What an action produced: the new model version (None: none, e.g. retire), and facts for the record."""

    new_model: str | None = None
    detail: dict = field(default_factory=dict)
    pending_check: bool = False


@dataclass
class Context:
    store: Store
    plan: dict
    erased: np.ndarray                    # record ordinals of the requests' subjects
    new: dict[str, str] = field(default_factory=dict)  # model → its new version made by this plan
    trainer_seconds: float = 0.0          # this action's seconds in work its estimate prices (the trainer's)

    @property
    def tag(self) -> str:
        return self.plan["id"][:8]

    def out_dir(self, run_name: str) -> Path:
        """A fresh output directory for one attempt at a step: never shared, so a parallel or interrupted attempt
        cannot delete files another one recorded (an attempt that lost the race leaves its directory unused)."""
        import os
        import uuid

        d = self.store.root / "models" / self.tag / f"{run_name}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
        d.mkdir(parents=True, mode=0o700)
        return d


# ------------------------------------------------------------------ catalog lookups


def erased_rows(store: Store, ds, erased: np.ndarray) -> np.ndarray:
    """Boolean mask of a RecordDataset's rows built from an erased record. A row built from one record (every
    row of a source or subset version) is checked from the ordinals the dataset holds; rows built from
    several records need the version's row map."""
    if np.array_equal(ds.first_ords, ds.last_ords):
        return np.isin(ds.first_ords, np.asarray(erased, np.int64))
    import pyarrow as pa

    from expunge.lineage.rows import version_rows

    vr = version_rows(store, ds.version)
    dropped = set(vr.row_ids.filter(pa.array(~vr.keep_mask(erased))).to_pylist())
    return np.array([r in dropped for r in ds.row_ids], dtype=bool)


def model_info(store: Store, ref: str) -> dict:
    with store.view() as view:
        m = view.resolve_model(ref)
        path, sha, stage, run = view.execute(
            """SELECT m.artifact_path, m.sha256, m.stage, r.name FROM models m LEFT JOIN runs r USING (run_id)
               WHERE m.model_id = ?""", [m["model_id"]]).fetchall()[0]
        parents = view.execute(
            """SELECT p.name || '@' || p.version_no, mp.relation FROM model_parents mp
               JOIN models p ON p.model_id = mp.parent_model_id WHERE mp.model_id = ? ORDER BY 1""",
            [m["model_id"]]).fetchall()
    return {"id": m["label"], "model_id": m["model_id"], "name": m["name"], "path": path, "sha256": sha,
            "stage": stage, "run": run, "parents": [{"model": p, "relation": r} for p, r in parents]}


def model_of_run(store: Store, run: str) -> str | None:
    """The model version a run produced (None if the run is not recorded)."""
    with store.read() as con:
        rows = con.execute("""SELECT m.name || '@' || m.version_no FROM models m JOIN runs r USING (run_id)
                              WHERE r.name = ? ORDER BY m.model_id LIMIT 1""", [run]).fetchall()
    return rows[0][0] if rows else None


def checkpoint_path(store: Store, run: str, step: int | None = None, shard: int | None = None,
                    slice_: int | None = None) -> str:
    with store.read() as con:
        if shard is None:
            rows = con.execute("""SELECT c.path FROM checkpoints c JOIN runs r USING (run_id)
                                  WHERE r.name = ? AND c.step = ? AND c.shard IS NULL""", [run, step]).fetchall()
        else:
            rows = con.execute("""SELECT c.path FROM checkpoints c JOIN runs r USING (run_id)
                                  WHERE r.name = ? AND c.shard = ? AND c.slice = ?""", [run, shard, slice_]).fetchall()
    if not rows or not rows[0][0]:
        raise ActionFailed(f"run {run}: the checkpoint the plan replays from is not recorded")
    return rows[0][0]


# ------------------------------------------------------------------ steps shared by the actions


def rerun_step(ctx: Context, run: str, *, stage: str, subst: dict[str, str] | None = None, kind: str = "",
               **kw) -> str:
    """Re-run a recorded run without the erased records (its parents replaced by their new versions in
    `subst`), under a name derived from the plan and the kind of step (`kind` ".s": from scratch, as in a
    chain's full retrain; "": the model's own action); if an attempt already recorded it, adopt it. Steps of
    different kinds never adopt each other's results (a chain retrained from scratch must not reuse an
    ancestor's approximate or certified result)."""
    from expunge.orchestrator.rerun import recorded_request, rerun

    name = f"{run}.x{ctx.tag}{kind}"
    done = model_of_run(ctx.store, name)
    if done:
        return done
    rec = recorded_request(ctx.store, run, train_ords="builtin")
    subst = subst or {}
    parents = [{"model": subst.get(p["model"], p["model"]), "relation": p["relation"]} for p in rec["parents"]]
    config = {k: subst.get(v, v) if isinstance(v, str) else v for k, v in rec["config"].items()}
    fine_tuned = [p["model"] for p in parents if p["relation"] == "fine-tune"]
    if fine_tuned and "init_model" not in kw:
        kw["init_model"] = model_info(ctx.store, fine_tuned[0])["path"]  # fine-tune: start from the parent
    from expunge.orchestrator.policy import pinned

    t0 = time.perf_counter()
    try:
        rerun(ctx.store, run, new_name=name, out_dir=ctx.out_dir(name), exclude_records=ctx.erased, stage=stage,
              parents=parents, config=config, policy=pinned(ctx.store, ctx.plan["policy"]["sha256"]),
              recorded=rec, **kw)
    except BadInput:
        # Another worker re-ran the same run (a shared ancestor of two chains) and recorded it first.
        if model_of_run(ctx.store, name) is None:
            raise
    finally:
        ctx.trainer_seconds += time.perf_counter() - t0  # loading, training, recording: what setup/wall/record price
    made = model_of_run(ctx.store, name)
    if made is None:
        raise ActionFailed(f"re-running {run} recorded no model version")
    return made


def _ancestors(store: Store, ref: str) -> list[str]:
    """Every ancestor of a model version, each after its own ancestors."""
    out: dict[str, None] = {}

    def walk(r: str) -> None:
        for p in model_info(store, r)["parents"]:
            walk(p["model"])
            out.setdefault(p["model"], None)

    walk(ref)
    return list(out)


def _rebuild_chain(ctx: Context, chain: list[str], item: dict, subst: dict[str, str]) -> str:
    """Re-run the runs of `chain` (oldest first) each on its parents' new versions; the last one is the
    item's model, recorded with its stage; the others are stepping stones recorded as archived."""
    for ref in chain:
        info = model_info(ctx.store, ref)
        if not info["run"]:
            raise ActionFailed(f"{ref} has no producing run to re-run")
        last = ref == chain[-1]
        subst[ref] = rerun_step(ctx, info["run"], stage=NEW_STAGE if last else "archived", subst=dict(subst),
                                kind=".s")
    return subst[chain[-1]]


# ------------------------------------------------------------------ the actions


def _no_action(ctx: Context, item: dict) -> Outcome:
    return Outcome(detail={"why": "the records never reached training"})


def _retire(ctx: Context, item: dict) -> Outcome:
    info = model_info(ctx.store, item["model"])
    if info["stage"] != "archived":
        ctx.store.set_model_stage(item["model"], "archived", reason=f"retired by plan {ctx.tag} "
                                  f"(requests {', '.join(ctx.plan['requests'])})")
    return Outcome(detail={"from_stage": info["stage"]})


def _full_retrain(ctx: Context, item: dict) -> Outcome:
    chain = [*_ancestors(ctx.store, item["model"]), item["model"]]
    return Outcome(_rebuild_chain(ctx, chain, item, {}), {"runs": len(chain)})


def _clean_ancestor_replay(ctx: Context, item: dict) -> Outcome:
    """Follow the one affected parent up to the newest clean ancestor; re-run the runs after it."""
    affected = {i["model"] for i in ctx.plan["items"]}
    chain, cur = [item["model"]], item["model"]
    while True:
        aps = [p["model"] for p in model_info(ctx.store, cur)["parents"] if p["model"] in affected]
        if not aps:
            break
        cur = aps[0]
        chain.append(cur)
    return Outcome(_rebuild_chain(ctx, chain[::-1], item, {}), {"runs": len(chain)})


def _rederive(ctx: Context, item: dict) -> Outcome:
    subst = {p: ctx.new[p] for p in item["after"] if p in ctx.new}
    missing = [p for p in item["after"] if p not in ctx.new]
    if missing:
        raise ActionFailed(f"{item['model']}: its parent(s) {', '.join(missing)} have no new version to re-derive "
                           "from")
    info = model_info(ctx.store, item["model"])
    return Outcome(rerun_step(ctx, info["run"], stage=NEW_STAGE, subst=subst), {"parents": subst})


def _checkpoint_replay(ctx: Context, item: dict) -> Outcome:
    info = model_info(ctx.store, item["model"])
    step = _clean_step(ctx, info["run"])
    ckpt = checkpoint_path(ctx.store, info["run"], step=step)
    return Outcome(rerun_step(ctx, info["run"], stage=NEW_STAGE, start_checkpoint=ckpt), {"from_step": step})


def _clean_step(ctx: Context, run: str) -> int:
    imp = ctx.store.impact_hashed(_hashes(ctx))
    r = next((r for r in imp.runs if r["id"] == run), None)
    fs = (r or {}).get("first_seen")
    if not fs or fs["last_clean_step"] is None:
        raise ActionFailed(f"run {run}: no checkpoint before the records were first seen")
    return int(fs["last_clean_step"])


def _hashes(ctx: Context) -> np.ndarray:
    from expunge.orchestrator import requests as rq

    return rq.subject_hashes(ctx.store, ctx.plan["requests"])


def _affected_shards(store: Store, run: str, erased: np.ndarray) -> list[dict]:
    """The run's shards holding erased records, each with its first slice that does: from the run's facts file
    (what the impact query reads for it), without answering the whole impact again."""
    import json

    from pyroaring import BitMap

    from expunge.lineage.facts import RunFacts

    with store.read() as con:
        got = con.execute("SELECT facts_file, facts_index FROM runs WHERE name = ?", [run]).fetchall()
    if not got or not got[0][0]:
        return []
    facts = RunFacts(store.data_path(got[0][0]), json.loads(got[0][1]))
    return facts.lookup(BitMap(np.asarray(erased, np.uint32)))[0]


def _sisa_shards(ctx: Context, item: dict) -> Outcome:
    info = model_info(ctx.store, item["model"])
    starts = {}
    for s in _affected_shards(ctx.store, info["run"], ctx.erased):
        if s["first_slice"] is None:
            continue
        k, first = int(s["shard"]), int(s["first_slice"])
        starts[k] = None if first == 0 else checkpoint_path(ctx.store, info["run"], shard=k, slice_=first - 1)
    if not starts:
        raise ActionFailed(f"{item['model']}: no affected shard recorded")
    new = rerun_step(ctx, info["run"], stage=NEW_STAGE, init_model=info["path"], shard_checkpoints=starts)
    return Outcome(new, {"shards": {str(k): ("scratch" if v is None else Path(v).name) for k, v in starts.items()}})


def _certified(ctx: Context, item: dict) -> Outcome:
    from expunge.orchestrator.certified_exec import certified_removal

    return certified_removal(ctx, item, model_info(ctx.store, item["model"]))


def _approximate(ctx: Context, item: dict) -> Outcome:
    from expunge.orchestrator.approximate_exec import approximate_unlearning

    return approximate_unlearning(ctx, item, model_info(ctx.store, item["model"]))


EXECUTORS: dict[str, Callable[[Context, dict], Outcome]] = {
    "no_action": _no_action, "retire": _retire, "full_retrain": _full_retrain,
    "clean_ancestor_replay": _clean_ancestor_replay, "rederive_from_parent": _rederive,
    "checkpoint_replay": _checkpoint_replay, "sisa_shard_retrain": _sisa_shards,
    "certified_removal": _certified, "approximate_unlearning": _approximate,
}


# The actions that call the model's recorded trainer again.
RERUNS = {"full_retrain", "clean_ancestor_replay", "rederive_from_parent", "checkpoint_replay", "sisa_shard_retrain"}
# Actions whose seconds outside the priced work (`Context.trainer_seconds`) are looking up and recording: kept as
# the action's `bookkeeping_seconds`, which the planner adds to later estimates (an approximate action's are
# not told apart from its work).
BOOKKEPT = RERUNS | {"retire", "certified_removal"}


def run_action(ctx: Context, item: dict) -> tuple[Outcome, float, float]:
    """Run one action: (its outcome, wall and CPU seconds); its bookkeeping seconds go into the outcome."""
    ctx.trainer_seconds = 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    out = executor(item["chosen"]["action"])(ctx, item)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if item["chosen"]["action"] in BOOKKEPT and not out.detail.get("adopted"):
        out.detail["bookkeeping_seconds"] = round(max(wall - ctx.trainer_seconds, 0.0), 6)
    return out, wall, cpu


def executor(action: str) -> Callable[[Context, dict], Outcome]:
    try:
        return EXECUTORS[action]
    except KeyError:
        raise ActionFailed(f"action {action!r} cannot be executed yet") from None


# ------------------------------------------------------------------ the run


def _state(store: Store, pid: str) -> dict[int, dict]:
    with store.read() as con:
        if not has_table(con, "execution_actions"):
            return {}
        rows = con.execute("""SELECT position, model, action, state, new_model, attempts, wall_seconds, cpu_seconds,
                                     est_seconds, detail, error FROM execution_actions WHERE plan_id = ?""",
                           [pid]).fetchall()
    return {r[0]: dict(position=r[0], model=r[1], action=r[2], state=r[3], new_model=r[4], attempts=r[5],
                       wall_seconds=r[6], cpu_seconds=r[7], est_seconds=r[8],
                       detail=json.loads(r[9]) if r[9] else {}, error=r[10]) for r in rows}


def check_runnable(store: Store, doc: dict) -> None:
    """Refuse a plan that a newer one replaced, lacks its approvals, is blocked or no longer matches the store."""
    from expunge.orchestrator import planner
    from expunge.orchestrator.policy import pinned

    pid = doc["id"]
    if doc.get("superseded_by"):
        raise BadInput(f"plan {pid[:12]} was replaced by a newer plan ({doc['superseded_by'][:12]}); run that one")
    if doc["blocked"]:
        raise BadInput(f"plan {pid[:12]} has models with no admissible action; it cannot run")
    policy = pinned(store, doc["policy"]["sha256"])
    from expunge.orchestrator.policy import store_policy

    current = store_policy(store)
    if current.sha256() != policy.sha256():
        raise BadInput(f"plan {pid[:12]} was made under policy {policy.source}, not the store's ({current.source}): "
                       "only plans made under the store's policy run")
    if policy.approval_required:
        ok = planner.verified_approvals(store, doc)
        if len(ok) < policy.approvers:
            raise BadInput(f"plan {pid[:12]} has {len(ok)} of the {policy.approvers} signed approval(s) its policy "
                           "requires; `expunge plan approve` it first")
    stale = planner.stale_reason(store, doc, policy)
    if stale:
        raise BadInput(f"plan {pid[:12]} is stale: the store changed since it was made ({stale}); make a new plan")


def start(store: Store, doc: dict) -> None:
    """Record the execution and its actions as pending, and the requests as executing: one write."""
    from expunge.orchestrator import requests as rq

    with store.write() as txn:
        txn.con.execute(DDL)
        if txn.one("SELECT count(*) FROM executions WHERE plan_id = ?", [doc["id"]]):
            return
        now = _now()
        txn.con.execute("INSERT INTO executions VALUES (?, ?, NULL, 'running', NULL, NULL)", [doc["id"], now])
        for pos, item in enumerate(doc["items"]):
            c = item["chosen"]
            txn.con.execute("INSERT INTO execution_actions VALUES (?, ?, ?, ?, 'pending', NULL, ?, NULL, NULL, NULL,"
                            " NULL, 0, NULL, NULL)", [doc["id"], pos, item["model"], c["action"], c["seconds"]])
        # A policy that needs no approval: the checked plan counts as approved.
        planned = [r for (r,) in txn.con.execute(
            "SELECT request_id FROM requests WHERE status = 'planned' AND request_id IN (SELECT unnest(?::VARCHAR[]))",
            [doc["requests"]]).fetchall()]
        rq.set_status_many(txn, planned, "approved")
        rq.set_status_many(txn, doc["requests"], "executing")
        audit.log_event(txn, "execution_started", requests=doc["requests"], plan=doc["id"], actions=len(doc["items"]))


def _mark(store: Store, pid: str, pos: int, **fields) -> None:
    with store.write() as txn:
        sets = ", ".join(f"{k} = ?" for k in fields)
        txn.con.execute(f"UPDATE execution_actions SET {sets} WHERE plan_id = ? AND position = ?",
                        [*fields.values(), pid, pos])
        audit.action_marked(txn, pid, pos, fields)


def _finish(store: Store, doc: dict, pos: int, item: dict, out: Outcome, wall: float, cpu: float) -> None:
    """Mark the action done; record the new version as the candidate replacement of the old one, pending its
    check (`_promote` or `_reject` settles it), with the training cost the old run recorded for future
    planning. One write."""
    out.pending_check = bool(out.new_model)
    with store.write() as txn:
        if out.new_model:
            old = txn.resolve_model(item["model"])
            new = txn.resolve_model(out.new_model)
            if item["chosen"]["action"] in PARTIAL:
                # It did part of a training: for planning, the new run still cost what the old one did.
                txn.con.execute(
                    """UPDATE runs SET wall_seconds = o.wall_seconds, cpu_seconds = o.cpu_seconds,
                              gpu_seconds = o.gpu_seconds, total_steps = o.total_steps
                       FROM (SELECT wall_seconds, cpu_seconds, gpu_seconds, total_steps FROM runs
                             WHERE run_id = (SELECT run_id FROM models WHERE model_id = ?)) o
                       WHERE runs.run_id = (SELECT run_id FROM models WHERE model_id = ?)""",
                    [old["model_id"], new["model_id"]])
            txn.con.execute("DELETE FROM model_replacements WHERE model_id = ? AND plan_id = ?",
                            [new["model_id"], doc["id"]])
            txn.con.execute("INSERT INTO model_replacements VALUES (?, ?, ?, ?, ?, TRUE)",
                            [new["model_id"], old["model_id"], doc["id"], item["chosen"]["action"],
                             item["chosen"]["guarantee"]])
        txn.con.execute(
            """UPDATE execution_actions SET state = 'done', new_model = ?, wall_seconds = ?, cpu_seconds = ?,
                      ended_at = ?, detail = ?, error = NULL WHERE plan_id = ? AND position = ?""",
            [out.new_model, wall, cpu, _now(), json.dumps(out.detail, sort_keys=True, default=str), doc["id"], pos])
        audit.action_finished(txn, doc, pos, item, out.new_model, wall, cpu, out.pending_check)


def _promote(store: Store, doc: dict, item: dict, new_model: str) -> None:
    """The result passed its check: the new version takes the old one's stage, the old one is superseded."""
    with store.write() as txn:
        old = txn.resolve_model(item["model"])
        new = txn.resolve_model(new_model)
        if not txn.one("SELECT count(*) FROM model_replacements WHERE model_id = ? AND plan_id = ? AND pending_check",
                       [new["model_id"], doc["id"]]):
            return  # promoted by an earlier attempt
        txn.con.execute("UPDATE model_replacements SET pending_check = FALSE WHERE model_id = ? AND plan_id = ?",
                        [new["model_id"], doc["id"]])
        stage = txn.one("SELECT stage FROM models WHERE model_id = ?", [old["model_id"]])
        txn.con.execute("UPDATE models SET stage = ? WHERE model_id = ?", [stage, new["model_id"]])
        txn.con.execute("UPDATE models SET stage = 'superseded' WHERE model_id = ?", [old["model_id"]])
        txn.con.execute("INSERT INTO model_stages VALUES (?, ?, ?, 'superseded', ?)",
                        [old["model_id"], _now(), stage, f"replaced by {new_model} (plan {doc['id'][:8]})"])


def _unpromoted(store: Store, pid: str) -> set[str]:
    """The plan's new versions still waiting for their check to settle them (not promoted, not rejected)."""
    with store.read() as con:
        if not has_table(con, "model_replacements"):
            return set()
        return {m for (m,) in con.execute(
            """SELECT m.name || '@' || m.version_no FROM model_replacements r JOIN models m USING (model_id)
               WHERE r.plan_id = ? AND r.pending_check""", [pid]).fetchall()}


def _recorded_check(store: Store, pid: str, pos: int, new_model: str | None) -> dict | None:
    """The check already recorded for the action's current result while it is still unsettled (made after the
    action was last marked done; the result neither promoted nor rejected), as `verify.check_item` returned it;
    None if there is none. A run killed between recording a check and acting on it (promotion, or rejection and
    escalation) acts on that check when resumed instead of checking again. A settled result (one `expunge verify`
    checked again later) is checked afresh, as before."""
    if new_model is None or new_model not in _unpromoted(store, pid):
        return None
    with store.read() as con:
        if not has_table(con, "action_checks"):
            return None
        rows = con.execute(
            """SELECT c.kind, c.passed, c.metrics, c.verdict FROM action_checks c JOIN execution_actions a
                      ON a.plan_id = c.plan_id AND a.position = c.position
               WHERE c.plan_id = ? AND c.position = ? AND c.new_model IS NOT DISTINCT FROM ? AND a.state = 'done'
                     AND c.checked_at >= a.ended_at
               ORDER BY c.checked_at DESC LIMIT 1""", [pid, pos, new_model]).fetchall()
    if not rows:
        return None
    kind, passed, metrics, verdict = rows[0]
    metrics = json.loads(metrics)
    reasons = metrics.pop("reasons", [])
    return {"kind": kind, "verdict": verdict, "passed": bool(passed), "metrics": metrics, "reasons": reasons}


def effective_item(item: dict, st: dict | None) -> dict:
    """The plan item as it runs: its chosen action, or the admissible alternative a failed check escalated it to
    (the execution record's action)."""
    act = (st or {}).get("action")
    if not item.get("chosen") or not act or act == item["chosen"]["action"]:
        return item
    c = next(c for c in item["candidates"] if c["action"] == act)
    kind = {"exact": "lineage", "certified": "certificate"}.get(c["guarantee"], item["chosen"]["check"]["kind"])
    return {**item, "chosen": {"action": act, "guarantee": c["guarantee"], "seconds": c["seconds"],
                               "cost": c["cost"], "check": {"kind": kind, "seconds": c.get("check_seconds", 0.0)},
                               "escalated_from": item["chosen"]["action"]}}


def _escalated(store: Store, pid: str, pos: int) -> list[dict]:
    with store.read() as con:
        if not has_table(con, "escalations"):
            return []
        rows = con.execute("""SELECT from_action, rejected_model, verdict, to_action, reason FROM escalations
                              WHERE plan_id = ? AND position = ? ORDER BY escalated_at""", [pid, pos]).fetchall()
    return [dict(zip(("from_action", "rejected_model", "verdict", "to_action", "reason"), r)) for r in rows]


def next_action(item: dict, tried: set[str]) -> dict | None:
    """The plan's next admissible candidate for the item not tried yet (best first, as priced); never another
    approximate unlearning."""
    for c in item.get("candidates") or []:
        if c["admissible"] and c["action"] not in tried and c["action"] != "approximate_unlearning":
            return c
    return None


def _reject(store: Store, doc: dict, pos: int, item: dict, new_model: str | None, res: dict,
            to: dict | None) -> None:
    """Roll a result back (its new version archived, never promoted) and record the escalation to `to`, or the
    action's failure when no admissible action is left. One write."""
    why = "; ".join(res["reasons"])[:1000] or res["verdict"]
    with store.write() as txn:
        if new_model:
            new = txn.resolve_model(new_model)
            txn.con.execute("DELETE FROM model_replacements WHERE model_id = ? AND plan_id = ?",
                            [new["model_id"], doc["id"]])
            stage = txn.one("SELECT stage FROM models WHERE model_id = ?", [new["model_id"]])
            txn.con.execute("UPDATE models SET stage = 'archived' WHERE model_id = ?", [new["model_id"]])
            txn.con.execute("INSERT INTO model_stages VALUES (?, ?, ?, 'archived', ?)",
                            [new["model_id"], _now(), stage, f"rejected: its {res['kind']} check did not pass "
                             f"({res['verdict']}; plan {doc['id'][:8]})"])
        txn.con.execute("INSERT INTO escalations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [doc["id"], pos, item["model"], item["chosen"]["action"], new_model, res["verdict"],
                         to["action"] if to else None, why, _now()])
        from expunge.audit import log_event, requests_of_plan

        log_event(txn, "escalation", requests=requests_of_plan(txn, doc["id"]), plan=doc["id"], position=pos,
                  model=item["model"], rejected=new_model, verdict=res["verdict"],
                  to=to["action"] if to else None)
        if to:
            txn.con.execute("""UPDATE execution_actions SET action = ?, est_seconds = ?, state = 'pending',
                                      new_model = NULL WHERE plan_id = ? AND position = ?""",
                            [to["action"], to["seconds"], doc["id"], pos])
        else:
            txn.con.execute("""UPDATE execution_actions SET state = 'failed', ended_at = ?, error = ?
                               WHERE plan_id = ? AND position = ?""",
                            [_now(), f"its {res['kind']} check did not pass ({res['verdict']}: {why}) and no other "
                             "admissible action is left"[:2000], doc["id"], pos])


class LocalExecutor:
    """Runs actions in worker processes on this machine (spawned: no inherited torch or DuckDB state).

    The interface a cluster executor implements: `submit(fn, *args)` returning a concurrent.futures.Future,
    and `shutdown()`. Workers write to the store through its ordinary writes (they wait for the lock)."""

    def __init__(self, jobs: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self._pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, fn, *args):
        return self._pool.submit(fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _import_trainers(store: Store, items: list[dict], policy) -> None:
    """Import, before the first action starts, the modules the actions will run (torch, the run manifest's
    schema checker, and each model's recorded trainer if the policy allows it): a process imports them once, so
    their seconds are the command's start-up, not the first action's (whose actual cost is set beside its
    estimate). A trainer that cannot be imported is left for its action to report."""
    from expunge.orchestrator.trainers import allowed_prefixes, load_trainer

    if not any(i["chosen"]["action"] not in ("no_action", "retire") for i in items):
        return
    import jsonschema  # noqa: F401  (every action records a run, checked against its schema: ~60 ms to import)
    import torch  # noqa: F401

    import expunge.lineage.torch  # noqa: F401

    prefixes = allowed_prefixes(store, policy)
    with store.read() as con:
        for item in items:
            if item["chosen"]["action"] not in RERUNS:
                continue  # an action that never calls the trainer never imports it
            got = con.execute("""SELECT r.trainer FROM models m JOIN runs r USING (run_id)
                                 WHERE m.name || '@' || m.version_no = ?""", [item["model"]]).fetchall()
            if got and got[0][0]:
                try:
                    load_trainer(got[0][0], prefixes)
                except Exception:  # noqa: BLE001  (its action says why, as a failed action)
                    pass


def _work(root: str, doc: dict, pos: int, new: dict, erased: np.ndarray) -> tuple[Outcome, float, float]:
    """One action, in a worker process."""
    from expunge.lineage.store import Store, fault

    store = Store.open(root)
    store.lock_wait = LOCK_WAIT
    ctx = Context(store, doc, erased, dict(new))
    fault(f"run:before-action-{pos}")
    out, wall, cpu = run_action(ctx, doc["items"][pos])
    fault(f"run:after-action-{pos}")
    return out, wall, cpu


# How long a write waits for another writer while actions run in parallel (their writes are short).
LOCK_WAIT = 600.0


def run_plan(store: Store, plan_id: str, *, dry_run: bool = False, jobs: int = 1,
             on_event: Callable[[str, dict], None] | None = None, finish: bool = True) -> dict:
    """Execute (or with `dry_run`, show) the plan's actions, every model after its affected parents;
    with `jobs` > 1, independent actions run in parallel worker processes. Resumable. Then, unless an
    approximate result waits for its check (or `finish` is false: tests), `complete` the requests.
    Returns the summary."""
    from expunge.orchestrator import planner

    if jobs < 1:
        raise BadInput("--jobs must be at least 1")
    doc = planner.load_plan(store, plan_id)
    pid = doc["id"]
    state = _state(store, pid)
    if not state:
        check_runnable(store, doc)
    if dry_run:
        return summary(store, doc, state, dry_run=True)
    from expunge.lineage.fsutil import WriterLock

    runner = WriterLock(store.root / f"run-{pid[:16]}.lock")  # one process runs a plan at a time
    try:
        runner.acquire()
    except ExpungeError:
        raise ExpungeError(f"plan {pid[:12]} is being run by another expunge process; wait for it, or run it "
                           "again when it stops (it resumes)") from None
    try:
        return _run_locked(store, doc, state, jobs, on_event, finish)
    finally:
        runner.release()


def _run_locked(store: Store, doc: dict, state: dict, jobs: int, on_event, finish: bool) -> dict:
    from expunge.lineage.store import fault
    from expunge.orchestrator.policy import pinned

    pid = doc["id"]
    state = _state(store, pid)
    start(store, doc)
    state = _state(store, pid)
    policy = pinned(store, doc["policy"]["sha256"])
    hashes = _hashes(Context(store, doc, np.zeros(0, np.uint32)))
    ctx = Context(store, doc, store.engine().records_of(hashes)[0])
    emit = on_event or (lambda kind, info: None)
    items = doc["items"]
    acting = {pos: effective_item(item, state.get(pos)) for pos, item in enumerate(items)}
    checked = _passed_checks(store, pid)
    unpromoted = _unpromoted(store, pid)  # passed, but a run stopped before promoting them: settled below
    done = {pos for pos, st in state.items() if st["state"] == "done" and pos in checked
            and checked[pos] == st["new_model"] and st["new_model"] not in unpromoted}
    for pos in sorted(done):
        if state[pos]["new_model"]:
            ctx.new[state[pos]["model"]] = state[pos]["new_model"]
        emit("skip", {"position": pos, "item": acting[pos], "state": state[pos], "all": items})
    position = {item["model"]: pos for pos, item in enumerate(items)}

    def ready(pos: int) -> bool:
        return all(position[p] in done for p in items[pos]["after"] if p in position)

    def begin(pos: int) -> None:
        emit("start", {"position": pos, "item": acting[pos], "state": state[pos], "all": items})
        _mark(store, pid, pos, state="running", started_at=_now(), attempts=state[pos]["attempts"] + 1)

    def failed(pos: int, exc: BaseException):
        # A trainer's own exception text may quote its data: the record keeps only its type.
        msg = str(exc) if isinstance(exc, ExpungeError) else f"{type(exc).__name__} in the trainer (see its output)"
        _mark(store, pid, pos, state="failed", ended_at=_now(), error=msg[:2000])
        emit("failed", {"position": pos, "item": acting[pos], "error": msg})
        if isinstance(exc, ExpungeError):
            return ActionFailed(f"{items[pos]['model']}: {acting[pos]['chosen']['action']} failed: {msg}")
        return exc

    def settle(pos: int, out: Outcome | None) -> None:
        """Check the action's result before anything builds on it: a pass promotes it; a failed or inconclusive
        check rolls it back and runs the plan's next admissible action for the item, checked in turn."""
        from expunge.orchestrator import verify

        while True:
            new_model = out.new_model if out else _state(store, pid)[pos]["new_model"]
            item = acting[pos]
            fault(f"run:before-check-{pos}")
            import tempfile

            res = _recorded_check(store, pid, pos, new_model)  # a run stopped after recording it: not checked twice
            if res is None:
                with tempfile.TemporaryDirectory(prefix="expunge-check-") as tmp:
                    res = verify.check_item(store, doc, item, item["chosen"]["action"], new_model, erased=ctx.erased,
                                            hashes=hashes, policy=policy, passed=verify.passed_results(store, pid),
                                            work_dir=Path(tmp))
                verify.record(store, pid, pos, item["model"], new_model, res)
                fault(f"run:after-check-{pos}")
            if res["passed"]:
                if new_model:
                    _promote(store, doc, item, new_model)
                    ctx.new[item["model"]] = new_model
                done.add(pos)
                emit("done", {"position": pos, "item": item, "outcome": out, "check": res})
                return
            tried = {items[pos]["chosen"]["action"], item["chosen"]["action"],
                     *(e["to_action"] for e in _escalated(store, pid, pos) if e["to_action"])}
            nxt = next_action(items[pos], tried)
            _reject(store, doc, pos, item, new_model, res, nxt)
            emit("rejected", {"position": pos, "item": item, "check": res, "to": nxt})
            if nxt is None:
                raise ActionFailed(f"{item['model']}: {item['chosen']['action']}'s result did not pass its "
                                   f"{res['kind']} check ({res['verdict']}: {'; '.join(res['reasons'])}) and the plan "
                                   "has no other admissible action for it")
            state[pos] = _state(store, pid)[pos]
            acting[pos] = effective_item(items[pos], state[pos])
            begin(pos)
            try:
                out, wall, cpu = run_action(ctx, acting[pos])
            except Exception as exc:
                raise failed(pos, exc) from None
            _finish(store, doc, pos, acting[pos], out, wall, cpu)

    def finished(pos: int, out: Outcome, wall: float, cpu: float) -> None:
        _finish(store, doc, pos, acting[pos], out, wall, cpu)
        settle(pos, out)

    # Results done but not checked yet (a run stopped between the two): check them before anything else.
    for pos in sorted(p for p, st in state.items() if st["state"] == "done" and p not in done):
        settle(pos, None)
    todo = [pos for pos in range(len(items)) if pos not in done]
    if jobs == 1:
        _import_trainers(store, [acting[pos] for pos in todo], policy)
        for pos in todo:
            begin(pos)
            fault(f"run:before-action-{pos}")
            try:
                out, wall, cpu = run_action(ctx, acting[pos])
            except Exception as exc:  # recorded, then re-raised (expunge's own errors as one line)
                raise failed(pos, exc) from None
            fault(f"run:after-action-{pos}")
            finished(pos, out, wall, cpu)
    else:
        from concurrent.futures import FIRST_COMPLETED, wait

        store.lock_wait = LOCK_WAIT
        pool = LocalExecutor(jobs)
        running: dict = {}
        error: BaseException | None = None
        try:
            while (todo or running) and error is None:
                for pos in [p for p in todo if ready(p)][:max(jobs - len(running), 0)]:
                    todo.remove(pos)
                    begin(pos)
                    work_doc = {**doc, "items": [acting[p] if p == pos else it for p, it in enumerate(items)]}
                    running[pool.submit(_work, str(store.root), work_doc, pos, dict(ctx.new), ctx.erased)] = pos
                if not running:
                    raise ActionFailed("no action can start: a parent's action did not finish")
                finished_now, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished_now:
                    pos = running.pop(fut)
                    try:
                        out, wall, cpu = fut.result()
                    except Exception as exc:
                        error = error or failed(pos, exc)
                        continue
                    try:
                        finished(pos, out, wall, cpu)
                    except Exception as exc:
                        error = error or exc
            if error is not None:  # let the others finish and record them; the failed one stays failed
                for fut in wait(running).done:
                    pos = running[fut]
                    try:
                        finished(pos, *fut.result())
                    except Exception as exc:
                        if isinstance(exc, ActionFailed):
                            continue
                        failed(pos, exc)
                raise error
        finally:
            pool.shutdown()
    with store.write() as txn:
        txn.con.execute("UPDATE executions SET state = 'done', ended_at = ? WHERE plan_id = ? AND state <> 'done'",
                        [_now(), pid])
    out = summary(store, doc, _state(store, pid))
    if finish and not any(a["pending_check"] and a["state"] == "done" for a in out["actions"]):
        out["completed"] = complete(store, doc, out)
        if policy.purge_residuals:  # only once nothing waits for a check (a failed one rolls back to them)
            from expunge.orchestrator.residuals import purge

            out["purged"] = sum(purge(store, r, policy)["purged"] for r in doc["requests"])
    else:
        out["completed"] = None  # results wait for their check: the subjects stay known
    return out


def _passed_checks(store: Store, pid: str) -> dict[int, str | None]:
    """Position → the result whose latest check passed (None: an action with no new version that passed)."""
    from expunge.orchestrator import verify

    return {pos: c["new_model"] for pos, c in verify.latest(store, pid).items() if c["passed"]}


def complete(store: Store, doc: dict, out: dict) -> dict:
    """Every action done, none pending a check: prove by lineage that no new version reaches the erased
    records, then make the store forget the subjects (their rows removed, tombstones, cleaned dataset
    versions) and mark the requests verified. Each step is recorded, so a rerun after a crash finishes it."""
    from expunge.orchestrator import requests as rq

    pid = doc["id"]
    with store.read() as con:
        proof, forgotten = con.execute("SELECT proof, forgotten FROM executions WHERE plan_id = ?", [pid]).fetchone()
    if proof is None:
        hashes = rq.subject_hashes(store, doc["requests"])
        reached = {m["id"] for m in store.impact_hashed(hashes).models}
        # Approximate results descend from the old versions by construction: their membership-inference check
        # (passed, or they would not be done) is their proof.
        new = [a["new_model"] for a in out["actions"] if a["new_model"] and a["guarantee"] != "approximate"]
        approx = [a["new_model"] for a in out["actions"] if a["new_model"] and a["guarantee"] == "approximate"]
        bad = sorted(set(new) & reached)
        if bad:
            raise ActionFailed(f"lineage proof failed: {', '.join(bad)} still reach the erased records")
        proof = {"new_versions": {m: model_info(store, m)["sha256"] for m in new},
                 "erased_records": int(len(store.engine().records_of(hashes)[0])), "reached_by_erased": []}
        if approx:
            proof["checked_by_membership_inference"] = {m: model_info(store, m)["sha256"] for m in approx}
        proof = json.dumps(proof, sort_keys=True)
        _set_execution(store, pid, proof=proof)
    fault_point("complete:after-proof")
    if forgotten is None:
        from expunge.lineage.forget import tombstones

        result = {}
        for r in doc["requests"]:
            done_before = tombstones(store, [r])
            if done_before:  # forgotten by an attempt that stopped before recording it
                result[r] = _forgotten_before(store, r, len(done_before))
                continue
            got = store.forget_subjects(rq.subject_hashes(store, [r]), r)
            result[r] = {k: got[k] for k in ("records_removed", "tombstones_added", "changed") if k in got}
        forgotten = json.dumps(result, sort_keys=True, default=str)
        _set_execution(store, pid, forgotten=forgotten)
    fault_point("complete:after-forget")
    with store.write() as txn:
        still = [r for (r,) in txn.con.execute(
            "SELECT request_id FROM requests WHERE status = 'executing' AND request_id IN (SELECT unnest(?::VARCHAR[]))",
            [doc["requests"]]).fetchall()]
        if still:
            audit.log_event(txn, "execution_completed", requests=doc["requests"], plan=pid, proof=json.loads(proof))
        rq.set_status_many(txn, still, "verified")
    return {"proof": json.loads(proof), "forgotten": json.loads(forgotten)}


def _forgotten_before(store: Store, request_id: str, tombstones: int) -> dict:
    """What an earlier, interrupted attempt's `forget_subjects` removed for the request, as an uninterrupted run
    records it: read from the `subjects_forgotten` event that deletion wrote in its own write. A store whose
    deletion predates the audit log keeps only the tombstone count, marked resumed."""
    got = audit.events(store, request=request_id, kind="subjects_forgotten")
    if not got:
        return {"tombstones": tombstones, "changed": True, "resumed": True}
    p = got[0]["payload"]
    return {"records_removed": int(p["records_removed"]), "tombstones_added": int(p["tombstones_added"]),
            "changed": True}


def _set_execution(store: Store, pid: str, **fields) -> None:
    with store.write() as txn:
        sets = ", ".join(f"{k} = ?" for k in fields)
        txn.con.execute(f"UPDATE executions SET {sets} WHERE plan_id = ?", [*fields.values(), pid])


def summary(store: Store, doc: dict, state: dict[int, dict], dry_run: bool = False) -> dict:
    from expunge.orchestrator import verify

    checks = verify.latest(store, doc["id"]) if state else {}
    rows = []
    for pos, item in enumerate(doc["items"]):
        st = state.get(pos, {})
        c = effective_item(item, st)["chosen"]
        chk = checks.get(pos)
        current = chk is not None and chk["new_model"] == st.get("new_model")
        passed = bool(current and chk["passed"])
        rows.append({"order": item["order"], "model": item["model"], "action": c["action"],
                     "guarantee": c["guarantee"], "state": st.get("state", "pending"),
                     "new_model": st.get("new_model"), "estimated_seconds": c["seconds"],
                     "actual_seconds": st.get("wall_seconds"), "cpu_seconds": st.get("cpu_seconds"),
                     "check": c["check"]["kind"],
                     "check_result": chk["verdict"] if current else None,
                     "pending_check": st.get("state") == "done" and not passed,
                     "escalated_from": c.get("escalated_from"),
                     "attempts": st.get("attempts", 0), "error": st.get("error")})
    return {"kind": "expunge.run", "plan": doc["id"], "requests": doc["requests"], "dry_run": dry_run,
            "actions": rows, "done": sum(r["state"] == "done" for r in rows), "total": len(rows)}
