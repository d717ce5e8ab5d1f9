"""Planning benchmark (issue 4): 10,000 pending requests over a generated store, and one request
as a whole `expunge plan` process.

    .venv/bin/python bench/bench_plan.py --gen-dir /tmp/expunge-bench-s [--requests 10000]

Works on a copy of the generated store (the original stays as generated). Requests are spread
over the policy's categories with random deadlines; each names 1–3 sample subjects.
Targets (scale S): 10,000 requests planned in ≤ 10 s; a single `expunge plan` process ≤ 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import BENCH_SECRET as SECRET  # noqa: E402

os.environ["EXPUNGE_SECRET"] = SECRET

from expunge.lineage.store import Store  # noqa: E402
from expunge.orchestrator import requests as rq  # noqa: E402
from expunge.orchestrator.planner import make_plan, save_plan  # noqa: E402
from expunge.orchestrator.policy import load_policy  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gen-dir", type=Path, required=True)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--cli-runs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    args = ap.parse_args()
    manifest = json.loads((args.gen_dir / "manifest.json").read_text())
    present = manifest["sample_subjects"]
    work = args.gen_dir.parent / (args.gen_dir.name + "-plan")
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(args.gen_dir / "store", work)
    store = Store.open(work)
    policy = load_policy(None)
    rng = np.random.default_rng(args.seed)
    cats = sorted(policy.categories)
    specs = [{"subjects": list(rng.choice(present, size=int(rng.integers(1, 4)), replace=False)),
              "category": cats[int(rng.integers(len(cats)))], "deadline_days": int(rng.integers(7, 31))}
             for _ in range(args.requests)]
    t0 = time.perf_counter()
    reqs = rq.create_many(store, specs, policy=policy)
    create_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    doc = make_plan(store, [r.id for r in reqs], policy)
    plan_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    save_plan(store, doc)
    save_s = time.perf_counter() - t0

    single = rq.create(store, [present[0]], category="default", policy=policy)
    exe = Path(sys.executable).parent / "expunge"
    walls = []
    for _ in range(args.cli_runs):
        t0 = time.perf_counter()
        res = subprocess.run([str(exe), "plan", single.id, "--store", str(work), "--json"], capture_output=True,
                             text=True, env=dict(os.environ, EXPUNGE_SECRET=SECRET))
        walls.append(time.perf_counter() - t0)
        if res.returncode not in (0, 4):
            print(res.stderr, file=sys.stderr)
            return 1
    one = json.loads(res.stdout)
    res = {
        "store": str(work), "requests": args.requests, "create_s": create_s, "plan_s": plan_s, "save_s": save_s,
        "models_in_plan": len(doc["items"]), "records": doc["records"], "blocked": len(doc["blocked"]),
        "cli_single_s": walls, "cli_single_median_s": statistics.median(walls),
        "single_models": len(one["items"]),
    }
    print(f"store {work}: {args.requests:,} requests recorded in {create_s:.2f} s")
    print(f"plan of {args.requests:,} requests: {plan_s:.2f} s ({len(doc['items']):,} models, {doc['records']:,} "
          f"records; target ≤ 10 s); saving it {save_s:.2f} s")
    print(f"`expunge plan` of one request as a process: median {statistics.median(walls):.3f} s "
          f"(max {max(walls):.3f} s, {len(one['items'])} models; target ≤ 0.5 s)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "plan.json").write_text(json.dumps(res, indent=2))
    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
