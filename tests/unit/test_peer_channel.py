"""The failsafe peer channel over real sockets on 127.0.0.1: only a request
signed with the shared secret, addressed to this seat, fresh and never seen
before reaches the promise book; only a signed answer to this very request,
from the seat asked, counts as one. Everything else is "don't know"."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator

import pytest

from dbvip.adapters.peers import PATH, SIGNATURE, PeerClient, PeerServer, sign
from dbvip.failsafe import Acked, Declined
from dbvip.identity import Identity
from dbvip.model import Seat
from dbvip.parsers import Listen
from dbvip.ports import Unknown

SECRET = b"correct horse battery staple"
HOLDER = Identity("n1", "i1", "h1", "eth0")
PEER = Identity("n2", "i2", "h2", "eth0")


class Book:
    """Stands in for the promise book: records who was answered."""

    def __init__(self, ack: bool = True) -> None:
        self.ack = ack
        self.asked: list[tuple[Identity, float]] = []

    def answer(self, holder: Identity, window_s: float) -> Acked | Declined:
        self.asked.append((holder, window_s))
        return Acked(100.0 + window_s, window_s) if self.ack else Declined("database is primary")


@pytest.fixture
def book() -> Book:
    return Book()


@pytest.fixture
def server(book: Book) -> Iterator[PeerServer]:
    peer = PeerServer(Listen("127.0.0.1", 0), PEER, SECRET, book.answer)
    peer.start()
    try:
        yield peer
    finally:
        peer.close()


def client(server: PeerServer, secret: bytes = SECRET) -> PeerClient:
    return PeerClient(secret, lambda seat: ("127.0.0.1", server.port))


def post(port: int, body: bytes, signature: str | None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    headers = {SIGNATURE: signature} if signature is not None else {}
    try:
        conn.request("POST", PATH, body, headers)
        return conn.getresponse().status
    finally:
        conn.close()


def request_body(to: Seat | None = None, sent: float | None = None, nonce: str = "n" * 32) -> bytes:
    to = to or Seat.of(PEER)
    request = {
        "holder": {"node": "n1", "instance": "i1", "host": "h1", "interface": "eth0"},
        "to": {"node": to.node, "host": to.host, "interface": to.interface},
        "window_s": 10.0,
        "nonce": nonce,
        "sent": time.time() if sent is None else sent,
    }
    return json.dumps(request, sort_keys=True).encode()


def test_a_signed_ask_is_acknowledged(server: PeerServer, book: Book) -> None:
    answers = client(server).ask_all(HOLDER, (Seat.of(PEER),), 10.0, 2.0)
    assert answers == ((Seat.of(PEER), Acked(110.0, 10.0)),)
    assert book.asked == [(HOLDER, 10.0)]


def test_a_refusal_comes_back_as_declined(book: Book) -> None:
    book.ack = False
    peer = PeerServer(Listen("127.0.0.1", 0), PEER, SECRET, book.answer)
    peer.start()
    try:
        ((_, answer),) = client(peer).ask_all(HOLDER, (Seat.of(PEER),), 10.0, 2.0)
    finally:
        peer.close()
    assert answer == Declined("database is primary")


def test_a_client_with_the_wrong_secret_influences_nothing(server: PeerServer, book: Book) -> None:
    ((_, answer),) = client(server, b"wrong").ask_all(HOLDER, (Seat.of(PEER),), 10.0, 2.0)
    assert isinstance(answer, Unknown) and "403" in answer.cause
    assert book.asked == []


def test_an_unsigned_request_influences_nothing(server: PeerServer, book: Book) -> None:
    assert post(server.port, request_body(), None) == 403
    assert post(server.port, request_body(), "00" * 32) == 403
    assert book.asked == []


def test_a_replayed_request_is_answered_once(server: PeerServer, book: Book) -> None:
    body = request_body()
    assert post(server.port, body, sign(SECRET, body)) == 200
    assert post(server.port, body, sign(SECRET, body)) == 403
    assert len(book.asked) == 1


def test_an_old_request_is_refused(server: PeerServer, book: Book) -> None:
    body = request_body(sent=time.time() - 120.0, nonce="o" * 32)
    assert post(server.port, body, sign(SECRET, body)) == 403
    assert book.asked == []


def test_a_request_meant_for_another_seat_is_refused(server: PeerServer, book: Book) -> None:
    body = request_body(to=Seat("n3", "h3", "eth0"), nonce="m" * 32)
    assert post(server.port, body, sign(SECRET, body)) == 403
    assert book.asked == []


def test_an_answer_from_another_seat_than_asked_is_unknown(server: PeerServer) -> None:
    # The endpoint of n3, as its report says, is served by n2's sidecar.
    ((_, answer),) = client(server).ask_all(HOLDER, (Seat("n3", "h3", "eth0"),), 10.0, 2.0)
    assert isinstance(answer, Unknown)


def test_an_answer_signed_with_another_secret_is_unknown(book: Book) -> None:
    other = PeerServer(Listen("127.0.0.1", 0), PEER, b"another secret", book.answer)
    other.start()
    try:
        ((_, answer),) = client(other).ask_all(HOLDER, (Seat.of(PEER),), 10.0, 2.0)
    finally:
        other.close()
    assert isinstance(answer, Unknown)
    assert book.asked == []  # the request was not signed with its secret either


def test_a_hanging_peer_is_unknown_by_the_timeout(server: PeerServer) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts connections, never answers
    hung_port = silent.getsockname()[1]
    try:
        lone = Seat("n3", "h3", "eth0")

        def where(seat: Seat) -> tuple[str, int]:
            return ("127.0.0.1", hung_port if seat == lone else server.port)

        ask = PeerClient(SECRET, where)
        answers = dict(ask.ask_all(HOLDER, (Seat.of(PEER), lone), 10.0, 0.5))
    finally:
        silent.close()
    assert answers[Seat.of(PEER)] == Acked(110.0, 10.0)
    assert isinstance(answers[lone], Unknown)


def test_a_peer_without_an_endpoint_is_unknown() -> None:
    ((_, answer),) = PeerClient(SECRET, lambda seat: None).ask_all(
        HOLDER, (Seat.of(PEER),), 10.0, 0.5
    )
    assert isinstance(answer, Unknown) and "endpoint" in answer.cause


def test_nothing_listening_is_unknown() -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    ((_, answer),) = PeerClient(SECRET, lambda seat: ("127.0.0.1", port)).ask_all(
        HOLDER, (Seat.of(PEER),), 10.0, 0.5
    )
    assert isinstance(answer, Unknown)
