"""expunge: record-level data lineage and machine-unlearning orchestration."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Store", "__version__"]


def __getattr__(name: str):
    # Lazy, so `import expunge` stays cheap for the CLI.
    if name == "Store":
        from expunge.lineage.store import Store

        return Store
    raise AttributeError(name)
