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


def test_eval_only_use_is_not_training_and_nothing_prints_none(st, tmp_path):
    """A run that only evaluated on the subject's records: its model is 'evaluated on', not 'trained on', the
    records; and no output (text or JSON) shows Python's None where a value is absent (a model with no
    recorded family, a model with no run)."""
    import json
    import re

    zeros, ones = "0" * 64, "1" * 64
    manifests = [
        {"run": {"name": "ev", "inputs": [{"dataset": "src", "role": "eval"}]}, "models": [{"name": "m", "sha256": zeros}]},
        {"run": {"name": "tr", "inputs": [{"dataset": "src", "role": "train"}, {"dataset": "src", "role": "val"}]},
         "models": [{"name": "t", "sha256": ones}]},
        {"models": [{"name": "m2", "sha256": "2" * 64, "parents": [{"model": "m@1", "relation": "fine-tune"}]}]},
    ]
    for n, m in enumerate(manifests):
        (tmp_path / f"m{n}.json").write_text(json.dumps(m))
        assert run("track", "run", "--manifest", tmp_path / f"m{n}.json", "--store", st).exit_code == 0
    text = run("impact", "--subject", "a", "--store", st).stdout
    rows = {ln.split()[1]: ln for ln in text.splitlines() if ln.startswith("│ ") and "@1" in ln.split()[1]}
    assert "evaluated on the records (not trained)" in rows["m@1"], text
    assert "trained on the records" in rows["t@1"] and "evaluated" not in rows["t@1"], text
    assert "m@1 (fine-tune)" in rows["m2@1"], text
    outputs = [text]
    assert run("request", "create", "--subject", "a", "--store", st).exit_code == 0
    res = run("plan", "req-000001", "--store", st, "--json")
    outputs += [res.stdout, run("plan", "show", json.loads(res.stdout)["id"][:12], "--store", st).stdout]
    for args in (["request", "show", "req-000001"], ["request", "list"], ["plan", "list"], ["policy", "show"],
                 ["impact", "--subject", "a", "--json"], ["residuals", "req-000001"]):
        outputs.append(run(*args, "--store", st).output)
    for out in outputs:
        assert not re.search(r"\bNone\b", out), out


# ---------------------------------------------------------------- 80 columns


def _render(render, width: int, soft: bool = False) -> str:
    import io

    from rich.console import Console

    buf = io.StringIO()
    render(Console(file=buf, width=width, soft_wrap=soft, color_system=None, highlight=False))
    return buf.getvalue()


def _column0(text: str) -> list[str]:
    """Lines that start at column 0, table borders and rows left out."""
    return [ln for ln in text.splitlines() if ln and not ln[0].isspace() and not 0x2500 <= ord(ln[0]) < 0x2580]


def assert_hanging_indents(render, width: int = 80) -> str:
    """Rendered at `width`, no line is wider and wrapping adds no line at column 0: the column-0 lines are, one
    for one, the starts of the logical lines (the same render on a console that does not wrap text)."""
    narrow = _render(render, width)
    logical = _render(render, width, soft=True)
    assert max(map(len, narrow.splitlines())) <= width, narrow
    got, want = _column0(narrow), _column0(logical)
    assert len(got) == len(want), "\n".join(got)
    for g, w in zip(got, want):
        assert w.startswith(g.rstrip()), (g, w)
    assert len(narrow.splitlines()) > len(logical.splitlines())  # something did wrap: the check bit
    return narrow


def test_run_and_plan_list_wrap_with_hanging_indents():
    from expunge.cli import render_plan_list, render_run

    actions = [{"order": k, "model": f"churn-certified-long-name@{k}", "new_model": f"churn-certified-long-name@{k + 1}",
                "action": "certified_removal", "state": "done", "estimated_seconds": 0.0103, "actual_seconds": 0.0907,
                "guarantee": "certified", "check": "certificate", "pending_check": False, "error": None}
               for k in range(1, 4)]
    result = {"dry_run": False, "plan": "e7440b2e0c5dea6b" * 4, "requests": ["req-000001", "req-000002",
              "req-000003", "req-000004", "req-000005"], "done": 3, "total": 3, "actions": actions}
    text = assert_hanging_indents(lambda c: render_run(result, c))
    assert "\n      " in text  # an action's continuation sits under its text
    plans = [{"id": "ab" * 32, "state": "superseded", "superseded_by": "cd" * 32, "requests": ["req-000001"],
              "created_at": "2026-11-30T13:58:30Z", "models": 12, "total_seconds": 3.3, "approvals": 0,
              "approvals_needed": 1, "subjects": {"found": 1, "requested": 2}}]
    assert_hanging_indents(lambda c: render_plan_list(plans, c))


def test_impact_says_which_subjects_are_missing_by_position(st, tmp_path):
    """'2 of 4 found' names the missing ones by where they were given, never by the id (the terminal output is
    often pasted into tickets and logs)."""
    import json

    import jsonschema

    from expunge.schemas import load_schema

    ids = tmp_path / "ids.txt"
    ids.write_text("b\n\nghost-two\n")  # line 3 is missing (line 2 is blank)
    res = run("impact", "--subject", "a", "--subject", "ghost-one", "--subjects-file", ids, "--store", st)
    assert res.exit_code == 0, res.output
    first = res.stdout.splitlines()[0]
    assert first.startswith("2 of 4 subject(s) found (not found: the 2nd --subject, line 3 of "), first
    assert "ghost" not in res.output
    doc = json.loads(run("impact", "--subject", "a", "--subject", "ghost-one", "--subjects-file", ids, "--store", st,
                         "--json").stdout)
    jsonschema.validate(doc, load_schema("impact.schema.json"))
    assert doc["subjects"] == {"requested": 4, "found": 2, "missing": ["the 2nd --subject", f"line 3 of {ids}"]}
    # All found: no list; the same missing id twice: both places.
    doc = json.loads(run("impact", "--subject", "a", "--store", st, "--json").stdout)
    assert doc["subjects"] == {"requested": 1, "found": 1}
    doc = json.loads(run("impact", "--subject", "x", "--subject", "a", "--subject", "x", "--store", st,
                         "--json").stdout)
    assert doc["subjects"] == {"requested": 2, "found": 1, "missing": ["the 1st --subject", "the 3rd --subject"]}


def test_check_results_fit_80_columns_with_their_metrics_under_the_table():
    """`expunge verify` (and the demo's last tables): the table keeps action names whole; each check's key
    metrics follow it on their own lines, wrapped under their text, never folded a word a line in a column."""
    import re

    from expunge.cli_verify import render_verify

    summary = ("1 version(s) in chain, 0 erased records held; probe changed 0/1 erased, 0/200 retained; the rows "
               "a retrain would leave out were left out")
    checks = [{"order": k, "action": "sisa_shard_retrain", "model": "churn-certified@1",
               "new_model": "churn-certified@2", "kind": "lineage", "passed": k != 2,
               "verdict": "pass" if k != 2 else "fail", "summary": summary,
               "reasons": [] if k != 2 else ["membership AUC 0.81 over the 0.6 the policy allows"]} for k in (1, 2)]
    result = {"plan": "e3ddbf2bd0165d72" * 4, "requests": ["req-000001"], "source": "recorded", "checks": checks,
              "passed": False}
    text = assert_hanging_indents(lambda c: render_verify(result, c))
    rows = [ln for ln in text.splitlines() if ln.startswith("│")]
    assert rows and all("sisa_shard_retrain" in ln and "churn-certified@1 → @2" in ln for ln in rows), text
    flat = re.sub(r" *\n +", " ", text)  # the wrapped lines joined back
    assert flat.count(f"1. churn-certified@1: {summary}") == 1 and flat.count(f"2. churn-certified@1: {summary}") == 1
    assert "2. churn-certified@1: membership AUC 0.81 over the 0.6 the policy allows" in flat
    assert "1 of 2 check(s) passed." in text
