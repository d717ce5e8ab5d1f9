"""SIGKILL during `expunge run` (the demo's approved plan: six actions, then the store forgets the subject):
mid-action (while an action records its result), between actions, before an action, after the lineage proof,
inside the store's own deletion (forget_subjects: before its catalog switch, after it) and after it, and at
seeded moments. After each kill the store opens whole, nothing committed is lost, no action is done twice;
the run resumed after the last kill ends in exactly the store an uninterrupted run makes, each action once."""

from __future__ import annotations

import functools
import json
import random
import subprocess
import sys
import time

import pytest

from tests.faults.harness import (
    FULL, KILLED, assert_whole, audit_trail, catalog_tables, cli, committed, copy_store, differences, kill_after, killed_where,
    normalised, progress, record, table_rows, trace_lines,
)


ORDER = {"received": 0, "planned": 1, "approved": 2, "executing": 3, "verified": 4}


def _check_progress(old: dict, new: dict, what: str) -> None:
    """Nothing committed is lost, nothing is done twice."""
    assert set(old["models"].items()) <= set(new["models"].items()), f"{what}: a model version was lost or changed"
    assert set(old["runs"]) <= set(new["runs"]), what
    assert set(old["versions"]) <= set(new["versions"]), what
    for pos, (state, made) in old["actions"].items():
        if state == "done":
            assert new["actions"][pos] == (state, made), f"{what}: action {pos} was done, now {new['actions'][pos]}"
    for r, st in old["requests"].items():
        assert ORDER[new["requests"][r]] >= ORDER[st], what
    assert new["tombstones"] >= old["tombstones"], what
    # Exactly once: every affected model has at most one new version, and only one made by a done or running action.
    made = [m for m in new["models"] if not m.endswith("@1")]
    assert len(made) == len({m.split("@")[0] for m in made}), f"{what}: a model got two new versions: {made}"
    assert all(m.endswith("@2") for m in made), made


def _checks(root) -> tuple[dict[int, int], int, dict[int, bool]]:
    """Check rows per position (action_checks), `check` events in the audit log, and each position's new version's
    pending_check flag (model_replacements): read straight from the live catalog."""
    tabs = catalog_tables(root / (root / "CURRENT").read_text().strip())

    def rows(t, *cols):
        return table_rows(tabs, t, *cols)

    per_pos: dict[int, int] = {}
    for (pos,) in rows("action_checks", "position"):
        per_pos[pos] = per_pos.get(pos, 0) + 1
    events = sum(k == "check" for (k,) in rows("audit_events", "kind"))
    model_ids = {f"{n}@{v}": i for i, n, v in rows("models", "model_id", "name", "version_no")}
    pending = {mid: flag for mid, flag in rows("model_replacements", "model_id", "pending_check")}
    by_pos = {pos: pending.get(model_ids.get(new)) for pos, new in rows("execution_actions", "position", "new_model")
              if new}
    return per_pos, events, by_pos


def _finish(world, root, reference, kills: int) -> dict:
    res = cli(["run", world.plan_id, "--store", root, "--json"])
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert out["done"] == out["total"] == 6 and out["completed"]
    # Each action exactly once: same new versions, same runs, one row per action, all done.
    prog = progress(root)
    assert prog["actions"] == reference["progress"]["actions"]
    assert prog["models"] == reference["progress"]["models"]
    assert prog["runs"] == reference["progress"]["runs"]
    assert prog["tombstones"] == reference["progress"]["tombstones"] == 1
    assert sum(a["attempts"] for a in out["actions"]) <= 6 + kills
    # ... and the whole store, decoded, is the one the uninterrupted run made (but for the note above).
    state = normalised(committed(root), root, drop_measured=True)
    expected = json.loads(json.dumps(reference["state"]))
    (got,) = state["tables"]["executions"]
    # Exactly one check per action attempt (no attempt here fails its check): one row each, one `check` event each,
    # every result promoted.
    per_pos, check_events, pending = _checks(root)
    assert per_pos == {pos: 1 for pos in range(6)} and check_events == 6, (per_pos, check_events)
    assert pending == {pos: False for pos in range(6)}, pending
    # The audit trail: the same events in the same order, but for the start of each killed attempt (see
    # audit_trail); every start it records is one the run's attempts count; and its chain is intact.
    got_trail, retried = audit_trail(state["tables"].pop("audit_events"))
    ref_trail, none = audit_trail(expected["tables"].pop("audit_events"))
    assert none == 0 and retried <= kills, (none, retried, kills)
    starts = sum(r["kind"] == "action_started" for r in got_trail) + retried
    assert starts == sum(a["attempts"] for a in out["actions"]), (starts, out["actions"])
    assert got_trail == ref_trail, [(k, a, b) for k, (a, b) in enumerate(zip(got_trail, ref_trail)) if a != b][:2] \
        or (len(got_trail), len(ref_trail))
    chain = cli(["audit", "verify", "--store", root, "--json"])
    assert chain.returncode == 0 and json.loads(chain.stdout)["ok"], (chain.stdout, chain.stderr[-2000:])
    assert state == expected, differences(state, expected)
    assert_whole(root)
    return {"forgotten": json.loads(got["forgotten"]), "expected": json.loads(reference["state"]["tables"][
        "executions"][0]["forgotten"])}


def _mid_action(reference) -> str:
    """A crash point inside the first action: the write that records its re-run (after the run, before done)."""
    pts = reference["points"]
    start = pts.index(("run:before-action-0", 1))
    end = pts.index(("run:after-action-0", 1))
    inside = [f"{p}@{n}" for p, n in pts[start:end] if p == "write:after-rename"]
    assert inside, pts[start:end]
    return inside[0]


@pytest.fixture(scope="module")
def named_chain(world, tmp_path_factory, reference):
    """The plan run under kills at named points in turn, then resumed to the end."""
    tmp_path = tmp_path_factory.mktemp("named")
    root = copy_store(world.steps["plan approve"].after, tmp_path / "st")
    # In the order a run reaches them; each run after a kill is the resume that the next kill interrupts. The
    # first is counted in a fresh process (the resumes pass fewer writes); the others are reached once.
    chain = [
        _mid_action(reference),        # mid-action: action 0's new run is recorded, the action not done
        "run:after-action-2",          # between actions: action 2 finished its work, not yet marked done
        "run:after-check-3",           # action 3 done and its check recorded (passed), not yet promoted
        "run:before-action-4",         # marked running, nothing done
        "complete:after-proof",        # every action done, the lineage proof recorded
        "forget:after-clean",          # inside the store's deletion: cleaned versions built, not committed
        "forget:before-switch",        # the deletion's write complete but for its switch
        "forget:after-switch",         # the subject forgotten, the execution not told yet
        "complete:after-forget",       # recorded as forgotten, the request not yet verified
    ]
    if not FULL:  # CI: one of each kind (each kill restarts Python and torch)
        chain = [p for p in chain if p not in ("run:before-action-4", "complete:after-proof", "forget:after-clean",
                                               "complete:after-forget")]
    prog = progress(root)
    for point in chain:
        trace = tmp_path / f"trace-{point}"
        res = cli(["run", world.plan_id, "--store", root, "--json"], fault=point, trace=trace)
        assert res.returncode == KILLED, (point, res.stderr[-2000:])
        assert killed_where(trace).split("@")[0] == point.split("@")[0]
        assert_whole(root)
        new = progress(root)
        _check_progress(prog, new, f"killed at {point}")
        if point == "run:after-check-3":  # checked once, the result not promoted yet
            per_pos, events, pending = _checks(root)
            assert per_pos == {pos: 1 for pos in range(4)} and events == 4 and pending[3] is True, (per_pos, pending)
            assert new["actions"][3][0] == "done", new["actions"]
        if point == "forget:before-switch":  # the deletion did not commit: the subject is still known
            assert new["tombstones"] == 0
        if point in ("forget:after-switch", "complete:after-forget"):
            assert new["tombstones"] == 1
        done = sum(s == "done" for s, _ in new["actions"].values())
        record("kill", "run", f"mid-action ({point})" if "@" in point else point, f"{done}/6 actions done, resumed")
        prog = new
    return _finish(world, root, reference, kills=len(chain))


def test_run_killed_at_named_points_resumes_each_action_once(named_chain):
    """The checks run in the fixture, after each kill and at the end; here: the deletion's own record."""
    assert named_chain["forgotten"]["req-000001"]["tombstones_added"] == 1


def test_a_deletion_interrupted_after_its_switch_keeps_its_counts(named_chain):
    """Killed after forget_subjects' switch, before the execution recorded what it removed: the resumed run
    records what the deletion removed (from its own write), as an uninterrupted run does."""
    assert "resumed" not in named_chain["forgotten"]["req-000001"]
    assert named_chain["forgotten"] == named_chain["expected"]


@functools.cache
def _torch_import() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    return time.perf_counter() - t0


@pytest.mark.parametrize("seed", range(6) if FULL else [0])
def test_run_killed_at_a_seeded_moment(world, tmp_path, reference, seed):
    """A kill at a seeded time in the run's work (training, recording, the deletion), then the resume."""
    from tests.faults.test_kill_commands import _start_up

    root = copy_store(world.steps["plan approve"].after, tmp_path / "st")
    rng = random.Random(f"run:{seed}")
    prog = progress(root)
    delay = _start_up() + _torch_import() + rng.uniform(0.05, 0.95) * reference["seconds"]
    trace = tmp_path / "trace"
    res = kill_after(["run", world.plan_id, "--store", root, "--json"], delay, trace=trace)
    if res.returncode != KILLED:
        assert res.returncode == 0, res.stderr[-2000:]
        record("timed", "run", f"{delay:.2f}s", "finished before the kill")
        return
    reached = trace_lines(trace)
    where = f"after {reached[-1][1]}" if reached else "start-up"
    assert_whole(root)
    new = progress(root)
    _check_progress(prog, new, f"killed after {delay:.2f}s")
    done = sum(s == "done" for s, _ in new["actions"].values())
    record("kill-timed", "run", where, f"{done}/6 actions done, resumed", delay=round(delay, 3))
    _finish(world, root, reference, kills=1)
