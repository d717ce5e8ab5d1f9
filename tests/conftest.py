import os

import pytest

from expunge.lineage.store import Store


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("EXPUNGE_SECRET", "EXPUNGE_STORE", "EXPUNGE_KEY_FILE", "EXPUNGE_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.init(tmp_path / "store")


def all_store_bytes(root) -> bytes:
    chunks = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                chunks.append(fh.read())
    return b"\n".join(chunks)
