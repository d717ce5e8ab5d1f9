"""Survivors of the mutation run over orchestrator/certified_exec.py: a certified removal executed in process on
a freshly trained certified model, its new run and outcome checked against the old run and clocks read here."""

from __future__ import annotations

import time

import pytest

torch = pytest.importorskip("torch")

from expunge.orchestrator import execute  # noqa: E402
from expunge.orchestrator.certified_exec import certified_removal  # noqa: E402
from tests.test_trainers import train_certified  # noqa: E402


def _costs(store, run):
    with store.read() as con:
        return con.execute("SELECT wall_seconds, cpu_seconds, setup_seconds, record_seconds FROM runs WHERE name = ?",
                           [run]).fetchone()


def test_a_certified_removal_records_the_old_runs_costs_and_its_own_time(store, tmp_path):
    table, req, cert = train_certified(store, tmp_path, 120, 4, seed=3, lam=0.02, sigma=2.0)
    subject = table.column("customer_id").to_pylist()[0]
    ctx = execute.Context(store, {"id": "0123456789abcdef" * 4, "requests": ["req-000001"]},
                          store.records_of_subjects([subject]))
    info = execute.model_info(store, "churn-cr@1")
    t0 = time.perf_counter()
    out = certified_removal(ctx, {"model": "churn-cr@1"}, info)
    took = time.perf_counter() - t0
    assert out.new_model == "churn-cr@2" and out.detail["how"] == "batch"
    # The new weights' file notes the rows removed (the subject's one record) and the budget now spent.
    saved = torch.load(execute.model_info(store, "churn-cr@2")["path"], weights_only=True)
    assert saved["removed_rows"] == 1 and saved["removal_budget_spent"] == pytest.approx(out.detail["budget_used"])
    assert 0 < out.detail["seconds"] <= took
    # For planning, the new run cost what the old one did.
    assert _costs(store, "cr-1.x01234567") == _costs(store, "cr-1")
    assert _costs(store, "cr-1")[2] is not None  # the old run measured its setup: carried over


def test_a_removal_that_spends_the_budget_to_the_last_bit_is_allowed(store, tmp_path):
    """The budget is what may be spent: a removal that brings the spent budget exactly to it runs; one that
    would pass it by the smallest float is refused and changes nothing. (`used` is the batch step's bound,
    computed here from the same removed rows the executor reads, so that the boundary is exact.)"""
    import json
    import math

    from expunge.lineage.torch import load_artifact
    from expunge.orchestrator import certified
    from expunge.orchestrator.rerun import recorded_request

    table, req, cert = train_certified(store, tmp_path, 120, 4, seed=3, lam=0.02, sigma=2.0)
    erased = store.records_of_subjects([table.column("customer_id").to_pylist()[0]])
    info = execute.model_info(store, "churn-cr@1")
    state = load_artifact(info["path"], info["sha256"], store=store)
    fast = certified.removed_rows(store, recorded_request(store, "cr-1", rows=False), erased)
    used = certified.batch_removal(state["removal_state"], state["model"]["w"].double(), cert["lam"],
                                   fast["x"], fast["y"])[1]
    base, budget = float(cert.get("train_grad_norm", 0.0)), cert["removal_budget"]

    def spend(spent: float) -> None:
        with store.write() as txn:
            extra = json.loads(txn.one("SELECT extra FROM runs WHERE name = 'cr-1'"))
            extra["removal_budget_spent"] = spent
            txn.con.execute("UPDATE runs SET extra = ? WHERE name = 'cr-1'", [json.dumps(extra)])

    spent = budget - base - used
    while base + spent + used > budget:
        spent = math.nextafter(spent, -math.inf)
    while base + spent + used < budget:
        spent = math.nextafter(spent, math.inf)
    assert base + spent + used == budget
    over = math.nextafter(spent, math.inf)
    while base + over + used == budget:
        over = math.nextafter(over, math.inf)
    spend(over)
    ctx = execute.Context(store, {"id": "a" * 64, "requests": []}, erased)
    with pytest.raises(execute.ActionFailed, match="nothing was changed"):
        certified_removal(ctx, {"model": "churn-cr@1"}, info)
    assert execute.model_of_run(store, "cr-1.xaaaaaaaa") is None
    spend(spent)
    out = certified_removal(ctx, {"model": "churn-cr@1"}, info)
    assert out.new_model == "churn-cr@2" and out.detail["budget_left"] == pytest.approx(0.0, abs=1e-12)


def test_a_removal_keeps_the_runs_row_subsets(store, tmp_path):
    """A certified run trained on 80 of the 120 customers and evaluated on 30 others: the new run's train input is
    those 80 rows less the subject's, its eval input the same 30 rows (the rows written out here from the table)."""
    from expunge.orchestrator.rerun import recorded_request
    from expunge.orchestrator.trainers import TrainRequest
    from expunge.orchestrator.trainers import logreg_certified as lc
    from tests.test_trainers import customers_store

    table, cfg = customers_store(store, tmp_path, 120, 4, lam=0.02, sigma=2.0)
    ids, owners = table.column("record_id").to_pylist(), table.column("customer_id").to_pylist()
    train_rows, eval_rows = ids[:80], ids[85:115]
    lc.train(TrainRequest(store=store, run_name="cr-1", inputs=[{"dataset": "customers@1", "role": "train",
                                                                  "rows": train_rows},
                                                                 {"dataset": "customers@1", "role": "eval",
                                                                  "rows": eval_rows}],
                          config=cfg, seed=3, out_dir=tmp_path / "cr", trainer=lc.ENTRY_POINT,
                          model_name="churn-cr", model_family=lc.FAMILY))
    subject = owners[3]
    gone = {r for r, o in zip(ids, owners) if o == subject}
    assert gone and gone <= set(train_rows)
    ctx = execute.Context(store, {"id": "b" * 64, "requests": []}, store.records_of_subjects([subject]))
    out = certified_removal(ctx, {"model": "churn-cr@1"}, execute.model_info(store, "churn-cr@1"))
    assert out.detail["newton_steps"] == len(gone)
    got = recorded_request(store, "cr-1.xbbbbbbbb")["inputs"]
    assert [(i["dataset"], i["role"]) for i in got] == [("customers@1", "train"), ("customers@1", "eval")]
    assert sorted(got[0]["rows"]) == sorted(r for r in train_rows if r not in gone)
    assert sorted(got[1]["rows"]) == sorted(eval_rows)


def test_a_model_that_is_not_a_certified_logistic_regression_is_refused(store, tmp_path):
    from tests.test_trainers import customers_store
    from expunge.orchestrator.trainers import TrainRequest, mlp

    table, cfg = customers_store(store, tmp_path, 40, 4, epochs=1)
    mlp.train(TrainRequest(store=store, run_name="mlp-1", inputs=[{"dataset": "customers@1", "role": "train"}],
                           config=cfg, seed=1, out_dir=tmp_path / "m", trainer=mlp.ENTRY_POINT, model_name="plain",
                           model_family="mlp"))
    ctx = execute.Context(store, {"id": "c" * 64, "requests": []}, store.records_of_subjects(
        [table.column("customer_id")[0].as_py()]))
    with pytest.raises(execute.ActionFailed) as e:
        certified_removal(ctx, {"model": "plain@1"}, execute.model_info(store, "plain@1"))
    assert str(e.value) == "run mlp-1 is not a certified logistic regression (no certificate, or another family)"


def test_a_refusal_says_what_the_budget_still_allows(store, tmp_path):
    """The budget less what removals spent and less the training's own gradient residual (set here to a tenth of
    the budget; it is ~1e-9 as trained): with a budget spent to that, 0 is left and the one-row step is refused."""
    import json

    table, req, cert = train_certified(store, tmp_path, 120, 4, seed=3, lam=0.02, sigma=2.0)
    budget = cert["removal_budget"]
    base, spent = budget / 10, budget - budget / 10
    with store.write() as txn:
        extra = json.loads(txn.one("SELECT extra FROM runs WHERE name = 'cr-1'"))
        extra["certified_removal"]["train_grad_norm"] = base
        extra["removal_budget_spent"] = spent
        txn.con.execute("UPDATE runs SET extra = ? WHERE name = 'cr-1'", [json.dumps(extra)])
    ctx = execute.Context(store, {"id": "d" * 64, "requests": []},
                          store.records_of_subjects([table.column("customer_id")[0].as_py()]))
    with pytest.raises(execute.ActionFailed) as e:
        certified_removal(ctx, {"model": "churn-cr@1"}, execute.model_info(store, "churn-cr@1"))
    msg = str(e.value)
    assert msg.startswith("churn-cr@1: removing 1 row(s) needs ") and \
        msg.endswith(f" of the removal budget, {budget - spent - base:.3g} left: nothing was changed")
    assert abs(budget - spent - base) < 1e-12 * budget
