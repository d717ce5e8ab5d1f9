"""SISA shard retrains from the recorded assignment: exact against an independent re-implementation of one
shard's training, untouched shards and checkpoints byte for byte, after a key rotation, and twice in a row."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")

from expunge import synth  # noqa: E402
from expunge.errors import BadInput  # noqa: E402
from expunge.lineage.store import Store  # noqa: E402
from expunge.lineage.torch import TrainingTracker  # noqa: E402
from expunge.orchestrator import execute, planner  # noqa: E402
from expunge.orchestrator import requests as rq  # noqa: E402
from expunge.orchestrator.policy import store_policy  # noqa: E402
from expunge.orchestrator.rerun import rerun  # noqa: E402
from expunge.orchestrator.trainers import TrainRequest, sisa  # noqa: E402
from tests.conftest import approver_keys  # noqa: E402

N, S, R, SEED = 480, 4, 3, 7
CFG = {"row_col": "record_id", "feature_cols": [f"f{j}" for j in range(8)], "label_col": "churned", "epochs": 4,
       "batch_size": 32, "lr": 0.05, "hidden": 16, "shards": S, "slices": R}


def weights(path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def trained(tmp_path, monkeypatch):
    """A SISA ensemble on N customers; returns (store, root, table, config, {row: (shard, slice)}) where the
    assignment is what the training did: each row's shard and the first stage that consumed it (watched)."""
    store = Store.init(tmp_path / "store")
    table = synth.customers(N, seed=11)
    # The features file lists the rows in another order than the store: the dataset joins them by id.
    pq.write_table(table.take(pa.array(np.random.default_rng(0).permutation(N))), tmp_path / "features.parquet")
    store.ingest_source(table, name="customers", subject_col="customer_id", record_col="record_id")
    cfg = {**CFG, "features": str(tmp_path / "features.parquet")}
    seen: dict[str, tuple[int, int]] = {}
    pending: list[str] = []
    real_consumed, real_ckpt = TrainingTracker.consumed, TrainingTracker.checkpoint

    def consumed(self, ids, **kw):
        pending.extend(self._bound.row_ids_arrow().take(pa.array(np.asarray(ids))).to_pylist())
        return real_consumed(self, ids, **kw)

    def checkpoint(self, m, **kw):
        for r in pending:
            seen.setdefault(r, (kw["shard"], kw["slice"]))
        pending.clear()
        return real_ckpt(self, m, **kw)

    with monkeypatch.context() as mp:
        mp.setattr(TrainingTracker, "consumed", consumed)
        mp.setattr(TrainingTracker, "checkpoint", checkpoint)
        sisa.train(TrainRequest(store=store, run_name="sisa-1", inputs=[{"dataset": "customers@1", "role": "train"}],
                                config=cfg, seed=SEED, out_dir=tmp_path / "sisa-1", trainer=sisa.ENTRY_POINT,
                                model_name="churn", stage="production", model_family="sisa-mlp"))
    assert len(seen) == N
    return store, tmp_path, table, cfg, seen


def reference_member(table, cfg, assignment: dict, shard: int, gone: set, start: dict | None = None) -> dict:
    """Shard `shard`'s member trained as SISA trains it, written out here: its rows (sorted by id) minus `gone`,
    stage r on slices 0..r for round(2·epochs/(R+1)) epochs, permutations from the shard's own generator;
    from its initial weights, or from `start` (a slice checkpoint's contents)."""
    torch.manual_seed(SEED)
    members = [torch.nn.Sequential(torch.nn.Linear(8, cfg["hidden"]), torch.nn.ReLU(),
                                   torch.nn.Linear(cfg["hidden"], 2)) for _ in range(S)]
    member = members[shard]
    first = 0
    if start is not None:
        member.load_state_dict(start["model"])
        first = int(start["slice"]) + 1
    ids = table.column("record_id").to_pylist()
    feats = {r: i for i, r in enumerate(ids)}
    rows = sorted(r for r, (s, _) in assignment.items() if s == shard and r not in gone)
    x = torch.tensor(np.column_stack([table.column(c).to_numpy() for c in cfg["feature_cols"]])[
        [feats[r] for r in rows]].astype(np.float32))
    y = torch.tensor(table.column("churned").to_numpy()[[feats[r] for r in rows]].astype(np.int64))
    gen = torch.Generator().manual_seed(SEED * 1_000_003 + shard)
    opt = torch.optim.SGD(member.parameters(), lr=cfg["lr"])
    epochs = max(1, round(2 * cfg["epochs"] / (R + 1)))
    for r in range(R):
        idx = torch.tensor([i for i, row in enumerate(rows) if assignment[row][1] <= r], dtype=torch.int64)
        for _ in range(epochs):
            perm = idx[torch.randperm(len(idx), generator=gen)]
            if r < first:
                continue
            for b in perm.split(cfg["batch_size"]):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(member(x[b]), y[b]).backward()
                opt.step()
    return {k: v.detach() for k, v in member.state_dict().items()}


def member_of(state: dict, shard: int) -> dict:
    return {k.split(".", 2)[2]: v for k, v in state.items() if k.startswith(f"members.{shard}.")}


def erase(store, root, subject: str, name: str, model: str = "churn@1", finish: bool = False) -> tuple[dict, str, str]:
    """Plan, approve and run the erasure of `subject` (exact); returns (the plan's item for `model`, its new
    version, the request)."""
    keys = approver_keys(store, root / f"keys-{name}")
    r = rq.create(store, [subject], category="default", policy=store_policy(store))
    doc = planner.make_plan(store, [r.id], store_policy(store))
    planner.save_plan(store, doc)
    planner.approve(store, doc["id"], keys["ana"])
    out = execute.run_plan(store, doc["id"], finish=finish)
    (item,) = [i for i in doc["items"] if i["model"] == model]
    (act,) = [a for a in out["actions"] if a["model"] == model]
    erase.plan = doc["id"]
    return item, act["new_model"], r.id


def owner(table, row: str) -> str:
    return table.column("customer_id")[table.column("record_id").to_pylist().index(row)].as_py()


def subject_in(table, assignment, shard: int, slice_: int) -> tuple[str, set]:
    """A subject whose rows are all in `shard`, the earliest of them in `slice_`; and its rows."""
    by = {}
    for row, (s, sl) in assignment.items():
        by.setdefault(owner(table, row), []).append((row, s, sl))
    for subj, rows in sorted(by.items()):
        if {s for _, s, _ in rows} == {shard} and min(sl for _, _, sl in rows) == slice_:
            return subj, {r for r, _, _ in rows}
    raise AssertionError("no such subject")


def test_after_a_key_rotation_a_shard_retrain_keeps_every_row_in_its_recorded_shard(trained):
    from expunge.lineage.rekey import rotate

    store, root, table, cfg, assignment = trained
    old = execute.model_info(store, "churn@1")
    rotate(store)
    store = Store.open(store.root)
    subject, rows = subject_in(table, assignment, 2, 1)
    item, new, _ = erase(store, root, subject, "a")
    assert item["chosen"]["action"] == "sisa_shard_retrain"
    # `expunge verify --reproduce`: the new run re-run in a fresh process from what it recorded (its rows, the
    # old model, the shard's checkpoint) makes the same file.
    from expunge.orchestrator import verify

    state = execute._state(store, erase.plan)[0]
    rep = verify.reproduce(store, erase.plan, 0, "sisa_shard_retrain", "churn@1", new, state["detail"])
    assert rep["done"] and rep["same"], rep
    new_w, old_w = weights(execute.model_info(store, new)["path"]), weights(old["path"])
    for s in range(S):
        if s != 2:
            assert all(torch.equal(a, b) for a, b in zip(member_of(new_w, s).values(), member_of(old_w, s).values()))
    start = torch.load(root / "sisa-1" / "shard2-slice0.pt", weights_only=True)
    ref = reference_member(table, cfg, assignment, 2, rows, start)
    got = member_of(new_w, 2)
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    # The new run records every remaining row in its old shard and slice, and none of the subject's.
    new_run = execute.model_info(store, new)["run"]
    for row in sorted(assignment)[:40]:
        subj = owner(table, row)
        runs = {r["id"]: r for r in store.impact([subj]).runs}
        if subj == subject:
            assert new_run not in runs
            continue
        (sh,) = runs[new_run]["shards"]
        assert (sh["shard"], sh["first_slice"]) == (assignment[row][0], min(
            assignment[x][1] for x in assignment if owner(table, x) == subj))


def test_two_erasures_in_two_shards_each_by_a_shard_retrain(trained):
    """Erase a subject of shard 1 (from slice 2), then one of shard 3 (from scratch) from the version the first
    made: the second is planned and run as a shard retrain too (the first version carries the untouched stages'
    checkpoints), and the result equals both shards retrained by hand, the others untouched."""
    from expunge.orchestrator.residuals import purge

    store, root, table, cfg, assignment = trained
    old = execute.model_info(store, "churn@1")
    a, rows_a = subject_in(table, assignment, 1, 2)
    b, rows_b = subject_in(table, assignment, 3, 0)
    item, v2, req1 = erase(store, root, a, "a", finish=True)  # the store forgets a: its facts files are rewritten
    assert item["chosen"]["action"] == "sisa_shard_retrain"
    run1, run2 = old["run"], execute.model_info(store, v2)["run"]
    with store.read() as con:
        ck = {run: {(s, sl): (p, h, st) for s, sl, p, h, st in con.execute(
            """SELECT c.shard, c.slice, c.path, c.sha256, c.step FROM checkpoints c JOIN runs r USING (run_id)
               WHERE r.name = ?""", [run]).fetchall()} for run in (run1, run2)}
        n_rec = dict(con.execute("""SELECT r.name, i.n_records FROM run_inputs i JOIN runs r USING (run_id)
                                    WHERE i.role = 'train'""").fetchall())
    assert n_rec[run2] == N - len(rows_a)
    assert set(ck[run2]) == set(ck[run1]) == {(s, r) for s in range(S) for r in range(R)}
    for key, (path, h, _) in ck[run2].items():
        carried = key[0] != 1 or key[1] < 2  # every stage but shard 1's retrained ones
        assert (h == ck[run1][key][1]) == carried, key
        assert sha(path) == h and Path(path).parent != Path(ck[run1][key][0]).parent
    # Checkpoint steps count the whole ensemble's training on the rows that remain, as a full run counts them.
    epochs = max(1, round(2 * cfg["epochs"] / (R + 1)))
    step = 0
    for s in range(S):
        for r in range(R):
            n = sum(1 for row, (sh, sl) in assignment.items() if sh == s and sl <= r and row not in rows_a)
            step += epochs * -(-n // cfg["batch_size"])
            assert ck[run2][(s, r)][2] == step, (s, r)
    # The first request's residual copies (the old version's files) go: the new version loses nothing.
    old_w = weights(old["path"])
    start_a = torch.load(root / "sisa-1" / "shard1-slice1.pt", weights_only=True)
    assert purge(store, req1)["purged"] >= 1
    assert not Path(ck[run1][(0, 0)][0]).exists() and Path(ck[run2][(0, 0)][0]).exists()

    item, v3, _ = erase(store, root, b, "b", model=v2)
    assert item["chosen"]["action"] == "sisa_shard_retrain"
    new_w = weights(execute.model_info(store, v3)["path"])
    expect = {1: reference_member(table, cfg, assignment, 1, rows_a, start_a),
              3: reference_member(table, cfg, assignment, 3, rows_b)}
    for s in range(S):
        got, want = member_of(new_w, s), expect.get(s, member_of(old_w, s))
        assert all(torch.equal(got[k], want[k]) for k in want), s
    hit = {m["id"] for m in store.impact([a]).models} | {m["id"] for m in store.impact([b]).models}
    assert v3 not in hit and v2 not in {m["id"] for m in store.impact([a]).models}


def test_a_retrain_that_would_keep_an_excluded_record_is_refused(trained):
    store, root, table, cfg, assignment = trained
    subject, rows = subject_in(table, assignment, 2, 1)
    erased = store.records_of_subjects([subject])
    model = root / "sisa-1" / "model.pt"
    with pytest.raises(BadInput, match="shard 2"):  # shard 2 is not retrained: its member saw the records
        rerun(store, "sisa-1", new_name="x1", out_dir=root / "x1", exclude_records=erased, init_model=model,
              shard_checkpoints={0: None})
    with pytest.raises(BadInput, match="shard 2"):  # its slice-1 checkpoint saw them too
        rerun(store, "sisa-1", new_name="x2", out_dir=root / "x2", exclude_records=erased, init_model=model,
              shard_checkpoints={2: str(root / "sisa-1" / "shard2-slice1.pt")})
    with store.read() as con:
        assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 1


def test_a_dataset_of_some_records_is_the_whole_one_cut_to_them(tmp_path):
    """`records=` against the whole dataset filtered by hand, with the features file in the store's order
    (joined by position) and shuffled (joined by id), minus excluded records."""
    from expunge.lineage.torch import RecordDataset

    store = Store.init(tmp_path / "store")
    table = synth.customers(300, seed=4)
    store.ingest_source(table, name="customers", subject_col="customer_id", record_col="record_id")
    pq.write_table(table, tmp_path / "ordered.parquet")
    pq.write_table(table.take(pa.array(np.random.default_rng(1).permutation(300))), tmp_path / "shuffled.parquet")
    erased = store.records_of_subjects([table.column("customer_id")[5].as_py()])
    with store.read() as con:
        (bitmap,) = con.execute("SELECT bitmap_file FROM dataset_versions").fetchone()
    with store.view() as view:
        ords = np.frombuffer(view.load_bitmap(bitmap).to_array(), np.uint32)
    pick = np.sort(np.random.default_rng(2).choice(ords, 120, replace=False))
    ids = table.column("record_id").to_pylist()
    x_all = np.column_stack([table.column(c).to_numpy() for c in CFG["feature_cols"]]).astype(np.float32)
    kw = dict(row_col="record_id", feature_cols=CFG["feature_cols"], label_col="churned")
    for f in ("ordered.parquet", "shuffled.parquet"):
        whole = RecordDataset(store, "customers@1", tmp_path / f, **kw, exclude_records=erased)
        some = RecordDataset(store, "customers@1", tmp_path / f, **kw, exclude_records=erased,
                             records=np.concatenate([pick, erased]))
        keep = np.isin(whole.first_ords, pick) & ~np.isin(whole.first_ords, erased)
        assert some.row_ids == [r for r, k in zip(whole.row_ids, keep) if k] == sorted(some.row_ids)
        assert np.array_equal(some.first_ords, whole.first_ords[keep])
        assert np.array_equal(some.last_ords, some.first_ords)
        # Each row's features and label, looked up by its id in the table.
        at = [ids.index(r) for r in some.row_ids]
        assert torch.equal(some.x, torch.from_numpy(x_all[at]))
        assert some.y.tolist() == table.column("churned").to_numpy()[at].tolist()
        assert len(whole) == 300 - len(erased) and torch.equal(whole.x, torch.from_numpy(x_all[[ids.index(r) for r in
                                                                                             whole.row_ids]]))
    with pytest.raises(BadInput, match="not in the version"):
        RecordDataset(store, "customers@1", tmp_path / "ordered.parquet", **kw, records=np.array([10**6], np.uint32))


def test_carried_facts_are_checked_before_they_are_recorded(tmp_path):
    from expunge.lineage.facts import encode
    from expunge.lineage.runs import RunTracker

    store = Store.init(tmp_path / "store")
    table = synth.customers(50, seed=4)
    store.ingest_source(table, name="customers", subject_col="customer_id", record_col="record_id")
    with store.view() as view:
        (bitmap,) = view.execute("SELECT bitmap_file FROM dataset_versions").fetchone()
        ords = np.frombuffer(view.load_bitmap(bitmap).to_array(), np.uint32)
    n = ords.size

    def record(name, facts_ords, shard, inputs=None, data=None):
        data_, index = encode(facts_ords, shard, np.zeros(len(facts_ords), np.int64), np.full(len(facts_ords), -1))
        index["clean_steps"] = []
        with RunTracker(store, name, inputs=inputs or [{"dataset": "customers@1"}], shards=4, slices=1) as run:
            run.carry_facts(data if data is not None else data_, index)

    record("ok", ords, np.arange(n) % 4)
    (sh,) = {r["id"]: r for r in store.impact([table.column("customer_id")[7].as_py()]).runs}["ok"]["shards"]
    assert sh == {"shard": 7 % 4, "records": 1, "first_slice": 0}
    with pytest.raises(BadInput, match="shard ≥ shards"):
        record("bad-shard", ords, np.full(n, 4))
    sub = {"dataset": "customers@1", "role": "train", "_without_records": ords[:5], "_base_records": ords}
    with pytest.raises(BadInput, match="outside the run's training subset"):
        record("bad-rows", ords, np.arange(n) % 4, inputs=[sub])
    with pytest.raises(BadInput, match="not a facts file"):
        record("bad-bytes", ords, np.arange(n) % 4, data=b"EXPFACT1" + b"\xff" * 8)
    with store.read() as con:
        assert [r for (r,) in con.execute("SELECT name FROM runs").fetchall()] == ["ok"]


def test_a_composed_ensemble_is_not_shard_retrained_after_a_key_rotation(tmp_path):
    """An ensemble over a composed dataset (two rows per record) deals its rows to shards from the owners'
    keys, and a shard retrain deals them again; after a key rotation the keys differ, so a shard retrain would
    put rows in other shards than they were trained in. The planner no longer offers it (and says why), and
    the trainer refuses it; before the rotation it was admissible."""
    from expunge.lineage.rekey import rotate

    store = Store.init(tmp_path / "store")
    table = synth.customers(240, seed=5)
    store.ingest_source(table, name="customers", subject_col="customer_id", record_col="record_id")
    rid = table.column("record_id").to_pylist()
    feats = {c: [v for v in table.column(c).to_pylist() for _ in (0, 1)] for c in CFG["feature_cols"] + ["churned"]}
    aug = pa.table({"row_id": [f"{r}-{k}" for r in rid for k in (0, 1)], "src": [r for r in rid for _ in (0, 1)],
                    **feats})
    store.ingest_dataset(aug.select(["row_id", "src"]), name="aug", parents=["customers@1"], kind="augment",
                         sources={"customers@1": "src"}, row_col="row_id")
    pq.write_table(aug, tmp_path / "aug.parquet")
    cfg = {**CFG, "features": str(tmp_path / "aug.parquet"), "row_col": "row_id"}
    sisa.train(TrainRequest(store=store, run_name="sisa-aug", inputs=[{"dataset": "aug@1", "role": "train"}],
                            config=cfg, seed=SEED, out_dir=tmp_path / "sisa-aug", trainer=sisa.ENTRY_POINT,
                            model_name="aug-sisa", stage="production", model_family="sisa-mlp"))
    subject = table.column("customer_id")[0].as_py()

    def sisa_candidate(st):
        r = rq.create(st, [subject], category="default", policy=store_policy(st))
        doc = planner.make_plan(st, [r.id], store_policy(st))
        (item,) = doc["items"]
        got = [c for c in item["candidates"] if c["action"] == "sisa_shard_retrain"]
        return (got[0]["admissible"], got[0]["why_not"]) if got else \
            (False, item["not_applicable"].get("sisa_shard_retrain"))

    assert sisa_candidate(store) == (True, None)
    rotate(store)
    store = Store.open(store.root)
    admissible, why = sisa_candidate(store)
    assert not admissible and "key rotation" in why
    with pytest.raises(BadInput, match="key rotation"):
        rerun(store, "sisa-aug", new_name="sisa-aug-shard", out_dir=tmp_path / "again", shard=0,
              init_model=tmp_path / "sisa-aug" / "model.pt")


def test_a_shard_retrain_is_priced_at_loading_one_shard_as_the_trainer_measured_it(trained):
    """The run measures loading one shard's rows (what a shard retrain loads) besides its own first read; the
    plan prices the retrain's loading at that, its catalog write whole, the rest of its setup by the shard's
    share of the steps."""
    import json

    store, root, table, cfg, assignment = trained
    with store.read() as con:
        wall, setup, record, extra = con.execute(
            "SELECT wall_seconds, setup_seconds, record_seconds, extra FROM runs WHERE name = 'sisa-1'").fetchone()
        ckpts = con.execute("""SELECT c.shard, c.slice, c.step FROM checkpoints c JOIN runs r USING (run_id)
                               WHERE r.name = 'sisa-1' AND c.shard IS NOT NULL ORDER BY c.step""").fetchall()
    extra = json.loads(extra)
    load, read, write = extra["shard_read_seconds"], extra["setup_read_seconds"], extra["record_write_seconds"]
    assert 0 < load < setup and 0 < write < record  # measured, and counted in the run's setup and recording
    subject, _ = subject_in(table, assignment, 2, 1)
    r = rq.create(store, [subject], category="default", policy=store_policy(store))
    doc = planner.make_plan(store, [r.id], store_policy(store))
    (item,) = doc["items"]
    assert item["chosen"]["action"] == "sisa_shard_retrain"
    steps, prev = {}, 0
    for s, sl, step in ckpts:  # each stage's steps: from one checkpoint to the next
        steps[(s, sl)], prev = step - prev, step
    total = sum(steps.values())
    share = sum(n for (s, _), n in steps.items() if s == 2) / total
    redo = sum(n for (s, sl), n in steps.items() if s == 2 and sl >= 1)
    # The write's commit is paid whole; the rest of setup and recording by the shard's share; and the action's
    # bookkeeping, 15 ms while the store has done no action to measure it on (costs.BOOKKEEPING_PRIOR).
    want = load + (setup + record - read - write) * share + write + wall * redo / total + 0.015
    assert item["chosen"]["action_seconds"] == pytest.approx(want, rel=1e-4, abs=1e-5)
