"""The fault-injection driver: runs `expunge` commands as subprocesses, kills them with SIGKILL (at a named
crash point, see `expunge.faults`, or after a seeded delay) and reads the store back, decoded, after each kill.

`committed(root)` is what a store holds: every catalog table of the live generation, row by row, with each
data file a row names replaced by its decoded content, plus every other file under the store (plans,
policies, model artifacts) by content. Two stores with equal `committed` answer every question the same.
`normalised(...)` drops what legitimately differs between two runs of the same command: timestamps,
measured seconds, random output directory names, plan ids (their hash covers the creation time).

With `$EXPUNGE_FAULTS_SUMMARY` set, `record(...)` appends one JSON line per kill (or hostile input)
to that file: bench/faults_summary.py turns it into the figures of RELIABILITY.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import date, datetime
from pathlib import Path

EXPUNGE = [sys.executable, "-m", "expunge.cli"]
# $EXPUNGE_FAULTS_FULL=1 (bench/faults_summary.py): every crash point of every command and more seeded kills;
# by default (CI) the costliest commands are killed at fewer points.
FULL = os.environ.get("EXPUNGE_FAULTS_FULL") == "1"
KILLED = -signal.SIGKILL


def record(kind: str, command: str, point: str, outcome: str, **extra) -> None:
    """One line of the run's summary (only when $EXPUNGE_FAULTS_SUMMARY names a file)."""
    path = os.environ.get("EXPUNGE_FAULTS_SUMMARY")
    if not path:
        return
    line = json.dumps({"kind": kind, "command": command, "point": point, "outcome": outcome, **extra},
                      sort_keys=True)
    with open(path, "a") as fh:
        fh.write(line + "\n")


# ------------------------------------------------------------------ running commands


def env(fault: str | None = None, trace: Path | None = None, **extra: str) -> dict:
    e = {**os.environ, "COLUMNS": "200"}
    for var in ("EXPUNGE_FAULT", "EXPUNGE_FAULT_TRACE"):
        e.pop(var, None)
    if fault:
        e["EXPUNGE_FAULT"] = fault
    if trace:
        e["EXPUNGE_FAULT_TRACE"] = str(trace)
    e.update(extra)
    return e


def cli(args, *, fault: str | None = None, trace: Path | None = None, timeout: float = 300,
        **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*EXPUNGE, *map(str, args)], env=env(fault, trace), capture_output=True, text=True,
                          timeout=timeout, **kw)


def kill_after(args, seconds: float, trace: Path | None = None) -> subprocess.CompletedProcess:
    """Start the command, SIGKILL it after `seconds` (unless it finished first: then its real exit code)."""
    proc = subprocess.Popen([*EXPUNGE, *map(str, args)], env=env(None, trace), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def trace_lines(path: Path) -> list[tuple[int, str, int, bool]]:
    """(pid, point, n, killed) for every crash point a traced command reached, in order."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        killed = parts[1] == "KILL"
        if killed:
            parts.pop(1)
        out.append((int(parts[0]), parts[1], int(parts[2]), killed))
    return out


def killed_where(path: Path) -> str | None:
    """The point (name@n) a traced command was killed at, if it was killed at one."""
    hits = [f"{p}@{n}" for _, p, n, k in trace_lines(path) if k]
    return hits[-1] if hits else None


def copy_store(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


# ------------------------------------------------------------------ reading a store back


def _json_default(x):
    if isinstance(x, (datetime, date)):
        return x.isoformat()
    if isinstance(x, bytes):
        return x.hex()
    return str(x)


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_json_default).encode()).hexdigest()


def decode_data_file(path: Path):
    """The content of one file under data/, decoded by its format (an unknown format fails the test)."""
    import numpy as np

    name = path.name
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        t = pq.read_table(path)
        return {c: t.column(c).to_pylist() for c in t.column_names}
    if name.endswith(".roar"):
        from pyroaring import BitMap

        return list(BitMap.deserialize(path.read_bytes()))
    if name.endswith(".npy"):
        return np.load(path, allow_pickle=False).tolist()
    if name.endswith(".seg"):
        from expunge.lineage.segments import Segment

        return [a.tolist() for a in Segment(path).arrays()]
    if name.endswith(".facts"):
        return {"bytes": hashlib.sha256(path.read_bytes()).hexdigest()}  # a fixed binary encoding: see test_pii_scan
    raise AssertionError(f"a data file of a format the tests cannot decode: {name}")


def catalog_tables(path: Path) -> dict[str, tuple[list[str], list[str], list[tuple]]]:
    """table → (column names, column types, rows) of one catalog file, read-only."""
    from expunge.lineage.store import attached

    out = {}
    with attached(path) as con:
        tables = [t for (t,) in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_catalog = current_database() "
            "ORDER BY table_name").fetchall()]
        for t in tables:
            desc = con.execute(f'DESCRIBE "{t}"').fetchall()
            rows = con.execute(f'SELECT * FROM "{t}"').fetchall()
            out[t] = ([d[0] for d in desc], [d[1] for d in desc], rows)
    return out


def _file_columns() -> dict[str, set[str]]:
    from expunge.lineage import catalog as C

    cols: dict[str, set[str]] = {}
    for table, col in C.FILE_COLUMNS + (("cleaned_versions", "file"),):
        if table != "retired_files":  # files on their way out: no kept generation reads them any more
            cols.setdefault(table, set()).add(col)
    return cols


SKIP_FILES = re.compile(r"lock|run-[0-9a-f]+\.lock|catalog-[0-9]{6,}\.duckdb.*|CURRENT")


def committed(root: Path) -> dict:
    """Everything the store at `root` holds, decoded (see the module docstring); exact, nothing dropped. The
    data files are those the live generation reads (assert_whole checks that no other is left)."""
    root = Path(root)
    gen = (root / "CURRENT").read_text().strip()
    files = _file_columns()
    tables = {}
    data = set()
    for t, (cols, types, rows) in catalog_tables(root / gen).items():
        fc = files.get(t, set())
        out = []
        for row in rows:
            d = {}
            for c, ty, v in zip(cols, types, row):
                if c in fc and v is not None:
                    data.add(v)
                    v = {"file": v, "content": digest(decode_data_file(root / "data" / v))}
                d[c] = (ty, v)
            out.append(d)
        tables[t] = sorted(out, key=lambda r: json.dumps(r, sort_keys=True, default=_json_default))
    other = {}
    for dirpath, dirs, names in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if rel.parts[:1] == ("data",):
            continue
        for n in names:
            if rel == Path(".") and SKIP_FILES.fullmatch(n):
                continue
            p = Path(dirpath) / n
            raw = p.read_bytes()
            other[str(rel / n)] = json.loads(raw) if n.endswith(".json") else hashlib.sha256(raw).hexdigest()
    return {"tables": tables, "files": other, "data": sorted(data)}


_PID_DIR = re.compile(r"\.[0-9]+-[0-9a-f]{8}(?=/|$|\")")
MEASURED = re.compile(r".*_seconds|attempts|signature|approved_at|at|started_at|ended_at|created_at|changed_at|"
                      r"received_at|deadline_at|updated_at|lapsed_at")


def normalised(state: dict, root: Path, *, drop_measured: bool = False) -> dict:
    """`committed(root)` without what two runs of one command legitimately differ in: timestamps, data file
    names (their content stays), measured seconds and attempts (with `drop_measured`), the random suffix of
    an action's output directory, the store's own path, plan ids (numbered in creation order), and files
    outside the catalog that no committed row names (a plan file written before a killed registration)."""
    plans = state["tables"].get("plans", [])
    order = sorted(plans, key=lambda r: (_json_default(r["created_at"][1]), r["plan_id"][1]))
    ids = {r["plan_id"][1]: f"<plan{k}>" for k, r in enumerate(order)}
    root_s = str(Path(root))

    def fix(v):
        if isinstance(v, str):
            v = v.replace(root_s, "<root>")
            for pid, name in ids.items():
                v = v.replace(pid, name).replace(pid[:16], name).replace(pid[:8], name)
            return _PID_DIR.sub(".<attempt>", v)
        if isinstance(v, dict):
            if set(v) == {"file", "content"}:  # a data file: its content, not its random name
                return v["content"]
            # No timestamps in documents; with drop_measured, no measured seconds either (a run's facts keep
            # the read probe's seconds, for the planner's costs).
            return {k: fix(x) for k, x in v.items()
                    if not k.endswith("_at") and not (drop_measured and k.endswith("_seconds"))}
        if isinstance(v, (list, tuple)):
            return [fix(x) for x in v]
        return v

    def event_body(text: str):
        """An audit event's body without its time (and measured seconds): the chain's hashes cover the time,
        so they differ between two runs too and are left out (`expunge audit verify` checks the chain)."""
        def strip(x):
            if isinstance(x, dict):
                return {k: strip(y) for k, y in x.items()
                        if k not in ("at", "deadline") and not (drop_measured and MEASURED.fullmatch(k))}
            if isinstance(x, list):
                return [strip(y) for y in x]
            return x
        return strip(json.loads(text))

    tables = {}
    for t, rows in state["tables"].items():
        out = []
        for r in rows:
            d = {}
            for c, (ty, v) in r.items():
                if ty.startswith("TIMESTAMP") or (drop_measured and MEASURED.fullmatch(c)):
                    continue
                if t == "audit_events" and c in ("prev", "hash"):
                    continue
                if t == "audit_events" and c == "body" and v is not None:
                    v = event_body(v)
                elif (ty == "JSON" or (t, c) == ("execution_actions", "detail")) and v is not None:
                    v = json.loads(v)  # an action's detail is JSON text: its measured seconds go as others do
                d[c] = fix(v)
            out.append(d)
        tables[t] = sorted(out, key=lambda r: json.dumps(r, sort_keys=True, default=_json_default))
    state_rows = json.dumps(state["tables"], default=_json_default)
    files = {}
    for f, h in state["files"].items():
        m = CONTENT_ADDRESSED.fullmatch(f)
        if m and m.group(2) not in state_rows:
            continue  # written by a killed command that never registered it: not visible, not the store's
        f = fix(f)
        if f.startswith("models/"):
            continue  # action outputs: the catalog's sha256 of each recorded artifact stands for them
        files[f] = fix(h)
    return {"tables": tables, "files": files}


def live_files(root: Path) -> set[str]:
    """The data files named by a committed generation still on disk (the live one and older ones a reader may
    still hold)."""
    from expunge.lineage import catalog as C

    root = Path(root)
    live_n = int((root / "CURRENT").read_text().strip().split("-")[1].split(".")[0])
    names: set[str] = set()
    for cat in root.glob("catalog-*.duckdb"):
        if not re.fullmatch(r"catalog-[0-9]{6,}\.duckdb", cat.name) or int(cat.name[8:-7]) > live_n:
            continue
        tabs = catalog_tables(cat)
        for table, col in C.FILE_COLUMNS + (("cleaned_versions", "file"),):
            if table in tabs:
                cols, _, rows = tabs[table]
                i = cols.index(col)
                names |= {r[i] for r in rows if r[i] is not None}
    return names


def assert_whole(root: Path) -> None:
    """The store opens and answers; no leftover of a dead writer is there once it has been opened: no catalog
    copy, no generation newer than CURRENT, no data file that no committed generation names."""
    from expunge.lineage.store import Store

    st = Store.open(root)
    st.stats()
    root = Path(root)
    gen = (root / "CURRENT").read_text().strip()
    live_n = int(gen.split("-")[1].split(".")[0])
    for p in root.iterdir():
        m = re.fullmatch(r"catalog-([0-9]{6,})\.duckdb(.*)", p.name)
        assert not (m and (m.group(2) or int(m.group(1)) > live_n)), f"a dead writer's {p.name} is left"
        assert not p.name.endswith(".tmp"), f"{p.name} is left"
    extra = {p.name for p in (root / "data").iterdir()} - live_files(root)
    assert not extra, f"{len(extra)} data file(s) no committed generation names: {sorted(extra)[:3]}"


def wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.02)


# Documents kept outside the catalog under their own hash, written before the write that registers them (a
# plan; a pinned copy of a policy): one a killed command left unregistered is never read.
CONTENT_ADDRESSED = re.compile(r"(plans|policies)/([0-9a-f]{64})\.json")


def unchanged(now: dict, before: dict) -> bool:
    """`now` is exactly `before` (catalog rows, data files, every other file), but for content-addressed
    documents that no catalog row names (see CONTENT_ADDRESSED)."""
    if now["tables"] != before["tables"] or now["data"] != before["data"]:
        return False
    rows = json.dumps(now["tables"], default=_json_default)
    extra = {f for f in now["files"] if f not in before["files"]}
    return all((m := CONTENT_ADDRESSED.fullmatch(f)) and m.group(2) not in rows for f in extra) and \
        all(now["files"].get(f) == h for f, h in before["files"].items())


def differences(a: dict, b: dict, limit: int = 3) -> list[str]:
    """Where two `normalised` states differ (for assertion messages)."""
    out = []
    for part in ("tables", "files"):
        for k in sorted(set(a[part]) | set(b[part])):
            x, y = a[part].get(k), b[part].get(k)
            if x == y:
                continue
            if isinstance(x, list) and isinstance(y, list):
                only_a = [r for r in x if r not in y][:limit]
                only_b = [r for r in y if r not in x][:limit]
                out.append(f"{part}/{k}: only in the first {str(only_a)[:1500]}; only in the second {str(only_b)[:1500]}")
            else:
                out.append(f"{part}/{k}: {str(x)[:300]} != {str(y)[:300]}")
    return out


def table_rows(tabs: dict, t: str, *cols: str) -> list[tuple]:
    """The `cols` of every row of table `t` in `catalog_tables`' result (none when the table does not exist)."""
    if t not in tabs:
        return []
    names = tabs[t][0]
    return [tuple(r[names.index(c)] for c in cols) for r in tabs[t][2]]


def progress(root) -> dict:
    """What a run has done so far, read from the catalog."""
    tabs = catalog_tables(root / (root / "CURRENT").read_text().strip())

    def rows(t, *cols):
        return table_rows(tabs, t, *cols)

    return {
        "actions": {pos: (state, new) for pos, state, new in rows("execution_actions", "position", "state", "new_model")},
        "models": {f"{n}@{v}": sha for n, v, sha in rows("models", "name", "version_no", "sha256")},
        "runs": sorted(n for (n,) in rows("runs", "name")),
        "versions": sorted((d, v) for d, v in rows("dataset_versions", "dataset_id", "version_no")),
        "requests": dict(rows("requests", "request_id", "status")),
        "tombstones": len(rows("tombstones", "request_id")),
        "execution": rows("executions", "state", "proof", "forgotten"),
    }


def audit_trail(events: list[dict]) -> tuple[list[dict], int]:
    """The `normalised` rows of `audit_events` as a story to compare between an uninterrupted run and a run
    resumed after kills: in seq order (which must run 0..n-1, no gap), without seq, and with each killed
    attempt's `action_started` left out. A kill after an action was marked running keeps that event (the
    attempt did start: the trail must say so); the resume then starts the action again with the next attempt
    number, so the resumed run's trail has one more `action_started` per killed attempt and every later seq
    is shifted. Precisely: for each (plan, position), the starts must be numbered 1, 2, ... in order; a start
    followed by another start of the same position with no `action_finished` between is a killed attempt and
    is dropped; the start kept has its attempt number left out (it counts the killed ones). Returns the story
    and how many starts were dropped."""
    rows = sorted(events, key=lambda r: r["seq"])
    assert [r["seq"] for r in rows] == list(range(len(rows))), "audit events: seqs with a gap or repeated"
    assert all(r["body"]["seq"] == r["seq"] for r in rows), "audit events: a body's seq is not its row's"
    attempts: dict[tuple, int] = {}   # (plan, position) -> attempt number of its last start
    open_start: dict[tuple, int] = {}  # (plan, position) -> index in `out` of a start not finished yet
    out: list[dict | None] = []
    dropped = 0
    for r in rows:
        body = {k: v for k, v in r["body"].items() if k != "seq"}
        row = {**{k: v for k, v in r.items() if k != "seq"}, "body": body}
        p = body.get("payload", {})
        key = (p.get("plan"), p.get("position"))
        if r["kind"] == "action_started":
            n = attempts.get(key, 0) + 1
            assert p["attempt"] == n, f"action {key}: attempt {p['attempt']} started after attempt {n - 1}"
            attempts[key] = n
            if key in open_start:  # the previous attempt never finished: killed
                out[open_start[key]] = None
                dropped += 1
            body["payload"] = {k: v for k, v in p.items() if k != "attempt"}
            open_start[key] = len(out)
        elif r["kind"] == "action_finished":
            open_start.pop(key, None)
        out.append(row)
    return [r for r in out if r is not None], dropped
