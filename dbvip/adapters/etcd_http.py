"""The HTTP/1.1 transport of the etcd client, on sockets and ssl alone.

Why not httpx or http.client: both bound each socket operation, not an
exchange; here every blocking step (connect, TLS handshake, send, each read)
first sets the socket timeout to what is left of the caller's deadline, so an
exchange ends by itself at its deadline, whatever the server does. Name
resolution is the one step no socket timeout reaches (use addresses).

Only what etcd's JSON gateway needs: POST with a JSON body, replies framed
by Content-Length, chunked or close, and a streamed chunked body read line by
line with an idle timeout (the watch). Connections are kept alive per thread
and endpoint, like a pool without locking.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from dbvip.boottime import boot_s

_RECV_BYTES = 65536
_MAX_LINE_BYTES = 65536  # status line, header line, chunk size line
_MAX_HEADERS = 100
_MAX_BODY_BYTES = 64 * 1024 * 1024  # a misbehaving server must not eat the memory


class ProtocolError(Exception):
    """The server's bytes are not an HTTP/1.1 reply we can read."""


@dataclass(frozen=True)
class Endpoint:
    scheme: str  # "http" or "https"
    host: str  # an address or a name, IPv6 without brackets
    port: int

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """``http(s)://host[:port][/]``, nothing else (no path, no credentials)."""
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if "@" in parts.netloc:
            # Not echoed: it may hold a password.
            raise ValueError("an etcd endpoint must not carry credentials; use etcd_username")
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or port == -1
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
        ):
            raise ValueError(f"etcd endpoint {url!r} must look like http(s)://host:port")
        default = 443 if parts.scheme == "https" else 80
        return cls(parts.scheme, parts.hostname, port or default)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes


@dataclass(frozen=True)
class Head:
    status: int
    headers: dict[str, str]  # lower-case names; repeated ones joined with ", "
    keep_alive: bool


def _chunked(headers: Mapping[str, str]) -> bool:
    return "chunked" in headers.get("transfer-encoding", "").lower()


def _remaining_s(deadline: float) -> float:
    remaining_s = deadline - boot_s()
    if remaining_s <= 0:
        raise TimeoutError("timed out")
    return remaining_s


def _connect(endpoint: Endpoint, tls: ssl.SSLContext | None, deadline: float) -> socket.socket:
    """A TCP (and TLS) connection, every address tried within the one deadline."""
    infos = socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
    error: OSError = OSError(f"no address for {endpoint.host}")
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(_remaining_s(deadline))
            sock.connect(address)
            # A request goes out in one write; no reason to let Nagle hold a piece back.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is None:
                return sock
            wrapped = tls.wrap_socket(
                sock, server_hostname=endpoint.host, do_handshake_on_connect=False
            )
            sock = wrapped
            # CPython bounds the whole handshake by the timeout, not each read of it.
            wrapped.settimeout(_remaining_s(deadline))
            wrapped.do_handshake()
            return wrapped
        except OSError as exc:  # includes TimeoutError and ssl.SSLError
            sock.close()
            error = exc
            if isinstance(exc, ssl.SSLError | TimeoutError):
                break  # the address answered (or the time is up): no other one will do better
    raise error


class Connection:
    """One HTTP/1.1 connection; reads buffered, each bounded by ``self.deadline``."""

    def __init__(self, sock: socket.socket, endpoint: Endpoint) -> None:
        self._sock = sock
        self.endpoint = endpoint
        self._buf = bytearray()
        self.deadline = 0.0  # monotonic; set before every blocking call
        self.reusable = False  # a complete reply was read and the server keeps it open

    @classmethod
    def open(cls, endpoint: Endpoint, tls: ssl.SSLContext | None, deadline: float) -> Connection:
        return cls(_connect(endpoint, tls, deadline), endpoint)

    def close(self) -> None:
        self.reusable = False
        self._sock.close()

    def shutdown(self) -> None:
        """Wake a thread blocked reading this connection (close alone does not)."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def idle_and_open(self) -> bool:
        """Fit for another request: nothing arrived since the last reply.

        A server that closed an idle connection left an EOF to read; sending
        on it would fail after the request may or may not have gone out.
        """
        if self._buf or self._sock.fileno() < 0:
            return False
        if isinstance(self._sock, ssl.SSLSocket) and self._sock.pending():
            return False
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        return not poller.poll(0)

    # -- requests -------------------------------------------------------

    def send(self, path: str, body: bytes, headers: Mapping[str, str], deadline: float) -> None:
        self.reusable = False
        lines = [
            f"POST {path} HTTP/1.1",
            f"Host: {self.endpoint.host_header}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
        ]
        for name, value in headers.items():
            if any(c in value for c in "\r\n\0"):
                raise ProtocolError(f"header {name} holds a line break")  # the value is not shown
            lines.append(f"{name}: {value}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        self._sock.settimeout(_remaining_s(deadline))
        self._sock.sendall(data)  # the timeout bounds the whole sendall (Python >= 3.5)

    def exchange(
        self, path: str, body: bytes, headers: Mapping[str, str], deadline: float
    ) -> Response:
        """Send one request and read its whole reply, all by ``deadline``."""
        self.send(path, body, headers, deadline)
        self.deadline = deadline
        head = self.read_head()
        reply = bytearray()
        for piece in self._body(head):
            reply += piece
            if len(reply) > _MAX_BODY_BYTES:
                raise ProtocolError(f"reply longer than {_MAX_BODY_BYTES} bytes")
        self.reusable = head.keep_alive and not self._buf
        return Response(head.status, bytes(reply))

    def read_head(self) -> Head:
        """The status line and headers of the reply (1xx replies skipped)."""
        while True:
            status_line = self._readline(first=True)
            parts = status_line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                # The server's bytes are not quoted here nor below: they could echo a secret.
                raise ProtocolError(f"not an HTTP/1.x status line ({len(status_line)} bytes)")
            status = int(parts[1])
            headers: dict[str, str] = {}
            while line := self._readline():
                if len(headers) >= _MAX_HEADERS:
                    raise ProtocolError("too many header lines")
                name, colon, value = line.decode("latin-1").partition(":")
                if not colon:
                    raise ProtocolError("a header line without a colon")
                key, value = name.strip().lower(), value.strip()
                headers[key] = f"{headers[key]}, {value}" if key in headers else value
            if not 100 <= status < 200:
                break
        connection = headers.get("connection", "").lower()
        # A body that ends with the connection leaves nothing to reuse.
        framed = status in (204, 304) or "content-length" in headers or _chunked(headers)
        keep_alive = parts[0] == b"HTTP/1.1" and "close" not in connection and framed
        return Head(status, headers, keep_alive)

    def lines(self, head: Head, idle_s: float) -> Iterator[bytes]:
        """The reply's body line by line, however it is cut into chunks and
        reads; each line must complete within ``idle_s`` of the previous one."""
        self.deadline = boot_s() + idle_s
        pending = bytearray()
        for piece in self._body(head):
            pending += piece
            while (end := pending.find(b"\n")) >= 0:
                line = bytes(pending[:end])
                del pending[: end + 1]
                yield line
                self.deadline = boot_s() + idle_s
            if len(pending) > _MAX_BODY_BYTES:
                raise ProtocolError(f"a line longer than {_MAX_BODY_BYTES} bytes")
        if pending:
            yield bytes(pending)

    # -- framing ----------------------------------------------------------

    def _body(self, head: Head) -> Iterator[bytes]:
        if head.status in (204, 304):
            return
        if _chunked(head.headers):
            yield from self._chunks()
        elif "content-length" in head.headers:
            value = head.headers["content-length"]
            if not value.isdigit():
                raise ProtocolError("a Content-Length that is not a number")
            left = int(value)
            while left > 0:
                piece = self._read_some(left)
                left -= len(piece)
                yield piece
        else:  # framed by the end of the connection
            while self._buf or self._fill():
                yield self._read_some(len(self._buf))

    def _chunks(self) -> Iterator[bytes]:
        while True:
            size_line = self._readline().split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise ProtocolError("a chunk size that is not a hex number") from None
            if size == 0:
                while self._readline():  # trailers, up to the blank line
                    pass
                return
            while size > 0:
                piece = self._read_some(size)
                size -= len(piece)
                yield piece
            if self._readline():
                raise ProtocolError("a chunk not followed by CRLF")

    def _fill(self) -> bool:
        """Read what the server sent so far (waiting for it); False at EOF."""
        self._sock.settimeout(_remaining_s(self.deadline))
        data = self._sock.recv(_RECV_BYTES)
        self._buf += data
        return bool(data)

    def _readline(self, *, first: bool = False) -> bytes:
        """A line without its CRLF."""
        while (end := self._buf.find(b"\n")) < 0:
            if len(self._buf) > _MAX_LINE_BYTES:
                raise ProtocolError("a line too long")
            if not self._fill():
                if first and not self._buf:
                    raise ProtocolError("connection closed without a reply")
                raise ProtocolError("connection closed in the middle of a reply")
        line = bytes(self._buf[:end]).rstrip(b"\r")
        del self._buf[: end + 1]
        return line

    def _read_some(self, most: int) -> bytes:
        if not self._buf and not self._fill():
            raise ProtocolError("connection closed in the middle of a reply")
        piece = bytes(self._buf[:most])
        del self._buf[:most]
        return piece


class _Idle(threading.local):
    def __init__(self) -> None:
        self.connections: dict[Endpoint, Connection] = {}


class Transport:
    """Keep-alive connections per thread and endpoint, all closed by ``close()``."""

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        self._tls = tls
        self._default_tls: ssl.SSLContext | None = None
        self._idle = _Idle()
        self._open: set[Connection] = set()  # every live connection, for close()
        self._lock = threading.Lock()
        self._closed = False

    def _context(self, endpoint: Endpoint) -> ssl.SSLContext | None:
        if endpoint.scheme == "http":
            return None
        if self._tls is not None:
            return self._tls
        with self._lock:  # https with neither CA nor client certificate: the system's CAs
            if self._default_tls is None:
                self._default_tls = ssl.create_default_context()
            return self._default_tls

    def connect(self, endpoint: Endpoint, deadline: float) -> Connection:
        """A fresh connection of the caller's own (a stream); ``release`` it."""
        if self._closed:
            raise ProtocolError("the etcd client is closed")
        conn = Connection.open(endpoint, self._context(endpoint), deadline)
        with self._lock:
            self._open.add(conn)
            closed = self._closed
        if closed:  # close() ran meanwhile and missed this one
            self.release(conn)
            raise ProtocolError("the etcd client is closed")
        return conn

    def release(self, conn: Connection) -> None:
        with self._lock:
            self._open.discard(conn)
        conn.close()

    def post(
        self,
        endpoint: Endpoint,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        deadline: float,
    ) -> Response:
        conn = self._idle.connections.pop(endpoint, None)
        if conn is not None and not conn.idle_and_open():
            self.release(conn)
            conn = None
        if conn is None:
            conn = self.connect(endpoint, deadline)
        try:
            response = conn.exchange(path, body, headers, deadline)
        except BaseException:
            self.release(conn)
            raise
        if conn.reusable and not self._closed:
            self._idle.connections[endpoint] = conn
        else:
            self.release(conn)
        return response

    def drop_idle(self) -> None:
        """Close the calling thread's idle connections (the thread is about to end)."""
        idle, self._idle.connections = self._idle.connections, {}
        for conn in idle.values():
            self.release(conn)

    def close(self) -> None:
        """Close every connection, also those in use: their users get an error."""
        with self._lock:
            self._closed = True
            conns, self._open = list(self._open), set()
        for conn in conns:
            conn.shutdown()
            conn.close()
