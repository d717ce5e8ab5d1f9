"""Re-running a recorded run through its trainer entry point (the trainer contract).

The new run gets the recorded config, seed and inputs, minus the excluded records,
optionally starting from a checkpoint or a model's weights, and is recorded as a run
of its own (so its lineage, manifest and model version are in the store).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from expunge.errors import BadInput
from expunge.lineage.store import Store
from expunge.orchestrator.trainers import TrainRequest, allowed_prefixes, load_trainer


def recorded_request(store: Store, run: str, *, need_trainer: bool = True, rows: bool = True,
                     train_ords: str = "never") -> dict:
    """What a run recorded: trainer, config, seed, inputs (with row subsets), and its model version.
    Refused for a run with no trainer entry point unless `need_trainer` is False. With `rows=False` an input
    over a subset carries `_subset_ords` (the records, as stored; for a records version, its rows) and
    `_row_space` instead of its row ids. With `train_ords` "always" (or "builtin": when the run's trainer is
    expunge's own), a train input over a subset of a version whose rows are records carries `_subset_ords`
    instead of its row ids, which expunge's trainers read as they are (a run that excluded a few records of
    200k does not name the rest again)."""
    from expunge.lineage.rows import record_ids
    from expunge.orchestrator.trainers import BUILTIN_PREFIX

    with store.view() as view:
        row = view.execute(
            """SELECT run_id, trainer, config, seed, code_version, model_family FROM runs WHERE name = ?""", [run]
        ).fetchall()
        if not row:
            raise BadInput(f"unknown run {run!r}")
        run_id, trainer, config, seed, code_version, family = row[0]
        if not trainer and need_trainer:
            raise BadInput(f"run {run!r} recorded no trainer entry point; it cannot be re-run")
        ords_ok = train_ords == "always" or (train_ords == "builtin" and (trainer or "").startswith(BUILTIN_PREFIX + "."))
        inputs = []
        for vid, role, subset, n_rows in view.execute(
            """SELECT version_id, role, subset_file, n_rows FROM run_inputs WHERE run_id = ? ORDER BY position""",
            [run_id]
        ).fetchall():
            label, space, rec_ds = view.execute(
                """SELECT d.name || '@' || v.version_no, v.row_space, v.record_dataset_id
                   FROM dataset_versions v JOIN datasets d USING (dataset_id) WHERE v.version_id = ?""", [vid]
            ).fetchall()[0]
            entry: dict = {"dataset": label, "role": role}
            if not rows:
                entry["_row_space"] = space
            if subset is not None:
                ords = np.frombuffer(view.load_bitmap(subset).to_array(), np.uint32)
                if not rows or (ords_ok and role == "train" and space == "records"):
                    entry["_subset_ords"] = ords
                elif space == "records":
                    entry["rows"] = record_ids(store, view, rec_ds, ords).to_pylist()
                else:
                    entry["rows"] = _composed_rows(store, run, label, ords, n_rows)
            inputs.append(entry)
        models = view.execute(
            """SELECT m.name, m.stage, m.model_id FROM models m WHERE m.run_id = ? ORDER BY m.model_id""", [run_id]
        ).fetchall()
        parents = []
        if models:
            parents = [
                {"model": f"{n}@{v}", "relation": rel}
                for n, v, rel in view.execute(
                    """SELECT pm.name, pm.version_no, p.relation FROM model_parents p
                       JOIN models pm ON pm.model_id = p.parent_model_id WHERE p.model_id = ?""", [models[0][2]]
                ).fetchall()
            ]
    return {
        "trainer": trainer, "config": json.loads(config) if config else {}, "seed": seed or 0,
        "code_version": code_version, "model_family": family, "inputs": inputs,
        "model_name": models[0][0] if models else run, "stage": models[0][1] if models else "dev",
        "parents": parents,
    }


def _composed_rows(store: Store, run: str, label: str, ords: np.ndarray, n_rows: int) -> list[str]:
    """The rows of a composed (join/aggregate/augment) version that a run's subset used: the store keeps the
    subset as the records those rows were built from, so take the rows built only from those records; refused
    when that is not exactly as many rows as the run recorded (rows sharing records make it ambiguous)."""
    from expunge.lineage.rows import version_rows

    vr = version_rows(store, label)
    outside = np.setdiff1d(vr.ords, ords)
    rows = [r for r, k in zip(vr.row_ids.to_pylist(), vr.keep_mask(outside)) if k]
    if len(rows) != n_rows:
        raise BadInput(f"run {run!r} used {n_rows} rows of the composed dataset {label}, which the store keeps as "
                       f"the records they were built from; those records make {len(rows)} rows, so the run's rows "
                       "cannot be told apart and it cannot be re-run")
    return rows


def rerun(store: Store, run: str, *, new_name: str, out_dir: str | Path,
          exclude_subjects: Sequence[str] = (), exclude_records: np.ndarray | None = None,
          start_checkpoint: str | Path | None = None, init_model: str | Path | None = None,
          shard: int | None = None, shard_checkpoints: dict | None = None, stage: str | None = None,
          parents: list[dict] | None = None, config: dict | None = None, policy=None,
          recorded: dict | None = None) -> dict:
    """Call the run's trainer again; returns the new run's `record_run` result. `parents` and `config`
    replace the recorded ones (a model re-derived from its parent's new version).

    The trainer is imported only if its module is expunge's own or under a prefix that `policy` (default:
    the store's) or the store allows (`trainers.load_trainer`); that is checked first of all.

    `start_checkpoint` and `init_model` must be files the store recorded (a checkpoint or a model version):
    the trainer gets the sha256 recorded for each and loads it only if the file still has it (so do the
    SISA shard checkpoints of `shard_checkpoints`).
    """
    from expunge.lineage.torch import recorded_sha256
    from expunge.orchestrator.policy import store_policy

    # `recorded`: the caller's `recorded_request(store, run, train_ords="builtin")`, read once.
    rec = recorded if recorded is not None else recorded_request(store, run, train_ords="builtin")
    train = load_trainer(rec["trainer"], allowed_prefixes(store, policy or store_policy(store)))
    if parents is not None:
        rec["parents"] = parents
    if config is not None:
        rec["config"] = config
    excluded = np.zeros(0, np.uint32) if exclude_records is None else np.asarray(exclude_records, np.uint32)
    if exclude_subjects:
        excluded = np.union1d(excluded, store.records_of_subjects(exclude_subjects)).astype(np.uint32)
    if excluded.size:
        rec["inputs"] = [i if i.get("role", "train") == "train" else _without(store, i, excluded)
                         for i in rec["inputs"]]
    req = TrainRequest(
        store=store, run_name=new_name, inputs=rec["inputs"], config=rec["config"], seed=rec["seed"],
        out_dir=Path(out_dir), trainer=rec["trainer"], model_name=rec["model_name"],
        stage=stage or rec["stage"], parents=rec["parents"], exclude_records=excluded,
        start_checkpoint=Path(start_checkpoint) if start_checkpoint else None,
        init_model=Path(init_model) if init_model else None, shard=shard, shard_checkpoints=shard_checkpoints,
        start_checkpoint_sha256=recorded_sha256(store, start_checkpoint) if start_checkpoint else None,
        init_model_sha256=recorded_sha256(store, init_model) if init_model else None,
        code_version=rec["code_version"], model_family=rec["model_family"],
    )
    return train(req)


def _without(store: Store, inp: dict, excluded: np.ndarray) -> dict:
    """A validation or evaluation input minus the rows built from excluded records: the erased data is not
    used for anything, not even to measure (trainers exclude them from their train input themselves)."""
    from expunge.lineage.rows import version_rows

    vr = version_rows(store, inp["dataset"])
    keep = vr.keep_mask(excluded)
    if keep.all():
        return inp
    ids = vr.row_ids.to_pylist()
    wanted = set(str(r) for r in inp["rows"]) if inp.get("rows") is not None else None
    rows = [r for r, k in zip(ids, keep) if k and (wanted is None or r in wanted)]
    return {**inp, "rows": rows}
