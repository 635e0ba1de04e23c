"""Watching a key or prefix of etcd through the v3 JSON gateway, as a wake-up.

A watch never carries state to the loop: it only says "look again", after
a fresh connect and every batch of changes (or only the batches holding a
change the caller cares about). The loop then reads what it needs itself.

A stream stays open for as long as it works, and a reconnect resumes at the
revision after the last one seen: etcd replays what happened meanwhile, so
a reconnect costs one Watch request and no read. Only a fresh start (the
first connect, or history compacted past the resume point) wakes the loop
to read everything again.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dbvip.adapters.etcd_client import _INVALID_TOKEN, EtcdClient
from dbvip.adapters.etcd_http import Connection
from dbvip.adapters.etcd_wire import (
    Json,
    TransientError,
    key_range,
)
from dbvip.boottime import boot_s

log = logging.getLogger(__name__)

_WATCH_CONNECT_S = 1.0
_WATCH_BACKOFF_MAX_S = 1.0
# An idle stream is reconnected after this long: that is how a stream to a
# member that froze (or was cut off without a reset) is left. Not sooner:
# each reconnect is a request to etcd, and missing nothing does not depend
# on it (the resume does), only how soon a frozen member's stream is left;
# the loop's periodic reads are the backstop meanwhile.
IDLE_S = 60.0


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

    ``on_wake`` is called after a fresh connect, once etcd confirmed the
    watch, and on every event batch: the caller then re-reads the key. A
    reconnect resumes at the revision after the last one seen, so nothing
    that happened while disconnected goes unnoticed without a wake-up. A
    stream idle for ``idle_s`` is reconnected, which also moves off a frozen
    member.
    """

    def __init__(
        self,
        client: EtcdClient,
        key: bytes | str,
        on_wake: Callable[[], None],
        *,
        prefix: bool = False,
        idle_s: float = IDLE_S,
        wants: Callable[[WatchEvent], bool] | None = None,
    ) -> None:
        """``wants``: wake for an event batch only if it holds an event this
        says yes to (the watch then asks etcd for each key's previous value);
        a (re)connect always wakes."""
        self._client = client
        self._body = {"create_request": key_range(key, prefix)}
        if wants is not None:
            self._body["create_request"]["prev_kv"] = True
        self._wants = wants
        self._on_wake = on_wake
        self._idle_s = idle_s
        self._stopping = threading.Event()
        self._conn: Connection | None = None
        self._confirmed = False
        # The last revision this watch has seen everything up to (0: none,
        # the next connect starts afresh and wakes).
        self._revision = 0
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
        resume = self._revision
        request = dict(self._body["create_request"])
        if resume:
            request["start_revision"] = str(resume + 1)
        body = json.dumps({"create_request": request}).encode()
        conn.send("/v3/watch", body, headers, boot_s() + self._idle_s)
        conn.deadline = boot_s() + self._idle_s
        head = conn.read_head()
        if head.status != 200:
            raise TransientError(f"HTTP {head.status}")
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
                if int(result.get("compact_revision", 0)):
                    self._revision = 0  # compacted past the resume point: start afresh
                raise TransientError(f"watch canceled: {self._client.hide(reason, token)}")
            created, events = bool(result.get("created")), result.get("events", ())
            if created and resume and _header_revision(result) < resume:
                # etcd's history went back (restored, or another cluster): a
                # resume point ahead of it would skip what comes until then.
                self._revision = 0
                raise TransientError("etcd revision went back; watching afresh")
            if created or events:
                self._confirmed = True
                fresh = created and not resume
                self._seen(result, fresh)
                if fresh or (events and self._wanted(events)):
                    self._wake()

    def _seen(self, result: Json, fresh: bool) -> None:
        """Remember how far this watch has seen: a fresh watch everything up
        to the revision it was created at, a batch of events everything up
        to its last event's (events come in revision order; a batch's header
        may name a later revision whose events are still to come)."""
        if fresh:
            self._revision = max(self._revision, _header_revision(result))
        for event in result.get("events", ()):
            self._revision = max(self._revision, int(event.get("kv", {}).get("mod_revision", 0)))

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


def _header_revision(result: Json) -> int:
    return int(result.get("header", {}).get("revision", 0))
