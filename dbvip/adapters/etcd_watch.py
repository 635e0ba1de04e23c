"""Watching a key or prefix of etcd through the v3 JSON gateway, as a wake-up.

A watch never carries state to the loop: it only says "look again", after
every (re)connect and every batch of changes (or only the batches holding a
change the caller cares about). The loop then reads what it needs itself,
so nothing that happened while disconnected goes unnoticed.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dbvip.adapters.etcd_client import (
    _INVALID_TOKEN,
    EtcdClient,
    Json,
    _key_range,
    _TransientError,
)
from dbvip.adapters.etcd_http import Connection
from dbvip.boottime import boot_s

log = logging.getLogger(__name__)

_WATCH_CONNECT_S = 1.0
_WATCH_BACKOFF_MAX_S = 1.0


@dataclass(frozen=True)
class WatchEvent:
    """One change seen by a watch with ``prev_kv``: ``value`` None when the
    key was deleted, ``prev`` None when it was created (or etcd no longer had
    the previous value)."""

    key: bytes
    value: bytes | None
    prev: bytes | None


class Watch:
    """Watches a key (or prefix) from a daemon thread, as a wake-up only.

    ``on_wake`` is called after every (re)connect, once etcd confirmed the
    watch, and on every event batch: the caller then re-reads the key, so
    nothing that happened while disconnected goes unnoticed. A stream idle
    for ``idle_s`` is reconnected, which also moves off a frozen member.
    """

    def __init__(
        self,
        client: EtcdClient,
        key: bytes | str,
        on_wake: Callable[[], None],
        *,
        prefix: bool = False,
        idle_s: float = 5.0,
        wants: Callable[[WatchEvent], bool] | None = None,
    ) -> None:
        """``wants``: wake for an event batch only if it holds an event this
        says yes to (the watch then asks etcd for each key's previous value);
        a (re)connect always wakes."""
        self._client = client
        self._body = {"create_request": _key_range(key, prefix)}
        if wants is not None:
            self._body["create_request"]["prev_kv"] = True
        self._wants = wants
        self._on_wake = on_wake
        self._idle_s = idle_s
        self._stopping = threading.Event()
        self._conn: Connection | None = None
        self._confirmed = False
        self._thread = threading.Thread(target=self._run, name="etcd-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stopping.set()
        conn = self._conn  # set before _stream checks _stopping: one of the two sees the other
        if conn is not None:
            conn.shutdown()  # wakes the thread blocked reading it
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        try:
            self._follow_until_stopped()
        finally:
            self._client.drop_idle()  # the token requests' connection dies with the thread

    def _follow_until_stopped(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            endpoint = self._client.endpoint_order()[failures % len(self._client.endpoints)]
            self._confirmed = False
            try:
                self._stream(endpoint)
                cause = "stream ended"
            except Exception as exc:  # whatever went wrong, reconnect
                cause = self._client.hide(f"{type(exc).__name__}: {exc}")
            if self._stopping.is_set():
                break
            # A stream that worked starts over at the preferred endpoint, at once.
            failures = 0 if self._confirmed else failures + 1
            log.debug("etcd watch on %s lost (%s); reconnecting", endpoint, cause)
            self._stopping.wait(min(_WATCH_BACKOFF_MAX_S, 0.02 * 2 ** min(failures, 8)))

    def _stream(self, endpoint: str) -> None:
        token = self._client.token(endpoint, boot_s() + _WATCH_CONNECT_S)
        conn = self._client.connect(endpoint, boot_s() + _WATCH_CONNECT_S)
        self._conn = conn
        try:
            if self._stopping.is_set():
                return
            self._follow(conn, token)
        finally:
            self._conn = None
            self._client.release(conn)

    def _follow(self, conn: Connection, token: str | None) -> None:
        """Read the stream's messages (newline-delimited JSON) until it fails."""
        headers = {"Authorization": token} if token else {}
        body = json.dumps(self._body).encode()
        conn.send("/v3/watch", body, headers, boot_s() + self._idle_s)
        conn.deadline = boot_s() + self._idle_s
        head = conn.read_head()
        if head.status != 200:
            raise _TransientError(f"HTTP {head.status}")
        for line in conn.lines(head, self._idle_s):
            if self._stopping.is_set():
                return
            if not line.strip():
                continue
            msg = json.loads(line)
            result, error = msg.get("result", {}), msg.get("error")
            reason = str(error or result.get("cancel_reason", ""))
            if error is not None or result.get("canceled"):
                if _INVALID_TOKEN in reason:
                    self._client.forget_token()
                raise _TransientError(f"watch canceled: {self._client.hide(reason, token)}")
            if result.get("created") or result.get("events"):
                self._confirmed = True
                if result.get("created") or self._wanted(result.get("events", ())):
                    self._wake()

    def _wanted(self, events: Sequence[Json]) -> bool:
        if self._wants is None:
            return True
        for event in events:
            kv = event.get("kv", {})
            prev = event.get("prev_kv")
            deleted = event.get("type") == "DELETE"  # PUT is the default, left out
            seen = WatchEvent(
                base64.b64decode(kv.get("key", "")),
                None if deleted else base64.b64decode(kv.get("value", "")),
                None if prev is None else base64.b64decode(prev.get("value", "")),
            )
            if self._wants(seen):
                return True
        return False

    def _wake(self) -> None:
        try:
            self._on_wake()
        except Exception:  # the watch must outlive a faulty callback
            log.exception("etcd watch callback failed")
