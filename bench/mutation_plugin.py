"""pytest plugin for mutation runs only (bench/mutation.py loads it with -p): every Hypothesis test runs at most
10 derandomised examples, without shrinking and without an example database, so that a mutant's verdict is
the same on every run and a killed mutant is not shrunk at length."""

from __future__ import annotations

MAX_EXAMPLES = 10


def pytest_collection_modifyitems(items):
    from hypothesis import Phase, settings

    for item in items:
        fn = getattr(item, "obj", None)
        current = getattr(fn, "_hypothesis_internal_use_settings", None)
        if current is None:
            continue
        fn._hypothesis_internal_use_settings = settings(
            current, max_examples=min(current.max_examples, MAX_EXAMPLES), derandomize=True, database=None,
            phases=[Phase.explicit, Phase.generate])
