"""Run the fault-injection, concurrency, hostile-environment and PII tests and write their figures into
RELIABILITY.md (between its `figures` markers): kills survived by command and point, hostile inputs by class,
concurrent readers' answers, what the PII scan decoded.

    python bench/faults_summary.py            # every crash point, more seeded kills (EXPUNGE_FAULTS_FULL=1)
    python bench/faults_summary.py --ci       # the same set CI runs
    python bench/faults_summary.py --no-write # print the figures only

Each test appends one JSON line per kill or input to $EXPUNGE_FAULTS_SUMMARY (tests/faults/harness.record);
a test that fails stops the figures from being written.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ["tests/faults", "tests/test_concurrency.py", "tests/test_pii_scan.py"]
START, END = "<!-- figures:start -->", "<!-- figures:end -->"


def run(full: bool) -> tuple[list[dict], str, float, int]:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "summary.jsonl"
        env = dict(os.environ, EXPUNGE_FAULTS_SUMMARY=str(out), EXPUNGE_FAULTS_FULL="1" if full else "0",
                   PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *TESTS], cwd=ROOT,
                             env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        lines = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
    tail = [ln.strip("= ") for ln in res.stdout.splitlines() if " in " in ln and ("passed" in ln or "failed" in ln)]
    return lines, (tail or ["(no result line)"])[-1], wall, res.returncode


def figures(lines: list[dict], result: str, wall: float, full: bool) -> str:
    kills = [x for x in lines if x["kind"] in ("kill", "kill-timed")]
    by_cmd: dict[str, Counter] = defaultdict(Counter)
    outcomes: dict[str, Counter] = defaultdict(Counter)
    for k in kills:
        point = k["point"] if k["kind"] == "kill" else f"timed ({k['point']})"
        by_cmd[k["command"]][point.split("@")[0] if k["kind"] == "kill" and "(" not in point else point] += 1
        outcome = k["outcome"]
        if "actions done" in outcome:
            outcome = "resumed"
        outcomes[k["command"]][outcome] += 1
    out = [f"Last run: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, `python bench/faults_summary.py"
           f"{'' if full else ' --ci'}` ({'every crash point' if full else 'the CI set'}), "
           f"{wall:.0f} s on {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}; pytest: {result}.", ""]
    out += [f"**Kills survived: {len(kills)}** (SIGKILL; after each the store opened whole, held the state before the "
            "command or the one after it, and the rerun completed it with each action once).", "",
            "| command | kills | where (crash point or seeded delay: count) | outcome |", "|---|---|---|---|"]
    for cmd in sorted(by_cmd):
        where = ", ".join(f"{p}: {n}" for p, n in sorted(by_cmd[cmd].items()))
        how = ", ".join(f"{o}: {n}" for o, n in sorted(outcomes[cmd].items()))
        out.append(f"| {cmd} | {sum(by_cmd[cmd].values())} | {where} | {how} |")
    timed_done = [x for x in lines if x["kind"] == "timed"]
    if timed_done:
        out += ["", f"{len(timed_done)} seeded kill(s) came after the command had already finished (then it had "
                "exited 0 and left the new state)."]
    hostile = [x for x in lines if x["kind"] == "hostile"]
    cls: dict[str, Counter] = defaultdict(Counter)
    for h in hostile:
        cls[h["command"]][h["outcome"]] += 1
    out += ["", f"**Hostile inputs tried: {len(hostile)}** (each: one line on stderr, the exit code below, the "
            "store's decoded content unchanged; reads answered where they can).", "",
            "| condition | tries | outcome |", "|---|---|---|"]
    for c in sorted(cls):
        out.append(f"| {c} | {sum(cls[c].values())} | " + ", ".join(f"{o}: {n}" for o, n in sorted(cls[c].items()))
                   + " |")
    busy = [x for x in lines if x["kind"] == "busy"]
    readers = [x for x in lines if x["kind"] == "readers"]
    out += ["", "**Concurrency:** " + "; ".join(f"{b['point']}: {b['outcome']}" for b in busy) + ". Readers during "
            "five writes (ingest, derive, forget, ingest, forget): " + "; ".join(
                f"{r['command']}: {r['outcome']}" for r in readers) + "."]
    pii = [x for x in lines if x["kind"] == "pii-scan"]
    for p in pii:
        files = ", ".join(f"{n} {k}" for k, n in sorted(p["files"].items()))
        out += ["", f"**PII scan of the demo:** {p['outcome']} among {p['values']:,} decoded values "
                f"({files}; {p['commands']} reporting commands' output), searching for all {p['ids']} customer ids."]
    out += ["", "Nothing lost: every kill above ended, after the rerun, in the store an uninterrupted run makes "
            "(decoded and compared table by table, file by file)."]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ci", action="store_true", help="the CI set, not every crash point")
    ap.add_argument("--no-write", action="store_true", help="print the figures; leave RELIABILITY.md as it is")
    args = ap.parse_args()
    lines, result, wall, code = run(full=not args.ci)
    text = figures(lines, result, wall, full=not args.ci)
    print(text)
    if code != 0:
        print(f"\nthe tests failed (exit {code}): RELIABILITY.md left as it is", file=sys.stderr)
        return 1
    if not args.no_write:
        doc = ROOT / "RELIABILITY.md"
        body = doc.read_text()
        head, _, rest = body.partition(START)
        _, _, tail = rest.partition(END)
        doc.write_text(f"{head}{START}\n{text}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
