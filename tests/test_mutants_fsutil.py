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
