"""`expunge audit ...`: the hash-chained audit log (verify, list, anchor) and evidence bundles (see expunge.audit)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

audit_app = typer.Typer(help="The tamper-evident audit log and per-request evidence bundles.", no_args_is_help=True)

StoreOpt = typer.Option(None, "--store", envvar="EXPUNGE_STORE", show_default=False,
                        help="Store directory (default ./.expunge).")
JsonOpt = typer.Option(False, "--json", help="Print one JSON document valid against its schema in schemas/.")


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")


def _cli():
    # Imported late: cli.py imports this module while it is being defined.
    from expunge import cli

    return cli


@audit_app.command("verify")
def verify(
    anchor: Optional[Path] = typer.Option(None, "--anchor", help="An anchor file (`expunge audit anchor --out`): "
                                          "also detect a tail cut off or rewritten since."),
    store: Optional[Path] = StoreOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Check the whole audit chain and name the first broken event. Exit 0: intact; 1: broken.

    Example: expunge audit verify --anchor ~/expunge-anchors.jsonl
    """
    cli = _cli()

    @cli._guard
    def go():
        from expunge import audit

        res = audit.verify(cli._open(store), anchor)
        if json_out:
            cli._emit_json(res)
        elif res["ok"]:
            head = res["head"]
            where = f"head seq {head['seq']}, hash {head['hash']}" if head else "no events yet"
            anchored = f", consistent with {res['anchors']} anchor(s)" if res["anchors"] else ""
            typer.echo(f"Audit chain intact: {res['events']} event(s), {where}{anchored}.")
        else:
            p = res["first_broken"]
            typer.echo(f"Audit chain BROKEN at seq {p['seq']}: {p['problem']}: {p['detail']}")
            for q in res["problems"][1:10]:
                typer.echo(f"  also seq {q['seq']}: {q['problem']}: {q['detail']}")
        if not res["ok"]:
            raise typer.Exit(1)

    go()


@audit_app.command("log")
def log(
    request: Optional[str] = typer.Option(None, "--request", help="Only the events of this request."),
    kind: Optional[str] = typer.Option(None, "--kind", help="Only events of this kind (e.g. approval)."),
    store: Optional[Path] = StoreOpt,
    json_out: bool = JsonOpt,
) -> None:
    """List audit events, oldest first.

    Example: expunge audit log --request req-000001
    """
    cli = _cli()

    @cli._guard
    def go():
        from rich.markup import escape
        from rich.table import Table

        from expunge import audit

        evs = audit.events(cli._open(store), request=request, kind=kind)
        if json_out:
            cli._emit_json({"kind": "expunge.audit.log", "events": evs})
            return
        if not evs:
            typer.echo("No audit events" + (f" of {request}" if request else "") + ".")
            return
        t = Table(show_lines=False)
        for col in ("seq", "at", "kind", "actor", "requests", "details", "hash"):
            t.add_column(col, no_wrap=col in ("seq", "kind", "hash"))
        for e in evs:
            t.add_row(str(e["seq"]), (e["at"] or "?")[:19], e["kind"], escape(e["actor"] or "—"),
                      escape(", ".join(e["requests"]) or "—"), escape(audit.payload_summary(e)), e["hash"][:12])
        cli._console().print(t)

    go()


@audit_app.command("anchor")
def anchor(
    out: Optional[Path] = typer.Option(None, "--out", help="Append the head to this file (outside the store)."),
    store: Optional[Path] = StoreOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Print the head of the (verified) audit chain, and append it to a file kept outside the store:
    `audit verify --anchor FILE` then detects a rewritten or truncated tail.

    Example: expunge audit anchor --out ~/expunge-anchors.jsonl
    """
    cli = _cli()

    @cli._guard
    def go():
        from expunge import audit

        res = audit.anchor(cli._open(store), out)
        if json_out:
            cli._emit_json(res)
        else:
            typer.echo(f"Audit head: seq {res['seq']}, hash {res['hash']}")
            if res["file"]:
                typer.echo(f"Appended to {res['file']}")

    go()


@audit_app.command("export")
def export(
    request: str = typer.Argument(..., help="The request id (req-NNNNNN)."),
    out: Path = typer.Option(..., "--out", help="Directory for the bundle (new or empty)."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out directory."),
    store: Optional[Path] = StoreOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Write a request's evidence bundle: its events with the chain to check them against, impact snapshot,
    plans, approvals, checks, artifact hashes, a summary (Markdown and HTML) and a standalone checker.

    Example: expunge audit export req-000001 --out evidence/req-000001 && python3 evidence/req-000001/verify_bundle.py
    """
    cli = _cli()

    @cli._guard
    def go():
        from expunge import audit

        res = audit.export(cli._open(store), request, out, force=force)
        if json_out:
            cli._emit_json(res)
        else:
            typer.echo(f"Wrote the evidence bundle of {res['request']} to {res['out']}: {res['files']} files, "
                       f"{res['events']} event(s), chain head seq {res['head']['seq']}.")
            typer.echo(f"Check it anywhere: python3 {Path(res['out']) / 'verify_bundle.py'}")
            typer.echo(f"Manifest SHA-256 (quote it when handing the bundle over): {res['manifest_sha256']}")

    go()
