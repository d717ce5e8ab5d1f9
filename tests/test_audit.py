"""The audit log and evidence bundles, on a store built through the real commands (request, plan, approve,
run, purge, restage, key rotation): every change is one event; the chain is recomputed here independently;
a flipped byte, a deleted, reordered or truncated event is named by `audit verify` and by the bundle's
standalone checker (run with no site-packages: standard library only); no raw subject or record id anywhere."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from expunge import audit, synth
from expunge.cli import app
from expunge.lineage.store import Store
from expunge.schemas import load_schema
from tests.conftest import approver_keys

pytest.importorskip("torch")

runner = CliRunner()
SUBJECTS = ("cust-0003", "cust-0007")
N = 40


def cli(root, *args: str):
    return runner.invoke(app, [*args, "--store", str(root)])


def ok(res) -> dict | None:
    assert res.exit_code == 0, res.output + res.stderr
    return json.loads(res.stdout) if res.stdout.lstrip().startswith("{") else None


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A store with one model trained on 40 customers; a request for two of them planned, approved, run
    (full retrain, lineage proof, subjects forgotten), its residual copies purged; the new model restaged with
    a reason that quotes a subject id; the key rotated. Then an anchor and the request's bundle."""
    from expunge.orchestrator.trainers import TrainRequest, mlp

    tmp = tmp_path_factory.mktemp("audit")
    store = Store.init(tmp / "store")
    keys = approver_keys(store, tmp / "keys")
    table = synth.customers(N, seed=3)
    pq.write_table(table, tmp / "features.parquet")
    store.ingest_source(table, name="customers", subject_col="customer_id", record_col="record_id")
    cfg = {"features": str(tmp / "features.parquet"), "row_col": "record_id",
           "feature_cols": [f"f{j}" for j in range(8)], "label_col": "churned", "epochs": 1, "batch_size": 16}
    mlp.train(TrainRequest(store=store, run_name="mlp-1", inputs=[{"dataset": "customers@1", "role": "train"}],
                           config=cfg, seed=5, out_dir=tmp / "mlp-1", trainer=mlp.ENTRY_POINT, model_name="churn",
                           stage="staging", model_family="mlp"))
    root = store.root
    rid = ok(cli(root, "request", "create", *[a for s in SUBJECTS for a in ("--subject", s)],
                 "--reason", f"{SUBJECTS[0]} wrote in", "--json"))["id"]
    first = ok(cli(root, "plan", rid, "--json"))["id"]
    pid = ok(cli(root, "plan", rid, "--json"))["id"]  # made again later: it supersedes the first
    assert pid != first
    ok(cli(root, "plan", "approve", pid, "--key", str(keys["ana"])))
    run = ok(cli(root, "run", pid, "--json"))
    ok(cli(root, "residuals", rid, "--purge"))
    new_model = run["actions"][0]["new_model"]
    ok(cli(root, "model", "stage", new_model, "production", "--reason", f"asked by {SUBJECTS[1]}"))
    ok(cli(root, "key", "rotate"))
    anchors = tmp / "anchors.jsonl"
    ok(cli(root, "audit", "anchor", "--out", str(anchors)))
    bundle = tmp / "bundle"
    exported = ok(cli(root, "audit", "export", rid, "--out", str(bundle), "--json"))
    records = [r for c, r in zip(table.column("customer_id").to_pylist(), table.column("record_id").to_pylist())
               if c in SUBJECTS]
    return dict(tmp=tmp, root=root, rid=rid, pid=pid, first=first, run=run, new_model=new_model, anchors=anchors, bundle=bundle,
                exported=exported, records=records, artifact=tmp / "mlp-1" / "model.pt")


def copy_store(world, tmp_path) -> Store:
    """A copy of the world's store to tamper with (its key file is found by the store id it shares)."""
    dst = tmp_path / "store"
    shutil.copytree(world["root"], dst)
    return Store.open(dst)


def rows(store) -> list[tuple]:
    with store.read() as con:
        return con.execute("SELECT seq, kind, requests, body, prev, hash FROM audit_events ORDER BY seq").fetchall()


def by_kind(store, kind):
    return [json.loads(r[3]) for r in rows(store) if r[1] == kind]


# ------------------------------------------------------------------ what is recorded


def test_every_change_is_one_event_with_independently_checked_facts(world):
    store = Store.open(world["root"])
    rid, pid = world["rid"], world["pid"]
    evs = audit.events(store)
    assert [e["kind"] for e in evs] == [
        "policy_set", "request_created", "plan_saved", "request_status", "plan_saved", "plan_superseded",
        "request_status", "approval", "request_status", "request_status", "execution_started", "action_started",
        "action_finished", "check", "subjects_forgotten", "execution_completed", "request_status",
        "residuals_purged", "model_stage", "key_rotated"]
    assert [e["payload"]["to"] for e in evs if e["kind"] == "request_status"] == \
        ["planned", "planned", "approved", "executing", "verified"]
    ev = {e["kind"]: e for e in evs}
    # The impact snapshot against the data: 2 subjects, one record each, one dataset, run and model.
    assert ev["request_created"]["payload"]["impact"] | {"entities_sha256": None} == {
        "subjects_requested": 2, "subjects_found": 2, "records": 2, "datasets": 1, "runs": 1, "models": 1,
        "entities_sha256": None}
    with store.read() as con:
        (blob,) = con.execute("SELECT body FROM audit_blobs").fetchone()
        appr = con.execute("SELECT approver, key_fingerprint, signature FROM approvals").fetchall()
    assert json.loads(blob) == {"datasets": [["customers@1", 2, 2]], "runs": [["mlp-1", 2]],
                                "models": [["churn@1", "staging", True]]}
    assert hashlib.sha256(blob.encode()).hexdigest() == ev["request_created"]["payload"]["impact"]["entities_sha256"]
    assert ev["plan_saved"]["payload"]["plan"] == pid == ev["plan_saved"]["payload"]["plan_sha256"]
    assert ev["plan_superseded"]["payload"] == {"plan": world["first"], "by": pid, "approval_lapsed": False}
    assert hashlib.sha256((world["root"] / "plans" / f"{pid}.json").read_bytes()).hexdigest() == pid
    p = ev["approval"]["payload"]
    assert (ev["approval"]["actor"], p["approver"], p["key_fingerprint"], p["signature"]) == ("ana", *appr[0])
    fin = ev["action_finished"]["payload"]
    from expunge.orchestrator.execute import model_info

    info = model_info(store, world["new_model"])
    assert fin["new_model"] == world["new_model"] and fin["state"] == "done" and fin["action"] == "full_retrain"
    assert fin["artifact_sha256"] == hashlib.sha256(Path(info["path"]).read_bytes()).hexdigest()
    assert ev["execution_completed"]["payload"]["proof"]["new_versions"] == {world["new_model"]: fin["artifact_sha256"]}
    # The run's check (a lineage proof for the full retrain), written with its action_checks row.
    chk = ev["check"]["payload"]
    with store.read() as con:
        row = con.execute("SELECT plan_id, position, model, new_model, kind, passed FROM action_checks").fetchall()
    assert row == [(pid, 0, "churn@1", world["new_model"], "lineage", True)]
    assert (chk["plan"], chk["position"], chk["model"], chk["new_model"], chk["check"], chk["passed"]) == row[0]
    assert chk["metrics"]["verdict"] == "pass"
    assert ev["subjects_forgotten"]["payload"] | {"files_rewritten": 0} == {
        "request": rid, "subjects": 2, "records_removed": 2, "tombstones_added": 2, "files_rewritten": 0}
    purged = ev["residuals_purged"]["payload"]
    assert purged["files"] == 2 and hashlib.sha256(world["artifact"].as_posix().encode()).hexdigest() in \
        purged["paths_sha256"]
    assert ev["model_stage"]["payload"]["reason_sha256"] == \
        hashlib.sha256(f"asked by {SUBJECTS[1]}".encode()).hexdigest()
    # Events name their request; store-wide ones none.
    assert {e["kind"] for e in evs if not e["requests"]} == {"policy_set", "model_stage", "key_rotated"}
    assert all(e["requests"] == [rid] for e in evs if e["requests"])


def test_the_chain_recomputed_here_from_its_definition(world):
    """SHA-256 over canonical JSON, written out again here (not with expunge's functions)."""
    prev = "0" * 64
    for seq, kind, reqs, body, prev_col, digest in rows(Store.open(world["root"])):
        doc = json.loads(body)
        assert body == json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert (doc["seq"], doc["kind"], doc["requests"]) == (seq, kind, list(reqs))
        link = json.dumps({"seq": seq, "kind": kind, "requests": list(reqs), "prev": prev,
                           "body_sha256": hashlib.sha256(body.encode()).hexdigest()},
                          sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert prev_col == prev and digest == hashlib.sha256(link.encode()).hexdigest()
        prev = digest


def test_a_refused_change_leaves_no_event(world, tmp_path):
    store = copy_store(world, tmp_path)
    before = rows(store)
    res = cli(store.root, "model", "stage", world["new_model"], "production", "--reason", "again")
    assert res.exit_code == 2 and "already production" in res.stderr
    with pytest.raises(RuntimeError):
        with store.write() as txn:
            audit.log_event(txn, "policy_set", policy_sha256="0" * 64)
            raise RuntimeError("the change failed after its event was written")
    assert rows(store) == before


# ------------------------------------------------------------------ tampering with the store


def verify_cli(root, *extra) -> tuple[int, dict]:
    res = cli(root, "audit", "verify", *extra, "--json")
    doc = json.loads(res.stdout)
    jsonschema.validate(doc, load_schema("audit_verify.schema.json"))
    return res.exit_code, doc


def tamper(store, sql: str, params=()):
    with store.write() as txn:
        txn.con.execute(sql, list(params))


def flip(text: str, at: int) -> str:
    return text[:at] + chr(ord(text[at]) ^ 1) + text[at + 1:]


def test_intact_chain_verifies(world):
    code, doc = verify_cli(world["root"], "--anchor", str(world["anchors"]))
    assert code == 0 and doc["ok"] and doc["anchors"] == 1 and doc["events"] == 20
    res = cli(world["root"], "audit", "verify")
    assert res.exit_code == 0 and "intact: 20 event(s)" in res.stdout


def test_one_flipped_byte_in_any_event_is_named(world, tmp_path):
    """Every event: bytes of its body (seeded positions), of its hash and of its prev, flipped in the rows
    `verify` reads; then a few through the store itself. The first broken event named is the flipped one."""
    import random

    from expunge.audit_checker import check_chain

    store = copy_store(world, tmp_path)
    rnd = random.Random(11)
    original = audit._links(rows(store))
    assert not check_chain(original)
    for k, link in enumerate(original):
        for col in ("body", "body", "body", "hash", "prev"):
            bad = [dict(lk) for lk in original]
            bad[k][col] = flip(link[col], rnd.randrange(len(link[col])))
            got = check_chain(bad)
            # A flipped hash also breaks the next event's link: the first broken one is still this one.
            assert got and got[0]["seq"] == k, (k, col, got[:1])
            assert got[0]["problem"] in ("hash_mismatch", "malformed", "reorder", "prev_mismatch")
    for seq, col in ((0, "body"), (9, "body"), (18, "body"), (12, "hash")):
        value = original[seq][col]
        tamper(store, f"UPDATE audit_events SET {col} = ? WHERE seq = ?", [flip(value, 20), seq])
        got = audit.verify(store)
        assert not got["ok"] and got["first_broken"]["seq"] == seq, (seq, col, got["first_broken"])
        tamper(store, f"UPDATE audit_events SET {col} = ? WHERE seq = ?", [value, seq])
    assert audit.verify(store)["ok"]
    # Through the command line: exit 1 (a failed check, not bad input), the place named.
    tamper(store, "UPDATE audit_events SET body = replace(body, '\"records\":2', '\"records\":3') WHERE seq = 1")
    code, doc = verify_cli(store.root)
    assert code == 1 and doc["first_broken"]["seq"] == 1 and doc["first_broken"]["problem"] == "hash_mismatch"
    res = cli(store.root, "audit", "verify")
    assert res.exit_code == 1 and "BROKEN at seq 1: hash_mismatch" in res.stdout


def test_an_edited_event_with_its_hash_recomputed_breaks_the_next_link(world, tmp_path):
    """A forger who edits event 4 and recomputes its hash leaves it self-consistent: event 5's prev names it."""
    from expunge.audit_checker import link_hash, sha256

    store = copy_store(world, tmp_path)
    seq, kind, reqs, body, prev, _ = rows(store)[4]
    forged = body.replace('"replan":false', '"replan":true')
    assert forged != body
    tamper(store, "UPDATE audit_events SET body = ?, hash = ? WHERE seq = 4",
           [forged, link_hash(seq, kind, reqs, prev, sha256(forged.encode()))])
    code, doc = verify_cli(store.root)
    assert code == 1 and doc["first_broken"]["seq"] == 5 and doc["first_broken"]["problem"] == "prev_mismatch"


def test_a_deleted_event_is_a_gap(world, tmp_path):
    store = copy_store(world, tmp_path)
    tamper(store, "DELETE FROM audit_events WHERE seq = 6")
    code, doc = verify_cli(store.root)
    assert code == 1 and doc["first_broken"]["seq"] == 6 and doc["first_broken"]["problem"] == "gap"
    assert "6 missing" in doc["first_broken"]["detail"]


def test_two_reordered_events_are_named(world, tmp_path):
    store = copy_store(world, tmp_path)
    tamper(store, "UPDATE audit_events SET seq = CASE seq WHEN 8 THEN 9 ELSE 8 END WHERE seq IN (8, 9)")
    code, doc = verify_cli(store.root)
    assert code == 1 and doc["first_broken"]["seq"] == 8 and doc["first_broken"]["problem"] == "reorder"


def test_a_truncated_or_rewritten_tail_needs_the_anchor(world, tmp_path):
    store = copy_store(world, tmp_path)
    tamper(store, "DELETE FROM audit_events WHERE seq >= 18")
    # Consistent by itself: only the anchor kept outside the store tells.
    assert verify_cli(store.root)[0] == 0
    code, doc = verify_cli(store.root, "--anchor", str(world["anchors"]))
    assert code == 1 and doc["first_broken"]["problem"] == "truncated" and doc["first_broken"]["seq"] == 18
    # A rewritten tail: the cut events replaced by forged ones, each correctly chained.
    audit.log_event(store, "model_stage", model="churn@2", from_stage="staging", to_stage="production")
    audit.log_event(store, "policy_set", policy_sha256="0" * 64)
    assert verify_cli(store.root)[0] == 0
    code, doc = verify_cli(store.root, "--anchor", str(world["anchors"]))
    assert code == 1 and doc["first_broken"] == {"seq": 19, "problem": "anchor_mismatch",
                                                 "detail": doc["first_broken"]["detail"]}
    # The anchor command refuses to anchor a broken chain.
    tamper(store, "DELETE FROM audit_events WHERE seq = 3")
    res = cli(store.root, "audit", "anchor")
    assert res.exit_code == 1 and "broken at seq 3" in res.stderr


# ------------------------------------------------------------------ the bundle


def checker(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    """The bundle's checker in a bare interpreter: -I (no PYTHONPATH, no user site) -S (no site-packages, so
    neither expunge nor any third-party package can be imported), from a directory without expunge."""
    return subprocess.run([sys.executable, "-I", "-S", str(bundle / "verify_bundle.py"), *args],
                          capture_output=True, text=True, cwd=bundle.parent, env={"PATH": os.environ["PATH"]})


def test_the_checker_runs_on_the_standard_library_alone(world):
    bare = subprocess.run([sys.executable, "-I", "-S", "-c", "import expunge"], capture_output=True,
                          cwd=world["tmp"], env={"PATH": os.environ["PATH"]})
    assert bare.returncode != 0  # the interpreter the checker runs in cannot see expunge
    res = checker(world["bundle"], "--anchor", str(world["anchors"]))
    assert res.returncode == 0, res.stdout + res.stderr
    for needle in ("manifest", "chain: 20 links", "all 17 events of req-000001",
                   "impact.json", "hashes to its id", "approvals #1 (ana)", "purged (a residual copy)",
                   "All "):
        assert needle in res.stdout, needle
    jsonschema.validate(world["exported"], load_schema("audit_export.schema.json"))
    assert world["exported"]["manifest_sha256"] == hashlib.sha256((world["bundle"] / "manifest.json").read_bytes()).hexdigest()
    jsonschema.validate(json.loads((world["bundle"] / "bundle.json").read_text()),
                        load_schema("audit_bundle.schema.json"))


def rewrite_manifest(bundle: Path) -> None:
    """What a forger does after editing a file: make the manifest agree."""
    files = {}
    for p in sorted(bundle.rglob("*")):
        if p.is_file() and p.name != "manifest.json":
            files[p.relative_to(bundle).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps({"algorithm": "sha256", "files": files}))


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


@pytest.mark.parametrize("how", ["flip-event", "flip-link", "delete", "reorder", "truncate", "omit", "manifest"])
def test_tampered_bundle_fails_the_standalone_checker(world, tmp_path, how):
    b = tmp_path / "b"
    shutil.copytree(world["bundle"], b)
    chain, events = b / "chain.jsonl", b / "events.jsonl"
    want = None
    if how == "flip-event":  # a number in the impact snapshot of event 1
        ev = lines(events)
        ev[0] = ev[0].replace('\\"records\\":2', '\\"records\\":3')
        events.write_text("".join(ev))
        want = "events.jsonl line 1 (seq 1)"
    elif how == "flip-link":  # one byte of event 5's recorded body hash
        ch = lines(chain)
        doc = json.loads(ch[5])
        doc["body_sha256"] = flip(doc["body_sha256"], 7)
        ch[5] = json.dumps(doc) + "\n"
        chain.write_text("".join(ch))
        want = "chain.jsonl seq 5: hash_mismatch"
    elif how == "delete":
        ch = lines(chain)
        del ch[0]  # the policy_set event: not the request's, so only the chain shows it
        chain.write_text("".join(ch))
        want = "chain.jsonl seq 0: gap"
    elif how == "reorder":
        ch = lines(chain)
        ch[8], ch[9] = ch[9], ch[8]
        chain.write_text("".join(ch))
        want = "chain.jsonl seq 8: reorder"
    elif how == "truncate":  # the last two (store-wide) events cut, and bundle.json's head made to agree
        ch = lines(chain)[:18]
        chain.write_text("".join(ch))
        meta = json.loads((b / "bundle.json").read_text())
        meta["head"] = {"seq": 17, "hash": json.loads(ch[-1])["hash"]}
        (b / "bundle.json").write_text(json.dumps(meta))
        want = "chain.jsonl seq 18: truncated"
    elif how == "omit":  # an event of the request left out of the bundle (its approval)
        ev = lines(events)
        events.write_text("".join(e for e in ev if '\\"kind\\":\\"approval\\"' not in e))
        assert len(lines(events)) == len(ev) - 1
        want = "the bundle leaves out: seq 7"
    if how != "manifest":
        rewrite_manifest(b)
    else:
        (b / "summary.md").write_text((b / "summary.md").read_text().replace("full_retrain", "retire"))
        want = "summary.md: sha256"
    res = checker(b, "--anchor", str(world["anchors"]))
    assert res.returncode == 1, res.stdout
    assert want in res.stdout, res.stdout
    if how == "truncate":
        assert checker(b).returncode == 0  # without the anchor a cut chain is consistent


def test_signatures_check_with_the_commands_the_bundle_gives(world, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(world["bundle"], b)
    text = (b / "SIGNATURES.md").read_text()
    (openssl_cmd,) = re.findall(r"^openssl .*$", text, re.M)
    (python_cmd,) = re.findall(r"^python3 -c .*$", text, re.M)
    py = subprocess.run(python_cmd.replace("python3", sys.executable, 1), shell=True, cwd=b, capture_output=True,
                        text=True)
    assert py.returncode == 0 and "signature 1 ok" in py.stdout, py.stderr
    if shutil.which("openssl"):
        res = subprocess.run(openssl_cmd, shell=True, cwd=b, capture_output=True, text=True)
        assert res.returncode == 0 and "Signature Verified Successfully" in res.stdout, res.stdout + res.stderr
    sig = bytearray((b / "signatures" / "1.sig").read_bytes())
    sig[10] ^= 1
    (b / "signatures" / "1.sig").write_bytes(bytes(sig))
    assert subprocess.run(python_cmd.replace("python3", sys.executable, 1), shell=True, cwd=b,
                          capture_output=True).returncode != 0


def test_no_raw_subject_or_record_id_in_the_log_or_the_bundle(world):
    """Every column of the event and blob tables, and every bundle file decoded (JSON strings inside JSON too)."""
    needles = [*SUBJECTS, *world["records"]]
    assert len(needles) == 4

    def strings(value):
        if isinstance(value, str):
            yield value
            try:
                inner = json.loads(value)
            except ValueError:
                return
            if not isinstance(inner, str):
                yield from strings(inner)
        elif isinstance(value, dict):
            for k, v in value.items():
                yield k
                yield from strings(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                yield from strings(v)

    texts = []
    with Store.open(world["root"]).read() as con:
        for table in ("audit_events", "audit_blobs"):
            for row in con.execute(f"SELECT * FROM {table}").fetchall():
                texts += list(strings([str(v) if not isinstance(v, (list, str)) else v for v in row]))
    assert len(texts) > 50
    for p in world["bundle"].rglob("*"):
        if not p.is_file():
            continue
        data = p.read_bytes()
        texts.append(data.decode("latin-1"))
        if p.suffix == ".json":
            texts += list(strings(json.loads(data)))
        elif p.suffix == ".jsonl":
            texts += [t for line in data.decode().splitlines() for t in strings(json.loads(line))]
    for t in texts:
        for n in needles:
            assert n not in t, (n, t[:200])


def test_log_filters_and_its_schema(world):
    doc = ok(cli(world["root"], "audit", "log", "--request", world["rid"], "--json"))
    jsonschema.validate(doc, load_schema("audit_log.schema.json"))
    assert len(doc["events"]) == 17 and all(e["requests"] == [world["rid"]] for e in doc["events"])
    doc = ok(cli(world["root"], "audit", "log", "--kind", "approval", "--json"))
    assert [e["kind"] for e in doc["events"]] == ["approval"]
    res = cli(world["root"], "audit", "log")
    assert res.exit_code == 0 and "request_created" in res.stdout
    res = cli(world["root"], "audit", "log", "--kind", "nonsense")
    assert res.exit_code == 2 and res.stderr.count("\n") == 1


def test_anchor_and_export_refusals(world, tmp_path):
    store = copy_store(world, tmp_path)
    root = store.root
    doc = ok(cli(root, "audit", "anchor", "--json"))
    jsonschema.validate(doc, load_schema("audit_anchor.schema.json"))
    assert doc["file"] is None and doc["seq"] == 19
    for args in (["audit", "anchor", "--out", str(root / "anchors.jsonl")],
                 ["audit", "export", world["rid"], "--out", str(root / "evidence")],
                 ["audit", "export", "req-000099", "--out", str(tmp_path / "x")],
                 ["audit", "verify", "--anchor", str(tmp_path / "missing.jsonl")]):
        res = cli(root, *args)
        assert res.exit_code == 2 and res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, args
    assert not (root / "anchors.jsonl").exists() and not (root / "evidence").exists()
    assert not (tmp_path / "x").exists()
    # An existing non-empty directory is kept unless --force; nothing half-written beside it.
    out = tmp_path / "ev"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = cli(root, "audit", "export", world["rid"], "--out", str(out))
    assert res.exit_code == 2 and "--force" in res.stderr and (out / "keep.txt").read_text() == "mine"
    ok(cli(root, "audit", "export", world["rid"], "--out", str(out), "--force"))
    assert not (out / "keep.txt").exists() and (out / "verify_bundle.py").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev", "store"]
    # An anchor file of another store is bad input, not a broken chain.
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"store_id": "someone-else", "seq": 0, "hash": "0" * 64}) + "\n")
    assert cli(root, "audit", "verify", "--anchor", str(other)).exit_code == 2


def test_html_summary_is_escaped_and_self_contained(world):
    page = (world["bundle"] / "summary.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in page.replace(
        "https://", "")  # no external resource
    assert world["rid"] in page and world["new_model"] in page
    # Escaping, on a hostile value: the table cells go through html.escape.
    from expunge.audit import _html

    class R:
        id = "<img src=x onerror=alert(1)>"

    got = _html({"request": R(), "head": {"seq": 0, "hash": "0" * 64}}, [("t", ["h"], [["<b>&"]])])
    assert "<img" not in got and "&lt;img" in got and "&lt;b&gt;&amp;" in got


def test_check_results_travel_in_the_bundle(world, tmp_path):
    """The run's check (its action_checks row, and the `check` event written in the same write) is in the bundle,
    the summary and the chain; a result edited in checks.json no longer matches it."""
    out = world["bundle"]
    assert world["exported"]["checks"] == 1
    (row,) = json.loads((out / "checks.json").read_text())
    assert (row["plan_id"], row["kind"], row["passed"]) == (world["pid"], "lineage", True)
    assert "lineage" in (out / "summary.md").read_text().split("## Checks")[1].split("##")[0]
    res = checker(out)
    assert res.returncode == 0 and "checks: 1 result(s) in checks.json, 1 check event(s)" in res.stdout, res.stdout
    copy = tmp_path / "b"
    shutil.copytree(out, copy)
    (copy / "checks.json").write_text(json.dumps([row | {"passed": False}]))
    rewrite_manifest(copy)
    res = checker(copy)
    seq = next(e["seq"] for e in audit.events(Store.open(world["root"])) if e["kind"] == "check")
    assert res.returncode == 1 and f"checks.json: no result matches check event seq {seq}" in res.stdout, res.stdout
