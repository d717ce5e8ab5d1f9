"""A run's facts file against a brute-force reading of the same facts, at the sizes where the code changes path
(256 records looked up, 256 distinct codes) and at the edges (no record, one record, unknown fields): kills
mutants of lineage/facts.py (bench/mutation.py)."""

from __future__ import annotations

import numpy as np
import pytest
from pyroaring import BitMap

from expunge.lineage import facts as F


def brute_clean(first: int, steps: list[int]) -> int:
    return -1 if first < 0 or not steps else sum(1 for s in steps if s <= first)


@pytest.mark.parametrize("steps", [[], [0], [4], [2, 4], [0, 3, 3, 9]])
def test_clean_counts_at_every_step(steps):
    first = np.arange(-1, 12)
    assert F.clean_counts(first, sorted(steps)).tolist() == [brute_clean(int(x), sorted(steps)) for x in first]


def brute_lookup(rows: list[tuple[int, int, int, int]], query: set[int], steps: list[int]):
    """rows: (ordinal, shard, slice, clean) per training row; the expected `RunFacts.lookup` answer."""
    per_record: dict[int, set] = {}
    for o, sh, sl, cl in rows:
        per_record.setdefault(o, set()).add((sh, sl, cl))
    hit = sorted(set(per_record) & query)
    if not hit:
        return [], None
    shards = {}
    for o in hit:
        for sh in {t[0] for t in per_record[o] if t[0] >= 0}:
            n, first = shards.get(sh, (0, None))
            slices = [t[1] for t in per_record[o] if t[0] == sh and t[1] >= 0]
            best = min(slices) if slices else None
            first = best if first is None else (first if best is None else min(first, best))
            shards[sh] = (n + 1, first)
    cleans = [t[2] for o in hit for t in per_record[o] if t[2] >= 0]
    seen = None
    if cleans:
        c = min(cleans)
        seen = {"clean_checkpoints": c, "last_clean_step": steps[c - 1] if c >= 1 else None,
                "first_dirty_step": steps[c] if c < len(steps) else None}
    return [{"shard": sh, "records": n, "first_slice": f} for sh, (n, f) in sorted(shards.items())], seen


def written(tmp_path, rows, steps):
    a = np.array(rows, np.int64).reshape(-1, 4)
    data, index = F.encode(a[:, 0].astype(np.uint32), a[:, 1], a[:, 2], a[:, 3])
    index["clean_steps"] = steps
    path = tmp_path / "run.facts"
    path.write_bytes(data)
    return path, index


def random_rows(rng, n_records: int, shards: int, slices: int, steps: int, extra: int):
    rows = [(o, int(rng.integers(-1, shards)), int(rng.integers(-1, slices)), int(rng.integers(-1, steps + 1)))
            for o in rng.choice(10 * n_records + 1, n_records, replace=False).tolist()]
    # some records reached through several rows, with other facts
    rows += [(rows[i][0], int(rng.integers(0, shards)), int(rng.integers(0, slices)), int(rng.integers(0, steps + 1)))
             for i in rng.integers(0, n_records, extra).tolist()]
    return rows


@pytest.mark.parametrize("seed,n,query", [(0, 1, 1), (1, 40, 5), (2, 600, 256), (3, 600, 257), (4, 600, 600)])
def test_lookup_equals_brute_force(tmp_path, seed, n, query):
    rng = np.random.default_rng(seed)
    steps = [10, 20, 30]
    rows = random_rows(rng, n, shards=4, slices=3, steps=len(steps), extra=n // 3)
    path, index = written(tmp_path, rows, steps)
    facts = F.RunFacts(path, index)
    ords = sorted({r[0] for r in rows})
    assert index["records"] == len(ords) and list(facts.records) == ords
    q = set(rng.choice(ords, query, replace=False).tolist()) | {10 * n + 7}  # and one it never saw
    assert facts.lookup(BitMap(q)) == brute_lookup(rows, q, steps)
    assert facts.lookup(BitMap([10 * n + 7])) == ([], None) and facts.lookup(BitMap()) == ([], None)


def test_one_record_with_nothing_known(tmp_path):
    path, index = written(tmp_path, [(5, -1, -1, -1)], [])
    assert index["codes"] == [[[-1, -1, -1]]] and index["dtype"] == "uint8"
    assert F.RunFacts(path, index).lookup(BitMap([5])) == ([], None)


def test_clean_checkpoint_edges(tmp_path):
    steps = [10, 20]
    path, index = written(tmp_path, [(1, 0, 0, 0), (2, 0, 1, 2), (3, 1, 0, 1)], steps)
    facts = F.RunFacts(path, index)
    # no clean checkpoint: replay from the start, the first is dirty
    assert facts.lookup(BitMap([1]))[1] == {"clean_checkpoints": 0, "last_clean_step": None, "first_dirty_step": 10}
    # every checkpoint clean: none dirty
    assert facts.lookup(BitMap([2]))[1] == {"clean_checkpoints": 2, "last_clean_step": 20, "first_dirty_step": None}
    assert facts.lookup(BitMap([2, 3])) == (
        [{"shard": 0, "records": 1, "first_slice": 1}, {"shard": 1, "records": 1, "first_slice": 0}],
        {"clean_checkpoints": 1, "last_clean_step": 10, "first_dirty_step": 20})


@pytest.mark.parametrize("combos,dtype", [(256, "uint8"), (257, "uint16")])
def test_code_width_follows_the_number_of_distinct_facts(tmp_path, combos, dtype):
    rows = [(o, o % 64, o // 64, -1) for o in range(combos)]  # every record its own (shard, slice)
    path, index = written(tmp_path, rows, [])
    assert index["dtype"] == dtype and len(index["codes"]) == combos
    facts = F.RunFacts(path, index)
    assert facts.lookup(BitMap([combos - 1]))[0] == [{"shard": (combos - 1) % 64, "records": 1,
                                                      "first_slice": (combos - 1) // 64}]


def test_without_records_equals_the_facts_never_holding_them(tmp_path):
    rng = np.random.default_rng(7)
    steps = [5]
    rows = random_rows(rng, 300, shards=3, slices=2, steps=1, extra=50)
    path, index = written(tmp_path, rows, steps)
    ords = sorted({r[0] for r in rows})
    erased = set(ords[:3]) | {ords[-1]} | {10**6}
    data, new_index = F.without_records(path, index, BitMap(erased))
    kept_rows = [r for r in rows if r[0] not in erased]
    path2 = tmp_path / "kept.facts"
    path2.write_bytes(data)
    facts = F.RunFacts(path2, new_index)
    assert new_index["records"] == len(ords) - 4 and list(facts.records) == sorted({r[0] for r in kept_rows})
    q = set(ords)
    assert facts.lookup(BitMap(q)) == brute_lookup(kept_rows, q, steps)
    assert F.without_records(path, index, BitMap([10**6])) is None


def test_a_file_that_is_not_a_facts_file_is_refused(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"NOTFACTS" + bytes(8))
    with pytest.raises(ValueError, match="is not a facts file"):
        F.RunFacts(path, {"dtype": "uint8", "codes": []})


def test_a_row_repeated_with_the_same_facts_is_stored_once(tmp_path):
    # r2 reached through two rows with identical facts: one triple, one code, not a two-triple combination.
    path, index = written(tmp_path, [(1, 0, 0, 0), (2, 0, 0, 0), (2, 0, 0, 0), (3, 1, 0, 0), (3, 1, 0, 0)], [4])
    assert index["codes"] == [[[0, 0, 0]], [[1, 0, 0]]] and index["records"] == 3
    assert F.RunFacts(path, index).lookup(BitMap([2, 3]))[0] == [{"shard": 0, "records": 1, "first_slice": 0},
                                                                  {"shard": 1, "records": 1, "first_slice": 0}]
