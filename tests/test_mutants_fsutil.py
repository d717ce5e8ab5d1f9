"""Survivors of the mutation run over lineage/fsutil.py: syncing a file never follows a link."""

from __future__ import annotations

import errno
import os

import pytest

from expunge.lineage.fsutil import fsync_file


def test_fsync_file_syncs_a_file_and_refuses_a_link(tmp_path):
    f = tmp_path / "data"
    f.write_bytes(b"x")
    fsync_file(f)  # a plain file: synced
    link = tmp_path / "link"
    os.symlink(f, link)
    with pytest.raises(OSError) as exc:
        fsync_file(link)
    assert exc.value.errno == errno.ELOOP


def test_a_hidden_file_name_is_refused():
    from expunge.errors import StoreCorrupt
    from expunge.lineage.fsutil import check_file_name

    for bad in (".hidden", "a/b", "..", ""):
        with pytest.raises(StoreCorrupt):
            check_file_name(bad)
    assert check_file_name("x.parquet") == "x.parquet"


def test_the_writer_lock_refuses_a_hard_link_names_its_holder_and_waits(tmp_path):
    import time

    from expunge.errors import StoreBusy, StoreCorrupt
    from expunge.lineage.fsutil import WriterLock

    other = tmp_path / "other"
    other.write_bytes(b"not a lock")
    os.link(other, tmp_path / "linked")
    with pytest.raises(StoreCorrupt, match="not a plain file"):
        WriterLock(tmp_path / "linked").acquire()
    held = WriterLock(tmp_path / "lock")
    held.acquire()
    try:
        with pytest.raises(StoreBusy, match=rf"\(pid {os.getpid()}\) is writing"):
            WriterLock(tmp_path / "lock").acquire()
        t0 = time.monotonic()
        with pytest.raises(StoreBusy):
            WriterLock(tmp_path / "lock").acquire(wait=0.2)  # waits, then gives up
        assert time.monotonic() - t0 >= 0.2
    finally:
        held.release()
    WriterLock(tmp_path / "lock").acquire()  # free again


def test_private_dirs_files_and_atomic_writes(tmp_path, monkeypatch):
    import stat

    from expunge.lineage import fsutil

    d = tmp_path / "a" / "b"
    fsutil.make_private_dir(d)
    fsutil.make_private_dir(d)  # again: fine
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    os.close(fsutil.create_private(d / "f"))
    with pytest.raises(FileExistsError):
        fsutil.create_private(d / "f")  # never an existing file
    moves = []
    real = os.replace
    monkeypatch.setattr(fsutil.os, "replace", lambda src, dst: (moves.append((src, dst)), real(src, dst)))
    fsutil.atomic_write_bytes(d / "CURRENT", b"gen-2")
    ((src, dst),) = moves
    # The temporary file sits beside the target (same file system), named `.<name>.<random>.tmp`: the name a
    # crashed write leaves and the store recognises as its own leftover.
    src = os.fspath(src)
    assert os.path.dirname(src) == os.fspath(d) and os.path.basename(src).startswith(".CURRENT.") and \
        src.endswith(".tmp") and dst == d / "CURRENT"
    assert (d / "CURRENT").read_bytes() == b"gen-2" and stat.S_IMODE((d / "CURRENT").stat().st_mode) == 0o600
