"""The store's on-disk layout and the DuckDB catalog schema.

    <store>/STORE                  format marker (JSON: format, store_id, key_file if given at init)
    <store>/lock                   writer lock (flock)
    <store>/CURRENT                name of the live catalog file
    <store>/catalog-<gen>.duckdb   the catalog: small entities (datasets, runs, models, ...)
    <store>/data/                  immutable record-level files referenced by the catalog

The subject-hash key is not here: see `keys` (a store made by an older expunge may still
hold `secret.key`; `expunge key migrate` moves it out). The directory is 0700, files 0600.

A write copies the live catalog, changes the copy, writes new data files, and
then switches CURRENT with an atomic rename: a crash at any point leaves the
previous generation whole and readable, and readers never wait on a writer.
"""

from __future__ import annotations

# Bumped whenever the catalog tables or the data files change shape; a store of another format is refused.
FORMAT = 3
CURRENT = "CURRENT"
MARKER = "STORE"
LOCK = "lock"
DATA = "data"

DDL = """
CREATE TABLE meta(key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE datasets(
    dataset_id INTEGER PRIMARY KEY, name VARCHAR UNIQUE NOT NULL, created_at TIMESTAMP);
CREATE TABLE dataset_versions(
    version_id INTEGER PRIMARY KEY, dataset_id INTEGER NOT NULL, version_no INTEGER NOT NULL,
    kind VARCHAR NOT NULL,            -- source | filter | sample | split | select | join | aggregate | augment | union
    row_space VARCHAR NOT NULL,       -- 'records': rows are source records; 'rows': own rows built from records
    record_dataset_id INTEGER,        -- for row_space 'records': the source dataset whose records are the rows
    n_rows BIGINT NOT NULL, n_records BIGINT NOT NULL,
    bitmap_file VARCHAR NOT NULL,     -- roaring bitmap of the source record ordinals it holds
    rows_file VARCHAR,                -- row_space 'rows': Parquet of the row ids
    rowmap_file VARCHAR,              -- row_space 'rows': (ordinal, row) pairs sorted by ordinal
    origin VARCHAR, created_at TIMESTAMP,
    UNIQUE(dataset_id, version_no));
CREATE TABLE version_parents(version_id INTEGER, parent_version_id INTEGER, position INTEGER);
CREATE TABLE record_segments(
    segment_id INTEGER PRIMARY KEY, dataset_id INTEGER NOT NULL,
    ord_start BIGINT NOT NULL, n BIGINT NOT NULL, ids_file VARCHAR NOT NULL);
CREATE TABLE subject_segments(
    segment_id INTEGER PRIMARY KEY, file VARCHAR NOT NULL,
    n_subjects BIGINT NOT NULL, n_records BIGINT NOT NULL);
CREATE TABLE runs(
    run_id INTEGER PRIMARY KEY, name VARCHAR UNIQUE NOT NULL,
    trainer VARCHAR, config JSON, code_version VARCHAR, seed BIGINT, model_family VARCHAR,
    wall_seconds DOUBLE, cpu_seconds DOUBLE, gpu_seconds DOUBLE,
    started_at TIMESTAMP, ended_at TIMESTAMP,
    n_shards INTEGER, n_slices INTEGER,
    facts_file VARCHAR,               -- per training record: shard, slice, clean checkpoints (lineage/facts.py)
    facts_index JSON,                 -- the code table of facts_file and the clean checkpoint steps
    extra JSON, created_at TIMESTAMP,
    total_steps BIGINT,               -- optimizer steps the run took (NULL: not recorded)
    setup_seconds DOUBLE,             -- loading its data before training (not in wall_seconds)
    record_seconds DOUBLE);           -- gathering its facts and recording it (a re-run of it pays both again)
CREATE TABLE run_inputs(
    run_id INTEGER, position INTEGER, version_id INTEGER, role VARCHAR,
    subset_file VARCHAR, n_rows BIGINT, n_records BIGINT);
CREATE TABLE checkpoints(
    run_id INTEGER, position INTEGER, step BIGINT, path VARCHAR, sha256 VARCHAR,
    shard INTEGER, slice INTEGER);
CREATE TABLE models(
    model_id INTEGER PRIMARY KEY, name VARCHAR NOT NULL, version_no INTEGER NOT NULL,
    artifact_path VARCHAR, sha256 VARCHAR, run_id INTEGER, stage VARCHAR NOT NULL,
    created_at TIMESTAMP, UNIQUE(name, version_no));
CREATE TABLE model_parents(model_id INTEGER, parent_model_id INTEGER, relation VARCHAR);
CREATE TABLE model_stages(           -- every stage change made after registration, with who-said-why
    model_id INTEGER NOT NULL, changed_at TIMESTAMP NOT NULL, from_stage VARCHAR NOT NULL,
    to_stage VARCHAR NOT NULL, reason VARCHAR NOT NULL);
CREATE TABLE retired_files(file VARCHAR, since_gen INTEGER);
"""

# Created by the first erasure (lineage/forget.py), so stores made before it need no migration.
# tombstones: the keyed hash of each forgotten subject and the request that erased it; later
# ingests skip their records. tombstone_ids: keyed hashes of the forgotten record ids (space
# 'records:<source dataset id>') and composed row ids ('rows:<version id>'), so that a derived
# ingest naming them skips them too. cleaned_versions: the filter versions made without the
# erased rows, and the cleaned copy of the data file written for each (NULL where none).
FORGET_DDL = """
CREATE TABLE IF NOT EXISTS tombstones(
    hi UBIGINT NOT NULL, lo UBIGINT NOT NULL, request_id VARCHAR NOT NULL, "at" TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS tombstone_ids(
    space VARCHAR NOT NULL, hi UBIGINT NOT NULL, lo UBIGINT NOT NULL, request_id VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS cleaned_versions(
    version_id INTEGER NOT NULL, parent_version_id INTEGER NOT NULL, request_id VARCHAR NOT NULL,
    file VARCHAR, "at" TIMESTAMP NOT NULL);
"""

SUBSET_KINDS = ("filter", "sample", "split", "select")
COMPOSITE_KINDS = ("join", "aggregate", "augment", "union")  # union: each row is one row of one parent
DERIVED_KINDS = SUBSET_KINDS + COMPOSITE_KINDS
ROLES = ("train", "val", "eval")
STAGES = ("dev", "staging", "production", "archived", "superseded")
RELATIONS = ("fine-tune", "distill", "ensemble")

# Every catalog column that names a file under data/ (for garbage collection).
FILE_COLUMNS = (
    ("dataset_versions", "bitmap_file"),
    ("dataset_versions", "rows_file"),
    ("dataset_versions", "rowmap_file"),
    ("record_segments", "ids_file"),
    ("subject_segments", "file"),
    ("runs", "facts_file"),
    ("run_inputs", "subset_file"),
    ("retired_files", "file"),
)
