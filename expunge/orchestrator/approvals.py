"""Signed plan approvals: Ed25519 keys named in the policy.

An approver is a name in the policy's `[approval.keys]` with an OpenSSH Ed25519 public key
(`ssh-ed25519 AAAA…`, as `ssh-keygen -t ed25519` or `expunge approver keygen` makes). Approving a
plan signs a short statement naming the plan id (the SHA-256 of its content) and the policy's hash with
the approver's private key; the store keeps the signature and the key's fingerprint, and anyone holding
the policy can check it. Distinct keys count as distinct approvers, whatever the names say.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

from expunge.errors import BadInput


def statement(plan_id: str, policy_sha256: str) -> bytes:
    """What an approver signs."""
    return f"expunge plan approval v1\nplan {plan_id}\npolicy {policy_sha256}\n".encode()


def parse_public_key(text: str, where: str):
    """An Ed25519 public key from an OpenSSH public key line."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    try:
        key = load_ssh_public_key(text.strip().encode())
    except (ValueError, TypeError, IndexError) as exc:
        raise BadInput(f"{where}: not an OpenSSH public key line ('ssh-ed25519 AAAA…'): {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BadInput(f"{where}: only Ed25519 keys are accepted (ssh-keygen -t ed25519)")
    return key


def raw_public(key) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def fingerprint(key) -> str:
    """As `ssh-keygen -l` prints it: SHA256:<base64 of the SHA-256 of the key blob, unpadded>."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    blob = base64.b64decode(key.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def load_private_key(path: str | os.PathLike):
    """An Ed25519 private key from an OpenSSH or PEM (PKCS#8) file readable by its owner only."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_private_key

    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise BadInput(f"no such key file: {p}") from None
    except OSError as exc:
        raise BadInput(f"cannot read key file {p}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fh.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise BadInput(f"key file {p} is readable or writable by others: run `chmod 600 {p}`")
        data = fh.read()
    try:
        if b"OPENSSH PRIVATE KEY" in data:
            key = load_ssh_private_key(data, password=None)
        else:
            key = load_pem_private_key(data, password=None)
    except TypeError:
        raise BadInput(f"key file {p} is encrypted; give an unencrypted Ed25519 key file") from None
    except ValueError:
        raise BadInput(f"key file {p} is not an OpenSSH or PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BadInput(f"key file {p} is not an Ed25519 key (ssh-keygen -t ed25519)")
    return key


def sign(private_key, plan_id: str, policy_sha256: str) -> str:
    return base64.b64encode(private_key.sign(statement(plan_id, policy_sha256))).decode()


def verify(public_key, signature: str, plan_id: str, policy_sha256: str) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        public_key.verify(base64.b64decode(signature, validate=True), statement(plan_id, policy_sha256))
        return True
    except (InvalidSignature, ValueError):
        return False


def keygen(path: str | os.PathLike, comment: str) -> str:
    """Write a new Ed25519 private key (OpenSSH format, mode 0600, never over an existing file) and return
    its public key line for the policy."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )

    key = Ed25519PrivateKey.generate()
    p = Path(path)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise BadInput(f"{p} exists; choose another file for the new key") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()))
    line = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    return f"{line} {comment}".strip()
