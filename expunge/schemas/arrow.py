"""Arrow schemas of the record-level files under `<store>/data/`."""

from __future__ import annotations

import pyarrow as pa

# Record ids of one source ingest; ordinal = record_segments.ord_start + row number.
# `owner`: 32 bits of the record's subject hash, to refuse a later version that moves it to another subject.
RECORD_IDS = pa.schema([
    pa.field("record_id", pa.string(), nullable=False),
    pa.field("owner", pa.uint32(), nullable=False),
])

# Rows of a composed version (join, aggregate, augment): its row ids and the source records of each.
COMPOSED_ROWS = pa.schema([
    pa.field("row_id", pa.string(), nullable=False),
    pa.field("ords", pa.list_(pa.uint32()), nullable=False),
])

# Unlearning facts of a run's training records, sorted by ordinal; -1 = not recorded.
RUN_FACTS = pa.schema([
    pa.field("ord", pa.uint32(), nullable=False),
    pa.field("shard", pa.int32(), nullable=False),
    pa.field("slice", pa.int32(), nullable=False),
    pa.field("first_step", pa.int64(), nullable=False),
])
