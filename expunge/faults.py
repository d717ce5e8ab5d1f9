"""Crash points for the fault-injection tests (tests/faults/): `fault_point("name")` dies on the spot.

A call is free unless `$EXPUNGE_FAULT` or `$EXPUNGE_FAULT_TRACE` is set. `$EXPUNGE_FAULT` says where this
process dies, by SIGKILL to itself (as a crash or a power cut would: no cleanup, no `finally`, no flush):

    name        the first time `fault_point("name")` runs
    name@N      the N-th time it runs in this process (a command that writes the store five times passes
                `write:after-rename` five times)
    #N          at the N-th crash point of any name

`$EXPUNGE_FAULT_TRACE` names a file to which every point reached is appended as one line
`<pid> <name> <N>` (N: how often this process reached it), and `<pid> KILL <name> <N>` before a kill:
the tests learn from it which points a command passes and where a kill landed.
"""

from __future__ import annotations

import os

_seen: dict[str, int] = {}
_total = [0]


def reset_counts() -> None:
    """Count from zero again (a forked child; a test running several commands in one process)."""
    _seen.clear()
    _total[0] = 0


os.register_at_fork(after_in_child=reset_counts)


def fault_point(name: str) -> None:
    """Die here (SIGKILL) when `$EXPUNGE_FAULT` names this point; see the module docstring."""
    spec = os.environ.get("EXPUNGE_FAULT")
    trace = os.environ.get("EXPUNGE_FAULT_TRACE")
    if not spec and not trace:
        return
    n = _seen[name] = _seen.get(name, 0) + 1
    _total[0] += 1
    die = bool(spec) and (spec == name or spec == f"{name}@{n}" or spec == f"#{_total[0]}")
    if trace:
        _append(trace, f"{os.getpid()} {'KILL ' if die else ''}{name} {n}\n")
    if die:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _append(path: str, line: str) -> None:
    # One write() of a short line to an O_APPEND file: whole lines even from several processes, and
    # in the kernel's hands before the SIGKILL that may follow.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
