"""Models derived from other models: fine-tuning and distillation, recorded with their parent.

Both record the parent model version and the relation, so a model derived from an affected
model shows up in impact queries (and in plans) even when its own data never held the records.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from expunge.errors import BadInput
from expunge.orchestrator.sgd import SGD
from expunge.orchestrator.trainers import TrainRequest
from expunge.orchestrator.trainers import mlp

DISTILL = "expunge.orchestrator.trainers.derived:distill"


def model_record(store, ref: str) -> dict:
    """A model version's artifact, and the trainer and config of the run that produced it."""
    with store.view() as view:
        m = view.resolve_model(ref)
        row = view.execute(
            """SELECT m.artifact_path, r.trainer, r.config, m.sha256 FROM models m LEFT JOIN runs r USING (run_id)
               WHERE m.model_id = ?""", [m["model_id"]]
        ).fetchall()[0]
    return {"id": m["label"], "path": row[0], "trainer": row[1], "config": json.loads(row[2]) if row[2] else {},
            "sha256": row[3]}


def load_model(store, ref: str) -> nn.Module:
    """Load a model version trained by one of the reference trainers (its file checked against the recorded
    sha256 first)."""
    from expunge.lineage.torch import load_artifact

    rec = model_record(store, ref)
    if not rec["path"] or not Path(rec["path"]).exists():
        raise BadInput(f"model {rec['id']}: artifact {rec['path']} is not available")
    c = rec["config"]
    if rec["trainer"] == "expunge.orchestrator.trainers.sisa:train":
        from expunge.orchestrator.trainers import sisa

        return sisa.load(rec["path"], c, sha256=rec["sha256"], store=store)
    if rec["trainer"] in (mlp.ENTRY_POINT, DISTILL):
        model = mlp.build(len(c["feature_cols"]), c.get("hidden", 32), c.get("classes", 2))
        model.load_state_dict(load_artifact(rec["path"], rec["sha256"], store=store)["model"])
        return model
    raise BadInput(f"model {rec['id']} was trained by {rec['trainer']!r}, which expunge cannot load")


def finetune(store, parent: str, *, run_name: str, dataset: str, config: dict, seed: int, out_dir, model_name: str,
             stage: str = "dev", rows=None) -> dict:
    """Fine-tune an MLP model version on `dataset` (optionally a row subset); records relation fine-tune."""
    rec = model_record(store, parent)
    if rec["trainer"] not in (mlp.ENTRY_POINT, DISTILL):
        raise BadInput(f"fine-tuning needs an MLP parent; {rec['id']} was trained by {rec['trainer']!r}")
    inp = {"dataset": dataset, "role": "train"}
    if rows is not None:
        inp["rows"] = list(rows)
    cfg = {**rec["config"], **config}
    req = TrainRequest(store=store, run_name=run_name, inputs=[inp], config=cfg, seed=seed, out_dir=Path(out_dir),
                       trainer=mlp.ENTRY_POINT, model_name=model_name, stage=stage,
                       parents=[{"model": rec["id"], "relation": "fine-tune"}], init_model=Path(rec["path"]),
                       init_model_sha256=rec["sha256"], model_family="mlp")
    return mlp.train(req)


def distill(req: TrainRequest) -> dict:
    """Train a student MLP on a teacher's probabilities (config: teacher = model version, temperature)."""
    c = req.config
    teacher = load_model(req.store, c["teacher"]).eval()
    torch.manual_seed(req.seed)
    ds = mlp.dataset(req)
    student = mlp.build(len(c["feature_cols"]), c.get("hidden", 32), c.get("classes", 2))
    t = float(c.get("temperature", 2.0))
    with torch.no_grad():
        out = teacher(ds.x)
        # SISA ensembles return probabilities, MLPs logits.
        soft = out if torch.allclose(out.sum(-1), torch.ones(len(out))) else torch.softmax(out / t, -1)
    opt = SGD(student.parameters(), lr=c.get("lr", 0.05))
    gen = req.generator()
    others = [i for i in req.inputs if i.get("role", "train") != "train"]
    parents = req.parents or [{"model": model_record(req.store, c["teacher"])["id"], "relation": "distill"}]
    with req.tracker(inputs=[req.input_manifest(ds)] + others).bind(ds) as tr:
        for epoch in range(c.get("epochs", 5)):
            for idx in torch.randperm(len(ds), generator=gen).split(c.get("batch_size", 64)):
                tr.consumed(idx)
                opt.zero_grad()
                logp = torch.log_softmax(student(ds.x[idx]) / t, -1)
                nn.functional.kl_div(logp, soft[idx], reduction="batchmean").backward()
                opt.step()
            tr.checkpoint(student, tag=f"epoch{epoch + 1}", epoch=epoch + 1)
        tr.final_model(student, req.model_name, stage=req.stage, parents=parents, epoch=c.get("epochs", 5))
    return tr.result
