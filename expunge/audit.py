"""The audit log: an append-only, hash-chained record of what every erasure did, and evidence bundles.

Events. Every change an erasure makes (a request and its impact snapshot, each status change, a
plan saved or superseded, an approval, an execution and each action's start and end, a check, the
lineage proof at completion, the subjects forgotten, residual copies purged) and the store-wide
changes that bear on them (the policy set, the key rotated, a model restaged) is one row of the
catalog table `audit_events`, written by `log_event` inside the same `store.write()` transaction as
the change itself: the catalog generation that holds the change holds its event, so a crash never
leaves one without the other. Events are never updated or deleted by expunge.

Hashing. An event is a body and a link. The body is the canonical JSON (sorted keys, no
whitespace, UTF-8; `audit_checker.canonical`) of {seq, at (UTC), kind, actor, requests, payload},
stored as that exact text. The link is {seq, kind, requests, prev, body_sha256}; the event's hash is
the SHA-256 of the link's canonical JSON, and `prev` is the previous event's hash (64 zeros for seq
0). So each hash covers the previous one, and a link alone (without its body) can still be checked
against its neighbours: that is what lets a bundle carry the whole chain while disclosing only one
request's event bodies. Kind and request ids (opaque `req-NNNNNN`) are in the clear in every link,
so a checker can tell that no event of the request was left out of a bundle.

What goes in a payload: entity ids (request, plan, model versions, dataset versions, runs), hashes,
counts, stage names, seconds. Never a raw subject id, a record id or content, a key, or free text a
person typed (a stage reason, a --force reason, an error message): free text enters as its SHA-256,
which matches the text the catalog keeps beside it. The actor is `$EXPUNGE_ACTOR`, else the login
name (an approval's actor is the approver the policy names).

Verifying (`verify`, `expunge audit verify`): walk the events in seq order and name the first broken
one: `hash_mismatch` (an event's content no longer hashes to its hash: edited), `prev_mismatch` (its
prev is not the previous event's hash: spliced), `gap` (seqs missing: deleted), `reorder` (an event
stored at another seq than its body says, or seqs out of order), `malformed` (a body that is not
canonical JSON). A chain cut at its tail is consistent by itself: `anchor` prints the head (seq,
hash) and appends it to a file kept outside the store; verifying against that file then names
`truncated` (the chain ends before an anchored seq) or `anchor_mismatch` (the anchored event's hash
changed: a rewritten tail). Exit status 0: intact; 1: broken (2 stays "bad input", e.g. an
unreadable anchor file).

Evidence bundle (`export`, `expunge audit export REQUEST --out DIR`), written to a temporary sibling
directory `.<DIR>.tmp-<pid>-<hex>` (each file and directory fsynced, the manifest last), then put in place
in one step: renamed onto an absent or empty DIR, or, with --force over a non-empty DIR, swapped with it
(renameat2 RENAME_EXCHANGE; where the file system cannot swap, the old DIR is renamed aside first) and the
old content removed. A kill leaves DIR absent, the old DIR whole or the new bundle whole, never a part of
one; the next export to DIR removes the temporary siblings a dead export left that hold only bundle
files (anything else there is left alone). Crash points (expunge.faults): export:after-file (each file),
export:before-manifest, export:before-rename, export:after-rename. The bundle:

    bundle.json        index: the request, the head, plans, policies, approvals, artifacts
    chain.jsonl        every link from seq 0 to the head (no bodies)
    events.jsonl       the bodies of the request's events (every event whose link names it)
    impact.json        the impact snapshot of request_created and the entity lists it hashes
    plans/<id>.json    each plan of the request, byte for byte (its SHA-256 is its id)
    policies/<sha>.json the pinned policies the plans were made under (approver keys inside)
    signatures/        per approval: the signed statement, the raw signature, the PEM public key
    checks.json        the check results of the request's plans (table action_checks, when present)
    summary.md, summary.html   the story for a person (the HTML self-contained, every value escaped)
    SIGNATURES.md      the exact commands that check each Ed25519 signature (openssl, or `cryptography`)
    verify_bundle.py   the standalone checker (expunge/audit_checker.py: standard library only)
    manifest.json      the SHA-256 of every other file

`python3 verify_bundle.py [--anchor FILE]` checks the manifest, the chain, that every event of the
request is present and matches its link, the plans, policies, approval statements and key
fingerprints against the events, and every artifact file it finds at its recorded path.
"""

from __future__ import annotations

import getpass
import html
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Sequence

from expunge.audit_checker import GENESIS, canonical, check_chain, link_hash, read_anchor_file, sha256
from expunge.errors import BadInput, ExpungeError, UnknownReference
from expunge.faults import fault_point
from expunge.lineage.fsutil import fsync_dir

DDL = """
CREATE TABLE IF NOT EXISTS audit_events(
    seq BIGINT NOT NULL, kind VARCHAR NOT NULL, requests VARCHAR[] NOT NULL,
    body VARCHAR NOT NULL,            -- canonical JSON of {seq, at, kind, actor, requests, payload}
    prev VARCHAR NOT NULL, hash VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS audit_blobs(   -- documents an event commits to by hash (impact entity lists)
    sha256 VARCHAR NOT NULL, body VARCHAR NOT NULL);
"""

KINDS = (
    "request_created", "request_status", "plan_saved", "plan_superseded", "approval", "execution_started",
    "action_started", "action_finished", "check", "escalation", "execution_completed", "subjects_forgotten",
    "residuals_purged", "policy_set", "key_rotated", "model_stage",
)


class AuditBroken(ExpungeError):
    """The audit chain does not verify (exit 1: a failed check, not bad input)."""

    exit_code = 1


# ------------------------------------------------------------------ writing events


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars to Python numbers, tuples to lists, keys to strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def text_sha256(text: str | None) -> str | None:
    """How free text enters an event: its SHA-256 (None stays None)."""
    return None if text is None else sha256(text.encode())


def default_actor() -> str | None:
    actor = os.environ.get("EXPUNGE_ACTOR")
    if actor:
        return actor
    try:
        return getpass.getuser()
    except Exception:  # no login name (a container without a passwd entry)
        return None


def log_event(target, kind: str, *, requests: Sequence[str] = (), actor: str | None = None, **payload) -> dict:
    """Append one event. `target`: an open write transaction (`with store.write() as txn`), so the
    event commits with the change it records; or a Store, for a write of its own. Returns the event."""
    if not hasattr(target, "con"):  # a Store
        with target.write() as txn:
            return log_event(txn, kind, requests=requests, actor=actor, **payload)
    return log_events(target, [(kind, requests, actor, payload)])[0]


def _ready(txn) -> None:
    if not getattr(txn, "_audit_ready", False):
        txn.con.execute(DDL)
        txn._audit_ready = True


def log_events(txn, items: Sequence[tuple[str, Sequence[str], str | None, dict]]) -> list[dict]:
    """Append several events (kind, requests, actor, payload) in order, with one statement per 500."""
    from expunge.lineage.store import _now

    for kind, *_ in items:
        if kind not in KINDS:
            raise ValueError(f"unknown audit event kind {kind!r}")
    _ready(txn)
    last = txn.con.execute("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1").fetchall()
    seq, prev = (int(last[0][0]) + 1, last[0][1]) if last else (0, GENESIS)
    at, me = _now().isoformat(timespec="microseconds") + "Z", None
    out, values = [], []
    for kind, requests, actor, payload in items:
        if actor is None:
            me = me or default_actor()
        reqs = sorted(set(requests))
        body = {"seq": seq, "at": at, "kind": kind, "actor": actor if actor is not None else me, "requests": reqs,
                "payload": _plain(payload)}
        text = canonical(body).decode()
        digest = link_hash(seq, kind, reqs, prev, sha256(text.encode()))
        values.append([seq, kind, reqs, text, prev, digest])
        out.append({**body, "prev": prev, "hash": digest})
        seq, prev = seq + 1, digest
    _insert_rows(txn, "audit_events", values)
    return out


def _insert_rows(txn, table: str, rows: Sequence[Sequence]) -> None:
    """INSERT `rows` into `table`, one statement per 500 rows."""
    for i in range(0, len(rows), 500):
        chunk = rows[i:i + 500]
        marks = "(" + ", ".join(["?"] * len(chunk[0])) + ")"
        txn.con.execute(f"INSERT INTO {table} VALUES " + ", ".join([marks] * len(chunk)),
                        [v for row in chunk for v in row])


def put_blobs(txn, docs: Sequence) -> list[str]:
    """Keep documents events commit to by their hashes; returns the hashes."""
    texts = [canonical(_plain(d)).decode() for d in docs]
    digests = [sha256(t.encode()) for t in texts]
    _ready(txn)
    have = {h for (h,) in txn.con.execute("SELECT sha256 FROM audit_blobs WHERE sha256 IN (SELECT unnest(?::VARCHAR[]))",
                                          [digests]).fetchall()}
    new = {h: t for h, t in zip(digests, texts) if h not in have}
    _insert_rows(txn, "audit_blobs", list(new.items()))
    return digests


def requests_of_plan(txn, plan_id: str) -> list[str]:
    return [r for (r,) in txn.con.execute("SELECT request_id FROM plan_requests WHERE plan_id = ? ORDER BY 1",
                                          [plan_id]).fetchall()]


# ----- the events of each place that changes the store (each called inside that place's write)


def requests_created(txn, created: Sequence[dict]) -> None:
    """One event per new request (dicts: id, category, deadline, subjects, hashes), each with a snapshot of its
    impact: counts, and the hash of the impacted entities' ids (the lists kept in audit_blobs; no subject or
    record id anywhere)."""
    snapshots, lists = [], []
    for r in created:
        imp = txn.store.impact_hashed(r["hashes"])
        entities = {"datasets": sorted([d["id"], d["records"], d["rows"]] for d in imp.datasets),
                    "runs": sorted([x["id"], x["records"]] for x in imp.runs),
                    "models": sorted([m["id"], m["stage"], m["direct"]] for m in imp.models)}
        lists.append(entities)
        snapshots.append({"subjects_requested": int(r["subjects"]), "subjects_found": int(imp.found),
                          "records": int(imp.records), "datasets": len(entities["datasets"]),
                          "runs": len(entities["runs"]), "models": len(entities["models"])})
    for snap, digest in zip(snapshots, put_blobs(txn, lists)):
        snap["entities_sha256"] = digest
    log_events(txn, [("request_created", [r["id"]], None,
                      {"request": r["id"], "category": r["category"], "deadline": r["deadline"].isoformat() + "Z",
                       "impact": snap}) for r, snap in zip(created, snapshots)])


def request_status(txn, previous: dict[str, str], status: str) -> None:
    """One event for requests moved together to `status` (`previous`: request → its status before)."""
    if previous:
        log_event(txn, "request_status", requests=list(previous), to=status, previous=dict(sorted(previous.items())))


def plan_saved(txn, plan_id: str, doc: dict, replan: bool) -> None:
    """The plan registered, then each earlier live plan of its requests it replaces (call before the
    UPDATE that marks them superseded)."""
    log_event(txn, "plan_saved", requests=doc["requests"], plan=plan_id, plan_sha256=plan_id,
              models=len(doc["items"]), blocked=len(doc["blocked"]), total_seconds=doc["total"]["seconds"],
              actions=sorted({(i["chosen"] or {}).get("action") or "none" for i in doc["items"]}), replan=replan)
    for old, approved in txn.con.execute(
            """SELECT p.plan_id, EXISTS (SELECT 1 FROM approvals a WHERE a.plan_id = p.plan_id) FROM plans p
               WHERE p.plan_id <> ? AND p.superseded_by IS NULL AND p.plan_id IN
                     (SELECT plan_id FROM plan_requests WHERE request_id IN (SELECT unnest(?::VARCHAR[])))
               ORDER BY 1""", [plan_id, doc["requests"]]).fetchall():
        log_event(txn, "plan_superseded", requests=requests_of_plan(txn, old), plan=old, by=plan_id,
                  approval_lapsed=bool(approved))


def approval(txn, plan_id: str, doc: dict, approver: str, fingerprint: str, signature: str, forced: bool,
             reason: str | None) -> None:
    log_event(txn, "approval", requests=doc["requests"], actor=approver, plan=plan_id, plan_sha256=plan_id,
              policy_sha256=doc["policy"]["sha256"], approver=approver, key_fingerprint=fingerprint,
              signature=signature, forced=forced, reason_sha256=text_sha256(reason) if forced else None)


def action_marked(txn, plan_id: str, position: int, fields: dict) -> None:
    """An action started (state running) or failed; other field changes log nothing."""
    state = fields.get("state")
    if state not in ("running", "failed"):
        return
    model, action, attempts = txn.con.execute(
        "SELECT model, action, attempts FROM execution_actions WHERE plan_id = ? AND position = ?",
        [plan_id, position]).fetchone()
    common = dict(plan=plan_id, position=position, model=model, action=action)
    if state == "running":
        log_event(txn, "action_started", requests=requests_of_plan(txn, plan_id), attempt=int(attempts), **common)
    else:
        log_event(txn, "action_finished", requests=requests_of_plan(txn, plan_id), state="failed",
                  error_sha256=text_sha256(fields.get("error")), **common)


def action_finished(txn, doc: dict, position: int, item: dict, new_model: str | None, wall: float, cpu: float,
                    pending_check: bool) -> None:
    sha = None
    if new_model:
        sha = txn.one("SELECT sha256 FROM models WHERE name || '@' || version_no = ?", [new_model])
    log_event(txn, "action_finished", requests=doc["requests"], plan=doc["id"], position=position,
              model=item["model"], action=item["chosen"]["action"], guarantee=item["chosen"]["guarantee"],
              state="done", new_model=new_model, artifact_sha256=sha, wall_seconds=round(float(wall), 6),
              cpu_seconds=round(float(cpu), 6), pending_check=bool(pending_check))


def log_check(txn, plan_id: str, position: int, model: str, new_model: str | None, kind: str, passed: bool,
              metrics: dict | None = None) -> dict:
    """A check's result (numbers only in `metrics`: AUCs, accuracies, counts)."""
    return log_event(txn, "check", requests=requests_of_plan(txn, plan_id), plan=plan_id, position=position,
                     model=model, new_model=new_model, check=kind, passed=bool(passed), metrics=metrics or {})


# ------------------------------------------------------------------ reading and verifying


def _rows(con) -> list[tuple]:
    from expunge.lineage.store import has_table

    if not has_table(con, "audit_events"):
        return []
    return con.execute("SELECT seq, kind, requests, body, prev, hash FROM audit_events ORDER BY seq").fetchall()


def _links(rows: list[tuple]) -> list[dict]:
    return [{"seq": int(s), "kind": k, "requests": list(r), "body": b, "prev": p, "hash": h}
            for s, k, r, b, p, h in rows]


def _event(row: tuple) -> dict:
    seq, kind, reqs, body, prev, digest = row
    try:
        doc = json.loads(body)
        doc = doc if isinstance(doc, dict) else {}
    except ValueError:
        doc = {}
    return {"seq": int(seq), "at": doc.get("at"), "kind": kind, "actor": doc.get("actor"), "requests": list(reqs),
            "payload": doc.get("payload") if isinstance(doc.get("payload"), dict) else None,
            "prev": prev, "hash": digest}


def events(store, request: str | None = None, kind: str | None = None) -> list[dict]:
    """The events, oldest first; of one request and/or one kind if given."""
    if kind is not None and kind not in KINDS:
        raise BadInput(f"unknown event kind {kind!r}; expected one of {', '.join(KINDS)}")
    with store.read() as con:
        rows = _rows(con)
    return [_event(r) for r in rows if (request is None or request in r[2]) and (kind is None or r[1] == kind)]


def _store_id(store) -> str | None:
    with store.read() as con:
        row = con.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchall()
    return row[0][0] if row else None


def _anchors(store, anchor_file) -> list[dict]:
    try:
        anchors = read_anchor_file(str(anchor_file))
    except FileNotFoundError:
        raise BadInput(f"no such anchor file: {anchor_file}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read the anchor file {anchor_file}: {exc}") from None
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    sid = _store_id(store)
    mine = [a for a in anchors if a.get("store_id") in (None, sid)]
    if not mine:
        raise BadInput(f"{anchor_file} holds no anchor of this store (store id {sid})")
    return mine


def verify(store, anchor_file: str | os.PathLike | None = None) -> dict:
    """Check the whole chain (and against the anchors of `anchor_file`); the first broken event first."""
    anchors = _anchors(store, anchor_file) if anchor_file is not None else []
    with store.read() as con:
        rows = _rows(con)
    problems = check_chain(_links(rows), anchors)
    head = {"seq": int(rows[-1][0]), "hash": rows[-1][5]} if rows else None
    return {"kind": "expunge.audit.verify", "ok": not problems, "events": len(rows), "head": head,
            "anchors": len(anchors), "first_broken": problems[0] if problems else None, "problems": problems[:100]}


def _require_intact(store, what: str) -> dict:
    got = verify(store)
    if not got["ok"]:
        p = got["first_broken"]
        raise AuditBroken(f"the audit chain is broken at seq {p['seq']} ({p['problem']}: {p['detail']}); "
                          f"not {what} (see `expunge audit verify`)")
    return got


def _outside_store(store, path: Path, what: str) -> Path:
    real = Path(os.path.realpath(path))
    root = Path(os.path.realpath(store.root))
    if real == root or root in real.parents:
        raise BadInput(f"the {what} {path} is inside the store: keep it outside ({store.root}), or a copy of the "
                       "store could rewrite it along with the log")
    return real


def anchor(store, out: str | os.PathLike | None = None) -> dict:
    """The head of an intact chain (seq, hash); with `out`, also appended to that file as one JSON line."""
    from expunge.lineage.store import _now

    got = _require_intact(store, "anchoring it")
    if got["head"] is None:
        raise BadInput("the audit log is empty: nothing to anchor yet")
    doc = {"store_id": _store_id(store), "seq": got["head"]["seq"], "hash": got["head"]["hash"],
           "at": _now().isoformat(timespec="seconds") + "Z"}
    if out is not None:
        path = Path(out)
        _outside_store(store, path, "anchor file")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise BadInput(f"cannot append to the anchor file {path}: {exc.strerror}") from None
        try:
            os.write(fd, canonical(doc) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
    return {"kind": "expunge.audit.anchor", **doc, "file": str(out) if out is not None else None}


# ------------------------------------------------------------------ the evidence bundle

_ED25519_SPKI = bytes.fromhex("302a300506032b6570032100")  # DER SubjectPublicKeyInfo prefix of an Ed25519 key


def _pem_public(key_line: str) -> str:
    """An OpenSSH `ssh-ed25519 AAAA…` line as a PEM public key (what openssl reads)."""
    import base64
    import struct

    blob = base64.b64decode(key_line.split()[1])
    n = struct.unpack(">I", blob[:4])[0]
    raw = blob[4 + n + 4:]
    if blob[4:4 + n] != b"ssh-ed25519" or len(raw) != 32:
        raise BadInput("an approver key is not an Ed25519 key")
    der = base64.b64encode(_ED25519_SPKI + raw).decode()
    return f"-----BEGIN PUBLIC KEY-----\n{der}\n-----END PUBLIC KEY-----\n"


def _bundle_facts(store, request_id: str) -> dict:
    """Everything the bundle holds, read in one catalog view, plus the files it copies."""
    from expunge.lineage.store import has_table
    from expunge.orchestrator import requests as rq
    from expunge.orchestrator.planner import plan_path
    from expunge.orchestrator.policy import _pinned_path

    req = rq.get(store, request_id)
    with store.read() as con:
        rows = _rows(con)
        problems = check_chain(_links(rows), [])
        if problems:
            p = problems[0]
            raise AuditBroken(f"the audit chain is broken at seq {p['seq']} ({p['problem']}: {p['detail']}); not "
                              "exporting it (see `expunge audit verify`)")
        mine = [r for r in rows if request_id in r[2]]
        evs = [_event(r) for r in mine]
        created = next((e for e in evs if e["kind"] == "request_created"), None)
        entities = None
        if created is not None and has_table(con, "audit_blobs"):
            got = con.execute("SELECT body FROM audit_blobs WHERE sha256 = ?",
                              [created["payload"]["impact"]["entities_sha256"]]).fetchall()
            entities = json.loads(got[0][0]) if got else None
        plans = list(dict.fromkeys(e["payload"]["plan"] for e in evs if e["kind"] == "plan_saved"))
        approvals = [] if not plans else con.execute(
            """SELECT plan_id, approver, approved_at, key_fingerprint, signature, forced FROM approvals
               WHERE plan_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY approved_at""", [plans]).fetchall()
        checks = []
        if plans and has_table(con, "action_checks"):
            cur = con.execute("SELECT * FROM action_checks WHERE plan_id IN (SELECT unnest(?::VARCHAR[])) "
                              "ORDER BY plan_id, position", [plans])
            cols = [d[0] for d in cur.description]
            checks = [{c: (v.isoformat() + "Z" if hasattr(v, "isoformat") else v) for c, v in zip(cols, r)}
                      for r in cur.fetchall()]
        purged = set() if not has_table(con, "purged_files") else {
            p for (p,) in con.execute("SELECT path FROM purged_files").fetchall()}
        models: dict[str, tuple] = {}
        if plans and has_table(con, "execution_actions"):
            for plan, model, new in con.execute(
                    "SELECT plan_id, model, new_model FROM execution_actions WHERE plan_id IN "
                    "(SELECT unnest(?::VARCHAR[])) ORDER BY plan_id, position", [plans]).fetchall():
                for ref, role in ((model, "replaced"), (new, "new")):
                    if ref and ref not in models:
                        got = con.execute("SELECT artifact_path, sha256 FROM models WHERE name || '@' || version_no "
                                          "= ?", [ref]).fetchall()
                        if got:
                            models[ref] = (role, plan, *got[0])
        sid = con.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchall()
    plan_bytes = {}
    for pid in plans:
        try:
            plan_bytes[pid] = plan_path(store, pid).read_bytes()
        except FileNotFoundError:
            raise UnknownReference(f"plan {pid[:12]} is registered but its document is missing") from None
    policies: dict[str, bytes] = {}
    policy_docs: dict[str, dict] = {}
    plan_policy: dict[str, str] = {}
    for pid, data in plan_bytes.items():
        sha = json.loads(data)["policy"]["sha256"]
        plan_policy[pid] = sha
        if sha not in policies:
            policies[sha] = _pinned_path(store, sha).read_bytes()
            policy_docs[sha] = json.loads(policies[sha])
    appr = []
    for plan, by, at, fp, sig, forced in approvals:
        pol = plan_policy[plan]
        appr.append({"plan": plan, "approver": by, "at": at.isoformat() + "Z", "key_fingerprint": fp,
                     "signature": sig, "forced": bool(forced), "policy_sha256": pol,
                     "public_key": " ".join(policy_docs[pol].get("approver_keys", {}).get(by, "").split()[:2]),
                     "statement": f"expunge plan approval v1\nplan {plan}\npolicy {pol}\n"})
    artifacts = []
    for ref, (role, plan, path, sha) in models.items():
        state = "present" if path and os.path.isfile(path) else ("purged" if path in purged else "missing")
        artifacts.append({"model": ref, "role": role, "plan": plan, "path": path, "sha256": sha, "state": state})
    head = {"seq": int(rows[-1][0]), "hash": rows[-1][5]} if rows else None
    return {"request": req, "rows": rows, "mine": mine, "events": evs, "entities": entities, "plans": plan_bytes,
            "policies": policies, "approvals": appr, "checks": checks, "artifacts": artifacts, "head": head,
            "store_id": sid[0][0] if sid else None}


def payload_summary(e: dict) -> str:
    """A short account of an event's payload for the summary (ids and numbers only)."""
    p = e["payload"] or {}
    skip = {"signature", "previous", "impact", "proof", "metrics", "to"}
    parts = []
    for k in sorted(p):
        v = p[k]
        if k in skip or v is None or isinstance(v, (dict, list)):
            continue
        if isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v):
            v = v[:12] + "…"
        parts.append(f"{k}={v}")
    if e["kind"] == "request_status":
        parts.insert(0, f"→ {p.get('to')}")
    return ", ".join(parts)


def _summary_sections(f: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) tables the Markdown and HTML summaries both render."""
    req = f["request"]
    evs = f["events"]
    out = []
    out.append(("Request", ["field", "value"], [
        ["request", req.id], ["category", req.category], ["status", req.status],
        ["received", req.received_at.isoformat() + "Z"], ["deadline", req.deadline_at.isoformat() + "Z"],
        ["subjects", str(req.subjects)]]))
    created = next((e for e in evs if e["kind"] == "request_created"), None)
    if created:
        imp = created["payload"]["impact"]
        out.append(("Impact when the request was made", ["what", "count"], [
            [k.replace("_", " "), str(imp[k])] for k in ("subjects_requested", "subjects_found", "records", "datasets",
                                                         "runs", "models")]))
    plans = []
    for e in evs:
        if e["kind"] == "plan_saved":
            p = e["payload"]
            state = next((s["kind"] for s in evs if s["kind"] == "plan_superseded" and s["payload"]["plan"] == p["plan"]),
                         "live")
            plans.append([p["plan"][:16] + "…", str(p["models"]), str(p["blocked"]), f"{p['total_seconds']:.3f}",
                          state.replace("plan_", "")])
    out.append(("Plans", ["plan", "models", "blocked", "estimated seconds", "state"], plans))
    actions = []
    for e in evs:
        if e["kind"] == "action_finished":
            p = e["payload"]
            actions.append([str(p["position"]), p["model"], p["action"], p.get("guarantee") or "", p["state"],
                            p.get("new_model") or "—", (p.get("artifact_sha256") or "—")[:16],
                            "" if p.get("wall_seconds") is None else f"{p['wall_seconds']:.3f}"])
    out.append(("Actions", ["#", "model", "action", "guarantee", "state", "new model", "artifact sha256", "seconds"],
                actions))
    out.append(("Approvals (Ed25519 signatures: see SIGNATURES.md)", ["plan", "approver", "key", "at", "forced"],
                [[a["plan"][:16] + "…", a["approver"], a["key_fingerprint"], a["at"], "yes" if a["forced"] else "no"]
                 for a in f["approvals"]]))
    out.append(("Checks", ["plan", "#", "model", "kind", "passed"],
                [[str(c.get("plan_id", ""))[:16] + "…", str(c.get("position")), str(c.get("model")),
                  str(c.get("kind")), str(c.get("passed"))] for c in f["checks"]]
                + [[e["payload"]["plan"][:16] + "…", str(e["payload"]["position"]), e["payload"]["model"],
                    e["payload"]["check"], str(e["payload"]["passed"])] for e in evs if e["kind"] == "check"
                   and not f["checks"]]))
    done = [e for e in evs if e["kind"] in ("execution_completed", "subjects_forgotten", "residuals_purged")]
    out.append(("Completion", ["seq", "event", "what"], [[str(e["seq"]), e["kind"], _completion(e)] for e in done]))
    out.append(("Artifacts", ["model", "role", "sha256", "state"],
                [[a["model"], a["role"], a["sha256"] or "—", a["state"]] for a in f["artifacts"]]))
    out.append(("Events of the request (hash-chained)", ["seq", "at", "kind", "actor", "details", "hash"],
                [[str(e["seq"]), e["at"] or "", e["kind"], e["actor"] or "", payload_summary(e), e["hash"][:16] + "…"]
                 for e in evs]))
    return out


def _completion(e: dict) -> str:
    p = e["payload"]
    if e["kind"] == "execution_completed":
        proof = p.get("proof") or {}
        return (f"lineage proof: {len(proof.get('new_versions') or {})} new version(s), "
                f"{proof.get('erased_records')} erased record(s), reached by erased: "
                f"{len(proof.get('reached_by_erased') or [])}")
    if e["kind"] == "subjects_forgotten":
        return (f"{p.get('records_removed')} record(s) removed, {p.get('tombstones_added')} tombstone(s), "
                f"{p.get('files_rewritten')} file(s) rewritten")
    return f"{p.get('files')} residual file(s) purged"


def _markdown(f: dict, sections) -> str:
    def cell(v: str) -> str:
        return str(v).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")

    head = f["head"]
    lines = [f"# Evidence bundle: {cell(f['request'].id)}", "",
             f"Audit chain head at export: seq {head['seq']}, hash `{head['hash']}`.", "",
             "Check this bundle without expunge: `python3 verify_bundle.py` (add `--anchor FILE` with an anchor file "
             "you kept, or `--head SEQ:HASH`). Signatures: see SIGNATURES.md.", ""]
    for title, header, rows in sections:
        lines += [f"## {cell(title)}", ""]
        if not rows:
            lines += ["(none)", ""]
            continue
        lines.append("| " + " | ".join(cell(h) for h in header) + " |")
        lines.append("|" + "---|" * len(header))
        lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
        lines.append("")
    return "\n".join(lines)


_CSS = ("body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:0 0 1.5em}"
        "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;font-size:.9em}th{background:#f3f3f3}"
        "code{font-size:.9em}")


def _html(f: dict, sections) -> str:
    e = html.escape
    head = f["head"]
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>Evidence bundle: {e(f['request'].id)}</title><style>{_CSS}</style></head><body>",
             f"<h1>Evidence bundle: {e(f['request'].id)}</h1>",
             f"<p>Audit chain head at export: seq {head['seq']}, hash <code>{e(head['hash'])}</code>.</p>",
             "<p>Check this bundle without expunge: <code>python3 verify_bundle.py</code> (add <code>--anchor FILE"
             "</code> with an anchor file you kept). Signatures: see SIGNATURES.md.</p>"]
    for title, header, rows in sections:
        parts.append(f"<h2>{e(title)}</h2>")
        if not rows:
            parts.append("<p>(none)</p>")
            continue
        parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in r) + "</tr>" for r in rows]
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _signatures_md(approvals: list[dict]) -> str:
    lines = ["# Checking the approval signatures", "",
             "Each approval is an Ed25519 signature (raw, RFC 8032) over the statement in `signatures/<n>.statement`,",
             "which names the plan id and the policy hash. The Python standard library has no Ed25519, so",
             "`verify_bundle.py` checks the statement, the key fingerprint and that the policy lists the key; check",
             "the signature itself with OpenSSL 3 (or the `cryptography` package). `ssh-keygen -Y verify` does not",
             "apply: it checks SSHSIG signatures, and these are raw Ed25519 signatures over the statement.", ""]
    if not approvals:
        lines.append("This request's plans have no approvals.")
    for n, a in enumerate(approvals, 1):
        lines += [f"## {n}. {a['approver']} ({a['key_fingerprint']}), plan {a['plan'][:16]}…", "", "```",
                  f"openssl pkeyutl -verify -pubin -inkey signatures/{n}.pub.pem -rawin "
                  f"-in signatures/{n}.statement -sigfile signatures/{n}.sig",
                  "```", "", "or", "", "```",
                  "python3 -c \"from cryptography.hazmat.primitives.serialization import load_pem_public_key as k; "
                  f"k(open('signatures/{n}.pub.pem','rb').read()).verify(open('signatures/{n}.sig','rb').read(), "
                  f"open('signatures/{n}.statement','rb').read()); print('signature {n} ok')\"", "```", ""]
    return "\n".join(lines)


# The names a bundle holds at its top level (`export`): what a leftover of a killed export may hold.
BUNDLE_NAMES = frozenset({"bundle.json", "chain.jsonl", "events.jsonl", "impact.json", "plans", "policies",
                          "signatures", "checks.json", "summary.md", "summary.html", "SIGNATURES.md",
                          "verify_bundle.py", "manifest.json"})


def _bundle_shaped(d: Path) -> bool:
    """Whether a directory holds nothing but (part of) an evidence bundle: the names `export` writes, plain files,
    its three sub-directories holding plain files only."""
    try:
        for p in d.iterdir():
            if p.name not in BUNDLE_NAMES or p.is_symlink():
                return False
            if p.is_dir():
                if p.name not in ("plans", "policies", "signatures") or any(
                        not q.is_file() or q.is_symlink() for q in p.iterdir()):
                    return False
            elif not p.is_file():
                return False
    except OSError:
        return False
    return True


def _sweep_exports(out: Path) -> list[str]:
    """Remove what killed exports to `out` left beside it: its temporary siblings `.<name>.tmp-<pid>-<8 hex>` (and
    `.<name>.old-…`) whose process is gone and that hold nothing but bundle files. One of a live process (an
    export running now) or holding anything else (a directory --force was replacing) is left alone. Returns the
    names removed."""
    import re

    pat = re.compile(r"\." + re.escape(out.name) + r"\.(tmp|old)-([0-9]+)-[0-9a-f]{8}")
    gone = []
    try:
        siblings = list(out.parent.iterdir())
    except OSError:
        return gone
    for p in siblings:
        m = pat.fullmatch(p.name)
        if m and not _alive(int(m.group(2))) and p.is_dir() and not p.is_symlink() and _bundle_shaped(p):
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p.name)
    return gone


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is not exporting yet
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _temp_name(out: Path, kind: str) -> Path:
    return out.parent / f".{out.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where it is not supported
    (then nothing happened)."""
    import ctypes
    import errno
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _put_in_place(tmp: Path, out: Path) -> None:
    """Make the finished bundle at `tmp` appear at `out` in one step: renamed onto an absent or empty `out`;
    swapped with a non-empty one (which then sits at `tmp`, for the caller to remove). Where the file system
    cannot swap, the old `out` is first renamed aside (`.<name>.old-…`, removed by the next export)."""
    if out.is_dir() and not out.is_symlink() and any(out.iterdir()):
        if not _exchange(tmp, out):
            old = _temp_name(out, "old")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
    else:
        if out.is_dir():
            out.rmdir()
        os.rename(tmp, out)
    fsync_dir(out.parent)


def export(store, request_id: str, out: str | os.PathLike, *, force: bool = False) -> dict:
    """Write the request's evidence bundle to `out` (see the module docstring); atomic (a temporary sibling
    directory put in place in one step). Refuses a non-empty `out` unless `force`, and one inside the store."""
    import base64
    from importlib import resources

    from expunge.lineage.store import _now

    out = Path(out)
    _outside_store(store, out, "bundle directory")

    def check_target() -> None:
        if out.is_symlink() or (out.exists() and not out.is_dir()):
            raise BadInput(f"{out} exists and is not a directory")
        if out.is_dir() and any(out.iterdir()) and not force:
            raise BadInput(f"{out} exists and is not empty; choose another directory or pass --force to replace it")

    check_target()
    f = _bundle_facts(store, request_id)
    if f["head"] is None or not f["events"]:
        raise BadInput(f"the audit log holds no event of {request_id} (made before this expunge kept one?)")
    files: dict[str, bytes] = {}
    files["chain.jsonl"] = b"".join(canonical({"seq": int(s), "kind": k, "requests": list(r), "prev": p,
                                               "body_sha256": sha256(b.encode()), "hash": h}) + b"\n"
                                    for s, k, r, b, p, h in f["rows"])
    files["events.jsonl"] = b"".join(canonical({"seq": int(s), "hash": h, "body": b}) + b"\n"
                                     for s, k, r, b, p, h in f["mine"])
    created = next((e for e in f["events"] if e["kind"] == "request_created"), None)
    files["impact.json"] = canonical({"snapshot": created["payload"]["impact"] if created else None,
                                      "entities": f["entities"]}) + b"\n"
    for pid, data in f["plans"].items():
        files[f"plans/{pid}.json"] = data
    for sha, data in f["policies"].items():
        files[f"policies/{sha}.json"] = data
    for n, a in enumerate(f["approvals"], 1):
        files[f"signatures/{n}.statement"] = a["statement"].encode()
        files[f"signatures/{n}.sig"] = base64.b64decode(a["signature"])
        if a["public_key"]:
            files[f"signatures/{n}.pub.pem"] = _pem_public(a["public_key"]).encode()
    files["checks.json"] = canonical(f["checks"]) + b"\n"
    req = f["request"]
    bundle = {"kind": "expunge.audit.bundle", "format": 1, "request": req.id, "store_id": f["store_id"],
              "exported_at": _now().isoformat(timespec="seconds") + "Z", "head": f["head"],
              "request_info": {"category": req.category, "status": req.status, "subjects": req.subjects,
                               "received_at": req.received_at.isoformat() + "Z",
                               "deadline_at": req.deadline_at.isoformat() + "Z"},
              "events": [int(r[0]) for r in f["mine"]], "plans": list(f["plans"]), "policies": list(f["policies"]),
              "approvals": f["approvals"], "artifacts": f["artifacts"], "checks": len(f["checks"])}
    files["bundle.json"] = json.dumps(bundle, sort_keys=True, indent=1, ensure_ascii=False).encode() + b"\n"
    sections = _summary_sections(f)
    files["summary.md"] = _markdown(f, sections).encode()
    files["summary.html"] = _html(f, sections).encode()
    files["SIGNATURES.md"] = _signatures_md(f["approvals"]).encode()
    files["verify_bundle.py"] = resources.files("expunge").joinpath("audit_checker.py").read_bytes()
    files["manifest.json"] = json.dumps({"algorithm": "sha256", "files": {k: sha256(v) for k, v in sorted(files.items())}},
                                        sort_keys=True, indent=1).encode() + b"\n"

    out.parent.mkdir(parents=True, exist_ok=True)
    _sweep_exports(out)
    tmp = _temp_name(out, "tmp")
    tmp.mkdir()
    try:
        dirs = {tmp}
        for rel, data in files.items():  # manifest.json last: a bundle without it is incomplete
            if rel == "manifest.json":
                fault_point("export:before-manifest")
            p = tmp / rel
            if p.parent not in dirs:
                p.parent.mkdir(parents=True, exist_ok=True)
                dirs.add(p.parent)
            with open(p, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            fault_point("export:after-file")
        for d in sorted(dirs, key=lambda d: -len(d.parts)):
            fsync_dir(d)
        fault_point("export:before-rename")
        check_target()
        _put_in_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fault_point("export:after-rename")
    shutil.rmtree(tmp, ignore_errors=True)  # what --force replaced (swapped into the temporary name), if anything
    return {"kind": "expunge.audit.export", "request": req.id, "out": str(out), "files": len(files),
            "events": len(f["mine"]), "head": f["head"], "plans": list(f["plans"]),
            "approvals": len(f["approvals"]), "checks": len(f["checks"]),
            "manifest_sha256": sha256(files["manifest.json"])}

