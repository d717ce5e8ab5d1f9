"""The `expunge` command line: parse, call one library function, render (a table or --json).

Errors are one line on stderr and a non-zero exit code (2 for bad input, 3 for
a busy store); never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperGroup

from expunge.errors import BadInput, ExpungeError


def _usage_error_line(exc) -> str:
    """A click usage error as one line: the message, then where the help is (no box, no usage block)."""
    from typer._click import exceptions as click
    msg = " ".join(exc.format_message().split())
    param = getattr(exc, "param", None)
    if isinstance(exc, click.MissingParameter) and param is not None and param.param_type_name == "argument":
        msg = f"Missing argument {param.metavar or param.name.upper()}."
    ctx = getattr(exc, "ctx", None)
    where = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
    return f"error: {msg}{where}"


class ExpungeGroup(TyperGroup):
    """The top-level group: a usage error (unknown option or command, missing or malformed argument) is one
    line on stderr and exit 2, as every other error, instead of typer's rich box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        from typer._click import exceptions as click  # typer 0.2x vendors click

        prog_name = prog_name or "expunge"
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.NoArgsIsHelpError as exc:  # `expunge` alone: the help, as asked
            typer.echo(exc.ctx.get_help())
            sys.exit(0)
        except click.UsageError as exc:
            typer.echo(_usage_error_line(exc), err=True)
            sys.exit(2)
        except click.ClickException as exc:
            typer.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


HELP = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(
    name="expunge",
    cls=ExpungeGroup,
    help="Record-level data lineage and machine-unlearning orchestration.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings=HELP,
)
ingest_app = typer.Typer(help="Capture dataset versions.", no_args_is_help=True)
track_app = typer.Typer(help="Capture training runs and model versions.", no_args_is_help=True)
request_app = typer.Typer(help="Erasure requests.", no_args_is_help=True)
policy_app = typer.Typer(help="The erasure policy.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")
app.add_typer(track_app, name="track")
app.add_typer(request_app, name="request")
app.add_typer(policy_app, name="policy")

StoreOpt = typer.Option(
    None, "--store", envvar="EXPUNGE_STORE", help="Store directory (default ./.expunge).", show_default=False
)
TABLE_LIMIT = 25
STAGE_ORDER = {"production": 0, "staging": 1, "dev": 2, "archived": 3, "superseded": 4}
JsonOpt = typer.Option(False, "--json", help="Print one JSON document valid against its schema in schemas/.")


def _fail(exc: Exception) -> None:
    code = getattr(exc, "exit_code", 1)
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code)


def _emit_json(doc: dict) -> None:
    from expunge.schemas import dumps

    sys.stdout.write(dumps(doc) + "\n")


_WAIT = {"seconds": 0.0}


def _version(value: bool) -> None:
    if value:
        from expunge import __version__

        typer.echo(f"expunge {__version__}")
        raise typer.Exit(0)


@app.callback()
def _global(wait: float = typer.Option(0.0, "--wait", envvar="EXPUNGE_WAIT", metavar="SECONDS",
                                       help="If another expunge process is writing, wait up to SECONDS for it "
                                            "(default: fail at once with 'store is busy', exit 3)."),
            version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                         help="Print expunge's version and exit.")) -> None:
    """Record-level data lineage and machine-unlearning orchestration."""
    if wait < 0:
        raise typer.BadParameter("--wait must be 0 or more seconds")
    _WAIT["seconds"] = wait


def _open(store: Optional[Path]):
    from expunge.lineage.store import Store

    st = Store.open(store)
    st.lock_wait = _WAIT["seconds"]
    return st


def _console():
    from rich.console import Console

    return Console()


def _os_message(exc: OSError) -> str:
    """A system error about a file in plain words, without the `[Errno N]` prefix."""
    name = exc.filename
    if name is None:
        return exc.strerror or str(exc)
    if isinstance(exc, FileNotFoundError):
        return f"no such file: {name}"
    if isinstance(exc, IsADirectoryError):
        return f"{name} is a directory"
    if isinstance(exc, NotADirectoryError):
        return f"{name}: a part of the path is not a directory"
    if isinstance(exc, PermissionError):
        return f"permission denied: {name}"
    if isinstance(exc, FileExistsError):
        return f"{name} already exists"
    return f"{name}: {(exc.strerror or str(exc)).lower()}"


def _guard(fn):
    """Turn expunge errors (and a few system ones) into one line and an exit code."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ExpungeError as exc:
            _fail(exc)
        except OSError as exc:
            _fail(BadInput(_os_message(exc)))
        except json.JSONDecodeError as exc:
            _fail(BadInput(str(exc)))
        except typer.Exit:
            raise
        except Exception as exc:  # a bug: still one line, the traceback on request
            if os.environ.get("EXPUNGE_DEBUG"):
                raise
            typer.echo(f"internal error: {type(exc).__name__}: {exc} (set EXPUNGE_DEBUG=1 for the traceback)", err=True)
            raise typer.Exit(1)

    return wrapper


@app.command()
@_guard
def init(
    store: Optional[Path] = StoreOpt,
    key_file: Optional[Path] = typer.Option(
        None, "--key-file", help="Where to keep the subject-hash key (default: <key dir>/<store id>.key, "
        "the key dir being $EXPUNGE_KEY_DIR or ~/.config/expunge/keys); an existing key file is used.",
        show_default=False),
    json_out: bool = JsonOpt,
) -> None:
    """Create a store, and its subject-hash key file outside it (unless $EXPUNGE_SECRET holds the key).

    Example: expunge init --store ./lineage
    """
    from expunge.lineage.store import Store

    st = Store.init(store, key_file=key_file)
    key = str(st.key.path) if st.key is not None and st.key.path is not None else None
    if json_out:
        _emit_json({"store": str(st.root), "key_file": key})
    else:
        typer.echo(f"Initialised an expunge store at {st.root}")
        if key:
            typer.echo(f"Subject-hash key: {key}, outside the store: backups of the store do not include it. "
                       "Back it up separately; without it the store cannot find a subject.")
        else:
            typer.echo("Subject-hash key: $EXPUNGE_SECRET (a passphrase is stretched with scrypt; it is kept nowhere)")


@ingest_app.command("source")
@_guard
def ingest_source(
    file: Path = typer.Argument(..., help="Parquet or CSV file."),
    name: str = typer.Option(..., "--name", help="Dataset name; each ingest adds a version."),
    subject_col: str = typer.Option(..., "--subject-col", help="Column holding the data subject id."),
    record_col: str = typer.Option(..., "--record-col", help="Column holding the record id (unique)."),
    store: Optional[Path] = StoreOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Add a source dataset version.

    Example: expunge ingest source customers.parquet --name customers --subject-col customer_id --record-col row_id
    """
    info = _open(store).ingest_source(file, name=name, subject_col=subject_col, record_col=record_col)
    _report_version(info, json_out)


def _parse_sources(items: List[str]) -> Optional[dict]:
    if not items:
        return None
    out = {}
    for item in items:
        parent, sep, col = item.partition("=")
        if not sep or not parent or not col:
            raise BadInput(f"--source takes PARENT=COLUMN, got {item!r}")
        out[parent] = col
    return out


@ingest_app.command("dataset")
@_guard
def ingest_dataset(
    file: Path = typer.Argument(..., help="Parquet or CSV file with the derived rows."),
    name: str = typer.Option(..., "--name", help="Dataset name; each ingest adds a version."),
    parent: List[str] = typer.Option([], "--parent", help="Parent version (name@N, or name for the latest; repeatable)."),
    kind: str = typer.Option(..., "--kind", help="filter, sample, split, select (subsets of one parent); join, aggregate, augment (rows built "
                                         "from records of the parents); union (rows stacked from two or more parents, "
                                         "each row's id in its parent's --source column, empty in the others)."),
    record_col: Optional[str] = typer.Option(None, "--record-col", help="Subsets: column of the parent row ids kept."),
    source: List[str] = typer.Option([], "--source", help="Compositions and unions: PARENT=COLUMN of that parent's row ids (repeatable: one per parent)."),
    row_col: Optional[str] = typer.Option(None, "--row-col", help="Compositions: column of the new row ids."),
    store: Optional[Path] = StoreOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Add a derived dataset version (a subset of a parent, or rows built from several records).

    Example: expunge ingest dataset adults.csv --name adults --parent customers --kind filter --record-col row_id
    """
    info = _open(store).ingest_dataset(
        file, name=name, parents=parent, kind=kind, record_col=record_col,
        sources=_parse_sources(source), row_col=row_col,
    )
    _report_version(info, json_out)


def _report_version(info, json_out: bool) -> None:
    if json_out:
        _emit_json(info.to_dict())
    else:
        extra = f", {info.new_records:,} new" if info.kind == "source" else ""
        if info.skipped:
            extra += f"; skipped {info.skipped:,} row(s) of forgotten subjects (tombstoned)"
        typer.echo(f"Added {info.id} ({info.kind}): {info.rows:,} rows, {info.records:,} records{extra}")


@track_app.command("run")
@_guard
def track_run(
    manifest: Path = typer.Option(..., "--manifest", help="Run manifest JSON (schemas/run_manifest.schema.json)."),
    store: Optional[Path] = StoreOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Record a training run and its model versions from a manifest.

    Example: expunge track run --manifest run.json
    """
    try:
        doc = json.loads(manifest.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise BadInput(f"{manifest} is not UTF-8 text (byte {exc.start}): a run manifest is JSON") from None
    except json.JSONDecodeError as exc:
        raise BadInput(f"{manifest} is not valid JSON: {exc}") from None
    result = _open(store).record_run(doc, base_dir=manifest.resolve().parent)
    if json_out:
        _emit_json(result)
    else:
        if result["run"]:
            typer.echo(f"Recorded run {result['run']['id']} ({result['run']['inputs']} input(s), "
                       f"{result['run']['checkpoints']} checkpoint(s))")
        for m in result["models"]:
            sha = f"sha256 {m['sha256'][:12]}…" if m.get("sha256") else "no file recorded"
            typer.echo(f"Registered model {m['id']} ({m['stage']}, {sha})")


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _read_subjects_where(subject: List[str], subjects_file: Optional[Path]) -> tuple[List[str], List[str]]:
    """The subject ids given, in order, and where each came from ("the 2nd --subject", "line 3 of ids.txt"):
    messages name the place, never the id. A file is UTF-8 whatever the locale (a byte-order mark is not part of
    its first id); one id per line exactly as written, only the line break removed; blank lines are skipped."""
    subs, where = [], []
    for n, s in enumerate(subject, 1):
        if s == "":
            raise BadInput(f"the {_ordinal(n)} --subject is an empty subject id: it can never match a subject")
        subs.append(s)
        where.append(f"the {_ordinal(n)} --subject")
    if subjects_file is not None:
        stdin = str(subjects_file) == "-"
        name = "stdin" if stdin else str(subjects_file)
        raw = sys.stdin.buffer.read() if stdin else subjects_file.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw[:exc.start].count(b"\n") + 1
            raise BadInput(f"{name} is not UTF-8 text (line {line}): save it as UTF-8") from None
        for n, line in enumerate(text.split("\n"), 1):
            if line.endswith("\r"):
                line = line[:-1]
            if line != "":
                subs.append(line)
                where.append(f"line {n} of {name}")
    if not subs:
        raise BadInput("give at least one --subject or a --subjects-file")
    return subs, where


def _read_subjects(subject: List[str], subjects_file: Optional[Path]) -> List[str]:
    return _read_subjects_where(subject, subjects_file)[0]


@app.command()
@_guard
def impact(
    subject: List[str] = typer.Option([], "--subject", help="Raw subject id (repeatable)."),
    subjects_file: Optional[Path] = typer.Option(
        None, "--subjects-file", help="File with one subject id per line ('-' for stdin)."),
    show_all: bool = typer.Option(False, "--all", help=f"Show every row, not the first {TABLE_LIMIT} per table."),
    store: Optional[Path] = StoreOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Show every dataset version, run and model version the subjects' records touched.

    Example: expunge impact --subject cust-0042 --json
    """
    subs, where = _read_subjects_where(subject, subjects_file)
    result = _open(store).impact(subs)
    missing = _missing_places(subs, where, result.missing)
    if json_out:
        doc = result.to_dict()
        if missing:
            doc["subjects"]["missing"] = missing
        _emit_json(doc)
    else:
        render_impact(result, limit=None if show_all else TABLE_LIMIT, missing=missing)


def _missing_places(subs: List[str], where: List[str], missing: List[int]) -> List[str]:
    """Where each subject not found was given (every place, if given twice). The ids themselves are not
    repeated back: this output ends up in tickets and logs, and the position is enough to find the id."""
    if not missing:
        return []
    unique = list(dict.fromkeys(subs))
    gone = {unique[k] for k in missing}
    return [w for s, w in zip(subs, where) if s in gone]



def _say(console, markup: str, hang: int = 2, **kw) -> None:
    """Print a paragraph wrapped to the console's width with a hanging indent: the continuation lines start
    `hang` columns right of the first (which keeps its own leading spaces), never at column 0. Leading and
    trailing newlines print as blank lines."""
    body = markup.strip("\n")
    for _ in range(len(markup) - len(markup.lstrip("\n"))):
        console.print()
    if console.soft_wrap:  # a console asked not to wrap (the terminal will): one line
        console.print(body, soft_wrap=True, **kw)
    else:
        _hang(console, body, hang, **kw)
    for _ in range(len(markup) - len(markup.rstrip("\n"))):
        console.print()


def _hang(console, body: str, hang: int, **kw) -> None:
    from rich.text import Text

    text = Text.from_markup(body)
    indent = len(text.plain) - len(text.plain.lstrip(" "))
    text = text[indent:]
    width = max(20, console.width - indent - hang)
    for k, line in enumerate(text.wrap(console, width, overflow="fold")):
        console.print(Text(" " * (indent + (hang if k else 0))) + line, soft_wrap=True, **kw)


def _more(console, shown: int, total: int, what: str) -> None:
    if total > shown:
        _say(console, f"… and {total - shown:,} more {what} (--all shows every row, --json gives the document)")


def _how_affected(model: dict, roles: set[str]) -> str:
    """How a directly affected model met the records: its run's roles that held them (an eval-only use is not
    training)."""
    if "train" in roles or not roles:
        return "trained on the records"
    used = " and ".join(w for r, w in (("val", "validated"), ("eval", "evaluated")) if r in roles)
    return f"{used} on the records (not trained)"


def render_impact(result, console=None, limit: int | None = TABLE_LIMIT, missing: List[str] = ()) -> None:
    """The impact as text; every name from the store (datasets, runs, models) is escaped, not read as markup.
    `missing`: where the subjects not found were given (shown, the first ten)."""
    from rich.markup import escape

    console = console or _console()
    if result.empty:
        n = result.requested
        _say(
            console,
            f"No records for {'this subject' if n == 1 else f'these {n} subjects'} in the store: "
            "nothing was touched."
        )
        return
    from rich.table import Table

    stages: dict[str, int] = {}
    for m in result.models:
        stages[m["stage"]] = stages.get(m["stage"], 0) + 1
    by_stage = ", ".join(f"{n:,} {st}" for st, n in sorted(stages.items(), key=lambda x: STAGE_ORDER.get(x[0], 9)))
    gone = ""
    if missing:
        more = f" and {len(missing) - 10:,} more" if len(missing) > 10 else ""
        gone = f" (not found: {escape(', '.join(missing[:10]))}{more})"
    _say(
        console,
        f"[bold]{result.found}[/] of {result.requested} subject(s) found{gone}: [bold]{result.records:,}[/] record(s) in "
        f"{len(result.datasets):,} dataset version(s), {len(result.runs):,} run(s), {len(result.models):,} model "
        f"version(s)" + (f" ({by_stage})." if by_stage else ".")
    )
    t = Table(title="Dataset versions", title_justify="left")
    for col in ("version", "kind", "parents", "records", "rows"):
        t.add_column(col, justify="right" if col in ("records", "rows") else "left", no_wrap=col == "version")
    datasets = sorted(result.datasets, key=lambda d: -d["records"])[:limit]
    for d in datasets:
        t.add_row(escape(d["id"]), d["kind"], escape(", ".join(d["parents"])) or "—", f"{d['records']:,}",
                  f"{d['rows']:,}")
    console.print(t)
    _more(console, len(datasets), len(result.datasets), "dataset versions")
    if result.runs:
        t = Table(title="Training runs", title_justify="left")
        for col in ("run", "records", "inputs", "shards (first slice)", "clean checkpoint"):
            t.add_column(col, justify="right" if col == "records" else "left", no_wrap=col == "run")
        runs = sorted(result.runs, key=lambda r: -r["records"])[:limit]
        for r in runs:
            inputs = escape(", ".join(f"{i['dataset']} ({i['role']}: {i['records']:,})" for i in r["inputs"]
                                      if i["records"]))
            shards = ", ".join(
                f"{s['shard']}" + (f" ({s['first_slice']})" if s["first_slice"] is not None else "")
                for s in r["shards"]
            ) or "—"
            fs = r["first_seen"]
            if fs is None:
                ck = "—"
            elif fs["last_clean_step"] is None:
                ck = "none (seen before the first)"
            else:
                ck = f"step {fs['last_clean_step']:,}"
            t.add_row(escape(r["id"]), f"{r['records']:,}", inputs, shards, ck)
        console.print(t)
        _more(console, len(runs), len(result.runs), "runs")
    if result.models:
        t = Table(title="Model versions", title_justify="left")
        for col in ("model", "stage", "run", "how affected"):
            t.add_column(col, no_wrap=col == "model")
        models = sorted(result.models, key=lambda m: (STAGE_ORDER.get(m["stage"], 9), m["name"], m["version"]))
        models = models[:limit]
        roles = {r["id"]: {i["role"] for i in r["inputs"] if i["records"]} for r in result.runs}
        for m in models:
            how = _how_affected(m, roles.get(m["run"], set())) if m["direct"] else escape(" → ".join(
                f"{p['model']} ({p['relation']})" for p in m["path"]
            ))
            stage = f"[bold red]{m['stage']}[/]" if m["stage"] == "production" else escape(m["stage"])
            t.add_row(escape(m["id"]), stage, escape(m["run"] or "—"), how)
        console.print(t)
        _more(console, len(models), len(result.models), "model versions")


PolicyOpt = typer.Option(None, "--policy", help="Policy TOML file (default: the one shipped with expunge).")


@request_app.command("create")
@_guard
def request_create(
    subject: List[str] = typer.Option([], "--subject", help="Raw subject id (repeatable)."),
    subjects_file: Optional[Path] = typer.Option(None, "--subjects-file", help="One subject id per line."),
    category: Optional[str] = typer.Option(None, "--category", help="Data category (policy decides the rules)."),
    deadline: Optional[int] = typer.Option(None, "--deadline", help="Days until the deadline (default: policy's)."),
    reason: Optional[str] = typer.Option(None, "--reason", help="Free text kept with the request."),
    policy: Optional[Path] = PolicyOpt,
    store: Optional[Path] = StoreOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Record an erasure request (subject ids are hashed on the way in).

    Example: expunge request create --subject cust-0042 --category marketing --reason "unsubscribe"
    """
    from expunge.orchestrator import requests as rq
    from expunge.orchestrator.policy import policy_for

    st = _open(store)
    r = rq.create(st, _read_subjects(subject, subjects_file), category=category, deadline_days=deadline,
                  reason=reason, policy=policy_for(st, policy))
    found = rq.subjects_found(st, r.id)
    if json_out:
        _emit_json(r.to_dict() | {"subjects_found": found})
    else:
        typer.echo(f"Recorded {r.id}: {r.subjects} subject(s), {found} of {r.subjects} found in the store, "
                   f"category {r.category}, deadline {r.deadline_at:%Y-%m-%d %H:%M} UTC")
    if found < r.subjects:
        typer.echo(f"warning: {r.id}: only {found} of {r.subjects} subject(s) found in the store (a mistyped id? "
                   "a wrong key?); its plan cannot be approved without --force and a reason", err=True)


@request_app.command("list")
@_guard
def request_list(
    status: Optional[str] = typer.Option(None, "--status", help="Only requests with this status."),
    store: Optional[Path] = StoreOpt,
    json_out: bool = JsonOpt,
) -> None:
    """List erasure requests.

    Example: expunge request list --status received
    """
    from expunge.orchestrator import requests as rq

    reqs = rq.list_requests(_open(store), status)
    if json_out:
        _emit_json({"requests": [r.to_dict() for r in reqs]})
        return
    if not reqs:
        typer.echo("No erasure requests.")
        return
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="Erasure requests", title_justify="left")
    for col in ("request", "status", "category", "subjects", "received", "deadline"):
        t.add_column(col)
    for r in reqs:
        t.add_row(r.id, r.status, escape(r.category), str(r.subjects), f"{r.received_at:%Y-%m-%d}", f"{r.deadline_at:%Y-%m-%d}")
    _console().print(t)


@request_app.command("show")
@_guard
def request_show(
    request_id: str = typer.Argument(..., help="Request id, e.g. req-000001."),
    store: Optional[Path] = StoreOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Show one erasure request.

    Example: expunge request show req-000001 --json
    """
    from expunge.orchestrator import planner
    from expunge.orchestrator import requests as rq

    st = _open(store)
    r = rq.get(st, request_id)
    doc = r.to_dict() | {"subjects_found": rq.subjects_found(st, r.id),
                         "plans": [{"id": p["id"], "state": p["state"], "created_at": p["created_at"]}
                                   for p in planner.list_plans(st, r.id)]}
    if json_out:
        _emit_json(doc)
        return
    for k, v in doc.items():
        if k == "plans":
            continue
        typer.echo(f"{k:15} {'—' if v is None else v}")
    if not doc["plans"]:
        typer.echo(f"{'plans':15} none yet (expunge plan {r.id})")
    for n, p in enumerate(doc["plans"]):
        typer.echo(f"{'plans' if n == 0 else '':15} {p['id'][:12]}  {p['state']:10} {p['created_at'][:16]}")


@policy_app.command("show")
@_guard
def policy_show(policy: Optional[Path] = PolicyOpt, store: Optional[Path] = StoreOpt,
                json_out: bool = JsonOpt) -> None:
    """Show a policy: the file given, else the store's (`expunge policy set`), else the one shipped with expunge.

    Example: expunge policy show --policy policy.toml
    """
    from expunge.lineage.store import resolve_root
    from expunge.orchestrator.policy import load_policy, store_policy

    if policy is None and (store is not None or (resolve_root(None) / "STORE").exists()):
        p = store_policy(_open(store))
    else:
        p = load_policy(policy)
    if json_out:
        _emit_json(p.to_dict())
        return
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    _say(console, f"Policy: {escape(p.source)}. Default category: {escape(p.default_category)}. Retiring models "
                  f"{'allowed' if p.allow_retire else 'not allowed'}. Approval: "
                  f"{f'{p.approvers} approver(s)' if p.approval_required else 'not required'}.")
    t = Table(title="Categories", title_justify="left")
    for col in ("category", "weakest guarantee", "deadline (days)", "approximate results checked by"):
        t.add_column(col)
    for name, c in sorted(p.categories.items()):
        t.add_row(escape(name), c.weakest_guarantee, str(c.deadline_days), c.check)
    console.print(t)
    _say(console, f"Approximate results must pass: membership-inference AUC ≤ {p.max_mia_auc} (mia) or ≤ a retrained "
                  f"reference's + {p.max_mia_auc_gap} (mia_retrained), and an accuracy drop ≤ {p.max_accuracy_drop}.")
    _say(console, f"Residual risk: the strongest guarantee priced within {p.max_premium:g}× the cheapest admissible "
                  f"action. Withdrawn models {'are' if p.retire_withdrawn else 'are not'} retired at no cost. "
                  f"Costs: {p.cpu_hour}/CPU-hour, {p.gpu_hour}/GPU-hour.")
    for name, m in sorted(p.models.items()):
        _say(console, f"Model {escape(name)}: never retire={m.never_retire}, always retrain={m.always_retrain}")


class PlanGroup(TyperGroup):
    """`expunge plan`: the subcommands list, show and approve, and `make` (the default): `expunge plan REQUEST...`
    is `expunge plan make REQUEST...`, whatever the order of its options and request ids."""

    def parse_args(self, ctx, args):
        args = list(args)
        if args and not any(a in ctx.help_option_names for a in args[:1]):
            takes_value = {o for cmd in self.commands.values() for p in cmd.params
                           if getattr(p, "param_type_name", "") == "option" and not p.is_flag for o in p.opts}
            first = None
            k = 0
            while k < len(args):
                a = args[k]
                if a == "--":
                    first = k + 1 if k + 1 < len(args) else None
                    break
                if a.startswith("-"):
                    k += 2 if a in takes_value else 1
                    continue
                first = k
                break
            if first is not None and args[first] in self.commands:
                args = [args[first]] + args[:first] + args[first + 1:]
            else:
                args = ["make"] + args
        return super().parse_args(ctx, args)


plan_app = typer.Typer(
    cls=PlanGroup, no_args_is_help=True,
    help="Plan erasure requests (per affected model the action the policy prefers), list, show or approve plans. "
         "`expunge plan REQUEST...` makes a plan (the `make` command).")
app.add_typer(plan_app, name="plan")
AllPlanOpt = typer.Option(False, "--all", help=f"Show every model, not the {TABLE_LIMIT} that matter most.")


def _print_plan(st, doc: dict, pieces, json_out: bool, show_all: bool) -> None:
    from expunge.orchestrator import planner

    if json_out:
        sys.stdout.write(planner.dumps(doc, pieces) + "\n")
    else:
        render_plan(doc, limit=None if show_all else TABLE_LIMIT)
    subj = doc["subjects"]
    if subj["found"] < subj["requested"]:
        typer.echo(f"warning: only {subj['found']} of {subj['requested']} subject(s) found in the store", err=True)
    if doc["blocked"]:
        raise planner.NoAdmissibleAction(
            f"no admissible action for {', '.join(doc['blocked'])} (see the plan for the rules that block it)")


@plan_app.command("make")
@_guard
def plan_make(
    request: List[str] = typer.Argument(..., help="Request ids, e.g. req-000001."),
    replan: bool = typer.Option(False, "--replan", help="Plan a request that has an approved plan (it lapses)."),
    show_all: bool = AllPlanOpt,
    policy: Optional[Path] = PolicyOpt,
    store: Optional[Path] = StoreOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Make and save a plan for erasure requests (the default: `expunge plan REQUEST...`).

    Under the store's policy (or --policy): per affected model the action the policy prefers. Exit 4 if a model
    has no admissible action.

    Example: expunge plan req-000001 req-000002 --json
    """
    from expunge.orchestrator import planner
    from expunge.orchestrator.policy import policy_for

    st = _open(store)
    planner.check_replan(st, request, replan)
    doc, pieces = planner.plan_and_encode(st, request, policy_for(st, policy))
    planner.save_plan(st, doc, pieces, replan=replan)
    doc["approvals"] = []  # a new plan (a re-made identical one keeps its id and approvals)
    if planner.plan_exists_with_approvals(st, doc["id"]):
        doc, pieces = planner.load_plan(st, doc["id"]), None
    _print_plan(st, doc, pieces, json_out, show_all)


@plan_app.command("list")
@_guard
def plan_list(
    request: Optional[str] = typer.Option(None, "--request", help="Only the plans of this request."),
    store: Optional[Path] = StoreOpt,
    json_out: bool = JsonOpt,
) -> None:
    """List saved plans, newest first, with their state.

    States: planned, approved, blocked, superseded, lapsed, running, ran.

    Example: expunge plan list --request req-000001
    """
    from expunge.orchestrator import planner

    plans = planner.list_plans(_open(store), request)
    if json_out:
        _emit_json({"plans": plans})
    else:
        render_plan_list(plans)


@plan_app.command("show")
@_guard
def plan_show(
    plan: str = typer.Argument(..., help="Plan id (or a prefix of 8+ characters)."),
    show_all: bool = AllPlanOpt,
    store: Optional[Path] = StoreOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Show a saved plan; one whose content no longer matches its id is refused.

    Example: expunge plan show 5d93380232af
    """
    from expunge.orchestrator import planner

    st = _open(store)
    _print_plan(st, planner.load_plan(st, plan), None, json_out, show_all)


@plan_app.command("approve")
@_guard
def plan_approve(
    plan: str = typer.Argument(..., help="Plan id (or a prefix of 8+ characters)."),
    key: Optional[Path] = typer.Option(None, "--key", help="The approver's Ed25519 private key file."),
    force: bool = typer.Option(False, "--force", help="Approve a plan that misses subjects (needs --reason)."),
    reason: Optional[str] = typer.Option(None, "--reason", help="With --force: why (kept with the approval)."),
    show_all: bool = AllPlanOpt,
    store: Optional[Path] = StoreOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Sign a plan with an approver's key named in the store's policy.

    A changed, stale, blocked or replaced plan, or one made under another policy than the store's, is refused;
    one that misses subjects needs --force.

    Example: expunge plan approve 5d93380232af --key ~/.ssh/expunge-dpo
    """
    from expunge.orchestrator import planner

    if not key:
        raise BadInput("expunge plan approve needs --key KEY: approvals are signed with an approver's key "
                       "named in the policy")
    st = _open(store)
    _print_plan(st, planner.approve(st, plan, key, force=force, reason=reason), None, json_out, show_all)


@policy_app.command("set")
@_guard
def policy_set(
    policy_file: Path = typer.Argument(..., help="Policy TOML file."),
    store: Optional[Path] = StoreOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Make a policy file the store's policy: plans are made under it, and only plans made under it can be
    approved (its approvers' keys decide who may approve). The store keeps a copy under its hash.

    Example: expunge policy set policy.toml
    """
    from expunge.orchestrator.policy import set_store_policy

    p = set_store_policy(_open(store), policy_file)
    if json_out:
        _emit_json({"policy": p.source, "sha256": p.sha256(), "approvers": sorted(p.approver_keys)})
    else:
        typer.echo(f"The store's policy is now {p.source} ({p.sha256()[:12]}); approvers: "
                   f"{', '.join(sorted(p.approver_keys)) or 'none named (plans cannot be approved)'}")


approver_app = typer.Typer(help="Approvers' signing keys.", no_args_is_help=True)
app.add_typer(approver_app, name="approver")


@approver_app.command("keygen")
@_guard
def approver_keygen(
    name: str = typer.Argument(..., help="The approver's name, as the policy will list it."),
    out: Path = typer.Option(..., "--out", help="Where to write the private key (mode 0600; never overwritten)."),
    json_out: bool = JsonOpt,
) -> None:
    """Make an Ed25519 key pair for an approver and print the policy line that names them.

    Example: expunge approver keygen dpo --out ~/.ssh/expunge-dpo
    """
    from expunge.orchestrator.approvals import keygen

    line = keygen(out, name)
    entry = f'{name} = "{" ".join(line.split()[:2])}"'
    if json_out:
        _emit_json({"name": name, "private_key": str(out), "public_key": line, "policy_line": entry})
    else:
        typer.echo(f"Private key: {out} (keep it secret; `expunge plan approve PLAN --key {out}`)")
        typer.echo("Add to the policy's [approval.keys] table, then `expunge policy set` it:")
        typer.echo(f"  {entry}")


def render_plan_list(plans: list[dict], console=None) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = console or _console()
    if not plans:
        console.print("No plans.")
        return
    if console.width < 110:  # one line per plan: a table would cut ids and dates
        _say(console, "Plans, newest first:")
        for p in plans:
            state = p["state"] + (f" by {p['superseded_by'][:12]}" if p["superseded_by"] else "")
            _say(console, f"  [bold]{p['id'][:12]}[/] {state}; {escape(', '.join(p['requests']))}; made "
                          f"{p['created_at'][:16].replace('T', ' ')} UTC; {p['models']:,} model(s), "
                          f"{_secs(p['total_seconds'])}; approvals {p['approvals']} of {p['approvals_needed']}; "
                          f"subjects found {p['subjects']['found']} of {p['subjects']['requested']}",
                          highlight=False)
        return
    t = Table(title="Plans, newest first", title_justify="left")
    for col in ("plan", "created (UTC)", "requests", "state", "models", "est. time", "approvals", "subjects found"):
        t.add_column(col, no_wrap=col in ("plan", "created (UTC)"))
    for p in plans:
        state = p["state"] + (f" by {p['superseded_by'][:12]}" if p["superseded_by"] else "")
        t.add_row(p["id"][:12], p["created_at"][:16].replace("T", " "), escape(", ".join(p["requests"])), state,
                  f"{p['models']:,}", _secs(p["total_seconds"]), f"{p['approvals']} of {p['approvals_needed']}",
                  f"{p['subjects']['found']} of {p['subjects']['requested']}")
    console.print(t)


@app.command("run")
@_guard
def run_cmd(
    plan_id: str = typer.Argument(..., help="Plan id (or a prefix of 8+ characters)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check the plan and show what would run; change nothing."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Run up to N independent actions at once (worker processes)."),
    executor: str = typer.Option("local", "--executor", help="Where actions run: local (this machine)."),
    store: Optional[Path] = StoreOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Carry out an approved plan: each action in the plan's order, resumable after a crash or Ctrl-C.

    Refused: a plan changed since it was made, replaced by a newer one, lacking its signed approvals, or stale
    (the store changed since). Each action is applied exactly once; running the command again resumes.

    Example: expunge run 5d93380232af
    """
    from expunge.orchestrator.execute import run_plan

    if executor != "local":
        raise BadInput(f"unknown executor {executor!r}: this expunge runs actions with 'local' (a cluster executor "
                       "implements the same submit/shutdown interface: expunge.orchestrator.execute.LocalExecutor)")
    st = _open(store)
    if jobs < 1:
        raise BadInput("--jobs must be at least 1")
    from expunge.orchestrator.planner import load_plan

    load_plan(st, plan_id)  # an unknown or changed plan: one line, before any progress bar
    if dry_run or json_out:
        result = run_plan(st, plan_id, dry_run=dry_run, jobs=jobs)
    else:
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
                      "{task.total}"), TimeElapsedColumn(), console=_console(), transient=True) as bar:
            task = bar.add_task("Unlearning", total=None)

            def event(kind: str, info: dict) -> None:
                from rich.markup import escape

                item = info["item"]
                if bar.tasks[task].total is None:
                    bar.update(task, total=len(info.get("all", [])) or None)
                if kind == "start":
                    bar.update(task, description=f"{item['order']}. {escape(item['model'])}: {item['chosen']['action']}")
                elif kind in ("done", "skip"):
                    bar.advance(task)

            result = run_plan(st, plan_id, jobs=jobs, on_event=event)
    if json_out:
        _emit_json(result)
    else:
        render_run(result)


@app.command("residuals")
@_guard
def residuals_cmd(
    request_id: str = typer.Argument(..., help="Request id, e.g. req-000001."),
    purge: bool = typer.Option(False, "--purge", help="Delete the copies that are present and not held."),
    store: Optional[Path] = StoreOpt,
    json_out: bool = JsonOpt,
) -> None:
    """List (or --purge) the files that still hold a request's erased records' influence after its plan ran:
    superseded and retired model versions and their checkpoints. A file is deleted only if its content is
    still the recorded one; a policy hold keeps it, and says why.

    Example: expunge residuals req-000001 --purge
    """
    from expunge.orchestrator import residuals as res

    st = _open(store)
    got = res.purge(st, request_id) if purge else res.residuals(st, request_id)
    if json_out:
        _emit_json(got)
        return
    from collections import Counter

    from rich.markup import escape

    console = _console()
    if not got["plans"]:
        _say(console, f"No plan of {request_id} has run yet: nothing is residual.")
        return
    counts = Counter(r["state"] for r in got["residuals"])
    _say(console, f"{request_id}: {len(got['residuals'])} residual file(s): "
                  + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ".")
    for r in got["residuals"]:
        console.print(f"  {r['state']:9} {r['kind']:10} {escape(r['model'])}  {escape(r['path'])}  ({escape(r['why'])})",
                      highlight=False, soft_wrap=True)
    if counts.get("present"):
        console.print(f"Delete them with: expunge residuals {request_id} --purge", soft_wrap=True)


def render_run(result: dict, console=None) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = console or _console()
    head = "Would run" if result["dry_run"] else "Ran"
    _say(console, f"{head} plan [bold]{result['plan'][:16]}[/] for {escape(', '.join(result['requests']))}: "
                  f"{result['done']} of {result['total']} action(s) done.")
    if console.width < 120:  # one entry per action: a table would cut the names
        for a in result["actions"]:
            check = "pending check" if a["pending_check"] else a["check"]
            actual = _secs(a["actual_seconds"]) if a["actual_seconds"] is not None else "—"
            new = f" → {escape(a['new_model'])}" if a["new_model"] else ""
            _say(console, f"  {a['order']}. [bold]{escape(a['model'])}[/]{new}: {a['action']} {a['state']}; "
                          f"est. {_secs(a['estimated_seconds'])}, actual {actual}; {a['guarantee']}, {check}"
                          + (f"; [red]{escape(a['error'])}[/]" if a["error"] else ""), hang=4)
        return
    t = Table(title="Actions", title_justify="left")
    for col in ("#", "model", "action", "state", "new version", "est.", "actual", "guarantee", "check"):
        t.add_column(col, no_wrap=col in ("model", "new version"))
    for a in result["actions"]:
        check = "pending check" if a["pending_check"] else a["check"]
        t.add_row(str(a["order"]), escape(a["model"]), a["action"], a["state"], escape(a["new_model"] or "—"),
                  _secs(a["estimated_seconds"]), _secs(a["actual_seconds"]) if a["actual_seconds"] is not None
                  else "—", a["guarantee"], check)
    console.print(t)


model_app = typer.Typer(help="Model versions.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("stage")
@_guard
def model_stage(
    model: str = typer.Argument(..., help="Model version, name@N (or name for the latest)."),
    stage: str = typer.Argument(..., help="dev | staging | production | archived | superseded"),
    reason: str = typer.Option(..., "--reason", help="Why (kept in the lineage)."),
    store: Optional[Path] = StoreOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Retire (archived) or restage a model version; the change and its reason are recorded in the lineage.

    A model that is archived is no longer served: plans retire it at no cost, whatever the policy says about
    retiring models, so a model-only child that blocks every plan can be dealt with.

    Example: expunge model stage churn-student@1 archived --reason "replaced by churn-student@2"
    """
    change = _open(store).set_model_stage(model, stage, reason=reason)
    if json_out:
        _emit_json(change)
    else:
        typer.echo(f"{change['model']}: {change['from']} → {change['to']} ({change['reason']})")


def _secs(x: float) -> str:
    from expunge.orchestrator.costs import format_seconds

    return format_seconds(x)


def _money(x: float) -> str:
    return "<0.01" if 0 < x < 0.01 else f"{x:,.2f}"


def _plan_items_shown(items: list[dict], limit: int | None) -> list[dict]:
    """All items, or: the blocked ones and then the costliest, up to `limit`, in the plan's order."""
    if limit is None or len(items) <= limit:
        return items
    rank = sorted(range(len(items)), key=lambda k: (items[k]["chosen"] is not None,
                                                    -(items[k]["chosen"] or {}).get("seconds", 0.0), k))
    keep = set(rank[:limit])
    return [i for k, i in enumerate(items) if k in keep]


def _plan_more(console, items: list[dict], shown: list[dict]) -> None:
    if len(shown) == len(items):
        return
    from collections import Counter

    ids = {i["model"] for i in shown}
    rest = Counter((i["chosen"] or {}).get("action", "with no admissible action") for i in items
                   if i["model"] not in ids)
    _more(console, len(shown), len(items), "models: " + ", ".join(f"{n:,} {a}" for a, n in rest.most_common()))


def _check_text(c: dict) -> str:
    chk = c.get("check") or {}
    if chk.get("kind") in (None, "lineage"):
        return "lineage proof"
    if chk["kind"] == "certificate":
        return "certificate"
    return f"{chk['kind']} check {_secs(chk['seconds'])}"


def render_plan(doc: dict, console=None, limit: int | None = TABLE_LIMIT) -> None:
    from rich.markup import escape

    console = console or _console()
    subj = doc["subjects"]
    _say(console, f"Plan [bold]{doc['id'][:16]}[/] for {escape(', '.join(doc['requests']))}: {doc['records']:,} "
                  f"record(s) of {subj['found']} of {subj['requested']} subject(s) found; policy "
                  f"{escape(doc['policy']['source'])}.")
    if subj["found"] < subj["requested"]:
        _say(console, f"[bold yellow]Warning:[/] only {subj['found']} of {subj['requested']} subject(s) are in the "
                      "store: the plan covers only those found (a mistyped id? a wrong key?). Approving it needs "
                      "--force and a reason.")
    if doc.get("superseded_by"):
        lapsed = " (its approval lapsed)" if doc.get("lapsed_at") else ""
        _say(console, f"[bold yellow]Replaced[/] by plan {doc['superseded_by'][:16]}{lapsed}: it cannot be approved.")
    if not doc["items"]:
        _say(console, "No model trained on these records: nothing to unlearn.")
    deadlines = sorted({i["deadline"][:10] for i in doc["items"]})
    shown = _plan_items_shown(doc["items"], limit)
    if len(shown) < len(doc["items"]):
        _say(console, f"The {len(shown)} of {len(doc['items']):,} models that matter most: those with no admissible "
                      "action, then the costliest.")
    if doc["items"] and console.width < 110:  # a table would truncate ids and reasons: one entry per model
        _say(console, "Actions, in the order they run (deadline " + ", ".join(deadlines) + "):")
        for i in shown:
            c, ru = i["chosen"], i["runner_up"]
            touched = f"{i['records']:,} record(s)" if i["direct"] else "derived from an affected model"
            head = f"  {i['order']}. [bold]{escape(i['model'])}[/] ({i['stage']}, {touched}): "
            if c is None:
                _say(console, head + "[bold red]no admissible action[/]", hang=4)
                for why in i["blocked_by"]:
                    _say(console, f"      blocked: {escape(why)}")
                continue
            cost = f", cost {_money(c['cost'])}" if c["cost"] >= 0.01 else ""
            _say(console, head + f"{c['action']} — {c['guarantee']}, {_secs(c['seconds'])}{cost}", hang=4)
            after = (f"starts from the unlearned {escape(', '.join(i['after']))}; "
                     if i["after"] and c["action"] == "rederive_from_parent" else "")
            _say(console, f"      {after}must pass: {_check_text(c)}")
            if ru:
                _say(console, f"      runner-up {ru['action']}: {escape(ru['why_not'])}")
    elif doc["items"]:
        _plan_table(shown, deadlines, console)
    _plan_more(console, doc["items"], shown)
    _plan_footer(doc, console)


def _plan_table(items: list[dict], deadlines: list[str], console) -> None:
    from rich.markup import escape
    from rich.table import Table

    narrow = console.width < 150
    if narrow and len(deadlines) == 1:
        _say(console, f"Deadline {deadlines[0]}. Costs are in the policy's units (see the totals).")
    cols = ["#", "model", "stage", "records", "action", "guarantee", "est. time", "must pass"]
    if not narrow:
        cols.append("est. cost")
    if not (narrow and len(deadlines) == 1):
        cols.append("deadline")
    cols.append("runner-up (why it lost)")
    t = Table(title="Actions, in the order they run", title_justify="left")
    for col in cols:
        t.add_column(col, no_wrap=col in ("model", "action"), justify="right" if col in ("records", "#") else "left")
    for i in items:
        c = i["chosen"]
        ru = i["runner_up"]
        if c is None:
            cells = {"action": "[bold red]none admissible[/]", "guarantee": "—", "est. time": "—", "est. cost": "—",
                     "must pass": "—", "runner-up (why it lost)": escape("; ".join(i["blocked_by"]))}
        else:
            cells = {"action": c["action"], "guarantee": c["guarantee"], "est. time": _secs(c["seconds"]),
                     "est. cost": _money(c["cost"]), "must pass": _check_text(c),
                     "runner-up (why it lost)": escape(f"{ru['action']} ({ru['why_not']})") if ru else "—"}
        model = escape(i["model"]) + (f"\n  after {escape(', '.join(i['after']))}" if i["after"] else "")
        cells.update({"#": str(i["order"]), "model": model, "stage": i["stage"], "records": f"{i['records']:,}",
                      "deadline": i["deadline"][:10]})
        t.add_row(*(cells[col] for col in cols))
    console.print(t)


def _plan_footer(doc: dict, console) -> None:
    from rich.markup import escape

    tot, every = doc["total"], doc["retrain_everything"]
    _say(console, f"Total: {_secs(tot['seconds'])} (cost {_money(tot['cost'])}, checks included) against "
                  f"{_secs(every['seconds'])} (cost {_money(every['cost'])}) to retrain everything affected.")
    if "batching" in doc:
        b = doc["batching"]
        verdict = "saves" if b["saving_seconds"] >= 0 else "costs"
        _say(console, f"Batching {verdict} {_secs(abs(b['saving_seconds']))} against planning each request alone "
                      f"({_secs(b['alone_seconds'])}).")
    appr = doc.get("approvals", [])
    need = doc["approval"]["approvers"] if doc["approval"]["required"] else 0
    _say(console, f"Approvals: {len(appr)} of {need} needed"
                  + (f" ({escape(', '.join(a['by'] for a in appr))})" if appr else ""))


@app.command()
@_guard
def demo(
    directory: Optional[Path] = typer.Option(None, "--dir", help="Where to build the demo store (default: a temp dir)."),
    json_out: bool = JsonOpt,
) -> None:
    """Build a demo store with synthetic customers and show what one customer touched.

    Example: expunge demo --dir /tmp/expunge-demo
    """
    from expunge.demo import run_demo

    run_demo(directory, json_out=json_out)


from expunge.cli_audit import register as _register_audit_commands  # noqa: E402
from expunge.cli_key import register as _register_key_commands  # noqa: E402
from expunge.cli_trainers import register as _register_trainers_commands  # noqa: E402

_register_key_commands(app)
_register_audit_commands(app)
_register_trainers_commands(app)
from expunge.cli_report import register as _register_report_commands  # noqa: E402
from expunge.cli_verify import register as _register_verify_commands  # noqa: E402

_register_report_commands(app)
_register_verify_commands(app)


def main() -> None:
    """The app, as a function that returns or raises SystemExit (in-process callers, tests)."""
    app()


def run() -> None:
    """The `expunge` command (the console script, `python -m expunge.cli`). Once the command has returned (or failed
    with its one line), it ends the process itself: Python threads joined, atexit handlers run, stdout and stderr
    flushed, then os._exit with the command's status. The interpreter's own teardown is skipped because native
    worker threads can still be finishing then: pyarrow's CSV reader drops its last reference (to our Python
    invalid-row handler) on an Arrow pool thread just after read_csv returns, and when that lands in interpreter
    finalization the thread is forced to exit inside a noexcept C++ frame: "terminate called without an active
    exception", SIGABRT instead of the status (seen when a writer is refused with "store is busy" right after
    reading its input). Nothing of the store is pending by then: every write has committed or rolled back inside
    the command."""
    import atexit
    import threading

    # Torch (and BLAS) one thread unless the environment says otherwise: the reference trainers' models are
    # small, and with two intra-op threads on a busy 2-core machine a demo retrain of 0.02 s took 3.8 s.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        app()
        code = 0
    except SystemExit as exc:
        code = exc.code
    if code is None:
        code = 0
    elif not isinstance(code, int):
        sys.stderr.write(f"{code}\n")
        code = 1
    for t in threading.enumerate():  # what the interpreter's teardown would wait for
        if t is not threading.main_thread() and not t.daemon:
            t.join()
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
    except OSError:  # e.g. a closed pipe: what Python's own exit reports (status 120)
        code = code or 120
    try:
        sys.stderr.flush()
    except OSError:
        pass
    os._exit(code)


if __name__ == "__main__":
    run()
