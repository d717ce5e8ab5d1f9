"""Reference trainer: the MLP trained as a stream, oldest records first, with a checkpoint every few steps.

A model trained on data as it arrived (daily increments, a growing customer base) sees a customer's rows only
from the step their newest record reached the stream; every checkpoint taken before that step is clean of
them. Erasing a recent customer is then an exact *checkpoint replay*: load the last clean checkpoint and run
the remaining steps without their rows, instead of training from scratch.

Rows are ordered by their newest source record (ties by row id), cut into batches in that order, and trained
in `passes` passes over the same order (no shuffling: the stream's order is the data's). A replay from the
checkpoint after step s skips the first s batches, which hold no erased row (they were all first consumed at
or after step s), so the batches before s are the same with or without the erased rows and the result equals
a retrain without them.

Config: the MLP's (features, row_col, feature_cols, label_col, hidden, classes, lr, batch_size) plus
passes (default 1) and checkpoint_every (optimizer steps between checkpoints, default 8).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from expunge.orchestrator.sgd import SGD
from expunge.orchestrator.trainers import TrainRequest
from expunge.orchestrator.trainers import mlp

ENTRY_POINT = "expunge.orchestrator.trainers.stream:train"


def order(ds) -> np.ndarray:
    """Row positions oldest first: by newest source record, ties by position (rows are sorted by row id)."""
    return np.lexsort((np.arange(len(ds)), ds.last_ords))


def train(req: TrainRequest) -> dict:
    c = req.config
    torch.manual_seed(req.seed)
    ds = mlp.dataset(req)
    model = mlp.build(len(c["feature_cols"]), c.get("hidden", 32), c.get("classes", 2))
    if req.init_model is not None:  # fine-tune: a parent's weights
        model.load_state_dict(req.load_init_model()["model"])
    start = 0
    if req.start_checkpoint is not None:  # replay: resume after the checkpoint's step
        state = req.load_start_checkpoint()
        model.load_state_dict(state["model"])
        start = int(state["step"])
    opt = SGD(model.parameters(), lr=c.get("lr", 0.05))  # no momentum: no optimizer state to resume
    loss_fn = nn.CrossEntropyLoss()
    batch, every, passes = int(c.get("batch_size", 64)), int(c.get("checkpoint_every", 8)), int(c.get("passes", 1))
    batches = torch.from_numpy(order(ds)).split(batch)
    others = [i for i in req.inputs if i.get("role", "train") != "train"]
    with req.tracker(inputs=[req.input_manifest(ds)] + others).bind(ds) as tr:
        if start:  # the replay's starting point stays a checkpoint of the new run (same weights)
            tr.checkpoint(model, step=start, tag=f"step{start}")
        step = 0
        for _ in range(passes):
            for idx in batches:
                tr.consumed(idx, step=step)  # the model's history: rows of skipped steps were consumed there too
                if step >= start:
                    opt.zero_grad()
                    loss_fn(model(ds.x[idx]), ds.y[idx]).backward()
                    opt.step()
                step += 1
                if step > start and step % every == 0:
                    tr.checkpoint(model, step=step, tag=f"step{step}")
        tr.step = step
        tr.final_model(model, req.model_name, stage=req.stage, parents=req.parents, step=step)
    return tr.result
