"""Fuzz expunge's readers with Hypothesis: no input may crash them with anything but expunge's own errors.

    python bench/fuzz.py                       # all targets, 60 s each
    python bench/fuzz.py policy table --seconds 20

Targets (each reads what a user or a damaged store can hand it):
  manifest  run manifests (`expunge track run`): random JSON and near-valid manifests through
            `Store.record_runs` (schema check, rows, facts, checkpoints, models), and raw bytes
            through the CLI's `track run` (which must exit 0 or 2, one line on stderr)
  policy    policy TOML (`load_policy`): near-valid documents, mutated copies of the shipped policy,
            raw bytes; a policy that parses must hash and round-trip through `policy_from_dict`;
            plus the pinned-policy JSON a plan is approved and run under (`pinned`)
  plan      the hash-checked plan reader (`load_plan`): random plan ids, and the saved plan's file
            damaged (bytes flipped, cut, appended, replaced)
  table     CSV and Parquet files read by ingest (`ingest_source`, then a derived `filter`
            and an `augment` with a list column over what was ingested)

A failure is any exception that is not an `ExpungeError` (the CLI shows those as one line and an
exit code). Each distinct failure (exception type + the expunge frame it came from) is reported once,
with Hypothesis's minimal example. Results go to bench/out/fuzz.json. Not run in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import code_version, use_bench_secret  # noqa: E402

import hypothesis.strategies as st  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import seed as hseed  # noqa: E402

from expunge.errors import ExpungeError  # noqa: E402

BATCH = 50  # examples per Hypothesis run; runs repeat with new seeds until the time is up


class Failure(Exception):
    pass


REFUSED = [0]


def attempt(fn, *args, **kwargs):
    """Call a reader; an expunge error is a refusal (fine), counted; anything else propagates."""
    try:
        return fn(*args, **kwargs)
    except ExpungeError:
        REFUSED[0] += 1
        return None


def signature(exc: BaseException) -> str:
    """Exception type and the innermost expunge frame it passed through (one bug, one signature); for a
    `Failure`, its message with numbers blanked (the byte or position varies, the bug does not)."""
    if isinstance(exc, Failure):
        internal = re.search(r"^(.*?)internal error: (\w+)", str(exc))
        if internal:  # the command line's one-line report of an unexpected exception: its type names the bug
            return f"Failure: {internal.group(1)}internal error: {internal.group(2)}"
        return "Failure: " + re.sub(r"0x[0-9a-f]+|\d+", "N", str(exc))[:120]
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/expunge/" in f.filename]
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name}" if frames else "?"
    return f"{type(exc).__name__} at {where}"


# ------------------------------------------------------------------ shared strategies

ids = st.sampled_from(["r0", "r1", "r2", "r9", "r10", "x", "", " r1", "r1 ", "0042", "42", "é", "a;b"])
any_text = st.text(max_size=12)
small_ints = st.one_of(st.integers(-3, 12), st.sampled_from([2**31, 2**32, 2**63 - 1, 2**63, 2**64, -(2**63) - 1]))
json_leaf = st.one_of(st.none(), st.booleans(), small_ints, st.floats(allow_nan=False, allow_infinity=False),
                      any_text)
json_any = st.recursive(json_leaf, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                         st.dictionaries(any_text, kids, max_size=4)), max_leaves=12)


def maybe(strategy):
    return st.one_of(st.just(None), strategy)


def pruned(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


# ------------------------------------------------------------------ manifest

def manifest_target(tmp: Path):
    from typer.testing import CliRunner

    from expunge.cli import app
    from expunge.lineage.store import Store

    store = Store.init(tmp / "store")
    store.ingest_source({"s": [f"s{i}" for i in range(10)], "r": [f"r{i}" for i in range(10)]}, name="d",
                        subject_col="s", record_col="r")
    store.ingest_dataset({"r": ["r1", "r2", "r3"]}, name="f", parents=["d@1"], kind="filter", record_col="r")
    (tmp / "ck.pt").write_bytes(b"weights")
    (tmp / "rows.csv").write_text("row_id\nr1\nr2\n")
    (tmp / "facts.csv").write_text("row_id,shard,slice,first_step\nr1,0,0,0\nr2,1,0,5\n")
    (tmp / "bad.csv").write_text("row_id,shard\nr1,-4\n")
    runner = CliRunner()
    names = st.sampled_from(["m", "m2", "base", "a@1", "", "x" * 3, "é", "../x", "a/b", "line\nbreak"])
    datasets = st.sampled_from(["d", "d@1", "d@2", "f", "f@1", "nope", "d@0", "d@x", "@1", ""])
    # Lists past 64 items are checked by expunge itself, not item by item by jsonschema (runs._shrink).
    steps = maybe(st.one_of(st.lists(maybe(small_ints), max_size=4), st.lists(maybe(small_ints), min_size=65,
                                                                              max_size=66)))
    inp = st.builds(lambda ds, role, rows, rf: pruned({"dataset": ds, "role": role, "rows": rows, "rows_file": rf}),
                    datasets, maybe(st.sampled_from(["train", "val", "eval", "test"])),
                    maybe(st.lists(st.one_of(ids, small_ints), max_size=5)),
                    maybe(st.sampled_from(["rows.csv", "facts.csv", "missing.csv", "ck.pt", "."])))
    facts = st.builds(lambda rows, a, b, c: pruned({"rows": rows, "shard": a, "slice": b, "first_step": c}),
                      st.one_of(st.lists(st.one_of(ids, small_ints), max_size=4),
                                st.lists(st.one_of(ids, small_ints), min_size=65, max_size=66)), steps, steps, steps)
    ckpt = st.builds(lambda s, p, sh, shard: pruned({"step": s, "path": p, "sha256": sh, "shard": shard}),
                     small_ints, st.sampled_from(["ck.pt", "missing.pt", "/", "."]),
                     maybe(st.just("0" * 64)), maybe(small_ints))
    run = st.builds(
        lambda name, inputs, f, ff, fd, total, shards, slices, ckpts, cost, started, trainer: pruned({
            "name": name, "inputs": inputs, "facts": f, "facts_file": ff, "facts_dataset": fd,
            "total_steps": total, "shards": shards, "slices": slices, "checkpoints": ckpts, "cost": cost,
            "started_at": started, "trainer": trainer}),
        maybe(names), st.lists(inp, max_size=3), maybe(facts), maybe(st.sampled_from(["facts.csv", "bad.csv", "x"])),
        maybe(datasets), maybe(small_ints), maybe(small_ints), maybe(small_ints), maybe(st.lists(ckpt, max_size=3)),
        maybe(st.dictionaries(st.sampled_from(["wall_seconds", "cpu_seconds", "setup_seconds", "x"]),
                              st.one_of(small_ints, st.floats()), max_size=3)),
        maybe(st.sampled_from(["2024-01-01T00:00:00Z", "yesterday", "", "2024-13-45", "9999-12-31T23:59:59"])),
        maybe(st.sampled_from(["pkg.mod:train", "bad", "a:b"])))
    model = st.builds(
        lambda name, path, sha, stage, parents, from_run: pruned({
            "name": name, "path": path, "sha256": sha, "stage": stage, "parents": parents, "from_run": from_run}),
        names, maybe(st.sampled_from(["ck.pt", "missing.pt"])), maybe(st.just("1" * 64)),
        maybe(st.sampled_from(["dev", "production", "gone"])),
        maybe(st.lists(st.builds(lambda m, r: pruned({"model": m, "relation": r}), names,
                                 maybe(st.sampled_from(["fine-tune", "distill", "ensemble", "copy"]))), max_size=2)),
        maybe(st.booleans()))
    structured = st.builds(lambda r, ms: pruned({"run": r, "models": ms}), maybe(run),
                           maybe(st.lists(model, max_size=3)))
    doc = st.one_of(structured, structured, json_any)
    raw = st.one_of(st.binary(max_size=200),
                    structured.map(lambda d: json.dumps(d).encode()),
                    st.tuples(structured, st.binary(max_size=3), st.integers(0, 400)).map(
                        lambda t: json.dumps(t[0]).encode()[:t[2]] + t[1]))
    fact_cells = st.one_of(ids, st.sampled_from(["0", "1", "7", "-1", "1.5", "x", "", "2147483646", "2147483647",
                                                 "2147483648", "9223372036854775807", "99999999999999999999"]))
    facts_csv = st.builds(
        lambda cols, rows, total: (",".join(cols) + "\n" + "\n".join(",".join(r[:len(cols)]) for r in rows),
                                   total),
        st.sampled_from([["row_id", "shard", "slice", "first_step"], ["row_id", "first_step"], ["row_id", "shard"],
                         ["shard"], ["row_id", "slice", "shard"]]),
        st.lists(st.lists(fact_cells, min_size=4, max_size=4), max_size=4), maybe(small_ints))
    mfile = tmp / "run.json"
    ffile = tmp / "gen_facts.csv"

    def one(case):
        kind, value = case
        if kind == "facts_csv":
            text, total = value
            ffile.write_text(text)
            attempt(store.record_runs, [{"run": pruned({"inputs": [{"dataset": "d@1"}], "facts_file": ffile.name,
                                                        "total_steps": total})}], base_dir=tmp)
            return
        if kind == "doc":
            attempt(store.record_runs, [value], base_dir=tmp)
            return
        mfile.write_bytes(value)
        res = runner.invoke(app, ["track", "run", "--manifest", str(mfile), "--store", str(store.root)])
        if res.exception is not None and not isinstance(res.exception, SystemExit):
            raise res.exception
        err = res.stderr.strip()
        REFUSED[0] += res.exit_code == 2
        if res.exit_code not in (0, 2) or "internal error" in err or len(err.splitlines()) > 1:
            raise Failure(f"track run: exit {res.exit_code}, stderr {err[:200]!r}")

    return st.one_of(doc.map(lambda d: ("doc", d)), raw.map(lambda b: ("raw", b)),
                     facts_csv.map(lambda t: ("facts_csv", t))), one


# ------------------------------------------------------------------ policy

def toml_value(v) -> str:
    """TOML for a value (TOML has no null: None items and keys are left out by the callers)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v if x is not None) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items() if x is not None) + "}"
    raise TypeError(v)


def toml_doc(d: dict) -> str:
    top = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in d.items() if v is not None]
    return "\n".join(top) + "\n"


def policy_target(tmp: Path):
    from expunge.lineage.store import Store
    from expunge.orchestrator import policy as P

    default = P.default_policy_text()
    store = Store.init(tmp / "store")
    pin_sha = P.pin(store, P.load_policy(None))
    pinned_path = store.root / "policies" / f"{pin_sha}.json"
    pinned_good = pinned_path.read_bytes()
    value = st.one_of(json_leaf, st.just(float("nan")), st.just(float("inf")), st.just(-1.0),
                      st.lists(json_leaf, max_size=3), st.dictionaries(any_text, json_leaf, max_size=3))

    def field(*good):
        # Mostly values of the right type (so parsing gets past the first key), sometimes anything at all.
        return st.one_of(*good, *good, *good, value)

    num = st.one_of(st.floats(-2, 3), st.sampled_from([0, 1, 0.5, float("nan"), float("inf"), -0.0, 1e308]))
    flag = st.booleans()
    table = st.fixed_dictionaries
    cat = field(table({}, optional={
        "weakest_guarantee": field(st.sampled_from(["exact", "certified", "approximate", "none"])),
        "deadline_days": field(small_ints), "check": field(st.sampled_from(["mia", "mia_retrained", "x"])),
        "other": value}))
    keys = st.sampled_from(["ssh-ed25519 AAAA", "ssh-rsa AAAAB3NzaC1yc2E=", "",
                            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOmQWr2Y0nQ1ZFmXo7HrEk2cwSyd7RUtYxQNH6Kd3c8n ana"])
    sections = table({}, optional={
        "default_category": field(st.sampled_from(["default", "health", ""])),
        "allow_retire": field(flag), "retire_withdrawn": field(flag),
        "categories": field(st.dictionaries(st.sampled_from(["default", "health", "a.b", ""]), cat, max_size=3)),
        "models": field(st.dictionaries(st.sampled_from(["m", "n"]), field(table(
            {}, optional={"never_retire": field(flag), "always_retrain": field(flag), "x": value})), max_size=2)),
        "approval": field(table({}, optional={
            "required": field(flag), "approvers": field(small_ints),
            "keys": field(st.dictionaries(st.sampled_from(["ana", "bob"]), field(keys), max_size=2))})),
        "approximate": field(table({}, optional={
            "max_mia_auc": field(num), "max_mia_auc_gap": field(num), "max_accuracy_drop": field(num),
            "method": field(st.sampled_from(["scrub", "neggrad+", "x"]))})),
        "costs": field(table({}, optional={"cpu_hour": field(num), "gpu_hour": field(num)})),
        "risk": field(table({}, optional={"max_premium": field(num)})),
        "residuals": field(table({}, optional={
            "purge": field(flag), "hold": field(st.dictionaries(any_text, field(any_text), max_size=2))})),
        "trainers": field(table({}, optional={
            "allow": field(st.lists(st.sampled_from(["mypkg", "mypkg.", "", "os", "a..b", "x y"]), max_size=3))})),
        "unknown": value})

    def mutate(text: str, edits) -> str:
        for pos, cut, ins in edits:
            pos %= max(len(text), 1)
            text = text[:pos] + ins + text[pos + cut:]
        return text

    mutated = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 5), st.text(max_size=4)),
                       min_size=1, max_size=4).map(lambda e: mutate(default, e).encode())
    text_doc = sections.map(lambda d: toml_doc(d).encode())
    pinned_doc = st.one_of(json_any, sections).map(lambda d: json.dumps(d, allow_nan=True).encode())
    pinned_mut = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 5), st.text(max_size=4)),
                          min_size=1, max_size=3).map(lambda e: mutate(pinned_good.decode(), e).encode())
    path = tmp / "policy.toml"

    def one(case):
        kind, data = case
        if kind == "pinned":
            pinned_path.write_bytes(data)
            try:
                attempt(P.pinned, store, pin_sha)
            finally:
                pinned_path.write_bytes(pinned_good)
            return
        path.write_bytes(data)
        pol = attempt(P.load_policy, path)
        if pol is None:
            return
        # A policy that parsed is used: it is hashed (plans pin it) and read back from its pinned form.
        sha = pol.sha256()
        back = P.policy_from_dict(json.loads(json.dumps(pol.to_dict())))
        if back.sha256() != sha:
            raise Failure("the policy read back from its pinned form hashes differently")

    return st.one_of(text_doc.map(lambda b: ("toml", b)), mutated.map(lambda b: ("toml", b)),
                     st.binary(max_size=100).map(lambda b: ("toml", b)),
                     pinned_doc.map(lambda b: ("pinned", b)), pinned_mut.map(lambda b: ("pinned", b))), one


# ------------------------------------------------------------------ plan

def plan_target(tmp: Path):
    from expunge.lineage.store import Store
    from expunge.orchestrator import planner
    from expunge.orchestrator import requests as rq
    from expunge.orchestrator.policy import load_policy

    store = Store.init(tmp / "store")
    store.ingest_source({"s": [f"s{i}" for i in range(10)], "r": [f"r{i}" for i in range(10)]}, name="d",
                        subject_col="s", record_col="r")
    store.record_run({"run": {"name": "base-1", "trainer": "pkg.mod:train", "cost": {"wall_seconds": 60.0},
                              "inputs": [{"dataset": "d@1"}]}, "models": [{"name": "base", "sha256": "0" * 64}]})
    req = rq.create(store, ["s1"])
    doc = planner.make_plan(store, [req.id], load_policy(None))
    pid = planner.save_plan(store, doc)
    path = planner.plan_path(store, pid)
    good = path.read_bytes()
    damage = st.one_of(
        st.tuples(st.integers(0, len(good) - 1), st.integers(1, 255)).map(
            lambda t: good[:t[0]] + bytes([good[t[0]] ^ t[1]]) + good[t[0] + 1:]),
        st.integers(0, len(good) - 1).map(lambda n: good[:n]),
        st.binary(min_size=1, max_size=20).map(lambda b: good + b),
        st.binary(max_size=60))
    plan_ids = st.one_of(any_text, st.integers(0, 64).map(lambda n: pid[:n]), st.just(pid.upper()),
                         st.just(" " + pid + "\n"), st.text(alphabet="0123456789abcdef", min_size=8, max_size=64))

    def one(case):
        kind, value = case
        if kind == "file":
            path.write_bytes(value)
            try:
                if attempt(planner.load_plan, store, pid) is not None and value != good:
                    raise Failure("a damaged plan file was read as the plan")
            finally:
                path.write_bytes(good)
            return
        got = attempt(planner.load_plan, store, value)
        if got is not None and got["id"] != pid:
            raise Failure(f"plan id {value!r} loaded another plan")

    return st.one_of(damage.map(lambda b: ("file", b)), plan_ids.map(lambda s: ("id", s))), one


# ------------------------------------------------------------------ CSV / Parquet

def table_target(tmp: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from expunge.lineage.store import Store

    store = Store.init(tmp / "store")
    counter = [0]
    cell = st.one_of(st.sampled_from(["s1", "r1", "0042", "42", "", '""', '"a,b"', '"x\ny"', "é", "\ufeffs",
                                      " r1", "a;b", "\x00", '"unterminated', "1e3", "nan", "-0"]),
                     st.text(max_size=6), st.just("z" * 3_000_000))
    headers = st.lists(st.sampled_from(["subject", "record", "row", "src", "\ufeffsubject", "", "record"]),
                       min_size=0, max_size=4)

    def csv_bytes(header, rows, sep, bom, encoding):
        lines = [sep.join(header)] + [sep.join(r) for r in rows]
        text = "\n".join(lines)
        try:
            data = text.encode(encoding)
        except UnicodeEncodeError:
            data = text.encode("utf-8")
        return (b"\xef\xbb\xbf" if bom else b"") + data

    csv_files = st.builds(csv_bytes, st.one_of(headers, st.just(["subject", "record"])),
                          st.lists(st.lists(cell, min_size=0, max_size=4), max_size=5),
                          st.sampled_from([",", ";", "\t"]), st.booleans(),
                          st.sampled_from(["utf-8", "latin-1", "utf-16"]))
    arrays = st.sampled_from(["str", "int", "float", "bool", "null", "list", "dict", "large", "binary", "ts",
                              "decimal", "neg", "big"])

    def column(kind: str, n: int, salt: int) -> pa.Array:
        if kind == "str":
            return pa.array([f"v{(i + salt) % 4}" for i in range(n)])
        if kind == "int":
            return pa.array([(i + salt) % 5 for i in range(n)], pa.int64())
        if kind == "neg":
            return pa.array([-i - 1 for i in range(n)], pa.int8())
        if kind == "big":
            return pa.array([2**64 - 1 - i for i in range(n)], pa.uint64())
        if kind == "float":
            return pa.array([i + 0.5 for i in range(n)])
        if kind == "bool":
            return pa.array([i % 2 == 0 for i in range(n)])
        if kind == "null":
            return pa.nulls(n)
        if kind == "list":
            return pa.array([[f"r{i}", f"r{i + 1}"] if i % 3 else [] for i in range(n)])
        if kind == "dict":
            return pa.array([f"d{i % 2}" for i in range(n)]).dictionary_encode()
        if kind == "large":
            return pa.array([f"L{i}" for i in range(n)], pa.large_string())
        if kind == "binary":
            return pa.array([f"b{i}".encode() for i in range(n)], pa.binary())
        if kind == "ts":
            return pa.array([i for i in range(n)], pa.timestamp("s"))
        import decimal

        return pa.array([decimal.Decimal(i) for i in range(n)], pa.decimal128(5, 0))

    parquet_tables = st.builds(lambda a, b, n, salt: (a, b, n, salt), arrays, arrays, st.integers(0, 6),
                               st.integers(0, 3))

    def one(case):
        kind, value = case
        counter[0] += 1
        name = f"t{counter[0] % 7}"
        if kind == "csv":
            path = tmp / "in.csv"
            path.write_bytes(value)
        else:
            a, b, n, salt = value
            path = tmp / "in.parquet"
            pq.write_table(pa.table({"subject": column(a, n, salt), "record": column(b, n, salt + 1)}), path)
        info = attempt(store.ingest_source, path, name=name, subject_col="subject", record_col="record")
        # The same file as a derived filter and as an augment over a version that exists.
        parent = info.id if info else "t1"
        attempt(store.ingest_dataset, path, name=f"f{name}", parents=[parent], kind="filter", record_col="record")
        attempt(store.ingest_dataset, path, name=f"a{name}", parents=[parent], kind="augment",
                sources={parent: "record"})

    return st.one_of(csv_files.map(lambda b: ("csv", b)), parquet_tables.map(lambda t: ("parquet", t))), one


TARGETS = {"manifest": manifest_target, "policy": policy_target, "plan": plan_target, "table": table_target}


# ------------------------------------------------------------------ driver

def fuzz(name: str, seconds: float, base_seed: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"expunge-fuzz-{name}-"))
    strategy, one = TARGETS[name](tmp)
    known: dict[str, dict] = {}
    state = {"cases": 0}
    REFUSED[0] = 0
    deadline = time.monotonic() + seconds

    def body(case):
        # No time check in here: a case that passes only because time ran out would make Hypothesis's
        # shrinking flaky. The loop below stops between batches.
        state["cases"] += 1
        try:
            unraisable.clear()
            one(case)
            if unraisable:  # an error Python would print with its traceback (e.g. inside a pyarrow callback)
                raise Failure(f"an exception was printed, not raised: {unraisable[0]}")
        except Exception as exc:  # noqa: BLE001 - that is what is looked for
            sig = signature(exc)
            if sig in known:
                return  # reported already: keep looking for other bugs
            raise

    unraisable: list[str] = []
    sys.unraisablehook = lambda u: unraisable.append(f"{type(u.exc_value).__name__} in {u.object!r}"[:100])
    runs = 0
    while time.monotonic() < deadline:
        test = settings(max_examples=BATCH, deadline=None, database=None, derandomize=False,
                        suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
                        phases=[Phase.generate, Phase.shrink])(given(strategy)(body))
        test = hseed(base_seed * 1_000_003 + runs)(test)
        runs += 1
        try:
            test()
        except Exception as exc:  # noqa: BLE001
            sig = signature(exc)
            notes = "\n".join(getattr(exc, "__notes__", []))
            known[sig] = {"signature": sig, "message": str(exc)[:300], "minimal_example": notes[:2000],
                          "traceback": "".join(traceback.format_exception(exc))[-1500:]}
            print(f"  FAILURE {sig}\n    {str(exc)[:200]}\n    {notes[:600]}", flush=True)
    return {"target": name, "seconds": seconds, "cases": state["cases"], "expunge_errors": REFUSED[0],
            "failures": list(known.values()), "hypothesis_runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("targets", nargs="*", metavar="TARGET", help=f"any of {', '.join(TARGETS)} (default: all)")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "out" / "fuzz.json")
    args = ap.parse_args()
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        ap.error(f"unknown target(s) {', '.join(sorted(unknown))}; expected {', '.join(TARGETS)}")
    use_bench_secret()
    random.seed(args.seed)
    results = []
    for name in args.targets or list(TARGETS):
        print(f"fuzzing {name} for {args.seconds:.0f} s ...", flush=True)
        t0 = time.perf_counter()
        r = fuzz(name, args.seconds, args.seed)
        r["wall_seconds"] = round(time.perf_counter() - t0, 1)
        results.append(r)
        print(f"  {name}: {r['cases']:,} cases ({r['expunge_errors']:,} refused with an expunge error), "
              f"{len(r['failures'])} failure(s)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"code": code_version(), "seed": args.seed, "load_average": os.getloadavg(), "targets": results}
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    sys.exit(1 if any(r["failures"] for r in results) else 0)


if __name__ == "__main__":
    main()
