"""The exceptions expunge raises; callers catch `ExpungeError`.

    ExpungeError                 base class, carries the CLI exit code
    ├── BadInput                 the user's input is wrong (exit 2); nothing was written
    │   ├── SchemaError          a document failed its JSON Schema
    │   └── UnknownReference     a parent dataset, model or run that is not in the store
    ├── StoreNotFound            no store at the given path (exit 2)
    ├── StoreCorrupt             the store's files or names are not what expunge wrote (exit 2);
    │                            refused before anything outside the store is touched
    ├── StoreBusy                another process is writing to the store (exit 3)
    ├── StoreUnwritable          the store cannot be written: disk full, a file-size limit, a read-only
    │                            file system or permissions; the write was not committed (exit 6)
    ├── SecretMismatch           the subject-hash key is not this store's, or not safe to use (exit 2)
    ├── ArtifactMismatch         a model or checkpoint file is not the one the store recorded (its sha256
    │                            differs, or none was recorded for it) or is not a weights-only file;
    │                            refused before it is loaded (exit 2)
    └── TrainerNotAllowed        a trainer entry point outside the allowed module prefixes (expunge's own,
                                 the policy's [trainers] allow, the store's); refused before any import (exit 2)
"""

from __future__ import annotations


class ExpungeError(Exception):
    exit_code = 1


class BadInput(ExpungeError):
    exit_code = 2


class SchemaError(BadInput):
    pass


class UnknownReference(BadInput):
    pass


class StoreNotFound(ExpungeError):
    exit_code = 2


class StoreCorrupt(ExpungeError):
    exit_code = 2


class StoreBusy(ExpungeError):
    exit_code = 3


class StoreUnwritable(ExpungeError):
    exit_code = 6


class SecretMismatch(ExpungeError):
    exit_code = 2


class ArtifactMismatch(ExpungeError):
    exit_code = 2


class TrainerNotAllowed(ExpungeError):
    exit_code = 2
