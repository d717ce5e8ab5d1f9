"""SIGKILL after a check that failed was recorded, before the run acted on it (rolled the result back and
escalated): the resumed run acts on the recorded check instead of checking again, so each attempt has exactly one
check row and one `check` event, and the escalation happens once. (The passed-check case, killed before the
promotion, is in test_kill_run's chain: `run:after-check-3`.)"""

from __future__ import annotations

import json

from tests.faults.harness import KILLED, assert_whole, catalog_tables, cli, killed_where, record


def _rows(root, table, *cols):
    tabs = catalog_tables(root / (root / "CURRENT").read_text().strip())
    if table not in tabs:
        return []
    names = tabs[table][0]
    return [tuple(r[names.index(c)] for c in cols) for r in tabs[table][2]]


def test_killed_after_a_failed_check_escalates_once(tmp_path):
    from tests.test_verify import small_store

    # An approximate result that fails its membership-inference check (the erased rows memorised), then the
    # plan's next admissible action (a retrain), checked by lineage.
    store, doc, _, _ = small_store(tmp_path, memorise=True, n_subjects=100, rows_each=10, erase=5, held=30)
    root = store.root
    trace = tmp_path / "trace"
    res = cli(["run", doc["id"], "--store", root, "--json"], fault="run:after-check-0", trace=trace)
    assert res.returncode == KILLED, res.stderr[-2000:]
    assert killed_where(trace) == "run:after-check-0@1"
    assert_whole(root)
    # Killed with the failed check recorded, nothing acted on: no escalation, the result still pending.
    (first,) = _rows(root, "action_checks", "new_model", "kind", "verdict")
    assert first[1:] == ("mia", "fail") and _rows(root, "escalations", "rejected_model") == []
    assert _rows(root, "model_replacements", "pending_check") == [(True,)]
    res = cli(["run", doc["id"], "--store", root, "--json"])
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    (a,) = out["actions"]
    assert (a["action"], a["escalated_from"], a["attempts"], a["check_result"]) == \
        ("full_retrain", "approximate_unlearning", 2, "pass")
    assert out["completed"] is not None
    # One check per attempt: the recorded failure (acted on, not repeated) and the retrain's pass.
    checks = sorted(_rows(root, "action_checks", "new_model", "kind", "verdict"), key=lambda r: r[1] != "mia")
    assert checks == [first, (a["new_model"], "lineage", "pass")], checks
    kinds = [k for (k,) in _rows(root, "audit_events", "kind")]
    assert kinds.count("check") == 2 and kinds.count("escalation") == 1, kinds
    assert _rows(root, "escalations", "rejected_model", "to_action") == [(first[0], "full_retrain")]
    chain = cli(["audit", "verify", "--store", root, "--json"])
    assert chain.returncode == 0 and json.loads(chain.stdout)["ok"]
    record("kill", "run", "run:after-check-0 (a failed check, before its escalation)", "1/1 actions done, resumed")
