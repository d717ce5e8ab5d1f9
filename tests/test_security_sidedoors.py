"""Issue 9, side doors: code the catalog names, model files loaded unchecked, raw ids leaking out.

Each test reproduces a finding of the security review on a tiny store (a 60-row MLP run at most).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from expunge.errors import ArtifactMismatch  # noqa: E402
from expunge.orchestrator.rerun import rerun  # noqa: E402
from expunge.orchestrator.trainers import TrainRequest, mlp  # noqa: E402
from tests.test_trainers import customers_store  # noqa: E402


@pytest.fixture
def tiny(store, tmp_path):
    """A 60-row MLP run `mlp-1` (one epoch, two checkpoints' worth of steps) and its table."""
    table, cfg = customers_store(store, tmp_path, 60, 3, epochs=2, batch_size=32, hidden=4)
    req = TrainRequest(store=store, run_name="mlp-1", inputs=[{"dataset": "customers@1", "role": "train"}],
                       config=cfg, seed=5, out_dir=tmp_path / "mlp-1", trainer=mlp.ENTRY_POINT,
                       model_name="churn", model_family="mlp")
    mlp.train(req)
    return store, tmp_path, table


@pytest.fixture
def torch_load_calls(monkeypatch):
    """Every call of torch.load (a file refused before loading never gets here)."""
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


# ---------------------------------------------------------------- artifacts


def test_a_swapped_checkpoint_is_refused_before_loading(tiny, torch_load_calls):
    store, tmp, _ = tiny
    ckpt = tmp / "mlp-1" / "epoch1.pt"
    ckpt.write_bytes((tmp / "mlp-1" / "epoch2.pt").read_bytes())  # a valid torch file, not the recorded one
    with pytest.raises(ArtifactMismatch, match="sha256 differs"):
        rerun(store, "mlp-1", new_name="replay", out_dir=tmp / "replay", start_checkpoint=ckpt)
    assert torch_load_calls == []
    with store.read() as con:
        assert con.execute("SELECT count(*) FROM runs WHERE name = 'replay'").fetchall() == [(0,)]


def test_a_swapped_model_is_refused_before_loading(tiny, torch_load_calls):
    from expunge.orchestrator.trainers.derived import finetune, load_model

    store, tmp, _ = tiny
    model = tmp / "mlp-1" / "model.pt"
    state = torch.load(model, weights_only=True)
    state["model"] = {k: v + 1 for k, v in state["model"].items()}
    torch.save(state, model)
    torch_load_calls.clear()
    with pytest.raises(ArtifactMismatch, match="sha256 differs"):
        load_model(store, "churn@1")
    with pytest.raises(ArtifactMismatch, match="sha256 differs"):
        finetune(store, "churn@1", run_name="ft", dataset="customers@1", config={"epochs": 1}, seed=1,
                 out_dir=tmp / "ft", model_name="churn-ft")
    with pytest.raises(ArtifactMismatch, match="sha256 differs"):
        rerun(store, "mlp-1", new_name="ft2", out_dir=tmp / "ft2", init_model=model)
    assert torch_load_calls == []


def test_a_file_the_store_never_recorded_is_refused(tiny, torch_load_calls):
    store, tmp, _ = tiny
    stray = tmp / "stray.pt"
    stray.write_bytes((tmp / "mlp-1" / "epoch1.pt").read_bytes())
    with pytest.raises(ArtifactMismatch, match="not a model or checkpoint file recorded"):
        rerun(store, "mlp-1", new_name="replay", out_dir=tmp / "replay", start_checkpoint=stray)
    assert torch_load_calls == []


class _Payload:
    """Pickled into a checkpoint: unpickling it (without weights_only) writes a marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"__import__('pathlib').Path({self.marker!r}).write_text('ran')",)


@pytest.mark.filterwarnings("ignore:Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
def test_weights_only_blocks_code_in_a_recorded_checkpoint(tiny, monkeypatch, tmp_path):
    """A checkpoint whose sha256 was recorded as matching still holds no code that runs: loaded with
    weights_only=True explicitly, which an environment variable cannot turn off."""
    store, tmp, _ = tiny
    marker = tmp_path / "pwned"
    evil = tmp / "evil.pt"
    good = torch.load(tmp / "mlp-1" / "epoch1.pt", weights_only=True)
    torch.save({**good, "note": _Payload(marker)}, evil)
    store.record_run({"run": {"name": "evil-run", "inputs": [{"dataset": "customers@1"}],
                              "checkpoints": [{"step": 1, "path": str(evil)}]}})
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # what a bare torch.load(path) would obey
    try:
        with pytest.raises(ArtifactMismatch, match="not a weights-only torch file"):
            rerun(store, "mlp-1", new_name="replay", out_dir=tmp / "replay", start_checkpoint=evil)
    finally:
        assert not marker.exists(), "the checkpoint's pickle ran code"


def test_recorded_artifacts_still_load(tiny):
    """The honest path: a replay from a recorded checkpoint reproduces the model (as before)."""
    store, tmp, _ = tiny
    rerun(store, "mlp-1", new_name="replay", out_dir=tmp / "replay", start_checkpoint=tmp / "mlp-1" / "epoch1.pt")
    a = torch.load(tmp / "mlp-1" / "model.pt", weights_only=True)["model"]
    b = torch.load(tmp / "replay" / "model.pt", weights_only=True)["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    with store.read() as con:
        (recorded,), = con.execute("SELECT sha256 FROM models WHERE name = 'churn' AND version_no = 2").fetchall()
    assert hashlib.sha256((tmp / "replay" / "model.pt").read_bytes()).hexdigest() == recorded


# ---------------------------------------------------------------- code the catalog names


@pytest.fixture
def crafted(tmp_path, monkeypatch):
    """A crafted trainer module `evilmod` whose import writes a marker file: on sys.path and in the working
    directory. Returns the marker's path; modules imported by the test are forgotten afterwards."""
    import sys

    lab = tmp_path / "lab"
    lab.mkdir()
    marker = tmp_path / "imported"
    (lab / "evilmod.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\n"
        "def train(req):\n    return {}\n"
        "def removal_need(*args, **kwargs):\n    return 0.0\n")
    before = set(sys.modules)
    monkeypatch.syspath_prepend(str(lab))
    monkeypatch.chdir(lab)
    yield marker
    for name in set(sys.modules) - before:
        if name.split(".")[0] in ("evilmod", "mypkg"):
            del sys.modules[name]


def test_planning_never_imports_the_recorded_trainer(store, tmp_path, crafted):
    """A certified-family run recorded with a crafted entry point: `expunge plan` prices its removal with
    expunge's own code (the Newton steps' bounds on the run's data) and never imports the module."""
    from typer.testing import CliRunner

    from expunge.cli import app
    from expunge.orchestrator import requests as rq
    from expunge.orchestrator.trainers import logreg_certified as lc

    table, cfg = customers_store(store, tmp_path, 300, 6, lam=1e-3)
    lc.train(TrainRequest(store=store, run_name="cr-1", inputs=[{"dataset": "customers@1", "role": "train"}],
                          config=cfg, seed=3, out_dir=tmp_path / "cr", trainer="evilmod:train",
                          model_name="churn-cr", model_family=lc.FAMILY))
    subject = table.column("customer_id")[0].as_py()
    req = rq.create(store, [subject], category="financial")  # certified required
    # A policy that takes the cheapest action, so that certified removal (priced from the data) is chosen.
    from expunge.orchestrator.policy import default_policy_text

    cheapest = tmp_path / "cheapest.toml"
    cheapest.write_text(default_policy_text().replace("max_premium = 2.0", "max_premium = 1.0"))
    res = CliRunner().invoke(app, ["plan", req.id, "--store", str(store.root), "--json", "--policy", str(cheapest)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert not crafted.exists(), "planning imported the run's recorded trainer"
    (item,) = json.loads(res.output)["items"]
    assert item["chosen"]["action"] == "certified_removal"
    assert any("one batch Newton step's bound" in why for why in item["chosen"]["reasons"])


def test_planning_refuses_a_swapped_certified_model(store, tmp_path, torch_load_calls):
    from expunge.orchestrator import planner
    from expunge.orchestrator import requests as rq
    from expunge.orchestrator.policy import load_policy
    from expunge.orchestrator.trainers import logreg_certified as lc

    table, cfg = customers_store(store, tmp_path, 300, 6, lam=1e-3)
    lc.train(TrainRequest(store=store, run_name="cr-1", inputs=[{"dataset": "customers@1", "role": "train"}],
                          config=cfg, seed=3, out_dir=tmp_path / "cr", trainer=lc.ENTRY_POINT,
                          model_name="churn-cr", model_family=lc.FAMILY))
    path = tmp_path / "cr" / "model.pt"
    state = torch.load(path, weights_only=True)
    state["model"]["w"] = state["model"]["w"] * 0
    torch.save(state, path)
    torch_load_calls.clear()
    req = rq.create(store, [table.column("customer_id")[0].as_py()], category="financial")
    with pytest.raises(ArtifactMismatch, match="sha256 differs"):
        planner.make_plan(store, [req.id], load_policy(None))
    assert torch_load_calls == []


def _run_naming(store, trainer: str, name: str = "r") -> None:
    import pyarrow as pa

    if not store.impact(["s1"]).records:
        store.ingest_source(pa.table({"cid": ["s1", "s2"], "rid": ["a", "b"]}), name="src", subject_col="cid",
                            record_col="rid")
    store.record_run({"run": {"name": name, "inputs": [{"dataset": "src@1"}], "trainer": trainer}})


def test_rerun_refuses_a_trainer_outside_the_allowed_prefixes(store, tmp_path, crafted):
    from expunge.errors import TrainerNotAllowed

    _run_naming(store, "evilmod:train")
    with pytest.raises(TrainerNotAllowed, match="not allowed") as exc:
        rerun(store, "r", new_name="r2", out_dir=tmp_path / "out")
    assert "\n" not in str(exc.value) and exc.value.exit_code == 2
    assert not crafted.exists(), "the trainer was imported before it was refused"


def test_rerun_imports_a_trainer_the_policy_or_the_store_allows(store, tmp_path, crafted, monkeypatch):
    from typer.testing import CliRunner

    from expunge.cli import app
    from expunge.orchestrator.policy import parse_policy

    monkeypatch.chdir(tmp_path)  # on sys.path, not only in the working directory (never searched)
    _run_naming(store, "evilmod:train")
    assert rerun(store, "r", new_name="r2", out_dir=tmp_path / "o",
                 policy=parse_policy({"trainers": {"allow": ["evilmod"]}}, "test")) == {}
    assert crafted.exists()
    crafted.unlink()
    import sys

    del sys.modules["evilmod"]
    res = CliRunner().invoke(app, ["trainers", "allow", "evilmod", "--store", str(store.root)])
    assert res.exit_code == 0, res.output
    assert rerun(store, "r", new_name="r3", out_dir=tmp_path / "o3") == {}
    assert crafted.exists()
    res = CliRunner().invoke(app, ["trainers", "list", "--store", str(store.root), "--json"])
    assert json.loads(res.output) == {"builtin": ["expunge.orchestrator.trainers"], "policy": [],
                                      "store": ["evilmod"]}


@pytest.mark.parametrize("module,allowed", [
    ("mypkg", True), ("mypkg.train", True), ("mypkg.train.deep", True), ("mypkgevil", False),
    ("mypkgevil.train", False), ("evil.mypkg", False), ("expunge.orchestrator.trainers.mlp", True),
    ("expunge.orchestrator.trainersevil", False), ("expunge.orchestrator", False), ("os", False),
])
def test_prefixes_match_on_module_path_boundaries(module, allowed):
    from expunge.orchestrator.trainers import is_allowed

    assert is_allowed(module, ["mypkg"]) is allowed


@pytest.mark.parametrize("prefix", ["", " ", ".", "mypkg..x", "../x", "my-pkg", "mypkg:train", "*"])
def test_a_prefix_that_is_no_module_path_is_refused(store, prefix):
    from expunge.errors import BadInput
    from expunge.orchestrator.policy import parse_policy
    from expunge.orchestrator.trainers import set_store_prefix

    with pytest.raises(BadInput, match="not a module path"):
        parse_policy({"trainers": {"allow": [prefix]}}, "test")
    with pytest.raises(BadInput, match="not a module path"):
        set_store_prefix(store, prefix)


def test_a_module_in_the_working_directory_does_not_shadow_the_allowed_one(store, tmp_path, monkeypatch, crafted):
    """`python -m` and the REPL put the working directory first on sys.path ('' or its path): a `mypkg`
    planted there must not win over the installed, allowed one."""
    import sys

    from expunge.orchestrator.policy import parse_policy

    site, work = tmp_path / "site", tmp_path / "work"
    for d in (site / "mypkg", work / "mypkg"):
        d.mkdir(parents=True)
    (site / "mypkg" / "__init__.py").write_text("")
    (site / "mypkg" / "train.py").write_text("def train(req):\n    return {'from': 'site'}\n")
    (work / "mypkg" / "__init__.py").write_text(
        f"import pathlib\npathlib.Path({str(work / 'planted')!r}).write_text('imported')\n")
    (work / "mypkg" / "train.py").write_text("def train(req):\n    return {'from': 'work'}\n")
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "path", ["", str(work), *sys.path, str(site)])
    _run_naming(store, "mypkg.train:train")
    got = rerun(store, "r", new_name="r2", out_dir=tmp_path / "o",
                policy=parse_policy({"trainers": {"allow": ["mypkg"]}}, "test"))
    assert got == {"from": "site"}
    assert not (work / "planted").exists()
    assert sys.path[:2] == ["", str(work)]  # put back as it was


def test_missing_features_are_counted_not_quoted(tiny, tmp_path):
    import pyarrow.parquet as pq

    from expunge.errors import BadInput
    from expunge.lineage.torch import RecordDataset

    store, tmp, table = tiny
    pq.write_table(table.slice(1), tmp_path / "short.parquet")  # the first record's features are gone
    missing = table.column("record_id")[0].as_py()
    with pytest.raises(BadInput, match="1 of its 60 row") as exc:
        RecordDataset(store, "customers@1", tmp_path / "short.parquet", row_col="record_id",
                      feature_cols=["f0"], label_col="churned")
    assert missing not in str(exc.value)


def test_a_policy_without_trainers_keeps_its_hash():
    """Plans pin their policy by the hash of its canonical form: adding the [trainers] section to expunge
    must not change that hash for a policy that does not use it."""
    from expunge.orchestrator.policy import load_policy, parse_policy

    assert "trainers_allow" not in load_policy(None).to_dict()
    assert parse_policy({"trainers": {"allow": ["mypkg"]}}, "t").to_dict()["trainers_allow"] == ["mypkg"]
