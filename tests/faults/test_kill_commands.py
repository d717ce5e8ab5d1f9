"""SIGKILL during every command that changes the store (ingest source, derived ingest, track run, model stage,
policy set, request create, plan, plan approve), at each crash point the command passes and after seeded
delays. After each kill the store opens with no leftover, and holds exactly what it held before the command
or exactly what an uninterrupted run makes (never a part of it); before the CURRENT switch it is always the
former, from the switch on the latter. Rerunning the command then completes it. (`expunge audit export`, which writes no store: test_kill_export.)"""

from __future__ import annotations

import functools
import random
import time

import pytest

from tests.faults.harness import (
    FULL, KILLED, assert_whole, cli, committed, copy_store, kill_after, killed_where, normalised, record,
    unchanged,
)

COMMANDS = ["ingest source", "ingest dataset", "track run", "model stage", "policy set", "request create", "plan",
            "plan approve"]
# The commit point of a write (see Store.write): kills before it leave the old state, from it on the new.
COMMITTED_FROM = "write:after-switch"
# Outside FULL runs, the commands that start torch (planning checks certified models) or that repeat another's
# write are killed at their last points only: after the rename (the hardest uncommitted state) and after the
# switch.
FEWER = {"plan": 2, "plan approve": 2, "model stage": 2, "policy set": 2}


def _expected(step):
    return normalised(committed(step.after), step.after)


def _check(root, before, expected, what) -> str:
    """After a kill: the store is whole and shows the state before or after the command, nothing between."""
    assert_whole(root)
    now = committed(root)
    if unchanged(now, before):
        return "nothing committed"
    assert normalised(now, root) == expected, f"{what}: the store holds neither the old nor the new state"
    return "committed"


@pytest.mark.parametrize("command", COMMANDS)
def test_killed_at_each_crash_point_then_rerun(world, tmp_path, command):
    """Kill at each crash point in turn (each run after a kill is the rerun the next kill interrupts), the last
    being the one after the commit; a command killed before its commit then runs to the end."""
    step = world.steps[command]
    root = copy_store(step.before, tmp_path / "st")
    before, expected = committed(root), _expected(step)
    assert [p for p, _ in step.points] == ["write:begin", "write:before-rename", "write:after-rename",
                                           "write:after-switch"], step.points  # one write
    points = step.points if FULL or command not in FEWER else step.points[-FEWER[command]:]
    state = "nothing committed"
    for name, n in points:
        res = cli([*step.args, "--store", root], fault=f"{name}@{n}")
        assert res.returncode == KILLED, (command, name, res.stderr[-2000:])
        state = _check(root, before, expected, f"{command} killed at {name}@{n}")
        should = "committed" if name == COMMITTED_FROM and n == 1 or state == "committed" else "nothing committed"
        assert state == should, (command, name, n, state)
        record("kill", command, f"{name}@{n}", state)
        if state == "committed":
            break
    if state != "committed":
        res = cli([*step.args, "--store", root])
        assert res.returncode == 0, res.stderr
        assert normalised(committed(root), root) == expected
    assert_whole(root)


TIMED = {"ingest source": 2, "ingest dataset": 1, "track run": 1, "request create": 1}
if FULL:
    TIMED = {k: 4 * v for k, v in {**TIMED, "plan": 1}.items()}


@functools.cache
def _start_up() -> float:
    """Seconds an `expunge` process takes to start (Python, typer, the store's imports)."""
    t0 = time.perf_counter()
    cli(["--help"])
    return time.perf_counter() - t0


@pytest.mark.parametrize("command", sorted(TIMED))
def test_killed_after_seeded_delays(world, tmp_path, command):
    """Kills at seeded random moments over the command's run (most land in Python's start-up or in DuckDB and
    Arrow code that has no crash point); each leaves the old or the new state, and the rerun completes."""
    step = world.steps[command]
    rng = random.Random(f"timed:{command}")
    expected = _expected(step)
    start_up = _start_up()
    for k in range(TIMED[command]):
        root = copy_store(step.before, tmp_path / f"st{k}")
        before = committed(root)
        delay = start_up + rng.uniform(0.0, 1.1) * step.seconds
        trace = tmp_path / f"trace{k}"
        res = kill_after([*step.args, "--store", root], delay, trace=trace)
        reached = [ln for ln in (trace.read_text().splitlines() if trace.exists() else [])]
        where = reached[-1].split()[1] if reached else "start-up"
        if res.returncode != KILLED:  # it finished first: then it finished properly
            assert res.returncode == 0, res.stderr
            record("timed", command, f"{delay:.2f}s", "finished before the kill")
            continue
        state = _check(root, before, expected, f"{command} killed after {delay:.2f}s")
        record("kill-timed", command, f"after {where}", state, delay=round(delay, 3))
        if state != "committed":
            assert killed_where(trace) is None
            res = cli([*step.args, "--store", root])
            assert res.returncode == 0, res.stderr
            assert normalised(committed(root), root) == expected
