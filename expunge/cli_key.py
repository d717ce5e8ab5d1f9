"""`expunge key ...`: where the subject-hash key lives, rotating it, moving it out of an old store."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Optional

import typer

key_app = typer.Typer(help="The subject-hash key: rotate it, or move it out of a store made the old way.",
                      no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the `key` commands to the app, and print warnings (e.g. a key found inside the store) as
    one `warning:` line on stderr rather than Python's two-line form with a source line."""
    app.add_typer(key_app, name="key")
    warnings.showwarning = _one_line_warning


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _cli():
    # Imported late: cli.py imports this module while it is being defined.
    from expunge import cli

    return cli


@key_app.command("rotate")
def rotate(
    store: Optional[Path] = typer.Option(None, "--store", envvar="EXPUNGE_STORE", show_default=False,
                                         help="Store directory (default ./.expunge)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """Re-hash every subject hash under a new key, in one atomic write; the key file gains the new
    layer and the old hashes are deleted from the store. Impact answers stay the same.

    Example: expunge key rotate --store ./lineage
    """
    cli = _cli()

    @cli._guard
    def go():
        from expunge.lineage.rekey import rotate as do_rotate

        res = do_rotate(cli._open(store))
        if json_out:
            cli._emit_json(res)
        else:
            typer.echo(f"Rotated the subject-hash key of {res['store']}: {res['subjects']:,} subject hashes, "
                       f"{res['records']:,} records and {res['requests']:,} requests re-hashed.")
            typer.echo(f"Key file: {res['key_file']} (now {res['key_layers']} layers; back it up again: "
                       "the old copy no longer opens the store)")
            if res["sharded_runs"]:
                typer.echo(f"Note: {res['sharded_runs']} sharded (SISA) run(s) assign shards by the keyed owner "
                           "hash; a shard retrain after this rotation deals rows into different shards.")

    go()


@key_app.command("migrate")
def migrate(
    key_file: Optional[Path] = typer.Option(None, "--key-file", show_default=False,
                                            help="Where to put the key (default: <key dir>/<store id>.key)."),
    rotate_too: bool = typer.Option(False, "--rotate", help="Also rotate the key: the old one, kept in "
                                    "every backup of the store, then no longer matches it."),
    store: Optional[Path] = typer.Option(None, "--store", envvar="EXPUNGE_STORE", show_default=False,
                                         help="Store directory (default ./.expunge)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """Move the key of a store made the old way (<store>/secret.key, or a passphrase) to a key file
    outside the store, and remove the copy inside it.

    Example: expunge key migrate --rotate --store ./lineage
    """
    cli = _cli()

    @cli._guard
    def go():
        from expunge.lineage.rekey import migrate as do_migrate

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the warning this command fixes
            st = cli._open(store)
        res = do_migrate(st, key_file, rotate_too)
        if json_out:
            cli._emit_json(res)
            return
        if res["moved"]:
            typer.echo(f"Moved the subject-hash key of {res['store']} to {res['key_file']}.")
        else:
            typer.echo(f"The subject-hash key of {res['store']} is already outside it: {res['key_file']}.")
        if res["removed_from_store"]:
            typer.echo(f"Removed {res['removed_from_store']} (overwritten, then deleted).")
        if res["from_env"]:
            typer.echo("Unset EXPUNGE_SECRET: the key file is the store's key now.")
        if res["rotated"]:
            typer.echo(f"Rotated the key: {res['rotation']['subjects']:,} subject hashes re-hashed; "
                       "old backups of the store no longer match the key.")
        elif res["removed_from_store"]:
            typer.echo("Backups of the store made before still hold the old key: "
                       "`expunge key rotate` makes them useless for re-identification.")

    go()
