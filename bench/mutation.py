"""Mutation testing of expunge/lineage/ and expunge/orchestrator/ with mutmut 3 (the `bench` extra). Not run in CI.

    pip install -e '.[bench]'
    python bench/mutation.py                               # the modules below, in this order
    python bench/mutation.py costs planner --minutes 20    # some modules, at most 20 minutes each

Each module gets its own scratch copy of the tree (under --workdir) with a `[tool.mutmut]` section that
mutates that one file and selects the fast tests mapped to it below (slow ones deselected); mutmut then runs,
for each mutant, only the selected tests that reached the mutated function, under `nice -n 19` with one
worker. Property tests run 10 derandomised examples without shrinking there (bench/mutation_plugin.py), so
a verdict does not depend on luck. mutmut keeps its verdicts in the scratch copy: running again resumes
where a time limit stopped it (--fresh starts over).

Writes bench/out/mutation.json (counts by module and status, and every survivor with its diff) and
bench/out/mutation.md (the score table). A survivor whose diff only changes the text of a string literal is
counted apart as `text` (wording of a message or a reason, which the tests do not pin) as well as in the
score; the equivalent mutants are listed with their reason in bench/MUTANTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

# Module → the fast tests that exercise it (mutmut narrows each mutant to those that reach its function).
T = "tests/"
MODULES: dict[str, list[str]] = {
    "expunge/orchestrator/planner.py": [T + "test_planner.py", T + "test_plan_lifecycle.py",
                                        T + "test_plan_semantics.py", T + "test_approvals.py",
                                        T + "test_requests_policy.py", T + "test_mutants_planner.py"],
    "expunge/orchestrator/costs.py": [T + "test_costs.py", T + "test_planner.py", T + "test_mutants_costs.py"],
    "expunge/orchestrator/actions.py": [T + "test_planner.py", T + "test_plan_semantics.py",
                                        T + "test_plan_lifecycle.py", T + "test_mutants_actions.py"],
    "expunge/orchestrator/policy.py": [T + "test_requests_policy.py", T + "test_fuzz_regressions.py",
                                       T + "test_approvals.py", T + "test_planner.py", T + "test_mutants_policy.py"],
    "expunge/orchestrator/requests.py": [T + "test_requests_policy.py", T + "test_plan_lifecycle.py",
                                         T + "test_bad_input.py", T + "test_cli.py", T + "test_mutants_requests.py"],
    "expunge/lineage/impact.py": [T + "test_reference.py", T + "test_store.py", T + "test_cli.py",
                                  T + "test_no_raw_ids.py", T + "test_mutants_impact.py"],
    "expunge/lineage/facts.py": [T + "test_forget.py", T + "test_planner.py", T + "test_mutants_facts.py"],
    "expunge/lineage/rows.py": [T + "test_forget.py", T + "test_store.py", T + "test_mutants_rows.py"],
    "expunge/lineage/segments.py": [T + "test_store.py", T + "test_keys.py", T + "test_forget.py",
                                    T + "test_mutants_segments.py"],
    # Second round: the rest of lineage/ and orchestrator/, those where a bug loses or misreports a deletion first.
    "expunge/lineage/forget.py": [T + "test_forget.py", T + "test_store.py", T + "test_union.py",
                                  T + "test_mutants_facts.py", T + "test_mutants_rows.py", T + "test_mutants_forget.py"],
    "expunge/orchestrator/execute.py": [T + "test_execute.py", T + "test_verify.py", T + "test_mutants_execute.py"],
    "expunge/orchestrator/verify.py": [T + "test_verify.py", T + "test_sisa.py", T + "test_mutants_verify.py",
                                       T + "test_mutants_execute.py",
                                       # executes a certified removal: its certificate check
                                       T + "test_execute.py::test_results_as_good_as_approximate_wait_for_their_check"],
    "expunge/orchestrator/certified.py": [T + "test_trainers.py", T + "test_execute.py", T + "test_planner.py",
                                          T + "test_security_sidedoors.py", T + "test_mutants_certified.py"],
    "expunge/orchestrator/residuals.py": [T + "test_verify.py", T + "test_execute.py", T + "test_sisa.py",
                                          T + "test_audit.py", T + "test_mutants_residuals.py"],
    "expunge/lineage/store.py": [T + "test_store.py", T + "test_keys.py", T + "test_file_safety.py",
                                 T + "test_mutants_store.py"],
    "expunge/lineage/ingest.py": [T + "test_store.py", T + "test_forget.py", T + "test_union.py",
                                  T + "test_bad_input.py", T + "test_fuzz_regressions.py", T + "test_no_raw_ids.py",
                                  T + "test_mutants_store.py", T + "test_mutants_ingest.py"],
    "expunge/lineage/runs.py": [T + "test_store.py", T + "test_planner.py", T + "test_bad_input.py",
                                T + "test_fuzz_regressions.py", T + "test_security_sidedoors.py",
                                T + "test_mutants_runs.py"],
    # (lineage/catalog.py is left out: constants and DDL only, no function for mutmut to mutate.)
    "expunge/lineage/keys.py": [T + "test_keys.py", T + "test_store.py", T + "test_no_raw_ids.py",
                                T + "test_file_safety.py", T + "test_mutants_keys.py"],
    "expunge/lineage/rekey.py": [T + "test_keys.py", T + "test_forget.py", T + "test_sisa.py", T + "test_mutants_rekey.py"],
    "expunge/lineage/tables.py": [T + "test_store.py", T + "test_no_raw_ids.py", T + "test_forget.py",
                                  T + "test_bad_input.py", T + "test_fuzz_regressions.py", T + "test_mutants_tables.py"],
    "expunge/lineage/fsutil.py": [T + "test_store.py", T + "test_file_safety.py", T + "test_keys.py",
                                  T + "test_mutants_fsutil.py"],
    "expunge/lineage/torch.py": [T + "test_trainers.py", T + "test_security_sidedoors.py", T + "test_replay.py",
                                 T + "test_mutants_torch.py"],
    "expunge/orchestrator/rerun.py": [T + "test_execute.py", T + "test_security_sidedoors.py", T + "test_trainers.py",
                                      T + "test_replay.py", T + "test_mutants_rerun.py"],
    "expunge/orchestrator/approvals.py": [T + "test_approvals.py", T + "test_plan_lifecycle.py",
                                          T + "test_mutants_approvals.py"],
    "expunge/orchestrator/certified_exec.py": [T + "test_execute.py", T + "test_trainers.py",
                                               T + "test_mutants_certified_exec.py"],
    "expunge/orchestrator/approximate.py": [T + "test_approximate.py", T + "test_verify.py",
                                            T + "test_mutants_approximate.py"],
    "expunge/orchestrator/approximate_exec.py": [T + "test_verify.py", T + "test_execute.py", T + "test_approximate.py",
                                                 T + "test_mutants_approximate_exec.py"],
    "expunge/orchestrator/mia.py": [T + "test_approximate.py", T + "test_verify.py", T + "test_mutants_mia.py"],
    "expunge/orchestrator/checks.py": [T + "test_planner.py", T + "test_plan_semantics.py", T + "test_mutants_actions.py",
                                       T + "test_plan_lifecycle.py", T + "test_mutants_checks.py"],
}
# Slow tests (tens of seconds each under load; kill/resume and end-to-end runs): not run per mutant.
DESELECT = [
    "tests/test_plan_semantics.py::test_plans_are_in_topological_order",
    "tests/test_keys.py::test_rotate_killed_leaves_a_working_store",
    "tests/test_forget.py::test_killed_forget_leaves_a_whole_store_and_reruns",
    "tests/test_store.py::test_forked_children_exit_cleanly",
    "tests/test_store.py::test_no_raw_subject_ids_anywhere",
    "tests/test_execute.py::test_killed_runs_resume_and_apply_each_action_once",
    "tests/test_execute.py::test_parallel_jobs_respect_the_order_and_give_the_same_models",
    "tests/test_verify.py::test_reproduce_reruns_in_a_fresh_process_and_compares_the_artifact",
    "tests/test_sisa.py::test_after_a_key_rotation_a_shard_retrain_keeps_every_row_in_its_recorded_shard",
    # Timing-dependent: which action is cheapest follows seconds the demo's training measured, and under
    # `nice -n 19` on a loaded machine a full retrain comes out cheaper than the certified step.
    "tests/test_planner.py::test_certified_removal_budget_from_the_runs_data",
]
# A crashed child ("segfault") is not counted as killed: it is retried on the next run, and reported apart.
STATUS_KILLED = {"killed", "timeout", "caught by type check"}


def short(module: str) -> str:
    return module.removeprefix("expunge/").removesuffix(".py").replace("/", ".")


def mutmut_bin() -> str:
    exe = Path(sys.executable).parent / "mutmut"
    if not exe.exists():
        sys.exit("mutmut is not installed: pip install -e '.[bench]'")
    return str(exe)


def prepare(module: str, workdir: Path, fresh: bool) -> Path:
    wd = workdir / short(module)
    if fresh and wd.exists():
        shutil.rmtree(wd)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in ("expunge", "tests"):
        if (wd / part).exists():
            shutil.rmtree(wd / part)
        shutil.copytree(ROOT / part, wd / part, ignore=ignore)
    tests = [t for t in MODULES[module] if (ROOT / t.split("::")[0]).exists()]  # a file, or one test of it
    args = ["-p", "no:cacheprovider", "-p", "mutation_plugin"] + [a for d in DESELECT for a in ("--deselect", d)]
    conf = (ROOT / "pyproject.toml").read_text() + "\n[tool.mutmut]\n" + "\n".join([
        'source_paths = ["expunge"]',
        f"only_mutate = {json.dumps([module])}",
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}",
        f"pytest_add_cli_args = {json.dumps(args)}",
        'on_dependency_change = "ignore"',
        # Forked straight from the process that ran the tests (torch, DuckDB threads), children crash with
        # SIGSEGV whatever the mutant; a fork server that has only collected the tests is fork-safe.
        'process_isolation = "forkserver"',
    ]) + "\n"
    (wd / "pyproject.toml").write_text(conf)
    (wd / "mutants").mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "mutation_plugin.py", wd / "mutants" / "mutation_plugin.py")
    return wd


def env_for(wd: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPUNGE_") and k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(wd / "mutants")
    env["COLUMNS"] = "200"
    return env


def reset_crashed(wd: Path, module: str) -> int:
    """Forget the verdicts of mutants that were not killed (their test process crashed, or they survived):
    mutmut tries them again."""
    path = wd / "mutants" / (module + ".meta")
    if not path.exists():
        return 0
    data = json.loads(path.read_text())
    from mutmut.stats import status_by_exit_code

    # Survivors too: mutmut keeps a verdict until asked again, and new tests may kill them now.
    crashed = [k for k, v in data["exit_code_by_key"].items()
               if v is not None and status_by_exit_code.get(v) in ("segfault", "survived", "no tests", "suspicious")]
    for k in crashed:
        data["exit_code_by_key"][k] = None
    path.write_text(json.dumps(data))
    return len(crashed)


GENERATE = """
import sys
from mutmut.__main__ import copy_also_copy_files, copy_src_dir, create_mutants, setup_source_paths
copy_src_dir(); copy_also_copy_files(); setup_source_paths(); create_mutants(1)
"""


def sample_of(wd: Path, module: str, n: int, seed: int, regenerate: bool = False) -> list[str]:
    """`n` of the module's mutants drawn uniformly (seeded): their score estimates the module's without
    checking all (a module whose tests build a store costs seconds a mutant). Before a run (`regenerate`) the
    mutants are generated from the current source first: a sample drawn from an older source's mutant names
    is not the one mutmut then checks (the second round's verify.py run was drawn so)."""
    import random

    if regenerate or not (wd / "mutants" / (module + ".meta")).exists():
        subprocess.run([sys.executable, "-c", GENERATE], cwd=wd, env=env_for(wd), check=True,
                       stdout=subprocess.DEVNULL)
    names = sorted(meta(wd, module)["exit_code_by_key"])
    return sorted(random.Random(seed).sample(names, min(n, len(names))))


def run_module(module: str, wd: Path, minutes: float, names: list[str] | None = None) -> dict:
    reset_crashed(wd, module)
    cmd = ["nice", "-n", "19", mutmut_bin(), "run", "--max-children", "1", *(names or [])]
    t0, c0 = time.time(), os.times()
    log = (wd / "mutmut.log").open("a")
    for attempt in range(2):
        try:
            rc = subprocess.run(cmd, cwd=wd, env=env_for(wd), stdout=log, stderr=subprocess.STDOUT,
                                timeout=max(minutes * 60 - (time.time() - t0), 1)).returncode
        except subprocess.TimeoutExpired:
            rc = "time limit"
            break
        if rc == 0 or attempt:
            break
    c1 = os.times()
    return {"rc": rc, "wall_seconds": round(time.time() - t0, 1),
            "cpu_seconds": round((c1.children_user + c1.children_system) - (c0.children_user + c0.children_system), 1)}


def meta(wd: Path, module: str) -> dict:
    path = wd / "mutants" / (module + ".meta")
    return json.loads(path.read_text()) if path.exists() else {"exit_code_by_key": {}}


def status_of(code) -> str:
    from mutmut.stats import status_by_exit_code

    return "not checked" if code is None else status_by_exit_code.get(code, f"exit {code}")


def diff_of(wd: Path, name: str) -> str:
    out = subprocess.run([mutmut_bin(), "show", name], cwd=wd, env=env_for(wd), capture_output=True, text=True,
                         timeout=120).stdout
    return "\n".join(line for line in out.splitlines() if line.startswith(("+", "-", "@")) and
                     not line.startswith(("+++", "---")))


_STR = re.compile(r"""(?P<q>['"])(?:\\.|(?!(?P=q)).)*(?P=q)""")


def text_only(diff: str) -> bool:
    """The mutant changes only the characters inside a string literal ('XX…XX' or a change of case) that reads as
    words (it holds a space): a message or a reason. A one-word literal is a key, a name or a value the code
    compares ("batch", "requests"), never counted as text."""
    minus = [line[1:] for line in diff.splitlines() if line.startswith("-")]
    plus = [line[1:] for line in diff.splitlines() if line.startswith("+")]
    if len(minus) != 1 or len(plus) != 1 or minus[0] == plus[0]:
        return False
    if _STR.sub('""', minus[0]) != _STR.sub('""', plus[0]):
        return False
    changed = [a.group(0) for a, b in zip(_STR.finditer(minus[0]), _STR.finditer(plus[0])) if a.group(0) != b.group(0)]
    return bool(changed) and all(" " in lit for lit in changed)


def summarise(module: str, wd: Path, with_diffs: bool, only: list[str] | None = None) -> dict:
    codes = meta(wd, module)["exit_code_by_key"]
    if only is not None:
        codes = {k: v for k, v in codes.items() if k in set(only)}
    by: dict[str, int] = {}
    survivors = []
    for name, code in sorted(codes.items()):
        s = status_of(code)
        by[s] = by.get(s, 0) + 1
        if s in ("survived", "no tests") and with_diffs:
            d = diff_of(wd, name)
            survivors.append({"mutant": name, "status": s, "text_only": text_only(d), "diff": d})
    checked = sum(n for s, n in by.items() if s != "not checked")
    killed = sum(n for s, n in by.items() if s in STATUS_KILLED)
    text = sum(1 for s in survivors if s["text_only"])
    return {"module": module, "mutants": len(codes), "checked": checked, "killed": killed, "by_status": by,
            "score": round(killed / checked, 4) if checked else None,
            "survivors_text_only": text,
            "score_without_text_only": round(killed / (checked - text), 4) if checked - text else None,
            "survivors": survivors}


def table(results: list[dict]) -> str:
    lines = ["| module | mutants (sampled) | checked | killed | survived | no tests | score | score without text-only |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    tot = {"mutants": 0, "checked": 0, "killed": 0, "survived": 0, "no tests": 0, "text": 0}
    for r in results:
        sv, nt = r["by_status"].get("survived", 0), r["by_status"].get("no tests", 0)
        pct = f"{100 * r['score']:.1f}%" if r["score"] is not None else "–"
        pct2 = f"{100 * r['score_without_text_only']:.1f}%" if r["score_without_text_only"] is not None else "–"
        size = f"{r['sample']['of']} ({r['mutants']})" if r.get("sample") else f"{r['mutants']}"
        lines.append(f"| {short(r['module'])} | {size} | {r['checked']} | {r['killed']} | {sv} | {nt} | "
                     f"{pct} | {pct2} |")
        for k, v in (("mutants", r["mutants"]), ("checked", r["checked"]), ("killed", r["killed"]),
                     ("survived", sv), ("no tests", nt), ("text", r["survivors_text_only"])):
            tot[k] += v
    if tot["checked"]:
        lines.append(f"| **all** | {tot['mutants']} | {tot['checked']} | {tot['killed']} | {tot['survived']} | "
                     f"{tot['no tests']} | {100 * tot['killed'] / tot['checked']:.1f}% | "
                     f"{100 * tot['killed'] / max(tot['checked'] - tot['text'], 1):.1f}% |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("modules", nargs="*", metavar="MODULE",
                    help="short names (planner, lineage.impact, ...) or paths; default: all of MODULES in order")
    ap.add_argument("--minutes", type=float, default=15.0, help="wall-clock limit per module (default 15)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/expunge-mutation"))
    ap.add_argument("--fresh", action="store_true", help="forget earlier verdicts")
    ap.add_argument("--report-only", action="store_true", help="summarise the verdicts already in --workdir")
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--sample", type=int, default=0, metavar="N",
                    help="check N mutants per module drawn uniformly (seeded), and score those (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    chosen = []
    for m in args.modules or list(MODULES):
        hits = [k for k in MODULES if m in (k, short(k), short(k).split(".")[-1])]
        if not hits:
            ap.error(f"unknown module {m!r}; expected one of {', '.join(short(k) for k in MODULES)}")
        chosen += hits
    from _common import code_version

    results = []
    for module in chosen:
        wd = args.workdir / short(module)
        run = names = None
        if not args.report_only:
            wd = prepare(module, args.workdir, args.fresh)
        if args.sample and wd.exists():
            names = sample_of(wd, module, args.sample, args.seed, regenerate=not args.report_only)
        if not args.report_only:
            print(f"mutating {module} (tests: {', '.join(MODULES[module])}) ...", flush=True)
            run = run_module(module, wd, args.minutes, names)
        if not wd.exists():
            continue
        r = summarise(module, wd, with_diffs=True, only=names)
        r["run"] = run
        r["sample"] = {"n": len(names), "seed": args.seed, "of": len(meta(wd, module)["exit_code_by_key"])} \
            if names else None
        results.append(r)
        print(f"  {short(module)}: {r['killed']}/{r['checked']} killed of {r['mutants']} "
              f"({r['by_status']}), run {run}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"code": code_version(), "load_average": os.getloadavg(), "tool": "mutmut " + _mutmut_version(),
           "deselected": DESELECT, "tests": {m: MODULES[m] for m in chosen}, "modules": results}
    (args.out / "mutation.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / "mutation.md").write_text(table(results))
    print(table(results))


def _mutmut_version() -> str:
    from importlib.metadata import version

    return version("mutmut")


if __name__ == "__main__":
    main()
