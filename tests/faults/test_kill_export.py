"""SIGKILL during `expunge audit export` (the evidence bundle of the demo's request, after its plan ran): after
some files are written, before the manifest, before the rename into place, after it, and at seeded moments; to
a new --out and over an existing bundle (--force). After each kill there is no half bundle at --out: it is
absent, or the whole old bundle, or the whole new one (checked by the bundle's own `verify_bundle.py`, run with
`python -I -S`, and byte for byte against bundles exported uninterrupted); the store is unchanged; and the rerun
writes a bundle the checker accepts and leaves nothing beside it (the killed export's temporary directory is
swept)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time

import pytest

from tests.faults.harness import FULL, KILLED, cli, committed, copy_store, kill_after, killed_where, record, \
    trace_lines


def _verify(bundle) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", "-S", str(bundle / "verify_bundle.py")], capture_output=True,
                          text=True, timeout=120)


def _files(d) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _same_bundle(a: dict[str, bytes], b: dict[str, bytes]) -> bool:
    """Two exports of one request from one store: equal but for the export time (bundle.json, and the manifest's
    hash of it)."""
    def strip(files):
        out = dict(files)
        doc = json.loads(out.pop("bundle.json"))
        doc.pop("exported_at")
        man = json.loads(out.pop("manifest.json"))
        man["files"].pop("bundle.json")
        return out, doc, man
    return strip(a) == strip(b)


@pytest.fixture(scope="module")
def exported(world, reference, tmp_path_factory):
    """The store after the plan ran (plain path), and a bundle exported uninterrupted, with the points it passes."""
    tmp = tmp_path_factory.mktemp("export")
    root = copy_store(reference["root"], tmp / "st")
    trace = tmp / "trace"
    t0 = time.perf_counter()
    res = cli(["audit", "export", "req-000001", "--out", tmp / "clean", "--store", root], trace=trace)
    seconds = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr
    assert _verify(tmp / "clean").returncode == 0
    points = [f"{p}@{n}" for _, p, n, _ in trace_lines(trace)]
    # An earlier bundle of the same request (exported before its plan ran: another chain head), for --force to
    # replace.
    before = copy_store(world.steps["plan approve"].after, tmp / "st0")
    assert cli(["audit", "export", "req-000001", "--out", tmp / "earlier", "--store", before]).returncode == 0
    assert _verify(tmp / "earlier").returncode == 0 and _files(tmp / "earlier") != _files(tmp / "clean")
    names = [p.split("@")[0] for p in points]
    assert names.count("export:after-file") == len(_files(tmp / "clean")), points
    assert names[-2:] == ["export:before-rename", "export:after-rename"], points
    assert names[-4] == "export:before-manifest", points
    return {"root": root, "clean": _files(tmp / "clean"), "points": points, "state": committed(root),
            "earlier": tmp / "earlier", "seconds": seconds}


def _points(exported) -> list[str]:
    pts = exported["points"]
    if FULL:
        return pts
    files = [p for p in pts if p.startswith("export:after-file")]
    return [files[2], "export:before-manifest@1", "export:before-rename@1", "export:after-rename@1"]


def _leftovers(out) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name != out.name)


@pytest.mark.parametrize("replace", [False, True], ids=["new-out", "over-a-bundle"])
def test_export_killed_at_each_point_then_rerun(exported, tmp_path, replace):
    root = exported["root"]
    for point in _points(exported):
        out = tmp_path / point.replace(":", "-").replace("@", "-") / "bundle"
        out.parent.mkdir()
        args = ["audit", "export", "req-000001", "--out", out, "--store", root]
        old = None
        if replace:  # an earlier export of the same request, replaced with --force
            shutil.copytree(exported["earlier"], out)
            old = _files(out)
            args.append("--force")
        trace = tmp_path / f"trace-{point}"
        res = cli(args, fault=point, trace=trace)
        assert res.returncode == KILLED, (point, res.stderr[-2000:])
        assert killed_where(trace) == point
        # No half bundle: absent, the old one whole, or the new one whole.
        committed_new = point.startswith("export:after-rename")
        if not out.exists():
            assert not replace, point
            state = "nothing at --out"
        else:
            got = _files(out)
            assert _verify(out).returncode == 0, (point, _verify(out).stdout[-1500:])
            if old is not None and got == old:
                state = "the old bundle whole"
            else:
                assert _same_bundle(got, exported["clean"]) and got != old, point
                state = "the new bundle whole"
        assert state == ("the new bundle whole" if committed_new else
                         "the old bundle whole" if replace else "nothing at --out"), (point, state)
        assert committed(root) == exported["state"], f"{point}: the export changed the store"
        # The rerun completes it; the killed export's temporary directory is gone.
        res = cli(args if replace else [*args, "--force"] if out.exists() else args)
        assert res.returncode == 0, (point, res.stderr)
        assert _verify(out).returncode == 0
        assert _same_bundle(_files(out), exported["clean"])
        assert _leftovers(out) == [], (point, _leftovers(out))
        record("kill", "audit export --force" if replace else "audit export", point, f"{state}; rerun verified")


def test_sweep_leaves_what_is_not_a_bundle(exported, tmp_path):
    """A sibling named like an export's temporary directory is removed only if it holds bundle files only and its
    process is gone: anything else there (a directory --force was replacing, a live export's) is left alone."""
    root = exported["root"]
    out = tmp_path / "ev"
    dead = 2 ** 22 + 12345  # above the default pid_max: no such process
    mine = tmp_path / f".ev.tmp-{dead}-0123abcd"
    mine.mkdir()
    (mine / "chain.jsonl").write_text("partial")
    (mine / "plans").mkdir()
    foreign = tmp_path / f".ev.old-{dead}-89abcdef"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine, not a bundle's")
    live = tmp_path / f".ev.tmp-{1}-fedcba98"  # pid 1 is alive: an export in progress
    live.mkdir()
    (live / "bundle.json").write_text("{}")
    res = cli(["audit", "export", "req-000001", "--out", out, "--store", root])
    assert res.returncode == 0, res.stderr
    assert _verify(out).returncode == 0
    assert not mine.exists() and (foreign / "notes.txt").read_text() == "mine, not a bundle's" and live.exists()


TIMED = 3 if FULL else 1


def test_export_killed_at_seeded_moments(exported, tmp_path):
    from tests.faults.test_kill_commands import _start_up

    root = exported["root"]
    rng = random.Random("timed:audit export")
    start_up = _start_up()
    for k in range(TIMED):
        out = tmp_path / f"t{k}" / "bundle"
        out.parent.mkdir()
        args = ["audit", "export", "req-000001", "--out", out, "--store", root]
        # Most of an export is start-up: the delay spans its whole run, start-up included.
        delay = rng.uniform(0.5, 1.1) * max(exported["seconds"], start_up)
        trace = tmp_path / f"trace{k}"
        res = kill_after(args, delay, trace=trace)
        reached = trace_lines(trace)
        where = f"after {reached[-1][1]}" if reached else "start-up"
        if res.returncode != KILLED:
            assert res.returncode == 0, res.stderr
            record("timed", "audit export", f"{delay:.2f}s", "finished before the kill")
            continue
        assert not out.exists() or _verify(out).returncode == 0
        state = "the new bundle whole" if out.exists() else "nothing at --out"
        res = cli([*args, "--force"] if out.exists() else args)
        assert res.returncode == 0, res.stderr
        assert _verify(out).returncode == 0 and _leftovers(out) == []
        record("kill-timed", "audit export", where, f"{state}; rerun verified", delay=round(delay, 3))
