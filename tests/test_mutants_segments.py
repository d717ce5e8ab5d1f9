"""Subject segments against a dict of subject → ordinals, with the cases the store rarely builds: hashes that
share their high half (the tie scan), unsorted ordinals, an empty segment, one subject, merges of several:
kills mutants of lineage/segments.py (bench/mutation.py)."""

from __future__ import annotations

import numpy as np
import pytest

from expunge.lineage import segments as S


def brute(pairs: list[tuple[tuple[int, int], int]]) -> dict[tuple[int, int], list[int]]:
    out: dict[tuple[int, int], list[int]] = {}
    for h, o in pairs:
        out.setdefault(h, []).append(o)
    return {h: sorted(v) for h, v in out.items()}


def segment(tmp_path, pairs, name="s.seg") -> S.Segment:
    hashes = np.array([h for h, _ in pairs], np.uint64).reshape(-1, 2)
    ords = np.array([o for _, o in pairs], np.uint32)
    path = tmp_path / name
    with open(path, "wb") as fh:
        assert S.write(fh, *S.from_records(hashes, ords)) == (len({h for h, _ in pairs}), len(pairs))
    return S.Segment(path)


def check(seg: S.Segment, expected: dict, queries):
    for q in queries:
        want = sorted(o for h in set(q) for o in expected.get(h, []))
        got = seg.records_of(np.array(q, np.uint64).reshape(-1, 2))
        assert sorted(got.tolist()) == want, q
    if expected:
        assert seg.n_subjects == len(expected)
        assert seg.n_records == sum(len(v) for v in expected.values())


# subjects (hi, lo): three share hi = 5 (a half collision), one sorts after them
A, B, C, D = (5, 1), (5, 9), (5, 4), (7, 0)
# absent: a missing lo under a present hi, a missing hi whose lo is the next subject's, before and after all
ABSENT = [(5, 2), (6, 1), (6, 0), (0, 0), (2**64 - 1, 2**64 - 1)]


@pytest.mark.parametrize("ords_order", ["ascending", "descending"])
def test_lookup_with_half_collisions_equals_a_dict(tmp_path, ords_order):
    pairs = [(A, 3), (B, 1), (C, 8), (A, 0), (D, 2), (B, 5), (C, 4)]
    if ords_order == "descending":  # not ascending: the three-key sort
        pairs = pairs[::-1]
    seg = segment(tmp_path, pairs)
    expected = brute(pairs)
    check(seg, expected, [[A], [B], [C], [D], [A, C], [B, D], [A, B, C, D], *([h] for h in ABSENT), [A, (5, 2)]])
    idx = seg.find(np.array([A, B, C, D, (5, 2), (9, 9)], np.uint64))
    assert [seg.hi[i] == h[0] and seg.lo[i] == h[1] for i, h in zip(idx[:4], [A, B, C, D])] == [True] * 4
    assert idx[4:].tolist() == [-1, -1]


def test_one_subject_and_an_empty_segment(tmp_path):
    seg = segment(tmp_path, [(A, 7)])
    check(seg, {A: [7]}, [[A], [B], [A, B]])
    assert seg.records_of(np.array([A], np.uint64)).tolist() == [7]
    empty = segment(tmp_path, [], "e.seg")
    assert (empty.n_subjects, empty.n_records) == (0, 0)
    assert empty.records_of(np.array([A], np.uint64)).tolist() == []
    assert empty.find(np.array([A], np.uint64)).tolist() == [-1]
    merged = S.merge([empty.arrays(), seg.arrays()])  # an empty segment adds nothing to a merge
    assert [m.tolist() for m in merged] == [m.tolist() for m in seg.arrays()]


def test_a_file_that_is_not_a_segment_is_refused(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"NOTASEGM" + bytes(16))
    with pytest.raises(ValueError, match="is not a subject segment"):
        S.Segment(path)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merging_segments_equals_one_segment_of_everything(tmp_path, seed):
    rng = np.random.default_rng(seed)
    subjects = [(int(rng.integers(0, 3)), int(rng.integers(0, 4))) for _ in range(12)]  # many hi ties
    parts, pairs, next_ord = [], [], 0
    for k in range(4):  # older segments hold smaller ordinals
        n = int(rng.integers(0 if k else 1, 9))
        mine = [(subjects[int(rng.integers(0, len(subjects)))], next_ord + i) for i in range(n)]
        next_ord += n
        pairs += mine
        hashes = np.array([h for h, _ in mine], np.uint64).reshape(-1, 2)
        parts.append(S.from_records(hashes, np.array([o for _, o in mine], np.uint32)))
    merged = S.merge(parts)
    path = tmp_path / "m.seg"
    with open(path, "wb") as fh:
        S.write(fh, *merged)
    seg = S.Segment(path)
    expected = brute(pairs)
    check(seg, expected, [[h] for h in expected] + [list(expected)] + [[h] for h in ABSENT])
    # each subject's ordinals come out sorted, subjects in (hi, lo) order
    keys = list(zip(seg.hi.tolist(), seg.lo.tolist()))
    assert keys == sorted(expected)
    for i, h in enumerate(keys):
        assert seg.ords[int(seg.off[i]):int(seg.off[i + 1])].tolist() == expected[h]


def test_ranges_of_empty_and_single_blocks():
    assert S._ranges(np.array([4]), np.array([0])).tolist() == []
    assert S._ranges(np.array([4, 0, 9]), np.array([2, 0, 3])).tolist() == [4, 5, 9, 10, 11]
