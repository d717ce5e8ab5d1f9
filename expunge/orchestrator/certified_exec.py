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

from expunge.orchestrator.execute import ActionFailed, Context, Outcome, erased_rows


def certified_removal(ctx: Context, item: dict, info: dict) -> Outcome:
    import json

    import numpy as np
    import torch

    from expunge.lineage.torch import load_artifact
    from expunge.orchestrator import certified
    from expunge.orchestrator.rerun import recorded_request
    from expunge.orchestrator.trainers import TrainRequest, mlp

    run = info["run"]
    name = f"{run}.x{ctx.tag}"
    with ctx.store.read() as con:  # one lookup: this action's own run (done before a crash?) and the model's
        runs = {r[0]: r[1:] for r in con.execute(
            """SELECT r.name, (SELECT m.name || '@' || m.version_no FROM models m WHERE m.run_id = r.run_id
                               ORDER BY m.model_id LIMIT 1),
                      r.extra, r.wall_seconds, r.cpu_seconds, r.total_steps, r.setup_seconds, r.record_seconds
               FROM runs r WHERE r.name IN (?, ?)""", [name, run]).fetchall()}
    if name in runs and runs[name][0]:
        return Outcome(runs[name][0], {"adopted": True})
    t0 = time.perf_counter()
    rec = recorded_request(ctx.store, run, rows=False)
    _, extra, wall, cpu, total_steps, setup, record = runs[run]
    extra = json.loads(extra or "{}")
    cert = extra.get("certified_removal")
    if not cert or rec["model_family"] != "logreg-certified":
        raise ActionFailed(f"run {run} is not a certified logistic regression (no certificate, or another family)")
    spent = float(extra.get("removal_budget_spent", 0.0))
    if not info["path"]:
        raise ActionFailed(f"{item['model']}: no artifact recorded")
    state = load_artifact(info["path"], info["sha256"], store=ctx.store)  # hash-checked, weights only
    w = state["model"]["w"].double()
    saved = state.get("removal_state") or {}
    t_read = time.perf_counter()
    fast, rows_from = certified.find_removed_rows(ctx.store, rec, ctx.erased, extra) if "hessian" in saved \
        else (None, "training data")
    t_step = time.perf_counter()
    if fast is not None:
        # The weights carry the Hessian at themselves: one batch Newton step from the removed rows alone.
        new_w, used, new_state = certified.batch_removal(saved, w, cert["lam"], fast["x"], fast["y"])
        steps, how = fast["k"], "batch"
        timing = {"read_seconds": t_step - t_read, "step_seconds": time.perf_counter() - t_step}
    else:
        # One Newton step per erased row on the training data, which is read whole (from the chain's removal rows
        # file when it has one, else the features file); the result carries the Hessian at its own weights, so
        # that the next removal from it needs only the removed rows.
        got = None
        if extra.get("removal_rows"):
            try:
                got = certified.training_rows(ctx.store, rec, ctx.erased, extra["removal_rows"])
                x, y, remove, read = got["x"], got["y"], got["remove"], got["seconds"]
                rows_from = "removal rows file (the whole training data)"
            except certified.RowsFileUnusable as exc:
                rows_from = f"features file (the whole training data; the removal rows file " \
                            f"{extra['removal_rows']['file']}: {exc})"
        else:
            rows_from = "features file (the whole training data)"
        if got is None:
            with_rows = recorded_request(ctx.store, run, train_ords="always")
            full = mlp.dataset(TrainRequest(store=ctx.store, run_name=run, inputs=with_rows["inputs"],
                                            config=rec["config"], seed=rec["seed"], out_dir=Path("."),
                                            trainer=rec["trainer"], model_name=rec["model_name"]))
            remove = np.flatnonzero(erased_rows(ctx.store, full, ctx.erased)).tolist()
            x, y = certified.design(full)
            read = full.load_seconds
        new_w, bounds, new_state = certified.per_row_removal(x, y, w, cert["lam"], remove,
                                                             gram=certified.saved_gram(saved, len(y)))
        used, steps, how = float(sum(bounds)), len(remove), "per-row"
        timing = {"read_seconds": read, "step_seconds": time.perf_counter() - t_step - read}
    base = float(cert.get("train_grad_norm", 0.0))
    if base + spent + used > cert["removal_budget"]:
        raise ActionFailed(f"{item['model']}: removing {steps} row(s) needs {used:.3g} of the removal budget, "
                           f"{cert['removal_budget'] - spent - base:.3g} left: nothing was changed")
    t_record = time.perf_counter()
    out = ctx.out_dir(name)
    path = out / "model.pt"
    tmp = out / "model.pt.tmp"
    torch.save({"model": {"w": new_w.to(state["model"]["w"].dtype)}, "certificate": cert,
                "removed_rows": steps, "removal_budget_spent": spent + used, "removal_state": new_state}, tmp)
    tmp.replace(path)
    inputs = []
    listed = None  # other inputs over a row subset keep their rows as recorded
    for pos, i in enumerate(rec["inputs"]):
        if i.get("role", "train") != "train" and "_subset_ords" in i:
            listed = listed or recorded_request(ctx.store, run)
            i = listed["inputs"][pos]
        i = {k: v for k, v in i.items() if not k.startswith("_")}
        if i.get("role", "train") == "train":
            # Recorded from ordinals: the run's rows (its subset, or the version) minus the erased records.
            i.pop("rows", None)
            i["_without_records"] = np.asarray(ctx.erased, np.uint32)
            if rec_subset(rec) is not None:
                i["_base_records"] = rec_subset(rec)
        inputs.append(i)
    recorded = ctx.store.record_run({
        "run": {"name": name, "trainer": rec["trainer"], "config": rec["config"], "inputs": inputs,
                **{k: rec[k] for k in ("seed", "code_version", "model_family") if rec.get(k) is not None},
                # For planning it is still a model that cost the original run to train.
                "cost": {"wall_seconds": wall or 0.0, "cpu_seconds": cpu or 0.0,
                         **({"setup_seconds": setup} if setup else {}),
                         **({"record_seconds": record} if record else {})},
                **({"total_steps": total_steps} if total_steps is not None else {}),
                # The removal rows file stays the chain's (the original run's): it still holds the removed rows
                # (a residual copy of the request, purged with the replaced version's files), which later
                # removals from this version never read (only its own train records' rows).
                "extra": {**extra, "removal_budget_spent": spent + used,
                          "certified_removal": {k: v for k, v in cert.items()
                                                if k not in ("n", "hessian_min_eig", "x_spectral_sq", "w_norm")},
                          "removed_by": {"plan": ctx.plan["id"], "newton_steps": steps, "how": how,
                                         "bound": used}}},
        "models": [{"name": info["name"], "path": str(path), "stage": "dev", "parents": rec["parents"]}]})
    timing["record_seconds"] = time.perf_counter() - t_record  # saving the weights, recording the new version
    ctx.trainer_seconds += sum(timing.values())  # finding the rows, the step, recording: what its estimate prices
    return Outcome(recorded["models"][0]["id"],
                   {"newton_steps": steps, "how": how, "rows_from": rows_from, "budget_used": used, "budget_left":
                    cert["removal_budget"] - base - spent - used, "seconds": time.perf_counter() - t0, **timing})


def rec_subset(rec: dict):
    """The record ordinals of the run's train subset (None: the whole version)."""
    train = [i for i in rec["inputs"] if i.get("role", "train") == "train"]
    return train[0].get("_subset_ords") if len(train) == 1 else None
