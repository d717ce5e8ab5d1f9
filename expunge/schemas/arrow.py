"""Arrow schemas of the record-level files under `<store>/data/`."""

from __future__ import annotations

import pyarrow as pa

# Record ids of one source ingest; ordinal = record_segments.ord_start + row number.
# `owner`: 16 bits of the record's subject hash, to refuse a later version that moves it to another subject.
RECORD_IDS = pa.schema([
    pa.field("record_id", pa.string(), nullable=False),
    pa.field("owner", pa.uint16(), nullable=False),
])

# Row ids of a composed version (join, aggregate, augment), in row order. Which records each row was
# built from is the version's rowmap: a (2, n) uint32 .npy of (ordinal, row) pairs sorted by ordinal.
COMPOSED_ROWS = pa.schema([pa.field("row_id", pa.string(), nullable=False)])

# Run facts are a binary file (roaring bitmap + one code per record): see expunge/lineage/facts.py.
