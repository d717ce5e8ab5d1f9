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
the excluded records. The rows keep the shard and slice that `init_model`'s run recorded (its facts):
only the retrained shards' rows are loaded, nothing is dealt again from the owners' keys (which a key
rotation changes), and the new run records the old run's facts and the untouched stages' checkpoints
minus the excluded records, so that it can be unlearned shard by shard in turn. A run whose facts
cannot say that (rows of a composed dataset) falls back to dealing the rows again, with the slice cut
points saved in `init_model`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from expunge.errors import BadInput
from expunge.lineage.torch import load_artifact
from expunge.orchestrator.sgd import SGD
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
        bad = sorted(k for k in starts if not 0 <= int(k) < S)
        if bad:
            raise BadInput(f"no shard {bad[0]}: the ensemble has {S}")
        saved = req.load_init_model()
        model.load_state_dict(saved["model"])
        cuts = saved.get("cuts")
        todo = sorted(starts)
        dealt = None
        rec = Recorded.of(req, S, R)
        if rec is not None:
            return _retrain(req, model, initial, starts, cuts, rec)
        dealt = _owner_key_layers(req)
        if dealt is not None and dealt != len(req.store.key_layers):
            raise BadInput("the ensemble's shards were dealt from the owners' keys, which a key rotation has changed "
                           "since it was trained: its shards cannot be dealt again as they were (retrain it whole)")
    ds = mlp.dataset(req)
    t0 = time.perf_counter()
    shard, slice_, cuts = assignment(ds, S, R, cuts)
    req.setup_seconds += time.perf_counter() - t0  # reading the owners' keys: before training, paid by re-runs
    probe = _shard_load_seconds(req, ds, shard)
    req.setup_seconds += probe or 0.0  # before training; a re-run measures it again
    others = [i for i in req.inputs if i.get("role", "train") != "train"]
    with req.tracker(inputs=[req.input_manifest(ds)] + others, shards=S, slices=R,
                     extra={"setup_read_seconds": ds.read_seconds,
                            **({"shard_read_seconds": probe} if probe is not None else {}),
                            # The key the owners' fingerprints (the shards) came from: a rotation changes them.
                            "owner_key_layers": dealt if starts else len(req.store.key_layers)}).bind(ds) as tr:
        tr.assign_bound(shard, slice_)
        for s in todo:
            _train_member(req, model.members[s], s, _start_state(req, starts, s), initial if starts else None, ds,
                          shard, slice_, tr)
        tr.final_model(model, req.model_name, stage=req.stage, parents=req.parents, cuts=cuts)
    return tr.result


def _shard_load_seconds(req: TrainRequest, ds, shard: np.ndarray) -> float | None:
    """Seconds that loading one shard's rows takes, as a shard retrain loads them (the features table and the
    record ids read again, the shard's rows kept), for pricing one before it runs; measured now that the files
    have been read once (a process's first read of them is slower than a retrain's). None where a shard
    retrain does not load rows that way (a version whose rows are not records)."""
    from expunge.lineage.torch import RecordDataset

    with req.store.view() as view:
        if view.resolve_version(ds.version)["row_space"] != "records":
            return None
    c = req.config
    mine = ds.first_ords[shard == (int(shard[0]) if len(shard) else 0)]
    got = RecordDataset(req.store, ds.version, c["features"], row_col=c.get("row_col", "record_id"),
                        feature_cols=c["feature_cols"], label_col=c["label_col"], records=mine.astype(np.uint32))
    return got.load_seconds


def _owner_key_layers(req: TrainRequest) -> int | None:
    """The store key (its number of layers) whose owner fingerprints dealt the shards of the model being
    unlearned (`init_model`); None when its run did not record it."""
    import json

    from expunge.lineage.torch import recorded_sha256

    sha = req.init_model_sha256 or recorded_sha256(req.store, req.init_model)
    with req.store.view() as view:
        got = view.execute("""SELECT r.extra FROM models m JOIN runs r USING (run_id) WHERE m.sha256 = ?
                              ORDER BY m.model_id DESC LIMIT 1""", [sha]).fetchall()
    layers = json.loads(got[0][0] or "{}").get("owner_key_layers") if got else None
    return int(layers) if isinstance(layers, int) else None


def _start_state(req: TrainRequest, starts: dict, s: int) -> dict | None:
    """The slice checkpoint shard `s` resumes from (checked against its recorded sha256), or None."""
    if starts.get(s) is None:
        return None
    state = (req.load_start_checkpoint() if req.shard == s and req.start_checkpoint is not None
             else load_artifact(starts[s], None, store=req.store))
    if int(state.get("shard", -1)) != s:
        raise BadInput(f"checkpoint {starts[s]} is not of shard {s}")
    return state


def _train_member(req: TrainRequest, member: nn.Module, s: int, state: dict | None, initial: list | None, ds,
                  shard: np.ndarray, slice_: np.ndarray, tr, stage_start=None) -> None:
    """Train shard `s`'s member on its rows of `ds`, stage by stage, from `state` (a slice checkpoint) or from
    its initial weights (`initial`, when retraining; None: as built), checkpointing each stage it trains.
    `stage_start[r]`: the step at which stage r begins (None: the tracker's count)."""
    c = req.config
    R = int(c.get("slices", 4))
    batch, e_stage = c.get("batch_size", 64), stage_epochs(c.get("epochs", 5), R)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(req.seed * 1_000_003 + s)
    start = 0
    if state is not None:
        member.load_state_dict(state["model"])
        start = int(state["slice"]) + 1
    elif initial is not None:
        member.load_state_dict(initial[s])  # from scratch, with the original initial weights
    opt = SGD(member.parameters(), lr=c.get("lr", 0.05))
    for r in range(R):
        rows = torch.from_numpy(np.flatnonzero((shard == s) & (slice_ <= r)))
        if r >= start and stage_start is not None:
            tr.step = int(stage_start[r])
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


class Recorded:
    """What the run that made the model being unlearned recorded, to retrain shards of it from: every training
    record's shard and slice (its facts), its train input and its slice checkpoints."""

    def __init__(self, **kw):
        self.__dict__.update(kw)

    @classmethod
    def of(cls, req: TrainRequest, S: int, R: int) -> "Recorded | None":
        """None when that run's facts cannot drive the retrain (rows that are not records, facts that do not
        give every training record one shard and slice, another ensemble shape, another train input): the
        shards are then dealt again from the owners' keys."""
        import json

        from pyroaring import BitMap

        from expunge.lineage.facts import RunFacts
        from expunge.lineage.torch import recorded_sha256

        store = req.store
        path = Path(req.init_model)
        names = sorted({str(path), os.path.abspath(path), str(path.resolve())})
        sha = req.init_model_sha256 or recorded_sha256(store, path)
        with store.view() as view:
            got = view.execute(
                """SELECT r.run_id, r.facts_file, r.facts_index, r.n_shards, r.n_slices FROM models m
                   JOIN runs r USING (run_id) WHERE m.artifact_path IN (SELECT unnest(?::VARCHAR[])) AND m.sha256 = ?
                   ORDER BY m.model_id DESC LIMIT 1""", [names, sha]).fetchall()
            if not got or not got[0][1] or (got[0][3], got[0][4]) != (S, R):
                return None
            run_id, facts_file, facts_index = got[0][:3]
            inputs = view.execute("SELECT version_id FROM run_inputs WHERE run_id = ? AND role = 'train'",
                                  [run_id]).fetchall()
            if len(inputs) != 1:
                return None
            (vid,) = inputs[0]
            v = view.execute("""SELECT d.name || '@' || v.version_no, v.row_space, v.bitmap_file,
                                       v.record_dataset_id FROM dataset_versions v
                                JOIN datasets d USING (dataset_id) WHERE v.version_id = ?""", [vid]).fetchone()
            if v[1] != "records" or view.resolve_version(req.train_input["dataset"])["label"] != v[0]:
                return None
            ckpts = {(int(sh), int(sl)): (p, h) for sh, sl, p, h in view.execute(
                """SELECT shard, slice, path, sha256 FROM checkpoints WHERE run_id = ? AND shard IS NOT NULL
                   AND slice IS NOT NULL""", [run_id]).fetchall()}
            # The records this run trains on (before exclusions): the rows it was given (by id), or the version.
            rows = req.train_input.get("rows")
            whole = view.load_bitmap(v[2])
            sub = req.train_input.get("_subset_ords")
            if rows is None and sub is None:
                base, train = None, whole
            elif rows is None:  # the records it was given
                base = np.asarray(sub, np.uint32)
                train = BitMap(base)
                if not train.issubset(whole):
                    return None
            else:
                base = _ords_of_rows(store, view, v[3], whole, rows)
                if base is None:
                    return None
                train = BitMap(base)
        index = json.loads(facts_index)
        facts_path = store.data_path(facts_file)
        facts = RunFacts(facts_path, index)
        got = facts.assignment()
        if got is None or not train.issubset(facts.records):
            return None  # some training record has no recorded shard and slice
        ords, shard, slice_ = got
        if shard.size and (int(shard.max()) >= S or int(slice_.max()) >= R):
            return None
        return cls(version=v[0], base=base, train=train, ords=ords, shard=shard, slice=slice_, ckpts=ckpts,
                   facts_path=facts_path, facts_index=index, facts_records=facts.records)


def _ords_of_rows(store, view, record_dataset_id, whole, rows) -> np.ndarray | None:
    """The record ordinals of these row ids of a version whose rows are records (None: one is not in it, or
    is given twice)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from expunge.lineage.rows import record_ids

    whole_ords = np.frombuffer(whole.to_array(), np.uint32)
    ids = record_ids(store, view, record_dataset_id, whole_ords)
    pos = pc.index_in(pa.array([str(r) for r in rows], pa.string()), value_set=ids)
    if pos.null_count:
        return None
    ords = np.sort(whole_ords[pos.to_numpy(zero_copy_only=False)])
    if ords.size > 1 and (np.diff(ords) == 0).any():
        return None
    return ords


def _retrain(req: TrainRequest, model: SisaEnsemble, initial: list, starts: dict, cuts, rec: Recorded) -> dict:
    """Retrain the shards of `starts` with the recorded assignment: load only their rows (minus the excluded
    records); the rows that remain keep their recorded shard and slice (so a key rotation, which changes the
    owners' keys, moves no row). The new run records its train input as the rows it was given (or the version)
    minus the excluded records, its facts as the old run's without the records it does not train on, and,
    besides the retrained stages' checkpoints, the
    old run's checkpoints of the stages it did not retrain (they never saw the excluded records). Checkpoint
    steps count the whole ensemble's training as a full re-run on the remaining rows would."""
    from pyroaring import BitMap

    from expunge.lineage.facts import carried
    from expunge.lineage.torch import RecordDataset

    c = req.config
    S, R = int(c.get("shards", 8)), int(c.get("slices", 4))
    t0 = time.perf_counter()
    excluded = np.asarray(req.exclude_records, np.uint32)
    train = rec.train - BitMap(excluded)
    # Per recorded record: whether this run trains on it (given it, not excluded).
    remain = np.isin(rec.ords, np.frombuffer(train.to_array(), np.uint32), assume_unique=True)
    load = remain & np.isin(rec.shard, np.asarray(sorted(starts), np.int64))
    ds = RecordDataset(req.store, rec.version, c["features"], row_col=c.get("row_col", "record_id"),
                       feature_cols=c["feature_cols"], label_col=c["label_col"], records=rec.ords[load])
    at = np.searchsorted(rec.ords, ds.first_ords)
    shard, slice_ = rec.shard[at], rec.slice[at]
    # Optimizer steps of each stage (s, r) over the remaining rows, and the step at which each begins.
    counts = np.bincount(rec.shard[remain] * R + rec.slice[remain], minlength=S * R).reshape(S, R)
    batch, e_stage = int(c.get("batch_size", 64)), stage_epochs(c.get("epochs", 5), R)
    steps = e_stage * -(-counts.cumsum(axis=1) // batch)
    ends = steps.reshape(-1).cumsum().reshape(S, R)
    begins = ends - steps
    facts = carried(rec.facts_path, rec.facts_index, BitMap(rec.facts_records) - train)
    req.setup_seconds += time.perf_counter() - t0  # loading its shards' rows, reading the recorded facts
    train_input = {"dataset": rec.version, "role": "train"}
    if excluded.size or rec.base is not None:  # else the whole version
        train_input["_without_records"] = excluded
    if rec.base is not None:
        train_input["_base_records"] = rec.base
    others = [i for i in req.inputs if i.get("role", "train") != "train"]
    states = {s: _start_state(req, starts, s) for s in sorted(starts)}
    first = {s: 0 if st is None else int(st["slice"]) + 1 for s, st in states.items()}
    # Every excluded record the old run trained on must be in a stage retrained here: a member or checkpoint
    # kept as it was would still carry it, and the new run would record it as never trained on.
    gone = ~remain
    kept = gone & (rec.slice < np.array([first.get(int(k), R) for k in range(S)], np.int64)[rec.shard])
    if kept.any():
        k = int(rec.shard[np.flatnonzero(kept)[0]])
        raise BadInput(f"shard {k} trained on excluded records before the slice it is retrained from (or is not "
                       "retrained): retrain it from an earlier slice")
    with req.tracker(inputs=[train_input] + others, shards=S, slices=R,
                     extra={"setup_read_seconds": ds.read_seconds,
                            "shard_read_seconds": ds.load_seconds / max(len(states), 1)}).bind(ds) as tr:
        tr.carry_facts(*facts)
        for s in range(S):
            for r in range(min(first.get(s, R), R)):
                if (s, r) in rec.ckpts and Path(rec.ckpts[(s, r)][0]).is_file():
                    tr.carry_checkpoint(rec.ckpts[(s, r)][0], rec.ckpts[(s, r)][1], step=int(ends[s, r]),
                                        shard=s, slice=r)
        for s, state in states.items():
            _train_member(req, model.members[s], s, state, initial, ds, shard, slice_, tr, stage_start=begins[s])
            if first[s] < R and tr.step != int(ends[s, R - 1]):
                raise BadInput(f"shard {s}: {tr.step} optimizer steps where its rows make {int(ends[s, R - 1])}")
        tr.step = int(ends[-1, -1])
        tr.final_model(model, req.model_name, stage=req.stage, parents=req.parents, cuts=cuts)
    return tr.result
