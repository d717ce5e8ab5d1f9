"""`expunge trainers ...`: the module prefixes a re-run may import trainers from (besides expunge's own)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

trainers_app = typer.Typer(help="Which trainer modules re-runs may import (planning never imports one).",
                           no_args_is_help=True)
_StoreOpt = typer.Option(None, "--store", envvar="EXPUNGE_STORE", show_default=False,
                         help="Store directory (default ./.expunge).")
_JsonOpt = typer.Option(False, "--json", help="Print one JSON document.")


def register(app: typer.Typer) -> None:
    app.add_typer(trainers_app, name="trainers")


def _cli():
    from expunge import cli  # late: cli.py imports this module while it is being defined

    return cli


def _change(prefix: str, store: Optional[Path], json_out: bool, allow: bool) -> None:
    cli = _cli()

    @cli._guard
    def go():
        from expunge.orchestrator.trainers import set_store_prefix

        now = set_store_prefix(cli._open(store), prefix, allow=allow)
        if json_out:
            cli._emit_json({"store": now})
        else:
            typer.echo(f"The store now allows trainers under: {', '.join(now) or 'none (expunge.orchestrator.trainers only)'}")

    go()


@trainers_app.command("allow")
def allow(prefix: str = typer.Argument(..., help="A module prefix, e.g. mypkg.train (allows mypkg.train.*)."),
          store: Optional[Path] = _StoreOpt, json_out: bool = _JsonOpt) -> None:
    """Let re-runs of this store's runs import trainers under PREFIX (on module-path boundaries: mypkg
    allows mypkg.x, not mypkgevil). Whoever can write the store can do this: a policy's [trainers] allow
    is the stricter place.

    Example: expunge trainers allow mypkg.train --store ./lineage
    """
    _change(prefix, store, json_out, True)


@trainers_app.command("disallow")
def disallow(prefix: str = typer.Argument(..., help="A prefix the store allows."),
             store: Optional[Path] = _StoreOpt, json_out: bool = _JsonOpt) -> None:
    """Stop allowing a prefix in the store's config.

    Example: expunge trainers disallow mypkg.train --store ./lineage
    """
    _change(prefix, store, json_out, False)


@trainers_app.command("list")
def list_(store: Optional[Path] = _StoreOpt,
          policy: Optional[Path] = typer.Option(None, "--policy", help="Policy TOML file (default: the shipped one)."),
          json_out: bool = _JsonOpt) -> None:
    """The module prefixes trainers may be imported from: expunge's own, the policy's, the store's.

    Example: expunge trainers list --policy policy.toml
    """
    cli = _cli()

    @cli._guard
    def go():
        from expunge.orchestrator.policy import load_policy
        from expunge.orchestrator.trainers import BUILTIN_PREFIX, store_prefixes

        doc = {"builtin": [BUILTIN_PREFIX], "policy": list(load_policy(policy).trainers_allow),
               "store": store_prefixes(cli._open(store))}
        if json_out:
            cli._emit_json(doc)
        else:
            for where, prefixes in doc.items():
                typer.echo(f"{where}: {', '.join(prefixes) or '—'}")

    go()
