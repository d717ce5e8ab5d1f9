"""Forgetting subjects on a generated store: wall seconds of `Store.forget_subjects` (median of runs).

    .venv/bin/python bench/gen.py --scale XS --out /tmp/expunge-bench-xs      # 200k records, ~10 s
    .venv/bin/python bench/bench_forget.py --gen /tmp/expunge-bench-xs [--repeat 3] [--sizes 1,1000]

Each run forgets a different set of present subjects (from the generator's manifest) on a fresh
copy of the store, so every run does the full work; the copy is not timed. Also times the next
write after it (which deletes the previous generation) and reports what the forgetting did
(records removed, versions rewritten, cleaned versions, files rewritten). Results go to
bench/out/forget-<scale>.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import code_version, use_bench_secret  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gen", type=Path, required=True, help="directory made by bench/gen.py")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sizes", default="1,1000", help="subjects per forget, comma-separated")
    ap.add_argument("--purge", action="store_true", help="forget with purge=True (old files deleted at once)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    use_bench_secret()
    from expunge.lineage.store import Store

    manifest = json.loads((args.gen / "manifest.json").read_text())
    present = manifest["sample_subjects"]
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {"code": code_version(), "gen": str(args.gen), "scale": manifest.get("scale"),
               "stats": Store.open(args.gen / "store").stats(), "purge": args.purge, "runs": {}}
    offset = 0
    for n in sizes:
        runs = []
        for _ in range(args.repeat):
            subjects = present[offset:offset + n]
            offset += n
            with tempfile.TemporaryDirectory(dir=args.gen) as tmp:
                root = Path(tmp) / "store"
                shutil.copytree(args.gen / "store", root)
                st = Store.open(root)
                hashes = st.hasher.hash_many(subjects)
                t0 = time.perf_counter()
                res = st.forget_subjects(hashes, f"req-bench-{offset}", purge=args.purge)
                t1 = time.perf_counter()
                st.set_model_stage(_any_model(st), "archived", reason="bench: the next write")
                t2 = time.perf_counter()
                runs.append({"seconds": t1 - t0, "next_write_seconds": t2 - t1,
                             "records_removed": res["records_removed"],
                             "versions_rewritten": len(res["rows_removed"]),
                             "cleaned_versions": len(res["cleaned_versions"]),
                             "files_rewritten": res["files_rewritten"], "tombstones": res["tombstones_added"]})
        med = statistics.median(r["seconds"] for r in runs)
        results["runs"][str(n)] = {"median_seconds": med, "runs": runs}
        print(f"forget {n:>5} subject(s): median {med:.3f} s of {args.repeat} "
              f"({', '.join(format(r['seconds'], '.3f') for r in runs)}); "
              f"records {runs[0]['records_removed']}, versions rewritten {runs[0]['versions_rewritten']}, "
              f"cleaned {runs[0]['cleaned_versions']}, files {runs[0]['files_rewritten']}; "
              f"next write {statistics.median(r['next_write_seconds'] for r in runs):.3f} s")
    out = args.out or Path(__file__).resolve().parent / "out" / f"forget-{results['scale'] or 'x'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"results: {out}")
    return 0


def _any_model(st) -> str:
    with st.read() as con:
        name, no = con.execute("SELECT name, version_no FROM models ORDER BY model_id LIMIT 1").fetchall()[0]
    return f"{name}@{no}"


if __name__ == "__main__":
    sys.exit(main())
