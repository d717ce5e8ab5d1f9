"""Impact-query, CLI, store-size and append benchmarks on a store made by bench/gen.py.

    .venv/bin/python bench/bench_impact.py --store /tmp/expunge-bench-s/store

Measures (a) single-subject `store.impact([sid])` latency, warm, in process; (b) a 10,000-subject
batch; (c) `expunge impact --store DIR --subject X --json` as a whole process, and that it does
not import torch; (d) the store's size on disk; (e) appending a source version of new records
plus a derived filter over it, then (a) and (b) again. The append runs on a copy of the store
(next to it) unless --in-place. Results go to bench/out/results-<scale>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import code_version, dir_size, peak_rss_mb, percentile, use_bench_secret  # noqa: E402
from gen import RECORD_WIDTH, SUBJECT_WIDTH, make_ids  # noqa: E402

TARGETS = {  # for scale S
    "single_p50_ms": 1.5,
    "single_p95_ms": 4.0,
    "batch_10k_s": 1.5,
    "cli_median_s": 0.6,
    "store_mb": 330.0,
    "append_s": 3.0,
    "ingest_rows_per_s": 2.5e6,
    "ingest_peak_rss_mb": 4096.0,
}


def find_manifest(store: Path, given: Path | None) -> Path:
    if given:
        return given
    for cand in (store / "manifest.json", store.parent / "manifest.json"):
        if cand.exists():
            return cand
    raise SystemExit(f"no manifest.json next to {store}; pass --manifest")


def summarize_ms(samples_s: list[float]) -> dict:
    ms = [s * 1e3 for s in samples_s]
    return {
        "n": len(ms), "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95), "p99_ms": percentile(ms, 99),
        "mean_ms": statistics.fmean(ms), "max_ms": max(ms),
    }


def bench_singles(store, subjects: list[str], absent: list[str], n: int, rng, warmup: int = 200) -> dict:
    t0 = time.perf_counter()
    store.engine()
    load_s = time.perf_counter() - t0
    for sid in rng.choice(subjects, size=min(warmup, len(subjects)), replace=False):
        store.impact([str(sid)])
    pick = [str(s) for s in rng.choice(subjects, size=min(n, len(subjects)), replace=False)]
    lat = []
    shapes = {"datasets": [], "runs": [], "models": [], "records": []}
    not_found = 0
    for sid in pick:
        t = time.perf_counter()
        res = store.impact([sid])
        lat.append(time.perf_counter() - t)
        not_found += res.found != 1
        shapes["datasets"].append(len(res.datasets))
        shapes["runs"].append(len(res.runs))
        shapes["models"].append(len(res.models))
        shapes["records"].append(res.records)
    lat_absent = []
    absent_found = 0
    for sid in absent:
        t = time.perf_counter()
        res = store.impact([sid])
        lat_absent.append(time.perf_counter() - t)
        absent_found += res.found
    out = summarize_ms(lat)
    out["engine_load_s"] = load_s
    out["absent"] = summarize_ms(lat_absent) if lat_absent else None
    out["result_shape_mean"] = {k: float(np.mean(v)) for k, v in shapes.items()}
    out["result_shape_max"] = {k: int(np.max(v)) for k, v in shapes.items()}
    out["present_not_found"] = int(not_found)
    out["absent_found"] = int(absent_found)
    return out


def bench_batch(store, subjects: list[str], size: int, repeats: int, rng) -> dict:
    pick = [str(s) for s in rng.choice(subjects, size=min(size, len(subjects)), replace=False)]
    walls = []
    res = None
    for _ in range(repeats):
        t = time.perf_counter()
        res = store.impact(pick)
        walls.append(time.perf_counter() - t)
    return {
        "subjects": len(pick), "wall_s": walls, "found": res.found, "records": res.records,
        "datasets": len(res.datasets), "runs": len(res.runs), "models": len(res.models),
    }


def bench_cli(store_dir: Path, subjects: list[str], runs: int, rng) -> dict:
    exe = Path(sys.executable).parent / "expunge"
    cmd0 = [str(exe)] if exe.exists() else [sys.executable, "-m", "expunge.cli"]
    env = dict(os.environ)
    cwd = store_dir.parent  # not the repo root: `-m`/`-c` put the cwd first on sys.path
    walls = []
    for sid in rng.choice(subjects, size=runs, replace=len(subjects) < runs):
        cmd = cmd0 + ["impact", "--store", str(store_dir), "--subject", str(sid), "--json"]
        t = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
        walls.append(time.perf_counter() - t)
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
        doc = json.loads(p.stdout)
        assert doc["kind"] == "expunge.impact" and doc["subjects"]["found"] == 1, doc["subjects"]
    # Import check: the same command under -X importtime; every imported module is listed on stderr.
    sid = str(subjects[0])
    cmd = [sys.executable, "-X", "importtime", "-m", "expunge.cli", "impact", "--store", str(store_dir),
           "--subject", sid, "--json"]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    importtime_wall = time.perf_counter() - t
    mods = []
    for line in p.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            parts = line[len("import time:"):].split("|")
            try:
                _self_us, cum_us = int(parts[0]), int(parts[1])
            except ValueError:
                continue
            name = parts[2].rstrip()
            mods.append((name.strip(), cum_us, len(name) - len(name.lstrip())))
    names = {m for m, _, _ in mods}
    torch_mods = sorted(m for m in names if m == "torch" or m.startswith("torch."))
    top = sorted((m for m in mods if m[2] == 1), key=lambda m: -m[1])[:12]  # top-level imports by cumulative time
    # Startup without the query: interpreter + imports of the CLI module only.
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import expunge.cli"], check=True, env=env, cwd=cwd)
    import_only = time.perf_counter() - t
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True, env=env, cwd=cwd)
    bare = time.perf_counter() - t
    return {
        "command": " ".join(cmd0 + ["impact", "--store", str(store_dir), "--subject", "<id>", "--json"]),
        "runs": runs, "wall_s": walls, "median_s": statistics.median(walls), "max_s": max(walls),
        "torch_imported": bool(torch_mods), "torch_modules": torch_mods[:5],
        "modules_imported": len(names), "importtime_run_wall_s": importtime_wall,
        "top_imports_cumulative_ms": [(m, cum / 1e3) for m, cum, _ in top],
        "python_bare_s": bare, "python_import_expunge_cli_s": import_only,
    }


def append_bench(store_dir: Path, man: dict, n_new: int, rng, dataset: str | None) -> tuple[dict, object]:
    from expunge import Store

    store = Store.open(store_dir)
    dsinfo = next((d for d in man["source_datasets"] if d["name"] == dataset), None) if dataset else None
    if dsinfo is None:
        dsinfo = max(man["source_datasets"], key=lambda d: d["records"])
    with store.read() as con:
        # Continue the dataset's record numbering after the largest id it holds (also after earlier appends).
        n_versions = con.execute(
            "SELECT count(*) FROM dataset_versions v JOIN datasets d USING (dataset_id) WHERE d.name = ?",
            [dsinfo["name"]]).fetchall()[0][0]
        used = con.execute(
            "SELECT coalesce(sum(n), 0) FROM record_segments s JOIN datasets d USING (dataset_id) WHERE d.name = ?",
            [dsinfo["name"]]).fetchall()[0][0]
    start = int(used)
    N = man["subjects"]["count"]
    half = n_new // 2
    # Half owned by known subjects, half by new ones (about 20 records per new subject).
    n_new_subj = max(1, half // 20)
    known = rng.integers(1, N + 1, size=half)
    fresh = rng.integers(1, n_new_subj + 1, size=n_new - half)
    subj = pa.concat_arrays([make_ids("c", known, SUBJECT_WIDTH),
                             make_ids(f"a{n_versions:03d}-", fresh, SUBJECT_WIDTH)])
    rids = make_ids(dsinfo["record_prefix"], np.arange(start, start + n_new), RECORD_WIDTH)
    perm = pa.array(rng.permutation(n_new))
    table = pa.table({"subject_id": subj.take(perm), "record_id": rids})
    keep = np.sort(np.flatnonzero(rng.random(n_new) < 0.5))
    ftable = pa.table({"row_id": rids.take(pa.array(keep))})

    t = time.perf_counter()
    info = store.ingest_source(table, name=dsinfo["name"], subject_col="subject_id", record_col="record_id")
    t_src = time.perf_counter() - t
    t = time.perf_counter()
    finfo = store.ingest_dataset(ftable, name=f"{dsinfo['name']}.appendfilt", parents=[info.id], kind="filter",
                                 record_col="row_id")
    t_der = time.perf_counter() - t
    assert info.new_records == n_new, info
    assert finfo.records == keep.size, finfo
    t = time.perf_counter()
    store.engine()
    reload_s = time.perf_counter() - t
    sample_new = make_ids(f"a{n_versions:03d}-", np.unique(fresh)[:5], SUBJECT_WIDTH).to_pylist()
    res = store.impact(sample_new[:1])
    assert res.found == 1 and any(d["id"] == finfo.id for d in res.datasets), "appended records not found"
    return {
        "dataset": dsinfo["name"], "version": info.id, "records": n_new, "known_subject_records": half,
        "new_subjects": int(np.unique(fresh).size), "derived": finfo.id, "derived_records": finfo.records,
        "ingest_source_s": t_src, "ingest_filter_s": t_der, "total_s": t_src + t_der,
        "engine_reload_s": reload_s,
    }, store


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, required=True, help="store directory made by gen.py (DIR/store)")
    ap.add_argument("--manifest", type=Path, help="gen.py manifest (default: next to the store)")
    ap.add_argument("--singles", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cli-runs", type=int, default=10)
    ap.add_argument("--append-records", type=int, help="default: 1,000,000 at scale S (records / 20)")
    ap.add_argument("--append-dataset", help="source dataset to append to (default: the largest)")
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--in-place", action="store_true", help="append to the store itself, not to a copy")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, help="results JSON (default bench/out/results-<scale>.json)")
    args = ap.parse_args(argv)

    use_bench_secret()
    from expunge import Store

    store_dir = args.store.resolve()
    if (store_dir / "store" / "STORE").exists():
        store_dir = store_dir / "store"
    man = json.loads(find_manifest(store_dir, args.manifest).read_text())
    scale = man["scale"]
    rng = np.random.default_rng(args.seed)
    subjects = man["sample_subjects"]
    absent = man["absent_subjects"]
    out_path = args.out or HERE / "out" / f"results-{scale}.json"
    results: dict = {"kind": "expunge.bench.impact", "scale": scale, "store": str(store_dir),
                     "code": code_version(), "store_generated_with": man.get("code"),
                     "generated": man["counts"], "targets_for_scale_S": TARGETS}
    print(f"store {store_dir} (scale {scale}): {man['counts']['memberships']:,} memberships, "
          f"{man['counts']['dataset_versions']} versions, {man['counts']['runs']} runs", flush=True)

    t = time.perf_counter()
    store = Store.open(store_dir)
    results["open_s"] = time.perf_counter() - t

    print("(a) single-subject impact ...", flush=True)
    results["single"] = bench_singles(store, subjects, absent, args.singles, rng)
    print("(b) batch impact ...", flush=True)
    results["batch"] = bench_batch(store, subjects, args.batch, args.repeats, rng)
    print("(c) CLI process ...", flush=True)
    results["cli"] = bench_cli(store_dir, subjects, args.cli_runs, rng)
    apparent, allocated = dir_size(store_dir)
    du = subprocess.run(["du", "-sb", str(store_dir)], capture_output=True, text=True).stdout.split()
    results["size"] = {"apparent_mb": apparent / 1e6, "allocated_mb": allocated / 1e6,
                       "du_sb_mb": int(du[0]) / 1e6 if du else None,
                       "by_kind_mb": size_by_kind(store_dir)}

    if not args.no_append:
        n_new = args.append_records or max(1000, man["counts"]["source_records"] // 20)
        if args.in_place:
            target, tmp = store_dir, None
        else:
            tmp = Path(tempfile.mkdtemp(prefix="append-", dir=store_dir.parent))
            target = tmp / "store"
            t = time.perf_counter()
            shutil.copytree(store_dir, target)
            results["append_copy_s"] = time.perf_counter() - t
        try:
            print(f"(e) append {n_new:,} records + a derived filter ...", flush=True)
            results["append"], st2 = append_bench(target, man, n_new, rng, args.append_dataset)
            print("    (a) and (b) after the append ...", flush=True)
            results["single_after_append"] = bench_singles(st2, subjects, absent, args.singles, rng)
            results["batch_after_append"] = bench_batch(st2, subjects, args.batch, args.repeats, rng)
            a2, al2 = dir_size(target)
            results["append"]["store_mb_after"] = al2 / 1e6
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
    results["peak_rss_mb"] = peak_rss_mb()
    results["gen_timings"] = man.get("timings")
    results["checks"] = checks(results, man)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=1))
    print_table(results, man)
    print(f"\nresults: {out_path}")
    return 0 if results["checks"]["sane"] else 1


def size_by_kind(store_dir: Path) -> dict:
    out: dict[str, int] = {}
    for p in (store_dir / "data").iterdir():
        name = p.name
        kind = name[name.index("."):] if "." in name else "other"
        out[kind] = out.get(kind, 0) + p.stat().st_size
    for p in store_dir.glob("catalog-*"):
        out["catalog"] = out.get("catalog", 0) + p.stat().st_size
    return {k: v / 1e6 for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def checks(r: dict, man: dict) -> dict:
    """Pass/fail against the targets (meant for scale S) and sanity checks that must hold at any scale."""
    t = TARGETS
    gt = man.get("timings") or {}
    c = {
        "single_p50": r["single"]["p50_ms"] <= t["single_p50_ms"],
        "single_p95": r["single"]["p95_ms"] <= t["single_p95_ms"],
        "batch_10k": max(r["batch"]["wall_s"]) <= t["batch_10k_s"],
        "cli_median": r["cli"]["median_s"] <= t["cli_median_s"],
        "store_size": r["size"]["allocated_mb"] <= t["store_mb"],
    }
    if "append" in r:
        c["append"] = r["append"]["total_s"] <= t["append_s"]
        c["single_p50_after_append"] = r["single_after_append"]["p50_ms"] <= t["single_p50_ms"]
        c["single_p95_after_append"] = r["single_after_append"]["p95_ms"] <= t["single_p95_ms"]
        c["batch_10k_after_append"] = max(r["batch_after_append"]["wall_s"]) <= t["batch_10k_s"]
    if gt:
        c["ingest_rate"] = (gt.get("memberships_per_s_api") or 0) >= t["ingest_rows_per_s"]
        c["ingest_peak_rss"] = gt["peak_rss_mb"]["after_datasets"] <= t["ingest_peak_rss_mb"]
    sane = (not r["cli"]["torch_imported"] and r["single"]["present_not_found"] == 0
            and r["single"]["absent_found"] == 0)
    return {"targets": c, "sane": sane, "torch_not_imported": not r["cli"]["torch_imported"]}


def print_table(r: dict, man: dict) -> None:
    t = TARGETS
    ok = r["checks"]["targets"]
    mark = lambda k: ("PASS" if ok[k] else "FAIL") if k in ok else ""  # noqa: E731
    rows = []
    s = r["single"]
    rows.append(("engine load (open + all bitmaps)", f"{s['engine_load_s']:.2f} s", "", ""))
    rows.append(("(a) single p50", f"{s['p50_ms']:.3f} ms", f"≤ {t['single_p50_ms']} ms", mark("single_p50")))
    rows.append(("(a) single p95", f"{s['p95_ms']:.3f} ms", f"≤ {t['single_p95_ms']} ms", mark("single_p95")))
    rows.append(("(a) single p99", f"{s['p99_ms']:.3f} ms", "", ""))
    if s["absent"]:
        rows.append(("(a) absent subject p50", f"{s['absent']['p50_ms']:.3f} ms", "", ""))
    b = r["batch"]
    rows.append((f"(b) batch {b['subjects']:,}", " / ".join(f"{w:.3f}" for w in b["wall_s"]) + " s",
                 f"≤ {t['batch_10k_s']} s", mark("batch_10k")))
    c = r["cli"]
    rows.append((f"(c) CLI process median ({c['runs']} runs)", f"{c['median_s']:.3f} s", f"≤ {t['cli_median_s']} s",
                 mark("cli_median")))
    rows.append(("(c) CLI process max", f"{c['max_s']:.3f} s", "", ""))
    rows.append(("(c) torch imported by the CLI", str(c["torch_imported"]), "False",
                 "PASS" if not c["torch_imported"] else "FAIL"))
    rows.append(("(c) python -c 'import expunge.cli'", f"{c['python_import_expunge_cli_s']:.3f} s",
                 f"(bare python {c['python_bare_s']:.3f} s)", ""))
    rows.append(("(d) store size on disk", f"{r['size']['allocated_mb']:.1f} MB", f"≤ {t['store_mb']:.0f} MB",
                 mark("store_size")))
    if "append" in r:
        a = r["append"]
        rows.append((f"(e) append {a['records']:,} records (ingest_source)", f"{a['ingest_source_s']:.2f} s", "", ""))
        rows.append((f"(e) derived filter ({a['derived_records']:,})", f"{a['ingest_filter_s']:.2f} s", "", ""))
        rows.append(("(e) append total", f"{a['total_s']:.2f} s", f"≤ {t['append_s']} s", mark("append")))
        rows.append(("(e) engine reload after append", f"{a['engine_reload_s']:.2f} s", "", ""))
        s2 = r["single_after_append"]
        rows.append(("(e) single p50 after append", f"{s2['p50_ms']:.3f} ms", f"≤ {t['single_p50_ms']} ms",
                     mark("single_p50_after_append")))
        rows.append(("(e) single p95 after append", f"{s2['p95_ms']:.3f} ms", f"≤ {t['single_p95_ms']} ms",
                     mark("single_p95_after_append")))
        rows.append(("(e) single p99 after append", f"{s2['p99_ms']:.3f} ms", "", ""))
        b2 = r["batch_after_append"]
        rows.append((f"(e) batch {b2['subjects']:,} after append", " / ".join(f"{w:.3f}" for w in b2["wall_s"]) + " s",
                     f"≤ {t['batch_10k_s']} s", mark("batch_10k_after_append")))
    gt = r.get("gen_timings")
    if gt:
        rows.append(("gen: ingest membership rows/s (API)", f"{gt['memberships_per_s_api'] / 1e6:.2f} M/s",
                     f"≥ {t['ingest_rows_per_s'] / 1e6} M/s", mark("ingest_rate")))
        rows.append(("gen: peak RSS after dataset phase", f"{gt['peak_rss_mb']['after_datasets']:.0f} MiB",
                     f"≤ {t['ingest_peak_rss_mb']:.0f} MiB", mark("ingest_peak_rss")))
    rows.append(("bench process peak RSS", f"{r['peak_rss_mb']:.0f} MiB", "", ""))
    w0 = max(len(x[0]) for x in rows)
    w1 = max(len(x[1]) for x in rows)
    w2 = max(len(x[2]) for x in rows)
    print(f"\nscale {r['scale']} (targets are for scale S)")
    print(f"{'measure':<{w0}}  {'value':>{w1}}  {'target':<{w2}}  result")
    for a, b_, c_, d in rows:
        print(f"{a:<{w0}}  {b_:>{w1}}  {c_:<{w2}}  {d}")
    sh = r["single"]["result_shape_mean"]
    print(f"mean single result: {sh['records']:.1f} records, {sh['datasets']:.1f} dataset versions, "
          f"{sh['runs']:.1f} runs, {sh['models']:.1f} models")
    print("store size by file kind (MB): " + ", ".join(f"{k} {v:.1f}" for k, v in r["size"]["by_kind_mb"].items()))


if __name__ == "__main__":
    sys.exit(main())
