"""`expunge verify PLAN`: check every result of a plan that ran (lineage proof and hashes, certificate,
membership inference, before/after probe; `--reproduce` re-runs exact actions in a fresh process)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

_StoreOpt = typer.Option(None, "--store", envvar="EXPUNGE_STORE", show_default=False,
                         help="Store directory (default ./.expunge).")
_JsonOpt = typer.Option(False, "--json", help="Print one JSON document valid against schemas/verify.schema.json.")


def register(app: typer.Typer) -> None:
    app.command("verify")(verify_cmd)


def verify_cmd(
    plan_id: str = typer.Argument(..., help="Plan id (or a prefix of 8+ characters)."),
    reproduce: bool = typer.Option(False, "--reproduce", help="Also re-run each exact action in a fresh process "
                                   "from what the store recorded and compare the artifact's sha256."),
    store: Optional[Path] = _StoreOpt,
    json_out: bool = _JsonOpt,
) -> None:
    """Check what a plan's actions made, against its policy's thresholds; record the results.

    Before the requests complete every check is made afresh from the store; afterwards (the store has forgotten
    the subjects) the checks recorded by `expunge run` stand and every file is re-hashed. Exits 1 when a check
    does not pass (after printing the results).

    Example: expunge verify 5d93380232af --reproduce
    """
    from expunge import cli

    @cli._guard
    def go() -> bool:
        from expunge.orchestrator.verify import verify_plan

        result = verify_plan(cli._open(store), plan_id, reproduce_exact=reproduce)
        if json_out:
            cli._emit_json(result)
        else:
            render_verify(result, cli._console())
        return result["passed"]

    if not go():
        raise typer.Exit(1)


def render_verify(result: dict, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    how = ("computed from the store" if result["source"] == "computed" else
           "recorded before the store forgot the subjects; files re-hashed now")
    from expunge.cli import _say

    _say(console, f"Checks of plan [bold]{result['plan'][:16]}[/] for {escape(', '.join(result['requests']))} "
                  f"({how}):")
    t = Table(title_justify="left")
    for col in ("#", "model → new version", "action", "check", "passed"):
        t.add_column(col, no_wrap=col != "model → new version", overflow="fold")
    for c in result["checks"]:
        mark = "[green]yes[/]" if c["passed"] else f"[red]no ({c['verdict']})[/]"
        new = c["new_model"]
        if new and new.rpartition("@")[0] == c["model"].rpartition("@")[0]:
            new = "@" + new.rpartition("@")[2]  # the same model's next version: its number is enough
        t.add_row(str(c["order"]), escape(f"{c['model']} → {new}" if new else c["model"]), c["action"] or "—",
                  c["kind"], mark)
    console.print(t)
    # The key metrics and reasons under the table, one line each (wrapped under their text): a table column
    # of sentences folds into a word a line on an 80-column terminal.
    for c in result["checks"]:
        for why in [c["summary"], *c["reasons"]]:
            if why:
                _say(console, f"  {c['order']}. {escape(c['model'])}: {escape(why)}", hang=4, highlight=False)
    n = sum(c["passed"] for c in result["checks"])
    console.print(f"{n} of {len(result['checks'])} check(s) passed.")
