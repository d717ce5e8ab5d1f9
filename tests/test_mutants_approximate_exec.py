"""Survivors of the mutation run over orchestrator/approximate_exec.py, killed on the demo: approximate unlearning
of churn, a SISA ensemble trained on a composed version (each row is a customer's profile and transactions), its
forget rows found by hand from the rows' ids and its result equal to the unlearning written out here."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import pyarrow.parquet as pq  # noqa: E402

from expunge.orchestrator import approximate, execute, planner  # noqa: E402
from expunge.orchestrator import requests as rq  # noqa: E402
from expunge.orchestrator.approximate_exec import approximate_unlearning  # noqa: E402
from expunge.orchestrator.policy import store_policy  # noqa: E402
from tests.test_mutants_execute import demo  # noqa: F401  (fixture)


def _plan_under(store, subject, method: str) -> dict:
    """A marketing request's plan under the demo's policy with `method` as the approximate method (the store's
    policy then)."""
    from expunge.orchestrator.policy import set_store_policy

    text = (store.root.parent / "policy.toml").read_text()
    assert 'method = "scrub"' in text
    path = store.root.parent / f"policy-{method}.toml"
    path.write_text(text.replace('method = "scrub"', f'method = "{method}"'))
    set_store_policy(store, path)
    assert store_policy(store).approximate_method == method
    return planner.make_plan(store, [rq.create(store, [subject], category="marketing",
                                               policy=store_policy(store)).id], store_policy(store))


@pytest.mark.parametrize("method", ["scrub", "neggrad+"])
def test_a_sisa_ensemble_over_a_composed_version_unlearned_as_written_out(demo, method):  # noqa: F811
    from expunge.orchestrator.rerun import recorded_request
    from expunge.orchestrator.trainers import TrainRequest, mlp, sisa

    store, subject, erased = demo
    doc = _plan_under(store, subject, method)
    info = execute.model_info(store, "churn@1")
    out = approximate_unlearning(execute.Context(store, doc, erased), {"model": "churn@1"}, info)

    # By hand: the subject's one feature row is named after their profile record (the demo's raw customers file).
    cust = pq.read_table(store.root.parent / "customers.parquet")
    (profile,) = [r for r, c in zip(cust.column("record_id").to_pylist(), cust.column("customer_id").to_pylist())
                  if c == subject]
    rec = recorded_request(store, "churn-sisa-1", train_ords="always")
    ds = mlp.dataset(TrainRequest(store=store, run_name="x", inputs=rec["inputs"], config=rec["config"],
                                  seed=rec["seed"], out_dir=store.root, trainer=rec["trainer"], model_name="x"))
    is_forget = torch.tensor([r == f"feat-{profile}" for r in ds.row_ids])
    assert int(is_forget.sum()) == 1 and out.detail["forget_rows"] == 1
    # The ensemble unlearned as one classifier of its members' mean probability, with the run's seed, by the
    # policy's method.
    model = sisa.build(rec["config"])
    model.load_state_dict(torch.load(info["path"], weights_only=True)["model"])
    gen = torch.Generator().manual_seed(int(rec["seed"]))
    f, other = torch.nonzero(is_forget).flatten(), torch.nonzero(~is_forget).flatten()
    r = other[approximate.retain_sample(len(other), len(f), gen)]
    unlearn = approximate.scrub if method == "scrub" else approximate.neggrad_plus
    unlearn(approximate.EnsembleLogits(model), (ds.x[f], ds.y[f]), (ds.x[r], ds.y[r]), generator=gen)
    got = torch.load(execute.model_info(store, out.new_model)["path"], weights_only=True)["model"]
    want, before = model.state_dict(), torch.load(info["path"], weights_only=True)["model"]
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert not all(torch.equal(got[k], before[k]) for k in before)  # unlearning changed the members
    assert out.detail["retain_rows"] == len(r)
    assert torch.load(execute.model_info(store, out.new_model)["path"], weights_only=True)["unlearned"] == {
        "method": method, "forget_rows": 1}


def test_refusals_no_forget_row_and_no_artifact(demo):  # noqa: F811
    """churn-student was distilled on the 50 oldest customers; the subject is among the newest: none of its
    training rows holds their records. A model version without a recorded file cannot be loaded."""
    from expunge.orchestrator.approximate_exec import load_classifier

    store, subject, erased = demo
    doc = _plan_under(store, subject, "scrub")
    with pytest.raises(execute.ActionFailed) as e:
        approximate_unlearning(execute.Context(store, doc, erased), {"model": "churn-student@1"},
                               execute.model_info(store, "churn-student@1"))
    assert str(e.value) == "churn-student@1: none of its training rows holds the erased records"
    with pytest.raises(execute.ActionFailed) as e:
        load_classifier({"id": "ghost@3", "path": None, "sha256": None}, {"feature_cols": ["a"]}, "mlp")
    assert str(e.value) == "ghost@3: no artifact recorded"
