"""JSON Schemas of every document expunge reads or writes, and the Arrow schemas of its tables."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict:
    return json.loads(resources.files(__name__).joinpath(name).read_text())


def dumps(doc: dict) -> str:
    """Deterministic JSON: sorted keys, no NaN."""
    return json.dumps(doc, sort_keys=True, ensure_ascii=False, allow_nan=False, indent=2)
