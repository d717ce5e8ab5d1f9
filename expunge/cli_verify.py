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
    for col in ("#", "action", "model", "new version", "check", "passed", "key metrics"):
        t.add_column(col, no_wrap=col in ("model", "new version"), overflow="fold")
    for c in result["checks"]:
        mark = "[green]yes[/]" if c["passed"] else f"[red]no ({c['verdict']})[/]"
        t.add_row(str(c["order"]), c["action"] or "—", escape(c["model"]), escape(c["new_model"] or "—"), c["kind"],
                  mark, escape(c["summary"]))
    console.print(t)
    for c in result["checks"]:
        for why in c["reasons"]:
            _say(console, f"  {c['order']}. {escape(c['model'])}: {escape(why)}", hang=4, highlight=False)
    n = sum(c["passed"] for c in result["checks"])
    console.print(f"{n} of {len(result['checks'])} check(s) passed.")
