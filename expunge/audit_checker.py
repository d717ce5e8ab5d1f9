#!/usr/bin/env python3
"""Check an expunge evidence bundle with nothing but the Python standard library.

    python3 verify_bundle.py [BUNDLE_DIR] [--anchor FILE] [--head SEQ:HASH]

This file is `expunge/audit_checker.py`; `expunge audit export` copies it into every bundle as
`verify_bundle.py`, and `expunge audit verify` walks the store's chain with the same `check_chain`.
It checks, and prints as it goes:

1. the manifest: every file of the bundle has the SHA-256 `manifest.json` lists, and no file is
   missing or unlisted;
2. the chain: every link from seq 0 to the head (`chain.jsonl`) hashes to its recorded hash and
   names the previous link's hash; seqs run 0, 1, 2, ... with no gap and in order;
3. the request's events (`events.jsonl`): each event's body hashes to the body hash its link
   commits to, and every link that names the request has its event in the bundle (none left out);
4. the head against an anchor the auditor kept (`--anchor FILE` from `expunge audit anchor`, or
   `--head SEQ:HASH`): a chain rewritten or cut short since then fails;
5. the documents: each plan file hashes to its id and to the id its `plan_saved` event names, the
   pinned policies to their names, approvals name the plan and policy their events name, with the
   key fingerprint of a key the policy lists; artifact hashes match the events, and every artifact
   file found at its recorded path hashes to its recorded SHA-256.

Ed25519 signatures are not checked here (the standard library has no Ed25519): `SIGNATURES.md`
in the bundle gives the exact `openssl` (or `cryptography`) command for each approval.

Exit status: 0 when every check passed, 1 when one failed (each failure names its place), 2 when
the bundle cannot be read at all.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys

GENESIS = "0" * 64
CHAIN_FIELDS = ("seq", "kind", "requests", "prev", "body_sha256")


def canonical(obj) -> bytes:
    """The one encoding hashed everywhere: sorted keys, no whitespace, UTF-8, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def link_hash(seq: int, kind: str, requests, prev: str, body_sha256: str) -> str:
    """An event's hash: SHA-256 of the canonical JSON of its link (which names the previous hash)."""
    return sha256(canonical({"seq": seq, "kind": kind, "requests": list(requests), "prev": prev,
                             "body_sha256": body_sha256}))


def problem(seq, what: str, detail: str) -> dict:
    return {"seq": seq, "problem": what, "detail": detail}


def check_body(seq: int, kind: str, requests, body: str) -> tuple[str, dict | None]:
    """(sha256 of the body, None) if the body is a canonical event naming this seq, kind and requests;
    else (sha256, a problem)."""
    digest = sha256(body.encode())
    try:
        doc = json.loads(body)
    except ValueError:
        return digest, problem(seq, "malformed", f"event {seq}: its body is not valid JSON")
    if not isinstance(doc, dict) or canonical(doc) != body.encode():
        return digest, problem(seq, "malformed", f"event {seq}: its body is not in canonical form")
    if doc.get("seq") != seq:
        return digest, problem(seq, "reorder", f"the event stored as seq {seq} is event {doc.get('seq')} "
                                               "(events were moved)")
    if doc.get("kind") != kind or doc.get("requests") != list(requests):
        return digest, problem(seq, "hash_mismatch", f"event {seq}: its kind or requests differ from its body's")
    return digest, None


def check_chain(links: list[dict], anchors: list[dict] = ()) -> list[dict]:
    """Problems of a chain, in order. `links`: dicts with seq, kind, requests, prev, hash, and either
    `body` (the event's canonical JSON text) or `body_sha256`; `anchors`: dicts with seq and hash."""
    problems: list[dict] = []
    later = {lk.get("seq") for lk in links}
    expected, prev_hash, hashes = 0, GENESIS, {}
    for lk in links:
        seq = lk.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            problems.append(problem(seq, "malformed", f"a link has no integer seq (after seq {expected - 1})"))
            continue
        if seq != expected:
            if seq > expected and expected in later:
                problems.append(problem(expected, "reorder", f"seq {seq} comes where seq {expected} belongs "
                                                             "(events out of order)"))
            elif seq > expected:
                gone = f"{expected}" if seq == expected + 1 else f"{expected}-{seq - 1}"
                problems.append(problem(expected, "gap", f"event(s) {gone} missing: seq {seq} follows seq "
                                                         f"{expected - 1}"))
            else:
                problems.append(problem(seq, "reorder", f"seq {seq} comes again after seq {expected - 1}"))
        later.discard(seq)
        bad = None
        if "body" in lk:
            body_sha, bad = check_body(seq, lk.get("kind"), lk.get("requests") or [], lk["body"])
            if "body_sha256" in lk and lk["body_sha256"] != body_sha:
                bad = bad or problem(seq, "hash_mismatch", f"event {seq}: its body does not hash to the body hash "
                                                           "its link commits to (the event was edited)")
        else:
            body_sha = lk.get("body_sha256")
        if bad:
            problems.append(bad)
        try:
            recomputed = link_hash(seq, lk.get("kind"), lk.get("requests") or [], lk.get("prev"), body_sha)
        except (TypeError, ValueError):
            recomputed = None
        if not bad and recomputed != lk.get("hash"):
            problems.append(problem(seq, "hash_mismatch", f"event {seq}: its content does not hash to its "
                                                          "recorded hash (the event was edited)"))
        elif lk.get("prev") != prev_hash:
            problems.append(problem(seq, "prev_mismatch", f"event {seq} names a previous hash that is not event "
                                                          f"{seq - 1}'s (the chain was cut or spliced here)"))
        hashes[seq] = lk.get("hash")
        prev_hash = lk.get("hash")
        expected = seq + 1
    head = max(hashes) if hashes else -1
    for a in anchors:
        s, h = a.get("seq"), a.get("hash")
        if not isinstance(s, int) or s > head:
            problems.append(problem(head + 1, "truncated", f"the anchor names event {s} ({str(h)[:12]}), but the "
                                                           f"chain ends at seq {head}: its tail was cut off"))
        elif hashes.get(s) != h:
            problems.append(problem(s, "anchor_mismatch", f"event {s}'s hash is not the anchored {str(h)[:12]}: "
                                                          "the chain was rewritten since the anchor"))
    problems.sort(key=lambda p: p["seq"] if isinstance(p["seq"], int) else -1)
    return problems


def read_anchor_file(path: str) -> list[dict]:
    """The anchors of a file `expunge audit anchor --out` appended to (one JSON object a line)."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                a = json.loads(line)
            except ValueError:
                raise ValueError(f"{path} line {n} is not JSON") from None
            if not isinstance(a, dict) or not isinstance(a.get("seq"), int) or not isinstance(a.get("hash"), str):
                raise ValueError(f"{path} line {n} is not an anchor (seq, hash)")
            out.append(a)
    return out


def ssh_fingerprint(public_key_line: str) -> str:
    """As `ssh-keygen -l` prints it: SHA256:<unpadded base64 of the SHA-256 of the key blob>."""
    blob = base64.b64decode(public_key_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def approval_statement(plan_id: str, policy_sha256: str) -> str:
    """What an approver signs (expunge.orchestrator.approvals.statement)."""
    return f"expunge plan approval v1\nplan {plan_id}\npolicy {policy_sha256}\n"


def policy_sha256(doc: dict) -> str:
    """A pinned policy's hash: of what it says, not of where it was read from."""
    return sha256(canonical({k: v for k, v in doc.items() if k != "source"}))


# ---------------------------------------------------------------- the bundle


class Report:
    def __init__(self):
        self.failures: list[str] = []
        self.checked = 0

    def ok(self, what: str) -> None:
        self.checked += 1
        print(f"ok    {what}")

    def fail(self, where: str, what: str) -> None:
        self.failures.append(f"{where}: {what}")
        print(f"FAIL  {where}: {what}")

    def note(self, what: str) -> None:
        print(f"note  {what}")


def _jsonl(path: str) -> list:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _load(root: str, name: str):
    with open(os.path.join(root, name), "rb") as fh:
        return json.loads(fh.read())


def check_manifest(root: str, rep: Report) -> None:
    manifest = _load(root, "manifest.json")
    listed = manifest.get("files", {})
    present = set()
    for dirpath, _, files in os.walk(root):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/")
            if rel != "manifest.json":
                present.add(rel)
    for rel in sorted(set(listed) | present):
        if rel not in listed:
            rep.fail(rel, "a file the manifest does not list")
        elif rel not in present:
            rep.fail(rel, "listed in the manifest but missing")
        else:
            with open(os.path.join(root, rel), "rb") as fh:
                got = sha256(fh.read())
            if got != listed[rel]:
                rep.fail(rel, f"sha256 {got[:16]}… is not the manifest's {listed[rel][:16]}…")
    if not any(f.startswith(r) for f in rep.failures for r in listed):
        rep.ok(f"manifest: the {len(listed)} other files, each with the SHA-256 it lists")


def check_bundle(root: str, anchors: list[dict]) -> Report:
    rep = Report()
    bundle = _load(root, "bundle.json")
    request = bundle["request"]
    print(f"Evidence bundle for {request} ({root})")
    check_manifest(root, rep)

    links = _jsonl(os.path.join(root, "chain.jsonl"))
    head = bundle.get("head") or {}
    if anchors:
        rep.note(f"checking against {len(anchors)} anchor(s) you supplied")
    else:
        rep.note("no anchor given (--anchor FILE or --head SEQ:HASH): a chain rewritten before export would "
                 "still be consistent; compare the head below with one you kept")
    found = check_chain(links, anchors)
    for p in found:
        rep.fail(f"chain.jsonl seq {p['seq']}", f"{p['problem']}: {p['detail']}")
    last = links[-1] if links else {}
    if (last.get("seq"), last.get("hash")) != (head.get("seq"), head.get("hash")):
        rep.fail("chain.jsonl", f"the chain ends at seq {last.get('seq')}, not at the head bundle.json names "
                                f"(seq {head.get('seq')})")
    if not found:
        rep.ok(f"chain: {len(links)} links, seq 0 to {last.get('seq')}, each hashing to its hash and naming the "
               f"previous one; head {str(last.get('hash'))[:16]}…")

    by_seq = {lk.get("seq"): lk for lk in links if isinstance(lk, dict)}
    events = _jsonl(os.path.join(root, "events.jsonl"))
    bodies: dict[int, dict] = {}
    bad_events = 0
    for i, ev in enumerate(events, 1):
        seq = ev.get("seq")
        lk = by_seq.get(seq)
        where = f"events.jsonl line {i} (seq {seq})"
        if lk is None:
            rep.fail(where, "no link with this seq in chain.jsonl")
            bad_events += 1
            continue
        digest, bad = check_body(seq, lk.get("kind"), lk.get("requests") or [], ev.get("body", ""))
        if bad or digest != lk.get("body_sha256") or ev.get("hash") != lk.get("hash"):
            rep.fail(where, (bad or {}).get("detail") or "its body does not hash to the body hash its link commits "
                                                          "to (the event was edited)")
            bad_events += 1
            continue
        bodies[seq] = json.loads(ev["body"])
    mine = sorted(s for s, lk in by_seq.items() if request in (lk.get("requests") or []))
    missing = [s for s in mine if s not in bodies]
    if missing:
        rep.fail("events.jsonl", f"the chain has events of {request} the bundle leaves out: seq "
                                 f"{', '.join(map(str, missing[:10]))}")
    extra = [s for s in bodies if s not in mine]
    if extra:
        rep.fail("events.jsonl", f"events that do not name {request}: seq {', '.join(map(str, extra[:10]))}")
    if not bad_events and not missing and not extra:
        rep.ok(f"events: all {len(mine)} events of {request} in the chain are here, each matching its link")

    _check_documents(root, bundle, bodies, rep)
    return rep


def _events_of(bodies: dict, kind: str) -> list[dict]:
    return [b for _, b in sorted(bodies.items()) if b.get("kind") == kind]


def _check_documents(root: str, bundle: dict, bodies: dict, rep: Report) -> None:
    created = _events_of(bodies, "request_created")
    imp = _load(root, "impact.json")
    if created:
        snap, ent = imp.get("snapshot"), imp.get("entities")
        if snap != created[0]["payload"].get("impact"):
            rep.fail("impact.json", "its snapshot is not the one the request_created event recorded")
        elif ent is None:
            rep.note("impact.json: the store kept no entity lists for this request; counts only")
        elif sha256(canonical(ent)) != snap.get("entities_sha256"):
            rep.fail("impact.json", "the impacted entity lists do not hash to the request_created event's hash")
        else:
            rep.ok(f"impact.json: the snapshot is event seq {created[0]['seq']}'s, and its entity lists hash to it")
    saved = {b["payload"].get("plan"): b["payload"] for b in _events_of(bodies, "plan_saved")}
    for name in bundle.get("plans", []):
        path = f"plans/{name}.json"
        with open(os.path.join(root, path), "rb") as fh:
            data = fh.read()
        if sha256(data) != name:
            rep.fail(path, "its SHA-256 is not its name (a plan's id is the hash of its content)")
        elif name not in saved or saved[name].get("plan_sha256") != name:
            rep.fail(path, "no plan_saved event of the request names this plan")
        else:
            rep.ok(f"{path}: hashes to its id, which its plan_saved event (seq "
                   f"{next(b['seq'] for b in _events_of(bodies, 'plan_saved') if b['payload']['plan'] == name)}) "
                   "names")
    policies = {}
    for name in bundle.get("policies", []):
        path = f"policies/{name}.json"
        doc = _load(root, path)
        if policy_sha256(doc) != name:
            rep.fail(path, "its hash (of what it says, without 'source') is not its name")
        else:
            policies[name] = doc
            rep.ok(f"{path}: hashes to its name")
    signed = {(b["payload"].get("plan"), b["payload"].get("key_fingerprint")): b for b in _events_of(bodies, "approval")}
    for i, a in enumerate(bundle.get("approvals", []), 1):
        where = f"approvals #{i} ({a.get('approver')})"
        ev = signed.get((a.get("plan"), a.get("key_fingerprint")))
        pol = policies.get(a.get("policy_sha256"))
        keys = ((pol or {}).get("approver_keys") or {})
        if ev is None:
            rep.fail(where, "no approval event names this plan and key")
        elif ev["payload"].get("signature") != a.get("signature"):
            rep.fail(where, "its signature is not the one the approval event recorded")
        elif ev["payload"].get("policy_sha256") != a.get("policy_sha256"):
            rep.fail(where, "its policy is not the one the approval event recorded")
        elif pol is None:
            rep.fail(where, "the bundle lacks the policy it was made under")
        elif keys.get(a.get("approver"), "").split()[:2] != a.get("public_key", "").split()[:2]:
            rep.fail(where, "its public key is not the one the policy lists for this approver")
        elif ssh_fingerprint(a["public_key"]) != a.get("key_fingerprint"):
            rep.fail(where, "the key fingerprint does not match the public key")
        elif a.get("statement") != approval_statement(a["plan"], a["policy_sha256"]):
            rep.fail(where, "the signed statement does not name this plan and policy")
        else:
            rep.ok(f"{where}: event seq {ev['seq']}, key {a['key_fingerprint']} listed in the policy, statement "
                   "names the plan and policy (signature: see SIGNATURES.md)")
    checks = _load(root, "checks.json")
    events = _events_of(bodies, "check")
    for ev in events:
        p = ev["payload"]
        rows = [c for c in checks if (c.get("plan_id"), c.get("position"), c.get("kind")) ==
                (p.get("plan"), p.get("position"), p.get("check"))]
        if checks and not any(bool(c.get("passed")) == p.get("passed") for c in rows):
            rep.fail("checks.json", f"no result matches check event seq {ev['seq']} ({p.get('model')}, "
                                    f"{p.get('check')}: {'passed' if p.get('passed') else 'failed'})")
    if events or checks:
        rep.ok(f"checks: {len(checks)} result(s) in checks.json, {len(events)} check event(s) in the chain")
    recorded = {}
    for b in _events_of(bodies, "action_finished"):
        p = b["payload"]
        if p.get("new_model") and p.get("artifact_sha256"):
            recorded[p["new_model"]] = p["artifact_sha256"]
    for a in bundle.get("artifacts", []):
        where = f"artifact {a.get('model')}"
        if a.get("model") in recorded and recorded[a["model"]] != a.get("sha256"):
            rep.fail(where, "its sha256 is not the one its action_finished event recorded")
            continue
        path = a.get("path")
        if path and os.path.isfile(path):
            h = hashlib.sha256()
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            if h.hexdigest() != a.get("sha256"):
                rep.fail(where, f"the file at {path} does not hash to the recorded sha256")
            else:
                rep.ok(f"{where}: the file at its recorded path hashes to {a['sha256'][:16]}…")
        elif a.get("state") == "purged":
            rep.ok(f"{where}: purged (a residual copy), its recorded sha256 {str(a.get('sha256'))[:16]}…")
        else:
            rep.note(f"{where}: no file at {path} on this machine; its recorded sha256 is {str(a.get('sha256'))[:16]}…")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    root, anchors = os.path.dirname(os.path.abspath(__file__)), []
    try:
        while args:
            a = args.pop(0)
            if a == "--anchor":
                anchors += read_anchor_file(args.pop(0))
            elif a == "--head":
                seq, _, h = args.pop(0).partition(":")
                anchors.append({"seq": int(seq), "hash": h})
            elif a in ("-h", "--help"):
                print(__doc__)
                return 0
            else:
                root = a
        rep = check_bundle(root, anchors)
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        print(f"error: cannot read the bundle: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if rep.failures:
        print(f"\nFAILED: {len(rep.failures)} problem(s); first: {rep.failures[0]}")
        return 1
    print(f"\nAll {rep.checked} checks passed. Signatures: see SIGNATURES.md.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
