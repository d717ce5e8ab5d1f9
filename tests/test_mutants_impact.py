"""Impact of a batch larger than the bit-mask path takes (> 64 × 64 records: the roaring path) against counts
worked out from the lineage: kills mutants of lineage/impact.py the property tests, whose queries stay small,
let live (bench/mutation.py)."""

from __future__ import annotations

from expunge.lineage.impact import MASK_LIMIT

N = MASK_LIMIT + 4  # subjects, one record each: querying all of them takes the roaring path


def test_a_large_batch_counts_runs_that_saw_one_record_and_runs_that_saw_many(store):
    subjects = [f"s{i}" for i in range(N)]
    store.ingest_source({"s": subjects, "r": [f"r{i}" for i in range(N)]}, name="d", subject_col="s",
                        record_col="r")
    runs = {"one": ["r0"], "two": ["r1", "r2"], "tail": [f"r{i}" for i in range(N - 10, N)]}
    for name, rows in runs.items():
        store.record_run({"run": {"name": name, "inputs": [{"dataset": "d@1", "rows": rows},
                                                            {"dataset": "d@1", "role": "eval", "rows": ["r5"]}]},
                          "models": [{"name": f"m-{name}", "sha256": "0" * 64}]})
    store.record_run({"run": {"name": "all", "inputs": [{"dataset": "d@1"}]}})

    big = store.impact(subjects)  # N > MASK_LIMIT records
    small = store.impact(subjects[:3])  # 3 records: the bit-mask path
    assert big.records == N and small.records == 3
    got = {r["id"]: (r["records"], [i["records"] for i in r["inputs"]]) for r in big.runs}
    # each run: the records of the query it consumed (train rows ∪ the eval row r5), per input
    assert got == {"one": (2, [1, 1]), "two": (3, [2, 1]), "tail": (11, [10, 1]), "all": (N, [N])}
    got_small = {r["id"]: (r["records"], [i["records"] for i in r["inputs"]]) for r in small.runs}
    assert got_small == {"one": (1, [1, 0]), "two": (2, [2, 0]), "all": (3, [3])}
    assert sorted(m["id"] for m in big.models) == ["m-one@1", "m-tail@1", "m-two@1"]
