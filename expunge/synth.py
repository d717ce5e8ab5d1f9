"""Seeded synthetic customer data: customer profiles and their transactions, with learnable labels.

No downloads: everything is generated from a seed, from a few rows (tests) to
millions (benchmarks).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def customer_ids(n: int, prefix: str = "cust-") -> list[str]:
    width = max(4, len(str(n - 1)))
    return [f"{prefix}{i:0{width}d}" for i in range(n)]


def customers(n: int, seed: int = 0, n_features: int = 8) -> pa.Table:
    """One profile record per customer: id, record id, features, a churn label."""
    rng = np.random.default_rng(seed)
    ids = customer_ids(n)
    x = rng.normal(size=(n, n_features)).astype(np.float32)
    w = rng.normal(size=n_features)
    logits = x @ w + 0.5 * rng.normal(size=n)
    cols = {"customer_id": ids, "record_id": [f"p-{i:07d}" for i in range(n)]}
    for j in range(n_features):
        cols[f"f{j}"] = x[:, j]
    cols["churned"] = (logits > 0).astype(np.int8)
    return pa.table(cols)


def transactions(n: int, n_customers: int, seed: int = 0, start: int = 0, day0: int = 0) -> pa.Table:
    """`n` transactions owned by random customers; ids `t-<start + i>` so later batches add new ones."""
    rng = np.random.default_rng(seed)
    ids = customer_ids(n_customers)
    owner = rng.integers(0, n_customers, size=n)
    amount = np.round(rng.lognormal(3.0, 1.0, size=n), 2)
    day = day0 + rng.integers(0, 90, size=n)
    fraud = (rng.random(n) < 0.02 + 0.1 * (amount > 100)).astype(np.int8)
    return pa.table({
        "customer_id": [ids[i] for i in owner],
        "tx_id": [f"t-{start + i:08d}" for i in range(n)],
        "amount": amount,
        "day": day.astype(np.int32),
        "fraud": fraud,
    })
