"""The failsafe peer channel: a small HTTP endpoint each sidecar serves to its
peers, and the client a holder asks them with.

Authenticated with a secret every peer shares (``failsafe_secret_file``):
each request and each answer carries an HMAC-SHA256 of its exact body. A
request names the seat it is meant for, a fresh random nonce and the
sender's wall-clock time; a peer answers only a request signed with the
secret, addressed to it, at most ``REPLAY_WINDOW_S`` old, whose nonce it has
not seen. An answer echoes the nonce and names the answering identity, and
the holder takes it only when signed, for its nonce, from the seat asked.
So a request nobody signed, a replayed one, or a forged or misdirected
answer never influences a decision: each is "don't know" (``Unknown``).

Nothing here is secret but the key; the bodies carry no secret, so the
channel needs no encryption (see the README's Failsafe section). Imported
only when failsafe is on (hashlib and hmac stay out of a default sidecar).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dbvip.failsafe import Acked, Declined
from dbvip.identity import Identity
from dbvip.model import Seat
from dbvip.parsers import Listen
from dbvip.ports import Unknown

log = logging.getLogger("dbvip.failsafe")

PATH = "/failsafe"
SIGNATURE = "X-Dbvip-Signature"
REPLAY_WINDOW_S = 30.0  # a request older (or newer) than this on the wall clock is refused
MAX_BODY = 4096
Answerer = Callable[[Identity, float], Acked | Declined]
Endpoints = Callable[[Seat], tuple[str, int] | None]
PeerAnswer = Acked | Declined | Unknown


def sign(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def _signed(secret: bytes, body: bytes, signature: str | None) -> bool:
    return signature is not None and hmac.compare_digest(sign(secret, body), signature)


def _identity(raw: Any) -> Identity | None:
    if not isinstance(raw, dict):
        return None
    fields = [raw.get(k) for k in ("node", "instance", "host", "interface")]
    strings = [f for f in fields if isinstance(f, str) and f]
    return Identity(*strings) if len(strings) == len(fields) else None


def _identity_dict(identity: Identity) -> dict[str, str]:
    return {
        "node": identity.node,
        "instance": identity.instance,
        "host": identity.host,
        "interface": identity.interface,
    }


def _seat_dict(seat: Seat) -> dict[str, str]:
    return {"node": seat.node, "host": seat.host, "interface": seat.interface}


class _Nonces:
    """Nonces seen within the replay window (the window bounds the set)."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def first_time(self, nonce: str, now: float) -> bool:
        with self._lock:
            for old, expiry in list(self._seen.items()):
                if expiry < now:
                    del self._seen[old]
            if nonce in self._seen:
                return False
            self._seen[nonce] = now + 2 * REPLAY_WINDOW_S
            return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        listen: Listen,
        me: Identity,
        secret: bytes,
        answer: Answerer,
        wall: Callable[[], float],
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
        self.me, self.secret, self.answer, self.wall = me, secret, answer, wall
        self.nonces = _Nonces()
        super().__init__((listen.host, listen.port), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("failsafe request from %s failed", client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 5.0  # a client that sends nothing does not hold a thread for long

    def do_POST(self) -> None:
        server = self.server
        length = int(self.headers.get("Content-Length") or 0)
        if self.path != PATH or not 0 < length <= MAX_BODY:
            return self._refuse(404 if self.path != PATH else 400, "bad request")
        body = self.rfile.read(length)
        if not _signed(server.secret, body, self.headers.get(SIGNATURE)):
            return self._refuse(403, "request not signed with the failsafe secret")
        try:
            request = json.loads(body)
            holder = _identity(request["holder"])
            window_s = float(request["window_s"])
            nonce, sent = str(request["nonce"]), float(request["sent"])
            to = request["to"]
        except (ValueError, KeyError, TypeError):
            return self._refuse(400, "malformed request")
        now = server.wall()
        if holder is None or to != _seat_dict(Seat.of(server.me)):
            return self._refuse(403, "request meant for another seat")
        if abs(now - sent) > REPLAY_WINDOW_S or not server.nonces.first_time(nonce, now):
            return self._refuse(403, "request replayed or too old")
        result = server.answer(holder, window_s)
        reply: dict[str, Any] = {"nonce": nonce, "peer": _identity_dict(server.me)}
        if isinstance(result, Acked):
            reply |= {"ack": True, "window_s": result.window_s, "until_s": result.until_s}
        else:
            reply |= {"ack": False, "reason": result.reason}
        out = json.dumps(reply, sort_keys=True).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.send_header(SIGNATURE, sign(server.secret, out))
        self.end_headers()
        self.wfile.write(out)

    def _refuse(self, code: int, why: str) -> None:
        log.warning("failsafe request from %s refused: %s", self.client_address[0], why)
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("failsafe http " + format, *args)


class PeerServer:
    """Binds at construction (a port in use fails the start), serves on start."""

    def __init__(
        self,
        listen: Listen,
        me: Identity,
        secret: bytes,
        answer: Answerer,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._server = _Server(listen, me, secret, answer, wall)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="dbvip-failsafe", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()


class PeerClient:
    """Asks every peer at once; each answer is proven or it is Unknown."""

    def __init__(
        self, secret: bytes, endpoints: Endpoints, wall: Callable[[], float] = time.time
    ) -> None:
        self._secret = secret
        self._endpoints = endpoints
        self._wall = wall

    def ask_all(
        self, holder: Identity, peers: tuple[Seat, ...], window_s: float, timeout_s: float
    ) -> tuple[tuple[Seat, PeerAnswer], ...]:
        answers: dict[Seat, PeerAnswer] = {}
        threads = [
            threading.Thread(
                target=lambda s=seat: answers.__setitem__(
                    s, self.ask(holder, s, window_s, timeout_s)
                ),
                name="dbvip-failsafe-ask",
                daemon=True,
            )
            for seat in peers
        ]
        start = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, timeout_s - (time.monotonic() - start)))
        late = Unknown(f"no answer in {timeout_s:.3f} s")
        return tuple((seat, answers.get(seat, late)) for seat in peers)

    def ask(self, holder: Identity, seat: Seat, window_s: float, timeout_s: float) -> PeerAnswer:
        where = self._endpoints(seat)
        if where is None:
            return Unknown("no failsafe endpoint in its member report")
        nonce = os.urandom(16).hex()
        request = {
            "holder": _identity_dict(holder),
            "to": _seat_dict(seat),
            "window_s": window_s,
            "nonce": nonce,
            "sent": self._wall(),
        }
        body = json.dumps(request, sort_keys=True).encode()
        host, port = where
        conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
        try:
            conn.request(
                "POST",
                PATH,
                body,
                {"Content-Type": "application/json", SIGNATURE: sign(self._secret, body)},
            )
            response = conn.getresponse()
            reply = response.read(MAX_BODY + 1)
            signature = response.getheader(SIGNATURE)
        except (OSError, http.client.HTTPException) as exc:
            return Unknown(f"{host}:{port}: {exc or type(exc).__name__}")
        finally:
            conn.close()
        if response.status != 200:
            return Unknown(f"{host}:{port} refused the request (HTTP {response.status})")
        if len(reply) > MAX_BODY or not _signed(self._secret, reply, signature):
            return Unknown(f"{host}:{port}: answer not signed with the failsafe secret")
        return _read_answer(reply, nonce, seat)


def _read_answer(reply: bytes, nonce: str, seat: Seat) -> PeerAnswer:
    try:
        answer = json.loads(reply)
        peer = _identity(answer["peer"])
        if answer["nonce"] != nonce or peer is None or Seat.of(peer) != seat:
            return Unknown("answer not for this request or not from the seat asked")
        if answer["ack"] is True:
            return Acked(float(answer["until_s"]), float(answer["window_s"]))
        return Declined(str(answer["reason"]))
    except (ValueError, KeyError, TypeError):
        return Unknown("malformed answer")
