"""`expunge demo`: a small but complete lineage on synthetic customers, then one customer's impact."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from expunge import synth
from expunge.lineage.store import Store

N_CUSTOMERS = 400
SHARDS, SLICES = 4, 3


def _artifact(path: Path, payload: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, sort_keys=True))
    return str(path)


def build_demo(root: Path) -> tuple[Store, str]:
    """Build the demo store under `root`; return it and the customer to show."""
    store = Store.init(root / "store")
    art = root / "artifacts"
    cust = synth.customers(N_CUSTOMERS, seed=1)
    tx1 = synth.transactions(3000, N_CUSTOMERS, seed=2)
    tx2_new = synth.transactions(1000, N_CUSTOMERS, seed=3, start=3000, day0=90)
    tx2 = pa.concat_tables([tx1.slice(200), tx2_new])  # 200 old transactions dropped, 1,000 new

    store.ingest_source(cust, name="customers", subject_col="customer_id", record_col="record_id")
    store.ingest_source(tx1, name="transactions", subject_col="customer_id", record_col="tx_id")
    store.ingest_source(tx2, name="transactions", subject_col="customer_id", record_col="tx_id")

    large = tx2.filter(pc.greater(tx2.column("amount"), 10.0))
    store.ingest_dataset(large.select(["tx_id"]), name="tx_large", parents=["transactions@2"], kind="filter",
                         record_col="tx_id")
    rng = np.random.default_rng(4)
    is_train = rng.random(large.num_rows) < 0.8
    store.ingest_dataset(large.filter(pa.array(is_train)).select(["tx_id"]), name="tx_train",
                         parents=["tx_large@1"], kind="split", record_col="tx_id")
    store.ingest_dataset(large.filter(pa.array(~is_train)).select(["tx_id"]), name="tx_test",
                         parents=["tx_large@1"], kind="split", record_col="tx_id")

    # One feature row per customer, built from their profile and all their transactions.
    tx_by_cust: dict[str, list[str]] = {}
    for c, t in zip(tx2.column("customer_id").to_pylist(), tx2.column("tx_id").to_pylist()):
        tx_by_cust.setdefault(c, []).append(t)
    prof = cust.column("record_id").to_pylist()
    owners = cust.column("customer_id").to_pylist()
    feats = pa.table({
        "row_id": [f"feat-{p}" for p in prof],
        "profile": prof,
        "txs": [tx_by_cust.get(c, []) for c in owners],
    })
    store.ingest_dataset(feats, name="customer_features", parents=["customers@1", "transactions@2"],
                         kind="aggregate", sources={"customers@1": "profile", "transactions@2": "txs"},
                         row_col="row_id")

    # Churn model: SISA-style, sharded by keyed subject hash, newer customers in later slices.
    hashes = store.hasher.hash_many(owners)
    shard = (hashes[:, 1] % SHARDS).astype(int)
    slice_ = (np.arange(N_CUSTOMERS) * SLICES // N_CUSTOMERS).astype(int)
    first_step = slice_ * 10 + rng.integers(0, 10, N_CUSTOMERS)
    run = {
        "name": "churn-sisa-1", "trainer": "expunge.orchestrator.trainers.sisa:train",
        "config": {"shards": SHARDS, "slices": SLICES, "epochs": 5}, "code_version": "demo", "seed": 7,
        "model_family": "sisa-mlp", "inputs": [{"dataset": "customer_features@1", "role": "train"}],
        "cost": {"wall_seconds": 5400.0, "cpu_seconds": 20000.0},
        "shards": SHARDS, "slices": SLICES,
        "facts": {"rows": feats.column("row_id").to_pylist(), "shard": shard.tolist(), "slice": slice_.tolist(),
                  "first_step": first_step.tolist()},
        "checkpoints": [
            {"step": (sl + 1) * 10, "shard": sh, "slice": sl,
             "path": _artifact(art / f"churn-sisa-1/shard{sh}-slice{sl}.json", {"shard": sh, "slice": sl})}
            for sh in range(SHARDS) for sl in range(SLICES)
        ],
    }
    store.record_run({"run": run, "models": [
        {"name": "churn", "stage": "production", "path": _artifact(art / "churn-1.json", {"model": "churn@1"})},
    ]})

    # Fine-tune on the newest customers' profiles, then distil a student from it on other customers.
    recent = prof[-100:]
    store.record_run({
        "run": {"name": "churn-finetune-1", "trainer": "expunge.orchestrator.trainers.mlp:train",
                "config": {"epochs": 2, "lr": 1e-3}, "model_family": "mlp",
                "inputs": [{"dataset": "customers@1", "role": "train", "rows": recent}],
                "cost": {"wall_seconds": 600.0}},
        "models": [{"name": "churn-ft", "stage": "staging",
                    "path": _artifact(art / "churn-ft-1.json", {"model": "churn-ft@1"}),
                    "parents": [{"model": "churn@1", "relation": "fine-tune"}]}],
    })
    store.record_run({
        "run": {"name": "churn-distill-1", "trainer": "expunge.orchestrator.trainers.mlp:distill",
                "model_family": "mlp", "inputs": [{"dataset": "customers@1", "role": "train", "rows": prof[:50]}],
                "cost": {"wall_seconds": 300.0}},
        "models": [{"name": "churn-student", "stage": "dev",
                    "path": _artifact(art / "churn-student-1.json", {"model": "churn-student@1"}),
                    "parents": [{"model": "churn-ft@1", "relation": "distill"}]}],
    })

    # Fraud model with checkpoints every 100 steps and each record's first-consumed step.
    train_ids = large.filter(pa.array(is_train)).column("tx_id").to_pylist()
    steps = np.arange(len(train_ids)) // 8  # batch of 8, one pass in order
    store.record_run({
        "run": {"name": "fraud-train-1", "trainer": "expunge.orchestrator.trainers.mlp:train",
                "config": {"epochs": 3, "batch_size": 8}, "seed": 11, "model_family": "mlp",
                "inputs": [{"dataset": "tx_train@1", "role": "train"}, {"dataset": "tx_test@1", "role": "eval"}],
                "cost": {"wall_seconds": 1800.0, "gpu_seconds": 1500.0},
                "facts": {"rows": train_ids, "first_step": steps.tolist()},
                "checkpoints": [{"step": s, "path": _artifact(art / f"fraud-train-1/step{s}.json", {"step": s})}
                                for s in (100, 200, 300)]},
        "models": [{"name": "fraud", "stage": "production",
                    "path": _artifact(art / "fraud-1.json", {"model": "fraud@1"})}],
    })
    # An old model trained before transactions existed.
    store.record_run({
        "run": {"name": "legacy-churn", "trainer": "legacy.train:main", "model_family": "logreg",
                "inputs": [{"dataset": "customers@1", "role": "train"}], "cost": {"wall_seconds": 120.0}},
        "models": [{"name": "churn-legacy", "stage": "archived",
                    "path": _artifact(art / "churn-legacy-1.json", {"model": "churn-legacy@1"})}],
    })

    # Show a customer among the newest (fine-tuned on), with the most transactions.
    candidates = owners[-100:]
    subject = max(candidates, key=lambda c: (len(tx_by_cust.get(c, [])), c))
    return store, subject


def run_demo(directory: Path | None, json_out: bool = False) -> None:
    from rich.console import Console

    from expunge.schemas import dumps

    root = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="expunge-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    store, subject = build_demo(root)
    result = store.impact([subject])
    if json_out:
        print(dumps(result.to_dict()))
        return
    from expunge.cli import render_impact

    console = Console()
    stats = store.stats()
    console.print(
        f"Built a demo lineage at [bold]{store.root}[/]: {stats['records']:,} records of {N_CUSTOMERS} synthetic "
        f"customers, {stats['dataset_versions']} dataset versions, {stats['runs']} runs, {stats['models']} models."
    )
    console.print(f"\nCustomer [bold]{subject}[/] asks to be forgotten. What did their records touch?\n")
    render_impact(result, console)
    console.print(
        f"\nTry: expunge impact --store {store.root} --subject {subject} --json"
    )
