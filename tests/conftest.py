import os

import pytest

from expunge.lineage.store import Store


@pytest.fixture(scope="session", autouse=True)
def key_dir(tmp_path_factory):
    """Keys go to the session's temp dir, never into ~/.config: set before any module or session
    fixture builds a store (the function-scoped `_clean_env` runs after those)."""
    path = tmp_path_factory.mktemp("keys")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXPUNGE_KEY_DIR", str(path))
        yield path


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, key_dir):
    for var in ("EXPUNGE_SECRET", "EXPUNGE_STORE", "EXPUNGE_KEY_FILE", "EXPUNGE_KEY_DIR", "EXPUNGE_DEBUG",
                "EXPUNGE_FAULT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("EXPUNGE_KEY_DIR", str(key_dir))


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
