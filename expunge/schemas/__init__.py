"""JSON Schemas of every document expunge reads or writes, and the Arrow schemas of its tables."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict:
    return json.loads(resources.files(__name__).joinpath(name).read_text())


def dumps(doc: dict, indent: int | None = None) -> str:
    """Deterministic JSON: sorted keys, no NaN; compact by default (the C encoder: large plans and
    impacts print in milliseconds; pipe through `jq` to read them)."""
    if indent is None:
        return json.dumps(doc, sort_keys=True, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return json.dumps(doc, sort_keys=True, ensure_ascii=False, allow_nan=False, indent=indent)
