"""`expunge report`: the governance report as one self-contained HTML page (and/or one JSON document)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("report")(report)


def _cli():
    from expunge import cli  # late: cli.py imports this module while it is being defined

    return cli


def _check_out(out: Path) -> None:
    from expunge.errors import BadInput

    if out.is_dir():
        raise BadInput(f"--out {out} is a directory; give the report's file name, e.g. {out / 'report.html'}")
    if not out.parent.is_dir():
        raise BadInput(f"--out {out}: the directory {out.parent} does not exist")


def report(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the HTML report to this file "
                                       "(replaced atomically).", show_default=False),
    store: Optional[Path] = typer.Option(None, "--store", envvar="EXPUNGE_STORE", show_default=False,
                                         help="Store directory (default ./.expunge)."),
    json_out: bool = typer.Option(False, "--json", help="Print the report's numbers as one JSON document "
                                  "(schemas/report.schema.json)."),
) -> None:
    """The governance report: lineage coverage, requests and their deadlines, compute against retraining
    everything, guarantees given, check results, estimated against actual cost, and residual copies. One HTML
    file with no script and nothing fetched from the network; no subject id or hash appears in it.

    Example: expunge report --out report.html
    """
    cli = _cli()

    @cli._guard
    def go():
        from expunge.errors import BadInput
        from expunge.report import build, write_html

        if out is None and not json_out:
            raise BadInput("say where the report goes: --out report.html (the page), and/or --json (the numbers)")
        if out is not None:
            _check_out(out)
        doc = build(cli._open(store))
        if out is not None:
            write_html(out, doc)
        if json_out:
            cli._emit_json(doc)
            return
        m, req, comp, chk, res = (doc["coverage"]["models"], doc["requests"], doc["compute"], doc["checks"],
                                  doc["residuals"])
        typer.echo(f"Wrote {out}: {m['total']:,} model versions ({m['record_level']:,} traced to records, "
                   f"{m['none']:,} untraceable), {req['total']:,} requests ({req['open']:,} open, "
                   f"{req['overdue']:,} overdue), {comp['plans_run']:,} plans run, "
                   + (f"{chk['passed']:,} checks passed and {chk['failed']:,} failed, " if chk["recorded"]
                      else "no checks recorded, ")
                   + f"{res['by_state']['present']:,} residual copies present.")

    go()
