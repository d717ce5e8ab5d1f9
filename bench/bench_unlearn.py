"""Unlearning one subject on 200k training records: planned estimate vs actual, and speed-ups.

Builds a store of N customers (one profile record each, D features), trains the reference SISA ensemble
(S=8, R=4), the MLP and the certified logistic regression on all of them, then for one subject (the newest
customer, and a random one) plans and executes (`expunge.orchestrator.execute.run_plan`) a request whose
category admits certified removal, and times a full retrain of each model without the subject for the
speed-ups. Prints one JSON document.

    python bench/bench_unlearn.py --customers 200000 --repeats 3 --out bench/out/unlearn.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import use_bench_secret  # noqa: E402


def build(root: Path, n: int, d: int, epochs: int, models=("sisa", "mlp", "certified")):
    """A store of N customers and the reference models named in `models`, each trained on all of them."""
    import pyarrow.parquet as pq

    from expunge import synth
    from expunge.lineage.store import Store
    from expunge.orchestrator.trainers import TrainRequest, logreg_certified, mlp, sisa

    store = Store.init(root / "store")
    cust = synth.customers(n, seed=1, n_features=d)
    store.ingest_source(cust, name="customers", subject_col="customer_id", record_col="record_id")
    feats = root / "customers.parquet"
    pq.write_table(cust, feats)
    cfg = {"features": str(feats), "row_col": "record_id", "feature_cols": [f"f{j}" for j in range(d)],
           "label_col": "churned", "epochs": epochs, "batch_size": 256, "lr": 0.05}
    inputs = [{"dataset": "customers@1", "role": "train"}]

    def req(trainer, run, model, family, config):
        return TrainRequest(store=store, run_name=run, inputs=inputs, config=config, seed=3, out_dir=root / run,
                            trainer=trainer, model_name=model, stage="production", model_family=family)

    t = {}
    for name, fn, trainer, family, config in (
            ("sisa", sisa.train, sisa.ENTRY_POINT, "sisa-mlp", {**cfg, "shards": 8, "slices": 4}),
            ("mlp", mlp.train, mlp.ENTRY_POINT, "mlp", cfg),
            ("certified", logreg_certified.train, logreg_certified.ENTRY_POINT, logreg_certified.FAMILY,
             {**cfg, "lam": 1e-3})):
        if name not in models:
            continue
        t0 = time.perf_counter()
        fn(req(trainer, f"{name}-1", name, family, config))
        t[name] = time.perf_counter() - t0
    return store, cust.column("customer_id").to_pylist(), t


def restore(snapshot: Path, root: Path):
    """The trained store put back in place from its snapshot, and opened."""
    from expunge.lineage.store import Store

    shutil.rmtree(root)
    shutil.copytree(snapshot, root)
    os.sync()  # the copy's writeback is the benchmark's own I/O: not inside the timed actions
    return Store.open(root / "store")


def erase(store, root: Path, subject: str, scenario: str) -> dict:
    """Plan, approve and run one subject's erasure. Scenario "exact": the default category (exact
    unlearning: SISA shard retrain, full retrains); "cheapest": marketing under a policy that always takes
    the cheapest admissible action (approximate unlearning, certified removal)."""
    from expunge.orchestrator import execute, planner
    from expunge.orchestrator import requests as rq
    from expunge.orchestrator.approvals import keygen
    from expunge.orchestrator.policy import default_policy_text, set_store_policy, store_policy

    key = root / "approver.key"
    if not key.exists():  # a chain of requests on one store: set up once
        pub = keygen(key, "bench")
        text = default_policy_text()
        if scenario == "cheapest":
            text = text.replace("max_premium = 2.0", "max_premium = 1.0")
        (root / "policy.toml").write_text(text + f'\n[approval.keys]\nbench = "{" ".join(pub.split()[:2])}"\n')
        set_store_policy(store, root / "policy.toml")
    r = rq.create(store, [subject], category="default" if scenario == "exact" else "marketing",
                  policy=store_policy(store))
    doc = planner.make_plan(store, [r.id], store_policy(store))
    planner.save_plan(store, doc)
    planner.approve(store, doc["id"], key)
    t0 = time.perf_counter()
    out = execute.run_plan(store, doc["id"], finish=False)
    out["run_wall"] = time.perf_counter() - t0
    return out


def full_retrain(store, root: Path, run: str, subject: str) -> tuple[float, float]:
    """(wall, CPU seconds) of retraining the run from scratch without the subject."""
    from expunge.orchestrator.rerun import rerun

    t0, c0 = time.perf_counter(), time.process_time()
    rerun(store, run, new_name=f"{run}-ref-{subject}", out_dir=root / f"ref-{run}-{subject}",
          exclude_subjects=[subject])
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=200_000)
    ap.add_argument("--features", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="stores built and trained")
    ap.add_argument("--subjects", type=int, default=1,
                    help="subjects erased (one request each) from each trained store, restored between them")
    ap.add_argument("--scenarios", default="exact,cheapest")
    ap.add_argument("--chain", type=int, default=0,
                    help="cheapest scenario: after the first subject, erase this many more one request after another "
                         "(certified removal from each new version: alternately Newton steps on the training data and "
                         "one batch step)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    use_bench_secret()
    import torch

    torch.set_num_threads(1)
    results = []
    import random

    for rep in range(a.repeats):
        for scenario in a.scenarios.split(","):
            root = Path(tempfile.mkdtemp(prefix="bench-unlearn-"))
            store, subjects, train_s = build(root, a.customers, a.features, a.epochs)
            snapshot = root.with_name(root.name + "-built")
            if a.subjects > 1:  # each subject erased from the same trained store, restored in place
                shutil.copytree(root, snapshot)
            os.sync()  # training's and the snapshot's files written back before the first timed action
            for j in range(a.subjects):
                if j:
                    store = restore(snapshot, root)
                subject = random.Random(rep if a.subjects == 1 else f"{rep}-{j}").choice(subjects)
                chain = [random.Random(f"chain-{rep}-{j}-{k}").choice(subjects) for k in range(a.chain)] \
                    if scenario == "cheapest" else []
                results.append(one(store, root, subject, scenario, rep, j, train_s, chain))
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(snapshot, ignore_errors=True)
    summarize(a, results)


def one(store, root: Path, subject: str, scenario: str, rep: int, j: int, train_s: dict, chain=()) -> dict:
    """Erase one subject (plan, approve, run) and then the `chain` subjects one request after another, then
    retrain each model from scratch without the first subject (after the chain: the retrains' model versions
    are not the chain's to unlearn)."""
    run = erase(store, root, subject, scenario)
    later = [chained(store, root, s) for s in chain]
    both = {m: full_retrain(store, root, f"{m}-1", subject) for m in ("sisa", "mlp", "certified")}
    retrain = {m: w for m, (w, _) in both.items()}
    retrain_cpu = {m: c for m, (_, c) in both.items()}
    acts = {x["model"].split("@")[0]: x for x in run["actions"]}
    with store.read() as con:
        details = {m.split("@")[0]: json.loads(d or "{}") for m, d in con.execute(
            "SELECT model, detail FROM execution_actions WHERE plan_id = ?", [run["plan"]]).fetchall()}
        # The retrains' training alone (their runs' wall seconds: no loading, no recording).
        retrain_train = {m: con.execute("SELECT wall_seconds FROM runs WHERE name = ?",
                                        [f"{m}-1-ref-{subject}"]).fetchone()[0]
                         for m in ("sisa", "mlp", "certified")}
        # The certified retrain's writing of its removal rows file (part of its wall seconds, before training).
        ref_extra = json.loads(con.execute("SELECT extra FROM runs WHERE name = ?",
                                           [f"certified-1-ref-{subject}"]).fetchone()[0] or "{}")
    res = {"repeat": rep, "subject_no": j, "scenario": scenario, "train_seconds": train_s,
           "retrain_seconds": retrain, "retrain_cpu_seconds": retrain_cpu, "retrain_training_seconds": retrain_train,
           "retrain_rows_file_seconds": (ref_extra.get("removal_rows") or {}).get("write_seconds"),
           "actions": {m: {**{k: acts[m][k] for k in ("action", "estimated_seconds", "actual_seconds", "cpu_seconds")},
                           **{k: details.get(m, {}).get(k) for k in ("read_seconds", "step_seconds", "record_seconds",
                                                                     "bookkeeping_seconds", "shards", "rows_from")
                              if details.get(m, {}).get(k) is not None}}
                       for m in acts}}
    if later:
        res["chain"] = later
    print(json.dumps(res), file=sys.stderr)
    return res


def chained(store, root: Path, subject: str) -> dict:
    """One more request erasing `subject` from the store as the earlier ones left it: the certified model's
    action, estimated and actual."""
    run = erase(store, root, subject, "cheapest")
    # The newest version (the older ones, superseded, are retired at no cost).
    act = max((x for x in run["actions"] if x["model"].startswith("certified@")),
              key=lambda x: int(x["model"].rsplit("@", 1)[1]))
    with store.read() as con:
        detail = json.loads(con.execute("SELECT detail FROM execution_actions WHERE plan_id = ? AND model = ?",
                                        [run["plan"], act["model"]]).fetchone()[0] or "{}")
    out = {"model": act["model"], **{k: act[k] for k in ("action", "estimated_seconds", "actual_seconds")},
           **{k: detail.get(k) for k in ("how", "rows_from", "read_seconds", "step_seconds", "record_seconds",
                                         "bookkeeping_seconds")}}
    print(json.dumps({"chain": out}), file=sys.stderr)
    return out


def summarize(a, results: list[dict]) -> None:
    summary = {}
    for scenario in a.scenarios.split(","):
        rs = [r for r in results if r["scenario"] == scenario]
        s = {}
        for m in ("sisa", "mlp", "certified"):
            act = statistics.median(r["actions"][m]["actual_seconds"] for r in rs)
            est = statistics.median(r["actions"][m]["estimated_seconds"] for r in rs)
            full = statistics.median(r["retrain_seconds"][m] for r in rs)
            s[m] = {"action": sorted({r["actions"][m]["action"] for r in rs}), "estimated": round(est, 3),
                    "actual": round(act, 3), "actual/estimated": round(act / est, 2) if est else None,
                    "full_retrain": round(full, 3), "speedup": round(full / act, 1) if act else None,
                    # Each repeat's own: the subjects differ (a SISA retrain from slice 0 redoes a whole shard,
                    # 1/S of the ensemble's training; from a later slice, less).
                    "speedups": [round(r["retrain_seconds"][m] / r["actions"][m]["actual_seconds"], 1) for r in rs],
                    # On a shared machine wall seconds follow the load; CPU seconds (one torch thread) much less.
                    "cpu_speedups": [round(r["retrain_cpu_seconds"][m] / r["actions"][m]["cpu_seconds"], 1)
                                     if r["actions"][m]["cpu_seconds"] else None for r in rs],
                    "actual/estimated each": [round(r["actions"][m]["actual_seconds"] / r["actions"][m]["estimated_seconds"],
                                                    2) if r["actions"][m]["estimated_seconds"] else None for r in rs]}
            s[m]["median_speedup"] = round(statistics.median(s[m]["speedups"]), 1)
            if m == "sisa":
                s[m]["retrained_from"] = [r["actions"][m].get("shards") for r in rs]
                # By the slice the retrain started from: a subject in slice 0 retrains its shard from scratch
                # (at best S× less training than the ensemble), one in a later slice from a checkpoint.
                by: dict[str, list[float]] = {}
                for r in rs:
                    if r["actions"][m]["action"] != "sisa_shard_retrain":
                        continue
                    for start in (r["actions"][m].get("shards") or {}).values():
                        mt = re.fullmatch(r"shard\d+-slice(\d+)\.pt", start or "")
                        key = f"from slice {int(mt.group(1)) + 1}" if mt else "from scratch (slice 0)"
                        by.setdefault(key, []).append(r["retrain_seconds"][m] / r["actions"][m]["actual_seconds"])
                s[m]["speedup_by_start"] = {k: {"subjects": len(v), "median": round(statistics.median(v), 1)}
                                            for k, v in sorted(by.items())}
        cert = [r for r in rs if r["actions"]["certified"]["action"] == "certified_removal"
                and "step_seconds" in r["actions"]["certified"]]
        if cert:
            # The removal's own compute (one Newton step) against the retrain's training alone; and with finding
            # the removed rows in the features table.
            step = statistics.median(r["actions"]["certified"]["step_seconds"] for r in cert)
            read = statistics.median(r["actions"]["certified"]["read_seconds"] for r in cert)
            train = statistics.median(r["retrain_training_seconds"]["certified"] for r in cert)
            rows_file = [r["retrain_rows_file_seconds"] for r in cert if r.get("retrain_rows_file_seconds")]
            s["certified"].update({"rows_from": sorted({r["actions"]["certified"].get("rows_from", "?") for r in cert}),
                                   "retrain_rows_file": round(statistics.median(rows_file), 4) if rows_file else None,
                                   "newton_step": round(step, 5), "finding_rows": round(read, 4),
                                   "retrain_training": round(train, 3),
                                   "compute_speedup": round(train / step, 1) if step else None,
                                   "compute_and_read_speedup": round(train / (step + read), 1)})
        chains = [r["chain"] for r in rs if r.get("chain")]
        if chains:  # the k-th later request, over the repeats: against the first request's full retrain
            s["certified_chain"] = []
            for k in range(min(len(c) for c in chains)):
                at = [(c[k], r["retrain_seconds"]["certified"]) for c, r in zip(chains, [r for r in rs if r.get("chain")])]
                act = statistics.median(x["actual_seconds"] for x, _ in at)
                s["certified_chain"].append({
                    "request": k + 2, "how": sorted({str(x["how"]) for x, _ in at}),
                    "rows_from": sorted({str(x["rows_from"]) for x, _ in at}),
                    "actual": round(act, 4), "estimated": round(statistics.median(x["estimated_seconds"] for x, _ in at), 4),
                    "actual/estimated each": [round(x["actual_seconds"] / x["estimated_seconds"], 2)
                                              if x["estimated_seconds"] else None for x, _ in at],
                    "speedups": [round(full / x["actual_seconds"], 1) for x, full in at]})
        summary[scenario] = s
    doc = {"customers": a.customers, "features": a.features, "epochs": a.epochs, "repeats": a.repeats,
           "summary": summary, "runs": results}
    text = json.dumps(doc, indent=2)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    print(json.dumps({"summary": summary}, indent=2))


if __name__ == "__main__":
    main()
