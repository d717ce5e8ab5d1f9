"""Survivors of the mutation run over orchestrator/approvals.py: an approver's key file as the docs describe it —
never written over, read without following a link (the reason named), and PEM (PKCS#8) as well as OpenSSH."""

from __future__ import annotations

import errno
import os

import pytest

from expunge.errors import BadInput
from expunge.orchestrator.approvals import keygen, load_private_key


def test_keygen_never_writes_over_an_existing_file(tmp_path):
    p = tmp_path / "ana.key"
    p.write_bytes(b"someone else's key")
    with pytest.raises(BadInput, match="exists; choose another file"):
        keygen(p, "ana")
    assert p.read_bytes() == b"someone else's key"


def test_a_key_file_behind_a_link_is_refused_with_the_reason(tmp_path):
    real = tmp_path / "real.key"
    keygen(real, "ana")
    link = tmp_path / "link.key"
    os.symlink(real, link)
    with pytest.raises(BadInput) as exc:
        load_private_key(link)
    assert str(exc.value) == f"cannot read key file {link}: {os.strerror(errno.ELOOP)}"


def test_a_pem_pkcs8_ed25519_key_is_read(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    key = Ed25519PrivateKey.generate()
    p = tmp_path / "ana.pem"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    got = load_private_key(p)
    assert got.private_bytes_raw() == key.private_bytes_raw()
