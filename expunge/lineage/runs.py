"""Capturing training runs and model versions, from a manifest or a `with` block.

A run records what it consumed (dataset versions, role, optional row subset),
how to run it again (trainer entry point, config, seed, code version), what it
cost, and the facts cheap unlearning needs later: each training record's shard
and slice, the step at which it was first consumed, and the checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from expunge import audit
from expunge.errors import BadInput, SchemaError, UnknownReference
from expunge.lineage import catalog as C
from expunge.lineage.store import Store, Txn, _now, check_name, split_ref

SCHEMA_NAME = "run_manifest.schema.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _shrink(value: Any, where: str) -> Any:
    """The manifest with its long id lists ("rows", facts columns) checked here and cut to one element for
    jsonschema, which validates ~100k items a second: a re-run of 200k rows spent 2.4 s in it."""
    if isinstance(value, dict):  # keys starting with "_" are the Python API's, never from a manifest file
        return {k: _shrink(v, f"{where}/{k}") for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list) and len(value) > 64:
        kinds = {type(v) for v in value}
        # Only plain ids: strings and non-negative ints (facts columns allow null too); anything else (a
        # bool, a float, a negative step) is left whole for jsonschema to report.
        plain = (kinds <= {str, int} or kinds <= {int, type(None)}) and \
            all(0 <= v < 2**31 for v in value if type(v) is int)  # larger ones: for the schema's maxima
        if plain:
            return value[:1] + value[-1:]
    if isinstance(value, list):
        return [_shrink(v, f"{where}/{i}") for i, v in enumerate(value)]
    return value


def validate_manifest(manifest: Any) -> None:
    import jsonschema

    from expunge.schemas import load_schema

    manifest = _shrink(manifest, "")
    schema = load_schema(SCHEMA_NAME)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(manifest), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.path) or "(top level)"
        raise SchemaError(f"run manifest fails its schema at {where}: {e.message}")


def _read_rows_file(path: Path, column: str = "row_id") -> list[str]:
    from expunge.lineage.tables import id_column, read_table, require_columns

    t = read_table(path, [column])
    require_columns(t, [column], f"rows file {path}")
    return id_column(t, column, f"rows file {path}").to_pylist()


def _facts_table(run: dict, base: Path):
    """The per-row facts of a run as a pyarrow table (row_id, shard, slice, first_step), or None."""
    import pyarrow as pa

    from expunge.lineage.tables import read_table, require_columns

    if "facts_file" in run:
        path = base / run["facts_file"]
        cols = ["row_id", "shard", "slice", "first_step"]
        t = read_table(path, ["row_id"])
        require_columns(t, ["row_id"], f"facts file {path}")
        out = {"row_id": t.column("row_id")}
        for c in cols[1:]:
            out[c] = t.column(c) if c in t.column_names else pa.nulls(t.num_rows, pa.int64())
        return pa.table(out)
    facts = run.get("facts")
    if not facts:
        return None
    rows = facts["rows"]
    n = len(rows)
    out = {"row_id": pa.array([str(r) for r in rows], pa.string())}
    for c in ("shard", "slice", "first_step"):
        vals = facts.get(c)
        if vals is not None and len(vals) != n:
            raise BadInput(f"run facts: {c!r} has {len(vals)} values for {n} rows")
        out[c] = pa.array(vals if vals is not None else [None] * n, pa.int64())
    return pa.table(out)


def _int_column(table, name: str) -> np.ndarray:
    """A facts column as int64 (null: -1), refused unless it holds whole numbers that fit the catalog."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table.column(name).combine_chunks()
    if not (pa.types.is_integer(col.type) or pa.types.is_null(col.type)):
        raise BadInput(f"run facts: column {name!r} has type {col.type}; expected whole numbers")
    limit = 2**63 - 1 if name == "first_step" else 2**31 - 2  # shards = max shard + 1: an INTEGER column
    if len(col) and pc.max(col).as_py() is not None and pc.max(col).as_py() > limit:
        raise BadInput(f"run facts: column {name!r} holds a value over {limit}")
    return pc.fill_null(col.cast("int64"), -1).to_numpy(zero_copy_only=False)


def record_run(store: Store, manifest: dict, *, base_dir: Path) -> dict:
    return record_runs(store, [manifest], base_dir=base_dir)[0]


def record_runs(store: Store, manifests: Sequence[dict], *, base_dir: Path, facts_tables: Sequence = (),
                measure_record: bool = False) -> list[dict]:
    """Record several manifests in one write: all of them, or (on any error) none.

    `facts_tables` (Python API only) gives a run's facts as an Arrow table (row_id, shard, slice,
    first_step) instead of JSON lists in the manifest.
    """
    prepared = []
    for i, manifest in enumerate(manifests):
        validate_manifest(manifest)
        run = manifest.get("run")
        given = facts_tables[i] if i < len(facts_tables) else None
        if given is not None and run is not None and ("facts" in run or "facts_file" in run):
            raise BadInput("give a run's facts once: in the manifest or as a table")
        facts = given if given is not None else (_facts_table(run, base_dir) if run else None)
        prepared.append((run, manifest.get("models", []), facts))
    results = []
    with store.write() as txn:
        for run, models, facts in prepared:
            out: dict = {"run": None, "models": []}
            run_id = None
            if run is not None:
                run_id, out["run"] = _insert_run(txn, run, facts, base_dir, measure_record)
            for i, m in enumerate(models):
                try:
                    out["models"].append(_insert_model(txn, m, run_id, base_dir))
                except UnknownReference:
                    # Parents resolve against the store and the models listed before this one; a parent
                    # named later in the manifest is either a cycle or listed in the wrong order.
                    _check_model_cycles(models)
                    later = {x["name"] for x in models[i:]}
                    for p in m.get("parents", []):
                        if split_ref(p["model"])[0] in later:
                            raise BadInput(f"model {m['name']!r}: parent {p['model']!r} is defined later in the "
                                           "manifest; list parents before the models derived from them") from None
                    raise
            results.append(out)
    return results


def _check_model_cycles(models: Sequence[dict]) -> None:
    import networkx as nx

    g = nx.DiGraph()
    names = {m["name"] for m in models}
    for m in models:
        g.add_node(m["name"])
        for p in m.get("parents", []):
            pname = split_ref(p["model"])[0]
            if pname in names and pname != m["name"]:
                g.add_edge(pname, m["name"])
    try:
        cycle = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        return
    path = " → ".join([a for a, _ in cycle] + [cycle[0][0]])
    raise BadInput(f"model derivation cycle in the manifest: {path}")


def _ts(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).replace(tzinfo=None)
    except ValueError:
        raise BadInput(f"invalid timestamp {value!r}") from None


def _insert_run(txn: Txn, run: dict, facts, base: Path, measure_record: bool = False) -> tuple[int, dict]:
    from pyroaring import BitMap

    t_record = time.perf_counter()
    from expunge.lineage.ingest import resolve_rows

    name = run.get("name") or f"run-{txn.next_id('runs', 'run_id'):06d}"
    check_name(name, "run")
    if txn.one("SELECT 1 FROM runs WHERE name = ?", [name]):
        raise BadInput(f"run {name!r} is already recorded")
    run_id = txn.next_id("runs", "run_id")
    inputs = run.get("inputs", [])
    train_sets: list[tuple[dict, Any]] = []
    input_rows = []
    for pos, inp in enumerate(inputs):
        import pyarrow as pa

        pv = txn.resolve_version(inp["dataset"])
        role = inp.get("role", "train")
        subset_file = None
        n_rows, bm = pv["n_rows"], None
        rows = inp.get("rows")
        if "rows_file" in inp:
            rows = _read_rows_file(base / inp["rows_file"])
        without = inp.get("_without_records")
        if isinstance(without, np.ndarray) and pv["row_space"] == "records":
            base_records = inp.get("_base_records")  # a subset of the version the records are removed from
            whole = txn.load_bitmap(pv["bitmap_file"])
            if isinstance(base_records, np.ndarray):
                base_bm = BitMap(base_records.astype(np.uint32))
                if not base_bm.issubset(whole):
                    raise BadInput(f"run {name!r}: input {pv['label']}: the base subset is not in the version")
                whole = base_bm
            bm = whole - BitMap(without.astype(np.uint32))
            subset_file = txn.save_bitmap(bm)
            n_rows = len(bm)
            if rows is not None and len(rows) != n_rows:
                raise BadInput(f"run {name!r}: input {pv['label']} lists {len(rows)} rows, not the "
                               f"{n_rows} of the version without the excluded records")
        elif rows is not None:
            ids = pa.array([str(r) for r in rows], pa.string())
            if len(set(ids.to_pylist())) != len(ids):
                raise BadInput(f"run {name!r}: input {pv['label']} lists a row twice")
            _, ords = resolve_rows(txn, pv, ids, f"run {name!r} input {pv['label']}")
            bm = BitMap(ords)
            subset_file = txn.save_bitmap(bm)
            n_rows = len(ids)
        else:
            bm = txn.load_bitmap(pv["bitmap_file"])
        if role == "train":
            train_sets.append((pv, bm))
        input_rows.append([run_id, pos, pv["version_id"], role, subset_file, n_rows, len(bm)])

    facts_file = index = None
    n_shards, n_slices = run.get("shards"), run.get("slices")
    total_steps = run.get("total_steps")
    if total_steps is not None:
        late = [int(c["step"]) for c in run.get("checkpoints", []) if int(c["step"]) > total_steps]
        if late:
            raise BadInput(f"run {name!r}: a checkpoint at step {max(late)} is beyond the run's {total_steps} "
                           "optimizer steps")
    encoded = run.get("_facts_encoded")  # (file bytes, code table): facts carried from an earlier run's file
    if encoded is not None:
        if facts is not None and facts.num_rows:
            raise BadInput(f"run {name!r}: give its facts once: carried or as rows")
        facts_file, index = _carried_facts(txn, name, run, encoded, train_sets, n_shards, n_slices)
    elif facts is not None and facts.num_rows:
        if not train_sets:
            raise BadInput(f"run {name!r}: facts need a train input to refer to")
        target = run.get("facts_dataset")
        if target:
            match = [t for t in train_sets if t[0]["label"] == txn.resolve_version(target)["label"]]
            if not match:
                raise BadInput(f"run {name!r}: facts_dataset {target!r} is not a train input")
            pv, train_bm = match[0]
        elif len(train_sets) > 1:
            raise BadInput(f"run {name!r}: several train inputs; say which one the facts refer to (facts_dataset)")
        else:
            pv, train_bm = train_sets[0]
        from expunge.lineage.tables import first_duplicate, id_column

        ids = id_column(facts, "row_id", f"run {name!r} facts")
        dup = first_duplicate(ids)
        if dup is not None:
            raise BadInput(f"run {name!r} facts: row {dup} repeats an earlier row's row_id")
        rpos, ords = resolve_rows(txn, pv, ids, f"run {name!r} facts")
        if not BitMap(ords).issubset(train_bm):
            raise BadInput(f"run {name!r} facts: some rows are outside the run's training subset")
        shard = _int_column(facts, "shard")[rpos]
        slice_ = _int_column(facts, "slice")[rpos]
        first = _int_column(facts, "first_step")[rpos]
        if (shard < -1).any() or (slice_ < -1).any() or (first < -1).any():
            raise BadInput(f"run {name!r} facts: shard, slice and first_step must be ≥ 0")
        if total_steps is not None and (first >= total_steps).any():
            raise BadInput(f"run {name!r} facts: a first_step of {int(first.max())} is beyond the run's "
                           f"{total_steps} optimizer steps (steps are 0-based: at most {total_steps - 1})")
        if n_shards is None and (shard >= 0).any():
            n_shards = int(shard.max()) + 1
        if n_slices is None and (slice_ >= 0).any():
            n_slices = int(slice_.max()) + 1
        if n_shards is not None and (shard >= n_shards).any():
            raise BadInput(f"run {name!r} facts: shard ≥ shards ({n_shards})")
        if n_slices is not None and (slice_ >= n_slices).any():
            raise BadInput(f"run {name!r} facts: slice ≥ slices ({n_slices})")
        from expunge.lineage.facts import clean_counts, encode

        ckpt_steps = sorted(
            {int(c["step"]) for c in run.get("checkpoints", []) if c.get("shard") is None and "step" in c}
        )
        data, index = encode(ords, shard, slice_, clean_counts(first, ckpt_steps))
        index["clean_steps"] = ckpt_steps
        facts_file = txn.write_bytes(".facts", data)

    cost = dict(run.get("cost", {}))
    extra = dict(run.get("extra", {}))
    if measure_record and "wall_seconds" in cost:
        # A run captured by expunge's tracker: recording the run (resolving its rows, encoding its facts) is work a re-run pays again, like loading
        # its data: counted as record_seconds, outside the training's wall seconds. Opening the write came before
        # and its commit comes after this row is written: counted as long as this process's previous write's took.
        cost["record_seconds"] = cost.get("record_seconds", 0.0) + (time.perf_counter() - t_record) \
            + txn.store.last_write_overhead
        if txn.store.last_write_overhead:  # the write's own part: the same for a re-run of any share of the rows
            extra["record_write_seconds"] = round(txn.store.last_write_overhead, 6)
    txn.con.execute(
        "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [run_id, name, run.get("trainer"), json.dumps(run.get("config", {}), sort_keys=True),
         run.get("code_version"), run.get("seed"), run.get("model_family"),
         cost.get("wall_seconds"), cost.get("cpu_seconds"), cost.get("gpu_seconds"),
         _ts(run.get("started_at")), _ts(run.get("ended_at")), n_shards, n_slices,
         facts_file, json.dumps(index) if index else None,
         json.dumps(extra, sort_keys=True), _now(), total_steps, cost.get("setup_seconds"),
         cost.get("record_seconds")],
    )
    for row in input_rows:
        txn.con.execute("INSERT INTO run_inputs VALUES (?, ?, ?, ?, ?, ?, ?)", row)
    ckpts = [(pos, c["step"], *_artifact(c.get("path"), c.get("sha256"), base, f"run {name!r} checkpoint {pos}"),
              c.get("shard"), c.get("slice")) for pos, c in enumerate(run.get("checkpoints", []))]
    if ckpts:  # one statement: a SISA run has shards × slices of them
        cols = list(zip(*ckpts))
        txn.con.execute(
            """INSERT INTO checkpoints SELECT ?, unnest(?::INTEGER[]), unnest(?::BIGINT[]), unnest(?::VARCHAR[]),
                      unnest(?::VARCHAR[]), unnest(?::INTEGER[]), unnest(?::INTEGER[])""",
            [run_id, *(list(c) for c in cols)],
        )
    return run_id, {"id": name, "inputs": len(input_rows), "checkpoints": len(run.get("checkpoints", []))}


def _carried_facts(txn: Txn, name: str, run: dict, encoded, train_sets, n_shards, n_slices) -> tuple[str, dict]:
    """Check and write facts carried over as a facts file (`facts.carried`): its records must be training
    records of the run (its one train input), its shards and slices within the run's, and its clean counts
    counted against the run's own checkpoints."""
    from pyroaring import BitMap

    from expunge.lineage.facts import records_of

    data, index = encoded
    if len(train_sets) != 1:
        raise BadInput(f"run {name!r}: carried facts need exactly one train input")
    ckpt_steps = sorted({int(c["step"]) for c in run.get("checkpoints", []) if c.get("shard") is None and "step" in c})
    if list(index.get("clean_steps", [])) != ckpt_steps:
        raise BadInput(f"run {name!r}: the carried facts count clean checkpoints at other steps than the run's")
    triples = [t for combo in index["codes"] for t in combo]
    for what, k, limit in (("shard", 0, n_shards), ("slice", 1, n_slices)):
        if limit is not None and any(t[k] >= limit for t in triples):
            raise BadInput(f"run {name!r} facts: {what} ≥ {what}s ({limit})")
    try:
        records = records_of(data, index)
    except ValueError as exc:
        raise BadInput(f"run {name!r}: the carried facts are not a facts file ({exc})") from None
    if not BitMap(records).issubset(train_sets[0][1]):
        raise BadInput(f"run {name!r} facts: some rows are outside the run's training subset")
    return txn.write_bytes(".facts", data), {**index, "clean_steps": ckpt_steps}


def _artifact(path: str | None, sha: str | None, base: Path, what: str) -> tuple[str | None, str | None]:
    if path is None:
        return None, sha
    p = Path(path)
    if not p.is_absolute():
        p = (base / p).resolve()
    if sha is None:
        if not p.exists():
            raise BadInput(f"{what}: artifact {p} does not exist (give its sha256 if it lives elsewhere)")
        sha = sha256_file(p)
    return str(p), sha


def _insert_model(txn: Txn, m: dict, run_id: int | None, base: Path) -> dict:
    name = check_name(m["name"], "model")
    stage = m.get("stage", "dev")
    if stage not in C.STAGES:
        raise BadInput(f"model {name!r}: unknown stage {stage!r}; expected one of {', '.join(C.STAGES)}")
    path, sha = _artifact(m.get("path"), m.get("sha256"), base, f"model {name!r}")
    parents = []
    for p in m.get("parents", []):
        rel = p.get("relation", "fine-tune")
        if rel not in C.RELATIONS:
            raise BadInput(f"model {name!r}: unknown relation {rel!r}; expected one of {', '.join(C.RELATIONS)}")
        parents.append((txn.resolve_model(p["model"]), rel))
    own_run = run_id if m.get("from_run", True) else None
    model_id = txn.next_id("models", "model_id")
    version_no = int(txn.one("SELECT coalesce(max(version_no), 0) + 1 FROM models WHERE name = ?", [name]))
    txn.con.execute(
        "INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [model_id, name, version_no, path, sha, own_run, stage, _now()],
    )
    for pm, rel in parents:
        txn.con.execute("INSERT INTO model_parents VALUES (?, ?, ?)", [model_id, pm["model_id"], rel])
    return {"id": f"{name}@{version_no}", "sha256": sha, "stage": stage}


def set_model_stage(store: Store, ref: str, stage: str, reason: str) -> dict:
    """Move a model version to another stage (retire it: `archived`; restage it), recorded with the reason."""
    reason = (reason or "").strip()
    if not reason:
        raise BadInput("a stage change needs a reason (--reason TEXT): it is kept in the lineage")
    if stage not in C.STAGES:
        raise BadInput(f"unknown stage {stage!r}; expected one of {', '.join(C.STAGES)}")
    with store.write() as txn:
        m = txn.resolve_model(ref)
        old = txn.one("SELECT stage FROM models WHERE model_id = ?", [m["model_id"]])
        if old == stage:
            raise BadInput(f"model {m['label']} is already {stage}")
        at = _now()
        txn.con.execute("UPDATE models SET stage = ? WHERE model_id = ?", [stage, m["model_id"]])
        txn.con.execute("INSERT INTO model_stages VALUES (?, ?, ?, ?, ?)", [m["model_id"], at, old, stage, reason])
        audit.log_event(txn, "model_stage", model=m["label"], from_stage=old, to_stage=stage,
                        reason_sha256=audit.text_sha256(reason))
    return {"model": m["label"], "from": old, "to": stage, "reason": reason, "at": at.isoformat() + "Z"}


def model_stage_history(store: Store, ref: str) -> list[dict]:
    """The stage changes of a model version, oldest first."""
    with store.view() as view:
        m = view.resolve_model(ref)
        rows = view.execute("SELECT changed_at, from_stage, to_stage, reason FROM model_stages WHERE model_id = ? "
                            "ORDER BY changed_at", [m["model_id"]]).fetchall()
    return [{"at": t.isoformat() + "Z", "from": a, "to": b, "reason": r} for t, a, b, r in rows]


class RunTracker:
    """Records a run when its `with` block exits cleanly; nothing is written if it raises.

    >>> with store.track_run("train-1", inputs=[{"dataset": "customers@2"}],
    ...                      trainer="mypkg.train:main", config={"lr": 0.1}) as run:  # doctest: +SKIP
    ...     run.add_checkpoint(step=100, path="ckpt-100.pt")
    ...     run.add_model("churn", "model.pt", stage="staging")
    """

    def __init__(self, store: Store, name: str, *, inputs: Sequence[dict | str] = (), trainer: str | None = None,
                 config: dict | None = None, code_version: str | None = None, seed: int | None = None,
                 model_family: str | None = None, shards: int | None = None, slices: int | None = None,
                 extra: dict | None = None, total_steps: int | None = None, setup_seconds: float = 0.0):
        self.store = store
        self.run: dict[str, Any] = {"name": name}
        self.run["inputs"] = [{"dataset": i} if isinstance(i, str) else dict(i) for i in inputs]
        for k, v in dict(trainer=trainer, config=config, code_version=code_version, seed=seed,
                         model_family=model_family, shards=shards, slices=slices, extra=extra,
                         total_steps=total_steps).items():
            if v is not None:
                self.run[k] = v
        self.run["checkpoints"] = []
        self.models: list[dict] = []
        self._facts_arrow = None
        self._device_seconds = 0.0
        self._setup_seconds = float(setup_seconds)  # loading data before the `with` block, measured by the caller
        self._off_wall = 0.0                         # recording spent inside the block (out of wall seconds)
        self._record_seconds = 0.0
        self._t0 = self._c0 = 0.0
        self.result: dict | None = None

    def set_facts(self, rows: Sequence[str], *, shard: Sequence[int | None] | None = None,
                  slice: Sequence[int | None] | None = None,  # noqa: A002
                  first_step: Sequence[int | None] | None = None) -> None:
        """Each training row's shard, slice and first-consumed step (None or -1: not recorded).

        Kept as Arrow columns and handed to the store as a table: no per-row JSON on large runs.
        """
        import pyarrow as pa

        n = len(rows)

        def col(v):
            if v is None:
                return pa.nulls(n, pa.int64())
            if len(v) != n:
                raise BadInput(f"run facts: {len(v)} values for {n} rows")
            a = v.astype(np.int64) if isinstance(v, np.ndarray) and v.dtype.kind in "iu" else \
                np.asarray([-1 if x is None else x for x in v], dtype=np.int64)
            return pa.array(a, mask=a < 0)

        ids = rows if isinstance(rows, pa.Array) and pa.types.is_string(rows.type) else \
            pa.array([str(r) for r in rows], pa.string())
        self._facts_arrow = pa.table({"row_id": ids,
                                      "shard": col(shard), "slice": col(slice), "first_step": col(first_step)})

    def carry_facts(self, data: bytes, index: dict) -> None:
        """The run's facts as a facts file and its code table (`expunge.lineage.facts.carried`): an earlier run's
        facts without some records, written as they are (no row ids resolved)."""
        self.run["_facts_encoded"] = (data, index)

    def add_checkpoint(self, step: int, path: str | os.PathLike, *, sha256: str | None = None,
                       shard: int | None = None, slice: int | None = None) -> None:  # noqa: A002
        c: dict[str, Any] = {"step": int(step), "path": str(path)}
        if sha256:
            c["sha256"] = sha256
        if shard is not None:
            c["shard"] = int(shard)
        if slice is not None:
            c["slice"] = int(slice)
        self.run["checkpoints"].append(c)

    def add_device_seconds(self, seconds: float) -> None:
        self._device_seconds += float(seconds)

    def add_record_seconds(self, seconds: float) -> None:
        """Count `seconds` spent inside the `with` block gathering the run's facts as recording (a re-run pays it
        whatever share of training it redoes), not as training wall seconds."""
        self._record_seconds += float(seconds)
        self._off_wall += float(seconds)

    def set_total_steps(self, steps: int) -> None:
        """The optimizer steps the run took in all (checkpoint replay is priced on it)."""
        self.run["total_steps"] = int(steps)

    def add_model(self, name: str, path: str | os.PathLike, *, stage: str = "dev",
                  parents: Sequence[dict] = (), sha256: str | None = None) -> None:
        m: dict[str, Any] = {"name": name, "path": str(path), "stage": stage, "parents": list(parents)}
        if sha256:
            m["sha256"] = sha256
        self.models.append(m)

    def __enter__(self) -> "RunTracker":
        self._t0, self._c0 = time.perf_counter(), time.process_time()
        self.run["started_at"] = _now().isoformat()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            return
        self.run["ended_at"] = _now().isoformat()
        cost = {"wall_seconds": max(time.perf_counter() - self._t0 - self._off_wall, 0.0),
                "cpu_seconds": time.process_time() - self._c0}
        if self._device_seconds:
            cost["gpu_seconds"] = self._device_seconds
        if self._setup_seconds:
            cost["setup_seconds"] = self._setup_seconds
        if self._record_seconds:
            cost["record_seconds"] = self._record_seconds
        self.run["cost"] = cost
        self.result = record_runs(self.store, [{"run": self.run, "models": self.models}], base_dir=Path.cwd(),
                                  facts_tables=[self._facts_arrow], measure_record=True)[0]
