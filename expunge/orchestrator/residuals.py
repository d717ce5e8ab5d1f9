"""Residual copies: the artifacts expunge knows that still hold a request's erased records or their influence.

After a request's plan has run, the model versions it replaced (superseded) and the ones it retired keep
their files: the model artifact, every checkpoint of the run that produced it, and the training rows a
certified logistic regression keeps for removal (its removal rows file). They are listed with
their recorded sha256; purging deletes each file whose content is still the recorded one (a file replaced
by something else since is left alone and said so), unless the policy holds that model's files (a legal
hold), and records the deletion. What remains shows why.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from expunge import audit
from expunge.errors import UnknownReference
from expunge.lineage.store import Store, _now, has_table

DDL = """
CREATE TABLE IF NOT EXISTS purged_files(path VARCHAR, sha256 VARCHAR, request_id VARCHAR, purged_at TIMESTAMP);
"""


def _plans_run(con, request_id: str) -> list[str]:
    if not has_table(con, "executions"):
        return []
    return [p for (p,) in con.execute(
        """SELECT e.plan_id FROM executions e JOIN plan_requests pr USING (plan_id)
           WHERE pr.request_id = ? ORDER BY e.started_at""", [request_id]).fetchall()]


def residuals(store: Store, request_id: str, policy=None) -> dict:
    """{request, plans, residuals: [{model, kind, path, sha256, state, why}]}: state is present, missing,
    purged, changed (not the recorded content: left alone) or held."""
    from expunge.orchestrator import requests as rq
    from expunge.orchestrator.policy import pinned

    rq.get(store, request_id)  # an unknown request is an error, not an empty list
    with store.read() as con:
        plans = _plans_run(con, request_id)
        models = []
        for pid in plans:
            models += con.execute(
                """SELECT m.model_id, m.name, m.name || '@' || m.version_no, m.artifact_path, m.sha256, m.run_id,
                          'superseded' FROM model_replacements r JOIN models m ON m.model_id = r.replaces_model_id
                   WHERE r.plan_id = ? AND NOT r.pending_check""", [pid]).fetchall()
            models += con.execute(
                """SELECT m.model_id, m.name, m.name || '@' || m.version_no, m.artifact_path, m.sha256, m.run_id,
                          'retired' FROM execution_actions a JOIN models m ON m.name || '@' || m.version_no = a.model
                   WHERE a.plan_id = ? AND a.action = 'retire' AND a.state = 'done'""", [pid]).fetchall()
            if has_table(con, "escalations"):  # results rolled back after a failed check: derived from the old
                models += con.execute(
                    """SELECT m.model_id, m.name, m.name || '@' || m.version_no, m.artifact_path, m.sha256, m.run_id,
                              'rejected' FROM escalations e JOIN models m ON m.name || '@' || m.version_no = e.rejected_model
                       WHERE e.plan_id = ?""", [pid]).fetchall()
        purged = set() if not has_table(con, "purged_files") else {
            (p, s) for p, s in con.execute("SELECT path, sha256 FROM purged_files").fetchall()}
        files = []
        for model_id, name, ref, path, sha, run_id, why in models:
            files.append((name, ref, "model", path, sha, why))
            if run_id is not None:
                for cpath, csha in con.execute("SELECT path, sha256 FROM checkpoints WHERE run_id = ? ORDER BY "
                                               "position", [run_id]).fetchall():
                    files.append((name, ref, "checkpoint", cpath, csha, why))
                (extra,) = con.execute("SELECT extra FROM runs WHERE run_id = ?", [run_id]).fetchone() or (None,)
                rows = json.loads(extra or "{}").get("removal_rows")  # the training rows, kept for certified removal
                if rows:
                    files.append((name, ref, "removal rows", rows.get("file"), rows.get("sha256"), why))
        policy_sha = None
        if plans:
            policy_sha = _plan_policy(store, plans[-1])
    policy = policy or (pinned(store, policy_sha) if policy_sha else None)
    holds = policy.holds if policy else {}
    out, seen = [], set()
    for name, ref, kind, path, sha, why in files:
        if not path or (path, sha) in seen:
            continue
        seen.add((path, sha))
        state = _state(path, sha, purged)
        entry = {"model": ref, "kind": kind, "path": path, "sha256": sha, "state": state,
                 "why": f"{why} by the request's plan"}
        if state == "present" and name in holds:
            entry["state"], entry["why"] = "held", f"policy hold: {holds[name]}"
        out.append(entry)
    return {"request": request_id, "plans": plans, "purge_by_policy": bool(policy and policy.purge_residuals),
            "residuals": out}


def _plan_policy(store: Store, plan_id: str) -> str:
    from expunge.orchestrator.planner import load_plan

    return load_plan(store, plan_id)["policy"]["sha256"]


def _state(path: str, sha: str | None, purged: set) -> str:
    from expunge.lineage.runs import sha256_file

    p = Path(path)
    if not p.exists():
        return "purged" if (path, sha) in purged else "missing"
    if sha and sha256_file(p) != sha:
        return "changed"
    return "present"


def purge(store: Store, request_id: str, policy=None) -> dict:
    """Delete the request's residual copies that are present and not held; record each deletion."""
    got = residuals(store, request_id, policy)
    if not got["plans"]:
        raise UnknownReference(f"request {request_id} has no plan that has run: nothing to purge yet")
    deleted = []
    for r in got["residuals"]:
        if r["state"] != "present":
            continue
        try:
            os.unlink(r["path"])
        except FileNotFoundError:
            pass
        deleted.append(r)
        r["state"] = "purged"
    if deleted:
        with store.write() as txn:
            txn.con.execute(DDL)
            for r in deleted:
                txn.con.execute("INSERT INTO purged_files VALUES (?, ?, ?, ?)",
                                [r["path"], r["sha256"], request_id, _now()])
            audit.log_event(txn, "residuals_purged", requests=[request_id], request=request_id, files=len(deleted),
                            paths_sha256=[audit.text_sha256(r["path"]) for r in deleted],
                            artifacts_sha256=[r["sha256"] for r in deleted])
    got["purged"] = len(deleted)
    return got
