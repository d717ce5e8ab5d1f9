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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from expunge.errors import BadInput


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
    code_version: str | None = None
    model_family: str | None = None

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
        if len(self.exclude_records) or self.train_input.get("rows") is not None:
            entry["rows"] = list(dataset.row_ids)
        return entry

    def tracker(self, *, inputs: list[dict], **kwargs):
        from expunge.lineage.torch import TrainingTracker

        return TrainingTracker(
            self.store, self.run_name, inputs=inputs, out_dir=self.out_dir, trainer=self.trainer,
            config=self.config, seed=self.seed, code_version=self.code_version,
            model_family=self.model_family, **kwargs,
        )


def load_trainer_module(entry_point: str):
    """The module of a `module:function` entry point (trainers may offer more than `function`)."""
    module, sep, fn = (entry_point or "").partition(":")
    if not sep or not module or not fn:
        raise BadInput(f"trainer entry point must be module:function, got {entry_point!r}")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BadInput(f"cannot load trainer {entry_point!r}: {exc}") from None


def load_trainer(entry_point: str) -> Callable[[TrainRequest], dict]:
    fn = entry_point.partition(":")[2] if entry_point else ""
    try:
        obj = getattr(load_trainer_module(entry_point), fn)
    except AttributeError as exc:
        raise BadInput(f"cannot load trainer {entry_point!r}: {exc}") from None
    if not callable(obj):
        raise BadInput(f"trainer {entry_point!r} is not callable")
    return obj
