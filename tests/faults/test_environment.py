"""A hostile environment: disk full (a file-size limit: RLIMIT_FSIZE with SIGXFSZ ignored, so writes fail with
EFBIG, at several sizes so that the catalog copy, the data files or DuckDB's checkpoint is the write that
fails), a read-only store, a missing or wrong key, a key file others can read or write, a store path with
quotes, spaces and shell characters. Each command answers with one clear line and its exit code, and the
store's decoded content is exactly what it was; reads keep answering where they can."""

from __future__ import annotations

import ctypes
import json
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from tests.faults.conftest import ODD_NAME
from tests.faults.harness import (
    EXPUNGE, FULL, assert_whole, cli, committed, copy_store, differences, env, normalised, record, trace_lines,
)

WRITES = {  # command → arguments (the store is appended); each is one write
    "ingest source": lambda w: ["ingest", "source", w.root / "tx3.csv", "--name", "extra", "--subject-col",
                                "customer_id", "--record-col", "tx_id"],
    "ingest dataset": lambda w: ["ingest", "dataset", w.root / "tx3_large.csv", "--name", "large2", "--parent",
                                 "transactions@3", "--kind", "filter", "--record-col", "tx_id"],
    "request create": lambda w: ["request", "create", "--subject", w.subject, "--reason", "again"],
    "model stage": lambda w: ["model", "stage", "tx-score@1", "archived", "--reason", "retired"],
}
READS = {
    "impact": lambda w: ["impact", "--subject", w.subject, "--json"],
    "request list": lambda w: ["request", "list", "--json"],
}
# Outside FULL runs (bench/faults_summary.py), each condition is tried on fewer commands: one write that makes
# data files, one that does not, one read.
SOME = ("ingest source", "request create", "impact")


def _some(table: dict, some=SOME) -> dict:
    return table if FULL else {k: v for k, v in table.items() if k in some}


@pytest.fixture(scope="module")
def base(world):
    """The store with everything up to an approved plan (no command here changes it: each works on a copy)."""
    return world.steps["plan approve"].after


@pytest.fixture(scope="module")
def answers(world, base):
    """What each read answers, and what each write makes, in a normal environment."""
    out = {}
    for name, args in READS.items():
        res = cli([*args(world), "--store", base])
        assert res.returncode == 0, res.stderr
        out[name] = res.stdout
    return out


def _one_line(res, code: int, *needles: str) -> str:
    err = res.stderr
    assert res.returncode == code, (res.returncode, err[-2000:])
    assert err.endswith("\n") and err.count("\n") == 1 and err.startswith("error: "), err
    for bad in ("internal error", "Traceback", "[Errno", "IO Error"):
        assert bad not in err, err
    for n in needles:
        assert n in err, err
    return err.strip()


def _limited(limit: int):
    def pre():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, not a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return pre


def _run(args, preexec=None, **extra_env) -> subprocess.CompletedProcess:
    return subprocess.run([*EXPUNGE, *map(str, args)], env=env(**extra_env), capture_output=True, text=True,
                          timeout=300, preexec_fn=preexec)


def test_disk_full_at_every_stage_of_a_write(world, base, answers, tmp_path):
    catalog = (base / (base / "CURRENT").read_text().strip()).stat().st_size
    # 0: even the lock's pid fails; 4 KiB: the catalog copy's first MiB; the catalog's size less one byte: its
    # last block; a little more: the copy fits, and the new data files or DuckDB's checkpoint do not.
    limits = [0, 4096, catalog - 1, catalog + 4096] + ([catalog + 65536] if FULL else [])
    for name, args in _some(WRITES).items():
        stages = set()
        for limit in limits:
            root = copy_store(base, tmp_path / f"{name.replace(' ', '-')}-{limit}")
            before = committed(root)
            trace = tmp_path / f"trace-{name.replace(' ', '-')}-{limit}"
            res = _run([*args(world), "--store", root], preexec=_limited(limit), EXPUNGE_FAULT_TRACE=str(trace))
            if res.returncode == 0:  # the write fitted: then it must be whole (checked against a normal run)
                ref = copy_store(base, tmp_path / f"ref-{name.replace(' ', '-')}-{limit}")
                assert _run([*args(world), "--store", ref]).returncode == 0
                a, b = normalised(committed(root), root), normalised(committed(ref), ref)
                assert a == b, differences(a, b)
                record("hostile", "disk full", name, "fitted, committed whole", limit=limit)
                continue
            _one_line(res, 6, "cannot write to the store", "nothing was changed")
            # Where it failed: before the write began (the lock), or in it (the catalog copy, DuckDB, data files).
            reached = trace_lines(trace)
            stage = f"after {reached[-1][1]}" if reached else "taking the lock"
            stages.add(stage)
            assert_whole(root)
            assert committed(root) == before, f"{name} under a {limit}-byte limit changed the store"
            record("hostile", "disk full", name, f"exit 6 ({stage}), store unchanged", limit=limit)
        assert len(stages) >= 2, (name, stages)  # the limits make different writes fail
    # Reads need no room.
    for name, args in _some(READS).items():
        res = _run([*args(world), "--store", base], preexec=_limited(0))
        assert res.returncode == 0 and res.stdout == answers[name], (name, res.stderr)
        record("hostile", "disk full", name, "answered")


def _drop_dac():
    """In the child: lose root's power to write files it has no write permission on (CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH), so that a read-only store is read-only for root too."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP: effective for root from the exec on
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _chmod_tree(root, writable: bool) -> None:
    for dirpath, dirs, files in os.walk(root):
        os.chmod(dirpath, 0o700 if writable else 0o500)
        for f in files:
            p = os.path.join(dirpath, f)
            os.chmod(p, (os.stat(p).st_mode | 0o200) if writable else (os.stat(p).st_mode & ~0o222))


def test_read_only_store_answers_reads_and_refuses_writes(world, base, answers, tmp_path):
    root = copy_store(base, tmp_path / "ro")
    before = committed(root)
    pre = _drop_dac if os.geteuid() == 0 else None
    if pre is not None:
        try:
            subprocess.run(["true"], preexec_fn=pre, check=True)
        except (subprocess.SubprocessError, OSError):
            pytest.skip("root without the right to drop CAP_DAC_OVERRIDE: a read-only store is writable for it")
    _chmod_tree(root, writable=False)
    try:
        for name, args in _some(WRITES).items():
            res = _run([*args(world), "--store", root], preexec=pre)
            _one_line(res, 6, "cannot write to the store", "permission denied", "nothing was changed")
            record("hostile", "read-only store", name, "exit 6, store unchanged")
        for name, args in _some(READS).items():
            res = _run([*args(world), "--store", root], preexec=pre)
            assert res.returncode == 0 and res.stdout == answers[name], (name, res.stderr)
            record("hostile", "read-only store", name, "answered")
    finally:
        _chmod_tree(root, writable=True)
    assert committed(root) == before
    assert_whole(root)


def _key_file(world, base) -> str:
    from expunge.lineage.store import Store

    return str(Store.open(base).key.path)


KEYS = {
    # condition → (environment for the child, words the one line must hold)
    # The store records where its key file is (the demo keeps its own beside it): name one that is not there.
    "missing key": (lambda w, b, d: {"EXPUNGE_KEY_FILE": str(d / "no-such.key")}, ("key",)),
    "wrong key file": (lambda w, b, d: {"EXPUNGE_KEY_FILE": str(_other_key(d))}, ("key",)),
    "wrong $EXPUNGE_SECRET": (lambda w, b, d: {"EXPUNGE_SECRET": "ab" * 32}, ("key",)),
    "key readable by others": (lambda w, b, d: {"EXPUNGE_KEY_FILE": _loose_copy(_key_file(w, b), d, 0o644)},
                               ("accessible by others", "0644")),
    "key readable by its group": (lambda w, b, d: {"EXPUNGE_KEY_FILE": _loose_copy(_key_file(w, b), d, 0o640)},
                                  ("accessible by others", "0640")),
    "key writable by others": (lambda w, b, d: {"EXPUNGE_KEY_FILE": _loose_copy(_key_file(w, b), d, 0o602)},
                               ("accessible by others", "0602")),
}


def _other_key(d) -> str:
    from expunge.lineage.store import Store

    st = Store.init(d / "other-store", key_file=d / "other.key")
    return str(st.key.path)


def _loose_copy(path: str, d, mode: int) -> str:
    dst = d / f"key-{mode:o}.key"
    shutil.copy(path, dst)
    os.chmod(dst, mode)
    return str(dst)


@pytest.mark.parametrize("condition", sorted(KEYS))
def test_key_problems_are_one_line_and_change_nothing(world, base, tmp_path, condition):
    make_env, needles = KEYS[condition]
    root = copy_store(base, tmp_path / "st")
    before = committed(root)
    (tmp_path / "keys").mkdir()
    extra = make_env(world, base, tmp_path / "keys")
    for name, args in _some({**WRITES, **READS}, ("request create", "impact")).items():
        res = _run([*args(world), "--store", root], **extra)
        line = _one_line(res, 2, *needles)
        assert world.subject not in line
        record("hostile", condition, name, "exit 2, store unchanged")
    assert committed(root) == before
    assert_whole(root)


def test_store_path_with_quotes_spaces_and_shell_characters(world, base, answers, reference, tmp_path):
    """Every command up to running the plan and forgetting the subject on a store whose path holds ' " $ ; & ` [ ]
    and spaces. The run is the `reference` fixture's (made there); the kill tests, on plain paths, end in the same
    store, decoded, so this one is the store a plain path gets."""
    root = reference["root"]
    assert ODD_NAME in str(root) and "'" in root.name
    assert reference["out"]["done"] == 6 and reference["out"]["completed"]
    odd = copy_store(base, root.parent / "before-run")
    for name, args in READS.items():
        res = cli([*args(world), "--store", odd])
        assert res.returncode == 0, res.stderr
        assert res.stdout == answers[name].replace(str(base), str(odd)), name
    assert_whole(root)
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    record("hostile", "path with ' \" $ ; & ` [ ] and spaces", "impact, request list, run", "same answers and "
           "store as a plain path")


def _untimed(out: str, root) -> object:
    """A command's output with its store path and, in JSON documents, its timestamps taken out."""
    out = out.replace(str(root), "<root>")
    try:
        doc = json.loads(out)
    except json.JSONDecodeError:
        return re.sub(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9:.]+", "<time>", out)

    def drop(x):
        if isinstance(x, dict):
            return {k: drop(v) for k, v in x.items() if not k.endswith("_at")}
        return [drop(v) for v in x] if isinstance(x, list) else x
    return drop(doc)


def test_store_path_with_non_ascii_and_spaces(world, base, tmp_path):
    """The writes and reads on a path with é and a space, against the same commands under a plain path. (Not
    `run`: torch.save names its archive's root folder after the file only when the path is ASCII, so a model
    saved under this path has other bytes, hence another sha256, than the same weights saved elsewhere.)"""
    odd = tmp_path / "données clients"
    odd.mkdir()
    root, plain = copy_store(base, odd / "st"), copy_store(base, tmp_path / "plain")
    for name, args in _some({**WRITES, **READS}).items():
        a, b = cli([*args(world), "--store", root]), cli([*args(world), "--store", plain])
        assert a.returncode == b.returncode == 0, (name, a.stderr, b.stderr)
        assert _untimed(a.stdout, root) == _untimed(b.stdout, plain), name
    sa, sb = normalised(committed(root), root), normalised(committed(plain), plain)
    assert sa == sb, differences(sa, sb)
    assert_whole(root)
    record("hostile", "path with é and a space", ", ".join(_some({**WRITES, **READS})), "same answers and store as a "
           "plain path")


def test_a_backslash_in_the_store_path_is_refused_before_anything_is_made(world, base, tmp_path):
    """DuckDB reads a backslash as a path separator: it would open (or create) another file than the one named."""
    odd = tmp_path / "back\\slash"
    res = cli(["init", "--store", odd / "st"])
    _one_line(res, 2, "backslash")
    assert not odd.exists() and not (tmp_path / "back").exists()
    root = copy_store(base, tmp_path / "a\\b")
    before = _bytes(root)  # (expunge cannot read it there: compare every file's bytes)
    for name, args in _some({**WRITES, **READS}).items():
        _one_line(cli([*args(world), "--store", root]), 2, "backslash")
        record("hostile", "path with a backslash", name, "exit 2, store unchanged")
    assert _bytes(root) == before


def _bytes(root) -> dict:
    import hashlib

    return {os.path.relpath(os.path.join(d, f), root): hashlib.sha256(Path(d, f).read_bytes()).hexdigest()
            for d, _, files in os.walk(root) for f in files}
