"""Survivors of the mutation run over lineage/store.py, killed by tests whose expected values are written out by
hand: the small API methods no in-process test called, an init run again where a killed init left no key file,
a retired file already gone, and which failed writes count as "the store is unwritable"."""

from __future__ import annotations

import errno
import hashlib
import json

import pytest

from expunge.errors import StoreUnwritable
from expunge.lineage import keys
from expunge.lineage.store import Store, unwritable


def test_derive_keeps_the_rows_at_the_positions_in_parent_order(store):
    store.ingest_source({"s": ["a", "b", "c", "d"], "r": ["r0", "r1", "r2", "r3"]}, name="d", subject_col="s",
                        record_col="r")
    info = store.derive("d@1", name="half", kind="filter", positions=[3, 0])
    assert (info.id, info.rows) == ("half@1", 2)
    assert store.rows("half@1").row_ids.to_pylist() == ["r0", "r3"]


def test_register_model_passes_its_options_and_returns_the_version(store, tmp_path):
    f = tmp_path / "ens.pt"
    f.write_bytes(b"weights")
    got = store.register_model("ens", f, stage="staging")
    assert got == {"id": "ens@1", "sha256": hashlib.sha256(b"weights").hexdigest(), "stage": "staging"}
    with store.view() as view:
        m = view.resolve_model("ens")
    assert {k: m[k] for k in ("name", "version_no", "label")} == {"name": "ens", "version_no": 1, "label": "ens@1"}


def test_init_again_where_a_killed_init_left_no_key_file(tmp_path):
    """An init killed before its marker leaves a catalog and CURRENT; a second init clears them and the key file
    the first one made, or, where there is none (made elsewhere, or never written), just goes on."""
    root = tmp_path / "s"
    first = Store.init(root)
    assert first.root == root
    key = keys.default_key_path(json.loads((root / "STORE").read_bytes())["store_id"])
    assert key.exists()
    (root / "STORE").unlink()  # as if killed at init:before-marker
    second = Store.init(root)
    assert not key.exists()  # the first init's key went with its leftovers
    sid = json.loads((root / "STORE").read_bytes())["store_id"]
    (root / "STORE").unlink()
    keys.default_key_path(sid).unlink()  # this time there is no key file where init would have made it
    Store.init(root)
    assert second.root == root and (root / "STORE").exists()


def test_a_retired_file_already_gone_does_not_stop_later_writes(store):
    store.ingest_source({"s": ["a", "b"], "r": ["r0", "r1"]}, name="d", subject_col="s", record_col="r")
    store.forget_subjects(store.hasher.hash_many(["a"]), "req-1")
    with store.read() as con:
        retired = [f for (f,) in con.execute("SELECT file FROM retired_files").fetchall()]
    assert retired
    for f in retired:
        store.data_path(f).unlink()  # deleted already (by hand, or by a write that stopped before recording it)
    for i in range(2):  # the second write after the forgetting drops them
        store.ingest_source({"s": [f"n{i}"], "r": [f"x{i}"]}, name="d", subject_col="s", record_col="r")
    with store.read() as con:
        still = {f for (f,) in con.execute("SELECT file FROM retired_files").fetchall()}
    assert not still & set(retired)  # dropped from the list though their files were gone
    assert store.impact(["b"]).records == 1 and store.impact(["a"]).found == 0


def test_unwritable_counts_permission_errors_only_on_the_stores_own_files(tmp_path):
    root = tmp_path / "store"
    inside = PermissionError(errno.EACCES, "Permission denied", str(root / "data" / "f.parquet"))
    got = unwritable(inside, root)
    assert isinstance(got, StoreUnwritable)
    assert str(got) == (f"cannot write to the store at {root}: permission denied ({root / 'data' / 'f.parquet'}); "
                        "nothing was changed")
    outside = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "input.csv"))
    assert unwritable(outside, root) is None  # an unreadable input is the input's problem
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "anywhere"))
    assert "no space left on the device" in str(unwritable(full, root, committed=True))
    assert unwritable(ValueError("bad"), root) is None


@pytest.mark.parametrize("text", ["IO Error: Read-only file system", "Permission denied"])
def test_unwritable_reads_the_reason_from_the_text_when_there_is_no_errno(tmp_path, text):
    root = tmp_path / "store"
    assert unwritable(RuntimeError(f"{text}: {root}/catalog-000002.duckdb"), root) is not None
    assert unwritable(RuntimeError(f"{text}: /elsewhere/file"), root) is None
