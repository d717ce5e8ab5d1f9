"""The command line's manners: usage errors and file errors are one plain line (exit 2), -h and --version work,
each subcommand has its own help, repeatable options say so, and text reads well in an 80-column terminal."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from expunge import __version__
from expunge.cli import app
from tests.test_cli import write_csv

runner = CliRunner()


def run(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False, **kw)


def one_error_line(res, needle: str = "", code: int = 2) -> str:
    assert res.exit_code == code, res.output
    assert res.stdout == "", res.stdout
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def st(tmp_path):
    root = tmp_path / "st"
    assert run("init", "--store", root).exit_code == 0
    good = write_csv(tmp_path / "good.csv", ["cid", "rid"], [["a", "1"], ["b", "2"]])
    assert run("ingest", "source", good, "--name", "src", "--subject-col", "cid", "--record-col", "rid",
               "--store", root).exit_code == 0
    return root


@pytest.mark.parametrize("args,needle", [
    (["impact", "--bogus"], "No such option: --bogus"),
    (["ingest", "source"], "Missing argument FILE."),
    (["request", "create", "--deadline", "soon"], "Invalid value for '--deadline': 'soon'"),
    (["frobnicate"], "No such command 'frobnicate'"),
    (["request", "bogus"], "No such command 'bogus'"),
    (["run"], "Missing argument PLAN_ID."),
    (["--wait", "-1", "request", "list"], "--wait must be 0 or more seconds"),
    (["plan", "show"], "Missing argument"),
    (["plan", "list", "--key", "k"], "No such option: --key"),
])
def test_usage_errors_are_one_line(args, needle):
    line = one_error_line(run(*args), needle)
    assert "--help" in line  # where to look next


def test_usage_error_from_the_real_entry_point():
    """Through `expunge` itself (typer's standalone mode, rich installed): no box, one line."""
    out = subprocess.run([sys.executable, "-m", "expunge.cli", "impact", "--bogus"], capture_output=True, text=True,
                         env=dict(os.environ, COLUMNS="80"))
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.splitlines() == ["error: No such option: --bogus (see: expunge impact --help)"]


def test_file_errors_are_plain(st, tmp_path):
    missing = tmp_path / "nope.json"
    one_error_line(run("track", "run", "--manifest", missing, "--store", st), f"no such file: {missing}")
    line = one_error_line(run("impact", "--subjects-file", tmp_path, "--store", st), f"{tmp_path} is a directory")
    assert "Errno" not in line
    line = one_error_line(run("impact", "--subjects-file", tmp_path / "ids.txt", "--store", st), "no such file")
    assert "Errno" not in line
    line = one_error_line(run("policy", "show", "--policy", tmp_path), f"{tmp_path} is a directory")
    line = one_error_line(run("ingest", "source", tmp_path, "--name", "x", "--subject-col", "a", "--record-col", "b",
                              "--store", st), "is a directory")
    assert "Errno" not in line


def test_short_help_and_version():
    res = run("-h")
    assert res.exit_code == 0 and "Usage: expunge" in res.stdout
    res = run("impact", "-h")
    assert res.exit_code == 0 and "--subjects-file" in res.stdout
    res = run("--version")
    assert res.exit_code == 0 and res.stdout == f"expunge {__version__}\n"


def test_plan_subcommands_have_their_own_help():
    top = run("plan", "--help").stdout
    show = run("plan", "show", "--help").stdout
    approve = run("plan", "approve", "-h").stdout
    lst = run("plan", "list", "--help").stdout
    assert len({top, show, approve, lst}) == 4
    assert "Usage: expunge plan show [OPTIONS]" in show and "--key" not in show and "--replan" not in show
    assert "Usage: expunge plan approve [OPTIONS]" in approve and "--key" in approve
    assert "--request" in lst and "--key" not in lst
    for sub in ("show", "approve", "list"):
        assert sub in top


def test_plan_accepts_requests_and_options_in_any_order(st, tmp_path):
    """`expunge plan REQUEST...` still works with the options before or after the request ids."""
    import json

    assert run("request", "create", "--subject", "a", "--store", st).exit_code == 0
    res = run("plan", "--json", "req-000001", "--store", st)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["requests"] == ["req-000001"]
    res = run("plan", "--store", st, "show", doc["id"][:12], "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["id"] == doc["id"]
    res = run("plan", "--store", st, "list", "--json")
    assert res.exit_code == 0 and [p["id"] for p in json.loads(res.stdout)["plans"]] == [doc["id"]]


def test_repeatable_options_say_so():
    import typer.main

    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                yield from walk(sub, path + [name])
        yield path, cmd

    seen = 0
    for path, cmd in walk(typer.main.get_command(app), ["expunge"]):
        for p in cmd.params:
            if getattr(p, "multiple", False) and not getattr(p, "hidden", False):
                seen += 1
                assert "repeatable" in (p.help or ""), f"{' '.join(path)} {p.opts[0]}: help does not say repeatable"
    assert seen >= 3  # --subject (impact, request create), --parent, --source
