"""Survivors of the mutation run over orchestrator/rerun.py: a re-run given a new config (a distilled model
re-derived from its teacher's new version) trains with that config, not the recorded one — else the student
would distil again from the teacher that saw the erased records while its lineage names the new one."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")


def test_a_rerun_trains_with_the_config_it_is_given(tmp_path):
    from expunge.demo import build_demo
    from expunge.orchestrator.rerun import recorded_request, rerun

    store, _ = build_demo(tmp_path)
    rec = recorded_request(store, "churn-distill-1")
    assert rec["config"]["teacher"] == "churn-ft@1"
    config = {**rec["config"], "teacher": "churn-mlp@1"}  # another recorded model as the teacher
    rerun(store, "churn-distill-1", new_name="distill-again", out_dir=tmp_path / "again", config=config,
          parents=[{"model": "churn-mlp@1", "relation": "distill"}])
    with store.read() as con:
        (got,) = con.execute("SELECT config FROM runs WHERE name = 'distill-again'").fetchone()
    assert json.loads(got)["teacher"] == "churn-mlp@1"
