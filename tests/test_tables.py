"""Reading the rows of a few ids from a features table (`tables.read_rows_by_id`), against a row-by-row
reading of the same table in Python."""

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from expunge.errors import BadInput
from expunge.lineage import tables


def brute(table: pa.Table, id_col: str, columns: list[str], ids: list[str]) -> list[tuple]:
    wanted = set(ids)
    d = table.to_pydict()
    out = []
    for i in range(table.num_rows):
        v = d[id_col][i]
        if v is not None and str(v) in wanted:
            out.append(tuple(str(v) if c == id_col else d[c][i] for c in columns))
    return out


def rows_of(t: pa.Table) -> list[tuple]:
    d = t.to_pydict()
    return list(zip(*(d[c] for c in t.column_names)))


@pytest.fixture(params=["duckdb", "pyarrow"])
def scan(request, monkeypatch):
    # Both ways of reading a Parquet file: DuckDB's scan (large files) and pyarrow's whole read (small ones).
    monkeypatch.setattr(tables, "DUCKDB_SCAN_ROWS", 0 if request.param == "duckdb" else 10**12)
    return request.param


def make(n: int, seed: int = 0, int_ids: bool = False) -> pa.Table:
    rng = np.random.default_rng(seed)
    ids = pa.array(rng.permutation(n).astype(np.int64)) if int_ids else \
        pa.array([f"r-{i:05d}" for i in rng.permutation(n)])
    return pa.table({"row id": ids, "f\"0": rng.standard_normal(n).astype(np.float32),
                     "f1": rng.standard_normal(n).astype(np.float32), "y": rng.integers(0, 2, n)})


@pytest.mark.parametrize("k", [0, 1, 2, 57])
def test_rows_by_id_match_a_row_by_row_reading(tmp_path, scan, k):
    t = make(500, seed=k)
    path = tmp_path / "f.parquet"
    pq.write_table(t, path, row_group_size=128)  # several row groups
    cols = ["row id", "f\"0", "y"]
    all_ids = t.column("row id").to_pylist()
    want = [all_ids[i] for i in np.random.default_rng(k).choice(500, k, replace=False)] + ["absent"]
    got = tables.read_rows_by_id(path, "row id", cols, pa.array(want))
    assert got.column_names == cols
    assert rows_of(got) == brute(t, "row id", cols, want)  # the file's order, every column's value


def test_integer_ids_are_their_decimal_text(tmp_path, scan):
    t = make(300, int_ids=True)
    path = tmp_path / "f.parquet"
    pq.write_table(t, path)
    got = tables.read_rows_by_id(path, "row id", ["row id", "f1"], pa.array(["7", "0042", "299"]))
    assert rows_of(got) == brute(t, "row id", ["row id", "f1"], ["7", "299"])  # "0042" is not 42
    assert got.column("row id").type == pa.string()


def test_a_repeated_id_comes_back_twice_and_a_null_never(tmp_path, scan):
    t = pa.table({"id": pa.array(["a", "b", None, "a"]), "x": pa.array([1.0, 2.0, 3.0, 4.0])})
    path = tmp_path / "f.parquet"
    pq.write_table(t, path)
    got = tables.read_rows_by_id(path, "id", ["id", "x"], pa.array(["a", "c"]))
    assert rows_of(got) == [("a", 1.0), ("a", 4.0)]


def test_csv_is_read_whole(tmp_path):
    path = tmp_path / "f.csv"
    pcsv.write_csv(pa.table({"id": ["0042", "42"], "x": [1.5, 2.5]}), path)
    got = tables.read_rows_by_id(path, "id", ["id", "x"], pa.array(["0042"]))
    assert rows_of(got) == [("0042", 1.5)]


def test_a_missing_column_is_one_line(tmp_path, scan):
    path = tmp_path / "f.parquet"
    pq.write_table(make(50), path)
    with pytest.raises(BadInput) as e:
        tables.read_rows_by_id(path, "row id", ["row id", "nope"], pa.array(["r-00001"]))
    assert "nope" in str(e.value) and "\n" not in str(e.value)
