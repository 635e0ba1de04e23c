"""The etcd client's HTTP transport against tiny real servers on 127.0.0.1
that misbehave on purpose: silent, trickling, closing, oddly framed, echoing.

Real etcd cannot be made to do these; the behaviour against real etcd is in
test_etcd_client.py.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dbvip.adapters.etcd_client import EtcdClient, EtcdUnavailableError
from dbvip.adapters.etcd_http import Endpoint, Transport
from dbvip.adapters.etcd_watch import Watch
from integration.lab.etcd import make_tls
from integration.lab.eventually import eventually

BUDGET_S = 0.5
SLACK = 3  # "in time" means within SLACK x the budget: speed is not asserted
RANGE_REPLY = json.dumps({"header": {"revision": "7"}, "kvs": []}).encode()


def within(bound_s: float, call: Callable[[], object]) -> None:
    started = time.monotonic()
    try:
        call()
    finally:
        elapsed = time.monotonic() - started
        assert elapsed < SLACK * bound_s, f"took {elapsed:.2f} s for a {bound_s} s budget"


# -- a tiny server ------------------------------------------------------


class Peer:
    """One accepted connection, seen from the server."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.gone = threading.Event()  # the client closed its end

    def request(self) -> tuple[str, dict[str, str], bytes] | None:
        """The next request: request line, headers, body; None at EOF."""
        while b"\r\n\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                self.gone.set()
                return None
            self.buf += data
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        line, *fields = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            self.buf += self.sock.recv(65536)
        body, self.buf = self.buf[:length], self.buf[length:]
        return line, headers, body

    def reply(self, body: bytes, status: int = 200, extra: str = "") -> None:
        head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
        self.sock.sendall(head.encode() + body)

    def wait_gone(self) -> None:
        """Read until the client closes (or resets) the connection."""
        try:
            while self.sock.recv(65536):
                pass
        except OSError:
            pass
        self.gone.set()


class TinyServer:
    """Listens on 127.0.0.1; ``serve`` runs for each connection in a thread of its own."""

    def __init__(self, serve: Callable[[Peer], None]) -> None:
        self._serve = serve
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.peers: list[Peer] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return  # closed
            peer = Peer(sock)
            self.peers.append(peer)
            threading.Thread(target=self._run, args=(peer,), daemon=True).start()

    def _run(self, peer: Peer) -> None:
        try:
            self._serve(peer)
        except OSError:
            peer.gone.set()
        finally:
            peer.sock.close()

    def close(self) -> None:
        # shutdown, not just close, wakes the thread blocked in accept()
        for sock in [self._listener, *(p.sock for p in self.peers)]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._thread.join(5)


@pytest.fixture
def servers() -> Iterator[Callable[[Callable[[Peer], None]], TinyServer]]:
    made: list[TinyServer] = []

    def make(serve: Callable[[Peer], None]) -> TinyServer:
        made.append(TinyServer(serve))
        return made[-1]

    yield make
    for server in made:
        server.close()


def silent(peer: Peer) -> None:
    """Accept, read, never answer."""
    peer.wait_gone()


def trickle(peer: Peer) -> None:
    """Answer one byte at a time for 5 s: every single read returns quickly."""
    if peer.request() is None:
        return
    for byte in b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"x" * 250:
        try:
            peer.sock.sendall(bytes([byte]))
        except OSError:
            peer.gone.set()
            return
        time.sleep(0.02)


def keep_alive(peer: Peer) -> None:
    while peer.request() is not None:
        peer.reply(RANGE_REPLY)


def one_per_connection(peer: Peer) -> None:
    """Answer as if keeping the connection, then close it while idle."""
    if peer.request() is not None:
        peer.reply(RANGE_REPLY)


# -- endpoints ------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "parsed", "host_header"),
    [
        ("http://127.0.0.1:2379", Endpoint("http", "127.0.0.1", 2379), "127.0.0.1:2379"),
        ("https://etcd.example:2379/", Endpoint("https", "etcd.example", 2379), None),
        (
            "https://[2001:db8::1]:2379",
            Endpoint("https", "2001:db8::1", 2379),
            "[2001:db8::1]:2379",
        ),
        ("http://etcd", Endpoint("http", "etcd", 80), "etcd:80"),
        ("https://etcd", Endpoint("https", "etcd", 443), "etcd:443"),
    ],
)
def test_endpoint_urls_that_are_accepted(
    url: str, parsed: Endpoint, host_header: str | None
) -> None:
    assert Endpoint.parse(url) == parsed
    if host_header is not None:
        assert parsed.host_header == host_header


@pytest.mark.parametrize(
    "url",
    [
        "etcd:2379",
        "ftp://etcd:2379",
        "http://etcd:2379/v3",
        "http://etcd:2379/?a=b",
        "http://:1",
        "http://etcd:port",
        "http://etcd:2379#x",
    ],
)
def test_endpoint_urls_that_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="must look like"):
        Endpoint.parse(url)


def test_an_endpoint_with_credentials_is_refused_without_showing_them() -> None:
    with pytest.raises(ValueError) as caught:
        EtcdClient(["http://root:hunter2@127.0.0.1:2379"])
    assert "hunter2" not in str(caught.value)


# -- deadlines --------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_silent_server_fails_the_exchange_at_its_deadline(
    servers: Callable[[Callable[[Peer], None]], TinyServer], scheme: str
) -> None:
    """http: the reply never comes; https: the TLS handshake never completes."""
    server = servers(silent)
    transport = Transport(ssl.create_default_context() if scheme == "https" else None)
    endpoint = Endpoint.parse(server.url(scheme))
    with pytest.raises(TimeoutError):
        within(BUDGET_S, lambda: transport.post(endpoint, "/x", b"{}", {}, _deadline()))
    # The failed connection is closed, not left for the next request.
    eventually(lambda: server.peers and server.peers[0].gone.is_set(), timeout_s=5)
    transport.close()


def test_a_trickling_server_cannot_stretch_the_deadline(
    servers: Callable[[Callable[[Peer], None]], TinyServer],
) -> None:
    """Each read returns within 20 ms; the sum of them is bounded all the same."""
    server = servers(trickle)
    transport = Transport(None)
    endpoint = Endpoint.parse(server.url())
    with pytest.raises(TimeoutError):
        within(BUDGET_S, lambda: transport.post(endpoint, "/x", b"{}", {}, _deadline()))
    transport.close()


def test_an_abandoned_attempt_ends_by_itself_soon_after_its_deadline(
    servers: Callable[[Callable[[Peer], None]], TinyServer], clients: Callable[..., EtcdClient]
) -> None:
    """The caller stops waiting for the worker thread at the deadline; the
    worker's own socket deadline then closes the connection, although the
    server is still sending (per-read timeouts would never fire)."""
    server = servers(trickle)
    client = clients([server.url()], retry_wait_s=10.0)  # one attempt only
    # The caller stops waiting, or the worker gives up: whichever comes first.
    with pytest.raises(EtcdUnavailableError, match=r"no answer within|timed out"):
        within(BUDGET_S, lambda: client.range("/k", BUDGET_S))
    eventually(lambda: server.peers and server.peers[0].gone.is_set(), timeout_s=5)


def unavailable_then_answers(answers_after: int) -> Callable[[Peer], None]:
    """The first ``answers_after`` requests (over every connection) get a 503
    (etcd's gateway while the member has no leader), the next ones an answer."""
    seen = itertools.count()

    def serve(peer: Peer) -> None:
        while peer.request() is not None:
            if next(seen) < answers_after:
                peer.reply(b'{"error": "etcdserver: no leader", "code": 14}', status=503)
            else:
                peer.reply(RANGE_REPLY)

    return serve


def test_a_transient_error_is_retried_after_the_retry_wait_within_the_budget(
    servers: Callable[[Callable[[Peer], None]], TinyServer], clients: Callable[..., EtcdClient]
) -> None:
    server = servers(unavailable_then_answers(2))
    client = clients([server.url()], retry_wait_s=0.05)
    started_s = time.monotonic()
    reading = client.range("/k", 2.0)
    assert reading.revision == 7
    # Two refusals, each followed by the retry wait, then the answer.
    assert time.monotonic() - started_s >= 2 * 0.05


def test_no_retry_starts_when_the_wait_would_reach_past_the_budget(
    servers: Callable[[Callable[[Peer], None]], TinyServer], clients: Callable[..., EtcdClient]
) -> None:
    server = servers(unavailable_then_answers(1))
    client = clients([server.url()], retry_wait_s=10.0)  # the wait alone is past the budget
    with pytest.raises(EtcdUnavailableError, match="no leader"):
        within(BUDGET_S, lambda: client.range("/k", BUDGET_S))
    answered = clients([server.url()], retry_wait_s=10.0).range("/k", BUDGET_S)
    assert answered.revision == 7, "the server would have answered a second request"


# -- connections --------------------------------------------------------------


def test_a_connection_is_kept_alive_between_requests(
    servers: Callable[[Callable[[Peer], None]], TinyServer],
) -> None:
    server = servers(keep_alive)
    transport = Transport(None)
    endpoint = Endpoint.parse(server.url())
    for _ in range(5):
        reply = transport.post(endpoint, "/v3/kv/range", b"{}", {}, _deadline())
        assert (reply.status, reply.body) == (200, RANGE_REPLY)
    assert len(server.peers) == 1
    transport.close()
    eventually(server.peers[0].gone.is_set)


def test_each_thread_keeps_a_connection_of_its_own(
    servers: Callable[[Callable[[Peer], None]], TinyServer],
) -> None:
    server = servers(keep_alive)
    transport = Transport(None)
    endpoint = Endpoint.parse(server.url())

    def three() -> None:
        for _ in range(3):
            transport.post(endpoint, "/v3/kv/range", b"{}", {}, _deadline())

    threads = [threading.Thread(target=three) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    three()
    assert len(server.peers) == 3
    transport.close()


def test_a_connection_the_server_closed_while_idle_is_not_used_again(
    servers: Callable[[Callable[[Peer], None]], TinyServer], clients: Callable[..., EtcdClient]
) -> None:
    """Detected before sending: with retries ruled out, every request still succeeds."""
    server = servers(one_per_connection)
    client = clients([server.url()], retry_wait_s=10.0)
    for _ in range(3):
        assert client.range("/k", 2.0).revision == 7
        # The server closes the connection after its reply; let the FIN arrive.
        eventually(lambda: server.peers[-1].sock.fileno() == -1)
        time.sleep(0.05)
    assert len(server.peers) == 3


def test_connection_close_and_http_1_0_replies_are_not_reused(
    servers: Callable[[Callable[[Peer], None]], TinyServer],
) -> None:
    def serve(peer: Peer) -> None:
        request = peer.request()
        if request is None:
            return
        if request[0].startswith("POST /close"):
            peer.reply(RANGE_REPLY, extra="Connection: close\r\n")
        else:  # HTTP/1.0, framed by the end of the connection
            peer.sock.sendall(b"HTTP/1.0 200 OK\r\n\r\n" + RANGE_REPLY)
        peer.sock.shutdown(socket.SHUT_WR)
        peer.wait_gone()

    server = servers(serve)
    transport = Transport(None)
    endpoint = Endpoint.parse(server.url())
    for path in ("/close", "/eof", "/close"):
        assert transport.post(endpoint, path, b"{}", {}, _deadline(2.0)).body == RANGE_REPLY
    assert len(server.peers) == 3
    transport.close()


def test_chunked_replies_split_across_reads(
    servers: Callable[[Callable[[Peer], None]], TinyServer],
) -> None:
    pieces = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n",
        b"\r\n1",  # a chunk size cut in two
        b"0;ext=1\r\n" + RANGE_REPLY[:16],
        b"\r",  # a chunk's CRLF cut in two
        b"\n" + f"{len(RANGE_REPLY) - 16:x}\r\n".encode() + RANGE_REPLY[16:] + b"\r\n",
        b"0\r\nX-Trailer: 1\r\n\r\n",
    ]

    def serve(peer: Peer) -> None:
        while peer.request() is not None:
            for piece in pieces:
                peer.sock.sendall(piece)
                time.sleep(0.02)

    server = servers(serve)
    transport = Transport(None)
    endpoint = Endpoint.parse(server.url())
    for _ in range(2):  # the same connection twice: the framing left nothing behind
        reply = transport.post(endpoint, "/v3/kv/range", b"{}", {}, _deadline(2.0))
        assert (reply.status, reply.body) == (200, RANGE_REPLY)
    assert len(server.peers) == 1
    transport.close()


# -- the client over the transport -------------------------------------------


def test_a_refused_endpoint_then_a_silent_one_is_unknown_in_time(
    servers: Callable[[Callable[[Peer], None]], TinyServer], clients: Callable[..., EtcdClient]
) -> None:
    server = servers(silent)
    with socket.socket() as bound:  # bound, not listening: refuses
        bound.bind(("127.0.0.1", 0))
        refusing = f"http://127.0.0.1:{bound.getsockname()[1]}"
        client = clients([refusing, server.url()])
        with pytest.raises(EtcdUnavailableError) as caught:
            within(BUDGET_S, lambda: client.range("/k", BUDGET_S))
    assert "Connection refused" in caught.value.cause
    assert "no answer within" in caught.value.cause or "timed out" in caught.value.cause


def test_the_password_and_the_token_never_show_in_causes_or_logs(
    servers: Callable[[Callable[[Peer], None]], TinyServer],
    clients: Callable[..., EtcdClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server that echoes every request (in its error messages too)."""
    password, token = "pass-w0rd-SECRET", "tok-SECRET-42"

    def echo(peer: Peer, status: int, answer_auth: bool) -> None:
        while (request := peer.request()) is not None:
            line, headers, body = request
            if answer_auth and line.startswith("POST /v3/auth/authenticate"):
                peer.reply(json.dumps({"header": {}, "token": token}).encode())
                continue
            text = f"{line} {headers} {body.decode()}"
            if status == 200:
                peer.reply(json.dumps({"echo": text}).encode())  # no header
            else:
                peer.reply(json.dumps({"error": text, "code": 3, "message": text}).encode(), status)

    caplog.set_level(logging.DEBUG)
    causes = []
    for status in (200, 400, 503):
        for answer_auth in (False, True):
            server = servers(functools.partial(echo, status=status, answer_auth=answer_auth))
            client = clients([server.url()], username="u", password=password)
            with pytest.raises(EtcdUnavailableError) as caught:
                client.range("/k", BUDGET_S)
            causes.append(caught.value.cause)
            woken = threading.Event()
            watch = Watch(client, "/k", woken.set, idle_s=BUDGET_S)
            watch.start()
            time.sleep(0.2)  # a few rounds of the watch failing
            watch.stop()
    assert any("/v3/kv/range" in cause and "<hidden>" in cause for cause in causes)
    for text in [*causes, caplog.text]:
        assert password not in text and token not in text


def test_watch_reads_messages_split_across_chunks_and_reads(
    servers: Callable[[Callable[[Peer], None]], TinyServer], clients: Callable[..., EtcdClient]
) -> None:
    created = b'{"result":{"header":{"revision":"1"},"created":true}}\n'
    event = b'{"result":{"header":{"revision":"2"},"events":[{"kv":{"key":"L2s="}}]}}\n'
    release = threading.Event()

    def chunk(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"

    def serve(peer: Peer) -> None:
        request = peer.request()
        if request is None or not request[0].startswith("POST /v3/watch"):
            return
        stream = [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            chunk(created[:7]),  # one message over two chunks
            chunk(created[7:]),
            chunk(event + event[:9]),  # a message and the start of the next
            chunk(event[9:] + event),  # the rest of it, and one more
        ]
        for data in stream:
            for i in range(0, len(data), 5):  # and every chunk over several reads
                peer.sock.sendall(data[i : i + 5])
                time.sleep(0.001)
        release.wait(10)
        peer.sock.sendall(b"0\r\n\r\n")  # the stream ends: the watch reconnects
        peer.wait_gone()

    server = servers(serve)
    client = clients([server.url()])
    wakes: list[float] = []
    watch = Watch(client, "/k", lambda: wakes.append(time.monotonic()), idle_s=10.0)
    watch.start()
    try:
        eventually(lambda: len(wakes) == 4)  # created, then three events
        time.sleep(0.1)
        assert len(wakes) == 4 and len(server.peers) == 1
        release.set()
        eventually(lambda: len(server.peers) >= 2)
    finally:
        watch.stop()
    assert not watch.running


def test_watch_resumes_after_the_last_revision_seen_and_wakes_only_for_news(
    servers: Callable[[Callable[[Peer], None]], TinyServer], clients: Callable[..., EtcdClient]
) -> None:
    """A reconnect asks for what came after the last revision seen (etcd
    replays it) and wakes nobody by itself; compaction past that point, or
    etcd's history going back, starts afresh with a wake-up."""
    bodies: list[dict[str, object]] = []
    streams: list[list[dict[str, object]]] = [
        # Fresh: created at 5, then an event at 7 (a later header: still 7).
        [{"header": {"revision": "5"}, "created": True},
         {"header": {"revision": "9"}, "events": [{"kv": {"key": "L2s=", "mod_revision": "7"}}]}],
        [{"header": {"revision": "9"}, "created": True}],  # resumed at 8: nothing new
        [{"header": {"revision": "9"}, "canceled": True, "compact_revision": "9"}],
        [{"header": {"revision": "12"}, "created": True}],  # afresh: wakes
        [{"header": {"revision": "3"}, "created": True}],  # resumed at 13, but etcd is at 3
        [{"header": {"revision": "3"}, "created": True}],  # afresh: wakes
    ]  # fmt: skip

    def serve(peer: Peer) -> None:
        request = peer.request()
        if request is None or not request[0].startswith("POST /v3/watch"):
            return
        bodies.append(json.loads(request[2])["create_request"])
        peer.sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for msg in streams[len(bodies) - 1] if len(bodies) <= len(streams) else []:
            line = json.dumps({"result": msg}).encode() + b"\n"
            peer.sock.sendall(f"{len(line):x}\r\n".encode() + line + b"\r\n")
        if len(bodies) < len(streams):
            peer.sock.sendall(b"0\r\n\r\n")  # the stream ends: the watch reconnects
        peer.wait_gone()

    server = servers(serve)
    client = clients([server.url()])
    wakes: list[int] = []
    watch = Watch(client, "/k", lambda: wakes.append(len(bodies)), idle_s=10.0)
    watch.start()
    try:
        eventually(lambda: len(bodies) == len(streams) and len(wakes) == 4)
        time.sleep(0.1)
    finally:
        watch.stop()
    assert [b.get("start_revision") for b in bodies] == [None, "8", "8", None, "13", None]
    # Created, the event, afresh after compaction, afresh after the history went back.
    assert wakes == [1, 1, 4, 6]


def test_watch_reconnects_a_stream_idle_for_its_idle_timeout(
    servers: Callable[[Callable[[Peer], None]], TinyServer], clients: Callable[..., EtcdClient]
) -> None:
    def serve(peer: Peer) -> None:
        if peer.request() is not None:
            peer.sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            peer.wait_gone()  # then nothing, for ever

    server = servers(serve)
    client = clients([server.url()])
    watch = Watch(client, "/k", lambda: None, idle_s=0.3)
    watch.start()
    try:
        eventually(lambda: len(server.peers) >= 2 and server.peers[0].gone.is_set())
    finally:
        stopping = time.monotonic()
        watch.stop()
    assert not watch.running
    assert time.monotonic() - stopping < 2.0


def test_tls_to_a_server_that_closes_during_the_handshake_is_unknown(
    servers: Callable[[Callable[[Peer], None]], TinyServer],
    clients: Callable[..., EtcdClient],
    tmp_path: Path,
) -> None:
    files = make_tls(tmp_path)

    def hang_up(peer: Peer) -> None:
        peer.sock.recv(1)  # the ClientHello starts

    server = servers(hang_up)
    client = clients(
        [server.url("https")],
        ca_file=str(files.ca),
        cert_file=str(files.client_cert),
        key_file=str(files.client_key),
    )
    with pytest.raises(EtcdUnavailableError):
        within(BUDGET_S, lambda: client.range("/k", BUDGET_S))


def _deadline(budget_s: float = BUDGET_S) -> float:
    return time.monotonic() + budget_s


def test_a_stopped_watch_leaves_no_connection_open(
    servers: Callable[[Callable[[Peer], None]], TinyServer], clients: Callable[..., EtcdClient]
) -> None:
    """Its stream's and its token requests' (kept alive in its thread) alike."""

    def serve(peer: Peer) -> None:
        while (request := peer.request()) is not None:
            if request[0].startswith("POST /v3/auth/authenticate"):
                peer.reply(json.dumps({"header": {}, "token": "t"}).encode())
            else:
                peer.sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")

    server = servers(serve)
    client = clients([server.url()], username="u", password="p")
    watch = Watch(client, "/k", lambda: None)
    watch.start()
    eventually(lambda: len(server.peers) == 2)  # authenticate, then the stream
    watch.stop()
    assert not watch.running
    eventually(lambda: all(peer.gone.is_set() for peer in server.peers))
