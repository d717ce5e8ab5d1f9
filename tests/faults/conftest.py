"""The world the kill tests start from: the demo store, then the commands a user runs on it, one after the
other. For each step, the store before it and after it (run once, uninterrupted, with a trace of the crash
points it passes) are kept; the kill tests replay the step on copies of the store before it."""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.faults.harness import committed, copy_store, normalised, progress, trace_lines


@dataclass
class Step:
    name: str                      # the command, as the summary reports it
    args: list                     # its arguments (the store is appended)
    before: Path                   # a store to copy: the state before the step
    after: Path                    # the same after an uninterrupted run
    points: list[tuple[str, int]] = field(default_factory=list)  # crash points it passes, in order
    stdout: str = ""
    seconds: float = 0.0


@dataclass
class World:
    root: Path
    subject: str
    steps: dict[str, Step]
    plan_id: str = ""

    def store_copy(self, step: str, dst: Path, which: str = "before") -> Path:
        return copy_store(getattr(self.steps[step], which), dst)


def _new_transactions(path: Path, customers: list[str], n: int = 3000) -> Path:
    import numpy as np

    rng = np.random.default_rng(5)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["customer_id", "tx_id", "amount"])
        for i in range(n):
            w.writerow([customers[int(rng.integers(len(customers)))], f"t-9{i:07d}", f"{rng.random() * 50:.2f}"])
    return path


@pytest.fixture(scope="session")
def world(tmp_path_factory, key_dir) -> World:
    from typer.testing import CliRunner

    from expunge import synth
    from expunge.cli import app
    from expunge.faults import reset_counts
    from expunge.demo import N_CUSTOMERS, build_demo

    root = tmp_path_factory.mktemp("faults-world")
    _, subject = build_demo(root / "demo")
    # The new batch leaves out the customer the request will name: the tracked run on it (a trainer expunge
    # may not import) stays unaffected, and the plan can run.
    customers = [c for c in synth.customer_ids(N_CUSTOMERS) if c != subject]
    tx = _new_transactions(root / "tx3.csv", customers)
    large = root / "tx3_large.csv"
    with open(tx) as src, open(large, "w", newline="") as dst:
        rows = list(csv.reader(src))
        w = csv.writer(dst)
        w.writerow(["tx_id"])
        kept = [r[1] for r in rows[1:] if float(r[2]) > 10]
        for t in kept:
            w.writerow([t])
    (root / "model.bin").write_bytes(b"tiny model weights")
    manifest = {
        "run": {"name": "tx-score-1", "trainer": "pkg.mod:train", "inputs": [{"dataset": "tx3_large@1",
                                                                            "role": "train"}],
                "facts": {"rows": kept[:200], "shard": [i % 2 for i in range(200)],
                          "slice": [i % 3 for i in range(200)], "first_step": list(range(200))},
                "checkpoints": [{"step": 50, "path": "model.bin"}]},
        "models": [{"name": "tx-score", "path": "model.bin", "stage": "staging"}],
    }
    (root / "run.json").write_text(json.dumps(manifest))
    policy = root / "policy2.toml"
    text = (root / "demo" / "policy.toml").read_text()
    assert "cpu_hour = 0.05" in text
    policy.write_text(text.replace("cpu_hour = 0.05", "cpu_hour = 0.06"))  # a real change: another hash

    steps: dict[str, Step] = {}
    current = root / "demo" / "store"
    plan_id: list[str] = []

    def step(name: str, args):
        nonlocal current
        k = len(steps)
        after = copy_store(current, root / f"s{k:02d}")
        trace = root / f"s{k:02d}.trace"
        # In this process (CliRunner): no interpreter start-up or torch import per step; the crash points
        # are traced all the same (fault_point reads the environment at each call).
        t0 = time.perf_counter()
        os.environ["EXPUNGE_FAULT_TRACE"] = str(trace)
        reset_counts()
        try:
            res = CliRunner().invoke(app, [str(a) for a in [*args(), "--store", after]])
        finally:
            del os.environ["EXPUNGE_FAULT_TRACE"]
        seconds = time.perf_counter() - t0
        assert res.exit_code == 0, (name, res.output)
        points = [(p, n) for _, p, n, _ in trace_lines(trace)]
        steps[name] = Step(name, args, current, after, points, res.stdout, seconds)
        current = after

    step("ingest source", lambda: ["ingest", "source", tx, "--name", "transactions", "--subject-col", "customer_id",
                                   "--record-col", "tx_id"])
    step("ingest dataset", lambda: ["ingest", "dataset", large, "--name", "tx3_large", "--parent", "transactions@3",
                                    "--kind", "filter", "--record-col", "tx_id"])
    step("track run", lambda: ["track", "run", "--manifest", root / "run.json"])
    step("model stage", lambda: ["model", "stage", "tx-score@1", "production", "--reason", "promoted"])
    step("policy set", lambda: ["policy", "set", policy])
    step("request create", lambda: ["request", "create", "--subject", subject, "--reason", "erasure"])
    step("plan", lambda: ["plan", "req-000001", "--json"])
    plan_id.append(json.loads(steps["plan"].stdout)["id"])
    step("plan approve", lambda: ["plan", "approve", plan_id[0], "--key", root / "demo" / "approver.key"])
    for s in steps.values():
        s.args = s.args()
    return World(root, subject, steps, plan_id[0])


ODD_NAME = """it's a "store"; $HOME & `x` [a]"""


@pytest.fixture(scope="session")
def reference(world, tmp_path_factory):
    """The approved plan run once, uninterrupted, on a copy (in this process): where every resumed run must end.
    The copy's path holds quotes, spaces and shell characters (test_environment checks that it ran as under a
    plain path: the kill tests, on plain paths, end in the same store)."""
    from typer.testing import CliRunner

    from expunge.cli import app
    from expunge.faults import reset_counts

    odd = tmp_path_factory.mktemp("ref") / ODD_NAME
    odd.mkdir()
    root = copy_store(world.steps["plan approve"].after, odd / "st'")
    trace = odd.parent / "trace"
    os.environ["EXPUNGE_FAULT_TRACE"] = str(trace)
    reset_counts()
    t0 = time.perf_counter()
    try:
        res = CliRunner().invoke(app, ["run", world.plan_id, "--store", str(root), "--json"])
    finally:
        del os.environ["EXPUNGE_FAULT_TRACE"]
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["done"] == out["total"] == 6 and out["completed"]
    return {"root": root, "points": [(p, n) for _, p, n, _ in trace_lines(trace)], "seconds": time.perf_counter() - t0,
            "state": normalised(committed(root), root, drop_measured=True), "progress": progress(root), "out": out}
