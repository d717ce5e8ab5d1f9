"""Bad input: one clear line, exit code 2, and the store exactly as it was."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from expunge.cli import app
from tests.test_cli import write_csv

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def env(tmp_path):
    st = tmp_path / "st"
    assert run("init", "--store", st).exit_code == 0
    good = write_csv(tmp_path / "good.csv", ["cid", "rid"], [["a", "1"], ["b", "2"]])
    assert run("ingest", "source", good, "--name", "src", "--subject-col", "cid", "--record-col", "rid",
               "--store", st).exit_code == 0
    return st, tmp_path


def snapshot(st):
    return sorted(p.name for p in (st / "data").iterdir()), (st / "CURRENT").read_text()


def expect_bad(st, res, needle):
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert needle in lines[0], lines[0]


CASES = {
    "missing column": (["cid", "other"], [["a", "9"]], "missing column"),
    "duplicate record": (["cid", "rid"], [["a", "7"], ["b", "7"]], "duplicate record id in column 'rid': row 1 repeats"),
    "duplicate known record": (["cid", "rid"], [["a", "1"], ["a", "1"]], "duplicate record id in column 'rid': row 1 repeats"),
    "null subject": (["cid", "rid"], [["a", "7"], ["", "8"]], "null in row 1"),
    "moved record": (["cid", "rid"], [["b", "1"]], "different subject"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_source(env, case):
    st, tmp = env
    header, rows, needle = CASES[case]
    before = snapshot(st)
    f = write_csv(tmp / "bad.csv", header, rows)
    res = run("ingest", "source", f, "--name", "src", "--subject-col", "cid", "--record-col", "rid", "--store", st)
    expect_bad(st, res, needle)
    assert snapshot(st) == before


def ingest_subset(st, f, name: str, parent: str, col: str = "rid", kind: str = "filter"):
    return run("ingest", "dataset", f, "--name", name, "--parent", parent, "--kind", kind, "--record-col", col,
               "--store", st)


def test_unknown_parent(env):
    st, tmp = env
    f = write_csv(tmp / "f.csv", ["rid"], [["1"]])
    before = snapshot(st)
    res = ingest_subset(st, f, "d", "nope")
    expect_bad(st, res, "unknown dataset version 'nope'")
    assert snapshot(st) == before


def test_row_not_in_parent(env):
    st, tmp = env
    f = write_csv(tmp / "f.csv", ["rid"], [["1"], ["99"]])
    res = ingest_subset(st, f, "d", "src")
    expect_bad(st, res, "1 id(s) are not rows of src@1, the first in row 1")


def test_row_twice_in_a_subset(env):
    """Of a record-space parent and of a composed one (two different code paths)."""
    st, tmp = env
    before = snapshot(st)
    f = write_csv(tmp / "f.csv", ["rid"], [["1"], ["2"], ["1"]])
    res = ingest_subset(st, f, "d", "src")
    expect_bad(st, res, "a row appears twice in column 'rid': row 2 repeats")
    assert snapshot(st) == before
    agg = write_csv(tmp / "agg.csv", ["rid", "row"], [["1", "x"], ["2", "y"]])
    assert run("ingest", "dataset", agg, "--name", "agg", "--parent", "src", "--kind", "aggregate",
               "--source", "src=rid", "--row-col", "row", "--store", st).exit_code == 0
    before = snapshot(st)
    f = write_csv(tmp / "g.csv", ["row"], [["y"], ["x"], ["y"]])
    res = ingest_subset(st, f, "g", "agg", col="row", kind="sample")
    expect_bad(st, res, "a row appears twice in column 'row': row 2 repeats")
    assert snapshot(st) == before


def test_derivation_cycle(env):
    st, tmp = env
    f = write_csv(tmp / "f.csv", ["rid"], [["1"]])
    res = ingest_subset(st, f, "d", "d@1")
    expect_bad(st, res, "derivation cycle")


def test_model_cycle_and_unknown_model(env):
    st, tmp = env
    m = {"models": [{"name": "a", "sha256": "0" * 64, "parents": [{"model": "b", "relation": "distill"}]},
                    {"name": "b", "sha256": "0" * 64, "parents": [{"model": "a", "relation": "distill"}]}]}
    (tmp / "m.json").write_text(json.dumps(m))
    expect_bad(st, run("track", "run", "--manifest", tmp / "m.json", "--store", st), "cycle")
    m = {"models": [{"name": "a", "sha256": "0" * 64, "parents": [{"model": "zzz@3"}]}]}
    (tmp / "m.json").write_text(json.dumps(m))
    expect_bad(st, run("track", "run", "--manifest", tmp / "m.json", "--store", st), "unknown model version 'zzz@3'")


@pytest.mark.parametrize("manifest,needle", [
    ({"run": {"inputs": [{"dataset": "src", "role": "test"}]}}, "fails its schema"),
    ({"run": {"name": "r", "inputs": [{"dataset": "src"}], "trainer": "not an entry point"}}, "fails its schema"),
    ({"nothing": 1}, "fails its schema"),
    ({"run": {"name": "r", "inputs": [{"dataset": "src", "rows": ["1", "5"]}]}}, "not rows of src@1"),
    ({"run": {"name": "r", "inputs": [{"dataset": "src"}], "facts": {"rows": ["1"], "shard": [0, 1]}}},
     "'shard' has 2 values for 1 rows"),
    ({"models": [{"name": "m", "path": "missing.pt"}]}, "does not exist"),
])
def test_bad_manifest(env, manifest, needle):
    st, tmp = env
    before = snapshot(st)
    (tmp / "run.json").write_text(json.dumps(manifest))
    expect_bad(st, run("track", "run", "--manifest", tmp / "run.json", "--store", st), needle)
    assert snapshot(st) == before


def test_manifest_not_json(env):
    st, tmp = env
    (tmp / "run.json").write_text("{nope")
    expect_bad(st, run("track", "run", "--manifest", tmp / "run.json", "--store", st), "not valid JSON")


def test_manifest_not_utf8_and_a_model_without_a_file(env):
    """Found by bench/fuzz.py: a manifest that is not UTF-8 was an internal error (exit 1); a model registered
    without a path or sha256 crashed the text output."""
    st, tmp = env
    before = snapshot(st)
    (tmp / "run.json").write_bytes(b"\x80{}")
    expect_bad(st, run("track", "run", "--manifest", tmp / "run.json", "--store", st), "is not UTF-8 text (byte 0)")
    assert snapshot(st) == before
    (tmp / "m.json").write_text(json.dumps({"models": [{"name": "vendor", "from_run": False}]}))
    res = run("track", "run", "--manifest", tmp / "m.json", "--store", st)
    assert res.exit_code == 0 and res.output == "Registered model vendor@1 (dev, no file recorded)\n", res.output


def test_duplicate_run_name(env):
    st, tmp = env
    (tmp / "run.json").write_text(json.dumps({"run": {"name": "r", "inputs": [{"dataset": "src"}]}}))
    assert run("track", "run", "--manifest", tmp / "run.json", "--store", st).exit_code == 0
    expect_bad(st, run("track", "run", "--manifest", tmp / "run.json", "--store", st), "already recorded")


def test_unsupported_file_and_missing_file(env):
    st, tmp = env
    (tmp / "x.xlsx").write_text("x")
    expect_bad(st, run("ingest", "source", tmp / "x.xlsx", "--name", "s", "--subject-col", "a", "--record-col", "b",
                       "--store", st), "unsupported file type")
    expect_bad(st, run("ingest", "source", tmp / "nope.csv", "--name", "s", "--subject-col", "a", "--record-col",
                       "b", "--store", st), "no such file")


def test_new_model_version_fine_tuned_from_its_previous_version(env):
    st, tmp = env
    for i in range(2):
        m = {"models": [{"name": "a", "sha256": "0" * 64,
                         "parents": [{"model": "a@1", "relation": "fine-tune"}] if i else []}]}
        (tmp / "m.json").write_text(json.dumps(m))
        res = run("track", "run", "--manifest", tmp / "m.json", "--store", st, "--json")
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["models"][0]["id"] == f"a@{i + 1}"


def test_long_id_lists_are_still_validated_item_by_item():
    """Long lists are checked without jsonschema walking every item: a bad item anywhere is still refused."""
    from expunge.errors import SchemaError
    from expunge.lineage.runs import validate_manifest

    rows = [f"r{i}" for i in range(200)]
    validate_manifest({"run": {"inputs": [{"dataset": "d", "rows": rows}]}})
    for bad in (1.5, True, None, {"x": 1}):
        with pytest.raises(SchemaError):
            validate_manifest({"run": {"inputs": [{"dataset": "d", "rows": rows[:100] + [bad] + rows[100:]}]}})
    steps = list(range(200))
    validate_manifest({"run": {"inputs": [{"dataset": "d"}], "facts": {"rows": rows, "first_step": steps}}})
    with pytest.raises(SchemaError):
        validate_manifest({"run": {"inputs": [{"dataset": "d"}],
                                   "facts": {"rows": rows, "first_step": steps[:150] + [-3] + steps[151:]}}})


# ---------------------------------------------------------------- subject ids as given (issue 12)


def impact_doc(st, *args):
    res = run("impact", *args, "--store", st, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_subjects_file_with_a_byte_order_mark(env):
    """A file saved by an editor that writes a UTF-8 BOM: its first id is 'a', not '\\ufeffa'."""
    st, tmp = env
    f = tmp / "ids.txt"
    f.write_bytes(b"\xef\xbb\xbfa\nb\n")
    assert impact_doc(st, "--subjects-file", f)["subjects"] == {"requested": 2, "found": 2}
    f.write_bytes(b"\xef\xbb\xbfa\r\n")  # and with Windows line ends
    assert impact_doc(st, "--subjects-file", f)["subjects"] == {"requested": 1, "found": 1}
    res = run("request", "create", "--subjects-file", f, "--store", st, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["subjects_found"] == 1


def test_subjects_file_is_utf8_whatever_the_locale(env):
    """Decoded as UTF-8 even where the locale says ASCII (C locale, no coercion); bytes that are not UTF-8 are
    refused with the line number, never guessed."""
    import os
    import subprocess
    import sys

    st, tmp = env
    src = write_csv(tmp / "u.csv", ["cid", "rid"], [["zoë", "u1"]])
    assert run("ingest", "source", src, "--name", "u", "--subject-col", "cid", "--record-col", "rid",
               "--store", st).exit_code == 0
    f = tmp / "ids.txt"
    f.write_text("zoë\n", encoding="utf-8")
    env_c = dict(os.environ, LC_ALL="C", LANG="C", PYTHONCOERCECLOCALE="0", PYTHONUTF8="0")
    out = subprocess.run([sys.executable, "-m", "expunge.cli", "impact", "--subjects-file", str(f), "--store",
                          str(st), "--json"], capture_output=True, text=True, env=env_c, encoding="utf-8")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["subjects"] == {"requested": 1, "found": 1}
    before = snapshot(st)
    f.write_bytes(b"a\nzo\xebx\n")  # Latin-1 bytes
    res = run("request", "create", "--subjects-file", f, "--store", st)
    expect_bad(st, res, "not UTF-8")
    assert "line 2" in res.output
    assert snapshot(st) == before


def test_empty_subject_id_refused(env):
    st, tmp = env
    before = snapshot(st)
    expect_bad(st, run("impact", "--subject", "", "--store", st), "empty subject id")
    expect_bad(st, run("request", "create", "--subject", "a", "--subject", "", "--store", st),
               "the 2nd --subject is an empty subject id")
    assert snapshot(st) == before


def test_deadline_out_of_range(env):
    st, tmp = env
    before = snapshot(st)
    expect_bad(st, run("request", "create", "--subject", "a", "--deadline", "100000000", "--store", st), "deadline")
    expect_bad(st, run("request", "create", "--subject", "a", "--deadline", "-3", "--store", st), "deadline")
    assert snapshot(st) == before
    assert run("request", "create", "--subject", "a", "--deadline", "36500", "--store", st).exit_code == 0


def test_request_list_unknown_status(env):
    st, tmp = env
    assert run("request", "create", "--subject", "a", "--store", st).exit_code == 0
    res = run("request", "list", "--status", "bogus", "--store", st)
    expect_bad(st, res, "unknown status 'bogus'")
    assert "received" in res.output
    assert "req-000001" in run("request", "list", "--status", "received", "--store", st).output


@pytest.mark.parametrize("name", ["a\nb", "a/b", "..", ".", "../x", "a\\b", "tab\there", "a\x00b"])
def test_bad_dataset_names(env, name):
    st, tmp = env
    before = snapshot(st)
    good = write_csv(tmp / "n.csv", ["cid", "rid"], [["z", "9"]])
    res = run("ingest", "source", good, "--name", name, "--subject-col", "cid", "--record-col", "rid", "--store", st)
    expect_bad(st, res, "dataset name")
    f = write_csv(tmp / "f.csv", ["rid"], [["1"]])
    expect_bad(st, ingest_subset(st, f, name, "src"), "dataset name")
    assert snapshot(st) == before


def test_csv_with_a_field_over_the_reader_block(env):
    """A field larger than pyarrow's CSV block (1 MiB by default; issue 12 saw ~2 MB fail) is read, not refused."""
    st, tmp = env
    f = tmp / "big.csv"
    blob = "x" * (3 << 20)
    f.write_text(f"cid,rid,note\nc1,r1,{blob}\nc2,r2,short\nc3,r3,\"{blob}\"\n")
    res = run("ingest", "source", f, "--name", "big", "--subject-col", "cid", "--record-col", "rid", "--store", st,
              "--json")
    assert res.exit_code == 0, res.output
    assert (json.loads(res.stdout)["rows"], json.loads(res.stdout)["records"]) == (3, 3)
    assert impact_doc(st, "--subject", "c3")["records"] == 1
