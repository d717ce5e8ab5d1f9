"""Checkpoint replay, executed: a model trained as a stream (oldest records first, a checkpoint every few
steps) forgets a recent customer by replaying from its last clean checkpoint, and gets the same weights as a
retrain without the customer's records, which is computed here from scratch."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")

from expunge import synth  # noqa: E402
from expunge.orchestrator import execute, planner  # noqa: E402
from expunge.orchestrator import requests as rq  # noqa: E402
from expunge.orchestrator.policy import store_policy  # noqa: E402
from expunge.orchestrator.trainers import TrainRequest, stream  # noqa: E402
from tests.conftest import approver_keys  # noqa: E402

N, BATCH, EVERY = 240, 16, 4  # 15 steps a pass; checkpoints after steps 4, 8, 12 (and 16, 20, ... in pass 2)


def train(store, tmp_path, name: str, cfg: dict, **kw) -> dict:
    return stream.train(TrainRequest(store=store, run_name=name, inputs=[{"dataset": "customers@1", "role": "train"}],
                                     config=cfg, seed=11, out_dir=tmp_path / name, trainer=stream.ENTRY_POINT,
                                     model_name=kw.pop("model_name", "churn-stream"), stage="production",
                                     model_family="mlp", **kw))


@pytest.mark.parametrize("passes", [1, 2])
def test_replay_from_the_last_clean_checkpoint_equals_a_retrain_without_the_records(store, tmp_path, passes):
    table = synth.customers(N, seed=2)
    pq.write_table(table, tmp_path / "features.parquet")
    store.ingest_source(table, name="customers", subject_col="customer_id", record_col="record_id")
    cfg = {"features": str(tmp_path / "features.parquet"), "row_col": "record_id",
           "feature_cols": [f"f{j}" for j in range(8)], "label_col": "churned", "batch_size": BATCH,
           "checkpoint_every": EVERY, "lr": 0.1, "passes": passes}
    train(store, tmp_path, "stream-1", cfg)
    keys = approver_keys(store, tmp_path / "keys")
    # Row 200 of 240 in the stream: first consumed at step 200 // 16 = 12, so the checkpoint after step 12 is
    # the last one clean of it (one record per customer, ingested in row order).
    subject = table.column("customer_id")[200].as_py()
    erased = store.records_of_subjects([subject])
    r = rq.create(store, [subject], category="default", policy=store_policy(store))
    doc = planner.make_plan(store, [r.id], store_policy(store))
    (item,) = doc["items"]
    assert item["chosen"]["action"] == "checkpoint_replay", item
    assert any("replay from step 12 of" in why for why in item["chosen"]["reasons"]), item["chosen"]["reasons"]
    planner.save_plan(store, doc)
    planner.approve(store, doc["id"], keys["ana"])
    # The reference, from scratch without the customer's records (before the store forgets them).
    ref = train(store, tmp_path, "reference", cfg, model_name="reference", exclude_records=erased)
    out = execute.run_plan(store, doc["id"])
    (act,) = out["actions"]
    assert act["state"] == "done" and act["action"] == "checkpoint_replay"
    new = execute.model_info(store, act["new_model"])
    got = torch.load(new["path"], weights_only=True)["model"]
    want = torch.load(execute.model_info(store, ref["models"][0]["id"])["path"], weights_only=True)["model"]
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    old = torch.load(execute.model_info(store, "churn-stream@1")["path"], weights_only=True)["model"]
    assert not all(torch.equal(got[k], old[k]) for k in got)  # it did change
    with store.read() as con:
        (detail,) = con.execute("SELECT detail FROM execution_actions WHERE plan_id = ?", [doc["id"]]).fetchone()
        steps = dict(con.execute("SELECT name, total_steps FROM runs").fetchall())
    assert '"from_step": 12' in detail
    # The new run records the whole stream's length and its rows (the replayed steps' rows included), minus
    # the customer: the request completed, the store forgot the customer, no version reaches their records.
    assert steps[new["run"]] == steps["stream-1"] == steps["reference"] == 15 * passes  # ⌈239 / 16⌉ = ⌈240 / 16⌉
    assert out["completed"] and store.impact([subject]).found == 0
    with store.read() as con:
        n_rows = con.execute("""SELECT i.n_rows FROM run_inputs i JOIN runs r USING (run_id) WHERE r.name = ?""",
                             [new["run"]]).fetchone()[0]
    assert n_rows == N - 1
