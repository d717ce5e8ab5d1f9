"""`expunge report`: the governance report's numbers against the store's tables (computed here, independently),
the page shows them escaped and holds no subject id or hash, and it renders in headless Chromium without a
console message or a blank screen."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from datetime import timedelta
from pathlib import Path

import jsonschema
import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from expunge.cli import app
from expunge.schemas import load_schema

pytest.importorskip("torch")

runner = CliRunner()
ODD_NAME = 'vendor <b>"x"</b> & co'  # a model name that must be escaped in the page


def cli(*args) -> object:
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def catalog(store, sql: str, params=()) -> list:
    with store.read() as con:
        return con.execute(sql, list(params)).fetchall()


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """The demo store with both demo requests run (both complete; the second's approximate results failed their
    check and escalated, as `expunge run` records), then through the commands: a request with 3 days left, one
    10 days overdue, the first request's residual copies purged, models registered without lineage, a composed
    dataset with a row built from no record, and one more (planted) check result in `action_checks`. Then
    `expunge report --out --json`."""
    from expunge import synth
    from expunge.demo import N_CUSTOMERS, build_demo, demo_plans
    from expunge.lineage.store import _now
    from expunge.orchestrator import execute, planner
    from expunge.orchestrator import requests as rq
    from expunge.orchestrator.policy import store_policy

    root = tmp_path_factory.mktemp("report")
    store, subject = build_demo(root)
    first, second = demo_plans(store, subject)
    planner.approve(store, first["id"], root / "approver.key")
    execute.run_plan(store, first["id"])
    # The second plan takes the cheapest admissible actions (approximate ones), whatever the demo's models took to
    # train: at the demo's milliseconds, the 2× premium the default policy pays for a stronger guarantee can
    # cover an exact retrain once each action's bookkeeping is priced.
    from expunge.orchestrator.policy import set_store_policy

    policy = root / "policy.toml"
    policy.write_text(policy.read_text().replace("max_premium = 2.0", "max_premium = 1.0"))
    set_store_policy(store, policy)
    again = planner.make_plan(store, second["requests"], store_policy(store))  # stale once the first ran
    planner.save_plan(store, again)
    planner.approve(store, again["id"], root / "approver.key")
    execute.run_plan(store, again["id"])
    st = store.root
    ids = synth.customer_ids(N_CUSTOMERS)

    assert cli("request", "create", "--subject", ids[10], "--deadline", 3, "--store", st).exit_code == 0
    overdue = rq.create(store, [ids[11]], deadline_days=30, now=_now() - timedelta(days=40))
    assert overdue.id == "req-000004"
    assert cli("residuals", "req-000001", "--purge", "--store", st).exit_code == 0

    for name in ("vendor.pt", "adapter.pt", "vrm.pt"):
        (root / name).write_bytes(name.encode())
    manifests = [
        {"models": [{"name": ODD_NAME, "path": "vendor.pt", "from_run": False}]},
        {"models": [{"name": "adapter", "path": "adapter.pt", "from_run": False,
                     "parents": [{"model": "fraud@2", "relation": "fine-tune"}]}]},
        {"run": {"name": "vendor-run", "inputs": []}, "models": [{"name": "vendor-run-model", "path": "vrm.pt"}]},
    ]
    for i, m in enumerate(manifests):
        (root / f"m{i}.json").write_text(json.dumps(m))
        res = cli("track", "run", "--manifest", root / f"m{i}.json", "--store", st)
        assert res.exit_code == 0, res.output
    rec = synth.customers(N_CUSTOMERS, seed=1).column("record_id")[0].as_py()
    store.ingest_dataset(pa.table({"row_id": ["aug-0", "aug-1"], "src": [[], [rec]]}), name="augmented",
                         parents=["customers@1"], kind="augment", sources={"customers@1": "src"}, row_col="row_id")

    assert catalog(store, "SELECT count(*) FROM action_checks")[0][0] > 0  # recorded by the runs
    with store.write() as txn:
        # A planted result: nested scalars are kept, lists (here holding subject ids) dropped.
        metrics = {"mia": {"loss_auc": 0.5123, "learned_auc": 0.4987}, "accuracy": {"test_before": 0.81},
                   "probe": {"changed": 2, "erased_rows": [subject, ids[7]]}, "verdict": "within tolerance"}
        txn.con.execute("""INSERT INTO action_checks (plan_id, position, model, new_model, kind, passed, metrics,
                           checked_at) VALUES (?, 0, 'planted@1', NULL, 'mia', false, ?, ?)""",
                        [again["id"], json.dumps(metrics), _now()])

    out = root / "out" / "report.html"
    out.parent.mkdir()
    res = cli("report", "--out", out, "--json", "--store", st)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    return {"store": store, "root": root, "doc": doc, "html": out.read_text(), "out": out, "plans":
            [first["id"], again["id"]], "subjects": ids, "subject": subject}


# ------------------------------------------------------------------ the numbers


def test_coverage_matches_the_catalog(reported):
    store, doc = reported["store"], reported["doc"]
    jsonschema.validate(doc, load_schema("report.schema.json"))
    m = doc["coverage"]["models"]
    traced = {r for (r,) in catalog(store, """SELECT name || '@' || version_no FROM models m WHERE EXISTS
                                               (SELECT 1 FROM run_inputs i WHERE i.run_id = m.run_id)""")}
    everything = {r for (r,) in catalog(store, "SELECT name || '@' || version_no FROM models")}
    lineage = {i["model"]: i["lineage"] for i in m["items"]}
    assert set(lineage) == everything
    assert {k for k, v in lineage.items() if v == "record-level"} == traced
    assert {k for k, v in lineage.items() if v == "via-parents"} == {"adapter@1"}
    assert {k for k, v in lineage.items() if v == "none"} == {f"{ODD_NAME}@1", "vendor-run-model@1"}
    assert (m["total"], m["record_level"], m["via_parents"], m["none"]) == (len(everything), len(traced), 1, 2)
    why = {i["model"]: i["why"] for i in m["items"]}
    assert why["vendor-run-model@1"] == "run vendor-run recorded no input datasets and no parent model"
    assert "derived from fraud@2" in why["adapter@1"]
    assert sum(sum(s.values()) for s in m["by_stage"].values()) == len(everything)

    v = {i["version"]: i for i in doc["coverage"]["dataset_versions"]["items"]}
    assert (v["augmented@1"]["rows"], v["augmented@1"]["rows_traced"], v["augmented@1"]["lineage"]) == (2, 1, "partial")
    others = [i for k, i in v.items() if k != "augmented@1"]
    assert all(i["lineage"] == "full" and i["rows_traced"] == i["rows"] for i in others)
    used = dict(catalog(store, """SELECT d.name || '@' || v.version_no, count(DISTINCT i.run_id) FROM dataset_versions v
                                  JOIN datasets d USING (dataset_id) LEFT JOIN run_inputs i USING (version_id)
                                  GROUP BY 1"""))
    assert {k: i["used_by_runs"] for k, i in v.items()} == used
    runs = doc["coverage"]["runs"]
    assert runs["total"] == catalog(store, "SELECT count(*) FROM runs")[0][0]
    assert runs["without_inputs"] == 1  # vendor-run


def test_requests_by_status_and_deadlines(reported):
    store, doc = reported["store"], reported["doc"]
    req = doc["requests"]
    by_status = dict(catalog(store, "SELECT status, count(*) FROM requests GROUP BY 1"))
    assert {k: v for k, v in req["by_status"].items() if v} == by_status
    assert by_status == {"verified": 2, "received": 2}
    items = {i["id"]: i for i in req["items"]}
    assert items["req-000004"]["overdue"] and items["req-000004"]["days_left"] == pytest.approx(-10, abs=0.01)
    assert items["req-000003"]["due_soon"] and items["req-000003"]["days_left"] == pytest.approx(3, abs=0.01)
    for done in ("req-000001", "req-000002"):
        assert items[done]["done"] and items[done]["on_time"] and items[done]["days_left"] is None
        assert not items[done]["due_soon"] and not items[done]["overdue"]
    assert (req["open"], req["done"], req["overdue"], req["due_soon"], req["late"]) == (2, 2, 1, 1, 0)


def test_compute_against_retraining_everything(reported):
    store, doc = reported["store"], reported["doc"]
    comp = doc["compute"]
    assert [p["plan"] for p in comp["plans"]] == reported["plans"]
    actual = est = retrain = 0.0
    for pid, p in zip(reported["plans"], comp["plans"]):
        wall, cpu, e = catalog(store, "SELECT sum(wall_seconds), sum(cpu_seconds), sum(est_seconds) FROM "
                                      "execution_actions WHERE plan_id = ?", [pid])[0]
        plan_doc = json.loads((store.root / "plans" / f"{pid}.json").read_text())
        counterfactual = sum(i["retrain_seconds"] for i in plan_doc["items"])
        assert p["actual_seconds"] == pytest.approx(wall, abs=1e-5)
        assert p["cpu_seconds"] == pytest.approx(cpu, abs=1e-5)
        assert p["estimated_seconds"] == pytest.approx(e, abs=1e-5)
        assert p["retrain_everything_seconds"] == pytest.approx(counterfactual, abs=1e-5)
        actual, est, retrain = actual + wall, est + e, retrain + counterfactual
    assert comp["actual_seconds"] == pytest.approx(actual, abs=1e-5)
    assert comp["estimated_seconds"] == pytest.approx(est, abs=1e-5)
    assert comp["retrain_everything_seconds"] == pytest.approx(retrain, abs=1e-5)
    assert comp["saved_seconds"] == pytest.approx(retrain - actual, abs=1e-5)
    assert comp["retrain_over_actual"] == pytest.approx(retrain / actual, abs=1e-3)
    n_actions = catalog(store, "SELECT count(*) FROM execution_actions")[0][0]
    assert len(doc["actions"]) == n_actions
    assert all(a["actual_seconds"] is not None for a in doc["actions"])


def test_guarantees_and_checks(reported):
    store, doc = reported["store"], reported["doc"]
    promoted = dict(catalog(store, "SELECT guarantee, count(*) FROM model_replacements WHERE NOT pending_check "
                                   "GROUP BY 1"))
    retired = catalog(store, "SELECT count(*) FROM execution_actions WHERE action = 'retire' AND state = 'done'")[0][0]
    pending = catalog(store, "SELECT count(*) FROM model_replacements WHERE pending_check")[0][0]
    g = doc["guarantees"]
    assert g["given"] == {"exact": promoted.get("exact", 0) + retired, "certified": promoted.get("certified", 0),
                          "approximate": promoted.get("approximate", 0)}
    assert g["awaiting_check"] == pending and g["not_done"] == 0
    done = catalog(store, "SELECT count(*) FROM execution_actions WHERE state = 'done'")[0][0]
    assert sum(g["given"].values()) + g["awaiting_check"] == done

    chk = doc["checks"]
    total, passed = catalog(store, "SELECT count(*), count(*) FILTER (WHERE passed) FROM action_checks")[0]
    assert chk["recorded"] and (chk["total"], chk["passed"], chk["failed"]) == (total, passed, total - passed)
    assert chk["failed"] >= 2  # the planted one, and the approximate result the run rejected
    kinds = catalog(store, "SELECT kind, count(*) FILTER (WHERE passed), count(*) FILTER (WHERE NOT passed) "
                           "FROM action_checks GROUP BY 1")
    assert chk["by_kind"] == {k: {"passed": p, "failed": f} for k, p, f in kinds}
    mia = next(c for c in chk["items"] if c["model"] == "planted@1")
    # Scalars kept (nested keys joined), lists dropped.
    assert mia["metrics"] == {"mia.loss_auc": 0.5123, "mia.learned_auc": 0.4987, "accuracy.test_before": 0.81,
                              "probe.changed": 2, "verdict": "within tolerance"}


def test_residual_copies(reported):
    """Independently: the files of the models each executed plan replaced (promoted) or retired, with their
    runs' checkpoints and removal rows files; purged where the file is gone (request 1 was purged), present otherwise."""
    store, doc = reported["store"], reported["doc"]
    expected = {}
    for pid in reported["plans"]:
        rid = catalog(store, "SELECT request_id FROM plan_requests WHERE plan_id = ?", [pid])[0][0]
        rows = catalog(store, """
            SELECT m.artifact_path, m.run_id FROM models m WHERE m.model_id IN (
                SELECT replaces_model_id FROM model_replacements WHERE plan_id = ? AND NOT pending_check
                UNION SELECT o.model_id FROM execution_actions a JOIN models o ON o.name || '@' || o.version_no = a.model
                      WHERE a.plan_id = ? AND a.action = 'retire'
                UNION SELECT r.model_id FROM escalations e JOIN models r ON r.name || '@' || r.version_no = e.rejected_model
                      WHERE e.plan_id = ?)""", [pid, pid, pid])
        for path, run in rows:
            paths = [path] + [p for (p,) in catalog(store, "SELECT path FROM checkpoints WHERE run_id = ?", [run])]
            extra = json.loads(catalog(store, "SELECT extra FROM runs WHERE run_id = ?", [run])[0][0] or "{}")
            if "removal_rows" in extra:  # a certified run's training rows, kept for removal
                paths.append(extra["removal_rows"]["file"])
            for p in paths:
                expected.setdefault((rid, p), "present" if os.path.exists(p) else "purged")
    got = {(r["request"], r["path"]): r["state"] for r in doc["residuals"]["items"]}
    assert got == expected
    states = {s: sum(1 for v in expected.values() if v == s) for s in ("present", "purged")}
    assert states["present"] > 0 and states["purged"] > 0
    assert {k: v for k, v in doc["residuals"]["by_state"].items() if v} == states
    assert {r for r, _ in got} == {"req-000001", "req-000002"}


def test_an_altered_plan_document_is_named_not_fatal(reported):
    """A plan document changed after it ran: the report still renders, and says which plan and why."""
    from expunge.report import build, render_html

    store, pid = reported["store"], reported["plans"][1]
    path = store.root / "plans" / f"{pid}.json"
    body = path.read_bytes()
    try:
        path.write_bytes(body.replace(b'"requests"', b'"requests" ', 1))
        doc = build(store)
        jsonschema.validate(doc, load_schema("report.schema.json"))
        bad = next(p for p in doc["compute"]["plans"] if p["plan"] == pid)
        assert bad["retrain_everything_seconds"] is None and "changed after it was made" in bad["note"]
        assert doc["compute"]["plans_counted"] == 1
        assert [n.split(":")[0] for n in doc["residuals"]["notes"]] == ["req-000002"]
        html = render_html(doc)
        assert "changed after it was made" in html
    finally:
        path.write_bytes(body)


# ------------------------------------------------------------------ the page


def test_html_shows_the_numbers_escaped(reported):
    from expunge.orchestrator.costs import format_seconds

    doc, html = reported["doc"], reported["html"]
    assert html.startswith("<!DOCTYPE html>")
    assert f"<b>{doc['requests']['overdue']} overdue</b>" in html
    assert "overdue by 10.0 days" in html and "3.0 days left (due soon)" in html
    assert f"{doc['coverage']['models']['record_level']} / {doc['coverage']['models']['total']}" in html
    assert format_seconds(doc["compute"]["actual_seconds"]) in html
    assert format_seconds(doc["compute"]["retrain_everything_seconds"]) in html
    chk = doc["checks"]
    assert f"{chk['passed']} passed</b>" in html and f"{chk['failed']} failed</b>" in html
    assert "mia.loss_auc=0.5123" in html
    assert "No checks recorded" not in html
    for r in ("req-000001", "req-000002", "req-000003", "req-000004"):
        assert r in html
    # Every value escaped: the odd model name appears only in its escaped form.
    assert ODD_NAME not in html and "vendor &lt;b&gt;&quot;x&quot;&lt;/b&gt; &amp; co@1" in html
    # Self-contained: nothing to fetch, no script.
    assert "<script" not in html.lower() and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html and "src=" not in html
    assert os.stat(reported["out"]).st_mode & 0o777 == 0o644


def test_no_subject_id_or_hash_in_the_report(reported):
    store, html = reported["store"], reported["html"]
    text = html + "\n" + json.dumps(reported["doc"])
    assert reported["subject"] in reported["subjects"]  # the erased customer is among those looked for
    leaked = [s for s in reported["subjects"] if s in text]
    assert leaked == []
    hashes = catalog(store, "SELECT hi, lo FROM request_subjects UNION SELECT hi, lo FROM tombstones")
    assert hashes
    for hi, lo in hashes:
        for form in (str(hi), str(lo), f"{hi:016x}", f"{lo:016x}", f"{hi:016x}{lo:016x}"):
            assert form not in text


def test_empty_store_and_a_lost_lineage_file(tmp_path):
    """No request, plan or check yet: the page says so; a version whose bitmap file is gone is untraced."""
    from expunge.lineage.store import Store
    from expunge.report import build, render_html

    store = Store.init(tmp_path / "st")
    html = render_html(doc := build(store))
    jsonschema.validate(doc, load_schema("report.schema.json"))
    assert not doc["checks"]["recorded"] and doc["requests"]["total"] == 0 and doc["compute"]["plans_run"] == 0
    for needle in ("No checks recorded.", "No erasure request recorded.", "No plan has run yet.",
                   "nothing is residual"):
        assert needle in html
    store.ingest_source(pa.table({"c": ["a", "b"], "r": ["1", "2"]}), name="src", subject_col="c", record_col="r")
    (bitmap,) = catalog(store, "SELECT bitmap_file FROM dataset_versions")[0]
    store.data_path(bitmap).unlink()
    v = build(store)["coverage"]["dataset_versions"]
    assert (v["none"], v["items"][0]["rows_traced"], v["items"][0]["why"]) == (1, 0, "its record bitmap file is missing")


# ------------------------------------------------------------------ the command


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    from expunge.lineage.store import Store

    st = tmp_path / "st"
    Store.init(st)
    for args, needle in (([], "say where the report goes"),
                         (["--out", tmp_path / "nope" / "r.html"], "does not exist"),
                         (["--out", tmp_path], "is a directory")):
        res = cli("report", *args, "--store", st)
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], \
            res.output
    res = cli("report", "--json", "--store", tmp_path / "no-store")
    assert res.exit_code == 2 and res.output.startswith("error:")
    assert not list(tmp_path.glob("*.html")) and not list(tmp_path.glob(".*.tmp"))


def test_the_file_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    from expunge.lineage.store import Store

    st = tmp_path / "st"
    Store.init(st)
    out = tmp_path / "report.html"
    out.write_text("the previous report")

    def broken(src, dst):
        raise OSError("disk full (planted)")

    monkeypatch.setattr(os, "replace", broken)
    res = cli("report", "--out", out, "--store", st)
    assert res.exit_code == 2 and "disk full" in res.output
    assert out.read_text() == "the previous report"
    assert [p.name for p in tmp_path.iterdir() if p.name != "st"] == ["report.html"]  # no temporary file left
    monkeypatch.undo()
    res = cli("report", "--out", out, "--store", st)
    assert res.exit_code == 0 and out.read_text().startswith("<!DOCTYPE html>")
    assert f"Wrote {out}: 0 model versions" in res.output


def test_report_does_not_import_torch(reported):
    code = ("import sys\nfrom expunge.cli import app\n"
            f"try:\n    app(['report', '--json', '--store', {str(reported['store'].root)!r}], standalone_mode=False)\n"
            "finally:\n    print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip().splitlines()[-1] == "NO-TORCH"
    assert json.loads(res.stdout)["requests"]["total"] == 4


# ------------------------------------------------------------------ in a browser

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0", "--window-size=1280,2000"]


def chromium() -> str:
    """The Chromium binary; a skip when missing, a failure where CI asks for the browser."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("EXPUNGE_REQUIRE_BROWSER") == "1":
        pytest.fail("EXPUNGE_REQUIRE_BROWSER=1 but chromium is not installed (apt-get install -y chromium)")
    pytest.skip("chromium is not installed: the browser test needs Debian's `chromium` (apt-get install -y "
                "chromium); CI installs it")


def render(page: Path, tmp_path: Path) -> tuple[list[str], Path]:
    """Open `page` in headless Chromium with a fresh profile: its console messages (every CONSOLE line it logs:
    the report has no script, so any message is an error, e.g. a blocked resource) and the screenshot."""
    shot = tmp_path / "shot.png"
    res = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                          f"--screenshot={shot}", page.resolve().as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    return [ln for ln in res.stderr.splitlines() if ":CONSOLE" in ln], shot


def decode_png(data: bytes) -> np.ndarray:
    """An 8-bit RGB or RGBA non-interlaced PNG (what Chromium writes) as an (h, w, channels) array."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, []
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
    assert depth == 8 and interlace == 0 and ctype in (2, 6)
    bpp = 3 if ctype == 2 else 4
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(h, w * bpp + 1)
    out = np.zeros((h, w * bpp), np.uint8)
    prev = np.zeros(w * bpp, np.int64)
    for y in range(h):
        f, line = raw[y, 0], raw[y, 1:].astype(np.int64)
        if f == 1:
            line = np.cumsum(line.reshape(w, bpp), axis=0).reshape(-1) % 256
        elif f == 2:
            line = (line + prev) % 256
        elif f in (3, 4):
            cur = [0] * (w * bpp)
            pv, ln = prev.tolist(), line.tolist()
            for x in range(w * bpp):
                a = cur[x - bpp] if x >= bpp else 0
                b = pv[x]
                if f == 3:
                    cur[x] = (ln[x] + (a + b) // 2) & 255
                else:
                    c = pv[x - bpp] if x >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    cur[x] = (ln[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
            line = np.array(cur, np.int64)
        out[y] = line
        prev = line
    return out.reshape(h, w, bpp)[:, :, :3]


def ink(png: Path) -> tuple[int, float]:
    """(distinct colours, share of pixels that differ from the most common colour, the background)."""
    px = decode_png(png.read_bytes()).reshape(-1, 3)
    packed = (px[:, 0].astype(np.int64) << 16) | (px[:, 1].astype(np.int64) << 8) | px[:, 2]
    values, counts = np.unique(packed, return_counts=True)
    return len(values), 1 - counts.max() / counts.sum()


def test_the_report_renders_in_chromium(reported, tmp_path):
    console, shot = render(reported["out"], tmp_path)
    assert console == []
    colours, share = ink(shot)
    assert colours > 50 and share > 0.10, (colours, share)


def test_the_browser_check_sees_console_errors_and_blank_pages(tmp_path):
    """The check itself: a blank page that logs an error and loads a resource fails both ways."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="default-src '
                    '\'none\'; script-src \'unsafe-inline\'"><link rel="stylesheet" href="missing.css"></head><body>'
                    '<script>console.error("planted")</script></body></html>')
    console, shot = render(page, tmp_path)
    assert any("planted" in ln for ln in console) and any("missing.css" in ln for ln in console), console
    colours, share = ink(shot)
    assert colours <= 2 and share < 0.01


def test_a_model_a_later_request_unlearned_cannot_be_reproduced_and_says_why(reported):
    """The first plan's new versions trained on the second subject's records, which the store forgot when the
    second request completed: re-running them cannot give the same artifact (the data is gone), and `verify
    --reproduce` must say so rather than report a different hash as a failure. The second plan's versions have
    no later request: they are re-run."""
    from expunge.orchestrator import execute, verify

    from expunge.orchestrator import planner

    store = reported["store"]
    first, second = reported["plans"]
    # Which of the first plan's versions trained on the second subject's records: the second plan, made from the
    # lineage before the store forgot anything, counted erased records in their training.
    trained_on_second = {i["model"] for i in planner.load_plan(store, second)["items"] if i["records"] > 0}
    made = {st["new_model"] for st in execute._state(store, first).values() if st["new_model"]}
    assert made & trained_on_second and made - trained_on_second  # both kinds: the test can tell them apart
    for m in made:
        assert verify.erased_since(store, first, m) == (["req-000002"] if m in trained_on_second else []), m
    for st in execute._state(store, second).values():
        if st["new_model"]:
            assert verify.erased_since(store, second, st["new_model"]) == []
    pos, st = next((p, s) for p, s in execute._state(store, first).items()
                   if s["new_model"] in trained_on_second and s["action"] == "full_retrain")
    rep = verify.reproduce(store, first, pos, "full_retrain", st["model"], st["new_model"], st["detail"])
    assert rep == {"done": False, "why": "req-000002 erased records it trained on since: its training data cannot be "
                                         "read again"}
