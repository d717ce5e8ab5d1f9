"""Shared helpers for the benchmark scripts (not part of the expunge package)."""

from __future__ import annotations

import os
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path

# Fixed subject-hash secret for generated benchmark stores, so any process can reopen them.
# A benchmark-only value: never use a fixed secret for a real store.
BENCH_SECRET = "6578707567652d62656e63682d7365637265742d6e6f742d666f722d70726f64"


def use_bench_secret() -> None:
    os.environ["EXPUNGE_SECRET"] = BENCH_SECRET
    for var in ("EXPUNGE_KEY_FILE", "EXPUNGE_STORE"):
        os.environ.pop(var, None)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (ru_maxrss is KiB on Linux)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / (1024 * 1024)


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    except OSError:
        return float("nan")


class Timer:
    """Accumulates wall seconds per named bucket."""

    def __init__(self) -> None:
        self.t: dict[str, float] = {}
        self.n: dict[str, int] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.t[name] = self.t.get(name, 0.0) + time.perf_counter() - t0
            self.n[name] = self.n.get(name, 0) + 1


def dir_size(path: Path) -> tuple[int, int]:
    """(apparent bytes, allocated bytes as `du` counts them) of everything under `path`."""
    apparent = allocated = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(dirpath, f))
            except FileNotFoundError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return apparent, allocated


def percentile(values, q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q))


def fmt_rate(n: float, secs: float) -> str:
    return f"{n / secs / 1e6:.2f}M/s" if secs > 0 else "n/a"


def code_version() -> dict:
    """The expunge code being measured: where it was imported from, its commit, uncommitted changes.

    A snapshot directory (e.g. `git archive HEAD expunge | tar -x -C DIR` put first on PYTHONPATH,
    to pin a commit while the tree changes) carries its commit in DIR/COMMIT.
    """
    import subprocess

    import expunge

    root = Path(expunge.__file__).resolve().parent.parent
    out = {"path": str(root), "commit": None, "expunge_dirty": None}
    if (root / "COMMIT").exists():
        out.update(commit=(root / "COMMIT").read_text().strip(), expunge_dirty=False)
        return out
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "expunge"], cwd=root, capture_output=True,
                               text=True).stdout.strip()
    except OSError:
        return out
    out.update(commit=commit or None, expunge_dirty=bool(dirty))
    return out
