"""Where a certified removal's time goes, beside the floor this store puts under any action that records a model.

Builds a store of N customers, trains the certified logistic regression on all of them, and for each of
S subjects (each on a copy of the trained store, restored) plans, approves and runs a request that erases
the subject by certified removal (`execute.run_plan`, as `bench_unlearn.py --scenarios cheapest` does). On
the same store it then times the parts that any action recording a new model version pays, whatever its
own work:

- write: a catalog write holding one row (copy the live generation, attach it, insert, checkpoint, fsync,
  rename, switch CURRENT: the store's commit, which is what lets readers in other processes go on while a
  writer writes);
- read after a write: the first lookup on the new generation (attaching it read-only);
- weights: loading the model's weights (hash-checked) and saving new ones (to a temporary file, renamed).

The floor is their sum plus the removal's own work (finding the rows and the Newton step, from the
action's detail). A full retrain without one subject (`rerun`, as the reference of `bench_unlearn.py`) is
timed R times. Prints one JSON document: the action and the retrain (medians), the parts, and the
speed-ups the floor allows.

    python bench/bench_certified_floor.py --customers 200000 --subjects 6 --out bench/out/certified-floor.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import use_bench_secret  # noqa: E402


def median_ms(xs: list[float]) -> float:
    return round(statistics.median(xs) * 1e3, 3)


def parts(store, model: str, repeats: int) -> dict[str, list[float]]:
    """Seconds of a one-row write, of the first read after it, and of loading and saving the model's weights."""
    import torch

    from expunge.lineage.torch import load_artifact
    from expunge.orchestrator.execute import model_info

    info = model_info(store, model)
    out: dict[str, list[float]] = {"write": [], "read_after_write": [], "load_weights": [], "save_weights": []}
    overhead = []  # the write's opening (copy, attach) and commit (checkpoint, fsyncs, renames): within "write"
    out["catalog_bytes"] = [float(os.path.getsize(store.root / store.generation()))]  # what each write copies
    for k in range(repeats):
        t0 = time.perf_counter()
        with store.write() as txn:
            txn.con.execute("INSERT INTO meta VALUES (?, '')", [f"bench-floor-{time.time_ns()}"])  # one new row
        t1 = time.perf_counter()
        overhead.append(store.last_write_overhead)
        with store.read() as con:
            con.execute("SELECT count(*) FROM models").fetchone()
        t2 = time.perf_counter()
        state = load_artifact(info["path"], info["sha256"])
        t3 = time.perf_counter()
        tmp = Path(info["path"]).with_name("bench-floor.pt.tmp")
        torch.save(state, tmp)
        tmp.replace(tmp.with_suffix(""))
        t4 = time.perf_counter()
        for key, s in zip(list(out)[:4], (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            out[key].append(s)
    out["write_open_and_commit"] = overhead
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=200_000)
    ap.add_argument("--features", type=int, default=32)
    ap.add_argument("--subjects", type=int, default=6, help="subjects erased, each from the trained store restored")
    ap.add_argument("--repeats", type=int, default=9, help="timings of each floor part per subject")
    ap.add_argument("--retrains", type=int, default=3, help="full retrains timed")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    for name in ("customers", "features", "subjects", "repeats", "retrains"):
        if getattr(a, name) < 1:
            ap.error(f"--{name} must be at least 1")
    use_bench_secret()
    import torch

    torch.set_num_threads(1)
    import bench_unlearn
    from expunge.lineage.store import Store
    from expunge.orchestrator.rerun import rerun

    root = Path(tempfile.mkdtemp(prefix="bench-floor-"))
    snapshot = root.with_name(root.name + "-built")
    try:
        store, subjects, _ = bench_unlearn.build(root, a.customers, a.features, 3, models=("certified",))
        shutil.copytree(root, snapshot)
        os.sync()
        runs, floor, sizes, commits = [], {}, [], []
        for j in range(a.subjects):
            store = bench_unlearn.restore(snapshot, root) if j else Store.open(root / "store")
            subject = random.Random(f"floor-{j}").choice(subjects)
            got = bench_unlearn.erase(store, root, subject, "cheapest")
            act = next(x for x in got["actions"] if x["model"].startswith("certified@"))
            with store.read() as con:
                detail = json.loads(con.execute("SELECT detail FROM execution_actions WHERE plan_id = ? AND model = ?",
                                                [got["plan"], act["model"]]).fetchone()[0] or "{}")
            if act["action"] != "certified_removal":
                raise SystemExit(f"the plan chose {act['action']} for {act['model']}, not certified removal")
            runs.append({"subject": subject, "actual": act["actual_seconds"], "estimated": act["estimated_seconds"],
                         **{k: detail.get(k) for k in ("how", "rows_from", "read_seconds", "step_seconds",
                                                       "record_seconds", "bookkeeping_seconds")}})
            got_parts = parts(store, "certified", a.repeats)
            sizes.extend(got_parts.pop("catalog_bytes"))
            commits.extend(got_parts.pop("write_open_and_commit"))
            for k, v in got_parts.items():
                floor.setdefault(k, []).extend(v)
            print(json.dumps(runs[-1]), file=sys.stderr)
        store = bench_unlearn.restore(snapshot, root)
        retrains = []
        for k in range(a.retrains):
            t0 = time.perf_counter()
            rerun(store, "certified-1", new_name=f"certified-1-ref-{k}", out_dir=root / f"ref-{k}",
                  exclude_subjects=[random.Random(f"floor-{k}").choice(subjects)])
            retrains.append(time.perf_counter() - t0)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(snapshot, ignore_errors=True)
    retrain = statistics.median(retrains)
    action = statistics.median(r["actual"] for r in runs)
    removal = statistics.median(r["read_seconds"] + r["step_seconds"] for r in runs)
    fl = {k: median_ms(v) for k, v in floor.items()}
    floor_s = (sum(fl.values()) / 1e3) + removal
    doc = {"customers": a.customers, "features": a.features, "subjects": a.subjects, "runs": runs,
           "retrains": [round(x, 3) for x in retrains],
           "summary": {
               "retrain_seconds": round(retrain, 3), "action_ms": round(action * 1e3, 2),
               "speedup": round(retrain / action, 1),
               "action_parts_ms": {k: median_ms([r[k] for r in runs]) for k in
                                   ("read_seconds", "step_seconds", "record_seconds", "bookkeeping_seconds")},
               "floor_parts_ms": {**fl, "removal (find rows + step)": round(removal * 1e3, 3)},
               "floor_ms": round(floor_s * 1e3, 2),
               "speedup_at_floor": round(retrain / floor_s, 1),
               "write_open_and_commit_ms": median_ms(commits),  # within the write
               "catalog_bytes": int(statistics.median(sizes)),
               "budget_for_100x_ms": round(retrain / 100 * 1e3, 2)}}
    text = json.dumps(doc, indent=2)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    print(json.dumps({"summary": doc["summary"]}, indent=2))


if __name__ == "__main__":
    main()
