"""Test TLS material (a CA, and a client certificate and key it signed, valid
until 2125; made with openssl, see README "Development"), and what a
credential of a given name should hold for ``check-config`` to accept it."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent / "tls"
CA = HERE / "ca.pem"
CLIENT_CERT = HERE / "client.pem"
CLIENT_KEY = HERE / "client-key.pem"


def credential_text(name: str) -> str:
    """What a file called ``name`` holds: a PEM when its name says so, else a password."""
    words = name.lower().replace("-", "_").replace(".", "_").split("_")
    if "key" in words:
        return CLIENT_KEY.read_text()
    if "cert" in words:
        return CLIENT_CERT.read_text()
    if "ca" in words:
        return CA.read_text()
    return "example-secret\n"
