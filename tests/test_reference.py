"""Impact from the store equals a plain-Python reference over the same random lineages."""

from __future__ import annotations

from collections import deque

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from expunge.lineage.store import Store


class Reference:
    """Sets and dicts only: what touched what, computed the obvious way."""

    def __init__(self):
        self.owner: dict[tuple[str, str], str] = {}  # (dataset, record id) → subject
        self.versions: dict[str, dict[str, set]] = {}  # label → {row id: set of records}
        self.runs: dict[str, dict] = {}
        self.models: dict[str, dict] = {}  # name → {run, parents: [(name, relation)]}

    def impact(self, subjects):
        subjects = set(subjects)
        recs = {r for r, s in self.owner.items() if s in subjects}
        ds = {}
        for label, rows in self.versions.items():
            held = set().union(*rows.values()) & recs
            if held:
                ds[label] = (len(held), sum(1 for rs in rows.values() if rs & recs))
        runs = {}
        for name, r in self.runs.items():
            per, union, train = [], set(), set()
            for label, role, subset in r["inputs"]:
                rows = self.versions[label]
                held = set().union(*[rows[k] for k in (subset if subset is not None else rows)]) & recs
                per.append((label, role, len(held)))
                union |= held
                if role == "train":
                    train |= held
            if not union:
                continue
            shards, first_seen = {}, None
            facts = r["facts"]  # record → list of (shard, slice, first_step), one per row holding it
            if facts and train:
                for sh in sorted({a for rec in train for a, _, _ in facts[rec]}):
                    in_shard = {rec for rec in train if any(a == sh for a, _, _ in facts[rec])}
                    first_slice = min(b for rec in in_shard for a, b, _ in facts[rec] if a == sh)
                    shards[sh] = (len(in_shard), first_slice)
                steps = r["ckpt_steps"]
                if steps:
                    k = min(sum(1 for s in steps if s <= c) for rec in train for _, _, c in facts[rec])
                    first_seen = (k, steps[k - 1] if k else None, steps[k] if k < len(steps) else None)
            runs[name] = (len(union), per, shards, first_seen)
        direct = sorted(m for m, d in self.models.items() if d["run"] in runs)
        paths = {m: [] for m in direct}
        q = deque(direct)
        while q:
            m = q.popleft()
            for c, d in sorted(self.models.items()):
                for p, rel in d["parents"]:
                    if p == m and c not in paths:
                        paths[c] = paths[m] + [(m, rel)]
                        q.append(c)
        return len(recs), ds, runs, {m: (not p, len(p)) for m, p in paths.items()}


SUBJECT_STEMS = ["a", "b", " a", "0042", "42", "x y", "é"]


@st.composite
def lineages(draw):
    subjects = sorted({draw(st.sampled_from(SUBJECT_STEMS)) + str(draw(st.integers(0, 3)))
                       for _ in range(draw(st.integers(1, 6)))})
    ops = []
    counter = 0
    for d in range(draw(st.integers(1, 3))):
        known: list[tuple[str, str]] = []
        for _ in range(draw(st.integers(1, 2))):
            rows = [k for k in known if draw(st.booleans())]
            for _ in range(draw(st.integers(0 if rows else 1, 6))):
                rows.append((f"r{counter}", draw(st.sampled_from(subjects))))
                counter += 1
            known = rows
            ops.append(("source", f"src{d}", rows))
    for i in range(draw(st.integers(0, 3))):
        ops.append(("derive", f"der{i}", draw(st.integers(0, 2**32)), draw(st.sampled_from(["filter", "join"]))))
    for i in range(draw(st.integers(0, 4))):
        ops.append(("run", f"run{i}", draw(st.integers(0, 2**32))))
    for i in range(draw(st.integers(0, 3))):
        ops.append(("model", f"derived{i}", draw(st.integers(0, 2**32))))
    pool = subjects + ["nobody"]
    queries = draw(st.lists(st.lists(st.sampled_from(pool), min_size=1, max_size=4), min_size=1, max_size=3))
    return ops, queries


def apply_ops(ops, store: Store, ref: Reference) -> None:
    for op in ops:
        kind, name, arg = op[0], op[1], op[2]
        if kind == "source":
            info = store.ingest_source({"s": [s for _, s in arg], "r": [r for r, _ in arg]}, name=name,
                                       subject_col="s", record_col="r")
            for r, s in arg:
                ref.owner.setdefault((name, r), s)
            ref.versions[info.id] = {r: {(name, r)} for r, _ in arg}
        elif kind == "derive":
            rng = np.random.default_rng(arg)
            parent = sorted(ref.versions)[rng.integers(len(ref.versions))]
            prow = ref.versions[parent]
            pids = sorted(prow)
            if op[3] == "filter":
                keep = [p for p in pids if rng.random() < 0.6] or pids[:1]
                info = store.ingest_dataset({"id": keep}, name=name, parents=[parent], kind="filter", record_col="id")
                rows = {k: set(prow[k]) for k in keep}
            else:
                lists = [[p for p in pids if rng.random() < 0.5] for _ in range(int(rng.integers(1, 4)))]
                info = store.ingest_dataset({"row": [f"j{i}" for i in range(len(lists))], "src": lists}, name=name,
                                            parents=[parent], kind="join", sources={parent: "src"}, row_col="row")
                rows = {f"j{i}": set().union(*[prow[p] for p in lst]) for i, lst in enumerate(lists)}
            ref.versions[info.id] = rows
        elif kind == "run":
            rng = np.random.default_rng(arg)
            labels = sorted(ref.versions)
            chosen = list(rng.choice(labels, size=int(rng.integers(1, min(3, len(labels)) + 1)), replace=False))
            inputs, ref_inputs = [], []
            for j, label in enumerate(chosen):
                role = "train" if j == 0 else str(rng.choice(["val", "eval", "train"]))
                ids = sorted(ref.versions[label])
                subset = ([r for r in ids if rng.random() < 0.5] or ids[:1]) if rng.random() < 0.4 else None
                inp = {"dataset": label, "role": role}
                if subset is not None:
                    inp["rows"] = subset
                inputs.append(inp)
                ref_inputs.append((label, role, subset))
            run = {"name": name, "inputs": inputs}
            facts: dict = {}
            steps: list[int] = []
            if rng.random() < 0.6 and sum(1 for i in inputs if i["role"] == "train") == 1:
                rows = inputs[0].get("rows") or sorted(ref.versions[chosen[0]])
                shard, sl, fs = (rng.integers(0, 3, len(rows)), rng.integers(0, 3, len(rows)),
                                 rng.integers(0, 50, len(rows)))
                steps = sorted({int(x) for x in rng.integers(1, 50, int(rng.integers(0, 4)))})
                run["facts"] = {"rows": rows, "shard": shard.tolist(), "slice": sl.tolist(), "first_step": fs.tolist()}
                run["checkpoints"] = [{"step": s, "path": f"c{s}", "sha256": "0" * 64} for s in steps]
                for r, a, b, c in zip(rows, shard, sl, fs):
                    for rec in ref.versions[chosen[0]][r]:
                        facts.setdefault(rec, []).append((int(a), int(b), int(c)))
            n_models = int(rng.integers(0, 3))
            models = [{"name": f"{name}-m{j}", "sha256": "1" * 64} for j in range(n_models)]
            store.record_run({"run": run, "models": models})
            ref.runs[name] = {"inputs": ref_inputs, "facts": facts, "ckpt_steps": steps}
            for m in models:
                ref.models[m["name"]] = {"run": name, "parents": []}
        elif kind == "model":
            rng = np.random.default_rng(arg)
            parents = []
            if ref.models:
                for p in sorted(ref.models):
                    if rng.random() < 0.4:
                        parents.append((p, str(rng.choice(["fine-tune", "distill", "ensemble"]))))
            store.register_model(name, "unused", sha256="2" * 64,
                                 parents=[{"model": p, "relation": r} for p, r in parents])
            ref.models[name] = {"run": None, "parents": parents}


def check(store: Store, ref: Reference, subjects) -> None:
    got = store.impact(subjects)
    n, ds, runs, models = ref.impact(subjects)
    assert got.records == n
    assert got.found == len({s for s in subjects if s in set(ref.owner.values())})
    assert {d["id"]: (d["records"], d["rows"]) for d in got.datasets} == ds
    assert {r["id"]: r["records"] for r in got.runs} == {k: v[0] for k, v in runs.items()}
    for r in got.runs:
        exp = runs[r["id"]]
        assert [(i["dataset"], i["role"], i["records"]) for i in r["inputs"]] == exp[1]
        assert {s["shard"]: (s["records"], s["first_slice"]) for s in r["shards"]} == exp[2]
        fs = r["first_seen"]
        assert (None if fs is None else (fs["clean_checkpoints"], fs["last_clean_step"], fs["first_dirty_step"])) \
            == exp[3]
    assert {m["id"].rsplit("@", 1)[0]: (m["direct"], len(m["path"])) for m in got.models} == models


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(lineages())
def test_impact_matches_reference(tmp_path_factory, case):
    ops, queries = case
    store = Store.init(tmp_path_factory.mktemp("s") / "store")
    ref = Reference()
    apply_ops(ops, store, ref)
    from expunge.lineage import impact

    limit = impact.MASK_LIMIT
    try:
        for mask_limit in (limit, 0):  # the bit-mask path (small queries) and the roaring path (batches)
            impact.MASK_LIMIT = mask_limit
            for q in queries:
                check(store, ref, q)
            check(store, ref, sorted({s for q in queries for s in q}))  # one batch of all
    finally:
        impact.MASK_LIMIT = limit
