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
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from dbvip.adapters.etcd_history import History
from dbvip.adapters.etcd_http import Connection, Endpoint, ProtocolError, Transport
from dbvip.adapters.etcd_wire import (
    Json,
    LeaseGrant,
    LeaseInfo,
    RangeResult,
    ReplyError,
    TransientError,
    TxnResult,
    as_int,
    b64,
    hide,
    key_range,
    kvs_of,
    parse_reply,
    put_op,
    revision_of,
    txn_result,
)
from dbvip.boottime import boot_s

log = logging.getLogger(__name__)

T = TypeVar("T")

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
        body: Json = key_range(key, prefix)
        if range_end is not None:
            body["range_end"] = b64(range_end)
        if limit:
            body["limit"] = limit
        if revision:
            body["revision"] = revision

        def parse(r: Json) -> RangeResult:
            return RangeResult(revision_of(r), kvs_of(r), bool(r.get("more")))

        return self._ask("/v3/kv/range", body, timeout_s, parse)

    def put(
        self, key: bytes | str, value: bytes | str, timeout_s: float, *, lease_id: int = 0
    ) -> int | None:
        """The revision of the put, or None when ``lease_id`` does not exist."""
        body = put_op(key, value, lease_id)["request_put"]
        try:
            return self._ask("/v3/kv/put", body, timeout_s, revision_of)
        except _LeaseNotFoundError:
            return None

    def delete(self, key: bytes | str, timeout_s: float, *, prefix: bool = False) -> int:
        """How many keys were deleted."""
        body = key_range(key, prefix)
        return self._ask("/v3/kv/deleterange", body, timeout_s, lambda r: as_int(r, "deleted"))

    def txn(
        self, compare: list[Json], success: list[Json], failure: list[Json], timeout_s: float
    ) -> TxnResult:
        body = {"compare": compare, "success": success, "failure": failure}
        return self._ask("/v3/kv/txn", body, timeout_s, txn_result)

    # -- leases -------------------------------------------------------------

    def grant(self, ttl_s: int, timeout_s: float) -> LeaseGrant:
        def parse(r: Json) -> LeaseGrant:
            return LeaseGrant(as_int(r, "ID"), as_int(r, "TTL"), revision_of(r))

        return self._ask("/v3/lease/grant", {"TTL": ttl_s}, timeout_s, parse)

    def keepalive(self, lease_id: int, timeout_s: float) -> int:
        """The lease's renewed TTL; 0 when it does not exist (expired, revoked).

        Measured on 3.4.23: for a lease that is gone the gateway answers
        HTTP 200 ``{"result": {"header": ..., "ID": "<id>"}}``, without TTL.
        """
        body = {"ID": str(lease_id)}
        return self._ask("/v3/lease/keepalive", body, timeout_s, lambda r: as_int(r, "TTL"))

    def revoke(self, lease_id: int, timeout_s: float) -> bool:
        """True when revoked now, False when the lease did not exist (anymore)."""
        try:
            return self._ask("/v3/lease/revoke", {"ID": str(lease_id)}, timeout_s, bool)
        except _LeaseNotFoundError:
            return False

    def time_to_live(self, lease_id: int, timeout_s: float, *, keys: bool = False) -> LeaseInfo:
        def parse(r: Json) -> LeaseInfo:
            return LeaseInfo(
                as_int(r, "TTL"), tuple(base64.b64decode(k) for k in r.get("keys", ()))
            )

        return self._ask(
            "/v3/lease/timetolive", {"ID": str(lease_id), "keys": keys}, timeout_s, parse
        )

    # -- requests -----------------------------------------------------------

    def _ask(self, path: str, body: Json, timeout_s: float, parse: Callable[[Json], T]) -> T:
        """One logical request, over every endpoint, retried within ``timeout_s``."""
        deadline = boot_s() + timeout_s
        try:
            return self._retried(path, body, deadline, parse)
        except ReplyError as exc:
            if _LEASE_NOT_FOUND in exc.message:
                raise _LeaseNotFoundError(f"{path}: {exc}") from None
            raise EtcdUnavailableError(f"{path}: {exc}") from None
        except TransientError as exc:
            raise EtcdUnavailableError(f"{path}: {exc}") from None

    def _retried(self, path: str, body: Json, deadline: float, parse: Callable[[Json], T]) -> T:
        """Rounds over the endpoints, ``retry_wait_s`` apart, while another one
        can still start before ``deadline`` (less ``_MIN_ATTEMPT_S``).

        By hand, not tenacity: its ``Retrying`` did exactly this, and importing
        it cost 0.45 MiB of resident memory in a sidecar that had imported
        psycopg already (README, Memory of a sidecar)."""
        while True:
            try:
                return self._round(path, body, deadline, parse)
            except TransientError:
                if boot_s() + self._retry_wait_s >= deadline - _MIN_ATTEMPT_S:
                    raise
            time.sleep(self._retry_wait_s)

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
            except TransientError as exc:
                causes.append(f"{endpoint}: {exc}")
                continue
            except TimeoutError:
                future.cancel()
                causes.append(f"{endpoint}: no answer within {share_s:.3f} s")
                continue
            except ReplyError:
                self._preferred = self.endpoints.index(endpoint)
                raise
            self._preferred = self.endpoints.index(endpoint)
            if path not in _LOCAL_HEADER_PATHS:
                self.history.saw(header)
            return result
        raise TransientError("; ".join(causes) or "no time left")

    def _exchange(
        self, endpoint: str, path: str, body: Json, deadline: float, parse: Callable[[Json], T]
    ) -> tuple[T, Json]:
        try:
            token = self.token(endpoint, deadline)
            try:
                reply = self._post(endpoint, path, body, deadline, token)
                return parse(reply), reply["header"]
            except ReplyError as exc:
                if token is None or _INVALID_TOKEN not in exc.message:
                    raise
            # The member forgot the token (restarted, auth re-enabled): once more.
            self.forget_token()
            reply = self._post(endpoint, path, body, deadline, self.token(endpoint, deadline))
            return parse(reply), reply["header"]
        except (TransientError, ReplyError):
            raise
        except Exception as exc:  # a malformed reply, a closed client: still "don't know"
            raise TransientError(self.hide(f"{type(exc).__name__}: {exc}")) from None

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
        return hide(text, (self._password, token, self._token))

    def _post(
        self, endpoint: str, path: str, body: Json, deadline: float, token: str | None
    ) -> Json:
        timeout_s = deadline - boot_s()
        if timeout_s <= 0:
            raise TransientError("no time left")
        headers = {"Authorization": token} if token else {}
        payload = json.dumps(body).encode()
        try:
            resp = self._http.post(self._parsed[endpoint], path, payload, headers, deadline)
        except (OSError, ProtocolError) as exc:  # OSError: refused, timed out, TLS
            raise TransientError(f"{type(exc).__name__}: {exc}") from None
        return parse_reply(resp.status, resp.body, (self._password, token))
