"""File safety: the store never follows a planted symlink, never leaves its directory on a name read
from the catalog, keeps its files private, and takes any path (quotes, spaces)."""

from __future__ import annotations

import json
import os
import stat

import pytest
from typer.testing import CliRunner

from expunge.cli import app
from expunge.lineage.store import Store
from tests.test_cli import write_csv

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def ingest(st, rows, name="d"):
    st.ingest_source({"s": [s for s, _ in rows], "r": [r for _, r in rows]}, name=name, subject_col="s",
                     record_col="r")


@pytest.fixture
def victim(tmp_path):
    """A file outside the store that a planted link or name points at."""
    p = tmp_path / "victim.txt"
    p.write_text("precious\n")
    return p


def one_error_line(res, needle):
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.output


def test_symlink_at_lock_is_not_written_through(tmp_path, victim):
    st = tmp_path / "st"
    assert run("init", "--store", st).exit_code == 0
    os.symlink(victim, st / "lock")
    src = write_csv(tmp_path / "a.csv", ["cid", "rid"], [["u", "1"]])
    res = run("ingest", "source", src, "--name", "a", "--subject-col", "cid", "--record-col", "rid", "--store", st)
    one_error_line(res, "symlink")
    assert victim.read_text() == "precious\n"


def test_symlink_at_temp_path_is_not_written_through(store, victim):
    ingest(store, [("a", "1")])
    for name in ("CURRENT.tmp", "STORE.tmp", f"catalog-{3:06d}.duckdb.tmp"):
        os.symlink(victim, store.root / name)
    ingest(store, [("b", "2")])
    assert victim.read_text() == "preci" "ous\n"
    assert not (store.root / "CURRENT").is_symlink()
    assert store.impact(["a"]).records == 1 and store.impact(["b"]).records == 1


def test_file_name_from_catalog_outside_the_store_is_refused(tmp_path, victim):
    st = tmp_path / "st"
    assert run("init", "--store", st).exit_code == 0
    store = Store.open(st)
    ingest(store, [("a", "1")])
    rel = os.path.relpath(victim, store.data_dir)  # ../../victim.txt
    with store.write() as txn:  # what a tampered catalog would say
        txn.con.execute("INSERT INTO retired_files VALUES (?, 0)", [rel])
    src = write_csv(tmp_path / "b.csv", ["cid", "rid"], [["b", "2"]])
    # The next write would delete the retired file: it refuses the name instead.
    res = run("ingest", "source", src, "--name", "d", "--subject-col", "cid", "--record-col", "rid", "--store", st)
    one_error_line(res, "not a plain file name")
    assert victim.read_text() == "precious\n"
    assert Store.open(st).impact(["a"]).records == 1


def test_store_directory_and_files_are_private(tmp_path):
    old = os.umask(0o002)  # a permissive umask must not matter
    try:
        store = Store.init(tmp_path / "st")
        ingest(store, [("a", "1"), ("b", "2")])
        ingest(store, [("c", "3")], name="e")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(store.root).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store.data_dir).st_mode) == 0o700
    for dirpath, _, files in os.walk(store.root):
        for f in files:
            mode = stat.S_IMODE(os.stat(os.path.join(dirpath, f)).st_mode)
            assert mode == 0o600, (f, oct(mode))


def test_store_path_with_quote_and_space(tmp_path):
    st = tmp_path / "it's a store"
    assert run("init", "--store", st).exit_code == 0
    a = write_csv(tmp_path / "a.csv", ["cid", "rid"], [["u1", "1"], ["u2", "2"]])
    b = write_csv(tmp_path / "b.csv", ["cid", "rid"], [["u1", "1"], ["u1", "3"]])
    for f in (a, b):
        res = run("ingest", "source", f, "--name", "a", "--subject-col", "cid", "--record-col", "rid", "--store", st)
        assert res.exit_code == 0, res.output
    res = run("impact", "--subject", "u1", "--store", st, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["records"] == 2
