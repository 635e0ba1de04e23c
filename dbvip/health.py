"""The HTTP endpoints: ``/healthz``, ``/readyz``, ``/status``, ``/metrics``.

Served from daemon threads; every answer is computed from the board's latest
snapshot and the metrics registry, so a slow or stuck client never touches
the loop. Binding happens in the constructor: a port in use is an ``OSError``
at start, before anything else runs.
"""

from __future__ import annotations

import json
import logging
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

from dbvip.board import Board, Verdict
from dbvip.config import Listen
from dbvip.metrics import Metrics

log = logging.getLogger("dbvip.http")

JSON = "application/json"
# The Prometheus text format that dbvip.exposition writes.
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
PATHS = ("/healthz", "/readyz", "/status", "/metrics")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, listen: Listen, board: Board, metrics: Metrics) -> None:
        self.address_family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
        self.board = board
        self.metrics = metrics
        super().__init__((listen.host, listen.port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would look the address up in DNS (getfqdn):
        # a slow start, and traffic, for a name nothing here uses.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.port

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("HTTP request from %s failed", client_address)


class _Handler(BaseHTTPRequestHandler):
    timeout = 10  # a client that stalls holds only its own thread, and not for long
    server_version = "dbvip"

    def do_GET(self) -> None:
        server = cast(_Server, self.server)
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._verdict(server.board.liveness())
        elif path == "/readyz":
            self._verdict(server.board.readiness())
        elif path == "/status":
            status = server.board.status()
            if status is None:
                self._json(503, {"error": "no decision yet"})
            else:
                self._json(200, status)
        elif path == "/metrics":
            self._send(200, PROMETHEUS_TEXT, server.metrics.render())
        else:
            self._json(404, {"error": "not found", "paths": list(PATHS)})

    def _verdict(self, verdict: Verdict) -> None:
        self._json(200 if verdict.ok else 503, {"ok": verdict.ok, "why": verdict.why})

    def _json(self, code: int, body: dict[str, Any]) -> None:
        self._send(code, JSON, (json.dumps(body, sort_keys=True) + "\n").encode())

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s", format % args)


class HealthServer:
    """Binds at construction; ``start`` serves in a daemon thread."""

    def __init__(self, listen: Listen, board: Board, metrics: Metrics) -> None:
        self._server = _Server(listen, board, metrics)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.1,), name="dbvip-http", daemon=True
        )

    @property
    def port(self) -> int:
        return self._server.port

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
