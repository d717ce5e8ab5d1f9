"""pytest plugin for mutation runs only (bench/mutation.py loads it with -p): every Hypothesis test runs at most
10 derandomised examples, without shrinking and without an example database, so that a mutant's verdict is
the same on every run and a killed mutant is not shrunk at length.

The tests also run in the order of their files (path, then line): mutmut names them in a set's order, and
tests sharing a module-scoped fixture may rely on running in file order (test_verify.py's `exact_run`:
after the completion test the store has forgotten the subject, so an earlier test run later fails). A clean
run in another order fails, and mutmut then checks nothing."""

from __future__ import annotations

MAX_EXAMPLES = 10


def pytest_collection_modifyitems(items):
    from hypothesis import Phase, settings

    def where(item):
        path, line, _ = item.reportinfo()
        return str(path), line if isinstance(line, int) else -1

    items[:] = sorted(items, key=where)  # stable: parametrised cases keep their order

    for item in items:
        fn = getattr(item, "obj", None)
        current = getattr(fn, "_hypothesis_internal_use_settings", None)
        if current is None:
            continue
        fn._hypothesis_internal_use_settings = settings(
            current, max_examples=min(current.max_examples, MAX_EXAMPLES), derandomize=True, database=None,
            phases=[Phase.explicit, Phase.generate])
