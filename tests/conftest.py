import os

# One intra-op thread for torch here and in every subprocess a test starts: the reference trainers' tensors are
# small, and on 2 cores shared with other processes two spinning threads made a 1 s training take 30 s.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402

from expunge.lineage.store import Store  # noqa: E402


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


def approver_keys(store: Store, directory, names=("ana",), approvers: int = 1, extra: str = "") -> dict:
    """Ed25519 key files for `names` (in `directory`), a policy naming them made the store's policy;
    returns name → private key path."""
    from pathlib import Path

    from expunge.orchestrator.approvals import keygen
    from expunge.orchestrator.policy import default_policy_text, set_store_policy

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths, lines = {}, []
    for n in names:
        paths[n] = directory / f"{n}.key"
        pub = keygen(paths[n], n)
        lines.append(f'{n} = "{" ".join(pub.split()[:2])}"')
    text = default_policy_text().replace("approvers = 1 ", f"approvers = {approvers} ")
    policy = directory / "policy.toml"
    policy.write_text(extra + "\n" + text + "\n[approval.keys]\n" + "\n".join(lines) + "\n")
    set_store_policy(store, policy)
    return paths
