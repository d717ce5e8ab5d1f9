"""Reference trainer: a small MLP classifier on tabular features, a checkpoint per epoch.

Config: features (Parquet/CSV path), row_col, feature_cols, label_col, hidden (default 32),
classes (default 2), epochs (default 5), lr (default 0.05), batch_size (default 64).
Seeded and deterministic on CPU: each epoch's order is a permutation drawn from a generator
seeded with the run's seed, so a replay from epoch k draws the same later permutations.
"""

from __future__ import annotations

import torch
from torch import nn

from expunge.lineage.torch import RecordDataset
from expunge.orchestrator.sgd import SGD
from expunge.orchestrator.trainers import TrainRequest

ENTRY_POINT = "expunge.orchestrator.trainers.mlp:train"


def build(n_features: int, hidden: int = 32, classes: int = 2) -> nn.Module:
    return nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def dataset(req: TrainRequest) -> RecordDataset:
    c = req.config
    inp = req.train_input
    ds = RecordDataset(req.store, inp["dataset"], c["features"], row_col=c.get("row_col", "record_id"),
                       feature_cols=c["feature_cols"], label_col=c["label_col"], rows=inp.get("rows"),
                       records=inp.get("_subset_ords") if inp.get("rows") is None else None,
                       exclude_records=req.exclude_records)
    req.setup_seconds += ds.load_seconds
    return ds


def train(req: TrainRequest) -> dict:
    c = req.config
    torch.manual_seed(req.seed)
    ds = dataset(req)
    model = build(len(c["feature_cols"]), c.get("hidden", 32), c.get("classes", 2))
    start_epoch, start_step = 0, 0
    if req.init_model is not None:  # fine-tune: a parent's weights, training from epoch 0
        model.load_state_dict(req.load_init_model()["model"])
    if req.start_checkpoint is not None:  # replay: resume where that checkpoint stopped
        state = req.load_start_checkpoint()
        model.load_state_dict(state["model"])
        start_epoch, start_step = int(state["epoch"]), int(state["step"])
    opt = SGD(model.parameters(), lr=c.get("lr", 0.05))
    loss_fn = nn.CrossEntropyLoss()
    batch = c.get("batch_size", 64)
    epochs = c.get("epochs", 5)
    gen = req.generator()
    others = [i for i in req.inputs if i.get("role", "train") != "train"]
    with req.tracker(inputs=[req.input_manifest(ds)] + others).bind(ds) as tr:
        tr.step = start_step
        for epoch in range(epochs):
            perm = torch.randperm(len(ds), generator=gen)
            if epoch < start_epoch:
                continue  # already in the checkpoint; the permutation is drawn to keep later ones equal
            for idx in perm.split(batch):
                tr.consumed(idx)
                opt.zero_grad()
                loss_fn(model(ds.x[idx]), ds.y[idx]).backward()
                opt.step()
            tr.checkpoint(model, tag=f"epoch{epoch + 1}", epoch=epoch + 1)
        tr.final_model(model, req.model_name, stage=req.stage, parents=req.parents, epoch=epochs)
    return tr.result
