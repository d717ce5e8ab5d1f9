"""Survivors of the mutation run over lineage/runs.py, killed by tests whose expected values come from the
manifest as written or from clocks read around the run: what a run records of its cost, its facts and their
clean checkpoint steps, a tracked run's own measures, and a stage change's history."""

from __future__ import annotations

import json
import time

import pytest

from expunge.lineage.runs import model_stage_history


@pytest.fixture
def two(store):
    store.ingest_source({"s": ["ann", "bob", "cy"], "r": ["r0", "r1", "r2"]}, name="a", subject_col="s",
                        record_col="r")
    store.ingest_source({"s": ["dee", "eve"], "r": ["q0", "q1"]}, name="b", subject_col="s", record_col="r")
    return store


def _run_row(store, name: str, cols: str):
    with store.read() as con:
        return con.execute(f"SELECT {cols} FROM runs WHERE name = ?", [name]).fetchone()


def test_the_costs_a_manifest_gives_are_recorded_as_given(two):
    two.record_run({"run": {"name": "r1", "inputs": [{"dataset": "a@1"}],
                            "cost": {"wall_seconds": 10.0, "cpu_seconds": 7.0, "gpu_seconds": 2.0,
                                     "setup_seconds": 1.5}}})
    assert _run_row(two, "r1", "wall_seconds, cpu_seconds, gpu_seconds, setup_seconds, record_seconds") == \
        (10.0, 7.0, 2.0, 1.5, None)  # an imported manifest's recording is not timed


def test_facts_for_the_train_input_named_by_facts_dataset(two):
    two.record_run({"run": {"name": "r1", "inputs": [{"dataset": "a@1"}, {"dataset": "b@1"}],
                            "facts_dataset": "b@1", "facts": {"rows": ["q1"], "shard": [1]}, "shards": 2}})
    # eve's record q1 trained in shard 1, as the facts say; dee's (no row in the facts) and ann's (a@1) have none.
    assert [r["shards"] for r in two.impact(["eve"]).runs] == [[{"shard": 1, "records": 1, "first_slice": None}]]
    assert [r["shards"] for r in two.impact(["dee"]).runs] == [r["shards"] for r in two.impact(["ann"]).runs] == [[]]


def test_facts_written_as_json_floats_are_whole_numbers(two):
    # JSON has one number type: 1.0 is a whole number (the manifest schema accepts it as an integer).
    two.record_run({"run": {"name": "r1", "inputs": [{"dataset": "a@1"}],
                            "facts": {"rows": ["r0", "r1"], "shard": [0.0, 1.0]}}})
    assert _run_row(two, "r1", "n_shards") == (2,)


def test_a_first_step_past_the_int32_range_is_accepted(two):
    steps = 2**40
    two.record_run({"run": {"name": "r1", "inputs": [{"dataset": "a@1"}], "total_steps": steps + 1,
                            "facts": {"rows": ["r0"], "first_step": [steps]}}})
    assert _run_row(two, "r1", "total_steps") == (steps + 1,)


def test_only_whole_run_checkpoints_are_clean_steps(two, tmp_path):
    for name in ("c3", "c5"):
        (tmp_path / name).write_bytes(name.encode())
    two.record_run({"run": {"name": "r1", "inputs": [{"dataset": "a@1"}], "total_steps": 10, "shards": 2,
                            "facts": {"rows": ["r0", "r1"], "first_step": [0, 4], "shard": [0, 1]},
                            "checkpoints": [{"step": 3, "path": str(tmp_path / "c3"), "shard": 0},
                                            {"step": 5, "path": str(tmp_path / "c5")}]}}, base_dir=tmp_path)
    (index,) = _run_row(two, "r1", "facts_index")
    assert json.loads(index)["clean_steps"] == [5]  # the shard's own checkpoint at step 3 is not one


def test_a_tracked_run_records_its_own_measures(two, tmp_path):
    t0, c0 = time.perf_counter(), time.process_time()
    with two.track_run("t1", inputs=["a@1"], total_steps=7) as run:
        sum(i * i for i in range(20000))
        run.set_facts(["r0", "r1"], first_step=[0, 3])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    w, c, setup, rec, steps = _run_row(two, "t1", "wall_seconds, cpu_seconds, setup_seconds, record_seconds, "
                                                  "total_steps")
    assert steps == 7 and setup is None  # no setup measured by the caller: none recorded
    assert 0 <= w <= wall and 0 < c <= cpu  # what the block took, measured around it here
    assert rec is not None and 0 < rec <= wall  # resolving the facts' rows is recording, timed


def test_a_stage_change_is_kept_in_the_history(two):
    two.record_run({"run": {"name": "r1", "inputs": [{"dataset": "a@1"}]}, "models": [{"name": "m", "sha256": "0" * 64}]})
    two.set_model_stage("m@1", "archived", reason="withdrawn")
    (h,) = model_stage_history(two, "m@1")
    assert (h["from"], h["to"], h["reason"]) == ("dev", "archived", "withdrawn")


def test_facts_given_twice_are_refused_and_nothing_is_written(two, tmp_path):
    import pyarrow as pa

    from expunge.errors import BadInput
    from expunge.lineage.runs import record_runs

    table = pa.table({"row_id": ["r0"], "shard": pa.array([0], pa.int64()), "slice": pa.nulls(1, pa.int64()),
                      "first_step": pa.nulls(1, pa.int64())})
    manifest = {"run": {"name": "r1", "inputs": [{"dataset": "a@1"}], "facts": {"rows": ["r0"], "shard": [0]}}}
    with pytest.raises(BadInput, match=r"^give a run's facts once: in the manifest or as a table$"):
        record_runs(two, [manifest], base_dir=tmp_path, facts_tables=[table])
    assert _run_row(two, "r1", "run_id") is None
    del manifest["run"]["facts"]
    record_runs(two, [manifest], base_dir=tmp_path, facts_tables=[table])  # once, as a table: recorded
    assert _run_row(two, "r1", "n_shards") == (1,)
