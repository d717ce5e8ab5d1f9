"""The README's Python example runs as written (extracted from README.md), and says what the data says."""

from __future__ import annotations

import ast
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_example() -> str:
    text = README.read_text()
    start = text.index("The same from Python")
    m = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    assert m, "no ```python block after 'The same from Python' in README.md"
    return m.group(1)


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    code = python_example()
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    doc = ast.literal_eval(capsys.readouterr().out.strip().splitlines()[-1])
    # By hand from the example's tables: cust-0042 owns r1 and r2; adults keeps r1 and r3; churn-1 trained on
    # adults@1, so on r1 only, which it consumed at step 0 (the checkpoint at step 1 is not clean for it).
    assert doc["subjects"] == {"requested": 1, "found": 1} and doc["records"] == 2
    assert {d["id"]: d["records"] for d in doc["datasets"]} == {"customers@1": 2, "adults@1": 1}
    (run,) = doc["runs"]
    assert (run["id"], run["records"]) == ("churn-1", 1)
    assert run["first_seen"] == {"clean_checkpoints": 0, "last_clean_step": None, "first_dirty_step": 1}
    assert [(m["id"], m["direct"], m["stage"]) for m in doc["models"]] == [("churn@1", True, "staging")]
