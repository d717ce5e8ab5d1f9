"""The trainer contract, and expunge's reference trainers.

A trainer is a function `module:function` taking one `TrainRequest` and returning the
`record_run` result of the run it recorded (through `expunge.lineage.torch.TrainingTracker`).
A run records its entry point, config, seed and code version, so `expunge.orchestrator.rerun`
can call the trainer again with: the same inputs minus excluded records, an optional starting
checkpoint (replay or fine-tune), an optional shard, and an output directory. A trainer loads
the checkpoint or weights it is given with `req.load_start_checkpoint()` / `req.load_init_model()`:
the file is checked against the sha256 the store recorded for it before `torch.load(...,
weights_only=True)` sees it (`expunge.lineage.torch.load_artifact`).

Wrapping an existing training loop is about ten lines::

    def train(req: TrainRequest) -> dict:
        ds = RecordDataset(req.store, req.train_input["dataset"], req.config["features"], row_col="id",
                           feature_cols=req.config["columns"], label_col="y",
                           rows=req.train_input.get("rows"), exclude_records=req.exclude_records)
        model = build_model(req.config)                                   # your code
        if req.start_checkpoint:
            model.load_state_dict(req.load_start_checkpoint()["model"])                # replay
        with req.tracker(inputs=[req.input_manifest(ds)]) as tr:
            for x, y, ids in DataLoader(ds, batch_size=64, shuffle=True, generator=req.generator()):
                tr.consumed(ids); train_step(model, x, y)                     # your code
            tr.final_model(model, req.model_name, stage=req.stage, parents=req.parents)
        return tr.result
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from expunge.errors import BadInput, TrainerNotAllowed


@dataclass
class TrainRequest:
    store: Any                       # expunge.lineage.store.Store
    run_name: str                    # the name the new run is recorded under
    inputs: list[dict]               # [{"dataset": "name@N", "role": "train", "rows": [...] (optional)}]
    config: dict
    seed: int
    out_dir: Path
    trainer: str                     # this trainer's entry point, recorded with the run
    model_name: str
    stage: str = "dev"
    parents: list[dict] = field(default_factory=list)
    exclude_records: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    start_checkpoint: Path | None = None   # replay: resume from this checkpoint of an earlier run
    init_model: Path | None = None         # fine-tune: start from these weights
    # The sha256 each file must have (None: the one the store recorded for its path).
    start_checkpoint_sha256: str | None = None
    init_model_sha256: str | None = None
    shard: int | None = None
    shard_checkpoints: dict | None = None   # SISA: {shard: slice checkpoint to resume from, or None}
    setup_seconds: float = 0.0             # loading the data before training (recorded with the run's cost)
    code_version: str | None = None
    model_family: str | None = None
    # When the request's work began (time.perf_counter; default: when it was made). Everything the trainer does
    # before its tracker starts (loading and preparing the data, building the model) is setup: a re-run pays it
    # again, so the run records at least this much.
    started: float = field(default_factory=time.perf_counter)

    @property
    def train_input(self) -> dict:
        for inp in self.inputs:
            if inp.get("role", "train") == "train":
                return inp
        raise BadInput(f"run {self.run_name!r} has no train input")

    def load_start_checkpoint(self) -> dict:
        """The start checkpoint's contents, once its sha256 is checked (`load_artifact`)."""
        from expunge.lineage.torch import load_artifact

        return load_artifact(self.start_checkpoint, self.start_checkpoint_sha256, store=self.store)

    def load_init_model(self) -> dict:
        """The initial model's contents, once its sha256 is checked (`load_artifact`)."""
        from expunge.lineage.torch import load_artifact

        return load_artifact(self.init_model, self.init_model_sha256, store=self.store)

    def generator(self):
        import torch

        return torch.Generator().manual_seed(self.seed)

    def input_manifest(self, dataset, role: str = "train") -> dict:
        """The manifest entry for what `dataset` (a RecordDataset) really holds: a row subset when the
        request excluded records or named rows, else the whole version."""
        entry: dict = {"dataset": dataset.version, "role": role}
        ti = self.train_input
        if role == "train" and ti.get("rows") is None and ti.get("_subset_ords") is not None:
            # A subset given as its records (a re-run of a run that excluded some): recorded from the ordinals.
            entry["_base_records"] = np.asarray(ti["_subset_ords"], np.uint32)
            entry["_without_records"] = np.asarray(dataset.excluded, np.uint32)
            return entry
        if len(self.exclude_records) or self.train_input.get("rows") is not None:
            entry["rows"] = list(dataset.row_ids)
            if self.train_input.get("rows") is None:
                # The whole version minus records: for a version whose rows are records the store records the
                # subset from these ordinals directly instead of resolving every row id again.
                entry["_without_records"] = np.asarray(dataset.excluded, np.uint32)
        return entry

    def tracker(self, *, inputs: list[dict], **kwargs):
        from expunge.lineage.torch import TrainingTracker

        return TrainingTracker(
            self.store, self.run_name, inputs=inputs, out_dir=self.out_dir, trainer=self.trainer,
            config=self.config, seed=self.seed, code_version=self.code_version,
            model_family=self.model_family,
            setup_seconds=max(self.setup_seconds, time.perf_counter() - self.started), **kwargs,
        )


# expunge's own trainers: always allowed. Others only under a prefix the policy or the store allows.
BUILTIN_PREFIX = "expunge.orchestrator.trainers"
ALLOW_META = "trainers_allow"   # the store's allowed prefixes: a JSON list in the catalog's meta table
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def check_prefix(prefix: str, where: str = "trainer prefix") -> str:
    """A module prefix in dotted form (`mypkg.train`; a trailing dot is dropped); anything else is refused,
    the empty prefix first of all (it would allow every module)."""
    p = prefix.strip().removesuffix(".") if isinstance(prefix, str) else ""
    if not _DOTTED.fullmatch(p):
        raise BadInput(f"{where}: {prefix!r} is not a module path such as mypkg.train")
    return p


def is_allowed(module: str, prefixes: Sequence[str]) -> bool:
    """Whether `module` is one of `prefixes` or inside one, on module-path boundaries (`mypkg` allows
    `mypkg.x`, not `mypkgevil`)."""
    return any(module == p or module.startswith(p + ".") for p in (BUILTIN_PREFIX, *prefixes))


def store_prefixes(store) -> list[str]:
    """The prefixes the store allows (`expunge trainers allow PREFIX`)."""
    with store.view() as view:
        raw = view.one("SELECT value FROM meta WHERE key = ?", [ALLOW_META])
    return json.loads(raw) if raw else []


def set_store_prefix(store, prefix: str, *, allow: bool = True) -> list[str]:
    """Add (or with `allow=False` remove) an allowed prefix in the store's config; returns the new list."""
    p = check_prefix(prefix)
    with store.write() as txn:
        raw = txn.one("SELECT value FROM meta WHERE key = ?", [ALLOW_META])
        have = json.loads(raw) if raw else []
        new = sorted(set(have) | {p}) if allow else [x for x in have if x != p]
        if not allow and p not in have:
            raise BadInput(f"the store does not allow trainers under {p} (see `expunge trainers list`)")
        txn.set_meta(ALLOW_META, json.dumps(new))
    return new


def allowed_prefixes(store=None, policy=None) -> list[str]:
    """Every prefix a trainer may be imported from: expunge's own, the policy's, the store's."""
    return [BUILTIN_PREFIX, *(policy.trainers_allow if policy is not None else ()),
            *(store_prefixes(store) if store is not None else ())]


def _search_path() -> list[str]:
    """sys.path without the working directory ('' or its path, as `python -m` and the REPL put first),
    unless $PYTHONPATH names it: a module planted where the command happens to run must not shadow the
    allowed one."""
    cwd = os.path.realpath(os.getcwd())
    explicit = {os.path.realpath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}

    def planted(entry: str) -> bool:
        if entry in ("", "."):
            return True
        try:
            real = os.path.realpath(entry)
        except (OSError, ValueError):
            return False
        return real == cwd and real not in explicit

    return [p for p in sys.path if not (isinstance(p, str) and planted(p))]


def load_trainer(entry_point: str, allow: Sequence[str] = ()) -> Callable[[TrainRequest], dict]:
    """The function of a `module:function` entry point, imported only if the module is expunge's own
    trainers' or under one of the `allow` prefixes (checked before anything is imported), and never from
    the working directory."""
    module, sep, fn = (entry_point or "").partition(":")
    if not sep or not _DOTTED.fullmatch(module) or not fn.isidentifier():
        raise BadInput(f"trainer entry point must be module:function, got {entry_point!r}")
    if not is_allowed(module, [check_prefix(p, "allowed trainer prefix") for p in allow]):
        raise TrainerNotAllowed(
            f"trainer {entry_point!r} is not allowed: expunge imports trainers only under {BUILTIN_PREFIX} and "
            "the module prefixes the policy ([trainers] allow) or the store (`expunge trainers allow PREFIX`) "
            "allows; nothing was imported")
    saved = sys.path[:]
    sys.path[:] = _search_path()
    try:
        obj = getattr(importlib.import_module(module), fn)
    except ImportError as exc:
        raise BadInput(f"cannot load trainer {entry_point!r}: {exc} (the working directory is not searched: "
                       "install the trainer's package or put its directory on PYTHONPATH)") from None
    except AttributeError as exc:
        raise BadInput(f"cannot load trainer {entry_point!r}: {exc}") from None
    finally:
        sys.path[:] = saved
    if not callable(obj):
        raise BadInput(f"trainer {entry_point!r} is not callable")
    return obj
