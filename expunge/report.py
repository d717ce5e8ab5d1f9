"""The governance report: what the store can trace, what was asked, what was done, at what cost, with what
guarantee, whether it was checked, and what still holds the erased data.

`build` reads the catalog (and each executed plan's document) into one JSON document (schemas/
report.schema.json); `render_html` turns that document, and nothing else, into one self-contained HTML page
(inline CSS, hand-drawn SVG charts, no script, no network), so the page and `--json` always show the same
numbers. The store keeps subjects only as keyed hashes; the report shows neither ids nor hashes, only counts.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from html import escape
from pathlib import Path

from expunge.lineage.store import Store, _now, has_table

KIND = "expunge.report"
SCHEMA_VERSION = 1
DONE_STATUSES = ("verified", "closed")          # the request was carried out
GUARANTEE_ORDER = ("exact", "certified", "approximate")
DUE_SOON_DAYS = 7
RESIDUAL_STATES = ("present", "held", "changed", "missing", "purged")
METRIC_TEXT_MAX = 80                             # longer strings in a check's metrics are left out


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat() + "Z"


def _r(x: float | None, nd: int = 6) -> float | None:
    return None if x is None else round(float(x), nd)


# ------------------------------------------------------------------ the document


def build(store: Store, now: datetime | None = None) -> dict:
    """The report as one JSON document (see schemas/report.schema.json); `now` (naive UTC) dates deadlines."""
    now = now or _now()
    with store.read() as con:
        models = _model_coverage(con)
        versions = _version_coverage(store, con)
        runs = _run_coverage(con)
        requests = _requests(con, now)
        executions, actions = _executions(con)
        checks = _checks(con)
        ran_requests = [] if not has_table(con, "executions") else [r for (r,) in con.execute(
            """SELECT DISTINCT pr.request_id FROM plan_requests pr JOIN executions e USING (plan_id)
               ORDER BY 1""").fetchall()]
    plans = _plans(store, executions, actions)
    return {
        "kind": KIND, "schema_version": SCHEMA_VERSION, "generated_at": _iso(now),
        "store": str(store.root.resolve()),
        "coverage": {"models": models, "runs": runs, "dataset_versions": versions},
        "requests": requests,
        "compute": _compute(plans),
        "actions": actions,
        "guarantees": _guarantees(actions),
        "checks": checks,
        "residuals": _residuals(store, ran_requests),
    }


def _model_coverage(con) -> dict:
    """Per model version: does its own run say which dataset versions (and so which records) it learned from,
    does it only inherit lineage from parent models, or can nothing be traced?"""
    rows = con.execute(
        """SELECT m.model_id, m.name || '@' || m.version_no, m.stage, r.name, r.trainer IS NOT NULL,
                  (SELECT count(*) FROM run_inputs i WHERE i.run_id = m.run_id),
                  (SELECT count(*) FROM run_inputs i WHERE i.run_id = m.run_id AND i.subset_file IS NOT NULL),
                  coalesce(r.n_shards, 0) > 1,
                  (SELECT count(*) FROM checkpoints c WHERE c.run_id = m.run_id) > 0,
                  r.facts_file IS NOT NULL
           FROM models m LEFT JOIN runs r USING (run_id) ORDER BY m.model_id""").fetchall()
    parents: dict[int, list[tuple[int, str]]] = {}
    for child, parent, label in con.execute(
            """SELECT mp.model_id, mp.parent_model_id, p.name || '@' || p.version_no FROM model_parents mp
               JOIN models p ON p.model_id = mp.parent_model_id ORDER BY 1, 3""").fetchall():
        parents.setdefault(child, []).append((parent, label))
    lineage: dict[int, str] = {}
    items = []
    # A parent is registered before its children, so model_id order visits parents first.
    for mid, ref, stage, run, trainer, n_inputs, n_subset, sharded, ckpts, facts in rows:
        ps = parents.get(mid, [])
        traced_parents = [label for p, label in ps if lineage.get(p, "none") != "none"]
        if n_inputs:
            kind = "record-level"
            why = f"run {run} recorded {n_inputs} input dataset version(s)" + \
                (f", {n_subset} of them as a row subset" if n_subset else "")
        elif traced_parents:
            kind = "via-parents"
            own = "no run recorded" if run is None else f"run {run} recorded no input datasets"
            why = f"{own}; derived from {', '.join(traced_parents)}"
        else:
            kind = "none"
            own = "no run recorded" if run is None else f"run {run} recorded no input datasets"
            why = own + (" and its parent models cannot be traced either" if ps else " and no parent model")
        lineage[mid] = kind
        items.append({"model": ref, "stage": stage, "run": run, "lineage": kind, "why": why,
                      "parents": [label for _, label in ps],
                      "unlearning_facts": [name for name, has in (("trainer", trainer), ("shards", sharded),
                                                                  ("checkpoints", ckpts), ("per-record facts", facts))
                                           if has]})
    by_stage: dict[str, dict[str, int]] = {}
    for it in items:
        by_stage.setdefault(it["stage"], {"record-level": 0, "via-parents": 0, "none": 0})[it["lineage"]] += 1
    return {"total": len(items), **_count(items, "lineage", ("record-level", "via-parents", "none")),
            "by_stage": by_stage, "items": items}


def _count(items: list[dict], key: str, values) -> dict:
    return {v.replace("-", "_"): sum(1 for it in items if it[key] == v) for v in values}


def _run_coverage(con) -> dict:
    (total, with_inputs, trainer, sharded, ckpt, facts) = con.execute(
        """SELECT count(*),
                  count(*) FILTER (WHERE EXISTS (SELECT 1 FROM run_inputs i WHERE i.run_id = r.run_id)),
                  count(*) FILTER (WHERE trainer IS NOT NULL), count(*) FILTER (WHERE coalesce(n_shards, 0) > 1),
                  count(*) FILTER (WHERE EXISTS (SELECT 1 FROM checkpoints c WHERE c.run_id = r.run_id)),
                  count(*) FILTER (WHERE facts_file IS NOT NULL)
           FROM runs r""").fetchone()
    return {"total": total, "with_inputs": with_inputs, "without_inputs": total - with_inputs,
            "with_trainer": trainer, "sharded": sharded, "with_checkpoints": ckpt, "with_record_facts": facts}


def _version_coverage(store: Store, con) -> dict:
    """Per dataset version: how many of its rows are traced to source records. A version of source records
    or a subset of them traces every row (its record bitmap); a composed version (join, aggregate, augment)
    traces the rows its row map names, and a row built from no record has no owner to erase. A version whose
    lineage file is gone traces nothing."""
    import numpy as np

    cleaned = set() if not has_table(con, "cleaned_versions") else {
        v for (v,) in con.execute("SELECT DISTINCT version_id FROM cleaned_versions").fetchall()}
    rows = con.execute(
        """SELECT v.version_id, d.name || '@' || v.version_no, v.kind, v.row_space, v.n_rows, v.n_records,
                  v.bitmap_file, v.rowmap_file,
                  (SELECT count(DISTINCT run_id) FROM run_inputs i WHERE i.version_id = v.version_id)
           FROM dataset_versions v JOIN datasets d USING (dataset_id) ORDER BY d.name, v.version_no""").fetchall()
    items = []
    for vid, ref, kind, space, n_rows, n_records, bitmap, rowmap, used in rows:
        why = None
        try:
            if not store.data_path(bitmap).exists():
                traced, why = 0, "its record bitmap file is missing"
            elif space == "records":
                traced = n_rows
            else:
                path = store.data_path(rowmap)
                if not path.exists():
                    traced, why = 0, "its row map file is missing"
                else:
                    rm = np.load(path, allow_pickle=False)  # (record ordinal, row) pairs
                    traced = int(np.count_nonzero(np.bincount(rm[1], minlength=n_rows))) if rm.size else 0
        except Exception:  # a corrupt lineage file: the version cannot be traced (the report still renders)
            traced, why = 0, "its lineage file cannot be read"
        lineage = "full" if traced >= n_rows else ("none" if traced == 0 else "partial")
        if why is None:
            why = {"full": "every row traced to its source records",
                   "partial": f"{n_rows - traced:,} of {n_rows:,} rows are built from no source record",
                   "none": "no row is traced to a source record"}[lineage]
        items.append({"version": ref, "kind": kind, "rows": n_rows, "records": n_records, "rows_traced": traced,
                      "lineage": lineage, "why": why, "used_by_runs": used, "cleaned": vid in cleaned})
    return {"total": len(items), **_count(items, "lineage", ("full", "partial", "none")),
            "rows": sum(i["rows"] for i in items), "rows_traced": sum(i["rows_traced"] for i in items),
            "items": items}


def _requests(con, now: datetime) -> dict:
    from expunge.orchestrator.requests import STATUSES

    rows = [] if not has_table(con, "requests") else con.execute(
        """SELECT request_id, received_at, deadline_at, category, status, n_subjects, updated_at FROM requests
           ORDER BY request_id""").fetchall()
    items = []
    for rid, received, deadline, category, status, n, updated in rows:
        done = status in DONE_STATUSES
        days_left = (deadline - now).total_seconds() / 86400
        items.append({
            "id": rid, "category": category, "status": status, "subjects": n, "received_at": _iso(received),
            "deadline_at": _iso(deadline), "done": done,
            # Done: when its status last changed (verified, or closed after that), against the deadline.
            "done_at": _iso(updated) if done else None,
            "on_time": (updated <= deadline) if done else None,
            "days_left": None if done else round(days_left, 2),
            "overdue": (not done) and now > deadline,
            "due_soon": (not done) and 0 <= days_left <= DUE_SOON_DAYS,
        })
    return {"total": len(items), "by_status": {s: sum(1 for i in items if i["status"] == s) for s in STATUSES},
            "open": sum(1 for i in items if not i["done"]), "done": sum(1 for i in items if i["done"]),
            "overdue": sum(1 for i in items if i["overdue"]), "due_soon": sum(1 for i in items if i["due_soon"]),
            "late": sum(1 for i in items if i["on_time"] is False), "due_soon_days": DUE_SOON_DAYS,
            "items": items}


def _executions(con) -> tuple[list[dict], list[dict]]:
    if not has_table(con, "executions"):
        return [], []
    executions = [{"plan": p, "state": s, "started_at": _iso(a), "ended_at": _iso(b),
                   "requests": reqs or []} for p, s, a, b, reqs in con.execute(
        """SELECT e.plan_id, e.state, e.started_at, e.ended_at,
                  (SELECT list(request_id ORDER BY request_id) FROM plan_requests r WHERE r.plan_id = e.plan_id)
           FROM executions e ORDER BY e.started_at, e.plan_id""").fetchall()]
    order = {e["plan"]: i for i, e in enumerate(executions)}
    actions = []
    for pid, pos, model, action, state, new, est, wall, cpu, guarantee, pending in con.execute(
            """SELECT a.plan_id, a.position, a.model, a.action, a.state, a.new_model, a.est_seconds, a.wall_seconds,
                      a.cpu_seconds, r.guarantee, r.pending_check
               FROM execution_actions a
               LEFT JOIN models n ON n.name || '@' || n.version_no = a.new_model
               LEFT JOIN model_replacements r ON r.plan_id = a.plan_id AND r.model_id = n.model_id
               ORDER BY a.plan_id, a.position""").fetchall():
        actions.append({"plan": pid, "position": pos, "model": model, "action": action, "state": state,
                        "new_model": new, "guarantee": guarantee, "pending_check": bool(pending),
                        "estimated_seconds": _r(est), "actual_seconds": _r(wall), "cpu_seconds": _r(cpu)})
    actions.sort(key=lambda a: (order.get(a["plan"], 0), a["position"]))
    return executions, actions


def _plans(store: Store, executions: list[dict], actions: list[dict]) -> list[dict]:
    """Each executed plan with its document's estimate and retrain-everything counterfactual; the guarantee of
    each action comes from the document where no replacement recorded it (a retired model has none)."""
    from expunge.errors import ExpungeError
    from expunge.orchestrator.planner import load_plan

    out = []
    for e in executions:
        mine = [a for a in actions if a["plan"] == e["plan"]]
        try:
            doc = load_plan(store, e["plan"])
            note = None
        except ExpungeError as exc:  # a missing or altered plan document: say so, keep the rest of the report
            doc, note = None, str(exc)
        if doc is not None:
            for a in mine:
                item = doc["items"][a["position"]] if a["position"] < len(doc["items"]) else None
                if a["guarantee"] is None and item and item.get("chosen"):
                    a["guarantee"] = item["chosen"]["guarantee"]
        ran = [a for a in mine if a["actual_seconds"] is not None]
        out.append({**e, "actions": len(mine), "actions_done": sum(a["state"] == "done" for a in mine),
                    "estimated_seconds": _r(sum(a["estimated_seconds"] or 0 for a in mine)),
                    "actual_seconds": _r(sum(a["actual_seconds"] for a in ran)),
                    "cpu_seconds": _r(sum(a["cpu_seconds"] or 0 for a in ran)),
                    "retrain_everything_seconds": _r(doc["retrain_everything"]["seconds"]) if doc else None,
                    "estimated_cost": _r(doc["total"]["cost"]) if doc else None,
                    "retrain_everything_cost": _r(doc["retrain_everything"]["cost"]) if doc else None,
                    "note": note})
    return out


def _compute(plans: list[dict]) -> dict:
    counted = [p for p in plans if p["retrain_everything_seconds"] is not None]
    actual = sum(p["actual_seconds"] for p in counted)
    retrain = sum(p["retrain_everything_seconds"] for p in counted)
    return {"plans_run": len(plans), "plans_counted": len(counted),
            "estimated_seconds": _r(sum(p["estimated_seconds"] for p in counted)),
            "actual_seconds": _r(actual), "cpu_seconds": _r(sum(p["cpu_seconds"] for p in counted)),
            "retrain_everything_seconds": _r(retrain), "saved_seconds": _r(retrain - actual),
            "retrain_over_actual": _r(retrain / actual, 3) if actual > 0 else None,
            "plans": plans}


def _guarantees(actions: list[dict]) -> dict:
    """What was promised per finished action: its guarantee stands once its new version replaced the old one
    (an approximate result waiting for its check has promised nothing yet)."""
    given = [a for a in actions if a["state"] == "done" and not a["pending_check"]]
    return {"given": {g: sum(1 for a in given if a["guarantee"] == g) for g in GUARANTEE_ORDER},
            "awaiting_check": sum(1 for a in actions if a["state"] == "done" and a["pending_check"]),
            "not_done": sum(1 for a in actions if a["state"] != "done")}


def _flat_metrics(value, prefix: str = "", out: dict | None = None, depth: int = 0) -> dict:
    """A check's metrics as `a.b: scalar` pairs: numbers, booleans and short strings, nothing else (no lists,
    which could be ids or predictions; no long text)."""
    out = {} if out is None else out
    if isinstance(value, dict):
        if depth < 3:
            for k in sorted(value, key=str):
                _flat_metrics(value[k], f"{prefix}.{k}" if prefix else str(k), out, depth + 1)
        return out
    if not prefix:
        return out
    if isinstance(value, bool) or value is None:
        out[prefix] = value
    elif isinstance(value, (int, float)):
        out[prefix] = value if math.isfinite(value) else None
    elif isinstance(value, str) and len(value) <= METRIC_TEXT_MAX:
        out[prefix] = value
    return out


def _checks(con) -> dict:
    if not has_table(con, "action_checks"):
        return {"recorded": False, "total": 0, "passed": 0, "failed": 0, "by_kind": {}, "items": []}
    items = []
    for pid, pos, model, new, kind, passed, metrics, at in con.execute(
            """SELECT plan_id, position, model, new_model, kind, passed, metrics, checked_at FROM action_checks
               ORDER BY checked_at, plan_id, position, kind""").fetchall():
        try:
            parsed = json.loads(metrics) if metrics else {}
        except (TypeError, ValueError):
            parsed = {}
        items.append({"plan": pid, "position": pos, "model": model, "new_model": new, "kind": kind,
                      "passed": passed, "metrics": _flat_metrics(parsed if isinstance(parsed, dict) else {}),
                      "checked_at": _iso(at)})
    by_kind: dict[str, dict[str, int]] = {}
    for it in items:
        k = by_kind.setdefault(it["kind"], {"passed": 0, "failed": 0})
        k["passed" if it["passed"] else "failed"] += 1
    return {"recorded": True, "total": len(items), "passed": sum(1 for i in items if i["passed"]),
            "failed": sum(1 for i in items if not i["passed"]), "by_kind": by_kind, "items": items}


def _residuals(store: Store, request_ids: list[str]) -> dict:
    from expunge.errors import ExpungeError
    from expunge.orchestrator.residuals import residuals

    items, notes = [], []
    for rid in request_ids:
        try:
            found = residuals(store, rid)["residuals"]
        except ExpungeError as exc:  # e.g. its plan's document altered: say so, keep the rest of the report
            notes.append(f"{rid}: {exc}")
            continue
        for r in found:
            items.append({"request": rid, "model": r["model"], "kind": r["kind"], "path": r["path"],
                          "state": r["state"], "why": r["why"]})
    states = list(RESIDUAL_STATES) + sorted({i["state"] for i in items} - set(RESIDUAL_STATES))
    return {"requests": len(request_ids), "total": len(items),
            "by_state": {s: sum(1 for i in items if i["state"] == s) for s in states}, "items": items,
            "notes": notes}


# ------------------------------------------------------------------ HTML

TABLE_ROWS = 300  # longer tables are cut in the page (the --json document has every row)
COLORS = {
    "record-level": "#2e7d32", "via-parents": "#f9a825", "none": "#c62828",
    "full": "#2e7d32", "partial": "#f9a825",
    "exact": "#2e7d32", "certified": "#1565c0", "approximate": "#ef6c00",
    "actual": "#1565c0", "estimated": "#90a4ae", "retrain": "#c62828",
    "received": "#78909c", "planned": "#5c6bc0", "approved": "#3949ab", "executing": "#ef6c00",
    "verified": "#2e7d32", "closed": "#1b5e20", "failed": "#c62828",
    "passed": "#2e7d32", "failed_check": "#c62828",
    "present": "#c62828", "held": "#f9a825", "changed": "#8e24aa", "missing": "#78909c", "purged": "#2e7d32",
}
STAGE_ORDER = ("production", "staging", "dev", "archived", "superseded")

CSS = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d8dee4;--bg:#ffffff;--soft:#f6f8fa;--accent:#0b5cad}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
  font:15px/1.5 -apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,"DejaVu Sans",sans-serif}
main{max-width:1180px;margin:0 auto;padding:28px 32px 64px}
header.top{background:#0d2b45;color:#fff;padding:26px 32px}
header.top .inner{max-width:1180px;margin:0 auto}
header.top h1{margin:0 0 4px;font-size:26px;font-weight:650}
header.top p{margin:0;color:#c9d6e3;font-size:14px}
nav{margin-top:12px;font-size:14px}
nav a{color:#e3edf7;margin-right:16px;text-decoration:none;border-bottom:1px solid #5b7a96}
h2{font-size:20px;margin:40px 0 6px;padding-bottom:6px;border-bottom:2px solid var(--line)}
h3{font-size:16px;margin:22px 0 8px}
p.lead{color:var(--muted);margin:4px 0 14px;max-width:900px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:14px;margin-top:6px}
.card{border:1px solid var(--line);border-radius:8px;padding:14px 16px;background:var(--soft)}
.card .k{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted)}
.card .v{font-size:26px;font-weight:650;margin:2px 0}
.card .s{font-size:13px;color:var(--muted)}
.card.bad{border-color:#e5a3a3;background:#fdf1f1}
.card.good{border-color:#a8d5ab;background:#f1f9f1}
table{border-collapse:collapse;width:100%;margin:8px 0 4px;font-size:13.5px}
th,td{text-align:left;padding:6px 9px;border-bottom:1px solid var(--line);vertical-align:top}
th{background:var(--soft);font-weight:600;white-space:nowrap}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr:nth-child(even) td{background:#fbfcfd}
code{white-space:nowrap}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;font-size:12.5px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;color:#fff;
  white-space:nowrap}
.muted{color:var(--muted)}
.warn{color:#b71c1c;font-weight:600}
.ok{color:#1b5e20}
.note{font-size:13px;color:var(--muted);margin:4px 0 10px}
.charts{display:flex;flex-wrap:wrap;gap:18px 36px;align-items:flex-start}
figure{margin:6px 0 10px}
figcaption{font-size:13px;color:var(--muted);margin-top:2px}
svg text{font-family:inherit}
.empty{padding:12px 14px;border:1px dashed var(--line);border-radius:8px;color:var(--muted);background:var(--soft)}
footer{margin-top:48px;font-size:12px;color:var(--muted)}
"""


def _e(value) -> str:
    """Any value as escaped HTML text (also safe inside attribute values)."""
    return escape("" if value is None else str(value), quote=True)


def _secs(x: float | None) -> str:
    from expunge.orchestrator.costs import format_seconds

    return "–" if x is None else format_seconds(x)


def _badge(text: str, key: str | None = None) -> str:
    return f'<span class="badge" style="background:{COLORS.get(key or text, "#607d8b")}">{_e(text)}</span>'


def _table(headers: list[str], rows: list[list[str]], numeric: set[int] = frozenset(), what: str = "rows") -> str:
    """A table from already-escaped cells; at most TABLE_ROWS rows shown."""
    head = "".join(f'<th class="n">{_e(h)}</th>' if i in numeric else f"<th>{_e(h)}</th>"
                   for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows[:TABLE_ROWS])
    more = f'<p class="note">{len(rows) - TABLE_ROWS:,} more {_e(what)} in <code>expunge report --json</code>.</p>' \
        if len(rows) > TABLE_ROWS else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def _legend(keys: list[tuple[str, str]], x: int, y: int) -> str:
    out, cx = [], x
    for key, label in keys:
        out.append(f'<rect x="{cx}" y="{y - 10}" width="12" height="12" rx="2" fill="{COLORS.get(key, "#607d8b")}"/>'
                   f'<text x="{cx + 17}" y="{y}" font-size="12" fill="#1f2328">{_e(label)}</text>')
        cx += 30 + 7 * len(label)
    return "".join(out)


def _svg(width: int, height: int, title: str, body: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}"><title>{_e(title)}</title>'
            f"{body}</svg>")


def _stacked_bars(title: str, rows: list[tuple[str, list[tuple[str, int]]]], legend: list[tuple[str, str]],
                  width: int = 520) -> str:
    """Horizontal stacked bars of counts (one bar per row, segments by key), scaled to the largest row."""
    label_w, bar_h, gap, top = 110, 22, 10, 30 if legend else 6
    scale_w = width - label_w - 50
    biggest = max([sum(v for _, v in segs) for _, segs in rows] + [1])
    height = top + len(rows) * (bar_h + gap) + 4
    parts = [_legend(legend, label_w, 16)] if legend else []
    for i, (label, segs) in enumerate(rows):
        y = top + i * (bar_h + gap)
        parts.append(f'<text x="{label_w - 8}" y="{y + 15}" font-size="12.5" text-anchor="end" '
                     f'fill="#1f2328">{_e(label)}</text>')
        x = float(label_w)
        for key, v in segs:
            if v <= 0:
                continue
            w = v / biggest * scale_w
            parts.append(f'<rect x="{x:.1f}" y="{y}" width="{max(w, 1.5):.1f}" height="{bar_h}" '
                         f'fill="{COLORS.get(key, "#607d8b")}"><title>{_e(label)}: {v:,} {_e(key)}</title></rect>')
            if w >= 22:
                parts.append(f'<text x="{x + w / 2:.1f}" y="{y + 15}" font-size="12" text-anchor="middle" '
                             f'fill="#fff">{v:,}</text>')
            x += w
        total = sum(v for _, v in segs)
        parts.append(f'<text x="{x + 6:.1f}" y="{y + 15}" font-size="12" fill="#59636e">{total:,}</text>')
    return _svg(width, height, title, "".join(parts))


def _grouped_bars(title: str, groups: list[tuple[str, list[tuple[str, float]]]], legend: list[tuple[str, str]],
                  width: int = 760) -> str:
    """Horizontal bars of seconds, a group per label (e.g. a plan: actual, estimated, retrain everything)."""
    label_w, bar_h, inner, gap, top = 120, 16, 3, 14, 30
    scale_w = width - label_w - 90
    biggest = max([v for _, bars in groups for _, v in bars if v] + [1e-9])
    height = top + sum(len(b) * (bar_h + inner) + gap for _, b in groups) + 4
    parts = [_legend(legend, label_w, 16)]
    y = top
    for label, bars in groups:
        gh = len(bars) * (bar_h + inner)
        parts.append(f'<text x="{label_w - 8}" y="{y + gh / 2 + 4:.1f}" font-size="12.5" text-anchor="end" '
                     f'fill="#1f2328" class="mono">{_e(label)}</text>')
        for key, v in bars:
            w = (v or 0) / biggest * scale_w
            parts.append(f'<rect x="{label_w}" y="{y}" width="{max(w, 1.5):.1f}" height="{bar_h}" rx="2" '
                         f'fill="{COLORS.get(key, "#607d8b")}"><title>{_e(label)} {_e(key)}: {_e(_secs(v))}'
                         f'</title></rect><text x="{label_w + max(w, 1.5) + 5:.1f}" y="{y + 12}" font-size="11.5" '
                         f'fill="#1f2328">{_e(_secs(v))}</text>')
            y += bar_h + inner
        y += gap
    return _svg(width, height, title, "".join(parts))


def _log_ticks(lo: float, hi: float) -> list[float]:
    return [10.0 ** k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)]


def _scatter(title: str, points: list[tuple[float, float, str, str]], legend: list[tuple[str, str]],
             size: int = 420) -> str:
    """Estimated (x) against actual (y) seconds, log-log, with the line where they are equal."""
    pad_l, pad_t, pad_r = 62, 30, 16
    vals = [v for x, y, _, _ in points for v in (x, y)]
    lo, hi = 10.0 ** math.floor(math.log10(min(vals))), 10.0 ** math.ceil(math.log10(max(vals)))
    if hi / lo < 100:
        lo = hi / 100
    span = math.log10(hi) - math.log10(lo)
    plot = size - pad_l - pad_r

    def px(v: float) -> float:
        return pad_l + (math.log10(v) - math.log10(lo)) / span * plot

    def py(v: float) -> float:
        return pad_t + plot - (math.log10(v) - math.log10(lo)) / span * plot

    parts = [_legend(legend, pad_l, 16),
             f'<rect x="{pad_l}" y="{pad_t}" width="{plot}" height="{plot}" fill="#fbfcfd" stroke="#d8dee4"/>']
    for t in _log_ticks(lo, hi):
        parts.append(f'<line x1="{px(t):.1f}" y1="{pad_t}" x2="{px(t):.1f}" y2="{pad_t + plot}" stroke="#eef1f4"/>'
                     f'<line x1="{pad_l}" y1="{py(t):.1f}" x2="{pad_l + plot}" y2="{py(t):.1f}" stroke="#eef1f4"/>'
                     f'<text x="{px(t):.1f}" y="{pad_t + plot + 15}" font-size="11" text-anchor="middle" '
                     f'fill="#59636e">{_e(_secs(t))}</text>'
                     f'<text x="{pad_l - 6}" y="{py(t) + 4:.1f}" font-size="11" text-anchor="end" '
                     f'fill="#59636e">{_e(_secs(t))}</text>')
    parts.append(f'<line x1="{px(lo):.1f}" y1="{py(lo):.1f}" x2="{px(hi):.1f}" y2="{py(hi):.1f}" stroke="#59636e" '
                 f'stroke-dasharray="5 4"/><text x="{px(hi) - 6:.1f}" y="{py(hi) + 16:.1f}" font-size="11" '
                 f'text-anchor="end" fill="#59636e">actual = estimated</text>')
    for x, y, label, key in points:
        parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="5" fill="{COLORS.get(key, "#607d8b")}" '
                     f'fill-opacity="0.85" stroke="#fff"><title>{_e(label)}: estimated {_e(_secs(x))}, actual '
                     f'{_e(_secs(y))}</title></circle>')
    parts.append(f'<text x="{pad_l + plot / 2}" y="{pad_t + plot + 36}" font-size="12" text-anchor="middle" '
                 f'fill="#1f2328">estimated (plan)</text>'
                 f'<text x="14" y="{pad_t + plot / 2}" font-size="12" text-anchor="middle" fill="#1f2328" '
                 f'transform="rotate(-90 14 {pad_t + plot / 2})">actual (wall clock)</text>')
    return _svg(size, pad_t + plot + 44, title, "".join(parts))


def _card(key: str, value: str, sub: str, tone: str = "") -> str:
    return (f'<div class="card {tone}"><div class="k">{_e(key)}</div><div class="v">{value}</div>'
            f'<div class="s">{sub}</div></div>')


def _short(plan_id: str) -> str:
    return plan_id[:12]


def render_html(doc: dict) -> str:
    """The report document as one self-contained HTML page: every value escaped, no script, no external URL."""
    acts = doc["actions"]
    sections = [_cards(doc), _coverage_html(doc["coverage"]), _requests_html(doc["requests"]),
                _compute_html(doc["compute"]), _guarantees_html(doc["guarantees"], acts), _checks_html(doc["checks"]),
                _cost_html(acts), _residuals_html(doc["residuals"])]
    nav = "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t in (
        ("coverage", "Lineage coverage"), ("requests", "Requests"), ("compute", "Compute"),
        ("guarantees", "Guarantees"), ("checks", "Checks"), ("cost", "Estimated vs actual"),
        ("residuals", "Residual copies")))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src \'unsafe-inline\'; '
        'img-src data:">'
        '<link rel="icon" href="data:,">'
        f"<title>expunge governance report — {_e(doc['generated_at'][:10])}</title><style>{CSS}</style></head><body>"
        f'<header class="top"><div class="inner"><h1>Governance report</h1>'
        f"<p>Store <code>{_e(doc['store'])}</code> · generated {_e(doc['generated_at'])} (UTC) · "
        f"no subject ids or hashes appear in this report</p><nav>{nav}</nav></div></header>"
        f"<main>{''.join(sections)}"
        f"<footer>expunge report · schema {_e(doc['kind'])} v{_e(doc['schema_version'])} · the same numbers: "
        f"<code>expunge report --json</code></footer></main></body></html>\n")


def _cards(doc: dict) -> str:
    m, req, comp, g, chk, res = (doc["coverage"]["models"], doc["requests"], doc["compute"], doc["guarantees"],
                                 doc["checks"], doc["residuals"])
    cards = [
        _card("Models traced to records", f"{m['record_level']:,} / {m['total']:,}",
              f"{m['via_parents']:,} only via parent models, {m['none']:,} untraceable",
              "bad" if m["none"] else "good"),
        _card("Open requests", f"{req['open']:,}",
              f"{req['overdue']:,} overdue · {req['due_soon']:,} due within {req['due_soon_days']} days · "
              f"{req['done']:,} done", "bad" if req["overdue"] else ""),
        _card("Compute spent", _e(_secs(comp["actual_seconds"])) if comp["plans_counted"] else "–",
              (f"vs {_e(_secs(comp['retrain_everything_seconds']))} to retrain everything"
               + (f" ({comp['retrain_over_actual']:,.1f}×)" if comp["retrain_over_actual"] else ""))
              if comp["plans_counted"] else "no plan has run yet"),
        _card("Guarantees given", f"{sum(g['given'].values()):,}",
              " · ".join(f"{n:,} {k}" for k, n in g["given"].items())
              + (f" · {g['awaiting_check']:,} awaiting check" if g["awaiting_check"] else "")),
        _card("Checks", f"{chk['passed']:,} passed" if chk["recorded"] else "–",
              f"{chk['failed']:,} failed" if chk["recorded"] else "no checks recorded",
              "bad" if chk["failed"] else ("good" if chk["recorded"] and chk["total"] else "")),
        _card("Residual copies", f"{res['by_state']['present']:,}",
              f"present of {res['total']:,} listed · {res['by_state']['held']:,} held",
              "bad" if res["by_state"]["present"] else ""),
    ]
    return f'<section class="cards">{"".join(cards)}</section>'


def _coverage_html(cov: dict) -> str:
    m, dv, runs = cov["models"], cov["dataset_versions"], cov["runs"]
    stages = sorted(m["by_stage"], key=lambda s: (STAGE_ORDER.index(s) if s in STAGE_ORDER else 99, s))
    chart_m = _stacked_bars("Model versions by stage and lineage",
                            [(s, [(k, m["by_stage"][s][k]) for k in ("record-level", "via-parents", "none")])
                             for s in stages] or [("none", [])],
                            [("record-level", "record-level"), ("via-parents", "via parents only"),
                             ("none", "no lineage")])
    kinds = sorted({i["kind"] for i in dv["items"]})
    chart_d = _stacked_bars("Dataset versions by kind and lineage",
                            [(k, [(lv, sum(1 for i in dv["items"] if i["kind"] == k and i["lineage"] == lv))
                                  for lv in ("full", "partial", "none")]) for k in kinds] or [("none", [])],
                            [("full", "every row traced"), ("partial", "some rows untraced"), ("none", "untraced")])
    rank = {"none": 0, "via-parents": 1, "record-level": 2}
    models = sorted(m["items"], key=lambda i: (rank[i["lineage"]], STAGE_ORDER.index(i["stage"])
                                               if i["stage"] in STAGE_ORDER else 99, i["model"]))
    mrows = [[f"<code>{_e(i['model'])}</code>", _e(i["stage"]), _badge(i["lineage"]), _e(i["why"]),
              _e(", ".join(i["unlearning_facts"]) or "–")] for i in models]
    vrank = {"none": 0, "partial": 1, "full": 2}
    vrows = [[f"<code>{_e(i['version'])}</code>", _e(i["kind"]), f"{i['rows']:,}", f"{i['rows_traced']:,}",
              f"{i['records']:,}", _badge(i["lineage"]), _e(i["why"]), f"{i['used_by_runs']:,}",
              "yes" if i["cleaned"] else ""]
             for i in sorted(dv["items"], key=lambda i: (vrank[i["lineage"]], i["version"]))]
    return (
        '<section id="coverage"><h2>Lineage coverage</h2>'
        '<p class="lead">A model version has <b>record-level</b> lineage when its training run recorded the dataset '
        "versions it consumed (and so, through them, every source record); <b>via parents only</b> when it has no "
        "such run but derives from a traced model (its own training data is unknown); <b>no lineage</b> otherwise: "
        "an erasure cannot be shown to have reached it. A dataset version's rows are traced when each names the "
        "source records it was built from.</p>"
        f'<div class="charts"><figure>{chart_m}<figcaption>{m["total"]:,} model versions: {m["record_level"]:,} '
        f"record-level, {m['via_parents']:,} via parents only, {m['none']:,} without lineage.</figcaption></figure>"
        f"<figure>{chart_d}<figcaption>{dv['total']:,} dataset versions: {dv['full']:,} fully traced, "
        f"{dv['partial']:,} partly, {dv['none']:,} untraced ({dv['rows_traced']:,} of {dv['rows']:,} rows traced)."
        "</figcaption></figure></div>"
        f'<p class="note">Runs: {runs["total"]:,} recorded, {runs["with_inputs"]:,} with input datasets, '
        f"{runs['without_inputs']:,} without; {runs['with_trainer']:,} can be re-run (trainer entry point), "
        f"{runs['sharded']:,} sharded (SISA), {runs['with_checkpoints']:,} with checkpoints, "
        f"{runs['with_record_facts']:,} with per-record facts.</p>"
        "<h3>Model versions</h3>"
        + _table(["model", "stage", "lineage", "why", "unlearning facts recorded"], mrows, what="model versions")
        + "<h3>Dataset versions</h3>"
        + _table(["version", "kind", "rows", "rows traced", "records", "lineage", "why", "runs using it",
                  "cleaned by erasure"], vrows, numeric={2, 3, 4, 7}, what="dataset versions")
        + "</section>")


def _requests_html(req: dict) -> str:
    from expunge.orchestrator.requests import STATUSES

    if not req["total"]:
        return ('<section id="requests"><h2>Erasure requests</h2><div class="empty">No erasure request recorded.'
                "</div></section>")
    chart = _stacked_bars("Requests by status", [(s, [(s, req["by_status"][s])]) for s in STATUSES],
                          [], width=460)
    rows = []
    for i in sorted(req["items"], key=lambda i: (i["done"], i["days_left"] if i["days_left"] is not None else 0,
                                                  i["id"])):
        if i["done"]:
            when = f'done {_e(i["done_at"][:10])} ' + ('<span class="ok">on time</span>' if i["on_time"]
                                                      else '<span class="warn">late</span>')
        elif i["overdue"]:
            when = f'<span class="warn">overdue by {-i["days_left"]:,.1f} days</span>'
        else:
            when = f"{i['days_left']:,.1f} days left" + (" (due soon)" if i["due_soon"] else "")
        rows.append([f"<code>{_e(i['id'])}</code>", _e(i["category"]), _badge(i["status"]), f"{i['subjects']:,}",
                     _e(i["received_at"][:16].replace("T", " ")), _e(i["deadline_at"][:16].replace("T", " ")),
                     when])
    return (
        '<section id="requests"><h2>Erasure requests</h2>'
        f'<p class="lead">{req["total"]:,} requests: {req["open"]:,} open, {req["done"]:,} carried out '
        f"(verified or closed). <b>{req['overdue']:,} overdue</b>, {req['due_soon']:,} due within "
        f"{req['due_soon_days']} days, {req['late']:,} carried out after their deadline. Times are UTC.</p>"
        f"<figure>{chart}</figure>"
        + _table(["request", "category", "status", "subjects", "received", "deadline", "deadline tracking"], rows,
                 numeric={3}, what="requests")
        + "</section>")


def _compute_html(comp: dict) -> str:
    head = '<section id="compute"><h2>Compute against retraining everything</h2>'
    if not comp["plans_run"]:
        return head + '<div class="empty">No plan has run yet.</div></section>'
    groups = [(_short(p["plan"]), [("actual", p["actual_seconds"]), ("estimated", p["estimated_seconds"])]
               + ([("retrain", p["retrain_everything_seconds"])] if p["retrain_everything_seconds"] is not None
                  else [])) for p in comp["plans"][:40]]
    chart = _grouped_bars("Compute per executed plan", groups,
                          [("actual", "actual (wall clock)"), ("estimated", "planned estimate"),
                           ("retrain", "retrain everything (estimate)")])
    rows = [[f"<code>{_e(_short(p['plan']))}</code>", _e(", ".join(p["requests"])), _e(p["state"]),
             f"{p['actions_done']:,} / {p['actions']:,}", _e(_secs(p["estimated_seconds"])),
             _e(_secs(p["actual_seconds"])), _e(_secs(p["cpu_seconds"])),
             _e(_secs(p["retrain_everything_seconds"])) if p["retrain_everything_seconds"] is not None
             else f'<span class="warn">{_e(p["note"])}</span>'] for p in comp["plans"]]
    ratio = f" — {comp['retrain_over_actual']:,.1f}× less than retraining everything" \
        if comp["retrain_over_actual"] else ""
    return (head + '<p class="lead">For each plan that ran: the wall-clock seconds its actions took, the planner\'s '
            "estimate, and the plan's counterfactual: retraining every affected model without the erased records "
            f"(an estimate from the recorded run costs). In all: {_e(_secs(comp['actual_seconds']))} spent "
            f"against {_e(_secs(comp['retrain_everything_seconds']))}{ratio}; "
            f"{_e(_secs(comp['saved_seconds']))} saved.</p>"
            f"<figure>{chart}</figure>"
            + _table(["plan", "requests", "execution", "actions done", "estimated", "actual", "cpu",
                      "retrain everything"], rows, numeric={3, 4, 5, 6, 7}, what="plans")
            + "</section>")


def _guarantees_html(g: dict, acts: list[dict]) -> str:
    head = '<section id="guarantees"><h2>Guarantees given</h2>'
    if not acts:
        return head + '<div class="empty">No action has run yet.</div></section>'
    chart = _stacked_bars("Actions by guarantee", [(k, [(k, g["given"][k])]) for k in GUARANTEE_ORDER]
                          + [("awaiting check", [("approximate", g["awaiting_check"])])], [], width=460)
    rows = []
    for a in acts:
        if a["state"] != "done":
            given = _e(a["state"])
        elif a["pending_check"]:
            given = '<span class="warn">awaiting its check (not promoted)</span>'
        else:
            given = "given" + (" (model retired)" if a["new_model"] is None else "")
        rows.append([f"<code>{_e(_short(a['plan']))}</code>", f"{a['position']}", f"<code>{_e(a['model'])}</code>",
                     _e(a["action"]), _badge(a["guarantee"]) if a["guarantee"] else "–",
                     f"<code>{_e(a['new_model'])}</code>" if a["new_model"] else "–", given])
    return (head + '<p class="lead"><b>Exact</b>: the new version is proved by lineage to hold none of the erased '
            "records (or the model was retired); <b>certified</b>: a certified-removal bound (ε, δ); "
            "<b>approximate</b>: unlearning that counts only once it passes the policy's membership-inference and "
            "accuracy check.</p>"
            f"<figure>{chart}</figure>"
            + _table(["plan", "#", "model", "action", "guarantee", "new version", "status"], rows, numeric={1},
                     what="actions")
            + "</section>")


def _checks_html(chk: dict) -> str:
    head = '<section id="checks"><h2>Check results</h2>'
    if not chk["recorded"] or not chk["total"]:
        return head + '<div class="empty">No checks recorded.</div></section>'
    rows = []
    for c in chk["items"]:
        metrics = ", ".join(f"{_e(k)}={_e(round(v, 4) if isinstance(v, float) else v)}"
                            for k, v in list(c["metrics"].items())[:12])
        rows.append([f"<code>{_e(_short(c['plan']))}</code>", f"{c['position']}", f"<code>{_e(c['model'])}</code>",
                     f"<code>{_e(c['new_model'])}</code>" if c["new_model"] else "–", _e(c["kind"]),
                     _badge("passed") if c["passed"] else _badge("failed", "failed_check"),
                     f'<span class="mono">{metrics or "–"}</span>', _e((c["checked_at"] or "")[:19].replace("T", " "))])
    kinds = ", ".join(f"{_e(k)}: {v['passed']:,} passed, {v['failed']:,} failed" for k, v in chk["by_kind"].items())
    return (head + f'<p class="lead">{chk["total"]:,} checks: <b>{chk["passed"]:,} passed</b>, '
            f'<b class="{"warn" if chk["failed"] else ""}">{chk["failed"]:,} failed</b> ({kinds}).</p>'
            + _table(["plan", "#", "model", "new version", "check", "result", "metrics", "checked (UTC)"], rows,
                     numeric={1}, what="checks")
            + "</section>")


def _cost_html(acts: list[dict]) -> str:
    head = '<section id="cost"><h2>Estimated against actual cost, per action</h2>'
    ran = [a for a in acts if a["actual_seconds"] is not None and a["estimated_seconds"] is not None]
    if not ran:
        return head + '<div class="empty">No action has run yet.</div></section>'
    pts = [(a["estimated_seconds"], a["actual_seconds"], f"{a['model']} {a['action']}", a["guarantee"] or "")
           for a in ran if a["estimated_seconds"] > 0 and a["actual_seconds"] > 0]
    left = len(ran) - len(pts)
    chart = _scatter("Estimated against actual seconds per action", pts,
                     [(k, k) for k in GUARANTEE_ORDER]) if pts else ""
    rows = [[f"<code>{_e(_short(a['plan']))}</code>", f"<code>{_e(a['model'])}</code>", _e(a["action"]),
             _e(_secs(a["estimated_seconds"])), _e(_secs(a["actual_seconds"])), _e(_secs(a["cpu_seconds"])),
             f"{a['actual_seconds'] / a['estimated_seconds']:,.2f}×" if a["estimated_seconds"] else "–"]
            for a in ran]
    return (head + '<p class="lead">Each dot is one action: above the dashed line it took longer than the planner '
            "estimated, below it less. The estimate includes the action's check.</p>"
            f"<figure>{chart}<figcaption>{len(pts):,} actions plotted"
            + (f"; {left:,} with an estimate or a time of 0 s (e.g. retiring a model) are in the table only"
               if left else "") + ".</figcaption></figure>"
            + _table(["plan", "model", "action", "estimated", "actual", "cpu", "actual / estimated"], rows,
                     numeric={3, 4, 5, 6}, what="actions")
            + "</section>")


def _residuals_html(res: dict) -> str:
    head = '<section id="residuals"><h2>Residual copies</h2>' + "".join(
        f'<p class="warn">{_e(n)}</p>' for n in res["notes"])
    if not res["requests"]:
        return head + '<div class="empty">No request\'s plan has run yet: nothing is residual.</div></section>'
    if not res["items"]:
        return head + '<div class="empty">No residual copy: no file of a replaced or retired model remains listed.' \
                      "</div></section>"
    import os

    order = {s: i for i, s in enumerate(res["by_state"])}
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in res["items"]:  # one row per replaced model version: its model file and its checkpoints
        groups.setdefault((r["request"], r["model"]), []).append(r)
    rows = []
    for (rid, model), files in sorted(groups.items(), key=lambda kv: (min(order.get(f["state"], 9) for f in kv[1]),
                                                                        kv[0])):
        kinds = {k: sum(1 for f in files if f["kind"] == k) for k in ("model", "checkpoint")}
        what = ", ".join(f"{n:,} {k} file" + ("s" if n > 1 else "") for k, n in kinds.items() if n)
        states = " ".join(_badge(f"{n:,} {st}", st) for st in order
                          if (n := sum(1 for f in files if f["state"] == st)))
        try:
            where = os.path.commonpath([f["path"] for f in files]) if len(files) > 1 else files[0]["path"]
        except ValueError:  # relative and absolute paths mixed
            where = files[0]["path"]
        rows.append([f"<code>{_e(rid)}</code>", f"<code>{_e(model)}</code>", _e(what), states,
                     f'<span class="mono">{_e(where)}</span>', _e("; ".join(sorted({f["why"] for f in files})))])
    states = ", ".join(f"{n:,} {s}" for s, n in res["by_state"].items() if n)
    return (head + '<p class="lead">Files that still hold erased records or their influence after a request\'s plan '
            "ran: the replaced (superseded) and retired model versions and their checkpoints. <b>present</b>: "
            "still there (delete with <code>expunge residuals REQUEST --purge</code>); <b>held</b>: kept by a "
            "policy hold; <b>changed</b>: no longer the recorded content (left alone); <b>purged</b>: deleted. "
            f"{res['total']:,} files for {res['requests']:,} request(s): {_e(states)}. Every file and its path: "
            "<code>expunge residuals REQUEST</code>.</p>"
            + _table(["request", "model version", "files", "state", "where", "why"], rows, what="model versions")
            + "</section>")


def write_html(path: Path, doc: dict) -> None:
    """Write the page atomically (a temporary file beside it, then a rename): never half a report."""
    from expunge.lineage.fsutil import atomic_write_bytes

    atomic_write_bytes(Path(path), render_html(doc).encode("utf-8"), mode=0o644)
