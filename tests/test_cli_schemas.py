"""`init --json`, `policy show --json` and `request list --json` print documents valid against their schemas
(init, policy, request_list), checked on real outputs; every schema shipped is itself a valid 2020-12 schema and
its cross-file references resolve."""

from __future__ import annotations

import json
from importlib import resources

import jsonschema
import pytest
from referencing import Registry, Resource
from typer.testing import CliRunner

from expunge.cli import app
from expunge.schemas import load_schema

runner = CliRunner()
NAMES = sorted(p.name for p in resources.files("expunge.schemas").iterdir() if p.name.endswith(".schema.json"))


def run(*args, **kw):
    res = runner.invoke(app, [str(a) for a in args], catch_exceptions=False, **kw)
    assert res.exit_code == 0, res.output
    return res


def validate(doc: dict, name: str) -> None:
    """Validate with every shipped schema registered under its $id, so `"$ref": "request.schema.json"` resolves
    as any 2020-12 validator resolves it (relative to the referring schema's $id)."""
    registry = Registry().with_resources(
        (load_schema(n)["$id"], Resource.from_contents(load_schema(n))) for n in NAMES)
    jsonschema.Draft202012Validator(load_schema(name), registry=registry,
                                    format_checker=jsonschema.FormatChecker()).validate(doc)


@pytest.mark.parametrize("name", NAMES)
def test_schemas_are_valid(name):
    schema = load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$id"].endswith("/" + name)


def test_init_json(tmp_path, monkeypatch):
    doc = json.loads(run("init", "--store", tmp_path / "a", "--key-file", tmp_path / "k.key", "--json").stdout)
    validate(doc, "init.schema.json")
    assert doc == {"store": str((tmp_path / "a").resolve()), "key_file": str((tmp_path / "k.key").resolve())}
    monkeypatch.setenv("EXPUNGE_SECRET", "ab" * 32)
    doc = json.loads(run("init", "--store", tmp_path / "b", "--json").stdout)
    validate(doc, "init.schema.json")
    assert doc["key_file"] is None


def test_policy_show_json(tmp_path):
    doc = json.loads(run("policy", "show", "--json").stdout)
    validate(doc, "policy.schema.json")
    assert doc["source"] == "default" and "default" in doc["categories"]
    pol = tmp_path / "p.toml"
    from expunge.orchestrator.policy import default_policy_text

    text = default_policy_text().replace("[trainers]\nallow = []", '[trainers]\nallow = ["mypkg"]')
    pol.write_text(text + "\n[models.churn]\nnever_retire = true\n")
    doc = json.loads(run("policy", "show", "--policy", pol, "--json").stdout)
    validate(doc, "policy.schema.json")
    assert doc["models"] == {"churn": {"never_retire": True, "always_retrain": False}}
    assert doc["trainers_allow"] == ["mypkg"] and doc["source"] == str(pol)
    bad = dict(doc, approximate_method="guess")
    with pytest.raises(jsonschema.ValidationError):
        validate(bad, "policy.schema.json")


def test_request_list_json(tmp_path):
    st = tmp_path / "st"
    run("init", "--store", st)
    assert json.loads(run("request", "list", "--store", st, "--json").stdout) == {"requests": []}
    run("request", "create", "--subject", "a", "--store", st)
    run("request", "create", "--subject", "b", "--subject", "c", "--category", "marketing", "--reason", "unsub",
        "--store", st)
    doc = json.loads(run("request", "list", "--store", st, "--json").stdout)
    validate(doc, "request_list.schema.json")
    assert [(r["id"], r["subjects"], r["category"], r["reason"]) for r in doc["requests"]] == [
        ("req-000001", 1, "default", None), ("req-000002", 2, "marketing", "unsub")]
    doc["requests"][0]["status"] = "bogus"  # the items are checked against request.schema.json
    with pytest.raises(jsonschema.ValidationError):
        validate(doc, "request_list.schema.json")
