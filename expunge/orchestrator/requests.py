"""Erasure requests: who asked to be forgotten, when, under which data category, by when.

Subjects are hashed on the way in (as everywhere in the store); a request keeps only the keyed
hashes. Status: received → planned → approved → executing → verified → closed, or failed.
The orchestrator's tables live in the same catalog, created on first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Sequence

import numpy as np

from expunge.errors import BadInput, UnknownReference
from expunge.lineage.store import Store, _now

STATUSES = ("received", "planned", "approved", "executing", "verified", "closed", "failed")
NEXT = {
    "received": ("planned", "failed"),
    "planned": ("planned", "approved", "failed"),
    "approved": ("executing", "planned", "failed"),
    "executing": ("verified", "failed"),
    "verified": ("closed", "failed"),
    "closed": (),
    "failed": ("planned",),
}

DDL = """
CREATE TABLE IF NOT EXISTS requests(
    request_id VARCHAR PRIMARY KEY, received_at TIMESTAMP NOT NULL, deadline_at TIMESTAMP NOT NULL,
    category VARCHAR NOT NULL, reason VARCHAR, status VARCHAR NOT NULL, n_subjects INTEGER NOT NULL,
    updated_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS request_subjects(request_id VARCHAR, hi UBIGINT, lo UBIGINT);
"""


@dataclass(frozen=True)
class Request:
    id: str
    received_at: datetime
    deadline_at: datetime
    category: str
    reason: str | None
    status: str
    subjects: int

    def to_dict(self) -> dict:
        return {
            "id": self.id, "received_at": self.received_at.isoformat() + "Z",
            "deadline_at": self.deadline_at.isoformat() + "Z", "category": self.category, "reason": self.reason,
            "status": self.status, "subjects": self.subjects,
        }


def ensure_tables(con) -> None:
    con.execute(DDL)


def _has_tables(con) -> bool:
    return bool(con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'requests'").fetchall()[0][0])


def create(store: Store, subjects: Sequence[str], *, category: str | None = None, deadline_days: int | None = None,
           reason: str | None = None, policy=None, now: datetime | None = None) -> Request:
    """Record a request. The deadline defaults to the policy's for the category."""
    from expunge.orchestrator.policy import load_policy

    subjects = list(dict.fromkeys(subjects))
    if not subjects:
        raise BadInput("a request needs at least one --subject")
    policy = policy or load_policy(None)
    category = category or policy.default_category
    rule = policy.category(category)
    days = rule.deadline_days if deadline_days is None else deadline_days
    if days <= 0:
        raise BadInput(f"the deadline must be at least one day (got {days})")
    received = now or _now()
    hashes = store.hasher.hash_many(subjects)
    with store.write() as txn:
        ensure_tables(txn.con)
        n = int(txn.one("SELECT count(*) FROM requests")) + 1
        rid = f"req-{n:06d}"
        txn.con.execute(
            "INSERT INTO requests VALUES (?, ?, ?, ?, ?, 'received', ?, ?)",
            [rid, received, received + timedelta(days=days), category, reason, len(subjects), received],
        )
        import pyarrow as pa

        txn.con.register("_subj", pa.table({"hi": pa.array(hashes[:, 0]), "lo": pa.array(hashes[:, 1])}))
        txn.con.execute("INSERT INTO request_subjects SELECT ?, hi, lo FROM _subj", [rid])
        txn.con.unregister("_subj")
    return get(store, rid)


def _row_to_request(row) -> Request:
    return Request(row[0], row[1], row[2], row[3], row[4], row[5], row[6])


def list_requests(store: Store, status: str | None = None) -> list[Request]:
    with store.read() as con:
        if not _has_tables(con):
            return []
        sql = ("SELECT request_id, received_at, deadline_at, category, reason, status, n_subjects FROM requests"
               + (" WHERE status = ?" if status else "") + " ORDER BY request_id")
        return [_row_to_request(r) for r in con.execute(sql, [status] if status else []).fetchall()]


def get(store: Store, request_id: str) -> Request:
    with store.read() as con:
        rows = [] if not _has_tables(con) else con.execute(
            "SELECT request_id, received_at, deadline_at, category, reason, status, n_subjects FROM requests "
            "WHERE request_id = ?", [request_id]).fetchall()
    if not rows:
        raise UnknownReference(f"unknown request {request_id!r}")
    return _row_to_request(rows[0])


def subject_hashes(store: Store, request_ids: Sequence[str]) -> np.ndarray:
    """(n, 2) subject hashes of the given requests (deduplicated)."""
    with store.read() as con:
        if not _has_tables(con):
            raise UnknownReference(f"unknown request {request_ids[0]!r}")
        rows = con.execute(
            f"SELECT DISTINCT hi, lo FROM request_subjects WHERE request_id IN "
            f"({', '.join('?' for _ in request_ids)})", list(request_ids)).fetchall()
    return np.array(rows, dtype=np.uint64).reshape(-1, 2)


def set_status(txn, request_id: str, status: str) -> None:
    cur = txn.one("SELECT status FROM requests WHERE request_id = ?", [request_id])
    if cur is None:
        raise UnknownReference(f"unknown request {request_id!r}")
    if status not in NEXT[cur]:
        raise BadInput(f"request {request_id} is {cur}; it cannot become {status}")
    txn.con.execute("UPDATE requests SET status = ?, updated_at = ? WHERE request_id = ?",
                    [status, _now(), request_id])
