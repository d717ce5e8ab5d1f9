"""Reference trainer: SISA (Bourtoule et al., 2021) — S shards × R slices of the MLP.

Sharded by subject: a row's shard is a keyed hash of its owner modulo S, so erasing one
customer touches one shard. Within a shard, rows are ordered by their newest source record
and cut into R slices, so recent customers sit in later slices and cost less to erase.
Each shard trains incrementally: stage r trains on slices 0..r and is checkpointed; the final
models are aggregated by mean probability (or vote).

Config: the MLP's (features, row_col, feature_cols, label_col, hidden, lr, batch_size,
epochs) plus shards (S, default 8), slices (R, default 4), aggregate ("mean" | "vote").
`epochs` is the monolithic budget: each stage gets round(2·epochs/(R+1)) epochs (≥ 1), which
makes the total work about that of the monolithic model.

Re-training (TrainRequest.shard_checkpoints = {k: slice checkpoint of shard k or None}, or
shard = k with start_checkpoint): the other shards are copied from `init_model` (the SISA model
being unlearned), each shard k is retrained from its checkpoint or from scratch, on its rows minus
the excluded records, with the slice cut points saved in `init_model` (so the rows that remain keep
their slices).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from expunge.errors import BadInput
from expunge.lineage.torch import load_artifact
from expunge.orchestrator.trainers import TrainRequest
from expunge.orchestrator.trainers import mlp

ENTRY_POINT = "expunge.orchestrator.trainers.sisa:train"


class SisaEnsemble(nn.Module):
    def __init__(self, members: list[nn.Module], aggregate: str = "mean"):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.aggregate = aggregate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Aggregated class probabilities."""
        probs = torch.stack([torch.softmax(m(x), dim=-1) for m in self.members])
        if self.aggregate == "vote":
            votes = torch.nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).float()
            return votes.mean(0)
        return probs.mean(0)


def cutpoints(ds, shard: np.ndarray, shards: int, slices: int) -> list[list[int]]:
    """Per shard, the newest-record ordinals at which slices 1..R-1 begin (R equal slices by recency)."""
    cuts = []
    for s in range(shards):
        ords = np.sort(ds.last_ords[shard == s])
        cuts.append([int(ords[(r * ords.size) // slices]) if ords.size else 0 for r in range(1, slices)])
    return cuts


def assignment(ds, shards: int, slices: int, cuts: list[list[int]] | None = None):
    """(shard, slice, cuts) of each row: shard by owner key, slice by the row's newest record against the
    shard's cut points. A retrain passes the cut points the model was trained with, so removing rows never
    moves the rows that remain to another slice (its slice checkpoints stay valid)."""
    shard = ds.owner_keys() % shards
    cuts = cuts if cuts is not None else cutpoints(ds, shard, shards, slices)
    slice_ = np.zeros(len(ds), np.int64)
    for s in range(shards):
        rows = np.flatnonzero(shard == s)
        slice_[rows] = np.searchsorted(np.asarray(cuts[s], np.int64), ds.last_ords[rows], side="right")
    return shard, slice_, cuts


def stage_epochs(epochs: int, slices: int) -> int:
    return max(1, round(2 * epochs / (slices + 1)))


def load(path, config: dict, *, sha256: str | None = None, store=None) -> SisaEnsemble:
    """The ensemble saved at `path`, checked against `sha256` (or the one `store` recorded) first."""
    from expunge.lineage.torch import load_artifact

    state = load_artifact(path, sha256, store=store)
    model = build(config)
    model.load_state_dict(state["model"])
    return model


def build(c: dict) -> SisaEnsemble:
    return SisaEnsemble([mlp.build(len(c["feature_cols"]), c.get("hidden", 32), c.get("classes", 2))
                         for _ in range(c.get("shards", 8))], c.get("aggregate", "mean"))


def train(req: TrainRequest) -> dict:
    c = req.config
    S, R = int(c.get("shards", 8)), int(c.get("slices", 4))
    torch.manual_seed(req.seed)
    ds = mlp.dataset(req)
    model = build(c)
    initial = [{k: v.clone() for k, v in m.state_dict().items()} for m in model.members]
    todo, cuts = range(S), None
    # Retraining shards: {shard: the slice checkpoint to resume from, or None for from scratch}.
    starts = dict(req.shard_checkpoints or {})
    if req.shard is not None:
        starts[int(req.shard)] = req.start_checkpoint
    if starts:
        if req.init_model is None:
            raise BadInput("retraining SISA shards needs the model being unlearned (init_model)")
        saved = req.load_init_model()
        model.load_state_dict(saved["model"])
        cuts = saved.get("cuts")
        todo = sorted(starts)
    t0 = time.perf_counter()
    shard, slice_, cuts = assignment(ds, S, R, cuts)
    req.setup_seconds += time.perf_counter() - t0  # reading the owners' keys: before training, paid by re-runs
    loss_fn = nn.CrossEntropyLoss()
    batch, e_stage = c.get("batch_size", 64), stage_epochs(c.get("epochs", 5), R)
    others = [i for i in req.inputs if i.get("role", "train") != "train"]
    with req.tracker(inputs=[req.input_manifest(ds)] + others, shards=S, slices=R).bind(ds) as tr:
        tr.assign_many(ds.row_ids, shard, slice_)
        for s in todo:
            member = model.members[s]
            gen = torch.Generator().manual_seed(req.seed * 1_000_003 + s)
            start = 0
            if starts.get(s) is not None:
                state = (req.load_start_checkpoint() if req.shard == s and req.start_checkpoint is not None
                         else load_artifact(starts[s], None, store=req.store))
                if int(state.get("shard", -1)) != s:
                    raise BadInput(f"checkpoint {starts[s]} is not of shard {s}")
                member.load_state_dict(state["model"])
                start = int(state["slice"]) + 1
            elif starts:
                member.load_state_dict(initial[s])  # from scratch, with the original initial weights
            opt = torch.optim.SGD(member.parameters(), lr=c.get("lr", 0.05))
            for r in range(R):
                rows = torch.from_numpy(np.flatnonzero((shard == s) & (slice_ <= r)))
                for _ in range(e_stage):
                    perm = rows[torch.randperm(rows.numel(), generator=gen)]
                    if r < start:
                        continue  # in the checkpoint; drawn to keep later permutations equal
                    for idx in perm.split(batch):
                        tr.consumed(idx)
                        opt.zero_grad()
                        loss_fn(member(ds.x[idx]), ds.y[idx]).backward()
                        opt.step()
                if r >= start:
                    tr.checkpoint(member, shard=s, slice=r, tag=f"shard{s}-slice{r}")
        tr.final_model(model, req.model_name, stage=req.stage, parents=req.parents, cuts=cuts)
    return tr.result
