"""`--kind union`: a dataset stacking the rows of two or more parent versions, each row taken from one parent
(one --source column per parent, empty where the row comes from another). Lineage: row → that parent's record.
Impact answers are checked against a brute force over the raw tables."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from expunge.cli import app
from tests.test_bad_input import expect_bad, snapshot
from tests.test_cli import write_csv

runner = CliRunner()

EU = [("ana", "e1"), ("bob", "e2"), ("ana", "e3"), ("cy", "e4")]
US = [("bob", "1"), ("dee", "2"), ("ana", "3")]          # ids that could collide with EU's are namespaced by parent
STACK = [("e1", ""), ("", "1"), ("e4", ""), ("", "3"), ("e2", ""), ("", "2")]  # (eu id, us id) per row


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def st(tmp_path):
    root = tmp_path / "st"
    assert run("init", "--store", root).exit_code == 0
    for name, rows in (("eu", EU), ("us", US)):
        f = write_csv(tmp_path / f"{name}.csv", ["cid", "rid"], [list(r) for r in rows])
        assert run("ingest", "source", f, "--name", name, "--subject-col", "cid", "--record-col", "rid",
                   "--store", root).exit_code == 0
    return root


def ingest_union(st, path, *extra):
    return run("ingest", "dataset", path, "--name", "all", "--kind", "union", "--parent", "eu", "--parent", "us",
               "--source", "eu=eu_id", "--source", "us=us_id", *extra, "--store", st, "--json")


def brute(subject: str) -> tuple[int, int]:
    """(records, rows) of the union that hold the subject's records, from the raw tables."""
    eu = {r for c, r in EU if c == subject}
    us = {r for c, r in US if c == subject}
    rows = [k for k, (e, u) in enumerate(STACK) if (e and e in eu) or (u and u in us)]
    return len(rows), len(rows)  # one record per row


def test_union_impact_matches_brute_force(st, tmp_path):
    f = write_csv(tmp_path / "all.csv", ["eu_id", "us_id"], [list(r) for r in STACK])
    res = ingest_union(st, f)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert (doc["kind"], doc["rows"], doc["records"]) == ("union", 6, 6)
    for subject in ("ana", "bob", "cy", "dee", "nobody"):
        imp = json.loads(run("impact", "--subject", subject, "--store", st, "--json").stdout)
        got = {d["id"]: (d["records"], d["rows"]) for d in imp["datasets"]}.get("all@1", (0, 0))
        assert got == brute(subject), subject
        if got[0]:
            (u,) = [d for d in imp["datasets"] if d["id"] == "all@1"]
            assert u["parents"] == ["eu@1", "us@1"] and u["kind"] == "union"
    # A run that trains on the union is affected through it, and a subset of the union by its row ids.
    (tmp_path / "m.json").write_text(json.dumps({"run": {"name": "r", "inputs": [{"dataset": "all", "rows": ["1", "2"]}]},
                                                "models": [{"name": "m", "sha256": "0" * 64}]}))
    assert run("track", "run", "--manifest", tmp_path / "m.json", "--store", st).exit_code == 0
    # Rows are numbered from 0: rows 1 and 2 are us:1 (bob) and eu:e4 (cy).
    for subject, hit in (("bob", True), ("cy", True), ("ana", False), ("dee", False)):
        imp = json.loads(run("impact", "--subject", subject, "--store", st, "--json").stdout)
        assert [m["id"] for m in imp["models"]] == (["m@1"] if hit else []), subject


def test_union_with_row_ids_and_parquet(st, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "all.parquet"
    pq.write_table(pa.table({"eu_id": [e or None for e, _ in STACK], "us_id": [int(u) if u else None for _, u in STACK],
                             "row": [f"x{k}" for k in range(len(STACK))]}), f)
    res = ingest_union(st, f, "--row-col", "row")
    assert res.exit_code == 0, res.output
    imp = json.loads(run("impact", "--subject", "ana", "--store", st, "--json").stdout)
    assert {d["id"]: d["rows"] for d in imp["datasets"]}["all@1"] == brute("ana")[1]


@pytest.mark.parametrize("rows,needle", [
    ([("e1", "1")], "row 0 has ids in 2 --source columns"),
    ([("e1", ""), ("", "")], "row 1 has no id in any --source column"),
    ([("e1", ""), ("", "9")], "not rows of us@1"),
])
def test_bad_union_rows(st, tmp_path, rows, needle):
    before = snapshot(st)
    f = write_csv(tmp_path / "bad.csv", ["eu_id", "us_id"], [list(r) for r in rows])
    expect_bad(st, ingest_union(st, f), needle)
    assert snapshot(st) == before


def test_bad_union_shapes(st, tmp_path):
    before = snapshot(st)
    f = write_csv(tmp_path / "u.csv", ["eu_id", "us_id"], [["e1", ""]])
    expect_bad(st, run("ingest", "dataset", f, "--name", "u", "--kind", "union", "--parent", "eu", "--source",
                       "eu=eu_id", "--store", st), "a union has two or more parents")
    expect_bad(st, run("ingest", "dataset", f, "--name", "u", "--kind", "union", "--parent", "eu", "--parent", "us",
                       "--source", "eu=eu_id", "--source", "us=eu_id", "--store", st), "one column per parent")
    assert snapshot(st) == before
