"""Survivors of the mutation run over orchestrator/rerun.py: a re-run given a new config (a distilled model
re-derived from its teacher's new version) trains with that config, not the recorded one — else the student
would distil again from the teacher that saw the erased records while its lineage names the new one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tests.test_mutants_execute import demo  # noqa: E402, F401  (fixture: the demo store, built once here)


def test_a_rerun_trains_with_the_config_it_is_given(demo, tmp_path):  # noqa: F811
    from expunge.orchestrator.rerun import recorded_request, rerun

    store, _, _ = demo
    rec = recorded_request(store, "churn-distill-1")
    assert rec["config"]["teacher"] == "churn-ft@1"
    config = {**rec["config"], "teacher": "churn-mlp@1"}  # another recorded model as the teacher
    rerun(store, "churn-distill-1", new_name="distill-again", out_dir=tmp_path / "again", config=config,
          parents=[{"model": "churn-mlp@1", "relation": "distill"}])
    with store.read() as con:
        (got,) = con.execute("SELECT config FROM runs WHERE name = 'distill-again'").fetchone()
    assert json.loads(got)["teacher"] == "churn-mlp@1"


def _weights(path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def _model_path(store, model) -> str:
    from expunge.orchestrator.execute import model_info

    return model_info(store, model)["path"]


def test_recorded_subsets_list_their_rows_by_id(demo):  # noqa: F811
    """churn-ft was fine-tuned on the newest 100 customers and the student distilled on the oldest 50 (rows of
    customers@1, whose rows are records); a run over two rows of customer_features@1 (composed: each row a
    profile and its transactions) lists those two rows. The ids are read here from the demo's raw files."""
    import pyarrow.parquet as pq

    from expunge.orchestrator.rerun import recorded_request

    store, _, _ = demo
    prof = pq.read_table(store.root.parent / "customers.parquet").column("record_id").to_pylist()
    (ft,) = recorded_request(store, "churn-finetune-1")["inputs"]
    assert (ft["dataset"], sorted(ft["rows"])) == ("customers@1", sorted(prof[-100:]))
    (st,) = recorded_request(store, "churn-distill-1")["inputs"]
    assert sorted(st["rows"]) == sorted(prof[:50])
    picked = [f"feat-{prof[7]}", f"feat-{prof[2]}"]
    store.record_run({"run": {"name": "two-rows-1", "inputs": [{"dataset": "customer_features@1", "rows": picked}]},
                      "models": [{"name": "two-rows", "sha256": "0" * 64}]})
    (two,) = recorded_request(store, "two-rows-1", need_trainer=False)["inputs"]
    assert sorted(two["rows"]) == sorted(picked)


def test_a_rerun_excluding_a_subject_equals_the_trainer_without_their_records(demo, tmp_path):  # noqa: F811
    from expunge.orchestrator.rerun import recorded_request, rerun
    from expunge.orchestrator.trainers import TrainRequest, mlp

    store, subject, erased = demo
    got = rerun(store, "churn-mlp-1", new_name="mlp-without", out_dir=tmp_path / "a", exclude_subjects=[subject])
    rec = recorded_request(store, "churn-mlp-1")
    want = mlp.train(TrainRequest(store=store, run_name="mlp-ref", inputs=rec["inputs"], config=rec["config"],
                                  seed=rec["seed"], out_dir=tmp_path / "b", trainer=mlp.ENTRY_POINT,
                                  model_name="mlp-ref", exclude_records=erased))
    a, b = (_weights(_model_path(store, r["models"][0]["id"])) for r in (got, want))
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert not all(torch.equal(a[k], v) for k, v in _weights(_model_path(store, "churn-mlp@1")).items())


def test_a_shard_rerun_resumes_the_shard_from_the_checkpoint_given(demo, tmp_path):  # noqa: F811
    """The subject's rows are in shard 1's slice 2: re-run with shard 1 starting from its slice-1 checkpoint, it
    equals the SISA trainer called here with that start; untouched shards keep the old weights."""
    from expunge.orchestrator.execute import checkpoint_path
    from expunge.orchestrator.rerun import recorded_request, rerun
    from expunge.orchestrator.trainers import TrainRequest, sisa

    store, _, erased = demo
    ckpt, old = checkpoint_path(store, "churn-sisa-1", shard=1, slice_=1), _model_path(store, "churn@1")
    got = rerun(store, "churn-sisa-1", new_name="sisa-shard1", out_dir=tmp_path / "a", exclude_records=erased,
                init_model=old, shard_checkpoints={1: ckpt})
    rec = recorded_request(store, "churn-sisa-1")
    want = sisa.train(TrainRequest(store=store, run_name="sisa-ref", inputs=rec["inputs"], config=rec["config"],
                                   seed=rec["seed"], out_dir=tmp_path / "b", trainer=sisa.ENTRY_POINT,
                                   model_name="sisa-ref", exclude_records=erased, init_model=Path(old),
                                   shard_checkpoints={1: Path(ckpt)}))
    a, b, o = (_weights(p) for p in (_model_path(store, got["models"][0]["id"]),
                                      _model_path(store, want["models"][0]["id"]), old))
    assert all(torch.equal(a[k], b[k]) for k in b)
    for k in o:
        assert torch.equal(a[k], o[k]) == (int(k.split(".")[1]) != 1), k
