"""What a plan promises, on real stores, against prices worked out by hand from the recorded facts.

Each case is one of the planning cases built by hand in the issue that asked for honest plans: replay priced on
the run's real length, full retrains of derived models as their whole chain, clean-ancestor replays, models that
both trained on the records and derive from an affected model, and a real topological order.
"""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from expunge.errors import BadInput
from expunge.lineage.store import Store
from expunge.orchestrator.policy import load_policy, parse_policy

BK = 0.015  # each action's bookkeeping on a store that has done none yet (costs.BOOKKEEPING_PRIOR)

NOW = datetime(2026, 11, 1, 12, 0)
SHA = "0" * 64


def source(store: Store, n: int = 10) -> None:
    """d@1: records r0..r{n-1}, record ri owned by subject si."""
    store.ingest_source({"s": [f"s{i}" for i in range(n)], "r": [f"r{i}" for i in range(n)]}, name="d",
                        subject_col="s", record_col="r")


def run(name: str, rows: list[int], wall: float, **extra) -> dict:
    return {"name": name, "trainer": "pkg.mod:train", "cost": {"wall_seconds": wall},
            "inputs": [{"dataset": "d@1", "role": "train", "rows": [f"r{i}" for i in rows]}], **extra}


def record(store: Store, run_doc: dict | None, model: str, parents: tuple[str, ...] = ()) -> None:
    doc: dict = {"models": [{"name": model, "sha256": SHA, "parents": [{"model": p, "relation": "fine-tune"}
                                                                         for p in parents]}]}
    if run_doc:
        doc["run"] = run_doc
    else:
        doc["models"][0]["from_run"] = False
    store.record_run(doc)


def plan_for(store: Store, subject: str, policy=None) -> dict[str, dict]:
    from expunge.orchestrator.planner import choose, gather

    imp = store.impact([subject])
    facts = gather(store, imp, store.records_of_subjects([subject]))
    pol = policy or load_policy(None)
    items = choose(facts, pol, "exact", datetime(2027, 1, 1), NOW)
    return {i["model"]: i for i in items}, [i["model"] for i in items]


def priced(item: dict) -> dict[str, float]:
    return {c["action"]: c["seconds"] for c in item["candidates"]}


# ------------------------------------------------------------------ 1. replay on the run's real length


def replay_run(name: str, total_steps: int | None, first_of_s5: int = 5) -> dict:
    """6 optimizer steps, checkpoints after steps 2 and 4; r5 first consumed at step 5 (the others earlier)."""
    first = [0, 0, 1, 1, 2, first_of_s5, 2, 3, 3, 4]
    doc = run(name, list(range(10)), 60.0, facts={"rows": [f"r{i}" for i in range(10)], "first_step": first},
              checkpoints=[{"step": 2, "path": "ck2.pt", "sha256": SHA}, {"step": 4, "path": "ck4.pt", "sha256": SHA}])
    if total_steps is not None:
        doc["total_steps"] = total_steps
    return doc


def test_replay_is_priced_on_the_runs_recorded_length(store):
    source(store)
    record(store, replay_run("r6", 6), "m")
    items, _ = plan_for(store, "s5")
    m = items["m@1"]
    # Replay from step 4 of 6: 2 of 6 steps of a 60 s run = 20 s (not "step 4 of 4: 0%").
    assert m["chosen"]["action"] == "checkpoint_replay"
    assert m["chosen"]["seconds"] == pytest.approx(20.0 + BK)
    assert any("replay from step 4 of 6" in r for r in m["chosen"]["reasons"])
    # The runner-up: a full retrain on the 9 records that remain, 60 × 9/10.
    assert m["runner_up"]["action"] == "full_retrain" and m["runner_up"]["seconds"] == pytest.approx(54.0 + BK)


def test_replay_without_a_recorded_length_is_not_guessed(store):
    source(store)
    record(store, replay_run("r-no-total", None), "m")
    items, _ = plan_for(store, "s5")
    assert "total optimizer steps were not recorded" in items["m@1"]["not_applicable"]["checkpoint_replay"]
    assert items["m@1"]["chosen"]["action"] == "full_retrain"


def test_steps_beyond_the_runs_length_are_bad_input(store):
    source(store)
    with pytest.raises(BadInput, match="first_step of 6 is beyond the run's 6 optimizer steps"):
        record(store, replay_run("r-late", 6, first_of_s5=6), "m")
    doc = replay_run("r-late-ckpt", 3)
    doc["facts"]["first_step"] = [0] * 10
    with pytest.raises(BadInput, match="checkpoint at step 4 is beyond the run's 3 optimizer steps"):
        record(store, doc, "m")
    with store.read() as con:  # nothing half-written
        assert con.execute("SELECT count(*) FROM runs").fetchall() == [(0,)]


# ------------------------------------------------------------------ 2. chains of fine-tunes


def chain_store(store: Store, ft3_rows: list[int]) -> None:
    """base@1 (run on r0–r4, 100 s) → ft@2 (r5–r6, 30 s) → ft@3 (`ft3_rows`, 12 s); ft@1 is unrelated."""
    source(store)
    record(store, run("base-1", [0, 1, 2, 3, 4], 100.0), "base")
    record(store, None, "ft")
    record(store, run("ft-2", [5, 6], 30.0), "ft", ("base@1",))
    record(store, run("ft-3", ft3_rows, 12.0), "ft", ("ft@2",))


def test_subject_only_in_the_last_fine_tune_replays_from_its_clean_parent(store):
    chain_store(store, [7, 8, 9])
    items, order = plan_for(store, "s8")
    assert order == ["ft@3"]  # base@1 and ft@2 are not touched
    ft3 = items["ft@3"]
    # ft@3's own run on the 2 of 3 records that remain: 12 × 2/3 = 8 s, starting from ft@2.
    assert ft3["chosen"]["action"] == "clean_ancestor_replay"
    assert ft3["chosen"]["seconds"] == pytest.approx(8.0 + BK)
    assert any("clean ancestor ft@2" in r for r in ft3["chosen"]["reasons"])
    # A full retrain of a fine-tune is the whole chain from scratch: 100 + 30 + 8 s.
    assert priced(ft3)["full_retrain"] == pytest.approx(138.0 + BK)


def test_a_model_that_trained_on_the_records_and_derives_from_an_affected_one(store):
    chain_store(store, [1, 7, 8, 9])  # s1 is in base's data and in ft@3's
    items, order = plan_for(store, "s1")
    assert order == ["base@1", "ft@2", "ft@3"]
    assert items["base@1"]["chosen"]["action"] == "full_retrain"
    assert items["base@1"]["chosen"]["seconds"] == pytest.approx(80.0 + BK)       # 100 × 4/5
    assert items["ft@2"]["chosen"]["action"] == "rederive_from_parent"
    assert items["ft@2"]["chosen"]["seconds"] == pytest.approx(30.0 + BK)          # nothing of its own to drop
    ft3 = items["ft@3"]
    assert ft3["after"] == ["ft@2"] and ft3["direct"] and ft3["train_records"] == 1
    # It starts from ft@2's unlearned version and drops its own record: 12 × 3/4 = 9 s.
    assert ft3["chosen"]["action"] == "rederive_from_parent"
    assert ft3["chosen"]["seconds"] == pytest.approx(9.0 + BK)
    assert priced(ft3)["full_retrain"] == pytest.approx(80.0 + 30.0 + 9.0 + BK)
    # Its own checkpoints and weights descend from base's old weights: nothing that edits them applies.
    for action in ("checkpoint_replay", "approximate_unlearning", "certified_removal", "sisa_shard_retrain"):
        assert "derived from affected ft@2" in ft3["not_applicable"][action]


def test_a_child_whose_name_sorts_first_is_planned_after_its_parent(store):
    source(store)
    record(store, run("zeta-1", [0, 1, 2, 3, 4], 50.0), "zeta")
    record(store, run("alpha-1", [0, 5], 5.0), "alpha", ("zeta@1",))
    items, order = plan_for(store, "s0")
    assert order == ["zeta@1", "alpha@1"]
    assert items["alpha@1"]["order"] == 2 and items["alpha@1"]["after"] == ["zeta@1"]
    assert items["alpha@1"]["chosen"]["action"] == "rederive_from_parent"
    assert items["alpha@1"]["chosen"]["seconds"] == pytest.approx(2.5 + BK)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.data())
def test_plans_are_in_topological_order(tmp_path_factory, data):
    """Random derivation graphs with names that sort in any order: every model comes after its affected parents."""
    store = Store.init(tmp_path_factory.mktemp("topo") / "st")
    source(store, 6)
    names = data.draw(st.permutations([f"{c}m" for c in "abcdefg"]))[:data.draw(st.integers(2, 7))]
    made = []
    for k, name in enumerate(names):
        parents = tuple(sorted(data.draw(st.sets(st.sampled_from(made), max_size=2)))) if made else ()
        rows = sorted(data.draw(st.sets(st.integers(0, 5), min_size=1, max_size=4)))
        record(store, run(f"run-{k}", rows, float(k + 1)), name, parents)
        made.append(f"{name}@1")
    subject = f"s{data.draw(st.integers(0, 5))}"
    items, order = plan_for(store, subject, parse_policy({}, "t"))
    pos = {m: i for i, m in enumerate(order)}
    for m, item in items.items():
        assert all(pos[p] < pos[m] for p in item["after"]), (m, item["after"], order)
        assert item["order"] == pos[m] + 1


def test_a_rerun_pays_loading_and_recording_and_so_does_the_counterfactual(store):
    """A run that took 60 s to train, 4 s to load its data and 2 s to record: a full retrain without one of 10
    records costs 4 + 2 + 54 s, and "retrain everything" counts the whole 66 s."""
    source(store)
    doc = run("r-costs", list(range(10)), 60.0)
    doc["cost"].update(setup_seconds=4.0, record_seconds=2.0)
    record(store, doc, "m")
    items, _ = plan_for(store, "s3")
    m = items["m@1"]
    assert m["chosen"]["action"] == "full_retrain" and m["chosen"]["seconds"] == pytest.approx(60.0 + BK)
    assert m["retrain_seconds"] == pytest.approx(66.0 + BK)
