"""Inputs bench/fuzz.py found crashing a reader with something other than an expunge error, each as it was
minimised. Every one must now be refused with `BadInput` (one line, exit 2 at the command line)."""

from __future__ import annotations

import json

import pytest

from expunge.errors import BadInput
from expunge.orchestrator import policy as P


@pytest.mark.parametrize("text,needle", [
    (b"\x80", "not UTF-8"),
    (b"categories = false\n", "categories: expected a table"),
    (b'categories = {health = 3}\n', "categories.health: expected a table"),
    (b"models = nan\n", "models: expected a table"),
    (b'models = {m = "x"}\n', "models.m: expected a table"),
    (b'approval = ""\n', "approval: expected a table"),
    (b"approval = [false]\n", "approval: expected a table"),
    (b'approval = {keys = 1}\n', "approval.keys: expected a table"),
    (b"approximate = []\n", "approximate: expected a table"),
    (b"costs = []\n", "costs: expected a table"),
    (b'default_category = "default"\ntrainers = ""\n', "trainers: expected a table"),
    (b"trainers = nan\n", "trainers: expected a table"),
    (b'residuals = {hold = "m"}\n', "residuals.hold: expected a table"),
    (b"costs = {cpu_hour = nan}\n", "costs.cpu_hour must be a finite number"),
    (b"costs = {gpu_hour = inf}\n", "costs.gpu_hour must be a finite number"),
    (b"costs = {cpu_hour = -5.0}\n", "costs.cpu_hour must be a finite number"),
])
def test_policy_files_the_fuzzer_found(tmp_path, text, needle):
    path = tmp_path / "p.toml"
    path.write_bytes(text)
    with pytest.raises(BadInput, match=needle):
        P.load_policy(path)


def test_policy_rates_at_the_boundary_are_accepted(tmp_path):
    path = tmp_path / "p.toml"
    path.write_bytes(b"costs = {cpu_hour = 0, gpu_hour = 0.0}\n")
    pol = P.load_policy(path)
    assert (pol.cpu_hour, pol.gpu_hour) == (0.0, 0.0)
    assert len(pol.sha256()) == 64


@pytest.mark.parametrize("body", [b'{"categories": null}', b'{"categories": {}, "models": null}',
                                  b'{"categories": []}', b"[]", b"\xff"])
def test_a_damaged_pinned_policy_is_refused(store, body):
    sha = P.pin(store, P.load_policy(None))
    (store.root / "policies" / f"{sha}.json").write_bytes(body)
    with pytest.raises(BadInput, match="is damaged"):
        P.pinned(store, sha)


def test_a_pinned_policy_still_reads_back():
    pol = P.load_policy(None)
    assert P.policy_from_dict(json.loads(json.dumps(pol.to_dict()))).sha256() == pol.sha256()
