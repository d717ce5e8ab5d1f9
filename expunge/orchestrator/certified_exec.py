"""Executing certified removal: Newton steps on the certified logistic regression (Guo et al., ICML 2020).

One Newton step per erased training row, in the run's row order (the order the plan priced); the steps'
data-dependent gradient-residual bounds (their Corollary 1) are added to the budget already spent and must
stay within the removal budget the run recorded, else nothing changes. The new model version is recorded
with a run of its own: the inputs minus the erased rows, the certificate, and the budget now spent, so it
can be unlearned again.
"""

from __future__ import annotations

import time
from pathlib import Path

from expunge.orchestrator.execute import ActionFailed, Context, Outcome, erased_rows, model_of_run


def certified_removal(ctx: Context, item: dict, info: dict) -> Outcome:
    import json

    import numpy as np
    import torch

    from expunge.lineage.torch import load_artifact
    from expunge.orchestrator.rerun import recorded_request
    from expunge.orchestrator.trainers import TrainRequest, logreg_certified as lc, mlp

    run = info["run"]
    name = f"{run}.x{ctx.tag}"
    done = model_of_run(ctx.store, name)
    if done:
        return Outcome(done, {"adopted": True})
    t0 = time.perf_counter()
    rec = recorded_request(ctx.store, run)
    with ctx.store.read() as con:
        extra, wall, cpu, total_steps, setup, record = con.execute(
            "SELECT extra, wall_seconds, cpu_seconds, total_steps, setup_seconds, record_seconds FROM runs "
            "WHERE name = ?", [run]).fetchone()
    extra = json.loads(extra or "{}")
    cert = extra.get("certified_removal")
    if not cert or rec["model_family"] != "logreg-certified":
        raise ActionFailed(f"run {run} is not a certified logistic regression (no certificate, or another family)")
    spent = float(extra.get("removal_budget_spent", 0.0))
    req = TrainRequest(store=ctx.store, run_name=run, inputs=rec["inputs"], config=rec["config"], seed=rec["seed"],
                       out_dir=Path("."), trainer=rec["trainer"], model_name=rec["model_name"])
    full = mlp.dataset(req)  # loaded once: the rows to remove are those built from an erased record
    mask = erased_rows(ctx.store, full, ctx.erased)
    remove = np.flatnonzero(mask).tolist()
    kept_ids = [rid for rid, m in zip(full.row_ids, mask) if not m]
    if not info["path"]:
        raise ActionFailed(f"{item['model']}: no artifact recorded")
    state = load_artifact(info["path"], info["sha256"], store=ctx.store)  # hash-checked, weights only
    x, y = lc.design(full)
    w = state["model"]["w"].double()
    new_w, bounds = lc.newton_removal(x, y, w, cert["lam"], remove)
    used = float(sum(bounds))
    base = float(cert.get("train_grad_norm", 0.0))
    if base + spent + used > cert["removal_budget"]:
        raise ActionFailed(f"{item['model']}: removing {len(remove)} row(s) needs {used:.3g} of the removal budget, "
                           f"{cert['removal_budget'] - spent - base:.3g} left: nothing was changed")
    out = ctx.out_dir(name)
    path = out / "model.pt"
    tmp = out / "model.pt.tmp"
    torch.save({"model": {"w": new_w.to(state["model"]["w"].dtype)}, "certificate": cert,
                "removed_rows": len(remove), "removal_budget_spent": spent + used}, tmp)
    tmp.replace(path)
    inputs = [dict(i) for i in rec["inputs"]]
    for i in inputs:
        if i.get("role", "train") == "train":
            i["rows"] = kept_ids
            i["_without_records"] = np.asarray(ctx.erased, np.uint32)  # recorded from ordinals, not 200k ids
    ctx.store.record_run({
        "run": {"name": name, "trainer": rec["trainer"], "config": rec["config"], "inputs": inputs,
                **{k: rec[k] for k in ("seed", "code_version", "model_family") if rec.get(k) is not None},
                # For planning it is still a model that cost the original run to train.
                "cost": {"wall_seconds": wall or 0.0, "cpu_seconds": cpu or 0.0,
                         **({"setup_seconds": setup} if setup else {}),
                         **({"record_seconds": record} if record else {})},
                **({"total_steps": total_steps} if total_steps is not None else {}),
                "extra": {**extra, "removal_budget_spent": spent + used,
                          "certified_removal": {k: v for k, v in cert.items()
                                                if k not in ("n", "hessian_min_eig", "x_spectral_sq", "w_norm")},
                          "removed_by": {"plan": ctx.plan["id"], "newton_steps": len(remove), "bound": used}}},
        "models": [{"name": info["name"], "path": str(path), "stage": "dev", "parents": rec["parents"]}]})
    return Outcome(model_of_run(ctx.store, name),
                   {"newton_steps": len(remove), "budget_used": used, "budget_left":
                    cert["removal_budget"] - base - spent - used, "seconds": time.perf_counter() - t0})
