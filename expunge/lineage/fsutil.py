"""Crash-safe file writes, the store's single-writer lock, and the checks that keep both inside the store.

Nothing here follows a symlink planted in the store: temporary files are made with
`mkstemp` (O_EXCL) in the target directory, the lock is opened with O_NOFOLLOW, and every
file the store creates is 0600 in a 0700 directory whatever the umask.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
from pathlib import Path

from expunge.errors import StoreBusy, StoreCorrupt

DIR_MODE = 0o700
FILE_MODE = 0o600


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_dir(path: Path) -> None:
    """Create `path` (and its parents) with the directory itself 0700, whatever the umask."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)


def create_private(path: Path) -> int:
    """Open a new file at `path` for writing, mode 0600; refuses an existing file or symlink there."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)  # the umask cannot widen it, but it can narrow it: be exact
    return fd


def atomic_write_bytes(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the new one.

    The temporary file is a fresh name from mkstemp beside `path` (never a fixed `.tmp` name a
    symlink could be planted at); `os.replace` then swaps the name, so a symlink at `path` is
    replaced, never written through.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def seal_file(path: Path) -> None:
    """fsync a file the store wrote and make it 0600 (some writers, e.g. Parquet's, honour the umask)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fchmod(fd, FILE_MODE)
        os.fsync(fd)
    finally:
        os.close(fd)


def check_file_name(name: object, what: str = "file") -> str:
    """A file name read from the store: one plain path component, or StoreCorrupt.

    The catalog names the files under data/; a tampered catalog must not make expunge open or
    delete anything outside it (`../x`, `/etc/x`, `a/b`), nor a hidden or empty name.
    """
    if (not isinstance(name, str) or not name or name in (".", "..") or name.startswith(".")
            or "/" in name or "\\" in name or "\0" in name or os.sep in name
            or (os.altsep is not None and os.altsep in name)):
        raise StoreCorrupt(f"the store names a {what} {name!r} that is not a plain file name in it; "
                           "refusing to open or delete it (was the catalog tampered with?)")
    return name


class WriterLock:
    """An exclusive, non-blocking flock on `<store>/lock`; released on close or process death."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def acquire(self, wait: float = 0.0) -> None:
        """Take the lock; with `wait` > 0, wait up to that many seconds for another writer to finish."""
        import time

        deadline = time.monotonic() + wait
        while True:
            try:
                return self._try()
            except StoreBusy:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def _try(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StoreCorrupt(f"{self.path} is a symlink; refusing to use it as the store's lock "
                                   "(remove it if you did not make it)") from None
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            # A hard link would let the truncate below reach another file.
            raise StoreCorrupt(f"{self.path} is not a plain file of the store; refusing to use it as the lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            finally:
                os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise StoreBusy(
                f"store is busy: another expunge process{who} is writing to {self.path.parent}; try again when it finishes"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None
