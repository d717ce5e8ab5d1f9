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

Re-training (TrainRequest.shard = k): shards other than k are copied from `init_model` (the
SISA model being unlearned), shard k is retrained from `start_checkpoint` (a slice checkpoint
of shard k) or from scratch, on its rows minus the excluded records.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from expunge.errors import BadInput
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


def assignment(ds, shards: int, slices: int) -> tuple[np.ndarray, np.ndarray]:
    """(shard, slice) of each row: shard by owner key, slices by newest record within the shard."""
    shard = ds.owner_keys() % shards
    slice_ = np.zeros(len(ds), np.int64)
    for s in range(shards):
        rows = np.flatnonzero(shard == s)
        order = rows[np.argsort(ds.last_ords[rows], kind="stable")]
        slice_[order] = np.arange(order.size) * slices // max(order.size, 1)
    return shard, slice_


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
    shard, slice_ = assignment(ds, S, R)
    model = build(c)
    initial = [{k: v.clone() for k, v in m.state_dict().items()} for m in model.members]
    todo = range(S)
    if req.shard is not None:
        if req.init_model is None:
            raise BadInput("retraining one SISA shard needs the model being unlearned (init_model)")
        model.load_state_dict(req.load_init_model()["model"])
        todo = [int(req.shard)]
    loss_fn = nn.CrossEntropyLoss()
    batch, e_stage = c.get("batch_size", 64), stage_epochs(c.get("epochs", 5), R)
    others = [i for i in req.inputs if i.get("role", "train") != "train"]
    with req.tracker(inputs=[req.input_manifest(ds)] + others, shards=S, slices=R).bind(ds) as tr:
        tr.assign_many(ds.row_ids, shard, slice_)
        for s in todo:
            member = model.members[s]
            gen = torch.Generator().manual_seed(req.seed * 1_000_003 + s)
            start = 0
            if req.shard is not None and req.start_checkpoint is not None:
                state = req.load_start_checkpoint()
                if int(state.get("shard", -1)) != s:
                    raise BadInput(f"checkpoint {req.start_checkpoint} is not of shard {s}")
                member.load_state_dict(state["model"])
                start = int(state["slice"]) + 1
            elif req.shard is not None:
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
        tr.final_model(model, req.model_name, stage=req.stage, parents=req.parents)
    return tr.result
