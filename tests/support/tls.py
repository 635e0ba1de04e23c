"""Test TLS material, and what a credential of a given name should hold for
``check-config`` to accept it.

``tls/``: a CA and a client certificate and key it signed, valid for 100
years, made with::

    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca.pem \\
        -days 36500 -subj "/CN=dbvip test CA"
    openssl req -newkey rsa:2048 -nodes -keyout client-key.pem -out client.csr \\
        -subj "/CN=dbvip"
    openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem \\
        -CAcreateserial -out client.pem -days 36500

(the CA's key was thrown away: nothing else is ever signed with it).
"""

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
