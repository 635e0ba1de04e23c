"""A small synchronous client of etcd's v3 JSON gateway, on the standard library.

Why not a gRPC client: the maintained ones talk to one endpoint or give no
control over timeouts (see docs/DESIGN.md, "etcd clients"). The gateway is
served on etcd's client port; keys and values travel base64-encoded, int64 fields come back as
strings and zero values are left out. Watches are in ``etcd_watch``.

Two promises:
- A logical request never runs past its ``timeout_s``. Each attempt runs in a
  worker thread that the caller stops waiting for at the attempt's deadline:
  name resolution has no timeout at all. The transport (``etcd_http``) bounds
  every other step by that deadline, so an abandoned attempt ends by itself.
- ``EtcdUnavailableError`` means "don't know" and nothing else. Definite
  answers (key absent, comparison failed, lease not found) are values.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import Retrying, retry_if_exception_type, stop_before_delay, wait_fixed

from dbvip.adapters.etcd_history import History
from dbvip.adapters.etcd_http import Connection, Endpoint, ProtocolError, Transport
from dbvip.boottime import boot_s

log = logging.getLogger(__name__)

Json = dict[str, Any]
T = TypeVar("T")

# gRPC codes for "this member cannot answer now", not "no": DeadlineExceeded,
# ResourceExhausted, Unavailable (no leader, leader changed, request timed out).
_TRANSIENT_CODES = frozenset({4, 8, 14})
_TRANSIENT_WORDS = ("leader changed", "no leader", "timed out", "too many requests")
_LEASE_NOT_FOUND = "requested lease not found"
_INVALID_TOKEN = "invalid auth token"
# Replies whose header is the answering member's own revision, not one of
# the cluster's history: a lagging follower may show less than seen before.
_LOCAL_HEADER_PATHS = frozenset({"/v3/lease/keepalive", "/v3/lease/timetolive"})
_MIN_ATTEMPT_S = 0.005  # less budget than this is not worth another round


class EtcdUnavailableError(Exception):
    """etcd's answer is unknown: unreachable, timed out, auth refused, error reply."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class _LeaseNotFoundError(EtcdUnavailableError):
    """etcd says the lease does not exist: a definite answer where a method
    expects it; elsewhere it stays "don't know", the safe reading."""


class _TransientError(Exception):
    """Worth asking another member, or the same one again."""


class _ReplyError(Exception):
    """A definite error answer from etcd."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(f"HTTP {status}, code {code}: {message}")
        self.message = message


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease_id: int  # 0 when the key is attached to no lease


@dataclass(frozen=True)
class RangeResult:
    revision: int  # store revision of the read
    kvs: tuple[KeyValue, ...]
    more: bool = False  # a ``limit`` left keys out


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    kvs: tuple[KeyValue, ...]  # every key read by the branch's range operations


@dataclass(frozen=True)
class LeaseGrant:
    lease_id: int
    ttl_s: int  # as granted: etcd raises a TTL below its minimum
    revision: int = 0  # store revision of the reply


@dataclass(frozen=True)
class LeaseInfo:
    ttl_s: int  # remaining; -1 when the lease does not exist
    keys: tuple[bytes, ...]


def _b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _int(obj: Json, name: str) -> int:
    return int(obj.get(name, 0))


def _key_range(key: bytes | str, prefix: bool) -> Json:
    raw = key.encode() if isinstance(key, str) else key
    if not prefix:
        return {"key": _b64(raw)}
    stripped = raw.rstrip(b"\xff")  # range_end: the first key after the prefix
    end = stripped[:-1] + bytes([stripped[-1] + 1]) if stripped else b"\0"
    return {"key": _b64(raw), "range_end": _b64(end)}


def compare_create_revision(key: bytes | str, revision: int) -> Json:
    """True when ``key`` was created at ``revision``; 0 means "key absent"."""
    return {"target": "CREATE", "key": _b64(key), "create_revision": revision, "result": "EQUAL"}


def compare_mod_revision(key: bytes | str, revision: int) -> Json:
    """True when ``key`` was last written at ``revision``."""
    return {"target": "MOD", "key": _b64(key), "mod_revision": revision, "result": "EQUAL"}


def compare_lease(key: bytes | str, lease_id: int) -> Json:
    """True when ``key`` is attached to ``lease_id`` (etcd >= 3.3)."""
    return {"target": "LEASE", "key": _b64(key), "lease": str(lease_id), "result": "EQUAL"}


def put_op(key: bytes | str, value: bytes | str, lease_id: int = 0) -> Json:
    return {"request_put": {"key": _b64(key), "value": _b64(value), "lease": str(lease_id)}}


def range_op(key: bytes | str) -> Json:
    return {"request_range": {"key": _b64(key)}}


def delete_op(key: bytes | str) -> Json:
    return {"request_delete_range": {"key": _b64(key)}}


def _kvs(reply: Json) -> tuple[KeyValue, ...]:
    return tuple(
        KeyValue(
            base64.b64decode(kv["key"]),
            base64.b64decode(kv.get("value", "")),
            _int(kv, "create_revision"),
            _int(kv, "mod_revision"),
            _int(kv, "lease"),
        )
        for kv in reply.get("kvs", ())
    )


def _revision(reply: Json) -> int:
    return _int(reply["header"], "revision")


def _txn_result(reply: Json) -> TxnResult:
    ranges = [r["response_range"] for r in reply.get("responses", ()) if "response_range" in r]
    kvs = tuple(kv for r in ranges for kv in _kvs(r))
    return TxnResult(bool(reply.get("succeeded", False)), _revision(reply), kvs)


def _hide(text: str, secrets: Iterable[str | None]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<hidden>")
    return text


def _parse(status: int, body: bytes, secrets: Iterable[str | None] = ()) -> Json:
    """The reply's payload; its error raised as transient or definite.

    ``secrets`` are cut out of the error message, should the server echo them.
    """
    try:
        data: Json = json.loads(body)
        # Streaming RPCs (keepalive, watch) wrap each message in "result" or "error".
        data = data.get("result", data)
    except (ValueError, AttributeError):
        raise _TransientError(f"HTTP {status}, not a JSON object") from None
    error = data.get("error")
    if error is not None or status != 200:
        detail = error if isinstance(error, dict) else data
        code = int(detail.get("grpc_code") or detail.get("code") or 0)
        message = _hide(str(detail.get("message", error)), secrets)
        transient = status >= 500 or status == 429
        if transient or code in _TRANSIENT_CODES or any(w in message for w in _TRANSIENT_WORDS):
            raise _TransientError(f"HTTP {status}, code {code}: {message}")
        raise _ReplyError(status, code, message)
    if not isinstance(data.get("header"), dict):
        # Not quoted: a server that echoes the request would show the token or password.
        raise _TransientError(f"HTTP {status}, a reply without header ({len(body)} bytes)")
    return data


class EtcdClient:
    """Several endpoints, one total timeout per request, TLS, user/password."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        username: str | None = None,
        password: str | None = None,
        retry_wait_s: float = 0.05,
    ) -> None:
        if not endpoints or (username is None) != (password is None):
            raise ValueError("etcd needs endpoints, and a username goes with a password")
        self.endpoints = tuple(url.rstrip("/") for url in endpoints)
        self._parsed = {url: Endpoint.parse(url) for url in self.endpoints}
        self._tls: ssl.SSLContext | None = None
        if ca_file or cert_file:
            self._tls = ssl.create_default_context(cafile=ca_file)
            if cert_file:
                self._tls.load_cert_chain(cert_file, key_file)
        self._login = None if username is None else {"name": username, "password": password}
        self._password = password
        self._token: str | None = None
        self._retry_wait_s = retry_wait_s
        self._preferred = 0  # index of the endpoint that answered last
        self.history = History()
        # No proxy support on purpose: an HTTP(S)_PROXY in the environment must
        # not reroute etcd traffic.
        self._http = Transport(self._tls)
        # An attempt that overruns its share is abandoned, not waited for; its
        # thread ends by itself at the attempt's deadline (socket timeouts).
        self._workers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="etcd-request")

    def connect(self, endpoint: str, deadline: float) -> Connection:
        """A connection of the caller's own (for a stream); ``release`` it."""
        return self._http.connect(self._parsed[endpoint], deadline)

    def release(self, conn: Connection) -> None:
        self._http.release(conn)

    def drop_idle(self) -> None:
        """Close the calling thread's kept-alive connections, before it ends."""
        self._http.drop_idle()

    def endpoint_order(self) -> list[str]:
        """Every endpoint, the one that answered last first."""
        return [*self.endpoints[self._preferred :], *self.endpoints[: self._preferred]]

    def close(self) -> None:
        self._workers.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    # -- kv -----------------------------------------------------------------

    def range(
        self,
        key: bytes | str,
        timeout_s: float,
        *,
        prefix: bool = False,
        range_end: bytes | None = None,
        limit: int = 0,
        revision: int = 0,
    ) -> RangeResult:
        """Keys at ``key`` (with ``prefix``: under it; with ``range_end``: up
        to it), at most ``limit`` of them (0: all), as of ``revision`` (0: now)."""
        body: Json = _key_range(key, prefix)
        if range_end is not None:
            body["range_end"] = _b64(range_end)
        if limit:
            body["limit"] = limit
        if revision:
            body["revision"] = revision

        def parse(r: Json) -> RangeResult:
            return RangeResult(_revision(r), _kvs(r), bool(r.get("more")))

        return self._ask("/v3/kv/range", body, timeout_s, parse)

    def put(
        self, key: bytes | str, value: bytes | str, timeout_s: float, *, lease_id: int = 0
    ) -> int | None:
        """The revision of the put, or None when ``lease_id`` does not exist."""
        body = put_op(key, value, lease_id)["request_put"]
        try:
            return self._ask("/v3/kv/put", body, timeout_s, _revision)
        except _LeaseNotFoundError:
            return None

    def delete(self, key: bytes | str, timeout_s: float, *, prefix: bool = False) -> int:
        """How many keys were deleted."""
        body = _key_range(key, prefix)
        return self._ask("/v3/kv/deleterange", body, timeout_s, lambda r: _int(r, "deleted"))

    def txn(
        self, compare: list[Json], success: list[Json], failure: list[Json], timeout_s: float
    ) -> TxnResult:
        body = {"compare": compare, "success": success, "failure": failure}
        return self._ask("/v3/kv/txn", body, timeout_s, _txn_result)

    # -- leases -------------------------------------------------------------

    def grant(self, ttl_s: int, timeout_s: float) -> LeaseGrant:
        def parse(r: Json) -> LeaseGrant:
            return LeaseGrant(_int(r, "ID"), _int(r, "TTL"), _revision(r))

        return self._ask("/v3/lease/grant", {"TTL": ttl_s}, timeout_s, parse)

    def keepalive(self, lease_id: int, timeout_s: float) -> int:
        """The lease's renewed TTL; 0 when it does not exist (expired, revoked).

        Measured on 3.4.23: for a lease that is gone the gateway answers
        HTTP 200 ``{"result": {"header": ..., "ID": "<id>"}}``, without TTL.
        """
        body = {"ID": str(lease_id)}
        return self._ask("/v3/lease/keepalive", body, timeout_s, lambda r: _int(r, "TTL"))

    def revoke(self, lease_id: int, timeout_s: float) -> bool:
        """True when revoked now, False when the lease did not exist (anymore)."""
        try:
            return self._ask("/v3/lease/revoke", {"ID": str(lease_id)}, timeout_s, bool)
        except _LeaseNotFoundError:
            return False

    def time_to_live(self, lease_id: int, timeout_s: float, *, keys: bool = False) -> LeaseInfo:
        def parse(r: Json) -> LeaseInfo:
            return LeaseInfo(_int(r, "TTL"), tuple(base64.b64decode(k) for k in r.get("keys", ())))

        return self._ask(
            "/v3/lease/timetolive", {"ID": str(lease_id), "keys": keys}, timeout_s, parse
        )

    # -- requests -----------------------------------------------------------

    def _ask(self, path: str, body: Json, timeout_s: float, parse: Callable[[Json], T]) -> T:
        """One logical request, over every endpoint, retried within ``timeout_s``."""
        deadline = boot_s() + timeout_s
        retrying = Retrying(
            stop=stop_before_delay(max(timeout_s - _MIN_ATTEMPT_S, 0.0)),
            wait=wait_fixed(self._retry_wait_s),
            retry=retry_if_exception_type(_TransientError),
            reraise=True,
        )
        try:
            result: T = retrying(self._round, path, body, deadline, parse)
            return result
        except _ReplyError as exc:
            if _LEASE_NOT_FOUND in exc.message:
                raise _LeaseNotFoundError(f"{path}: {exc}") from None
            raise EtcdUnavailableError(f"{path}: {exc}") from None
        except _TransientError as exc:
            raise EtcdUnavailableError(f"{path}: {exc}") from None

    def _round(self, path: str, body: Json, deadline: float, parse: Callable[[Json], T]) -> T:
        """Ask each endpoint once, the one that answered last first."""
        order, causes = self.endpoint_order(), []
        for tried, endpoint in enumerate(order):
            remaining_s = deadline - boot_s()
            if remaining_s <= 0:
                break
            share_s = remaining_s / (len(order) - tried)  # leave time for the others
            end = boot_s() + share_s
            future = self._workers.submit(self._exchange, endpoint, path, body, end, parse)
            try:
                result, header = future.result(timeout=share_s)
            except _TransientError as exc:
                causes.append(f"{endpoint}: {exc}")
                continue
            except TimeoutError:
                future.cancel()
                causes.append(f"{endpoint}: no answer within {share_s:.3f} s")
                continue
            except _ReplyError:
                self._preferred = self.endpoints.index(endpoint)
                raise
            self._preferred = self.endpoints.index(endpoint)
            if path not in _LOCAL_HEADER_PATHS:
                self.history.saw(header)
            return result
        raise _TransientError("; ".join(causes) or "no time left")

    def _exchange(
        self, endpoint: str, path: str, body: Json, deadline: float, parse: Callable[[Json], T]
    ) -> tuple[T, Json]:
        try:
            token = self.token(endpoint, deadline)
            try:
                reply = self._post(endpoint, path, body, deadline, token)
                return parse(reply), reply["header"]
            except _ReplyError as exc:
                if token is None or _INVALID_TOKEN not in exc.message:
                    raise
            # The member forgot the token (restarted, auth re-enabled): once more.
            self.forget_token()
            reply = self._post(endpoint, path, body, deadline, self.token(endpoint, deadline))
            return parse(reply), reply["header"]
        except (_TransientError, _ReplyError):
            raise
        except Exception as exc:  # a malformed reply, a closed client: still "don't know"
            raise _TransientError(self.hide(f"{type(exc).__name__}: {exc}")) from None

    def token(self, endpoint: str, deadline: float) -> str | None:
        """The auth token to send, authenticating first when there is none."""
        if self._login is None:
            return None
        if self._token is None:
            reply = self._post(endpoint, "/v3/auth/authenticate", self._login, deadline, None)
            self._token = str(reply["token"])
        return self._token

    def forget_token(self) -> None:
        self._token = None

    def hide(self, text: str, token: str | None = None) -> str:
        """``text`` without the password or a token, for an error cause or a log."""
        return _hide(text, (self._password, token, self._token))

    def _post(
        self, endpoint: str, path: str, body: Json, deadline: float, token: str | None
    ) -> Json:
        timeout_s = deadline - boot_s()
        if timeout_s <= 0:
            raise _TransientError("no time left")
        headers = {"Authorization": token} if token else {}
        payload = json.dumps(body).encode()
        try:
            resp = self._http.post(self._parsed[endpoint], path, payload, headers, deadline)
        except (OSError, ProtocolError) as exc:  # OSError: refused, timed out, TLS
            raise _TransientError(f"{type(exc).__name__}: {exc}") from None
        return _parse(resp.status, resp.body, (self._password, token))
