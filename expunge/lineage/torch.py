"""PyTorch capture: a Dataset over a dataset version, and a tracker that records a training run.

Imported only when used (it imports torch).

>>> ds = RecordDataset(store, "customers@2", "features.parquet", row_col="record_id",
...                    feature_cols=["f0", "f1"], label_col="churned")            # doctest: +SKIP
>>> with TrainingTracker(store, "churn-7", inputs=[{"dataset": "customers@2"}],
...                      trainer="mypkg.train:main", config=cfg, seed=0) as tr:  # doctest: +SKIP
...     for x, y, row_ids in DataLoader(ds, batch_size=64, shuffle=True):
...         tr.consumed(row_ids)                 # the step at which each row was first seen
...         ...                                  # forward, backward, optimizer.step()
...     tr.checkpoint(model)                     # saved, hashed, recorded with its step
...     tr.final_model(model, "churn", stage="staging")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from expunge.errors import ArtifactMismatch, BadInput
from expunge.lineage.store import Store


class RecordDataset(torch.utils.data.Dataset):
    """The rows of one dataset version, with features and labels from a table, minus excluded records.

    Yields `(features, label, row_id)`; `row_id` is the row's id in the version (for source and
    subset versions, the record id). Rows built from an excluded record never reach a batch.
    `rows` keeps only the rows with these ids; `records` (a version whose rows are records) only the
    rows of these record ordinals, without naming them (a SISA shard retrain loads its shards' rows).
    """

    def __init__(self, store: Store, version: str, data: Any, *, row_col: str, feature_cols: Sequence[str],
                 label_col: str, exclude_records: Iterable[int] | np.ndarray = (),
                 exclude_subjects: Sequence[str] = (), rows: Sequence[str] | None = None,
                 records: np.ndarray | None = None):
        import time

        import pyarrow as pa
        import pyarrow.compute as pc

        from expunge.lineage.tables import id_column, require_columns

        t0 = time.perf_counter()
        excluded = np.union1d(np.asarray(list(exclude_records) if not isinstance(exclude_records, np.ndarray)
                                         else exclude_records, dtype=np.uint32),
                              store.records_of_subjects(exclude_subjects) if exclude_subjects else
                              np.zeros(0, np.uint32))
        if records is not None:
            if rows is not None:
                raise BadInput("select rows by id (rows) or by record (records), not both")
            t1 = time.perf_counter()
            label, ids, order, first, last, n_whole = self._of_records(store, version, records, excluded)
            read = time.perf_counter() - t1
        else:
            t1 = time.perf_counter()
            vrows = store.rows(version)
            read = time.perf_counter() - t1
            keep = vrows.keep_mask(excluded)
            if rows is not None:
                wanted = pa.array([str(r) for r in rows], pa.string())
                keep &= pc.is_in(vrows.row_ids, value_set=wanted).to_numpy(zero_copy_only=False)
            order = np.flatnonzero(keep)
            label, n_whole = vrows.version, len(vrows.row_ids)
            first, last = vrows.first_ords()[order], vrows.last_ords()[order]
            ids = vrows.row_ids.take(pa.array(order))
        # Stable, store-defined order: sorted by row id, so a re-run sees the same order.
        if len(ids) > 1 and not _ascending(ids):
            s = pc.sort_indices(ids).to_numpy(zero_copy_only=False)
            ids, order, first, last = ids.take(pa.array(s)), order[s], first[s], last[s]
        self.version = label
        self.excluded = excluded
        t1 = time.perf_counter()
        table = _read_features(data, [row_col, *feature_cols, label_col])
        # Reading the version's row ids and the features file: the same whichever share of the rows is kept.
        self.read_seconds = read + time.perf_counter() - t1
        require_columns(table, [row_col, *feature_cols, label_col], f"features for {version}")
        col = id_column(table, row_col, "features")
        if len(col) == n_whole and col.take(pa.array(order)).equals(ids):
            pos = np.asarray(order, np.int64)  # the table lists the version's rows in the store's order: no lookup
        else:
            found = pc.index_in(ids, value_set=col)
            if found.null_count:
                raise BadInput(f"features for {version}: {found.null_count} of its {len(ids)} row(s) have no row "
                               f"in the features table (by its {row_col!r} column)")
            pos = found.to_numpy(zero_copy_only=False).astype(np.int64)
        self._store = store
        self.first_ords = first   # per row: oldest and newest source record
        self.last_ords = last
        self._row_ids_arrow = ids
        self._row_ids: list[str] | None = None
        x = np.empty((len(ids), len(feature_cols)), np.float32)
        for j, c in enumerate(feature_cols):  # each column's kept rows, straight into the row-major matrix
            x[:, j] = table.column(c).to_numpy()[pos]
        self.x = torch.from_numpy(x)
        self.y = torch.from_numpy(table.column(label_col).to_numpy()[pos].astype(np.int64))
        self.load_seconds = time.perf_counter() - t0  # reading and joining the data: a re-run pays it again

    @staticmethod
    def _of_records(store: Store, version: str, records, excluded: np.ndarray):
        """(label, the wanted rows' ids, their positions in the version, first, last ordinals, the version's
        number of rows) for the rows of `records` minus `excluded` in a version whose rows are records (all in
        ordinal order)."""
        from pyroaring import BitMap

        from expunge.lineage.ingest import bitmap_array
        from expunge.lineage.rows import record_ids

        with store.view() as view:
            v = view.resolve_version(version)
            if v["row_space"] != "records":
                raise BadInput(f"{v['label']}: its rows are not records; select its rows by id")
            whole = view.load_bitmap(v["bitmap_file"])
            want = BitMap(np.asarray(records, np.uint32))
            if not want.issubset(whole):
                raise BadInput(f"{v['label']}: {len(want - whole)} of the records asked for are not in the version")
            want -= BitMap(excluded)
            whole_ords = bitmap_array(whole)
            ords = bitmap_array(want)
            ids = record_ids(store, view, v["record_dataset_id"], ords)  # the wanted rows' ids alone
        ords = ords.astype(np.int64)
        return v["label"], ids, np.searchsorted(whole_ords, ords), ords, ords.copy(), len(whole_ords)

    @property
    def row_ids(self) -> list[str]:
        """The row ids as Python strings (made on first use)."""
        if self._row_ids is None:
            self._row_ids = self._row_ids_arrow.to_pylist()
        return self._row_ids

    def __len__(self) -> int:
        return len(self._row_ids_arrow)

    def row_ids_arrow(self):
        """The row ids as an Arrow string array (same order as `row_ids`)."""
        return self._row_ids_arrow

    def owner_keys(self) -> np.ndarray:
        """Per row, 16 bits of the keyed hash of the subject owning its oldest record: all rows of one
        subject share it, so sharding on it puts a subject in one shard (and reveals no raw id)."""
        from expunge.lineage.rows import record_values

        with self._store.view() as view:
            vals = record_values(self._store, view, np.maximum(self.first_ords, 0).astype(np.uint32), "owner")
        return vals.to_numpy(zero_copy_only=False).astype(np.int64)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], self.row_ids[i]


def _ascending(ids) -> bool:
    """Whether a string array is in strictly ascending order."""
    import pyarrow.compute as pc

    return bool(pc.all(pc.less(ids.slice(0, len(ids) - 1), ids.slice(1))).as_py())


def _read_features(data: Any, columns: Sequence[str]):
    """The features table; of a Parquet file, only `columns` are read (all of them when some are missing, so
    that the error lists what the file has)."""
    from expunge.lineage.tables import read_table

    if isinstance(data, (str, os.PathLike)) and Path(data).suffix.lower() in (".parquet", ".pq") \
            and Path(data).is_file():
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            names = set(pq.read_schema(data).names)
            if set(columns) <= names:
                return pq.read_table(data, columns=list(dict.fromkeys(columns)))
        except (pa.ArrowInvalid, OSError):
            pass  # read_table says why
    return read_table(data, [columns[0]])


def state_dict_bytes(model: torch.nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


class TrainingTracker:
    """Records a training run into the store when its `with` block exits cleanly.

    It keeps, per row, the optimizer step at which the row was first consumed (`consumed`),
    the shard and slice of each row (`assign`), checkpoints (`checkpoint`) and the final model
    versions (`final_model`); wall and CPU seconds are measured. Nothing is written if the
    block raises.
    """

    def __init__(self, store: Store, name: str, *, inputs: Sequence[dict | str], out_dir: str | os.PathLike,
                 trainer: str | None = None, config: dict | None = None, seed: int | None = None,
                 code_version: str | None = None, model_family: str | None = None,
                 shards: int | None = None, slices: int | None = None, extra: dict | None = None,
                 facts_dataset: str | None = None, setup_seconds: float = 0.0):
        from expunge.lineage.runs import RunTracker

        self.store = store
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._run = RunTracker(store, name, inputs=inputs, trainer=trainer, config=config, seed=seed,
                               code_version=code_version, model_family=model_family, shards=shards, slices=slices,
                               extra=extra, setup_seconds=setup_seconds)
        if facts_dataset:
            self._run.run["facts_dataset"] = facts_dataset
        self.name = name
        self.step = 0
        self._bound: RecordDataset | None = None
        self._carried = False  # facts carried from an earlier run (carry_facts): none gathered here
        self._first_idx: np.ndarray | None = None
        self._first: dict[str, int] = {}
        self._shard: dict[str, int] = {}
        self._slice: dict[str, int] = {}

    # -- during training

    def bind(self, dataset: "RecordDataset") -> "TrainingTracker":
        """Let `consumed` take row positions of `dataset` (a tensor or array): the cheap path."""
        self._bound = dataset
        self._first_idx = np.full(len(dataset), -1, np.int64)
        self._shard_idx: np.ndarray | None = None  # per bound row, from assign_many(dataset.row_ids, ...)
        self._slice_idx: np.ndarray | None = None
        self._pending: list = []
        self._pending_steps: list[int] = []
        self._pending_rows = 0
        return self

    def _fold(self) -> None:
        if not self._pending:
            return
        idx = torch.cat([p.reshape(-1).to(torch.int64) for p in self._pending]).numpy()
        steps = np.repeat(np.asarray(self._pending_steps, np.int64), [p.numel() for p in self._pending])
        fresh = self._first_idx[idx] < 0
        idx, steps = idx[fresh][::-1], steps[fresh][::-1]
        self._first_idx[idx] = steps  # repeated rows: the last write, i.e. the earliest step, wins
        self._pending, self._pending_steps, self._pending_rows = [], [], 0

    def consumed(self, rows, *, step: int | None = None) -> None:
        """Rows in the batch about to be applied at `step` (default: the tracker's counter, then +1).

        `rows` are row ids, or (after `bind`) row positions in the bound dataset.
        """
        s = self.step if step is None else int(step)
        if self._carried:  # the facts come from an earlier run: only the steps are counted
            self.step = s + 1 if step is None else max(self.step, s + 1)
            return
        if self._first_idx is not None and isinstance(rows, torch.Tensor):
            # The hot path: keep the batch, fold batches into first steps now and then (vectorised;
            # steps only grow, so a row's first occurrence is its first step).
            self._pending.append(rows)
            self._pending_steps.append(s)
            self._pending_rows += rows.shape[0]
            if self._pending_rows >= 262144:
                self._fold()
            if step is None:
                self.step += 1
            else:
                self.step = max(self.step, s + 1)
            return
        if self._first_idx is not None and (isinstance(rows, np.ndarray) or
                                            (len(rows) and not isinstance(rows[0], str))):
            self._pending.append(torch.as_tensor(np.asarray(rows, dtype=np.int64)))
            self._pending_steps.append(s)
            self._pending_rows += len(rows)
        else:
            first = self._first
            for r in rows:
                if r not in first:
                    first[r] = s
        if step is None:
            self.step += 1
        else:
            self.step = max(self.step, s + 1)

    def assign(self, row_ids: Sequence[str], *, shard: int | None = None, slice: int | None = None) -> None:  # noqa: A002
        for r in row_ids:
            if shard is not None:
                self._shard[r] = int(shard)
            if slice is not None:
                self._slice[r] = int(slice)

    def assign_many(self, row_ids: Sequence[str], shards: Sequence[int], slices: Sequence[int] | None = None,
                    *, _bound: bool = False) -> None:
        if self._bound is not None and (_bound or row_ids is self._bound.row_ids):
            # Every bound row at once (the SISA trainer): kept as arrays, no per-row work.
            self._shard_idx = np.asarray(shards, np.int64).copy()
            if slices is not None:
                self._slice_idx = np.asarray(slices, np.int64).copy()
            if len(self._shard_idx) != len(row_ids) or (self._slice_idx is not None and
                                                        len(self._slice_idx) != len(row_ids)):
                raise BadInput(f"assign_many: {len(row_ids)} rows, {len(shards)} shards"
                               + (f", {len(slices)} slices" if slices is not None else ""))
            return
        self._shard.update(zip(row_ids, (int(x) for x in shards)))
        if slices is not None:
            self._slice.update(zip(row_ids, (int(x) for x in slices)))

    def assign_bound(self, shards: np.ndarray, slices: np.ndarray | None = None) -> None:
        """The shard (and slice) of every row of the bound dataset, in its order (`assign_many` without
        naming the rows)."""
        self.assign_many(self._bound.row_ids_arrow(), shards, slices, _bound=True)

    def carry_facts(self, data: bytes, index: dict) -> None:
        """Record these facts (a facts file and its code table, `expunge.lineage.facts.carried`) instead of
        the rows' facts gathered here: an earlier run's, without the records this run left out."""
        self._carried = True
        self._run.carry_facts(data, index)

    def carry_checkpoint(self, path: str | os.PathLike, sha256: str, *, step: int, shard: int | None = None,
                         slice: int | None = None) -> Path:  # noqa: A002
        """Record an earlier run's checkpoint as this run's too (its weights are what this run would have
        saved there): linked (or copied) into this run's directory, under its own name, with the same bytes
        and sha256, so that removing the earlier run's files leaves this one's."""
        import shutil

        src = Path(path)
        dst = self.out_dir / src.name
        tmp = dst.with_name(dst.name + ".tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        self._run.add_checkpoint(step, dst, sha256=sha256, shard=shard, slice=slice)
        return dst

    def checkpoint(self, model: torch.nn.Module, *, step: int | None = None, shard: int | None = None,
                   slice: int | None = None, tag: str | None = None, **meta: Any) -> Path:  # noqa: A002
        """Save `{"model": state_dict, "step": step, **meta}` after `step` optimizer steps (default: the
        steps so far) and record it as a checkpoint of the run."""
        s = self.step if step is None else int(step)
        name = tag or (f"ckpt-step{s}" + (f"-shard{shard}" if shard is not None else "") +
                       (f"-slice{slice}" if slice is not None else ""))
        path = self.out_dir / f"{name}.pt"
        where = {k: v for k, v in (("shard", shard), ("slice", slice)) if v is not None}
        _atomic_save({"model": state_dict_bytes(model), "step": s, **where, **meta}, path)
        self._run.add_checkpoint(s, path, shard=shard, slice=slice)
        return path

    def final_model(self, model: torch.nn.Module, name: str, *, stage: str = "dev",
                    parents: Sequence[dict] = (), filename: str = "model.pt", **meta: Any) -> Path:
        """Save `{"model": state_dict, "step": steps, **meta}` and register it as a model version."""
        path = self.out_dir / filename
        _atomic_save({"model": state_dict_bytes(model), "step": self.step, **meta}, path)
        self._run.add_model(name, path, stage=stage, parents=parents)
        return path

    def add_device_seconds(self, seconds: float) -> None:
        self._run.add_device_seconds(seconds)

    # -- recording

    @property
    def result(self) -> dict | None:
        return self._run.result

    def __enter__(self) -> "TrainingTracker":
        self._run.__enter__()
        return self

    def _set_bound_facts(self) -> None:
        """Facts of the bound dataset's rows from the per-position arrays: rows with any fact, in the
        dataset's order; a column nobody set is left unrecorded (as the per-row path does)."""
        first = self._first_idx
        shard, slice_ = self._shard_idx, self._slice_idx
        has_first = bool((first >= 0).any())
        keep = first >= 0
        if shard is not None:
            keep |= shard >= 0
        if slice_ is not None:
            keep |= slice_ >= 0
        pos = np.flatnonzero(keep)
        if not pos.size:
            return
        self._run.set_facts(self._bound.row_ids_arrow().take(pos) if pos.size < len(first)
                            else self._bound.row_ids_arrow(),
                            shard=None if shard is None else shard[pos],
                            slice=None if slice_ is None else slice_[pos],
                            first_step=first[pos] if has_first else None)

    def _facts_to_dicts(self) -> None:
        """Per-row calls were mixed with positions: fold the positional facts into the per-row dicts."""
        ids = self._bound.row_ids
        if self._shard_idx is not None:
            self._shard.update((ids[i], int(v)) for i, v in enumerate(self._shard_idx.tolist()) if v >= 0)
        if self._slice_idx is not None:
            self._slice.update((ids[i], int(v)) for i, v in enumerate(self._slice_idx.tolist()) if v >= 0)
        seen = np.flatnonzero(self._first_idx >= 0)
        self._first.update(zip((ids[i] for i in seen.tolist()), self._first_idx[seen].tolist()))

    def __exit__(self, exc_type, exc, tb) -> None:
        import time

        t0 = time.perf_counter()
        if exc_type is None and self._carried:
            self._run.set_total_steps(self.step)
        elif exc_type is None:
            self._run.set_total_steps(self.step)
            if self._first_idx is not None:
                self._fold()
                if not (self._first or self._shard or self._slice):
                    self._set_bound_facts()  # everything came as positions of the bound dataset: arrays only
                else:
                    self._facts_to_dicts()
            if not (self._first_idx is not None and not (self._first or self._shard or self._slice)):
                rows = sorted(set(self._first) | set(self._shard) | set(self._slice))
                if rows:
                    self._run.set_facts(
                        rows,
                        shard=[self._shard.get(r, -1) for r in rows] if self._shard else None,
                        slice=[self._slice.get(r, -1) for r in rows] if self._slice else None,
                        first_step=[self._first.get(r, -1) for r in rows] if self._first else None,
                    )
        # Gathering every row's facts is a fixed cost of recording, not training: a re-run that trains a
        # fraction of the steps still pays all of it, so it counts as setup, not as wall seconds.
        self._run.add_record_seconds(time.perf_counter() - t0)
        self._run.__exit__(exc_type, exc, tb)


def recorded_sha256(store: Store, path: str | os.PathLike) -> str:
    """The sha256 the store recorded for the model or checkpoint file at `path` (its newest record, should
    a later run have written the same path)."""
    p = Path(path)
    names = sorted({str(p), os.path.abspath(p), str(p.resolve())})
    with store.view() as view:
        rows = view.execute(
            """SELECT sha256 FROM (
                   SELECT sha256, created_at, 1 AS kind, model_id AS n FROM models
                   WHERE artifact_path IN (SELECT unnest(?::VARCHAR[]))
                   UNION ALL
                   SELECT c.sha256, r.created_at, 0, c.position FROM checkpoints c JOIN runs r USING (run_id)
                   WHERE c.path IN (SELECT unnest(?::VARCHAR[])))
               WHERE sha256 IS NOT NULL ORDER BY created_at DESC, kind DESC, n DESC LIMIT 1""",
            [names, names]).fetchall()
    if not rows:
        raise ArtifactMismatch(f"{p} is not a model or checkpoint file recorded in the store; expunge loads only "
                               "recorded files, after checking their sha256")
    return rows[0][0]


def load_artifact(path: str | os.PathLike, sha256: str | None, *, store: Store | None = None) -> Any:
    """Load a model or checkpoint file (`torch.load`, `weights_only=True`) after checking that its bytes
    have the sha256 recorded for it: `sha256`, or when None the one `store` recorded for `path`.

    The bytes checked are the bytes loaded (read once), so the file cannot be swapped in between; a file
    that holds more than tensors and plain containers is refused by `weights_only` rather than run.
    """
    import hashlib
    import io
    import pickle

    if sha256 is None:
        if store is None:
            raise ArtifactMismatch(f"{path}: no recorded sha256 to check it against; refusing to load it")
        sha256 = recorded_sha256(store, path)
    data = Path(path).read_bytes()
    if hashlib.sha256(data).hexdigest() != str(sha256).lower():
        raise ArtifactMismatch(f"{path} is not the file the store recorded (its sha256 differs from the recorded "
                               f"{str(sha256)[:12]}…): it was changed or replaced; refusing to load it")
    try:
        return torch.load(io.BytesIO(data), weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        why = "it holds objects other than tensors and plain containers" \
            if isinstance(exc, pickle.UnpicklingError) else "not a torch file"
        raise ArtifactMismatch(f"{path}: not a weights-only torch file ({why}); refusing to load it") from None


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
