"""The command line, end to end through CliRunner, with JSON outputs checked against their schemas."""

from __future__ import annotations

import json

import jsonschema
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from expunge.cli import app
from expunge.schemas import load_schema

runner = CliRunner()


def invoke(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False, **kw)


@pytest.fixture
def cli_store(tmp_path):
    root = tmp_path / "st"
    res = invoke("init", "--store", root)
    assert res.exit_code == 0, res.output
    return root


def write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(r) for r in rows]) + "\n")
    return path


def test_init_refuses_existing(cli_store):
    res = invoke("init", "--store", cli_store)
    assert res.exit_code == 2
    assert "already exists" in res.output


def test_store_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPUNGE_STORE", str(tmp_path / "envstore"))
    assert invoke("init").exit_code == 0
    csv = write_csv(tmp_path / "a.csv", ["cid", "rid"], [["u1", "1"]])
    res = invoke("ingest", "source", csv, "--name", "a", "--subject-col", "cid", "--record-col", "rid")
    assert res.exit_code == 0, res.output


def test_end_to_end_json(cli_store, tmp_path):
    src = write_csv(tmp_path / "cust.csv", ["cid", "rid", "x"],
                    [["0042", "r1", "1"], ["42", "r2", "2"], ["0042", "r3", "3"], [" bob", "r4", "4"]])
    res = invoke("ingest", "source", src, "--name", "cust", "--subject-col", "cid", "--record-col", "rid",
                 "--store", cli_store, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {"id": "cust@1", "dataset": "cust", "version": 1, "kind": "source",
                                      "rows": 4, "records": 4, "new_records": 4, "skipped": 0}
    jsonschema.validate(json.loads(res.output), load_schema("version.schema.json"))
    filt = write_csv(tmp_path / "f.csv", ["rid"], [["r1"], ["r2"]])
    res = invoke("ingest", "dataset", filt, "--name", "f", "--parent", "cust", "--kind", "filter",
                 "--record-col", "rid", "--store", cli_store)
    assert res.exit_code == 0, res.output
    pq.write_table(pa.table({"fid": ["g1", "g2"], "src": [["r1", "r3"], ["r4"]]}), tmp_path / "agg.parquet")
    res = invoke("ingest", "dataset", tmp_path / "agg.parquet", "--name", "agg", "--parent", "cust@1",
                 "--kind", "aggregate", "--source", "cust@1=src", "--row-col", "fid", "--store", cli_store)
    assert res.exit_code == 0, res.output
    (tmp_path / "model.bin").write_bytes(b"weights")
    manifest = {
        "run": {"name": "train-1", "trainer": "pkg.mod:train", "inputs": [{"dataset": "f@1", "role": "train"}],
                "facts": {"rows": ["r1", "r2"], "shard": [1, 0], "slice": [0, 2], "first_step": [5, 1]},
                "checkpoints": [{"step": 2, "path": "model.bin"}]},
        "models": [{"name": "clf", "path": "model.bin", "stage": "production"}],
    }
    (tmp_path / "run.json").write_text(json.dumps(manifest))
    res = invoke("track", "run", "--manifest", tmp_path / "run.json", "--store", cli_store, "--json")
    assert res.exit_code == 0, res.output
    import hashlib

    assert json.loads(res.output)["models"][0]["sha256"] == hashlib.sha256(b"weights").hexdigest()
    jsonschema.validate(json.loads(res.output), load_schema("track.schema.json"))
    child = {"models": [{"name": "clf-ft", "sha256": "a" * 64, "stage": "staging",
                         "parents": [{"model": "clf@1", "relation": "fine-tune"}]}]}
    (tmp_path / "child.json").write_text(json.dumps(child))
    assert invoke("track", "run", "--manifest", tmp_path / "child.json", "--store", cli_store).exit_code == 0

    res = invoke("impact", "--subject", "0042", "--store", cli_store, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    jsonschema.validate(doc, load_schema("impact.schema.json"))
    assert doc["records"] == 2  # r1, r3 — not 42's r2
    assert {d["id"]: (d["records"], d["rows"]) for d in doc["datasets"]} == {
        "cust@1": (2, 2), "f@1": (1, 1), "agg@1": (2, 1)}
    (run,) = doc["runs"]
    assert run["records"] == 1 and run["shards"] == [{"shard": 1, "records": 1, "first_slice": 0}]
    assert run["first_seen"] == {"clean_checkpoints": 1, "last_clean_step": 2, "first_dirty_step": None}
    assert [(m["id"], m["direct"], m["stage"]) for m in doc["models"]] == [
        ("clf@1", True, "production"), ("clf-ft@1", False, "staging")]
    assert doc["models"][1]["path"] == [{"model": "clf@1", "relation": "fine-tune"}]

    # "42" is another customer; " bob" with its space is the only bob.
    doc42 = json.loads(invoke("impact", "--subject", "42", "--store", cli_store, "--json").output)
    assert doc42["records"] == 1
    assert json.loads(invoke("impact", "--subject", "bob", "--store", cli_store, "--json").output)["records"] == 0
    assert json.loads(invoke("impact", "--subject", " bob", "--store", cli_store, "--json").output)["records"] == 1

    # Batch from a file (and repeated ids count once).
    (tmp_path / "ids.txt").write_text("0042\n42\n0042\nnobody\n")
    doc = json.loads(invoke("impact", "--subjects-file", tmp_path / "ids.txt", "--store", cli_store,
                            "--json").output)
    jsonschema.validate(doc, load_schema("impact.schema.json"))
    assert doc["subjects"] == {"requested": 3, "found": 2, "missing": [f"line 4 of {tmp_path / 'ids.txt'}"]}
    assert doc["records"] == 3

    human = invoke("impact", "--subject", "0042", "--store", cli_store)
    assert human.exit_code == 0
    assert "clf-ft@1" in human.output and "fine-tune" in human.output


def test_unknown_subject_is_empty_and_exit_0(cli_store):
    res = invoke("impact", "--subject", "ghost", "--store", cli_store)
    assert res.exit_code == 0
    assert "No records for this subject" in res.output
    doc = json.loads(invoke("impact", "--subject", "ghost", "--store", cli_store, "--json").output)
    jsonschema.validate(doc, load_schema("impact.schema.json"))
    assert doc["records"] == 0 and doc["subjects"] == {"requested": 1, "found": 0, "missing": ["the 1st --subject"]}


def test_no_store(tmp_path):
    res = invoke("impact", "--subject", "x", "--store", tmp_path / "nothing")
    assert res.exit_code == 2
    assert "no expunge store" in res.output


def test_impact_does_not_import_torch_or_pyarrow(cli_store):
    import subprocess
    import sys

    code = ("import sys; from expunge.cli import main; sys.argv=['expunge','impact','--subject','x','--store',"
            f"{str(cli_store)!r}]\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('LOADED', ' '.join(m for m in ('torch','pyarrow','networkx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("LOADED"), out


def test_every_command_has_help_with_example():
    import typer.main

    group = typer.main.get_command(app)

    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                yield from walk(sub, path + [name])
        else:
            yield path, cmd

    for path, cmd in walk(group, []):
        assert "Example:" in (cmd.help or ""), f"{' '.join(path)} has no example in its help"


def test_wait_for_another_writer_instead_of_failing(tmp_path):
    """`store is busy` (exit 3) at once by default; `--wait SECONDS` waits for the writer to finish."""
    import threading

    from expunge.lineage.store import Store

    st = Store.init(tmp_path / "st")
    held, release = threading.Event(), threading.Event()

    def writer():
        with st.write():
            held.set()
            release.wait(10)

    t = threading.Thread(target=writer)
    t.start()
    held.wait(10)
    try:
        res = CliRunner().invoke(app, ["request", "create", "--subject", "a", "--store", str(st.root)])
        assert res.exit_code == 3 and "store is busy" in res.stderr
        threading.Timer(0.5, release.set).start()
        res = CliRunner().invoke(app, ["--wait", "20", "request", "create", "--subject", "a", "--store", str(st.root)])
        assert res.exit_code == 0, res.output
    finally:
        release.set()
        t.join()
    res = CliRunner().invoke(app, ["--wait", "-1", "request", "list", "--store", str(st.root)])
    assert res.exit_code == 2
