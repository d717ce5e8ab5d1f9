"""Inputs bench/fuzz.py found crashing a reader with something other than an expunge error, each as it was
minimised. Every one must now be refused with `BadInput` (one line, exit 2 at the command line)."""

from __future__ import annotations

import json

import pytest

from expunge.errors import BadInput
from expunge.orchestrator import policy as P


@pytest.mark.parametrize("text,needle", [
    (b"\x80", "not UTF-8"),
    (b"categories = false\n", "categories: expected a table"),
    (b'categories = {health = 3}\n', "categories.health: expected a table"),
    (b"models = nan\n", "models: expected a table"),
    (b'models = {m = "x"}\n', "models.m: expected a table, got str"),
    (b'approval = ""\n', "approval: expected a table"),
    (b"approval = [false]\n", "approval: expected a table"),
    (b'approval = {keys = 1}\n', "approval.keys: expected a table"),
    (b"approximate = []\n", "approximate: expected a table"),
    (b"costs = []\n", "costs: expected a table"),
    (b'default_category = "default"\ntrainers = ""\n', "trainers: expected a table"),
    (b"trainers = nan\n", "trainers: expected a table"),
    (b'residuals = {hold = "m"}\n', "residuals.hold: expected a table"),
    (b"costs = {cpu_hour = nan}\n", "costs.cpu_hour must be a finite number"),
    (b"costs = {gpu_hour = inf}\n", "costs.gpu_hour must be a finite number"),
    (b"costs = {cpu_hour = -5.0}\n", "costs.cpu_hour must be a finite number"),
])
def test_policy_files_the_fuzzer_found(tmp_path, text, needle):
    path = tmp_path / "p.toml"
    path.write_bytes(text)
    with pytest.raises(BadInput, match=needle):
        P.load_policy(path)


def test_policy_rates_at_the_boundary_are_accepted(tmp_path):
    path = tmp_path / "p.toml"
    path.write_bytes(b"costs = {cpu_hour = 0, gpu_hour = 0.0}\n")
    pol = P.load_policy(path)
    assert (pol.cpu_hour, pol.gpu_hour) == (0.0, 0.0)
    assert len(pol.sha256()) == 64


@pytest.mark.parametrize("body", [b'{"categories": null}', b'{"categories": {}, "models": null}',
                                  b'{"categories": []}', b"[]", b"\xff"])
def test_a_damaged_pinned_policy_is_refused(store, body):
    sha = P.pin(store, P.load_policy(None))
    (store.root / "policies" / f"{sha}.json").write_bytes(body)
    with pytest.raises(BadInput, match="is damaged"):
        P.pinned(store, sha)


def test_a_pinned_policy_still_reads_back():
    pol = P.load_policy(None)
    assert P.policy_from_dict(json.loads(json.dumps(pol.to_dict()))).sha256() == pol.sha256()


# ---------------------------------------------------------------- run manifests and facts files

@pytest.fixture
def source(store):
    store.ingest_source({"s": [f"s{i}" for i in range(100)], "r": [f"r{i}" for i in range(100)]}, name="d",
                        subject_col="s", record_col="r")
    return store


@pytest.mark.parametrize("run,needle", [
    ({"slices": 2**31}, "run/slices"),
    ({"shards": 2**31}, "run/shards"),
    ({"total_steps": 2**63}, "run/total_steps"),
    ({"seed": -(2**63) - 1}, "run/seed"),
    ({"checkpoints": [{"step": 2**63, "path": "x", "sha256": "0" * 64}]}, "run/checkpoints/0/step"),
    # past 64 items a list is checked by expunge, not item by item by jsonschema: a large value in the middle
    ({"facts": {"rows": [f"r{i}" for i in range(70)], "first_step": [0] * 30 + [2**63] + [0] * 39}},
     "run/facts/first_step/30"),
    ({"facts": {"rows": [f"r{i}" for i in range(70)], "shard": [0] * 30 + [2**31 - 1] + [0] * 39}},
     "'shard' holds a value over 2147483646"),
    ({"facts": {"rows": [f"r{i}" for i in range(70)], "shard": [0] * 30 + [2**64] + [0] * 39}},
     "run/facts/shard/30"),
])
def test_manifest_numbers_the_catalog_cannot_hold_are_refused(source, tmp_path, run, needle):
    with pytest.raises(BadInput, match=needle):
        source.record_run({"run": {"inputs": [{"dataset": "d@1"}], **run}}, base_dir=tmp_path)
    with source.read() as con:
        assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 0


def test_the_largest_shard_the_catalog_holds_is_accepted(source, tmp_path):
    source.record_run({"run": {"name": "big", "inputs": [{"dataset": "d@1"}],
                               "facts": {"rows": ["r1"], "shard": [2**31 - 2]}}}, base_dir=tmp_path)
    with source.read() as con:
        assert con.execute("SELECT n_shards FROM runs WHERE name = 'big'").fetchone()[0] == 2**31 - 1


@pytest.mark.parametrize("column,value,needle", [
    ("shard", "2147483647", "over 2147483646"),
    ("shard", "99999999999999999999", "type double"),
    ("first_step", "1.5", "type double"),
    ("slice", "x", "type string"),
])
def test_facts_files_with_values_that_are_not_small_whole_numbers_are_refused(source, tmp_path, column, value,
                                                                              needle):
    (tmp_path / "facts.csv").write_text(f"row_id,{column}\nr1,{value}\n")
    with pytest.raises(BadInput, match=needle):
        source.record_run({"run": {"inputs": [{"dataset": "d@1"}], "facts_file": "facts.csv"}}, base_dir=tmp_path)


# ---------------------------------------------------------------- CSV and Parquet tables

def test_a_utf16_csv_is_refused_not_crashed_on(store, tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("subject,record\ns1,r1".encode("utf-16"))
    with pytest.raises(BadInput, match="not UTF-8"):
        store.ingest_source(path, name="t", subject_col="subject", record_col="record")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_column_named_twice_is_refused(store, tmp_path, suffix):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / f"t{suffix}"
    if suffix == ".csv":
        path.write_text("subject,subject,record\ns1,s2,r1\n")
    else:
        pq.write_table(pa.table([["s1"], ["s2"], ["r1"]], names=["subject", "subject", "record"]), path)
    # (pyarrow's Parquet reader refuses the duplicate itself; the CSV reader did not)
    with pytest.raises(BadInput, match="'subject' appears more than once" if suffix == ".csv" else "subject"):
        store.ingest_source(path, name="t", subject_col="subject", record_col="record")
    with store.read() as con:
        assert con.execute("SELECT count(*) FROM dataset_versions").fetchone()[0] == 0


def test_a_malformed_line_that_is_not_utf8_is_named_without_noise_on_stderr(store, tmp_path, capfd):
    path = tmp_path / "t.csv"
    path.write_bytes(b"subject,record\ns1,r1\ns\xe2\x28,r2,extra\n")
    with pytest.raises(BadInput, match="a line that is not UTF-8 text is malformed"):
        store.ingest_source(path, name="t", subject_col="subject", record_col="record")
    assert capfd.readouterr().err == ""  # pyarrow's decoding error was printed with a traceback
