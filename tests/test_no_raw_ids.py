"""Issue 9: raw ids by side doors. Error messages name columns, rows and counts, never an id from the
user's data; ids that are subject ids are refused as record or row ids; names print as written."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from expunge.cli import app
from tests.test_cli import write_csv

runner = CliRunner()
TOKEN = "SECRET"  # in every raw id below: no message may contain it


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def subj(i: int) -> str:
    return f"{TOKEN}-subj-{i}"


def rec(i: int) -> str:
    return f"{TOKEN}-rec-{i}"


def make_env(tmp_path):
    """A store with source `src` (subjects subj(i) owning records rec(i), i < 4) and an aggregate `agg`
    of it whose rows are ids of their own."""
    st = tmp_path / "st"
    assert run("init", "--store", st).exit_code == 0
    good = write_csv(tmp_path / "good.csv", ["cid", "rid"], [[subj(i), rec(i)] for i in range(4)])
    assert run("ingest", "source", good, "--name", "src", "--subject-col", "cid", "--record-col", "rid",
               "--store", st).exit_code == 0
    agg = write_csv(tmp_path / "agg.csv", ["rid", "row"], [[rec(0), f"{TOKEN}-row-0"], [rec(1), f"{TOKEN}-row-1"]])
    res = run("ingest", "dataset", agg, "--name", "agg", "--parent", "src", "--kind", "aggregate",
              "--source", "src=rid", "--row-col", "row", "--store", st)
    assert res.exit_code == 0, res.output
    return st, tmp_path


@pytest.fixture
def env(tmp_path):
    return make_env(tmp_path)


@pytest.fixture(scope="module")
def refusing_env(tmp_path_factory):
    """One store for every refused input: each case checks that it left the store as it was."""
    return make_env(tmp_path_factory.mktemp("refusals"))


def source(st, f, *extra):
    return run("ingest", "source", f, "--name", "src", "--subject-col", "cid", "--record-col", "rid", "--store", st,
               *extra)


def subset(st, f, parent="src", col="rid"):
    return run("ingest", "dataset", f, "--name", "sub", "--parent", parent, "--kind", "filter", "--record-col", col,
               "--store", st)


def aggregate(st, f, row_col="row"):
    return run("ingest", "dataset", f, "--name", "agg2", "--parent", "src", "--kind", "aggregate",
               "--source", "src=rid", "--row-col", row_col, "--store", st)


def manifest(st, tmp, doc):
    (tmp / "run.json").write_text(json.dumps(doc))
    return run("track", "run", "--manifest", tmp / "run.json", "--store", st)


def csv(tmp, header, rows):
    return write_csv(tmp / "in.csv", header, rows)


# Every error path that used to quote an id (or could), with the words its message says instead.
CASES = {
    "duplicate new record": (lambda st, t: source(st, csv(t, ["cid", "rid"], [[subj(8), rec(8)], [subj(9), rec(8)]])),
                             "duplicate record id in column 'rid': row 1"),
    "duplicate known record": (lambda st, t: source(st, csv(t, ["cid", "rid"], [[subj(1), rec(1)], [subj(1), rec(1)]])),
                               "duplicate record id in column 'rid': row 1"),
    "moved record": (lambda st, t: source(st, csv(t, ["cid", "rid"], [[subj(0), rec(0)], [subj(2), rec(1)]])),
                     "the record in row 1 belongs to a different subject"),
    "malformed csv line": (lambda st, t: source(st, csv(t, ["cid", "rid"], [[subj(5), rec(5)], [subj(6), rec(6), rec(7)]])),
                           "line 3 has 3 field(s), expected 2 (columns: cid, rid)"),
    "subject column as record column": (
        lambda st, t: run("ingest", "source", csv(t, ["cid", "rid"], [[subj(5), rec(5)]]), "--name", "s2",
                          "--subject-col", "cid", "--record-col", "cid", "--store", st),
        "the record id column is the subject column ('cid')"),
    "record column copies the subject column": (
        lambda st, t: run("ingest", "source", csv(t, ["cid", "copy"], [[subj(5), subj(5)], [subj(6), subj(6)]]),
                          "--name", "s2", "--subject-col", "cid", "--record-col", "copy", "--store", st),
        "in 2 of 2 rows the record id ('copy') equals the subject id ('cid')"),
    "subset row not in parent": (lambda st, t: subset(st, csv(t, ["rid"], [[rec(0)], [rec(99)]])),
                                 "1 id(s) are not rows of src@1, the first in row 1"),
    "subset row twice": (lambda st, t: subset(st, csv(t, ["rid"], [[rec(0)], [rec(1)], [rec(0)]])),
                         "a row appears twice in column 'rid': row 2"),
    "composed subset row twice": (lambda st, t: subset(st, csv(t, ["row"], [[f"{TOKEN}-row-1"], [f"{TOKEN}-row-1"]]),
                                                       parent="agg", col="row"),
                                  "a row appears twice in column 'row': row 1"),
    "composed subset row not in parent": (
        lambda st, t: subset(st, csv(t, ["row"], [[f"{TOKEN}-row-1"], [f"{TOKEN}-row-7"]]), parent="agg", col="row"),
        "1 id(s) are not rows of agg@1, the first in row 1"),
    "composite source id not in parent": (
        lambda st, t: aggregate(st, csv(t, ["rid", "row"], [[rec(0), "x"], [f"{rec(1)};{rec(99)}", "y"]])),
        "1 id(s) are not rows of src@1, the first in row 1"),
    "composite duplicate row id": (
        lambda st, t: aggregate(st, csv(t, ["rid", "row"], [[rec(0), f"{TOKEN}-r"], [rec(1), f"{TOKEN}-r"]])),
        "duplicate row id in column 'row': row 1"),
    "composite row ids named like the subject column": (
        lambda st, t: aggregate(st, csv(t, ["rid", "cid"], [[rec(0), "a"], [rec(1), "b"]]), row_col="cid"),
        "the row id column 'cid' is a source's subject column"),
    "composite row ids that are subject ids": (
        lambda st, t: aggregate(st, csv(t, ["rid", "owner"], [[rec(i), subj(i)] for i in range(4)]), row_col="owner"),
        "are the subject ids of their rows' records (in 4 of 4 rows checked)"),
    "run input rows not in parent": (
        lambda st, t: manifest(st, t, {"run": {"name": "r", "inputs": [{"dataset": "src", "rows": [rec(1), rec(99)]}]}}),
        "1 id(s) are not rows of src@1, the first in row 1"),
    "run facts row twice": (
        lambda st, t: manifest(st, t, {"run": {"name": "r", "inputs": [{"dataset": "src"}],
                                               "facts": {"rows": [rec(1), rec(1)], "shard": [0, 0]}}}),
        "row 1 repeats an earlier row's row_id"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_error_messages_never_quote_an_id(refusing_env, case):
    st, tmp = refusing_env
    call, needle = CASES[case]
    before = sorted(p.name for p in (st / "data").iterdir())
    res = call(st, tmp)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert needle in lines[0], lines[0]
    assert TOKEN not in res.output, res.output
    assert sorted(p.name for p in (st / "data").iterdir()) == before
    assert run("impact", "--subject", subj(0), "--store", st, "--json").exit_code == 0


def test_honest_row_ids_pass(env):
    """Row ids of their own, and record ids that equal their subject's id in a minority of rows (two
    auto-increment counters crossing), are accepted."""
    st, tmp = env
    res = aggregate(st, csv(tmp, ["rid", "row"], [[rec(i), f"feat-{i}"] for i in range(4)]))
    assert res.exit_code == 0, res.output
    res = run("ingest", "source", csv(tmp, ["cid", "rid"], [["1", "1"], ["1", "2"], ["2", "3"]]), "--name", "orders",
              "--subject-col", "cid", "--record-col", "rid", "--store", st)
    assert res.exit_code == 0, res.output


def test_a_malformed_csv_line_deep_in_a_file(tmp_path):
    """Past the first block the threaded reader cannot number lines: the line is still named, never shown."""
    from expunge.errors import BadInput
    from expunge.lineage.tables import read_table

    f = tmp_path / "big.csv"
    f.write_text("cid,rid\n" + "".join(f"c{i},r{i}\n" for i in range(200_000)) + f"{subj(1)},{rec(1)},x\n")
    with pytest.raises(BadInput) as exc:
        read_table(f, ["cid", "rid"])
    assert "line 200002 has 3 field(s), expected 2" in str(exc.value)
    assert TOKEN not in str(exc.value)


def test_names_with_markup_print_as_written(store, tmp_path):
    """A dataset, run and model named with rich markup (`a[bold]`, `run[/]`) print as written in `expunge impact`
    (a dataset name may not hold a '/')."""
    store.ingest_source(pa.table({"cid": ["s1"], "rid": ["r1"]}), name="a[bold]", subject_col="cid", record_col="rid")
    store.record_run({"run": {"name": "run[/]", "inputs": [{"dataset": "a[bold]@1"}]},
                      "models": [{"name": "m[bold]", "sha256": "0" * 64}]})
    res = run("impact", "--subject", "s1", "--store", store.root)
    assert res.exit_code == 0, res.output
    for name in ("a[bold]@1", "run[/]", "m[bold]@1"):
        assert name in res.output, res.output
