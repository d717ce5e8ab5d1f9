"""Training capture benchmarks (issue 3): tracker overhead per epoch, SISA vs the monolithic MLP.

    .venv/bin/python bench/bench_training.py [--rows 100000] [--features 32] [--epochs 5]

1. Tracker overhead: the reference MLP trainer (which calls `TrainingTracker.consumed` per batch,
   saves and records a checkpoint per epoch, and records the run) against the same loop with no
   tracker (same data, same batches, a plain `torch.save` per epoch). Reported per epoch.
2. SISA with S=8 shards × R=4 slices against the monolithic MLP on the same rows: wall time and
   test accuracy on a held-out split.

Targets: overhead ≤ 5% per epoch; SISA time ≤ 1.3× monolithic, accuracy within 2 points.
Prints a table and writes bench/out/training-<rows>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("EXPUNGE_SECRET", "b3" * 32)

from expunge import synth  # noqa: E402
from expunge.lineage.store import Store  # noqa: E402
from expunge.orchestrator.trainers import TrainRequest, mlp, sisa  # noqa: E402


def mlp_loop(ds, cfg: dict, seed: int, out: Path, tracker=None) -> float:
    """The reference MLP's epoch loop; with a tracker, each batch is reported (`consumed`) and each
    epoch's checkpoint saved and recorded through it, else saved with a plain `torch.save`.
    Returns the loop's wall time (recording the run at the end is timed separately)."""
    torch.manual_seed(seed)
    model = mlp.build(len(cfg["feature_cols"]), cfg["hidden"], 2)
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"])
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for epoch in range(cfg["epochs"]):
        for idx in torch.randperm(len(ds), generator=gen).split(cfg["batch_size"]):
            if tracker is not None:
                tracker.consumed(idx)
            opt.zero_grad()
            loss_fn(model(ds.x[idx]), ds.y[idx]).backward()
            opt.step()
        if tracker is not None:
            tracker.checkpoint(model, tag=f"epoch{epoch + 1}", epoch=epoch + 1)
        else:
            torch.save({"model": model.state_dict(), "epoch": epoch + 1}, out / f"epoch{epoch + 1}.pt")
    if tracker is not None:
        tracker.final_model(model, "overhead-probe")
    else:
        torch.save({"model": model.state_dict()}, out / "model.pt")
    return time.perf_counter() - t0


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--test-rows", type=int, default=20_000)
    ap.add_argument("--features", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    args = ap.parse_args()
    torch.set_num_threads(1)  # steady timings on a 2-core machine

    tmp = Path(tempfile.mkdtemp(prefix="expunge-bench-train-"))
    n, nt = args.rows, args.test_rows
    table = synth.customers(n + nt, seed=0, n_features=args.features)
    pq.write_table(table, tmp / "features.parquet")
    store = Store.init(tmp / "store")
    store.ingest_source(table, name="customers", subject_col="customer_id", record_col="record_id")
    ids = table.column("record_id")
    store.ingest_dataset(pa.table({"record_id": ids.slice(0, n)}), name="train", parents=["customers@1"],
                         kind="split", record_col="record_id")
    cols = [f"f{j}" for j in range(args.features)]
    cfg = {"features": str(tmp / "features.parquet"), "row_col": "record_id", "feature_cols": cols,
           "label_col": "churned", "epochs": args.epochs, "batch_size": 256, "hidden": 64, "lr": 0.1}
    test_x = torch.from_numpy(np.column_stack([table.column(c).to_numpy()[n:] for c in cols]).astype(np.float32))
    test_y = torch.from_numpy(table.column("churned").to_numpy()[n:].astype(np.int64))

    def request(trainer, run, config):
        return TrainRequest(store=store, run_name=run, inputs=[{"dataset": "train@1", "role": "train"}],
                            config=config, seed=1, out_dir=tmp / run, trainer=trainer, model_name=run)

    req = request(mlp.ENTRY_POINT, "probe", cfg)
    t0 = time.perf_counter()
    ds = mlp.dataset(req)
    dataset_s = time.perf_counter() - t0
    tracked, bare, record = [], [], []
    for k in range(args.repeats):
        bare.append(mlp_loop(ds, cfg, 1, tmp / f"bare{k}"))
        tr = request(mlp.ENTRY_POINT, f"probe-{k}", cfg).tracker(inputs=[{"dataset": "train@1"}]).bind(ds)
        with tr:
            tracked.append(mlp_loop(ds, cfg, 1, tmp / f"probe-{k}", tracker=tr))
            t_rec = time.perf_counter()
        record.append(time.perf_counter() - t_rec)
    t0 = time.perf_counter()
    mlp.train(request(mlp.ENTRY_POINT, "mlp-0", cfg))
    mono_s = time.perf_counter() - t0
    mono = mlp.build(len(cols), cfg["hidden"], 2)
    mono.load_state_dict(torch.load(tmp / "mlp-0" / "model.pt")["model"])
    acc_mono = accuracy(mono, test_x, test_y)

    sisa_cfg = {**cfg, "shards": 8, "slices": 4}
    sisa_t = []
    for k in range(args.repeats):
        t0 = time.perf_counter()
        sisa.train(request(sisa.ENTRY_POINT, f"sisa-{k}", sisa_cfg))
        sisa_t.append(time.perf_counter() - t0)
    acc_sisa = accuracy(sisa.load(tmp / "sisa-0" / "model.pt", sisa_cfg), test_x, test_y)

    e = args.epochs
    res = {
        "rows": n, "features": args.features, "epochs": e, "torch_threads": 1,
        "dataset_build_s": dataset_s, "loop_bare_s": bare, "loop_tracked_s": tracked, "record_run_s": record,
        "tracker_overhead_pct_per_epoch": 100 * (min(tracked) - min(bare)) / min(bare),
        "mlp_epoch_s": min(bare) / e, "mlp_trainer_s": mono_s,
        "sisa_s": sisa_t, "sisa_over_mlp": min(sisa_t) / mono_s,
        "acc_mlp": acc_mono, "acc_sisa": acc_sisa, "acc_gap_points": 100 * (acc_mono - acc_sisa),
    }
    print(f"rows {n:,} × {args.features} features, {e} epochs, batch 256, torch threads 1 (best of {args.repeats})")
    print(f"dataset (rows + features) {dataset_s:6.2f} s   once per run, not per epoch")
    print(f"MLP loop, untracked    {min(bare):7.2f} s   ({min(bare) / e:.3f} s/epoch, torch.save per epoch)")
    print(f"MLP loop, tracked      {min(tracked):7.2f} s   overhead {res['tracker_overhead_pct_per_epoch']:+.1f}% "
          f"per epoch (target ≤ 5%); recording the run at the end {min(record):.2f} s")
    print(f"MLP reference trainer  {mono_s:7.2f} s   (dataset + tracked loop + recording)")
    print(f"SISA S=8 R=4           {min(sisa_t):7.2f} s   {res['sisa_over_mlp']:.2f}× the MLP reference trainer "
          f"(target ≤ 1.3×)")
    print(f"test accuracy          MLP {acc_mono:.4f}   SISA {acc_sisa:.4f}   gap {res['acc_gap_points']:+.2f} points "
          f"(target ≤ 2)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"training-{n}.json").write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
