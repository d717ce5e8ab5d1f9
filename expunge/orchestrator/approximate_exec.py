"""Executing approximate unlearning: NegGrad+ or SCRUB (the policy's `approximate.method`) on a model version.

The forget set is the run's training rows built from the erased records; the retain set a seeded sample of
the others (`approximate.retain_sample`, what the planner priced). The result is a new model version derived
from the old one (relation fine-tune: by lineage it still descends from a model that saw the records), with
a run that records the method, its report and the rows used. It is not promoted: it stays pending until it
passes the policy's membership-inference and accuracy check.
"""

from __future__ import annotations

import time
from pathlib import Path

from expunge.orchestrator.execute import ActionFailed, Context, Outcome, erased_rows, model_of_run


def load_classifier(info: dict, config: dict, family: str | None):
    """The model version's torch module, after checking its artifact against the recorded sha256."""
    from expunge.lineage.torch import load_artifact
    from expunge.orchestrator.trainers import mlp, sisa

    if not info["path"]:
        raise ActionFailed(f"{info['id']}: no artifact recorded")
    state = load_artifact(info["path"], info["sha256"])  # hash-checked, weights only
    if family == "sisa-mlp":
        model = sisa.build(config)
    else:
        model = mlp.build(len(config["feature_cols"]), config.get("hidden", 32), config.get("classes", 2))
    model.load_state_dict(state["model"])
    return model, state


def approximate_unlearning(ctx: Context, item: dict, info: dict) -> Outcome:
    import torch

    from expunge.orchestrator import approximate
    from expunge.orchestrator.policy import pinned
    from expunge.orchestrator.rerun import recorded_request
    from expunge.orchestrator.trainers import TrainRequest, mlp

    run = info["run"]
    name = f"{run}.x{ctx.tag}"
    done = model_of_run(ctx.store, name)
    if done:
        return Outcome(done, {"adopted": True}, pending_check=True)
    method = pinned(ctx.store, ctx.plan["policy"]["sha256"]).approximate_method
    rec = recorded_request(ctx.store, run, train_ords="always")
    model, state = load_classifier(info, rec["config"], rec["model_family"])
    req = TrainRequest(store=ctx.store, run_name=run, inputs=rec["inputs"], config=rec["config"], seed=rec["seed"],
                       out_dir=Path("."), trainer=rec["trainer"], model_name=rec["model_name"])
    t0 = time.perf_counter()
    ds = mlp.dataset(req)
    is_forget = torch.from_numpy(erased_rows(ctx.store, ds, ctx.erased))
    forget_idx = torch.nonzero(is_forget).flatten()
    other_idx = torch.nonzero(~is_forget).flatten()
    if forget_idx.numel() == 0:
        raise ActionFailed(f"{item['model']}: none of its training rows holds the erased records")
    gen = torch.Generator().manual_seed(int(rec["seed"] or 0))
    retain_idx = other_idx[approximate.retain_sample(len(other_idx), len(forget_idx), gen)]
    target = approximate.EnsembleLogits(model) if rec["model_family"] == "sisa-mlp" else model
    forget, retain = (ds.x[forget_idx], ds.y[forget_idx]), (ds.x[retain_idx], ds.y[retain_idx])
    if method == "neggrad+":
        report = approximate.neggrad_plus(target, forget, retain, generator=gen)
    else:
        report = approximate.scrub(target, forget, retain, generator=gen)
    out = ctx.out_dir(name)
    path, tmp = out / "model.pt", out / "model.pt.tmp"
    torch.save({**{k: v for k, v in state.items() if k != "model"}, "model": model.state_dict(),
                "unlearned": {"method": method, "forget_rows": len(forget_idx)}}, tmp)
    tmp.replace(path)
    train = next(i for i in rec["inputs"] if i.get("role", "train") == "train")
    ctx.store.record_run({
        "run": {"name": name, "config": {"method": method, "of_run": run},
                "inputs": [{"dataset": train["dataset"], "role": "train",
                            "rows": [ds.row_ids[i] for i in retain_idx.tolist()]}],
                **{k: rec[k] for k in ("seed", "code_version", "model_family") if rec.get(k) is not None},
                "cost": {"wall_seconds": time.perf_counter() - t0},
                "extra": {"approximate_unlearning": {"method": method, "plan": ctx.plan["id"],
                                                     "forget_rows": len(forget_idx),
                                                     "retain_rows": len(retain_idx),
                                                     "report": {k: v for k, v in report.items()
                                                                if isinstance(v, (int, float, str))}}}},
        "models": [{"name": info["name"], "path": str(path), "stage": "dev",
                    "parents": [{"model": info["id"], "relation": "fine-tune"}]}]})
    return Outcome(model_of_run(ctx.store, name), {"method": method, "forget_rows": len(forget_idx),
                                                   "retain_rows": len(retain_idx)}, pending_check=True)
