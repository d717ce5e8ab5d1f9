"""Several expunge processes on one store: writers at once get "store is busy" (exit 3, one line) or, with
`--wait`, take their turn; nothing is corrupted or lost. Readers never wait and never see a mix: every answer
`expunge impact --json` gives while a writer ingests and forgets is exactly the answer of one committed state,
and the states a reader sees only move forward."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
import time

import pytest

from expunge.lineage.store import Store
from tests.faults.harness import EXPUNGE, assert_whole, copy_store, env, record


def _csv(path, rows):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["customer_id", "record_id"])
        w.writerows(rows)
    return path


def _source(n_subjects: int, per: int, start: int = 0):
    return [[f"c{s:03d}", f"r{s:03d}-{k:03d}"] for s in range(n_subjects) for k in range(start, start + per)]


@pytest.fixture
def base(tmp_path):
    st = Store.init(tmp_path / "st")
    st.ingest_source(str(_csv(tmp_path / "v1.csv", _source(40, 3))), name="customers", subject_col="customer_id",
                     record_col="record_id")
    return st.root


def _spawn(args, *extra_env, **kw):
    return subprocess.Popen([*EXPUNGE, *map(str, args)], env=env(**dict(extra_env)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_writers_at_once_are_refused_or_wait_never_corrupt(base, tmp_path):
    """Three ingests started together: each either commits or gets "store is busy" (exit 3, one line, nothing
    written); run again with --wait they all commit. Every committed dataset holds exactly its file's records."""
    files = {f"d{k}": _csv(tmp_path / f"d{k}.csv", [[f"w{k}-{i % 5}", f"x{k}-{i:04d}"] for i in range(300 + k)])
             for k in range(3)}

    def ingest(name, wait=None):
        pre = ["--wait", wait] if wait else []
        return _spawn([*pre, "ingest", "source", files[name], "--name", name, "--subject-col", "customer_id",
                       "--record-col", "record_id", "--store", base, "--json"])

    # A writer holds the lock while they start: every one of them is refused at once.
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from expunge.lineage.store import Store
        with Store.open({str(base)!r}).write():
            print("holding", flush=True)
            sys.stdin.readline()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        procs = {n: ingest(n) for n in files}
        outs = {n: p.communicate(timeout=120) for n, p in procs.items()}
        for n, p in procs.items():
            err = outs[n][1]
            assert p.returncode == 3, (n, err)
            assert err.count("\n") == 1 and err.startswith("error: store is busy"), err
        record("busy", "ingest source", "lock held by another writer", "exit 3", count=len(procs))
        # With --wait they queue behind the holder, which lets go after a second.
        procs = {n: ingest(n, wait="60") for n in files}
        time.sleep(1.0)
        holder.stdin.write("\n")
        holder.stdin.flush()
        outs = {n: p.communicate(timeout=300) for n, p in procs.items()}
        assert all(p.returncode == 0 for p in procs.values()), {n: o[1] for n, o in outs.items()}
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
        holder.stdin.close()
    record("busy", "ingest source", "--wait 60 behind a writer", "all committed", count=len(files))
    # Started together with nobody holding the lock: each commits or is refused, never anything else.
    more = {f"e{k}": _csv(tmp_path / f"e{k}.csv", [[f"v{k}", f"y{k}-{i}"] for i in range(50)]) for k in range(3)}
    files.update(more)
    procs = {n: ingest(n) for n in more}
    outs = {n: p.communicate(timeout=120) for n, p in procs.items()}
    refused = [n for n, p in procs.items() if p.returncode == 3]
    assert all(p.returncode in (0, 3) for p in procs.values()), outs
    for n in refused:
        assert outs[n][1].startswith("error: store is busy") and outs[n][1].count("\n") == 1
    st = Store.open(base)
    with st.view() as v:
        names = {n for (n,) in v.execute("SELECT name FROM datasets").fetchall()}
    assert names == {"customers", *files} - set(refused)
    record("busy", "ingest source", "3 started together", f"{len(refused)} refused, the rest committed")
    # The refused ones run again and commit; every dataset has exactly its file's records.
    for n in refused:
        p = ingest(n, wait="60")
        assert p.communicate(timeout=120) and p.returncode == 0
    assert_whole(base)
    st = Store.open(base)
    assert st.stats()["datasets"] == 1 + len(files)
    for n, f in files.items():
        with open(f) as fh:
            rows = list(csv.reader(fh))[1:]
        subjects = sorted({r[0] for r in rows})
        assert st.impact(subjects).records == len(rows), n


def writer_steps(st: Store, d: str) -> list:
    """Five writes: a new version of the source, a derived filter, forgetting one subject, another version (the
    forgotten subject's new rows skipped), forgetting two more."""
    return [
        lambda: st.ingest_source(d + "/v2.csv", name="customers", subject_col="customer_id", record_col="record_id"),
        lambda: st.ingest_dataset(d + "/adults.csv", name="adults", parents=["customers@2"], kind="filter",
                                  record_col="record_id"),
        lambda: st.forget_subjects(st.hasher.hash_many(["c001"]), "req-000001"),
        lambda: st.ingest_source(d + "/v3.csv", name="customers", subject_col="customer_id", record_col="record_id"),
        lambda: st.forget_subjects(st.hasher.hash_many(["c002", "c003"]), "req-000002"),
    ]


WRITER = """
import sys, time
from expunge.lineage.store import Store
from tests.test_concurrency import writer_steps
root, d, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])
for step in writer_steps(Store.open(root), d):
    time.sleep(pause)
    step()
"""

READER = """
import sys, json, time
from pathlib import Path
from expunge.lineage.store import Store
root, done, out = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
subjects = sys.argv[4:]
with open(out, "w") as fh:
    while True:
        last = done.exists()
        fh.write(json.dumps(Store.open(root).impact(subjects).to_dict(), sort_keys=True) + "\\n")
        fh.flush()
        if last:
            break
"""

SUBJECTS = ["c001", "c002", "c003", "c004"]


def test_readers_see_the_old_or_the_new_state_never_a_mix(base, tmp_path):
    """A writer ingests and forgets (five writes) while readers loop: `expunge impact --json` processes, and an
    in-process loop of many more queries. Each answer must be one committed state's, in order."""
    d = tmp_path
    _csv(d / "v2.csv", _source(40, 3) + _source(40, 2, start=100))               # 2 more records each
    _csv(d / "adults.csv", [[r[0], r[1]] for r in _source(40, 3)][::2])             # every other one
    _csv(d / "v3.csv", _source(40, 3) + _source(40, 2, start=100) + _source(40, 1, start=200))
    # The committed states, one per write, from a replay on a copy with nobody else around.
    replay = Store.open(copy_store(base, tmp_path / "replay"))
    states = [replay.impact(SUBJECTS).to_dict()]
    for step in writer_steps(replay, str(d)):
        step()
        states.append(Store.open(replay.root).impact(SUBJECTS).to_dict())
    # Checked against the CSV files by hand: records of c001..c004 after each write.
    per = {s: [3, 5, 5, 0 if s == "c001" else 5, 0 if s == "c001" else 6,
               0 if s in ("c001", "c002", "c003") else 6] for s in SUBJECTS}
    assert [doc["records"] for doc in states] == [sum(per[s][k] for s in SUBJECTS) for k in range(6)]
    assert len({json.dumps(x, sort_keys=True) for x in states}) == len(states)  # every write shows

    done = d / "writer-done"
    readers = [subprocess.Popen([sys.executable, "-c", READER, str(base), str(done), str(d / "fast.jsonl"), *SUBJECTS],
                                env=env(), stderr=subprocess.PIPE, text=True)]
    cli_answers: list[str] = []
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(base), str(d), "0.4"], env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    args = ["impact", "--json", *[a for s in SUBJECTS for a in ("--subject", s)], "--store", base]
    while writer.poll() is None:
        res = subprocess.run([*EXPUNGE, *args], env=env(), capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        cli_answers.append(res.stdout)
    _, err = writer.communicate()
    assert writer.returncode == 0, err
    done.touch()
    for r in readers:
        _, rerr = r.communicate(timeout=120)
        assert r.returncode == 0, rerr
    res = subprocess.run([*EXPUNGE, *args], env=env(), capture_output=True, text=True, timeout=120)
    cli_answers.append(res.stdout)

    index = {json.dumps(s, sort_keys=True): k for k, s in enumerate(states)}
    for name, answers in (("expunge impact --json", cli_answers),
                          ("in-process loop", (d / "fast.jsonl").read_text().splitlines())):
        seen = []
        for a in answers:
            doc = json.loads(a)
            doc["subjects"].pop("missing", None)  # the CLI's own addition: where the missing ids were given
            key = json.dumps(doc, sort_keys=True)
            assert key in index, f"{name}: an answer that is no committed state: {key[:500]}"
            seen.append(index[key])
        assert seen == sorted(seen), f"{name}: went back to an older state: {seen}"
        assert seen[-1] == len(states) - 1
        record("readers", name, "during 5 writes", f"{len(seen)} answers, {len(set(seen))} states, no mix",
               answers=len(seen))
    assert_whole(base)
